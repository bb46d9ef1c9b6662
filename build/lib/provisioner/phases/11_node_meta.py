"""Phase node-meta (the first control plane; needs the bundle) ↔ playbooks/11-node-meta.yml:
the inventory's node_labels and node_taints on the Node objects. kubeadm and k3s set them only
when a node registers; after that this phase keeps them in step with the inventory through
kubectl (`label --overwrite`, `taint --overwrite`, and removal of the ones it set before)."""

from __future__ import annotations

import json

from .. import paths
from .base import Item, Phase


class NodeMeta(Phase):
    title = "node-meta"
    playbook = "11-node-meta.yml"
    needs_bundle = True

    def hosts(self, c):
        return c.control_planes[:1]

    def files(self, ctx, node):
        c = ctx.cluster
        meta = {n.name: {"labels": dict(sorted(n.labels.items())), "taints": list(n.taints)}
                for n in c.kube_nodes}
        yield Item(paths.NODE_META, json.dumps(meta, indent=1, sort_keys=True).encode() + b"\n",
                   0o600)


PHASE = NodeMeta()
