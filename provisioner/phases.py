"""The spine: the ordered phases that build a cluster, one small unit each.

A phase names the hosts it touches, the files it places there (rendered templates, PKI,
binaries), the playbook that does the rest (playbooks/NN-name.yml), and how to tell from the
facts probed on a host that it has nothing to do there. `pending` says what a phase would
change on a host; an empty list means the host is converged for that phase and is skipped.
`cluster.plan` prints exactly this; `cluster.up` applies it, phase after phase.

    UP = prepare -> runtime -> pki -> etcd -> loadbalancer -> binaries -> control-plane
         -> join-control-plane -> join-workers -> cni -> addons -> kubeconfig
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable

from .model import Cluster, Node

STAMP_DIR = "/var/lib/provisioner/phases"

# ---------------------------------------------------------------------------------------------
# What a phase works with
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One file a phase places on a host."""

    path: str
    data: bytes
    mode: int = 0o644
    restart: tuple[str, ...] = ()

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Context:
    """Everything a phase decides from: the model, what it should place, what the hosts have."""

    cluster: Cluster
    items: dict[str, dict[str, list[Item]]]  # host -> phase -> files
    facts: dict  # host -> facts.Facts
    bundle: object | None = None  # bundle.Bundle, when one was found
    local: dict = field(default_factory=dict)  # controller-side facts (kubeconfig_source)

    def files(self, node: Node, phase: str) -> list[Item]:
        return self.items.get(node.name, {}).get(phase, [])


Check = Callable[[Context, Node], Iterable[str]]


@dataclass(frozen=True)
class Phase:
    name: str
    playbook: str | None
    hosts: Callable[[Cluster], Iterable[Node]]
    checks: tuple[Check, ...] = ()
    serial: bool = False  # one host at a time (joining control planes)
    needs_bundle: bool = False  # runs Kubernetes binaries: stops here without a bundle
    markers: tuple[str, ...] = ()  # extra paths the probe must hash for the checks

    @property
    def stamp_path(self) -> str:
        return f"{STAMP_DIR}/{self.name}"

    def stamp(self, ctx: Context, node: Node) -> bytes:
        """What the host records once this phase has finished there: its files' checksums."""
        items = sorted(ctx.files(node, self.name), key=lambda i: i.path)
        return "".join(f"{i.sha256}  {i.path}\n" for i in items).encode()

    def pending(self, ctx: Context, node: Node) -> list[str]:
        """What this phase would change on `node`; [] when there is nothing to do."""
        have = ctx.facts[node.name].files
        out = []
        for item in ctx.files(node, self.name):
            now = have.get(item.path)
            if now != item.sha256:
                out.append(f"write {item.path} ({'new' if now is None else 'changed'})")
        if not out and self.interrupted(ctx, node):
            out.append("finish applying the files in place (an earlier run stopped here)")
        for check in self.checks:
            out.extend(check(ctx, node))
        return out

    def stamped(self, ctx: Context, node: Node) -> bool:
        """Phases that act on their files (restart, apply) record when they finished."""
        return bool(self.playbook) and bool(ctx.files(node, self.name))

    def interrupted(self, ctx: Context, node: Node) -> bool:
        """True when the files are in place but the phase never finished with them."""
        recorded = ctx.facts[node.name].files.get(self.stamp_path)
        expected = hashlib.sha256(self.stamp(ctx, node)).hexdigest()
        return self.stamped(ctx, node) and recorded != expected

    def work(self, ctx: Context) -> dict[str, list[str]]:
        """{host name: pending changes} for every host of this phase that has work."""
        return {n.name: p for n in self.hosts(ctx.cluster) if (p := self.pending(ctx, n))}


# ---------------------------------------------------------------------------------------------
# Checks: small readers of facts, named by what they look for
# ---------------------------------------------------------------------------------------------


def service_running(*units: str) -> Check:
    def check(ctx: Context, node: Node):
        services = ctx.facts[node.name].services
        for unit in units:
            if services.get(unit, {}).get("active") != "active":
                yield f"start {unit}"
            elif services.get(unit, {}).get("enabled") != "enabled":
                yield f"enable {unit}"
    return check


def hostname_set(ctx: Context, node: Node):
    if ctx.facts[node.name].hostname != node.name:
        yield f"set hostname {node.name}"


def swap_off(ctx: Context, node: Node):
    if ctx.facts[node.name].swap_mb:
        yield "turn swap off"


def file_present(path: str, action: str) -> Check:
    def check(ctx: Context, node: Node):
        if ctx.facts[node.name].files.get(path) is None:
            yield action
    return check


def kubeconfig_fetched(ctx: Context, node: Node):
    """The controller's copy was taken from the admin config the node has now."""
    source = ctx.facts[node.name].files.get(admin_config(ctx.cluster))
    if source is None or ctx.local.get("kubeconfig_source") != source:
        yield "copy the admin kubeconfig to the controller (0600)"


