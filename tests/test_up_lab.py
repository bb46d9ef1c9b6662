"""`cluster.up` end to end on booted lab nodes over real SSH (inventories/lab.yml).

Real here: host preparation, containerd 2.x from the bundle, a 3-member etcd with its own CA and
mutual TLS, haproxy + keepalived holding the API VIP. The Kubernetes binaries cannot be had on this
machine, so the kube phases run against test-only stand-ins (tests/standins) that check their
config strictly and record how they were called: these tests prove ordering, secret passing,
idempotency guards and resumption, not a working Kubernetes cluster.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest

from provisioner import actions
from provisioner.errors import UserError
from provisioner.state import State

pytestmark = pytest.mark.lab

VIP = "10.90.0.100"
ETCDCTL = ("ETCDCTL_API=3 etcdctl --cacert /etc/etcd/pki/ca.crt "
           "--cert /etc/etcd/pki/healthcheck-client.crt --key /etc/etcd/pki/healthcheck-client.key")


def ok(lab, node, cmd):
    rc, out, err = lab.run(node, cmd)
    assert rc == 0, f"{node}: {cmd}: rc={rc} {err.strip()[-500:]}"
    return out


def work(result):
    return {phase.title: hosts for phase, hosts in result if hosts}


def started_at(lab, units=("containerd", "etcd", "haproxy", "keepalived")):
    """When each running unit last entered 'active' on each node (a restart changes it)."""
    out = {}
    for n in lab.cluster.nodes:
        props = ok(lab, n.name, "systemctl show -p Id -p ActiveEnterTimestampMonotonic "
                   + " ".join(units) + " || true")
        out[n.name] = props
    return out


def standin_log(lab, node, tool="kubeadm"):
    rc, out, _ = lab.run(node, f"cat /var/log/standin/{tool}.jsonl 2>/dev/null")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fresh(lab):
    """Fresh nodes, and a controller that never fetched their kubeconfig (the lab's state
    folder is shared with the modules before: the stand-ins' admin.conf of a rebuilt cluster
    may equal the one fetched then, and the kubeconfig phase would rightly have no work)."""
    lab.reset()
    state = State(lab.cluster)
    state.kubeconfig.unlink(missing_ok=True)
    (state.dir / "kubeconfig.source").unlink(missing_ok=True)
    return lab


@pytest.fixture(scope="module")
def without_bundle(fresh):
    """The first `cluster.up` with no bundle: converges what it can, then stops clearly."""
    with pytest.raises(actions.BundleMissing) as stopped:
        actions.up(fresh.cluster)
    return str(stopped.value)


def test_up_without_bundle_stops_with_how_to_supply_one(without_bundle):
    assert "bundle.fetch" in without_bundle
    assert "--bundle" in without_bundle


def test_hosts_prepared(fresh, without_bundle):
    for n in fresh.cluster.nodes:
        assert ok(fresh, n.name, "hostname").strip() == n.name
        hosts = ok(fresh, n.name, "cat /etc/hosts")
        assert all(f"{m.address} {m.name}" in hosts for m in fresh.cluster.nodes)
        assert ok(fresh, n.name, "sysctl -n net.ipv4.ip_forward").strip() == "1"




def test_etcd_three_members_mutual_tls(fresh, without_bundle):
    endpoints = ",".join(f"https://10.90.0.1{i}:2379" for i in (1, 2, 3))
    health = ok(fresh, "cp1", f"{ETCDCTL} --endpoints {endpoints} endpoint health 2>&1")
    assert health.count("is healthy") == 3, health
    members = ok(fresh, "cp1", f"{ETCDCTL} --endpoints https://10.90.0.11:2379 member list")
    assert len(members.strip().splitlines()) == 3
    # plaintext and TLS without a client certificate are both refused
    rc, _, _ = fresh.run("cp1", "ETCDCTL_API=3 etcdctl --dial-timeout 3s --command-timeout 3s "
                         "--endpoints http://10.90.0.11:2379 endpoint health")
    assert rc != 0
    rc, _, _ = fresh.run("cp1", "ETCDCTL_API=3 etcdctl --dial-timeout 3s --command-timeout 3s "
                         "--cacert /etc/etcd/pki/ca.crt --endpoints https://10.90.0.12:2379 "
                         "endpoint health")
    assert rc != 0


def vip_holder(lab):
    holders = [n for n in ("lb1", "lb2") if VIP in ok(lab, n, "ip -4 -br addr show host0")]
    return holders


def wait_vip(lab, want, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if vip_holder(lab) == [want]:
            return
        time.sleep(0.5)
    raise AssertionError(f"VIP {VIP} expected on {want}, is on {vip_holder(lab)}")


def test_vip_moves_when_its_holder_fails(fresh, without_bundle):
    wait_vip(fresh, "lb1")
    assert "haproxy" in ok(fresh, "lb1", "systemctl is-active haproxy keepalived | sort -u; "
                           "ss -ltn | grep -q ':6443 ' && echo haproxy")
    ok(fresh, "lb1", "systemctl stop keepalived")
    try:
        wait_vip(fresh, "lb2")
    finally:
        ok(fresh, "lb1", "systemctl start keepalived")
    wait_vip(fresh, "lb1")  # higher priority takes it back


def test_without_bundle_no_containerd_is_installed(fresh, without_bundle):
    """containerd comes from the bundle (containerd_source: bundle): the run passed over the
    runtime phase and said so."""
    assert "not done without it: runtime" in without_bundle
    for name in ("cp1", "w1"):
        assert fresh.run(name, "test -e /usr/local/bin/containerd")[0] != 0


def test_rerun_without_bundle_has_no_work_before_the_binaries(fresh, without_bundle):
    plan = work(actions.up(fresh.cluster, dry_run=True))
    assert set(plan) <= {"runtime", "binaries", "control-plane", "join-control-plane",
                         "join-workers", "cni", "addons", "node-meta", "kubeconfig"}, plan


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fresh):
    from tests.standins import make_standin_bundle

    return make_standin_bundle(tmp_path_factory.mktemp("bundle"), fresh.cluster)


@pytest.fixture(scope="module")
def with_bundle(fresh, without_bundle, bundle):
    return work(actions.up(fresh.cluster, bundle_dir=str(bundle)))


def test_containerd_runs_on_kube_nodes(fresh, with_bundle):
    for name in ("cp1", "cp2", "cp3", "w1"):
        assert ok(fresh, name, "systemctl is-active containerd").strip() == "active"
        server = ok(fresh, name, "ctr version").split("Server:", 1)[1]
        assert "Version:  2." in server  # the bundle's containerd 2.x
        config = ok(fresh, name, "cat /etc/containerd/config.toml")
        assert "version = 3" in config and "SystemdCgroup = true" in config


def test_kube_phases_run_in_order_with_stand_ins(fresh, with_bundle):
    assert {"binaries", "control-plane", "join-control-plane", "join-workers", "cni",
            "addons", "node-meta", "kubeconfig"} <= set(with_bundle)
    secrets = State(fresh.cluster).secrets()
    token_hash = hashlib.sha256(secrets["bootstrap_token"].encode()).hexdigest()

    inits = [e for e in standin_log(fresh, "cp1") if e["argv"][:1] == ["init"]
             and "phase" not in e["argv"]]
    assert len(inits) == 1 and inits[0]["result"] == "ok"
    joins = {n: [e for e in standin_log(fresh, n) if "join" in e["argv"]]
             for n in ("cp2", "cp3", "w1")}
    assert all(len(j) == 1 and j[0]["result"] == "ok" for j in joins.values()), joins
    # control planes joined one at a time, after init
    assert inits[0]["time"] < joins["cp2"][0]["time"] < joins["cp3"][0]["time"]
    key_hash = hashlib.sha256(secrets["certificate_key"].encode()).hexdigest()
    assert key_hash in json.dumps(inits[0]["config"])
    for name, (entry,) in joins.items():
        assert token_hash in json.dumps(entry["config"]), name
        assert secrets["bootstrap_token"] not in json.dumps(entry)
        # control planes get the certificate key to fetch the shared certs; workers never do
        assert (key_hash in json.dumps(entry["config"])) == name.startswith("cp"), name
    # no secret ever reaches a log on the nodes
    for n in fresh.cluster.nodes:
        rc, out, _ = fresh.run(n.name, "cat /var/log/standin/*.jsonl 2>/dev/null")
        assert secrets["bootstrap_token"] not in out and secrets["certificate_key"] not in out


def test_kubeconfig_written_0600_pointing_at_the_vip(fresh, with_bundle):
    path = State(fresh.cluster).kubeconfig
    assert path.stat().st_mode & 0o777 == 0o600
    assert f"server: https://{VIP}:6443" in path.read_text()


def test_second_up_changes_and_restarts_nothing(fresh, with_bundle, bundle):
    before = started_at(fresh)
    logs = {n: len(standin_log(fresh, n)) for n in ("cp1", "cp2", "cp3", "w1")}
    again = work(actions.up(fresh.cluster, bundle_dir=str(bundle)))
    assert again == {}
    assert started_at(fresh) == before
    assert {n: len(standin_log(fresh, n)) for n in logs} == logs


def test_second_up_is_refused_while_one_runs(fresh):
    state = State(fresh.cluster)
    with state.lock():
        with pytest.raises(UserError, match="another action is running"):
            actions.up(fresh.cluster, dry_run=True)


def test_status_shows_every_host_and_its_services(fresh, with_bundle):
    out = subprocess.run([sys.executable, "-m", "invoke", "cluster.status"],
                         env=dict(fresh.env, COLUMNS="200"), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for n in fresh.cluster.nodes:
        assert n.name in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("cp1 "))
    assert row.count("active") >= 2  # containerd and etcd on cp1


def test_plan_lists_every_managed_file_unchanged_on_a_converged_cluster(fresh, with_bundle, bundle):
    out = subprocess.run([sys.executable, "-m", "invoke", "cluster.plan", "--files",
                          "--bundle", str(bundle)], env=fresh.env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    states = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")
              and line.split()[0] in ("new", "changed", "unchanged")]
    assert len(states) > 50
    assert set(states) == {"unchanged"}, [line for line in out.stdout.splitlines()
                                          if line.strip().startswith(("new", "changed"))]
    assert "/etc/kubernetes/kubeadm-init.yaml  (control-plane)" in out.stdout
    assert "cluster is converged: nothing to do" in out.stdout


def test_a_node_added_later_joins_with_a_renewed_token(fresh, with_bundle, bundle):
    fresh.reset(["w1"])  # w1 comes back as a new machine, as when a worker is added later
    before = len(standin_log(fresh, "cp1"))
    did = work(actions.up(fresh.cluster, bundle_dir=str(bundle)))
    assert {h for hosts in did.values() for h in hosts} == {"w1"}, did
    assert "join-workers" in did and "control-plane" not in did
    renewed = standin_log(fresh, "cp1")[before:]
    # made again from the init config file: no secret on any command line
    assert [e["argv"][:3] for e in renewed] == [["init", "phase", "bootstrap-token"]]
    secrets = State(fresh.cluster).secrets()
    assert secrets["bootstrap_token"] not in json.dumps(renewed)
    assert all(e["result"] == "ok" for e in renewed)
    (join,) = [e for e in standin_log(fresh, "w1") if "join" in e["argv"]]
    assert join["result"] == "ok"


def test_smoke_refuses_to_pass_without_a_real_api_server(fresh, with_bundle):
    """The stand-ins serve no API: smoke must say so at its first check, never report success."""
    said = []
    with pytest.raises(UserError, match="smoke: listing nodes failed on cp1"):
        actions.smoke(fresh.cluster, say=said.append)
    assert said == []


def test_reset_takes_the_cluster_off_and_up_would_build_it_again(fresh, with_bundle):
    actions.reset(fresh.cluster)
    for name in ("cp1", "cp2", "cp3"):
        assert fresh.run(name, "systemctl is-active etcd")[1].strip() != "active"
        assert fresh.run(name, "test -e /etc/kubernetes/admin.conf || "
                         "test -e /var/lib/provisioner")[0] != 0
    assert fresh.run("lb1", "systemctl is-active haproxy")[1].strip() != "active"
    assert fresh.run("cp1", "hostname")[0] == 0  # SSH still works: no firewall flush
    assert not State(fresh.cluster).kubeconfig.exists()
    plan = work(actions.up(fresh.cluster, dry_run=True))
    assert {"etcd", "loadbalancer", "control-plane"} <= set(plan)
