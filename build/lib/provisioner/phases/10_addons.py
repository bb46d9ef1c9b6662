"""Phase addons (the first control plane; needs the bundle) ↔ playbooks/10-addons.yml: CoreDNS
settings (kubeadm; k3s deploys its own), applied when they change."""

from __future__ import annotations

from .. import paths
from ..render import template
from .base import Item, Phase


class Addons(Phase):
    title = "addons"
    playbook = "10-addons.yml"
    needs_bundle = True

    def hosts(self, c):
        return c.control_planes[:1]

    def files(self, ctx, node):
        if not ctx.cluster.is_k3s:
            yield Item(f"{paths.ADDONS}/coredns.yaml",
                       template("etc/kubernetes/addons/coredns.yaml.j2", ctx.cluster, node,
                                ctx.secrets))


PHASE = Addons()
