"""Phase reset-node (remove-node) ↔ playbooks/34-reset-node.yml, which imports 99-reset.yml
(`cluster.reset`'s play) for the leaving host alone: kubeadm reset (a stacked etcd member
leaves its cluster there), the cluster's units stopped and disabled, their data and configs
removed (paths.RESET_UNITS / RESET_PATHS). Done: none of those units is active or enabled and
none of those paths exists."""

from __future__ import annotations

from .. import paths
from .removal_base import Removal

LEFTOVERS = "reset-leftovers"
# what must be gone; not the test-only stand-ins' log folder, which the facts probe's own
# kubectl calls write again on a host whose binaries stay installed
CHECKED = tuple(p for p in paths.RESET_PATHS if p != "/var/log/standin")


class ResetNode(Removal):
    title = "reset-node"
    playbook = "34-reset-node.yml"

    def hosts(self, c):
        return (self.target,) if self.target is not None and self.target in c.nodes else ()

    def probes(self, c, node):
        script = "for p in " + " ".join(CHECKED) + \
            '; do [ -e "$p" ] && echo "$p"; done; true'
        return {"commands": {LEFTOVERS: ["sh", "-c", script]}}

    def checks(self, ctx, node):
        services = ctx.facts[node.name].services
        units = [u for u in paths.RESET_UNITS
                 if services.get(u, {}).get("active") in ("active", "activating")
                 or services.get(u, {}).get("enabled") == "enabled"]
        if units:
            yield f"stop and disable {', '.join(units)}"
        res = ctx.command(node, LEFTOVERS)
        left = (res.get("out") or "").split() if res.get("rc") == 0 else ["(unknown)"]
        if left:
            yield f"remove {', '.join(left)}"


PHASE = ResetNode()
