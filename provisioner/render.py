"""Every config file a node gets, rendered from templates/ (laid out as the node's file system).

`TABLE` below is the whole story: which template becomes which file, on which hosts, pushed by
which phase, with which mode, and which units restart when it changes. `render` walks it for
every node; the same cluster and secrets always give the same bytes.

Templates are Jinja (StrictUndefined: a missing value is an error, never an empty string) and
see `cluster`, `node`, `secrets`, `item` (for per-item entries), the helpers in `GLOBALS` and
the filter `q` (a value as a quoted YAML/JSON scalar).

Secrets: `bootstrap_token`, `certificate_key`, `k3s_token`, and optionally `vrrp_password` and
`ca_cert_hash`. The kubeadm join files need `ca_cert_hash` (the pin of the cluster CA, known
on the controller before `kubeadm init` because the provisioner makes that CA); without it they
are left out rather than rendered with a placeholder.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import jinja2

from .model import Cluster, Node

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

# Images the rendered manifests run (the offline bundle must carry them).
KUBE_VIP_IMAGE = "ghcr.io/kube-vip/kube-vip:v0.8.9"
FLANNEL_IMAGE = "ghcr.io/flannel-io/flannel:v0.26.7"
FLANNEL_CNI_IMAGE = "ghcr.io/flannel-io/flannel-cni-plugin:v1.6.2-flannel1"
CRI_SOCKET = "unix:///run/containerd/containerd.sock"

PHASES = ("prepare", "runtime", "etcd", "loadbalancer", "binaries", "control-plane",
          "join-control-plane", "join-workers", "cni", "addons")


@dataclass(frozen=True)
class File:
    content: bytes
    mode: int  # 0o644, or 0o600 for anything holding a secret
    phase: str  # which phase pushes it
    restart: tuple[str, ...] = ()  # systemd units to restart when this file changes on a host


# ---------------------------------------------------------------------------------------------
# Which hosts: small predicates on (cluster, node)
# ---------------------------------------------------------------------------------------------

Pred = Callable[[Cluster, Node], bool]


def every(c: Cluster, n: Node) -> bool:
    return True


def is_cp(c: Cluster, n: Node) -> bool:
    return n.has("control_plane")


def is_worker(c: Cluster, n: Node) -> bool:
    """A worker that is not also a control plane (those join once, as control planes)."""
    return n.has("workers") and not n.has("control_plane")


def is_first(c: Cluster, n: Node) -> bool:
    return n.name == c.first_control_plane.name


def both(*preds: Pred) -> Pred:
    return lambda c, n: all(p(c, n) for p in preds)


def kubeadm(*preds: Pred) -> Pred:
    return lambda c, n: not c.is_k3s and all(p(c, n) for p in preds)


def k3s(*preds: Pred) -> Pred:
    return lambda c, n: c.is_k3s and all(p(c, n) for p in preds)


def kube_node(c: Cluster, n: Node) -> bool:
    return is_cp(c, n) or is_worker(c, n)


def joining_cp(c: Cluster, n: Node) -> bool:
    return is_cp(c, n) and not is_first(c, n)


def etcd_member(c: Cluster, n: Node) -> bool:
    return c.external_etcd and n.has("etcd")


def lb_pair(c: Cluster, n: Node) -> bool:
    return c.ha_mode == "haproxy" and n.has("loadbalancers")


def local_lb(c: Cluster, n: Node) -> bool:
    return c.ha_mode == "local" and is_worker(c, n)


def kube_vip(c: Cluster, n: Node) -> bool:
    return c.ha_mode == "kube-vip" and is_cp(c, n)


def cni_is(name: str) -> Pred:
    return lambda c, n: c.cni == name


def registries(c: Cluster) -> list[str]:
    return sorted(c.registry_mirrors)


def mirror_urls(c: Cluster, registry: str) -> list[str]:
    """The mirrors of one registry (a single URL may be written without a list)."""
    urls = c.registry_mirrors[registry]
    return [urls] if isinstance(urls, str) else list(urls)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    template: str  # under templates/
    path: str  # absolute node path; "{item}" is replaced per item when `each` is set
    hosts: Pred
    phase: str
    mode: int = 0o644
    restart: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # secrets that must be known, else the file is left out
    each: Callable[[Cluster], list[str]] | None = None


KUBEADM_DIR = "/etc/kubernetes"
ADDONS = "/etc/kubernetes/addons"
K3S_DIR = "/etc/rancher/k3s"

TABLE: list[Entry] = [
    # -- prepare: every host ----------------------------------------------------------------
    Entry("etc/hosts.j2", "/etc/hosts", every, "prepare"),
    Entry("etc/sysctl.d/90-kubernetes.conf.j2", "/etc/sysctl.d/90-kubernetes.conf", every,
          "prepare"),
    Entry("etc/modules-load.d/kubernetes.conf.j2", "/etc/modules-load.d/kubernetes.conf", every,
          "prepare"),
    Entry("etc/rancher/k3s/registries.yaml.j2", f"{K3S_DIR}/registries.yaml", k3s(is_cp),
          "prepare", 0o600, ("k3s",)),
    Entry("etc/rancher/k3s/registries.yaml.j2", f"{K3S_DIR}/registries.yaml", k3s(is_worker),
          "prepare", 0o600, ("k3s-agent",)),
    # -- runtime: containerd on kubeadm nodes (k3s brings its own) ----------------------------
    Entry("etc/containerd/config.toml.j2", "/etc/containerd/config.toml", kubeadm(kube_node),
          "runtime", restart=("containerd",)),
    Entry("etc/containerd/certs.d/hosts.toml.j2", "/etc/containerd/certs.d/{item}/hosts.toml",
          kubeadm(kube_node), "runtime", restart=("containerd",), each=registries),
    Entry("etc/crictl.yaml.j2", "/etc/crictl.yaml", kubeadm(kube_node), "runtime"),
    # -- etcd: external members (kubeadm with an etcd group) ----------------------------------
    Entry("etc/etcd/etcd.conf.yml.j2", "/etc/etcd/etcd.conf.yml", etcd_member, "etcd",
          restart=("etcd",)),
    Entry("etc/systemd/system/etcd.service.j2", "/etc/systemd/system/etcd.service", etcd_member,
          "etcd", restart=("etcd",)),
    # -- loadbalancer: haproxy + keepalived pair, local haproxy on workers, or kube-vip -------
    Entry("etc/haproxy/haproxy.cfg.j2", "/etc/haproxy/haproxy.cfg", lb_pair, "loadbalancer",
          restart=("haproxy",)),
    Entry("etc/keepalived/keepalived.conf.j2", "/etc/keepalived/keepalived.conf", lb_pair,
          "loadbalancer", 0o600, ("keepalived",)),
    Entry("etc/haproxy/haproxy.cfg.j2", "/etc/haproxy/haproxy.cfg", local_lb, "loadbalancer",
          restart=("haproxy",)),
    Entry("etc/kubernetes/manifests/kube-vip.yaml.j2", "/etc/kubernetes/manifests/kube-vip.yaml",
          kubeadm(kube_vip), "loadbalancer"),
    Entry("etc/kubernetes/manifests/kube-vip.yaml.j2",
          "/var/lib/rancher/k3s/agent/pod-manifests/kube-vip.yaml", k3s(kube_vip),
          "loadbalancer"),
    # -- binaries: the units that run what the bundle brought ---------------------------------
    Entry("etc/systemd/system/kubelet.service.j2", "/etc/systemd/system/kubelet.service",
          kubeadm(kube_node), "binaries"),
    Entry("etc/systemd/system/kubelet.service.d/10-kubeadm.conf.j2",
          "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf", kubeadm(kube_node),
          "binaries"),
    Entry("etc/systemd/system/k3s.service.j2", "/etc/systemd/system/k3s.service", k3s(is_cp),
          "binaries"),
    Entry("etc/systemd/system/k3s.service.j2", "/etc/systemd/system/k3s-agent.service",
          k3s(is_worker), "binaries"),
    # -- control-plane: the first control plane -----------------------------------------------
    Entry("etc/kubernetes/kubeadm-init.yaml.j2", f"{KUBEADM_DIR}/kubeadm-init.yaml",
          kubeadm(is_first), "control-plane", 0o600),
    Entry("etc/rancher/k3s/config.yaml.j2", f"{K3S_DIR}/config.yaml", k3s(is_first),
          "control-plane", 0o600, ("k3s",)),
    # -- join-control-plane / join-workers ----------------------------------------------------
    Entry("etc/kubernetes/kubeadm-join.yaml.j2", f"{KUBEADM_DIR}/kubeadm-join.yaml",
          kubeadm(joining_cp), "join-control-plane", 0o600, needs=("ca_cert_hash",)),
    Entry("etc/rancher/k3s/config.yaml.j2", f"{K3S_DIR}/config.yaml", k3s(joining_cp),
          "join-control-plane", 0o600, ("k3s",)),
    Entry("etc/kubernetes/kubeadm-join.yaml.j2", f"{KUBEADM_DIR}/kubeadm-join.yaml",
          kubeadm(is_worker), "join-workers", 0o600, needs=("ca_cert_hash",)),
    Entry("etc/rancher/k3s/config.yaml.j2", f"{K3S_DIR}/config.yaml", k3s(is_worker),
          "join-workers", 0o600, ("k3s-agent",)),
    # -- cni and addons: manifests applied from the first control plane -----------------------
    Entry("etc/kubernetes/addons/flannel.yaml.j2", f"{ADDONS}/flannel.yaml",
          kubeadm(is_first, cni_is("flannel")), "cni"),
    Entry("etc/kubernetes/addons/calico-installation.yaml.j2",
          f"{ADDONS}/calico-installation.yaml", both(is_first, cni_is("calico")), "cni"),
    Entry("etc/kubernetes/addons/coredns.yaml.j2", f"{ADDONS}/coredns.yaml", kubeadm(is_first),
          "addons"),
]

# ---------------------------------------------------------------------------------------------
# Values templates use (kept here so templates stay declarative)
# ---------------------------------------------------------------------------------------------


def apiserver_port(c: Cluster) -> int:
    """The API servers listen on the API port; load balancers forward the same port."""
    return c.api_port


def join_endpoint(c: Cluster, n: Node) -> str:
    """Where a joining node finds the API. In `local` mode the workers' own haproxy answers on
    127.0.0.1, but a joining control plane has none, so it asks the first control plane."""
    if c.ha_mode == "local" and n.has("control_plane"):
        return f"{c.first_control_plane.address}:{c.api_port}"
    return c.api_endpoint


def k3s_server_url(c: Cluster) -> str:
    """k3s agents balance across servers themselves: without a VIP they use the first server."""
    host = c.api_vip if c.ha_mode in ("kube-vip", "haproxy") and c.api_vip else \
        c.first_control_plane.address
    return f"https://{host}:{c.api_port}"


def vip_prefix(c: Cluster) -> int:
    """Prefix length of the VIP: the lab bridge's when the VIP lies in it, else a host route."""
    if c.api_vip and c.lab_bridge_address:
        net = ipaddress.ip_interface(c.lab_bridge_address).network
        if ipaddress.ip_address(c.api_vip) in net:
            return net.prefixlen
    return 32


