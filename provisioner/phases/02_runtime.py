"""Phase runtime (kubeadm nodes; k3s brings its own) ↔ playbooks/02-runtime.yml: containerd
with the rendered config and registry mirrors, crictl's config."""

from __future__ import annotations

from ..render import registries, template
from .base import Item, Phase, service_running


class Runtime(Phase):
    title = "runtime"
    packages = {"containerd": "1.6", "runc": "1.1"}  # the CRI v1 API the kubelet needs
    playbook = "02-runtime.yml"

    def hosts(self, c):
        return c.runtime_nodes

    def files(self, ctx, node):
        c, s = ctx.cluster, ctx.secrets
        yield Item("/etc/containerd/config.toml",
                   template("etc/containerd/config.toml.j2", c, node, s), units=("containerd",))
        for registry in registries(c):  # read at each pull: no restart
            yield Item(f"/etc/containerd/certs.d/{registry}/hosts.toml",
                       template("etc/containerd/certs.d/hosts.toml.j2", c, node, s, registry))
        yield Item("/etc/crictl.yaml", template("etc/crictl.yaml.j2", c, node, s))

    def checks(self, ctx, node):
        return service_running(ctx, node, "containerd")


PHASE = Runtime()
