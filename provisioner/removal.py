"""remove-node: a host leaves the cluster, as an ordered list of phases (dry run with `plan`).

    31 drain         cordon + drain (kube nodes), kubectl on the first control plane that stays
    32 etcd-servers  external etcd member: the API servers' --etcd-servers without it
    33 etcd-leave    external etcd member: `etcdctl member remove` from a member that stays
    34 reset-node    99-reset.yml on the host: kubeadm reset (stacked etcd member leaves),
                     services stopped and disabled, data removed
    35 delete-node   the Node object (after the reset: a running kubelet registers again)
    then every cluster.up phase on the model WITHOUT the host (`Rest`): load balancer backends
    (haproxy pair, local proxies), /etc/hosts, the etcd configs, kubeadm-init.yaml and its
    ConfigMap, node labels: the cluster is left as `cluster.up` on the edited inventory has it.

The first control plane may leave when another stays: the `Rest` phases see the next one as
first, so kubectl, the admin kubeconfig and (kubeadm) kubeadm-init.yaml move there; with k3s
it gets the first server's config (cluster-init, no `server:` — k3s starts a server that
already holds etcd data from that data and ignores both) and, without a VIP, every other k3s
node's `server:` URL moves to it (their k3s restarts). Everything that would lose data or
quorum is refused before any change (`refusals`). Each
phase reads its end state from the hosts, so a rerun after a failure finishes the job. The host
stays in the inventory until this succeeds; the caller then tells the user to delete it.

`record_hosts` keeps the hosts of the last successful `cluster.up` (name, address, SSH) in the
state folder; `strays` probes those no longer in the inventory, for `cluster.plan` to flag the
ones still running cluster services.
"""

from __future__ import annotations

import dataclasses
import json

from . import actions, paths
from . import facts as host_facts
from . import phases as ph
from .errors import UserError
from .model import Cluster, Node
from .phases import kube
from .phases.removal_base import remaining
from .state import State, write_atomic

HOSTS_FILE = "hosts.json"
DRAIN_TIMEOUT = 120


class Rest(ph.Phase):
    """A cluster.up phase run on the cluster without the leaving host: same playbook, files and
    stamps as `cluster.up` on the inventory without it."""

    def __init__(self, inner: ph.Phase, target: Node):
        self.inner, self.target = inner, target
        self.title = f"{inner.title} (without {target.name})"
        self.playbook, self.serial = inner.playbook, inner.serial
        self.needs_bundle, self.files_read_facts = inner.needs_bundle, inner.files_read_facts
        self._view = None

    def view(self, ctx: ph.Context) -> ph.Context:
        if self._view is None or self._view[0] is not ctx:
            sub = ph.Context(remaining(ctx.cluster, self.target), ctx.secrets, ctx.pki,
                             facts=ctx.facts, bundle=ctx.bundle, local=ctx.local)
            self._view = (ctx, sub)
        return self._view[1]

    def hosts(self, c):
        return self.inner.hosts(remaining(c, self.target))

    def requires_bundle(self, c):
        return self.inner.requires_bundle(c)

    def package_minimums(self, c):
        return self.inner.package_minimums(c)

    def files(self, ctx, node):
        return self.view(ctx).files(self.inner, node)

    def probes(self, c, node):
        return self.inner.probes(remaining(c, self.target), node)

    @property
    def stamp_path(self):
        return self.inner.stamp_path

    def pending(self, ctx, node):
        return self.inner.pending(self.view(ctx), node)

    def work(self, ctx):
        return self.inner.work(self.view(ctx))

    def run(self, run, nodes):
        view = self.view(run.ctx)  # the whole run sees the cluster without the host (its
        # first control plane fetches the kubeconfig, renews join secrets, ...)
        self.inner.run(dataclasses.replace(run, ctx=view, cluster=view.cluster), nodes)


def removal_phases(cluster: Cluster, target: Node, force=False, timeout=DRAIN_TIMEOUT) -> list:
    own = [p.on(target, force=force, timeout=timeout) for p in
           (ph.DRAIN, ph.ETCD_SERVERS, ph.ETCD_LEAVE, ph.RESET_NODE, ph.DELETE_NODE)]
    return own + [Rest(p, target) for p in actions.UP]


def target_of(cluster: Cluster, name: str) -> Node:
    try:
        return cluster.node(name)
    except KeyError:
        raise UserError(f"{name} is not in {cluster.source} (hosts: "
                        f"{', '.join(n.name for n in cluster.nodes)}); remove-node takes a host "
                        "of the inventory, which stays there until it has left") from None