def vrrp_router_id(c: Cluster) -> int:
    """1..255, stable per cluster name, so two clusters on one segment do not collide."""
    return int(hashlib.sha256(c.cluster_name.encode()).hexdigest(), 16) % 255 + 1


def vrrp_password(secrets: Mapping[str, str]) -> str:
    """keepalived PASS auth takes 8 characters: the state's vrrp_password, else derived."""
    if secrets.get("vrrp_password"):
        return str(secrets["vrrp_password"])[:8]
    return hashlib.sha256(("vrrp:" + secrets["k3s_token"]).encode()).hexdigest()[:8]


def keepalived_priority(c: Cluster, n: Node) -> int:
    if n.keepalived_priority is not None:
        return n.keepalived_priority
    return 150 - 10 * [x.name for x in c.loadbalancers].index(n.name)


def kube_vip_kubeconfig(c: Cluster, n: Node) -> str:
    """The host file kube-vip reads. kubeadm 1.29+ grants admin.conf its rights only after init,
    so on the first control plane kube-vip uses super-admin.conf (as kube-vip's docs say)."""
    if c.is_k3s:
        return "/etc/rancher/k3s/k3s.yaml"
    if n.name == c.first_control_plane.name and minor(c) >= (1, 29):
        return "/etc/kubernetes/super-admin.conf"
    return "/etc/kubernetes/admin.conf"


