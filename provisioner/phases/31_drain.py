"""Phase drain (remove-node) ↔ playbooks/31-drain.yml: cordon the leaving node and drain it
with kubectl on the first control plane that stays. Respects PodDisruptionBudgets (eviction)
until the timeout; `--force` deletes the pods instead (`--force --disable-eviction`). Done when
nothing can run there any more: the node's kubelet (k3s: its k3s unit) is not running, i.e.
it was drained and reset (phase reset-node), so a rerun after a failure drains again."""

from __future__ import annotations

from .. import paths
from .base import kubectl
from .removal_base import Removal


def kube_unit(c, node) -> str:
    if c.is_k3s:
        return "k3s" if node.has("control_plane") else "k3s-agent"
    return "kubelet"


# one line per pod bound to the node: NAMESPACE/NAME=OWNER KIND (empty for a bare pod)
OWNERS = ('jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}='
          '{.metadata.ownerReferences[*].kind}{"\\n"}{end}')
PODS_LIMIT = 1_000_000  # characters kept of that list (not the probe's 4000 default)


class Drain(Removal):
    title = "drain"
    playbook = "31-drain.yml"

    def hosts(self, c):
        return self.admin_host(c) if self.kube_node(c) else ()

    def flags(self) -> list[str]:
        out = ["--ignore-daemonsets", "--delete-emptydir-data", f"--timeout={self.timeout}s"]
        return out + (["--force", "--disable-eviction"] if self.force else [])

    def probes(self, c, node):
        t = self.target.name
        return {"commands": {
            f"unschedulable-{t}": kubectl(c, "get", "node", t, "-o",
                                          "jsonpath={.spec.unschedulable}"),
            f"pods-on-{t}": {"argv": kubectl(c, "get", "pods", "-A", "--field-selector",
                                             f"spec.nodeName={t}", "-o", OWNERS),
                             "limit": PODS_LIMIT}}}  # every line: up to 110 pods a node

    def drained(self, ctx, node) -> bool:
        t = self.target.name
        cordoned = ctx.command(node, f"unschedulable-{t}")
        pods = ctx.command(node, f"pods-on-{t}")
        if cordoned.get("rc") != 0 or pods.get("rc") != 0:
            return False
        lines = (pods.get("out") or "").split()
        return (cordoned.get("out", "").strip() == "true"
                and all(line.endswith("=DaemonSet") for line in lines))

    def checks(self, ctx, node):
        t = self.target
        unit = kube_unit(ctx.cluster, t)
        running = ctx.facts[t.name].services.get(unit, {}).get("active") == "active"
        if running and not self.drained(ctx, node):
            how = "deleting its pods (--force)" if self.force else \
                "evicting its pods (PodDisruptionBudgets respected)"
            yield f"cordon and drain {t.name} on {node.name}, {how}, timeout {self.timeout}s"

    def hostvars(self, ctx, node):
        admin = None if ctx.cluster.is_k3s else paths.ADMIN_CONF
        return {"kubectl": kubectl(ctx.cluster, kubeconfig=admin), "node_name": self.target.name,
                "drain_flags": self.flags()}

    def run(self, run, nodes):
        from ..actions import PhaseFailed

        try:
            run.converge(self, nodes)
        except PhaseFailed as e:
            hint = "" if self.force else (
                f"\n{self.target.name} was not drained (a PodDisruptionBudget or a pod without a "
                "controller holds it; the node stays cordoned). Fix that, or rerun with --force "
                "to delete its pods without eviction")
            raise PhaseFailed(str(e) + hint) from None


PHASE = Drain()
