"""Phase join-control-plane (the other control planes, one at a time; needs the bundle) ↔
playbooks/07-join-control-plane.yml: `kubeadm join --control-plane` with the uploaded
certificates, or a k3s server joining the embedded etcd. Before kubeadm joins, the bootstrap
token (24 h) and the uploaded certificates (2 h) are made again on the first control plane
from its config file: no secret travels in a command line."""

from __future__ import annotations

from .kube import Join


class JoinControlPlane(Join):
    title = "join-control-plane"
    playbook = "07-join-control-plane.yml"
    serial = True

    def hosts(self, c):
        return c.joining_control_planes


PHASE = JoinControlPlane()
