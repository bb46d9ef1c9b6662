"""Phase restore (action cluster.restore) ↔ playbooks/96-restore.yml: every etcd member gets the
snapshot's data in a fresh data dir, under its own name and peer URL, with the full initial
cluster and a NEW cluster token (`etcdutl snapshot restore` where present, else `etcdctl
snapshot restore`: Debian 12's etcd-client 3.4 has only etcdctl); the old data dir is kept
aside, renamed with the UTC time, never deleted. All members start together.

Where each member stands comes from its end state only (provisioner/etcd.py `member_state`):
healthy in the restored cluster (done), the restored data dir in place (start it), or anything
else (restore). So a rerun after a failure in the middle finishes the job. The restore to do
is ctx.local["restore"]: {token, cluster_id, members: {name: member ID}, stamp, sha256,
snapshot (controller path)}, made by the action (provisioner/backup.py).

k3s (as k3s documents for embedded etcd): with k3s stopped on every server (phase stop-api),
the snapshot goes to the first server only, is checked there by sha256, and `k3s server
--cluster-reset --cluster-reset-restore-path=<snapshot>` runs there once (k3s keeps its old
data as db/etcd-old-<time> and exits); every other server's db dir is moved aside to
db.before-restore-<stamp> so that it rejoins the restored cluster with no data of its own.
Phase start-api then starts the first server, then the others one at a time."""

from __future__ import annotations

import shlex

from .. import etcd, paths
from ..errors import UserError
from .base import Phase


class Restore(Phase):
    title = "restore"
    playbook = "96-restore.yml"

    def hosts(self, c):
        return etcd.members(c)

    def probes(self, c, node):
        return etcd.probes(c, node)

    def refusals(self, ctx):
        if not ctx.local.get("restore"):
            return
        for n in self.hosts(ctx.cluster):
            f = ctx.facts.get(n.name)
            if f is None or not f.reachable:
                yield (f"{n.name}: etcd member not reachable ({f.error if f else 'not probed'}):"
                       " every member is restored together; bring it back (or take it out of "
                       "the inventory's members) first")
            elif (etcd.kind(ctx.cluster) == etcd.EXTERNAL and not etcd.tools(ctx, n)
                  and etcd.member_state(ctx, n) == etcd.TODO):
                yield (f"{n.name}: neither etcdutl nor etcdctl is installed (Debian package "
                       "etcd-client has etcdctl; cluster.up installs it with etcd)")

    def checks(self, ctx, node):
        state = etcd.member_state(ctx, node)
        if state in (None, etcd.DONE):
            return
        r = ctx.local["restore"]
        if etcd.kind(ctx.cluster) == etcd.K3S:
            yield from k3s_checks(ctx, node, r)
            return
        stop = ("stop etcd" if etcd.kind(ctx.cluster) == etcd.EXTERNAL
                else "stop etcd (its static pod manifest aside)")
        if state == etcd.TODO:
            yield stop
            yield (f"restore the snapshot ({r['sha256'][:12]}...) into a fresh "
                   f"{paths.ETCD_DATA} as member {node.name} (new cluster token); the old "
                   f"data dir is kept as {paths.ETCD_DATA}.before-restore-{r['stamp']}")
        else:
            yield stop + " (the restored data dir is in place)"
        yield "start it with the other members and wait until it is healthy"

    def hostvars(self, ctx, node):
        c, r = ctx.cluster, ctx.local["restore"]
        if etcd.kind(c) == etcd.K3S:
            return {"etcd_kind": etcd.K3S, "restore_state": etcd.member_state(ctx, node),
                    "k3s_first": node == c.first_control_plane, "k3s_db": etcd.K3S_DB,
                    "restore_snapshot": etcd.RESTORE_SNAPSHOT, "restore_sha256": r["sha256"],
                    "restore_marker": etcd.k3s_marker(c, node, r["stamp"]),
                    "restore_stamp": r["stamp"]}
        return {"restore_state": etcd.member_state(ctx, node), "restore_name": node.name,
                "restore_peer_url": etcd.peer_url(node),
                "restore_initial_cluster": etcd.initial_cluster(c),
                "restore_token": r["token"], "restore_stamp": r["stamp"],
                "restore_snapshot": etcd.RESTORE_SNAPSHOT,
                "restore_aside_dir": etcd.ASIDE_DIR,
                "etcd_kind": etcd.kind(c), "etcd_pki": etcd.pki_dir(c),
                "etcd_endpoint": etcd.client_url(node),
                "etcd_owner": "etcd" if etcd.kind(c) == etcd.EXTERNAL else "root"}

    def run(self, run, nodes):
        todo = [n for n in nodes if etcd.member_state(run.ctx, n) == etcd.TODO]
        if run.cluster.is_k3s:  # only the first server restores from the file
            todo = [n for n in todo if n == run.cluster.first_control_plane]
        push(run, todo)
        run.converge(self, nodes)

    def cleanup(self, run) -> None:
        """Remove the pushed snapshot (and k3s's restore markers) once the restore is done."""
        names = [n.name for n in self.hosts(run.cluster)]
        if names:
            run.pool.run(f"rm -f {shlex.quote(etcd.RESTORE_SNAPSHOT)} {etcd.WORK_DIR}/k3s-reset-*",
                         hosts=names, timeout=60)


def k3s_checks(ctx, node, r):
    c = ctx.cluster
    if ctx.facts[node.name].active("k3s"):
        yield "stop k3s"
    if node == c.first_control_plane:
        yield (f"copy the snapshot ({r['sha256'][:12]}...) to {etcd.RESTORE_SNAPSHOT}, check its "
               f"sha256, then `k3s server --cluster-reset --cluster-reset-restore-path="
               f"{etcd.RESTORE_SNAPSHOT}` (k3s keeps its old data as {etcd.K3S_DB}/etcd-old-*)")
    else:
        yield (f"move {etcd.K3S_DB} aside to {etcd.k3s_marker(c, node, r['stamp'])} (it rejoins "
               f"the restored cluster through {c.first_control_plane.name})")


def push(run, nodes) -> None:
    """The snapshot to every member that restores, unless it is there already (a rerun);
    checked there by sha256 before the playbook uses it."""
    r = run.ctx.local["restore"]
    want = r["sha256"]
    for n in nodes:
        if run.ctx.facts[n.name].files.get(etcd.RESTORE_SNAPSHOT) == want:
            continue
        run._step(n.name, "restore", "copy the snapshot")
        try:
            run.pool.run_one(n.name, f"mkdir -p {etcd.WORK_DIR} && chmod 0700 {etcd.WORK_DIR}",
                             timeout=60)
            run.pool.send(n.name, r["snapshot"], etcd.RESTORE_SNAPSHOT, 0o600)
        except (OSError, UserError) as e:
            raise UserError(f"{n.name}: could not copy the snapshot to {etcd.RESTORE_SNAPSHOT}: "
                            f"{e}; nothing was restored yet, rerun cluster.restore") from None
    if nodes:
        check = f"sha256sum < {shlex.quote(etcd.RESTORE_SNAPSHOT)} | cut -d' ' -f1"
        results = run.pool.run(check, hosts=[n.name for n in nodes], timeout=300)
        bad = [f"{h}: {(res.stdout.strip() or res.error or res.stderr.strip())[:80]}"
               for h, res in results.items() if res.stdout.strip() != want]
        if bad:
            raise UserError("the snapshot arrived damaged (sha256 differs) on: " + "; ".join(bad)
                            + "; nothing was restored yet, rerun cluster.restore")


PHASE = Restore()
