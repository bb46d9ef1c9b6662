"""`cluster.upgrade --to VERSION`: an action of three phases, run inside actions.session.

    UPGRADE = [images, upgrade-control-plane, upgrade-nodes]
              (playbooks/05-images.yml, 93-upgrade-*.yml)

First the target version's images from its bundle go into every kubeadm node's containerd (those
a node lacks), so that the new static pods and kube-proxy start on a cluster that pulls nothing.
kubeadm: `kubeadm upgrade plan` + `upgrade apply` on the first control plane, `upgrade node` on
the others one at a time; then every node (control planes one at a time, then workers
--max-unavailable at a time): drain, the target binaries (kubeadm first), `kubeadm upgrade node`
(workers), restart the kubelet, wait for the node to report the version, uncordon. k3s: servers
one at a time, then agents: drain, the k3s binary, restart, wait for registration, uncordon.

Refused before any change (with the reason): a version the distribution does not write that way
or the provisioner does not support, a downgrade, a skipped minor, a version the bundle does not
hold, a node that is unreachable, not built, or reports no version. Every version is read from
the nodes (what the API servers and kubelets report), so a rerun after a failure or a kill
picks up exactly where the cluster stands. The inventory file is never rewritten.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from . import actions, bundle as bundles, phases as ph, preflight, versions
from .errors import UserError
from .model import Cluster
from .validate import SUPPORTED_MINORS

UPGRADE: tuple[ph.Phase, ...] = (ph.IMAGES, ph.UPGRADE_CONTROL_PLANE, ph.UPGRADE_NODES)
VERSION = {"kubeadm": re.compile(r"v(\d+)\.(\d+)\.(\d+)"),
           "k3s": re.compile(r"v(\d+)\.(\d+)\.(\d+)\+k3s(\d+)")}
KUBELET_MAX_OLDER = 3  # version skew policy: a kubelet may be up to 3 minors older


# -- the version rules (pure: tests/test_upgrade.py runs them as data cases) --------------------

def parse(version: str, distribution: str = "kubeadm") -> tuple[int, ...]:
    m = VERSION[distribution].fullmatch(str(version or ""))
    if not m:
        example = versions.DEFAULT[distribution]
        raise UserError(f"--to {version}: not a {distribution} version (write it like "
                        f"{example})")
    return tuple(int(x) for x in m.groups())


@dataclass(frozen=True)
class NodeVersions:
    """What a node reports: its API server (control planes, kubeadm) and its kubelet."""

    name: str
    kubelet: str | None
    apiserver: str | None = None
    control_plane: bool = False


def refusals(nodes: list[NodeVersions], to: str, distribution: str = "kubeadm") -> list[str]:
    """Why upgrading these nodes to `to` must not start ([] = it may). Resuming an upgrade to
    `to` (some nodes there already) is allowed."""
    target = parse(to, distribution)
    if f"{target[0]}.{target[1]}" not in SUPPORTED_MINORS:
        return [f"--to {to}: {target[0]}.{target[1]} is not supported (supported: "
                f"{', '.join(SUPPORTED_MINORS)})"]
    out, seen = [], []
    for n in nodes:
        pairs = [("kubelet" if distribution == "kubeadm" else "k3s", n.kubelet)]
        if n.control_plane and distribution == "kubeadm":
            pairs.append(("API server", n.apiserver))
        for what, v in pairs:
            if not v:
                out.append(f"{n.name}: its {what} reports no version (is it running? see "
                           "cluster.status); every node must answer before an upgrade")
                continue
            try:
                seen.append((parse(v, distribution), n.name, what, v))
            except UserError:
                out.append(f"{n.name}: its {what} reports {v!r}, not a {distribution} version")
    if out or not seen:
        return out
    oldest, newest = min(seen), max(seen)
    if target < newest[0]:
        out.append(f"--to {to} is a downgrade: {newest[1]}'s {newest[2]} runs {newest[3]}; "
                   "downgrades are refused")
    if target[0] != oldest[0][0] or target[1] > oldest[0][1] + 1:
        nxt = f"v{oldest[0][0]}.{oldest[0][1] + 1}"
        out.append(f"--to {to} skips a minor: {oldest[1]}'s {oldest[2]} runs {oldest[3]}; "
                   f"upgrade one minor at a time (first --to {nxt}.x, then on)")
    return out


def skew_problems(nodes: list[NodeVersions], distribution: str = "kubeadm") -> list[str]:
    """The version skew policy on a snapshot: API servers within one minor of each other; no
    kubelet newer than the oldest API server, none more than 3 minors older than the newest."""
    if distribution != "kubeadm":
        return []
    apis = [(parse(n.apiserver), n.name) for n in nodes if n.control_plane and n.apiserver]
    if not apis:
        return []
    old, new = min(apis), max(apis)
    out = []
    if (new[0][0], new[0][1]) > (old[0][0], old[0][1] + 1):
        out.append(f"API servers more than one minor apart: {old[1]} and {new[1]}")
    for n in nodes:
        if not n.kubelet:
            continue
        k = parse(n.kubelet)
        if k[:2] > old[0][:2]:
            out.append(f"{n.name}: kubelet {n.kubelet} is newer than the API server of {old[1]}")
        if new[0][1] - k[1] > KUBELET_MAX_OLDER:
            out.append(f"{n.name}: kubelet {n.kubelet} is more than {KUBELET_MAX_OLDER} minors "
                       f"older than the API server of {new[1]}")
    return out


# -- reading the cluster -----------------------------------------------------------------------

def node_versions(ctx: ph.Context) -> list[NodeVersions]:
    cp_mod = ph.UPGRADE_CONTROL_PLANE.__class__.__module__
    from importlib import import_module

    cp = import_module(cp_mod)
    nodes_mod = import_module(ph.UPGRADE_NODES.__class__.__module__)
    c = ctx.cluster
    return [NodeVersions(n.name, nodes_mod.kubelet_version(ctx, n),
                         cp.apiserver_version(ctx, n) if n.has("control_plane") else None,
                         n.has("control_plane")) for n in c.kube_nodes]


def cordoned(ctx: ph.Context) -> list[str]:
    from importlib import import_module

    nodes_mod = import_module(ph.UPGRADE_NODES.__class__.__module__)
    return [n.name for n in ctx.cluster.kube_nodes if nodes_mod.cordoned(ctx, n)]


def target_cluster(cluster: Cluster, to: str) -> Cluster:
    parse(to, cluster.distribution)
    return dataclasses.replace(cluster, kubernetes_version=to)


# -- the action --------------------------------------------------------------------------------

@dataclass
class Result:
    done: list  # [(phase, {host: [changes]})]
    to: str
    before: list[NodeVersions]
    dry_run: bool = False


def upgrade(cluster: Cluster, to: str, bundle_dir=None, max_unavailable: int = 1,
            dry_run: bool = False, progress=None, trust_new: bool = False) -> Result:
    """Upgrade the cluster to `to` (or, with dry_run, say what that would do)."""
    if int(max_unavailable) < 1:
        raise UserError(f"--max-unavailable {max_unavailable}: must be 1 or more")
    target = target_cluster(cluster, to)
    found, bundle_error = None, None
    try:
        found = bundles.locate(target, Path(bundle_dir) if bundle_dir else None)
    except UserError as e:
        bundle_error = e
    # the session must not look for a bundle itself: the target's is located above
    session_cluster = dataclasses.replace(target, bundle_dir=None)
    with actions.session(session_cluster, None, progress=progress, shared=dry_run,
                         trust_new=trust_new, survey=False, phases=UPGRADE) as run:
        run.ctx.bundle = found
        run.max_unavailable = int(max_unavailable)
        check(run, to, found, bundle_error, bundle_dir)
        before = node_versions(run.ctx)
        if dry_run:
            return Result(run.plan(UPGRADE), to, before, dry_run=True)
        done = run.apply_all(UPGRADE, progress)
        left = skew_problems(node_versions(run.ctx)) + [
            f"{n}: still cordoned" for n in cordoned(run.ctx)]
        if left:
            raise actions.PhaseFailed("upgrade finished with problems:\n" + "\n".join(left))
        return Result(done, to, before)


def check(run, to: str, found, bundle_error, bundle_dir) -> None:
    """Everything that refuses the upgrade, before any change."""
    c = run.cluster
    unreachable = run.probe()
    if unreachable:
        raise UserError("refused before any change: every node must answer:\n"
                        + "\n".join(unreachable))
    problems = preflight.check(c, run.ctx.facts)
    if preflight.has_errors(problems):
        raise UserError("preflight found problems; nothing was changed on any host\n"
                        + preflight.report(problems))
    refused = run.foreign_cas()
    for node in c.kube_nodes:
        built = any(p.completed_once(run.ctx, node) for p in
                    (ph.CONTROL_PLANE, ph.JOIN_CONTROL_PLANE, ph.JOIN_WORKERS)
                    if node in p.hosts(c))
        if not built:
            refused.append(f"{node.name}: not built yet (run cluster.up at the current version"
                           " first)")
    if not refused:
        refused += refusals(node_versions(run.ctx), to, c.distribution)
    if refused:
        raise UserError("refused before any change:\n" + "\n".join(refused))
    if bundle_error is not None:
        raise UserError(f"refused before any change: the bundle does not hold {to}: "
                        f"{bundle_error}")
    if found is None:
        raise actions.BundleMissing(f"refused before any change: no bundle holds {to}.\n"
                                    + bundles.how_to_supply(c, bundle_dir))


def summary(cluster: Cluster, result: Result) -> str:
    """What the user reads at the end: the next step is theirs (the file is never rewritten)."""
    source = cluster.source or "INVENTORY"
    if result.dry_run:
        return ""
    if cluster.kubernetes_version == result.to:
        return (f"cluster {cluster.cluster_name}: every node runs {result.to}; {source} already "
                f"says kubernetes_version: {result.to}")
    return (f"cluster {cluster.cluster_name}: every node runs {result.to} and none is cordoned."
            f"\nNow set `kubernetes_version: {result.to}` in {source} (this command does not "
            "edit it); until then cluster.up refuses to run, because the nodes run another "
            "version than the file says.")
