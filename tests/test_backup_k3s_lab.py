"""cluster.backup with k3s on booted lab nodes (tests/data/lab-backup-k3s.yml, bridge k8slab8).

k3s cannot be had here: the servers run the TEST-ONLY stand-in, whose `k3s etcd-snapshot save`
writes a small recorded file where real k3s writes its etcd snapshot, and whose `k3s server
--cluster-reset --cluster-reset-restore-path` checks the flags and refusals of real k3s and
records the reset. This proves the k3s path of backup and restore (which server, the commands
and their order, the copies and their checksums, the db dirs moved aside, the starts one at a
time, clean-up), not a k3s snapshot or a restored k3s cluster.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from provisioner import actions, backup, snapshots
from tests.conftest import REPO, booted_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def k3s_lab(tmp_path_factory):
    from tests.standins import make_standin_bundle

    with booted_lab(REPO / "tests/data/lab-backup-k3s.yml",
                    tmp_path_factory.mktemp("backup-k3s-state")) as lab:
        bundle = make_standin_bundle(tmp_path_factory.mktemp("bundle"), lab.cluster)
        actions.up(lab.cluster, bundle_dir=str(bundle))
        lab.bundle = bundle
        yield lab


def test_k3s_backup_through_etcd_snapshot_save_then_restore_with_cluster_reset(k3s_lab):
    cluster = k3s_lab.cluster
    result = backup.backup(cluster)
    path = Path(result["path"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "stand-in k3s etcd snapshot (TEST-ONLY)" in path.read_text()
    meta = snapshots.read_metadata(path.with_suffix(".json"))
    assert meta["distribution"] == "k3s" and meta["etcd"] == "k3s"
    assert meta["member"]["name"] == "bk1" and meta["revision"] is None
    assert "v1.36.4+k3s1" in meta["etcd_version"]
    assert [m["name"] for m in meta["members"]] == ["bk1", "bk2", "bk3"]
    assert meta["sha256"] == snapshots.sha256_file(path)
    rc, out, _ = k3s_lab.run("bk1", "cat /var/log/standin/k3s.jsonl")
    saved = [json.loads(line) for line in out.splitlines() if '"saved"' in line]
    assert len(saved) == 1 and saved[0]["argv"][:2] == ["etcd-snapshot", "save"]
    rc, out, _ = k3s_lab.run("bk1", "ls -A /var/lib/provisioner/etcd")
    assert out.strip() == ""  # the member's copy is gone

    restore_k3s(k3s_lab, path)


def restore_k3s(lab, path: Path) -> None:
    cluster = lab.cluster
    seen = {}
    result = backup.restore(cluster, str(path), confirm=lambda text: seen.update(text=text)
                            or True)
    assert "bk1 is reset from the snapshot" in seen["text"]
    assert {p.title for p, w in result["done"] if w} == {"stop-api", "restore", "start-api"}
    rc, out, _ = lab.run("bk1", "cat /var/lib/rancher/k3s/server/db/etcd/standin-etcd.json")
    data = json.loads(out)
    assert data["origin"] == "snapshot"
    assert data["snapshot_sha256"] == snapshots.sha256_file(path)
    starts = {}
    for n in ("bk1", "bk2", "bk3"):
        rc, out, _ = lab.run(n, "cat /var/log/standin/k3s.jsonl")
        entries = [json.loads(line) for line in out.splitlines()]
        resets = [e for e in entries if e["result"] == "reset"]
        last = entries[-1]
        assert last["result"] == "running", n
        starts[n] = last["time"]
        if n == "bk1":
            (reset,) = resets
            assert reset["argv"] == ["server", "--cluster-reset",
                                     "--cluster-reset-restore-path=/var/lib/provisioner/etcd/"
                                     "restore.db"]
            assert last["etcd_data"] == "snapshot" and reset["time"] < last["time"]
        else:
            assert resets == [] and last["etcd_data"] == "joined", n  # rejoined with no data
            rc, out, _ = lab.run(n, "ls -d /var/lib/rancher/k3s/server/db.before-restore-*")
            assert rc == 0 and len(out.split()) == 1, n
        assert lab.run(n, "systemctl is-active k3s")[1].strip() == "active"
    assert starts["bk1"] < starts["bk2"] < starts["bk3"]  # the first, then one at a time
    assert lab.run("bk1", "ls -A /var/lib/provisioner/etcd")[1].strip() == ""
    assert not backup.journal_path(cluster).exists()
    assert not [w for _, w in actions.up(cluster, bundle_dir=str(lab.bundle)) if w]
