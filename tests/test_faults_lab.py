"""Faults during `cluster.up` on booted lab nodes: a node lost mid-run, a controller killed in
the middle of the etcd phase. Each ends with a rerun that converges."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner import actions
from provisioner import phases as ph

pytestmark = pytest.mark.lab

ETCDCTL = ("ETCDCTL_API=3 etcdctl --cacert /etc/etcd/pki/ca.crt --endpoints "
           "https://10.90.0.11:2379,https://10.90.0.12:2379,https://10.90.0.13:2379 "
           "--cert /etc/etcd/pki/healthcheck-client.crt --key /etc/etcd/pki/healthcheck-client.key")


EARLY = (ph.PREPARE, ph.RUNTIME, ph.ETCD, ph.LOADBALANCER)  # before the kube binaries


def pending_before_binaries(cluster, bundle=None):
    """Without a bundle the runtime (containerd from the bundle) is not checked."""
    early = {p.title for p in EARLY if bundle or not p.requires_bundle(cluster)}
    return {p.title: w for p, w in actions.up(cluster, bundle_dir=bundle, dry_run=True)
            if w and p.title in early}


class LoseNodeAt:
    """Progress stand-in that powers a node off when a given phase starts."""

    def __init__(self, lab, node, phase):
        self.lab, self.node, self.at, self.fired = lab, node, phase, False

    def phase(self, name, hosts=()):
        if name == self.at and not self.fired:
            self.fired = True
            self.lab.lab.stop([self.node])

    def __getattr__(self, _name):  # every other progress call is ignored
        return lambda *a, **k: None


def test_node_lost_mid_run_is_named_and_a_rerun_converges(lab, tmp_path):
    from tests.standins import make_standin_bundle

    bundle = str(make_standin_bundle(tmp_path / "bundle", lab.cluster))  # containerd is in it
    lab.reset()
    with pytest.raises(actions.PhaseFailed) as failed:
        actions.up(lab.cluster, bundle_dir=bundle, phases=EARLY,
                   progress=LoseNodeAt(lab, "w1", "runtime"))
    message = str(failed.value)
    assert "runtime" in message and "w1" in message
    assert not any(n in message for n in ("cp1", "cp2", "cp3"))
    # the hosts that did not fail finished the phase
    for name in ("cp1", "cp2", "cp3"):
        assert lab.run(name, "systemctl is-active containerd")[1].strip() == "active"

    lab.reset(["w1"])  # the node comes back (as a fresh machine with the same host key)
    actions.up(lab.cluster, bundle_dir=bundle, phases=EARLY)
    assert pending_before_binaries(lab.cluster, bundle) == {}
    assert lab.run("w1", "systemctl is-active containerd")[1].strip() == "active"


def test_controller_killed_in_the_etcd_phase_then_rerun_gives_three_healthy_members(lab):
    lab.reset(["cp1", "cp2", "cp3"])
    runs = Path(lab.cluster.state_dir) / lab.cluster.cluster_name / "runs"
    before = set(runs.glob("*")) if runs.exists() else set()
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "cluster.up"], env=lab.env, cwd=Path.cwd(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(p.name.endswith("-etcd") for p in set(runs.glob("*")) - before):
            assert proc.poll() is None, "cluster.up ended before the etcd phase"
            assert time.monotonic() < deadline, "the etcd phase never started"
            time.sleep(0.2)
        time.sleep(2)  # inside the etcd playbook
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    with pytest.raises(actions.BundleMissing):
        actions.up(lab.cluster, start="etcd")  # resume where it stopped
    rc, out, err = lab.run("cp1", f"{ETCDCTL} endpoint health 2>&1")
    assert rc == 0 and out.count("is healthy") == 3, out + err
    rc, out, _ = lab.run("cp1", f"{ETCDCTL} member list")
    assert rc == 0 and len(out.strip().splitlines()) == 3, out
    assert pending_before_binaries(lab.cluster) == {}