def admin_config(c: Cluster) -> str:
    return K3S_ADMIN_CONF if c.is_k3s else ADMIN_CONF


# ---------------------------------------------------------------------------------------------
# Which hosts
# ---------------------------------------------------------------------------------------------


def every(c: Cluster):
    return c.nodes


def kube_nodes(c: Cluster):
    return [n for n in c.nodes if n.has("control_plane") or n.has("workers")]


def runtime_nodes(c: Cluster):
    return [] if c.is_k3s else kube_nodes(c)


def etcd_nodes(c: Cluster):
    return c.etcd_nodes if c.external_etcd else []


def lb_nodes(c: Cluster):
    if c.ha_mode == "haproxy":
        return c.loadbalancers
    if c.ha_mode == "kube-vip":
        return c.control_planes
    if c.ha_mode == "local":
        return c.workers
    return []


def first_control_plane(c: Cluster):
    return [c.first_control_plane]


def joining_control_planes(c: Cluster):
    return list(c.control_planes[1:])


def workers(c: Cluster):
    return list(c.workers)


def pki_nodes(c: Cluster):
    return [n for n in c.nodes if n.has("etcd") or n.has("control_plane")]


# ---------------------------------------------------------------------------------------------
# The phases of `cluster.up`, in order
# ---------------------------------------------------------------------------------------------

ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
K3S_NODE_TOKEN = "/var/lib/rancher/k3s/server/node-token"
K3S_AGENT_CONF = "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"
K3S_ADMIN_CONF = "/etc/rancher/k3s/k3s.yaml"


def lb_running(ctx: Context, node: Node):
    return service_running(*lb_services(ctx.cluster))(ctx, node)


def binaries_installed(ctx: Context, node: Node):
    """Without a bundle the expected binaries are unknown: only their absence is work."""
    if ctx.bundle is None:
        names = ("k3s",) if ctx.cluster.is_k3s else ("kubeadm", "kubelet", "kubectl")
        missing = [b for b in names if not ctx.facts[node.name].binaries.get(b)]
        if missing:
            yield "install " + ", ".join(missing) + " from the bundle"


def _first_server_ready(ctx: Context, node: Node):
    marker = K3S_NODE_TOKEN if ctx.cluster.is_k3s else ADMIN_CONF
    verb = "start k3s server with cluster-init" if ctx.cluster.is_k3s else "kubeadm init"
    return file_present(marker, verb)(ctx, node)


def _joined(ctx: Context, node: Node):
    if ctx.cluster.is_k3s:
        server = node.has("control_plane")
        return file_present(K3S_NODE_TOKEN if server else K3S_AGENT_CONF,
                            "join with k3s " + ("server" if server else "agent"))(ctx, node)
    return file_present(KUBELET_CONF, "kubeadm join")(ctx, node)


UP: list[Phase] = [
    Phase("prepare", "01-prepare.yml", every, (hostname_set, swap_off)),
    Phase("runtime", "02-runtime.yml", runtime_nodes, (service_running("containerd"),)),
    Phase("pki", None, pki_nodes),
    Phase("etcd", "03-etcd.yml", etcd_nodes, (service_running("etcd"),)),
    Phase("loadbalancer", "04-loadbalancer.yml", lb_nodes, (lb_running,)),
    Phase("binaries", "05-binaries.yml", kube_nodes, (binaries_installed,), needs_bundle=True),
    Phase("control-plane", "06-control-plane.yml", first_control_plane, (_first_server_ready,),
          needs_bundle=True, markers=(ADMIN_CONF, K3S_NODE_TOKEN)),
    Phase("join-control-plane", "07-join.yml", joining_control_planes, (_joined,), serial=True,
          needs_bundle=True, markers=(KUBELET_CONF, K3S_NODE_TOKEN)),
    Phase("join-workers", "07-join.yml", workers, (_joined,), needs_bundle=True,
          markers=(KUBELET_CONF, K3S_AGENT_CONF)),
    Phase("cni", "08-addons.yml", first_control_plane, needs_bundle=True),
    Phase("addons", "08-addons.yml", first_control_plane, needs_bundle=True),
    Phase("kubeconfig", None, first_control_plane, (kubeconfig_fetched,), needs_bundle=True,
          markers=(ADMIN_CONF, K3S_ADMIN_CONF)),
]


def named(name: str, phases: list[Phase] = UP) -> Phase:
    for p in phases:
        if p.name == name:
            return p
    raise KeyError(name)


def lb_services(c: Cluster) -> tuple[str, ...]:
    return {"haproxy": ("haproxy", "keepalived"), "local": ("haproxy",)}.get(c.ha_mode, ())


SERVICES = ("containerd", "etcd", "haproxy", "keepalived", "kubelet", "k3s", "k3s-agent",
            "chrony")
