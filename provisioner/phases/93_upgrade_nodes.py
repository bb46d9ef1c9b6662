"""Phase upgrade-nodes (every kube node: control planes one at a time, then workers
`max_unavailable` at a time; needs the target bundle) ↔ playbooks/93-upgrade-nodes.yml.

Per node: drain (kubectl on the first control plane) → the bundle's binaries (kubeadm first,
then kubelet, kubectl, crictl; k3s: the k3s binary) → kubeadm workers: `kubeadm upgrade node` →
restart the kubelet (k3s / k3s-agent) and wait until the node reports the new version →
uncordon. Refused while any API server is older than the target: a kubelet never runs newer
than the oldest API server.

Done is read from the end state: the version the node's kubelet reports for its Node object
(`.status.nodeInfo.kubeletVersion`, asked with the node's own credentials) and the node's cordon
state (`.spec.unschedulable`, asked on the first control plane). A node left cordoned by an
interrupted run is work (uncordon), so a rerun leaves no node cordoned.
"""

from __future__ import annotations

from importlib import import_module

from .. import paths
from ..errors import UserError
from .base import Phase, kubectl

KUBELET = "kubelet-version"
DRAIN_TIMEOUT = "300s"


def binaries_phase():
    return import_module(f"{__package__}.05_binaries").PHASE


def control_plane_phase():
    return import_module(f"{__package__}.93_upgrade_control_plane")


def cordon_key(name: str) -> str:
    return f"cordoned:{name}"


def kubelet_version(ctx, node) -> str | None:
    res = ctx.command(node, KUBELET)
    return (res.get("out") or "").strip() or None if res.get("rc") == 0 else None


def cordoned(ctx, node) -> bool:
    first = ctx.cluster.first_control_plane
    return (ctx.command(first, cordon_key(node.name)).get("out") or "").strip() == "true"


def unit(c, node) -> str:
    return binaries_phase().unit(c, node)


def version_argv(c, node) -> list[str]:
    if c.is_k3s:
        conf = None if node.has("control_plane") else paths.K3S_AGENT_CONF
    else:
        conf = paths.KUBELET_CONF
    return kubectl(c, "get", "node", node.name, "-o",
                   "jsonpath={.status.nodeInfo.kubeletVersion}", kubeconfig=conf)


class UpgradeNodes(Phase):
    title = "upgrade-nodes"
    playbook = "93-upgrade-nodes.yml"
    needs_bundle = True

    def hosts(self, c):
        return c.kube_nodes

    def files(self, ctx, node):
        return binaries_phase().files(ctx, node)

    def probes(self, c, node):
        cmds = {KUBELET: version_argv(c, node)}
        if node == c.first_control_plane:
            cmds.update({cordon_key(n.name): kubectl(c, "get", "node", n.name, "-o",
                                                     "jsonpath={.spec.unschedulable}")
                         for n in c.kube_nodes})
        return {"commands": cmds}

    def needs_restart(self, ctx, node) -> bool:
        return kubelet_version(ctx, node) != ctx.cluster.kubernetes_version

    def pending(self, ctx, node):
        """Files alone are no work here: the node is done when it reports the version and is
        schedulable (its binaries are checked on the way, by the push)."""
        want, have = ctx.cluster.kubernetes_version, kubelet_version(ctx, node)
        if have != want:
            return [f"drain, binaries from the bundle, restart {unit(ctx.cluster, node)} "
                    f"({have or 'no version reported'} -> {want}), uncordon"]
        if cordoned(ctx, node):
            return ["uncordon (an earlier run stopped after draining it)"]
        return []

    def hostvars(self, ctx, node):
        c = ctx.cluster
        return {"upgrade_to": c.kubernetes_version, "upgrade_unit": unit(c, node),
                "upgrade_kubeadm_node": not c.is_k3s and not node.has("control_plane"),
                "upgrade_restart": self.needs_restart(ctx, node),
                "upgrade_version_argv": version_argv(c, node)}

    # -- run: batches, each drained, upgraded and uncordoned before the next ------------------
    def batches(self, c, nodes, max_unavailable: int):
        names = {n.name for n in nodes}
        servers = [n for n in c.kube_nodes if n.name in names and n.has("control_plane")]
        workers = [n for n in c.kube_nodes if n.name in names and not n.has("control_plane")]
        out = [[n] for n in servers]
        out += [workers[i:i + max_unavailable] for i in range(0, len(workers), max_unavailable)]
        return out

    def skew_refusals(self, ctx) -> list[str]:
        """A kubelet may not run newer than any API server: every control plane first."""
        c = ctx.cluster
        if c.is_k3s:
            return []
        cp = control_plane_phase()
        return [f"{n.name}: its API server reports {cp.apiserver_version(ctx, n) or 'nothing'},"
                f" older than the kubelets would be ({c.kubernetes_version}): finish "
                "upgrade-control-plane first"
                for n in c.control_planes
                if cp.apiserver_version(ctx, n) != c.kubernetes_version]

    def run(self, run, nodes):
        ctx, c = run.ctx, run.cluster
        if problems := self.skew_refusals(ctx):
            raise UserError("refused (version skew):\n" + "\n".join(problems))
        first = c.first_control_plane.name
        binaries = binaries_phase()
        for batch in self.batches(c, nodes, max(1, getattr(run, "max_unavailable", 1))):
            todo = [n for n in batch if self.needs_restart(ctx, n)]
            for n in todo:
                self.schedule(run, first, "drain", n.name)
            if todo:
                run.converge(self, todo)
                stamps = {n.name: {binaries.stamp_path: (binaries.stamp(ctx, n), 0o644)}
                          for n in todo if not binaries.changed(ctx, n)}
                run._put(stamps)
            for n in batch:
                self.schedule(run, first, "uncordon", n.name)
            run.probe(sorted({first} | {n.name for n in batch}))

    def schedule(self, run, first: str, verb: str, name: str) -> None:
        args = [verb, name] + (["--ignore-daemonsets", "--delete-emptydir-data",
                                f"--timeout={DRAIN_TIMEOUT}"] if verb == "drain" else [])
        argv = kubectl(run.cluster, *args)
        run._step(name, self.title, f"kubectl {verb} (on {first})")
        result = run.pool.run(" ".join(argv), hosts=[first])[first]
        if result.rc != 0:
            from ..actions import PhaseFailed

            raise PhaseFailed(f"{name}: kubectl {verb} on {first} failed: "
                              f"{(result.error or result.stderr).strip()[-300:]}\nfix the cause"
                              " and rerun cluster.upgrade (it resumes; no node stays cordoned)")


PHASE = UpgradeNodes()
