"""Phase upgrade-control-plane (kubeadm control planes, one at a time; needs the target bundle)
↔ playbooks/93-upgrade-control-plane.yml: the target kubeadm from the bundle, then `kubeadm
upgrade plan` + `kubeadm upgrade apply VERSION` on the first control plane and `kubeadm upgrade
node` on the others. The kubelets are not touched here (phase upgrade-nodes): a kubelet never
runs newer than the oldest API server.

Done means the node's own API server reports the cluster's (target) version (`kubectl get --raw
/version` against that node). k3s has no separate control plane step: its servers upgrade in
upgrade-nodes, one at a time, before the agents.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import paths
from .base import Item, Phase, kubectl

APISERVER = "apiserver-version"


def apiserver_version(ctx, node) -> str | None:
    """gitVersion of the node's own API server, or None when it does not answer."""
    res = ctx.command(node, APISERVER)
    if res.get("rc") != 0:
        return None
    try:
        return str(json.loads(res.get("out") or "{}").get("gitVersion") or "") or None
    except ValueError:
        return None


class UpgradeControlPlane(Phase):
    title = "upgrade-control-plane"
    playbook = "93-upgrade-control-plane.yml"
    serial = True
    needs_bundle = True

    def hosts(self, c):
        return () if c.is_k3s else c.control_planes

    def files(self, ctx, node):
        if ctx.bundle is not None and "kubeadm" in ctx.bundle.files:
            path, _sha = ctx.bundle.files["kubeadm"]
            yield Item(f"{paths.BIN_DIR}/kubeadm", Path(path).read_bytes(), 0o755)

    def probes(self, c, node):
        if c.is_k3s or not node.has("control_plane"):
            return {}
        first = node == c.first_control_plane
        server = [] if first else ["--server", f"https://{node.address}:{c.api_port}"]
        return {"commands": {APISERVER: kubectl(c, *server, "get", "--raw", "/version")}}

    def checks(self, ctx, node):
        want, have = ctx.cluster.kubernetes_version, apiserver_version(ctx, node)
        if have != want:
            first = node == ctx.cluster.first_control_plane
            step = (f"kubeadm upgrade plan + apply {want}" if first else "kubeadm upgrade node")
            yield f"{step} (API server {have or 'not answering'} -> {want})"

    def hostvars(self, ctx, node):
        return {"upgrade_to": ctx.cluster.kubernetes_version,
                "upgrade_first": node == ctx.cluster.first_control_plane}


PHASE = UpgradeControlPlane()
