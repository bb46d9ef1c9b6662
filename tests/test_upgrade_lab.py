"""`cluster.upgrade` on booted lab nodes (tests/data/lab-upgrade.yml: 3 kubeadm control planes
with stacked etcd behind kube-vip, 2 workers), from v1.35.9 to v1.36.4.

kubeadm, kubelet and kubectl are the test-only stand-ins (tests/standins): they check what the
real tools check for an upgrade (kubeadm's version policy, drain needing --ignore-daemonsets, a
kubelet never newer than its API server) and record every call with its time. So these tests
prove the order of the steps, the refusals, the skew rules at every step and resuming after a
SIGKILL of the controller, not a working Kubernetes upgrade.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from provisioner import actions, upgrade as upgrades
from provisioner.errors import UserError
from tests.conftest import REPO, booted_lab

pytestmark = pytest.mark.lab

INVENTORY = REPO / "tests/data/lab-upgrade.yml"
OLD, NEW = "v1.35.9", "v1.36.4"
CPS, WORKERS = ("ucp1", "ucp2", "ucp3"), ("uw1", "uw2")
FIRST, W1 = CPS[0], WORKERS[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with booted_lab(INVENTORY, tmp_path_factory.mktemp("upgrade-state")) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def bundles(lab, tmp_path_factory):
    """Two stand-in bundles in one folder: the current version and the target."""
    from tests.standins import make_standin_bundle

    folder = tmp_path_factory.mktemp("bundles")
    make_standin_bundle(folder, lab.cluster)
    make_standin_bundle(folder, upgrades.target_cluster(lab.cluster, NEW))
    return folder


@pytest.fixture(scope="module")
def built(lab, bundles):
    actions.up(lab.cluster, bundle_dir=str(bundles))
    return lab


def log(lab, node, tool):
    _, out, _ = lab.run(node, f"cat /var/log/standin/{tool}.jsonl 2>/dev/null")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def words(entry) -> list[str]:
    """A recorded kubectl argv without its global --kubeconfig FILE."""
    argv, out, skip = entry["argv"], [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--kubeconfig":
            skip = True
        elif not a.startswith("--kubeconfig="):
            out.append(a)
    return out


def upgrade_calls(lab):
    return {n: [e for e in log(lab, n, "kubeadm") if e["argv"][:1] == ["upgrade"]]
            for n in CPS + WORKERS}


def test_skipped_minor_and_missing_bundle_are_refused_before_any_change(built, bundles):
    lab = built
    before = {n: lab.run(n, "sha256sum /usr/local/bin/kubelet")[1] for n in CPS + WORKERS}
    with pytest.raises(UserError, match="skips a minor"):
        upgrades.upgrade(lab.cluster, "v1.37.1", bundle_dir=str(bundles))
    with pytest.raises(UserError, match="downgrade"):
        upgrades.upgrade(lab.cluster, "v1.35.2", bundle_dir=str(bundles))
    with pytest.raises(UserError, match="bundle does not hold v1.36.5"):
        upgrades.upgrade(lab.cluster, "v1.36.5", bundle_dir=str(bundles))
    assert all(not calls for calls in upgrade_calls(lab).values())
    assert {n: lab.run(n, "sha256sum /usr/local/bin/kubelet")[1] for n in before} == before
    assert not [e for e in log(lab, FIRST, "kubectl") if words(e)[:1] == ["drain"]]


def test_plan_then_sigkill_during_a_worker_then_rerun_finishes(built, bundles, tmp_path):
    lab, cluster = built, built.cluster
    planned = {p.title: w for p, w in
               upgrades.upgrade(cluster, NEW, bundle_dir=str(bundles), dry_run=True).done if w}
    assert set(planned["upgrade-control-plane"]) == set(CPS)
    # first the target's images, which only the new version needs (pause and CoreDNS are the
    # same image in both bundles; the stand-in images differ by name and version only)
    new = {f"import image registry.k8s.io/{i}:{NEW}" for i in ("kube-apiserver",
           "kube-controller-manager", "kube-scheduler", "kube-proxy")}
    assert {n: set(w) for n, w in planned["images"].items()} == {
        **{n: new | {"import image registry.k8s.io/etcd:3.6.9-0"} for n in CPS},
        **{n: {f"import image registry.k8s.io/kube-proxy:{NEW}"} for n in WORKERS}}
    assert set(planned["upgrade-nodes"]) == set(CPS + WORKERS)
    assert not any(upgrade_calls(lab).values())  # the dry run changed nothing

    env = dict(os.environ, PROVISIONER_STATE_DIR=str(cluster.state_dir), PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "cluster.upgrade", "--to", NEW, "-i", str(INVENTORY),
         "--bundle", str(bundles)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            drains = [e for e in log(lab, FIRST, "kubectl") if words(e)[:2] == ["drain", W1]]
            if drains:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the upgrade ended before it drained the first worker"
        os.killpg(proc.pid, signal.SIGKILL)  # the controller and whatever it started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # killed mid-upgrade: the first worker is cordoned, the rerun's plan names what is left
    left = {p.title: w for p, w in
            upgrades.upgrade(cluster, NEW, bundle_dir=str(bundles), dry_run=True).done if w}
    assert W1 in left["upgrade-nodes"] and "upgrade-control-plane" not in left

    started = time.monotonic()
    result = upgrades.upgrade(cluster, NEW, bundle_dir=str(bundles), max_unavailable=1)
    rerun = time.monotonic() - started
    assert set(dict((p.title, w) for p, w in result.done)["upgrade-nodes"]) >= set(WORKERS)
    assert "set `kubernetes_version: v1.36.4`" in upgrades.summary(cluster, result)

    # end state, read from the nodes: every version is the target, nothing cordoned
    again = upgrades.upgrade(cluster, NEW, bundle_dir=str(bundles), dry_run=True)
    assert {p.title: w for p, w in again.done if w} == {}
    assert {v.kubelet for v in again.before} == {NEW}
    assert {v.apiserver for v in again.before if v.control_plane} == {NEW}
    rc, out, _ = lab.run(W1, "ctr -n k8s.io images ls -q")
    assert f"registry.k8s.io/kube-proxy:{NEW}" in out.split()

    kubectl = log(lab, FIRST, "kubectl")
    for e in kubectl:  # drain always passed --ignore-daemonsets (kube-proxy runs everywhere)
        if words(e)[:1] == ["drain"]:
            assert "--ignore-daemonsets" in e["argv"] and e["result"] == "ok"
    calls = upgrade_calls(lab)
    api_done = {n: max(e["time"] for e in calls[n] if e["result"] == "ok") for n in CPS}
    assert [e["argv"][:2] for e in calls[FIRST] if e["result"] == "ok"][:2] == [
        ["upgrade", "plan"], ["upgrade", "apply"]]
    assert api_done[CPS[0]] < api_done[CPS[1]] < api_done[CPS[2]]

    overhead = {}
    for n in CPS + WORKERS:
        drains = [e["time"] for e in kubectl if words(e)[:2] == ["drain", n]]
        uncordons = [e["time"] for e in kubectl if words(e)[:2] == ["uncordon", n]]
        starts = [e for e in log(lab, n, "kubelet") if e["result"] == "running"]
        restart = min(e["time"] for e in starts if e["version"] == NEW)
        replaced = float(lab.run(n, "stat -c %Z /usr/local/bin/kubelet")[1])
        # per node: drain -> upgrade (binary replaced; workers: kubeadm upgrade node) ->
        # restart -> uncordon, and never schedulable in between
        assert drains and drains[0] < restart < uncordons[-1]
        assert int(drains[0]) <= replaced <= restart
        assert not [t for t in uncordons if drains[0] < t < restart]
        if n in WORKERS:
            node_upgrades = [e["time"] for e in calls[n] if e["result"] == "ok"]
            assert node_upgrades and drains[0] < min(node_upgrades) < restart
        # skew: no kubelet at the target before every API server was there
        assert restart > max(api_done.values())
        assert all(e["version"] == OLD for e in starts if e["time"] < restart)
        overhead[n] = uncordons[-1] - [t for t in drains if t < restart][-1]
    # the stand-in kubelet on a control plane refuses to run newer than its API server: never
    for n in CPS:
        assert not [e for e in log(lab, n, "kubelet") if "skew" in e["result"]]
    print(f"\nupgrade overhead per node beyond the drain (s): "
          f"{ {k: round(v, 1) for k, v in overhead.items()} }; rerun after SIGKILL "
          f"{rerun:.1f} s")

    # plain cluster.up: the old file is refused with the next step; the edited file converges
    with pytest.raises(UserError, match="set kubernetes_version: v1.36.4"):
        actions.up(cluster, bundle_dir=str(bundles))
    target = upgrades.target_cluster(cluster, NEW)
    done = {p.title: w for p, w in actions.up(target, bundle_dir=str(bundles)) if w}
    assert "binaries" not in done
    assert {p.title: w for p, w in actions.up(target, bundle_dir=str(bundles)) if w} == {}
