"""cluster.backup / cluster.restore without hosts: the metadata file (data cases in
tests/data/backup/), snapshot checks, keep-count rotation, etcd's IDs and the WAL reader, and
where a restore stands on a member from its facts. tests/test_backup_lab.py runs both on real
etcd members."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provisioner import backup, etcd, inventory, snapshots
from provisioner import phases as ph
from provisioner.errors import UserError
from provisioner.facts import Facts

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests/data/backup"
LAB = REPO / "tests/data/lab-backup.yml"
BACKUP_PHASE = importlib.import_module("provisioner.phases.94_backup")


@pytest.fixture()
def cluster(tmp_path):
    c = inventory.load(str(LAB))
    return dataclasses.replace(c, state_dir=str(tmp_path / "state"))


# -- the metadata file ----------------------------------------------------------------------------

def test_metadata_is_made_from_what_a_real_member_answered(cluster):
    """Data case: the answer of a real etcd 3.4.23 member (snapshot status, endpoint status,
    member list) becomes exactly the recorded metadata file, which reads back as valid."""
    said = json.loads((DATA / "member-answer-etcd-3.4.23.json").read_text())
    meta = BACKUP_PHASE.metadata(cluster, cluster.node("bk2"), "20261129T191337Z", said)
    want = json.loads((DATA / "good/20261129T191337Z.json").read_text())
    assert meta == want
    assert snapshots.read_metadata(DATA / "good/20261129T191337Z.json") == want
    # what a restore needs is all there
    assert meta["sha256"] == said["sha256"] and meta["size"] == 122912
    assert meta["revision"] == 11 and meta["etcd_version"] == "3.4.23"
    assert meta["cluster_name"] == "labbackup" and meta["distribution"] == "kubeadm"
    assert meta["member"] == {"name": "bk2", "address": "10.90.8.12", "id": "e00523923c3ab2f5"}
    assert sorted(m["name"] for m in meta["members"]) == ["bk1", "bk2", "bk3"]
    assert {m["name"]: m["peer_urls"] for m in meta["members"]}["bk3"] == [
        "https://10.90.8.13:2380"]


BAD = yaml.safe_load((DATA / "bad/expect.yaml").read_text())


def test_every_bad_metadata_file_has_an_expectation():
    files = {p.name for p in (DATA / "bad").glob("*.json")}
    assert files == set(BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_metadata_is_refused_naming_the_file_and_the_problem(name):
    path = DATA / "bad" / name
    with pytest.raises(UserError) as e:
        snapshots.read_metadata(path)
    assert str(e.value).startswith(f"{path}:")
    assert BAD[name] in str(e.value)


def test_missing_metadata_is_refused(tmp_path):
    with pytest.raises(UserError, match="missing: a snapshot is restored only with the metadata"):
        snapshots.read_metadata(tmp_path / "x.json")


# -- verify: a restore's checks on the controller -------------------------------------------------

def backup_pair(tmp_path, cluster, data: bytes = b"etcd snapshot bytes " * 100) -> Path:
    meta = json.loads((DATA / "good/20261129T191337Z.json").read_text())
    meta.update(sha256=__import__("hashlib").sha256(data).hexdigest(), size=len(data),
                cluster_name=cluster.cluster_name)
    db = tmp_path / "20261129T191337Z.db"
    db.write_bytes(data)
    snapshots.write_metadata(tmp_path / "20261129T191337Z.json", meta)
    return db


def test_verify_accepts_an_intact_snapshot_of_this_cluster(tmp_path, cluster):
    db = backup_pair(tmp_path, cluster)
    meta = snapshots.verify(db, cluster)
    assert meta["path"] == str(db) and meta["cluster_name"] == "labbackup"


def test_naming_the_metadata_file_finds_its_snapshot(tmp_path, cluster):
    db = backup_pair(tmp_path, cluster)
    assert snapshots.verify(db.with_suffix(".json"), cluster)["path"] == str(db)
    with pytest.raises(UserError, match="no such file"):
        snapshots.verify(tmp_path / "20261129T191338Z.db", cluster)


def test_one_changed_byte_is_refused(tmp_path, cluster):
    db = backup_pair(tmp_path, cluster)
    data = bytearray(db.read_bytes())
    data[len(data) // 2] ^= 0x01
    db.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match .* the snapshot is damaged; refused: "
                                        "nothing was changed"):
        snapshots.verify(db, cluster)


def test_a_truncated_snapshot_is_refused(tmp_path, cluster):
    db = backup_pair(tmp_path, cluster)
    db.write_bytes(db.read_bytes()[:-1])
    with pytest.raises(UserError, match="truncated or damaged"):
        snapshots.verify(db, cluster)


def test_a_snapshot_of_another_cluster_is_refused(tmp_path, cluster):
    db = backup_pair(tmp_path, dataclasses.replace(cluster, cluster_name="other"))
    with pytest.raises(UserError, match="a snapshot of cluster 'other', not of 'labbackup'"):
        snapshots.verify(db, cluster)


def test_a_snapshot_of_another_distribution_is_refused(tmp_path, cluster):
    db = backup_pair(tmp_path, cluster)
    with pytest.raises(UserError, match="a kubeadm snapshot, the inventory says k3s"):
        snapshots.verify(db, dataclasses.replace(cluster, distribution="k3s"))


def test_restore_checks_the_snapshot_before_it_connects(tmp_path, cluster, monkeypatch):
    """A damaged snapshot is refused before any SSH connection (so before any change)."""
    db = backup_pair(tmp_path, cluster)
    db.write_bytes(db.read_bytes().replace(b"etcd", b"etcD", 1))

    def no_session(*a, **k):
        raise AssertionError("connected although the snapshot is damaged")

    monkeypatch.setattr("provisioner.actions.session", no_session)
    with pytest.raises(UserError, match="damaged"):
        backup.restore(cluster, str(db), confirm=lambda m: True)
    assert backup.read_journal(cluster) is None


# -- rotation ---------------------------------------------------------------------------------

def make_backups(d: Path, stems) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for s in stems:
        (d / f"{s}.db").write_bytes(b"x")
        (d / f"{s}.json").write_text("{}")


def test_rotation_keeps_the_newest_pairs_and_nothing_else_is_touched(tmp_path):
    d = tmp_path / "backups"
    stems = [f"202611{day:02d}T120000Z" for day in range(1, 14)]  # 13 backups
    make_backups(d, stems)
    (d / "notes.txt").write_text("mine")
    (d / ".20261130T120000Z.db.part").write_bytes(b"in progress")
    (d / "20260101T000000Z.db.orig").write_bytes(b"a copy of mine")
    removed = snapshots.rotate(d, 10)
    assert removed == stems[:3]
    assert snapshots.backups(d) == stems[3:]
    left = sorted(p.name for p in d.iterdir())
    assert "notes.txt" in left and ".20261130T120000Z.db.part" in left
    assert "20260101T000000Z.db.orig" in left
    assert snapshots.rotate(d, 10) == []  # nothing more to do
    assert snapshots.rotate(d, 1) == stems[3:-1]
    assert snapshots.backups(d) == stems[-1:]


def test_rotation_orders_by_time_then_by_the_same_second_counter(tmp_path):
    d = tmp_path / "b"
    make_backups(d, ["20261129T120000Z-10", "20261129T120000Z-2", "20261129T120000Z",
                     "20261128T235959Z"])
    assert snapshots.backups(d) == ["20261128T235959Z", "20261129T120000Z",
                                    "20261129T120000Z-2", "20261129T120000Z-10"]
    assert snapshots.rotate(d, 2) == ["20261128T235959Z", "20261129T120000Z"]


def test_a_half_pair_counts_and_goes_whole(tmp_path):
    d = tmp_path / "b"
    make_backups(d, ["20261129T120001Z", "20261129T120002Z"])
    (d / "20261129T120000Z.json").write_text("{}")  # its .db was deleted by hand
    assert snapshots.rotate(d, 2) == ["20261129T120000Z"]
    assert not (d / "20261129T120000Z.json").exists()


def test_rotation_refuses_to_keep_nothing(tmp_path):
    with pytest.raises(ValueError):
        snapshots.rotate(tmp_path, 0)


def test_new_names_are_utc_times_and_never_collide(tmp_path):
    t = 1795979808.0  # 2026-11-29T19:16:48Z
    assert snapshots.new_name(tmp_path, t) == "20261129T191648Z"
    make_backups(tmp_path, ["20261129T191648Z"])
    assert snapshots.new_name(tmp_path, t) == "20261129T191648Z-2"
    assert snapshots.iso("20261129T191648Z-2") == "2026-11-29T19:16:48Z"


def test_backup_keep_defaults_to_10(tmp_path):
    inv = tmp_path / "i.yml"
    inv.write_text("all:\n  vars: {cluster_name: x}\n  children:\n    control_plane:\n"
                   "      hosts: {cp1: {ansible_host: 192.168.56.11}}\n")
    assert inventory.load(str(inv)).backup_keep == 10
    assert inventory.load(str(LAB)).backup_keep == 3


# -- etcd's IDs and the WAL ------------------------------------------------------------------------

def test_ids_are_computed_as_etcd_does():
    """Recorded from a real etcd 3.4.23 cluster (tests/data/lab-backup.yml, token labbackup):
    member list and endpoint status said exactly these IDs."""
    cid, ids = etcd.restored_ids(inventory.load(str(LAB)), "labbackup")
    assert ids == {"bk1": "c82c8e05d3da77d3", "bk2": "dd4d9949698920ae",
                   "bk3": "ce4f3cb9ee680b6a"}
    assert cid == "8e6ea075ba93b236"
    # a new token: other IDs
    cid2, ids2 = etcd.restored_ids(inventory.load(str(LAB)), "labbackup-restore-1")
    assert cid2 != cid and set(ids2.values()).isdisjoint(ids.values())


def run_wal_script(data_dir: Path) -> dict | None:
    r = subprocess.run([sys.executable, "-c", etcd.WAL_SCRIPT, str(data_dir)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_wal_script_reads_the_member_and_cluster_of_a_real_data_dir(tmp_path):
    """The first 4 KiB of a WAL written by etcd 3.4.23 after a restore: endpoint status on that
    member said member 54e325e84cd6362f, cluster 1a78794123a615ff."""
    wal = tmp_path / "etcd/member/wal"
    wal.mkdir(parents=True)
    shutil.copy(DATA / "member-wal-head.bin", wal / "0000000000000000-0000000000000000.wal")
    assert run_wal_script(tmp_path / "etcd") == {"member_id": "54e325e84cd6362f",
                                                  "cluster_id": "1a78794123a615ff"}


def test_wal_script_says_null_without_a_data_dir(tmp_path):
    assert run_wal_script(tmp_path / "nothing") is None
    (tmp_path / "empty/member/wal").mkdir(parents=True)
    assert run_wal_script(tmp_path / "empty") is None


# -- where a restore stands on a member ------------------------------------------------------------

def facts_for(cluster, token, states: dict) -> dict:
    """Facts as the probe would report them for each member's `state`: done, in-place, old
    (the data of the cluster before the restore), wiped (no data dir), down (etcd stopped)."""
    cid, ids = etcd.restored_ids(cluster, token)
    old_cid, old_ids = etcd.restored_ids(cluster, "labbackup")
    out = {}
    for n in cluster.nodes:
        st = states[n.name]
        cmds = {}
        if st == "done":
            cmds[etcd.STATUS] = {"rc": 0, "out": json.dumps([{"Status": {"header": {
                "cluster_id": int(cid, 16), "member_id": int(ids[n.name], 16),
                "revision": 12}, "version": "3.4.23"}}])}
            cmds[etcd.HEALTHY] = {"rc": 0, "out": "healthy"}
        elif st == "old":
            cmds[etcd.STATUS] = {"rc": 0, "out": json.dumps([{"Status": {"header": {
                "cluster_id": int(old_cid, 16), "member_id": int(old_ids[n.name], 16),
                "revision": 40}, "version": "3.4.23"}}])}
            cmds[etcd.HEALTHY] = {"rc": 0, "out": "healthy"}
        else:
            cmds[etcd.STATUS] = cmds[etcd.HEALTHY] = {"rc": 1, "out": ""}
        wal = {"done": (cid, ids), "in-place": (cid, ids), "old": (old_cid, old_ids)}.get(st)
        cmds[etcd.WAL] = {"rc": 0, "out": json.dumps(
            {"cluster_id": wal[0], "member_id": wal[1][n.name]} if wal else None)}
        cmds[etcd.TOOLS] = {"rc": 0, "out": "/usr/bin/etcdctl"}
        files = {etcd.APISERVER_MANIFEST: "ab" if st == "old" else None}
        out[n.name] = Facts(n.name, files=files, commands=cmds)
    return out


def ctx_for(cluster, states, token="labbackup-restore-x"):
    cid, ids = etcd.restored_ids(cluster, token)
    ctx = ph.Context(cluster, {}, {}, facts=facts_for(cluster, token, states))
    ctx.local["restore"] = {"token": token, "stamp": "20261129T191337Z", "sha256": "ab" * 32,
                            "cluster_id": cid, "members": ids, "snapshot": "/x.db"}
    return ctx


def test_member_state_from_the_end_state(cluster):
    ctx = ctx_for(cluster, {"bk1": "done", "bk2": "in-place", "bk3": "old"})
    assert [etcd.member_state(ctx, cluster.node(n)) for n in ("bk1", "bk2", "bk3")] == [
        "done", "in-place", "todo"]
    assert etcd.restore_pending(ctx)
    ctx = ctx_for(cluster, {"bk1": "wiped", "bk2": "down", "bk3": "done"})
    assert etcd.member_state(ctx, cluster.node("bk1")) == "todo"
    ctx = ctx_for(cluster, dict.fromkeys(("bk1", "bk2", "bk3"), "done"))
    assert not etcd.restore_pending(ctx)


def test_restore_plan_follows_each_member(cluster):
    ctx = ctx_for(cluster, {"bk1": "done", "bk2": "in-place", "bk3": "old"})
    work = {p.title: p.work(ctx) for p in backup.RESTORE}
    assert set(work["restore"]) == {"bk2", "bk3"}  # bk1 is healthy in the restored cluster
    assert any("restore the snapshot" in w for w in work["restore"]["bk3"])
    assert not any("restore the snapshot" in w for w in work["restore"]["bk2"])
    assert set(work["stop-api"]) == {"bk3"}  # the only API server manifest still in place
    assert work["start-api"] == {}  # nothing aside yet
    assert ph.RESTORE.hostvars(ctx, cluster.node("bk3"))["restore_state"] == "todo"
    assert ph.RESTORE.hostvars(ctx, cluster.node("bk2"))["restore_initial_cluster"] == (
        "bk1=https://10.90.8.11:2380,bk2=https://10.90.8.12:2380,bk3=https://10.90.8.13:2380")
    done = ctx_for(cluster, dict.fromkeys(("bk1", "bk2", "bk3"), "done"))
    assert all(not p.work(done) for p in backup.RESTORE)


def test_restore_refuses_unreachable_members(cluster):
    ctx = ctx_for(cluster, {"bk1": "old", "bk2": "old", "bk3": "old"})
    ctx.facts["bk2"] = Facts("bk2", reachable=False, error="bk2: timed out")
    refusals = list(ph.RESTORE.refusals(ctx))
    assert len(refusals) == 1 and refusals[0].startswith("bk2: etcd member not reachable")


def test_backup_refuses_when_no_member_is_healthy(cluster):
    ctx = ctx_for(cluster, dict.fromkeys(("bk1", "bk2", "bk3"), "down"))
    ctx.local["backup"] = {"folder": "/x"}
    refusals = list(ph.BACKUP.refusals(ctx))
    assert refusals and "no etcd member is healthy (bk1, bk2, bk3" in refusals[0]
    ctx = ctx_for(cluster, {"bk1": "down", "bk2": "old", "bk3": "old"})
    ctx.local["backup"] = {"folder": "/x"}
    assert list(ph.BACKUP.refusals(ctx)) == []
    assert list(ph.BACKUP.work(ctx)) == ["bk2"]  # the first healthy member


def test_actions_are_ordered_lists_of_phase_objects():
    assert [p.title for p in backup.BACKUP] == ["backup"]
    assert [p.title for p in backup.RESTORE] == ["stop-api", "restore", "start-api"]
    books = REPO / "provisioner/playbooks"
    for p in backup.BACKUP + backup.RESTORE:
        assert isinstance(p, ph.Phase)
        if p.playbook:
            assert (books / p.playbook).is_file()
    assert ph.BACKUP.playbook == "94-backup.yml" and ph.RESTORE.playbook == "96-restore.yml"


def test_tasks_are_named_backup_and_restore():
    from provisioner.tasks import cluster as tasks

    assert tasks.backup.name == "backup" and tasks.restore.name == "restore"
    assert os.path.basename(tasks.__file__) == "cluster.py"


# -- stacked etcd (kubeadm without an etcd group) and k3s ------------------------------------------

STACKED = REPO / "inventories/ha-kubevip.yml"  # 3 stacked control planes + 2 workers


def test_stacked_members_are_the_control_planes_with_kubeadm_certificates():
    c = inventory.load(str(STACKED))
    assert etcd.kind(c) == "stacked"
    assert [n.name for n in etcd.members(c)] == [n.name for n in c.control_planes]
    argv = etcd.etcdctl(c, c.control_planes[0], "endpoint", "health")
    assert "/etc/kubernetes/pki/etcd/healthcheck-client.crt" in argv
    assert "/etc/kubernetes/pki/etcd/ca.crt" in argv


def test_stacked_backup_installs_etcdctl_on_a_control_plane_that_lacks_it():
    c = inventory.load(str(STACKED))
    facts = {}
    for n in c.nodes:
        cmds = {etcd.STATUS: {"rc": 127, "out": ""}, etcd.HEALTHY: {"rc": 127, "out": ""},
                etcd.TOOLS: {"rc": 0, "out": ""}, etcd.WAL: {"rc": 0, "out": "null"}}
        facts[n.name] = Facts(n.name, commands=cmds,
                              services={"kubelet": {"active": "active", "enabled": "enabled"}})
    ctx = ph.Context(c, {}, {}, facts=facts)
    ctx.local["backup"] = {"folder": "/state/backups"}
    assert list(ph.BACKUP.refusals(ctx)) == []
    first = c.control_planes[0].name
    assert ph.BACKUP.work(ctx) == {first: [
        "install etcdctl (Debian package etcd-client)",
        f"etcdctl snapshot save on {first}, copied to /state/backups/"]}
    # without a kubelet running anywhere there is no member to ask
    for f in facts.values():
        f.services.clear()
    assert "no etcd member is healthy" in next(iter(ph.BACKUP.refusals(ctx)))


def test_stacked_restore_stops_etcd_through_its_manifest_and_owns_the_data_as_root():
    c = inventory.load(str(STACKED))
    token = "k8s-restore-x"
    cid, ids = etcd.restored_ids(c, token)
    facts = {n.name: Facts(n.name, commands={etcd.STATUS: {"rc": 127, "out": ""},
                                             etcd.WAL: {"rc": 0, "out": "null"}},
                           files={etcd.APISERVER_MANIFEST: "ab"}) for n in c.nodes}
    ctx = ph.Context(c, {}, {}, facts=facts)
    ctx.local["restore"] = {"token": token, "stamp": "20261129T191337Z", "sha256": "ab" * 32,
                            "cluster_id": cid, "members": ids, "snapshot": "/x.db"}
    cps = [n.name for n in c.control_planes]
    work = ph.RESTORE.work(ctx)
    assert sorted(work) == sorted(cps)  # the workers are no members
    assert work[cps[0]][0] == "stop etcd (its static pod manifest aside)"
    hv = ph.RESTORE.hostvars(ctx, c.control_planes[0])
    assert hv["etcd_kind"] == "stacked" and hv["etcd_owner"] == "root"
    assert hv["etcd_pki"] == "/etc/kubernetes/pki/etcd"
    assert sorted(ph.STOP_API.work(ctx)) == sorted(cps)
    assert list(ph.RESTORE.refusals(ctx)) == []  # the playbook installs etcdctl where missing


def k3s_ctx(states: dict[str, str]):
    """A k3s restore in progress: per server "todo" (k3s running, nothing done), "stopped"
    (k3s stopped, nothing done), "done" (its part done, k3s stopped), "up" (done, k3s runs)."""
    c = inventory.load(str(REPO / "tests/data/lab-backup-k3s.yml"))
    stamp = "20261129T191337Z"
    facts = {}
    for name, st in states.items():
        node = c.node(name)
        markers = etcd.k3s_marker(c, node, stamp) if st in ("done", "up") else ""
        facts[name] = Facts(name, commands={etcd.K3S_RESTORED: {"rc": 0, "out": markers + "\n"}},
                            services={"k3s": {"active": "active" if st in ("todo", "up")
                                              else "inactive"}})
    ctx = ph.Context(c, {}, {}, facts=facts)
    ctx.local["restore"] = {"token": "t", "stamp": stamp, "sha256": "ab" * 32,
                            "cluster_id": None, "members": {}, "snapshot": "/x.db"}
    return c, ctx


K3S_RESTORE_CASES = [
    # (server states, hosts with work per phase)
    ({"bk1": "todo", "bk2": "todo", "bk3": "todo"},
     {"stop-api": {"bk1", "bk2", "bk3"}, "restore": {"bk1", "bk2", "bk3"}}),
    # the reset on bk1 is done, bk2 and bk3 not yet moved aside (a failure in between)
    ({"bk1": "done", "bk2": "stopped", "bk3": "stopped"},
     {"restore": {"bk2", "bk3"}, "start-api": {"bk1", "bk2", "bk3"}}),
    # every part done, k3s started on bk1 only (start-api failed on bk2)
    ({"bk1": "up", "bk2": "done", "bk3": "done"}, {"start-api": {"bk2", "bk3"}}),
    ({"bk1": "up", "bk2": "up", "bk3": "up"}, {}),
]


@pytest.mark.parametrize("states, want", K3S_RESTORE_CASES)
def test_k3s_restore_plan_follows_each_server(states, want):
    c, ctx = k3s_ctx(states)
    work = {p.title: set(p.work(ctx)) for p in backup.RESTORE}
    assert {t: w for t, w in work.items() if w} == want


def test_k3s_restore_resets_the_first_server_and_moves_the_others_db_aside():
    c, ctx = k3s_ctx({"bk1": "stopped", "bk2": "stopped", "bk3": "todo"})
    work = ph.RESTORE.work(ctx)
    assert "--cluster-reset --cluster-reset-restore-path=" in " ".join(work["bk1"])
    assert "sha256" in " ".join(work["bk1"])
    assert work["bk3"] == ["stop k3s", "move /var/lib/rancher/k3s/server/db aside to "
                           "/var/lib/rancher/k3s/server/db.before-restore-20261129T191337Z "
                           "(it rejoins the restored cluster through bk1)"]
    first, other = (ph.RESTORE.hostvars(ctx, c.node(n)) for n in ("bk1", "bk3"))
    assert first["k3s_first"] and not other["k3s_first"]
    assert first["restore_marker"] == f"{etcd.WORK_DIR}/k3s-reset-20261129T191337Z"
    assert first["restore_sha256"] == "ab" * 32 and first["restore_state"] == "todo"


def test_the_k3s_confirmation_names_the_k3s_procedure(tmp_path):
    c = dataclasses.replace(inventory.load(str(REPO / "tests/data/lab-backup-k3s.yml")),
                            state_dir=str(tmp_path / "state"))
    db = backup_pair(tmp_path, c)
    meta = json.loads(db.with_suffix(".json").read_text())
    meta.update(distribution="k3s", etcd="k3s", revision=None, cluster_id=None)
    snapshots.write_metadata(db.with_suffix(".json"), meta)
    text = backup.confirmation(c, snapshots.verify(str(db), c), [])
    assert "bk1 is reset from the snapshot (k3s server --cluster-reset" in text
    assert "IS LOST" in text


def test_the_confirmation_says_that_later_writes_are_lost(tmp_path, cluster):
    meta = snapshots.verify(backup_pair(tmp_path, cluster), cluster)
    text = backup.confirmation(cluster, meta, [])
    assert "EVERYTHING WRITTEN TO THE CLUSTER AFTER 2026-11-29T19:13:37Z IS LOST" in text
    assert "bk1, bk2, bk3" in text and "revision 11" in text
