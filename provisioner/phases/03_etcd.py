"""Phase etcd (external members, kubeadm with an `etcd` group) ↔ playbooks/03-etcd.yml: etcd
under systemd with mutual TLS from certificates issued on the controller. The certificates
belong to this phase and to the etcd user; a changed one restarts etcd. On a running cluster
members restart one at a time, each healthy again before the next (quorum kept); a first build
starts them together (they wait for each other).

A member added to a running cluster (the model names it, the healthy members' member list
does not have it started) joins it instead: `etcdctl member add` from a healthy member, then
its config says `initial-cluster-state: existing` with exactly the membership as initial
cluster, it starts and must be healthy before the next one joins. Members of the running
cluster that have work go first (one at a time), so quorum never rests on an unstarted member.
A config that once said `existing` keeps saying it (read from the host), so a joined member's
file does not change again."""

from __future__ import annotations

import json
import time

from .. import etcd, paths
from ..render import template
from .base import Item, Phase, service_running

HEALTH = "etcd-health"
MEMBERS = "etcd-members"
SAYS_EXISTING = "etcd-config-existing"
MEMBER_ADD_WAIT = 60  # seconds etcd may call the cluster unhealthy after a restart


def membership(ctx, skip=()) -> list[dict] | None:
    """The running cluster's members (etcdctl member list JSON) as the first healthy member of
    the model reports them; None when no member answers (a cluster not built yet)."""
    for m in ctx.cluster.etcd_members:
        if m.name in skip or m.name not in ctx.facts or not ctx.ok(m, HEALTH):
            continue
        res = ctx.command(m, MEMBERS)
        if res.get("rc") != 0:
            continue
        try:
            return json.loads(res.get("out") or "{}").get("members") or []
        except ValueError:
            continue
    return None


def member_of(members: list[dict] | None, node) -> dict | None:
    for m in members or ():
        if etcd.peer_url(node) in (m.get("peerURLs") or ()):
            return m
    return None


def joining(ctx, node) -> bool:
    """The cluster runs without this member having started in it: it joins as a new member."""
    members = membership(ctx, skip=(node.name,))
    if members is None:
        return False
    found = member_of(members, node)
    return found is None or not found.get("name")


class Etcd(Phase):
    title = "etcd"
    packages = {"etcd-server": "3.4", "etcd-client": "3.4"}  # etcdctl v3 by default, TLS as set
    playbook = "03-etcd.yml"
    files_read_facts = True

    def hosts(self, c):
        return c.etcd_members

    def files(self, ctx, node):
        c, s = ctx.cluster, ctx.secrets
        yield Item(paths.ETCD_CONF, template("etc/etcd/etcd.conf.yml.j2", c, node, s,
                                             item=self.initial(ctx, node)), units=("etcd",))
        yield Item("/etc/systemd/system/etcd.service",
                   template("etc/systemd/system/etcd.service.j2", c, node, s), units=("etcd",))
        for path, (data, mode) in sorted(ctx.pki.get(node.name, {}).items()):
            if path.startswith(paths.ETCD_PKI + "/"):
                yield Item(path, data, mode, "etcd", "etcd", ("etcd",))

    def initial(self, ctx, node) -> dict | None:
        """Template item: None for a member of the cluster's first start (state new, every
        member of the model); {"state": "existing", "members": [...]} for a joining one."""
        if not ctx.facts or node.name not in ctx.facts:
            return None  # cluster.render: no facts, the first start's config
        says = ctx.command(node, SAYS_EXISTING).get("out", "").strip() == "existing"
        if not (says or joining(ctx, node)):
            return None
        members = membership(ctx, skip=(node.name,)) or []
        return {"state": "existing", "members": [
            m for m in ctx.cluster.etcd_members if m == node or member_of(members, m)]}

    def probes(self, c, node):
        return {"commands": {
            HEALTH: etcd.read(c, node, "endpoint", "health"),
            MEMBERS: etcd.read(c, node, "member", "list", "-w", "json"),
            SAYS_EXISTING: ["sed", "-n", "s/^initial-cluster-state: *//p", paths.ETCD_CONF]}}

    def checks(self, ctx, node):
        if joining(ctx, node) and not member_of(membership(ctx, skip=(node.name,)), node):
            yield "etcdctl member add (joins the running cluster as a new member)"
        started = list(service_running(ctx, node, "etcd"))
        yield from started
        if not started and not ctx.ok(node, HEALTH):
            yield "wait until this member is healthy over TLS"

    def run(self, run, nodes):
        """Members of the running cluster first, one at a time when all of them run already (a
        restart keeps quorum); then each joining member: member add, start, healthy."""
        joiners = [n for n in nodes if joining(run.ctx, n)]
        others = [n for n in nodes if n not in joiners]
        if others:
            services = [run.ctx.facts[n.name].services.get("etcd", {}) for n in others]
            running = all(s.get("active") == "active" for s in services)
            run.converge(self, others, serial=running and len(others) > 1)
        for n in joiners:
            self.member_add(run, n)
            run.ctx._files.pop((self.title, n.name), None)  # rendered from the new membership
            run.converge(self, [n])

    def member_add(self, run, node) -> None:
        from ..actions import PhaseFailed

        ctx = run.ctx
        healthy = [m for m in ctx.cluster.etcd_members if m != node and ctx.ok(m, HEALTH)]
        if not healthy:
            raise PhaseFailed(f"{node.name}: no healthy etcd member to add it from")
        via = healthy[0]
        if not member_of(membership(ctx, skip=(node.name,)), node):
            if run.progress is not None:
                run.progress.step(node.name, self.title, f"etcdctl member add (via {via.name})")
            argv = etcd.etcdctl(ctx.cluster, via, "member", "add", node.name,
                                f"--peer-urls={etcd.peer_url(node)}")
            deadline = time.monotonic() + MEMBER_ADD_WAIT
            while True:
                res = run.pool.run(" ".join(argv), hosts=[via.name])[via.name]
                # etcd refuses a member add until every member has been connected for 5 s
                # (its strict reconfiguration check), e.g. right after the rolling restart
                if res.rc == 0 or "unhealthy cluster" not in (res.stderr or "") \
                        or time.monotonic() > deadline:
                    break
                time.sleep(2)
            if res.rc != 0:
                raise PhaseFailed(f"{node.name}: etcdctl member add on {via.name} failed: "
                                  f"{(res.error or res.stderr).strip()[-300:]}")
        run.probe([via.name])  # the member list now has the new (unstarted) member


PHASE = Etcd()