def refusals(ctx: ph.Context, target: Node) -> list[str]:
    """Why removing `target` now would lose data or quorum, or is not supported: [] when it may
    go. Read from the model and the probed facts only."""
    from importlib import import_module

    c, out = ctx.cluster, []
    health = import_module("provisioner.phases.03_etcd").HEALTH
    if target.has("loadbalancers"):
        out.append(f"{target.name} is a load balancer (it holds the API VIP {c.api_vip} with "
                   "keepalived): remove-node takes cluster nodes (control planes, workers, etcd "
                   "members), not load balancers")
    if target.has("control_plane"):
        if len(c.control_planes) == 1:
            out.append(f"{target.name} is the last control plane: the cluster would have no API "
                       "server (use cluster.reset to take the whole cluster down)")
        elif not c.external_etcd:
            # stacked etcd (kubeadm) or k3s embedded etcd: one member per control plane
            others = [n for n in c.control_planes if n != target]
            name = kube.NODE if c.is_k3s else kube.API
            down = [n.name for n in others if not ctx.ok(n, name)]
            if down:
                out.append(f"{target.name} runs a member of the {'embedded' if c.is_k3s else 'stacked'}"
                           f" etcd and {', '.join(down)} {'does' if len(down) == 1 else 'do'} not "
                           "answer: the remaining members could lose quorum; bring "
                           f"{'it' if len(down) == 1 else 'them'} back first")
    if target in c.etcd_members:
        others = [m for m in c.etcd_members if m != target]
        if not others:
            out.append(f"{target.name} is the last etcd member: removing it loses the cluster's "
                       "data (use cluster.reset to take the whole cluster down)")
        down = [m.name for m in others if not ctx.ok(m, health)]
        if down:
            left = len(others)
            out.append(f"etcd member{'s' if len(down) > 1 else ''} {', '.join(down)} "
                       f"{'are' if len(down) > 1 else 'is'} not healthy: after removing "
                       f"{target.name} the {left} remaining member(s) need {left // 2 + 1} healthy"
                       f" for quorum and every other member must be healthy before one leaves; "
                       "bring them back first (cluster.status)")
    return out


def remove_node(cluster: Cluster, name: str, bundle_dir=None, force=False, dry_run=False,
                timeout=DRAIN_TIMEOUT, trust_new=False, progress=None) -> list:
    """Take host `name` out of the cluster. Returns [(phase, work)] (with dry_run: what would
    be done). Refusals raise UserError before any change."""
    target = target_of(cluster, name)
    todo = removal_phases(cluster, target, force=force, timeout=timeout)
    with actions.session(cluster, bundle_dir, progress=progress, shared=dry_run,
                         trust_new=trust_new, phases=todo) as run:
        refused = refusals(run.ctx, target)
        if refused:
            raise UserError(f"refused to remove {name}; nothing was changed:\n  "
                            + "\n  ".join(refused))
        if dry_run:
            return run.plan(todo)
        done = run.apply_all(todo, progress)
        forget_host(run.state, name)
        return done


# -- the hosts of the last successful cluster.up ---------------------------------------------------

def record_hosts(state: State, cluster: Cluster) -> None:
    hosts = [{"name": n.name, "address": n.address, "user": n.ssh_user, "port": n.ssh_port,
              "key": n.ssh_key} for n in cluster.nodes]
    write_atomic(state.dir / HOSTS_FILE, json.dumps(hosts, indent=1).encode() + b"\n", 0o600)


def known_hosts_of(state: State) -> list[dict]:
    path = state.dir / HOSTS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def forget_host(state: State, name: str) -> None:
    hosts = known_hosts_of(state)
    if any(h["name"] == name for h in hosts):
        write_atomic(state.dir / HOSTS_FILE, json.dumps(
            [h for h in hosts if h["name"] != name], indent=1).encode() + b"\n", 0o600)


def strays(cluster: Cluster) -> list[str]:
    """Hosts of the last successful cluster.up that are not in the inventory but still run this
    cluster's services (marker file with this cluster's name, or etcd / kubelet / k3s running):
    one line each, saying what was found and what to do."""
    from .ssh import Pool

    state = State(cluster)
    names = {n.name for n in cluster.nodes}
    gone = [Node(h["name"], h["address"], (), h.get("user") or "root", h.get("port") or 22,
                 h.get("key")) for h in known_hosts_of(state) if h["name"] not in names]
    if not gone:
        return []
    out = []
    try:
        with Pool(gone, state.known_hosts) as pool:
            found = host_facts.probe(pool, {n.name: [] for n in gone}, services=paths.SERVICES,
                                     hosts=[n.name for n in gone])
    except UserError as e:
        return [f"{', '.join(n.name for n in gone)}: were in the cluster, are not in the "
                f"inventory and could not be checked: {e}"]
    for n in gone:
        f = found[n.name]
        if not f.reachable:
            out.append(f"{n.name} ({n.address}): was in the cluster, is not in the inventory "
                       f"and cannot be reached to check it ({f.error})")
            continue
        why = []
        if (f.marker or {}).get("cluster_name") == cluster.cluster_name:
            why.append(f"{paths.MARKER} names cluster {cluster.cluster_name}")
        why += [f"{u} running" for u in ("etcd", "kubelet", "k3s", "k3s-agent")
                if f.services.get(u, {}).get("active") == "active"]
        if why:
            out.append(f"{n.name} ({n.address}): not in the inventory but still part of cluster "
                       f"{cluster.cluster_name} ({'; '.join(why)}): put it back and run "
                       f"`invoke cluster.remove-node {n.name}`, or reset it")
    return out
