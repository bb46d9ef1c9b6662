"""cluster.backup and cluster.restore on booted lab nodes with a real 3-member etcd (Debian's
etcd 3.4, mutual TLS): tests/data/lab-backup.yml, 3 kubeadm control planes that are also the
external etcd members, on bridge k8slab8. The Kubernetes side runs on the TEST-ONLY stand-ins
(tests/standins): their API "answers" only while the kube-apiserver static pod manifest is in
/etc/kubernetes/manifests, which is what the restore moves aside and back.

Wall times are printed (pytest -s) and kept in NOTES-backup.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner import actions, backup, etcd, snapshots
from provisioner.errors import UserError
from tests.conftest import REPO, booted_lab

pytestmark = pytest.mark.lab

INVENTORY = REPO / "tests/data/lab-backup.yml"
MEMBERS = ("bk1", "bk2", "bk3")
ENDPOINTS = ",".join(f"https://10.90.8.1{i}:2379" for i in (1, 2, 3))
ETCDCTL = ("ETCDCTL_API=3 etcdctl --cacert /etc/etcd/pki/ca.crt --cert "
           "/etc/etcd/pki/healthcheck-client.crt --key /etc/etcd/pki/healthcheck-client.key "
           "--dial-timeout 3s --command-timeout 10s")
KEYS = 1000
INVOKE = str(Path(sys.executable).parent / "invoke")


@pytest.fixture(scope="module")
def blab(tmp_path_factory):
    """The lab booted and converged by cluster.up with the stand-in bundle (real etcd)."""
    from tests.standins import make_standin_bundle

    with booted_lab(INVENTORY, tmp_path_factory.mktemp("backup-state")) as lab:
        bundle = make_standin_bundle(tmp_path_factory.mktemp("bundle"), lab.cluster)
        actions.up(lab.cluster, bundle_dir=str(bundle))
        lab.bundle = str(bundle)
        yield lab


def ok(lab, node, cmd, timeout=300):
    rc, out, err = lab.run(node, cmd, timeout=timeout)
    assert rc == 0, f"{node}: {cmd[:200]}: rc={rc} {err.strip()[-800:]}"
    return out


def value(n: int) -> str:
    return f"value-{n}-" + hashlib.sha256(str(n).encode()).hexdigest()[:16]


# 1000 keys in 10 transactions of 100 puts (etcd allows 128 operations per transaction)
WRITE_KEYS = f"""set -eu
python3 - <<'EOF'
import hashlib
for b in range(10):
    with open("/tmp/txn%d" % b, "w") as f:
        f.write("\\n")
        for n in range(b * 100 + 1, b * 100 + 101):
            v = "value-%d-" % n + hashlib.sha256(str(n).encode()).hexdigest()[:16]
            f.write("put /bk/key%04d %s\\n" % (n, v))
        f.write("\\n\\n")
