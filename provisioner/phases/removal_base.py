"""What the remove-node phases (31-35) share: they act for one host leaving the cluster (their
`target`), bound with `PHASE.on(node, ...)` by provisioner/removal.py. The singletons in
phases/__init__.py have no target and so no hosts."""

from __future__ import annotations

import copy
import dataclasses

from .base import Phase


def remaining(c, target):
    """The cluster model without `target`: what the cluster is once the host has left."""
    return dataclasses.replace(c, nodes=tuple(n for n in c.nodes if n.name != target.name))


class Removal(Phase):
    target = None
    force = False
    timeout = 120  # drain timeout, seconds

    def on(self, node, force: bool = False, timeout: int | None = None) -> "Removal":
        bound = copy.copy(self)
        bound.target, bound.force = node, force
        if timeout is not None:
            bound.timeout = timeout
        return bound

    def __repr__(self) -> str:
        return f"<phase {self.title} of {self.target.name if self.target else '-'}>"

    def kube_node(self, c) -> bool:
        return self.target is not None and self.target in c.kube_nodes

    def admin_host(self, c):
        """Where kubectl runs: the first control plane that stays."""
        rest = remaining(c, self.target)
        return rest.control_planes[:1]
