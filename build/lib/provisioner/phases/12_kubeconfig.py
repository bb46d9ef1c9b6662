"""Phase kubeconfig (the controller; needs the bundle): the admin kubeconfig copied into the state
folder (0600), pointing at the cluster's API endpoint. Copied again whenever the first control
plane's admin config changes."""

from __future__ import annotations

from .. import paths
from .base import Phase


def admin_config(c) -> str:
    return paths.K3S_ADMIN_CONF if c.is_k3s else paths.ADMIN_CONF


class Kubeconfig(Phase):
    title = "kubeconfig"
    needs_bundle = True

    def hosts(self, c):
        return c.control_planes[:1]

    def probes(self, c, node):
        return {"paths": [admin_config(c)]}

    def checks(self, ctx, node):
        source = ctx.facts[node.name].files.get(admin_config(ctx.cluster))
        if source is None or ctx.local.get("kubeconfig_source") != source:
            yield "copy the admin kubeconfig to the controller (0600)"

    def run(self, run, nodes):
        run.fetch_kubeconfig(admin_config(run.cluster))


PHASE = Kubeconfig()