EOF
for b in 0 1 2 3 4 5 6 7 8 9; do {ETCDCTL} --endpoints {ENDPOINTS} txn < /tmp/txn$b >/dev/null; done
rm -f /tmp/txn*
"""


def keys(lab, node="bk2") -> dict[str, str]:
    out = ok(lab, node, f"{ETCDCTL} --endpoints {ENDPOINTS} get /bk/ --prefix -w json")
    kvs = json.loads(out).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
            for kv in kvs}


def statuses(lab) -> list[dict]:
    out = ok(lab, "bk1", f"{ETCDCTL} --endpoints {ENDPOINTS} endpoint status -w json")
    return [s["Status"] for s in json.loads(out)]


def healthy_members(lab) -> int:
    rc, out, err = lab.run("bk1", f"{ETCDCTL} --endpoints {ENDPOINTS} endpoint health 2>&1")
    return out.count("is healthy")


def invoke(lab, *args, timeout=600):
    start = time.monotonic()
    r = subprocess.run([INVOKE, *args, "-i", str(INVENTORY)], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, PROVISIONER_STATE_DIR=str(lab.cluster.state_dir)))
    return r, time.monotonic() - start


def wipe(lab) -> None:
    """etcd stopped and its data dir emptied on every member."""
    for n in MEMBERS:
        ok(lab, n, "systemctl stop etcd && rm -rf /var/lib/etcd/* && ! systemctl is-active -q etcd")


def api_answers(lab, node) -> bool:
    rc, _, _ = lab.run(node, "kubectl --kubeconfig /etc/kubernetes/admin.conf --server "
                             f"https://{lab.cluster.node(node).address}:6443 get --raw /readyz")
    return rc == 0


def asides(lab, node) -> list[str]:
    return ok(lab, node, "ls -d /var/lib/etcd.before-restore-* 2>/dev/null || true").split()


@pytest.fixture(scope="module")
def backed_up(blab):
    """1000 keys written, then cluster.backup (the CLI, timed), then more keys written."""
    ok(blab, "bk1", WRITE_KEYS)
    before = keys(blab)
    assert len(before) == KEYS
    written_rev = max(s["header"]["revision"] for s in statuses(blab))
    r, seconds = invoke(blab, "cluster.backup")
    assert r.returncode == 0, r.stdout + r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    print(f"\ncluster.backup, 3 members, {KEYS} keys: {seconds:.1f} s wall "
          f"({r.stdout.strip().splitlines()[0]})")
    ok(blab, "bk1", f"{ETCDCTL} --endpoints {ENDPOINTS} put /bk/zz-after-backup lost")
    return {"path": path, "keys": before, "revision": written_rev, "backup_seconds": seconds}


def test_backup_writes_the_snapshot_and_its_metadata(blab, backed_up):
    path = backed_up["path"]
    assert path.parent == Path(blab.cluster.state_dir) / "labbackup" / "backups"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    meta = snapshots.read_metadata(path.with_suffix(".json"))
    assert meta["sha256"] == snapshots.sha256_file(path) and meta["size"] == path.stat().st_size
    assert meta["cluster_name"] == "labbackup" and meta["etcd"] == "external"
    assert meta["member"]["name"] == "bk1" and meta["etcd_version"].startswith("3.")
    assert meta["revision"] >= backed_up["revision"]
    assert sorted(m["name"] for m in meta["members"]) == list(MEMBERS)
    # the member's copy is gone
    assert ok(blab, "bk1", f"ls {etcd.WORK_DIR}").strip() == ""


def test_restore_after_wiping_every_member_brings_every_key_back(blab, backed_up):
    path = backed_up["path"]
    meta = snapshots.read_metadata(path.with_suffix(".json"))
    old_cluster = {s["header"]["cluster_id"] for s in statuses(blab)}
    wipe(blab)
    r, seconds = invoke(blab, "cluster.restore", "--snapshot", str(path), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\ncluster.restore, 3 members, {KEYS} keys: {seconds:.1f} s wall")
    backed_up["restore_seconds"] = seconds

    assert healthy_members(blab) == 3
    got = keys(blab)
    assert got == backed_up["keys"]  # every key with its value, and the later write is gone
    assert all(got[f"/bk/key{n:04d}"] == value(n) for n in range(1, KEYS + 1))
    st = statuses(blab)
    assert all(s["header"]["revision"] >= meta["revision"] for s in st)
    new_cluster = {s["header"]["cluster_id"] for s in st}
    assert len(new_cluster) == 1 and new_cluster != old_cluster  # a new cluster token
    for n in MEMBERS:
        assert len(asides(blab, n)) == 1  # the (emptied) old data dir kept, renamed
        assert ok(blab, n, "stat -c '%U %a' /var/lib/etcd").split() == ["etcd", "700"]
        assert ok(blab, n, f"ls {etcd.WORK_DIR}").strip() == ""  # pushed snapshot removed
    assert backup.read_journal(blab.cluster) is None
    # the API servers answer again, and cluster.up has nothing to do afterwards
    for n in MEMBERS:
        assert api_answers(blab, n)
        assert ok(blab, n, f"ls -A {etcd.ASIDE_DIR}").strip() == ""
    plan = {p.title: w for p, w in actions.plan(blab.cluster, bundle_dir=blab.bundle)[1] if w}
    assert plan == {}


def test_a_damaged_snapshot_is_refused_and_changes_nothing(blab, backed_up, tmp_path):
    src = backed_up["path"]
    db = tmp_path / src.name
    shutil.copy(src, db)
    shutil.copy(src.with_suffix(".json"), db.with_suffix(".json"))
    data = bytearray(db.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one byte changed
    db.write_bytes(bytes(data))
    before = {"status": [(s["header"]["cluster_id"], s["header"]["member_id"],
                          s["header"]["revision"]) for s in statuses(blab)],
              "keys": keys(blab), "asides": {n: asides(blab, n) for n in MEMBERS},
              "started": {n: ok(blab, n, "systemctl show -p ActiveEnterTimestampMonotonic etcd")
                          for n in MEMBERS}}
    r, _ = invoke(blab, "cluster.restore", "--snapshot", str(db), "--yes")
    assert r.returncode == 2
    assert "does not match" in r.stderr and "the snapshot is damaged" in r.stderr
    assert "nothing was changed" in r.stderr
    after = {"status": [(s["header"]["cluster_id"], s["header"]["member_id"],
                         s["header"]["revision"]) for s in statuses(blab)],
             "keys": keys(blab), "asides": {n: asides(blab, n) for n in MEMBERS},
             "started": {n: ok(blab, n, "systemctl show -p ActiveEnterTimestampMonotonic etcd")
                         for n in MEMBERS}}
    assert after == before  # same cluster, data, revision; etcd not restarted; nothing aside
    for n in MEMBERS:
        assert ok(blab, n, f"ls {etcd.WORK_DIR} 2>/dev/null || true").strip() == ""
    assert backup.read_journal(blab.cluster) is None


def test_restore_asks_first_and_a_wrong_answer_changes_nothing(blab, backed_up):
    started = {n: ok(blab, n, "systemctl show -p ActiveEnterTimestampMonotonic etcd")
               for n in MEMBERS}
    r = subprocess.run([INVOKE, "cluster.restore", "--snapshot", str(backed_up["path"]), "-i",
                        str(INVENTORY)], cwd=REPO, capture_output=True, text=True, timeout=300,
                       input="not-the-name\n",
                       env=dict(os.environ, PROVISIONER_STATE_DIR=str(blab.cluster.state_dir)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "IS LOST" in r.stdout and "type the cluster name to restore" in r.stdout
    assert r.stdout.strip().endswith("not confirmed; nothing changed")
    assert backup.read_journal(blab.cluster) is None
    assert {n: ok(blab, n, "systemctl show -p ActiveEnterTimestampMonotonic etcd")
            for n in MEMBERS} == started
    assert all(api_answers(blab, n) for n in MEMBERS)


def test_restore_resumes_after_a_failure_in_the_middle(blab, backed_up):
    """bk3's restore tool fails: the play stops on every member before any starts (bk1 and bk2
    restored in place). A rerun finds that from each member's end state and finishes."""
    path = backed_up["path"]
    fake = "/usr/local/bin/etcdutl"  # preferred over etcdctl when present
    ok(blab, "bk3", f"printf '#!/bin/sh\\necho planned failure >&2\\nexit 1\\n' > {fake} "
                    f"&& chmod 755 {fake}")
    try:
        with pytest.raises(UserError) as failed:
            backup.restore(blab.cluster, str(path))
        assert "bk3" in str(failed.value) and "rerun cluster.restore" in str(failed.value)
    finally:
        ok(blab, "bk3", f"rm -f {fake}")
    journal = backup.read_journal(blab.cluster)
    assert journal is not None
    for n in MEMBERS:
        assert ok(blab, n, "systemctl is-active etcd || true").strip() != "active"
        # the API servers stay stopped until etcd is back: manifest aside, no answer
        assert ok(blab, n, f"ls {etcd.ASIDE_DIR}").split() == ["kube-apiserver.yaml"]
        assert not api_answers(blab, n)
    r, seconds = invoke(blab, "cluster.restore", "--snapshot", str(path), "--plan")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming an unfinished restore" in r.stdout
    assert "bk3: stop etcd; restore the snapshot" in r.stdout
    assert "bk1: stop etcd (the restored data dir is in place)" in r.stdout

    assert re.search(r"^stop-api +nothing to do$", r.stdout, re.M)  # already aside
    assert re.search(r"^start-api +3 host\(s\) would change$", r.stdout, re.M)  # go back
    result = backup.restore(blab.cluster, str(path))
    assert result["resumed"]
    assert healthy_members(blab) == 3
    assert all(api_answers(blab, n) for n in MEMBERS)
    assert keys(blab) == backed_up["keys"]
    assert backup.read_journal(blab.cluster) is None
    cid, _ = etcd.restored_ids(blab.cluster, journal["token"])
    assert {f"{s['header']['cluster_id']:x}" for s in statuses(blab)} == {cid}


def test_backup_is_refused_when_no_member_is_healthy(blab, backed_up):
    for n in MEMBERS:
        ok(blab, n, "systemctl stop etcd")
    try:
        r, _ = invoke(blab, "cluster.backup")
        assert r.returncode == 2
        assert "no etcd member is healthy (bk1, bk2, bk3" in r.stderr
    finally:
        for n in MEMBERS:
            ok(blab, n, "systemctl start --no-block etcd")
    deadline = time.monotonic() + 60
    while healthy_members(blab) < 3 and time.monotonic() < deadline:
        time.sleep(1)
    assert healthy_members(blab) == 3


def test_only_the_newest_backups_are_kept(blab, backed_up):
    folder = backed_up["path"].parent
    for _ in range(3):
        r, _ = invoke(blab, "cluster.backup")
        assert r.returncode == 0, r.stdout + r.stderr
    kept = snapshots.backups(folder)
    assert len(kept) == blab.cluster.backup_keep == 3
    assert backed_up["path"].stem not in kept  # the oldest went, .db and .json
    assert not backed_up["path"].exists() and not backed_up["path"].with_suffix(".json").exists()