def minor(c: Cluster) -> tuple[int, int]:
    major, mnr = c.version_minor.split(".")
    return int(major), int(mnr)


def taints(n: Node) -> list[dict]:
    """`key=value:Effect` or `key:Effect` strings as Taint objects."""
    out = []
    for t in n.taints:
        kv, _, effect = t.rpartition(":")
        key, _, value = kv.partition("=")
        taint = {"key": key, "effect": effect}
        if value:
            taint["value"] = value
        out.append(taint)
    return out


def node_labels(n: Node) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))


def preflight_ignores(c: Cluster, n: Node) -> list[str]:
    """kubeadm join checks the provisioner's own placements would trip: the kube-vip static
    pod already in manifests/ on control planes. (Workers get their CA from the join itself.)"""
    out = []
    if c.ha_mode == "kube-vip" and is_cp(c, n):
        out.append("DirAvailable--etc-kubernetes-manifests")
    return out


GLOBALS = {
    "apiserver_port": apiserver_port,
    "join_endpoint": join_endpoint,
    "k3s_server_url": k3s_server_url,
    "vip_prefix": vip_prefix,
    "vrrp_router_id": vrrp_router_id,
    "vrrp_password": vrrp_password,
    "keepalived_priority": keepalived_priority,
    "kube_vip_kubeconfig": kube_vip_kubeconfig,
    "taints": taints,
    "node_labels": node_labels,
    "preflight_ignores": preflight_ignores,
    "is_worker": is_worker,
    "mirror_urls": mirror_urls,
    "KUBE_VIP_IMAGE": KUBE_VIP_IMAGE,
    "FLANNEL_IMAGE": FLANNEL_IMAGE,
    "FLANNEL_CNI_IMAGE": FLANNEL_CNI_IMAGE,
    "CRI_SOCKET": CRI_SOCKET,
}


