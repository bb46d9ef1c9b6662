"""Phase delete-node (remove-node) ↔ playbooks/35-delete-node.yml: the Node object goes, with
kubectl on the first control plane that stays. It runs after reset-node on purpose: a running
kubelet would register the node again. (k3s also removes a server's embedded etcd member when
its Node object is deleted.) Done: `kubectl get node NAME` finds nothing."""

from __future__ import annotations

from .base import kubectl
from .removal_base import Removal


class DeleteNode(Removal):
    title = "delete-node"
    playbook = "35-delete-node.yml"

    def hosts(self, c):
        return self.admin_host(c) if self.kube_node(c) else ()

    @property
    def probe_name(self) -> str:
        return f"node-object-{self.target.name}"

    def probes(self, c, node):
        return {"commands": {self.probe_name: kubectl(
            c, "get", "node", self.target.name, "-o", "name", "--ignore-not-found")}}

    def checks(self, ctx, node):
        res = ctx.command(node, self.probe_name)
        if res.get("rc") != 0:
            yield f"kubectl delete node {self.target.name} (the API could not be asked)"
        elif (res.get("out") or "").strip():
            yield f"kubectl delete node {self.target.name} (on {node.name})"

    def hostvars(self, ctx, node):
        return {"kubectl": kubectl(ctx.cluster), "node_name": self.target.name}


PHASE = DeleteNode()
