"""Phase etcd-servers (remove-node of an external etcd member) ↔
playbooks/32-etcd-servers.yml: before the member leaves, every control plane that stays gets the
remaining members as kube-apiserver `--etcd-servers`, one control plane at a time, each API
answering /readyz before the next.

kubeadm writes that flag into the static pod manifest /etc/kubernetes/manifests/kube-apiserver
.yaml once (from ClusterConfiguration.etcd.external.endpoints) and never again, so the
provisioner edits just that line; the kubelet restarts the API server when its manifest changes.
The ClusterConfiguration itself (kubeadm-init.yaml on the first control plane and the
kubeadm-config ConfigMap that later joins and upgrades read) follows from the control-plane
phase run on the cluster without the host (it uploads the changed config). Done: the manifest's
flag lists exactly the remaining members.

The same phase without a target (UP_PHASE, in cluster.up after the control planes joined) makes
every API server's flag list exactly the inventory's members: after the etcd phase added a
member, the control planes whose list lacks it get it, one at a time (only those whose list
changed restart). A control plane without the manifest yet (before kubeadm init or join) has
nothing to change: kubeadm writes the whole list from the ClusterConfiguration."""

from __future__ import annotations

from .. import paths
from .base import kubectl
from .removal_base import Removal, remaining

SERVERS = "etcd-servers"


class EtcdServers(Removal):
    title = "etcd-servers"
    playbook = "32-etcd-servers.yml"
    serial = True

    def after(self, c):
        """The cluster once this phase's change is done: without the leaving host, if any."""
        return remaining(c, self.target) if self.target is not None else c

    def hosts(self, c):
        if self.target is None:
            return c.control_planes if c.external_etcd and not c.is_k3s else ()
        if self.target not in c.etcd_members:
            return ()
        return remaining(c, self.target).control_planes

    def want(self, c) -> str:
        return ",".join(self.after(c).etcd_endpoints)

    def probes(self, c, node):
        return {"commands": {SERVERS: ["sed", "-n", r"s/^ *- --etcd-servers=//p",
                                       paths.KUBE_APISERVER_MANIFEST]}}

    def checks(self, ctx, node):
        res = ctx.command(node, SERVERS)
        if res.get("rc") != 0:
            return  # no API server manifest: nothing reads the list here
        if (res.get("out") or "").strip() != self.want(ctx.cluster):
            yield f"set kube-apiserver --etcd-servers={self.want(ctx.cluster)}"

    def hostvars(self, ctx, node):
        c = ctx.cluster
        server = f"https://{node.address}:{c.api_port}"
        return {"etcd_servers": self.want(c),
                "readyz": kubectl(c, "--server", server, "get", "--raw", "/readyz")}


PHASE = EtcdServers()
UP_PHASE = EtcdServers()  # no target: cluster.up's, for members added (see the docstring)