def _quote(value) -> str:
    """A scalar as JSON, which is also valid YAML and TOML for strings, numbers and booleans."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined: raises UndefinedError naming the missing value
    return json.dumps(value)


@functools.cache
def environment() -> jinja2.Environment:
    """One environment per process: templates are compiled once."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.globals.update(GLOBALS)
    env.filters["q"] = _quote
    return env


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def render(cluster: Cluster, secrets: Mapping[str, str]) -> dict[str, dict[str, File]]:
    """{inventory host name: {absolute node path: File}}; deterministic (same inputs -> same
    bytes). Every host of the cluster has a key, even when it gets no file."""
    env = environment()
    secrets = dict(sorted(secrets.items()))
    out: dict[str, dict[str, File]] = {n.name: {} for n in cluster.nodes}
    for entry in TABLE:
        if any(not secrets.get(k) for k in entry.needs):
            continue
        template = env.get_template(entry.template)
        items: Iterable = entry.each(cluster) if entry.each else [None]
        for node in cluster.nodes:
            if not entry.hosts(cluster, node):
                continue
            for item in items:
                path = entry.path.replace("{item}", str(item)) if entry.each else entry.path
                if path in out[node.name]:
                    raise ValueError(f"{node.name}: {path} rendered twice (check render.TABLE)")
                text = template.render(cluster=cluster, node=node, secrets=secrets, item=item)
                out[node.name][path] = File(text.encode(), entry.mode, entry.phase,
                                            entry.restart)
    return {host: dict(sorted(files.items())) for host, files in out.items()}


def write_tree(rendered: Mapping[str, Mapping[str, File]], out_dir) -> list[Path]:
    """Write DIR/<host>/<absolute node path>; secret files are 0600 from their first byte."""
    written = []
    base = Path(out_dir)
    for host, files in sorted(rendered.items()):
        for path, f in sorted(files.items()):
            target = base / host / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, f.mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(f.content)
            os.chmod(tmp, f.mode)
            os.replace(tmp, target)
            written.append(target)
    return written
