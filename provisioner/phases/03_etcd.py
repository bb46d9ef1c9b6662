"""Phase etcd (external members, kubeadm with an `etcd` group) ↔ playbooks/03-etcd.yml: etcd
under systemd with mutual TLS from certificates issued on the controller. The certificates
belong to this phase and to the etcd user; a changed one restarts etcd. On a running cluster
members restart one at a time, each healthy again before the next (quorum kept); a first build
starts them together (they wait for each other)."""

from __future__ import annotations

from .. import paths
from ..render import template
from .base import Item, Phase, service_running

HEALTH = "etcd-health"


class Etcd(Phase):
    title = "etcd"
    packages = {"etcd-server": "3.4", "etcd-client": "3.4"}  # etcdctl v3 by default, TLS as set
    playbook = "03-etcd.yml"

    def hosts(self, c):
        return c.etcd_members

    def files(self, ctx, node):
        c, s = ctx.cluster, ctx.secrets
        yield Item("/etc/etcd/etcd.conf.yml", template("etc/etcd/etcd.conf.yml.j2", c, node, s),
                   units=("etcd",))
        yield Item("/etc/systemd/system/etcd.service",
                   template("etc/systemd/system/etcd.service.j2", c, node, s), units=("etcd",))
        for path, (data, mode) in sorted(ctx.pki.get(node.name, {}).items()):
            if path.startswith(paths.ETCD_PKI + "/"):
                yield Item(path, data, mode, "etcd", "etcd", ("etcd",))

    def probes(self, c, node):
        pki = paths.ETCD_PKI
        return {"commands": {HEALTH: [
            "etcdctl", "--endpoints", f"https://{node.address}:{paths.ETCD_CLIENT_PORT}",
            "--cacert", f"{pki}/ca.crt", "--cert", f"{pki}/healthcheck-client.crt",
            "--key", f"{pki}/healthcheck-client.key", "--command-timeout", "3s",
            "endpoint", "health"]}}

    def checks(self, ctx, node):
        started = list(service_running(ctx, node, "etcd"))
        yield from started
        if not started and not ctx.ok(node, HEALTH):
            yield "wait until this member is healthy over TLS"

    def run(self, run, nodes):
        """One member at a time when all of them run already (a restart keeps quorum)."""
        services = [run.ctx.facts[n.name].services.get("etcd", {}) for n in nodes]
        running = all(s.get("active") == "active" for s in services)
        run.converge(self, nodes, serial=running and len(nodes) > 1)


PHASE = Etcd()
