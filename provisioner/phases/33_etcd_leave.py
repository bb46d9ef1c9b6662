"""Phase etcd-leave (remove-node of an external etcd member) ↔ playbooks/33-etcd-leave.yml:
`etcdctl member remove` of the leaving member, run on another member over mutual TLS (the
removal refused beforehand unless every other member is healthy). Done: that member's peer URL
is not in the member list."""

from __future__ import annotations

import json
from importlib import import_module

from ..etcd import etcdctl, peer_url
from .removal_base import Removal, remaining


def etcd():
    """The etcd phase's module (03_etcd): its probes and member list."""
    return import_module(f"{__package__}.03_etcd")


class EtcdLeave(Removal):
    title = "etcd-leave"
    playbook = "33-etcd-leave.yml"

    def hosts(self, c):
        if self.target is None or self.target not in c.etcd_members:
            return ()
        return remaining(c, self.target).etcd_members[:1]

    def probes(self, c, node):
        return etcd().PHASE.probes(c, node)  # the member list, read on this member

    def checks(self, ctx, node):
        res = ctx.command(node, etcd().MEMBERS)
        try:
            members = json.loads(res.get("out") or "").get("members") if res.get("rc") == 0 \
                else None
        except (ValueError, AttributeError):
            members = None
        if members is None:
            yield f"read the member list on {node.name} and remove {self.target.name}"
        elif etcd().member_of(members, self.target):
            yield f"etcdctl member remove {self.target.name} (on {node.name})"

    def hostvars(self, ctx, node):
        return {"leaving_peer_url": peer_url(self.target), "etcdctl": etcdctl(ctx.cluster, node)}


PHASE = EtcdLeave()
