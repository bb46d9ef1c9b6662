"""Actions `cluster.backup` and `cluster.restore`: ordered lists of phases, run like cluster.up
(connect → probe → every phase's refusals → plan → each phase with work, probed again after).

    BACKUP  = [backup]                          phases/94_backup.py ↔ playbooks/94-backup.yml
    RESTORE = [stop-api, restore, start-api]    95_stop_api.py, 96_restore.py ↔ 96-restore.yml,
                                                97_start_api.py

A restore is checked on the controller before it connects (provisioner/snapshots.py `verify`:
metadata, size, sha256, cluster name, distribution), then every phase may refuse (a member not
reachable, no etcdctl) before anything changes. The new cluster token of a restore is kept in
`<state>/<cluster>/restore.json` (0600) while the restore runs, so a rerun with the same
snapshot after a failure in the middle resumes it: each member's end state says what is left
(provisioner/etcd.py). The file is removed when the restore has finished.
"""

from __future__ import annotations

import json
import secrets as random
import time
from pathlib import Path

from . import actions, etcd, snapshots
from . import phases as ph
from .errors import UserError
from .model import Cluster
from .state import State, write_secret

BACKUP: tuple[ph.Phase, ...] = (ph.BACKUP,)
RESTORE: tuple[ph.Phase, ...] = (ph.STOP_API, ph.RESTORE, ph.START_API)
JOURNAL = "restore.json"


def _hosts(cluster: Cluster, phases) -> list[str]:
    seen = {n.name for p in phases for n in p.hosts(cluster)}
    return [n.name for n in cluster.nodes if n.name in seen]


def _refuse(run, phases) -> None:
    refusals = [r for p in phases for r in p.refusals(run.ctx)]
    if refusals:
        raise UserError("refused before any change:\n  " + "\n  ".join(refusals))


def _execute(run, phases, seconds: dict | None = None) -> list:
    """Every phase with work, in order; `seconds` gets each phase's wall time."""
    done = []
    for phase in phases:
        work = phase.work(run.ctx)  # fresh: earlier phases changed the facts
        start = time.monotonic()
        if work:
            run.apply(phase, work)
        if seconds is not None:
            seconds[phase.title] = time.monotonic() - start
        done.append((phase, work))
    return done


def backup(cluster: Cluster, plan: bool = False) -> dict:
    """Take a snapshot (or, with plan, say where from). Returns ctx.local["backup"]: folder,
    plan, and after a backup path, metadata, removed (rotated stems), seconds."""
    started = time.monotonic()
    with actions.session(cluster, survey=False, phases=BACKUP) as run:
        run.rerun = "rerun cluster.backup"
        want = run.ctx.local["backup"] = {"folder": str(snapshots.folder(cluster))}
        run.probe(_hosts(cluster, BACKUP))
        _refuse(run, BACKUP)
        want["plan"] = run.plan(BACKUP)
        if not plan:
            _execute(run, BACKUP)
            want["total_seconds"] = time.monotonic() - started
        return want


# -- restore ---------------------------------------------------------------------------------

def journal_path(cluster: Cluster) -> Path:
    return State(cluster).dir / JOURNAL


def read_journal(cluster: Cluster) -> dict | None:
    path = journal_path(cluster)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable: a new restore (new token) redoes every member, which is safe
    return data if isinstance(data, dict) and {"token", "stamp", "sha256"} <= set(data) else None


def new_restore(cluster: Cluster, meta: dict) -> dict:
    stamp = snapshots.utc_stamp()
    return {"token": f"{cluster.cluster_name}-restore-{stamp.lower()}-{random.token_hex(4)}",
            "stamp": stamp, "sha256": meta["sha256"], "snapshot": meta["path"],
            "started": snapshots.iso(stamp)}


def confirmation(cluster: Cluster, meta: dict, plan) -> str:
    """What the user is asked before a restore changes anything."""
    members = ", ".join(n.name for n in etcd.members(cluster))
    rev = f", revision {meta['revision']}" if meta.get("revision") else ""
    how = (f"k3s stops on {members}; {cluster.first_control_plane.name} is reset from the "
           "snapshot (k3s server --cluster-reset --cluster-reset-restore-path) and starts, then "
           "the other servers rejoin it with their old db dirs moved aside:\n"
           if cluster.is_k3s else
           f"The API servers stop, and etcd on {members} restarts with the snapshot's data:\n")
    return (f"restore cluster {cluster.cluster_name} from {meta['path']}\n"
            f"  (taken {meta['created']} on {meta['member']['name']}{rev}).\n" + how +
            f"EVERYTHING WRITTEN TO THE CLUSTER AFTER {meta['created']} IS LOST.\n"
            "The current data dirs are kept aside on each member (renamed, not deleted).")


def restore(cluster: Cluster, snapshot: str, plan: bool = False, confirm=None,
            say=print) -> dict | None:
    """Restore etcd from `snapshot` (see the module docstring). `confirm(message) -> bool` is
    asked after every check and before any change (None: do not ask). Returns {"plan", "done",
    "resumed", "seconds", "meta"}, or None when not confirmed."""
    meta = snapshots.verify(snapshot, cluster)
    if meta["etcd"] != etcd.kind(cluster):
        say(f"note: the snapshot was taken from {meta['etcd']} etcd; the inventory has "
            f"{etcd.kind(cluster)} etcd: restoring into that")
    theirs = sorted(m["name"] for m in meta["members"])
    ours = sorted(n.name for n in etcd.members(cluster))
    if theirs != ours:
        say(f"note: the snapshot was taken with members {', '.join(theirs)}; it is restored "
            f"onto the inventory's members {', '.join(ours)}")
    started = time.monotonic()
    with actions.session(cluster, survey=False, phases=RESTORE) as run:
        run.rerun = (f"rerun cluster.restore --snapshot {meta['path']}: it goes on from where "
                     "each member stands")
        old = read_journal(cluster)
        resumed = old is not None and old["sha256"] == meta["sha256"]
        r = dict(old) if resumed else new_restore(cluster, meta)
        # k3s picks its own member and cluster IDs: its members are followed by markers
        cid, ids = (None, {}) if cluster.is_k3s else etcd.restored_ids(cluster, r["token"])
        run.ctx.local["restore"] = {**r, "snapshot": meta["path"], "cluster_id": cid,
                                    "members": ids}
        unreachable = run.probe(_hosts(cluster, RESTORE))
        _refuse(run, RESTORE)
        if unreachable:
            raise UserError("refused before any change: every control plane and etcd member "
                            "must be reachable:\n  " + "\n  ".join(unreachable))
        todo = run.plan(RESTORE)
        out = {"plan": todo, "resumed": resumed, "meta": meta, "done": None}
        if plan:
            return out
        if resumed:
            say(f"resuming the restore started {old['started']} (same snapshot)")
        elif old is not None:
            say(f"an earlier restore (started {old['started']}, snapshot {old.get('snapshot')}) "
                "did not finish; this one starts over from this snapshot")
        if confirm is not None and not confirm(confirmation(cluster, meta, todo)):
            return None
        write_secret(journal_path(cluster), (json.dumps(r, indent=1) + "\n").encode())
        out["phase_seconds"] = {}
        out["done"] = _execute(run, RESTORE, out["phase_seconds"])
        ph.RESTORE.cleanup(run)
        journal_path(cluster).unlink(missing_ok=True)
        out["seconds"] = time.monotonic() - started
        return out
