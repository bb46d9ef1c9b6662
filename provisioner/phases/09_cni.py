"""Phase cni (the first control plane; needs the bundle) ↔ playbooks/09-cni.yml: the pod network's
manifests (flannel), applied when they change. Calico is refused by validation (its operator is
not in the bundle)."""

from __future__ import annotations

from .. import paths
from ..render import template
from .base import Item, Phase


class Cni(Phase):
    title = "cni"
    playbook = "09-cni.yml"
    needs_bundle = True

    def hosts(self, c):
        return c.control_planes[:1]

    def files(self, ctx, node):
        c, s = ctx.cluster, ctx.secrets
        if c.cni == "flannel" and not c.is_k3s:  # k3s runs its own flannel
            yield Item(f"{paths.ADDONS}/flannel.yaml",
                       template("etc/kubernetes/addons/flannel.yaml.j2", c, node, s))


PHASE = Cni()
