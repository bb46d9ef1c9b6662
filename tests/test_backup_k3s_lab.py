"""cluster.backup with k3s on booted lab nodes (tests/data/lab-backup-k3s.yml, bridge k8slab8).

k3s cannot be had here: the servers run the TEST-ONLY stand-in, whose `k3s etcd-snapshot save`
writes a small recorded file where real k3s writes its etcd snapshot. This proves the k3s path
of the backup phase (which server, the command, the copy back, metadata, clean-up), not a k3s
snapshot. Restoring k3s is refused with the manual k3s procedure, before any change.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from provisioner import actions, backup, snapshots
from provisioner.errors import UserError
from tests.conftest import REPO, booted_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def k3s_lab(tmp_path_factory):
    from tests.standins import make_standin_bundle

    with booted_lab(REPO / "tests/data/lab-backup-k3s.yml",
                    tmp_path_factory.mktemp("backup-k3s-state")) as lab:
        bundle = make_standin_bundle(tmp_path_factory.mktemp("bundle"), lab.cluster)
        actions.up(lab.cluster, bundle_dir=str(bundle))
        yield lab


def test_k3s_backup_through_etcd_snapshot_save(k3s_lab):
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

    with pytest.raises(UserError, match="cluster.restore does not restore k3s yet.*"
                                        "--cluster-reset-restore-path"):
        backup.restore(cluster, str(path))
    for n in ("bk1", "bk2", "bk3"):
        assert k3s_lab.run(n, "systemctl is-active k3s")[1].strip() == "active"
