"""Phase prepare (every host) ↔ playbooks/01-prepare.yml: hostname, /etc/hosts, swap off,
kernel settings and modules where the host allows them, time sync, the cluster marker."""

from __future__ import annotations

import json

from .. import paths
from ..render import template
from .base import Item, Phase


# Settings a built cluster cannot change in place; the marker remembers them on every host.
FIXED = ("pod_cidr", "service_cidr", "cluster_domain")


class Prepare(Phase):
    title = "prepare"
    playbook = "01-prepare.yml"
    fixed = FIXED

    def hosts(self, c):
        return c.nodes

    def files(self, ctx, node):
        c, s = ctx.cluster, ctx.secrets
        yield Item("/etc/hosts", template("etc/hosts.j2", c, node, s))
        yield Item("/etc/sysctl.d/90-kubernetes.conf",
                   template("etc/sysctl.d/90-kubernetes.conf.j2", c, node, s))
        yield Item("/etc/modules-load.d/kubernetes.conf",
                   template("etc/modules-load.d/kubernetes.conf.j2", c, node, s))
        marker = {"cluster_name": c.cluster_name, "distribution": c.distribution,
                  **{k: getattr(c, k) for k in FIXED}}
        yield Item(paths.MARKER, json.dumps(marker, sort_keys=True).encode() + b"\n")
        if c.is_k3s and node in c.kube_nodes:
            unit = "k3s" if node.has("control_plane") else "k3s-agent"
            yield Item(f"{paths.K3S_DIR}/registries.yaml",
                       template("etc/rancher/k3s/registries.yaml.j2", c, node, s), 0o600,
                       units=(unit,))

    def checks(self, ctx, node):
        f = ctx.facts[node.name]
        if f.hostname != node.name:
            yield f"set hostname {node.name}"
        if f.swap_mb:
            yield "turn swap off"


PHASE = Prepare()
