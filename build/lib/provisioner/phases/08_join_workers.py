"""Phase join-workers (kube workers, all at once; needs the bundle) ↔
playbooks/08-join-workers.yml: `kubeadm join`, or a k3s agent."""

from __future__ import annotations

from .kube import Join


class JoinWorkers(Join):
    title = "join-workers"
    playbook = "08-join-workers.yml"

    def hosts(self, c):
        return c.kube_workers


PHASE = JoinWorkers()
