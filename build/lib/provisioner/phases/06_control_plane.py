"""Phase control-plane (the first control plane; needs the bundle) ↔
playbooks/06-control-plane.yml: `kubeadm init --upload-certs` (or the first k3s server with
cluster-init). Done means the API answers through the cluster endpoint, the node is registered
and marked, and kubeadm's bootstrap-token and addon steps are in the cluster. An init that
stopped after its API answered is finished with `kubeadm init phase ...`; one that stopped
before is reset and run again; a built cluster whose API does not answer is refused."""

from __future__ import annotations

from .. import paths
from ..errors import UserError
from ..render import template
from .base import Item, Phase
from . import kube


class ControlPlane(Phase):
    title = "control-plane"
    playbook = "06-control-plane.yml"
    needs_bundle = True

    def hosts(self, c):
        return c.control_planes[:1]

    def files(self, ctx, node):
        c, s = ctx.cluster, ctx.secrets
        if c.is_k3s:
            yield Item(paths.K3S_CONFIG, template("etc/rancher/k3s/config.yaml.j2", c, node, s),
                       0o600, units=("k3s",))
            return
        yield Item(paths.KUBEADM_INIT, template("etc/kubernetes/kubeadm-init.yaml.j2", c, node, s),
                   0o600)
        yield from kube.pki_files(ctx, node)

    def probes(self, c, node):
        return kube.probes(c, node, first=True)

    def state(self, ctx, node):
        return kube.state(self, ctx, node, first=True)

    def checks(self, ctx, node):
        state, gaps = self.state(ctx, node)
        if state != "done":
            verb = "k3s server with cluster-init" if ctx.cluster.is_k3s else "init"
            yield kube.describe(ctx.cluster, verb, state, gaps)

    def hostvars(self, ctx, node):
        return {"kube_state": self.state(ctx, node)[0]}

    def run(self, run, nodes):
        for n in nodes:
            state, gaps = self.state(run.ctx, n)
            if state == "broken":
                raise UserError(f"{n.name}: " + kube.describe(run.cluster, "init", state, gaps))
        run.converge(self, nodes)


PHASE = ControlPlane()
