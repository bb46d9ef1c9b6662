"""remove-node and adding an external etcd member back, on booted lab nodes
(tests/data/lab-remove.yml: haproxy + keepalived pair, 3 control planes running the external
etcd, 1 worker, bridge k8slab3).

Real here: etcd (mutual TLS: member list, member remove / add, health), haproxy + keepalived
(their config, `haproxy -c`), the host reset (units, files), the API server manifest edit.
Stand-ins (test-only): kubeadm, kubelet, kubectl. For cordon / drain / delete node they prove
which calls the provisioner makes, in which order, and that drain's own checks (DaemonSets,
emptyDir, PodDisruptionBudget timeout, --force) are honoured as kubectl honours them; no API
server ever stored a Node.
"""

from __future__ import annotations

import copy
import json
import time

import pytest
import yaml

from provisioner import actions, removal
from provisioner.errors import UserError
from tests.conftest import REPO, booted_lab, lab_cluster

pytestmark = pytest.mark.lab
INVENTORY = REPO / "tests/data/lab-remove.yml"
PKI = "/etc/etcd/pki"
TIMES = {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with booted_lab(INVENTORY, tmp_path_factory.mktemp("remove-state")) as booted:
        yield booted


@pytest.fixture(scope="module")
def built(lab, tmp_path_factory):
    from tests.standins import make_standin_bundle

    bundle = str(make_standin_bundle(tmp_path_factory.mktemp("bundle"), lab.cluster))
    actions.up(lab.cluster, bundle_dir=bundle)
    return bundle


def without(lab, folder, *names):
    """The inventory with `names` deleted, as the user edits it after remove-node."""
    data = yaml.safe_load(INVENTORY.read_text())
    data = copy.deepcopy(data)
    data["all"]["vars"]["ansible_ssh_private_key_file"] = lab.cluster.nodes[0].ssh_key
    for group in data["all"]["children"].values():
        for n in names:
            (group.get("hosts") or {}).pop(n, None)
    path = folder / f"without-{'-'.join(names) or 'none'}.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # the order of the hosts stays
    return lab_cluster(path, lab.cluster.state_dir)


def sh(lab, node, cmd):
    rc, out, err = lab.run(node, cmd)
    assert rc == 0, f"{node}: {cmd}: {err}"
    return out


def etcdctl(lab, node, *args):
    addr = lab.cluster.node(node).address
    return (f"etcdctl --endpoints https://{addr}:2379 --cacert {PKI}/ca.crt --cert "
            f"{PKI}/healthcheck-client.crt --key {PKI}/healthcheck-client.key " + " ".join(args))


def members(lab, via="cp1"):
    out = json.loads(sh(lab, via, etcdctl(lab, via, "member", "list", "-w", "json")))
    return {m.get("name"): m["ID"] for m in out["members"]}


def healthy(lab, node):
    return lab.run(node, etcdctl(lab, node, "endpoint", "health"))[0] == 0


def kubectl_calls(lab, node="cp1"):
    """The changing kubectl calls on `node` (the probes' `get`s left out)."""
    rc, out, _ = lab.run(node, "cat /var/log/standin/kubectl.jsonl 2>/dev/null")
    return [e["argv"] for e in map(json.loads, out.splitlines()) if e.get("result") == "ok"
            and {"cordon", "uncordon", "drain", "delete"} & set(e["argv"])]


def work(result):
    return {p.title: w for p, w in result if w}


def wait_healthy(lab, node, seconds=60):
    deadline = time.monotonic() + seconds
    while not healthy(lab, node):
        assert time.monotonic() < deadline, f"{node}: etcd not healthy"
        time.sleep(1)


def test_removing_an_etcd_member_while_another_is_stopped_is_refused(lab, built):
    before = members(lab)
    calls = kubectl_calls(lab)
    sh(lab, "cp2", "systemctl stop etcd")
    try:
        with pytest.raises(UserError) as e:
            removal.remove_node(lab.cluster, "cp3", bundle_dir=built)
        assert "cp2" in str(e.value) and "nothing was changed" in str(e.value)
    finally:
        sh(lab, "cp2", "systemctl start etcd")
    wait_healthy(lab, "cp2")
    assert members(lab) == before and len(before) == 3
    assert kubectl_calls(lab) == calls
    assert sh(lab, "cp3", "systemctl is-active etcd kubelet").split() == ["active", "active"]


def test_remove_worker(lab, built, tmp_path):
    pods = {"w1": [
        {"namespace": "kube-system", "name": "kube-proxy-w1", "controller": "DaemonSet"},
        {"namespace": "default", "name": "web-1", "controller": "ReplicaSet", "emptyDir": True},
        {"namespace": "default", "name": "db-0", "controller": "StatefulSet", "pdbBlocks": True}]}
    sh(lab, "cp1", f"mkdir -p /etc/standin && echo '{json.dumps(pods)}' > /etc/standin/pods.json")
    rest = without(lab, tmp_path, "w1")
    # the edited inventory before the removal: plan flags w1, still running the cluster
    assert any(line.startswith("w1 ") and "kubelet running" in line
               for line in removal.strays(rest))

    # a PodDisruptionBudget holds the drain: it fails after its timeout, nothing reset
    with pytest.raises(actions.PhaseFailed, match="--force"):
        removal.remove_node(lab.cluster, "w1", bundle_dir=built, timeout=3)
    assert sh(lab, "w1", "systemctl is-active kubelet").strip() == "active"

    planned = work(removal.remove_node(lab.cluster, "w1", bundle_dir=built, force=True,
                                       dry_run=True))
    assert set(planned) == {"drain", "reset-node", "delete-node", "prepare (without w1)",
                            "node-meta (without w1)"}, planned
    start = time.monotonic()
    did = work(removal.remove_node(lab.cluster, "w1", bundle_dir=built, force=True))
    TIMES["worker"] = time.monotonic() - start
    assert did == planned

    # w1: services stopped and disabled, cluster files gone
    rc, out, _ = lab.run("w1", "systemctl is-active kubelet; systemctl is-enabled kubelet; "
                               "ls /etc/kubernetes /etc/provisioner/cluster.json 2>&1")
    assert out.split()[:2] == ["inactive", "disabled"] and "No such file" in out
    # kubectl on cp1: cordon, drain (PDB respected first, then --force), delete after the reset
    calls = [a for a in kubectl_calls(lab) if "w1" in a]
    verbs = [next(v for v in ("cordon", "drain", "delete") if v in a) for a in calls]
    assert verbs == ["cordon", "drain", "cordon", "drain", "delete"] or \
        verbs[-3:] == ["cordon", "drain", "delete"], calls
    drain = [a for a in calls if "drain" in a][-1]
    assert {"--ignore-daemonsets", "--delete-emptydir-data", "--force",
            "--disable-eviction"} <= set(drain)
    left = json.loads(sh(lab, "cp1", "cat /etc/standin/pods.json"))["w1"]
    assert [p["name"] for p in left] == ["kube-proxy-w1"]  # DaemonSet pods stay
    # the haproxy pair: valid config, backends are the control planes (w1 never was one)
    for lb in ("lb1", "lb2"):
        sh(lab, lb, "haproxy -c -f /etc/haproxy/haproxy.cfg")
        servers = sh(lab, lb, "grep -E '^ +server ' /etc/haproxy/haproxy.cfg")
        assert [line.split()[1] for line in servers.splitlines()] == ["cp1", "cp2", "cp3"]
        assert "w1" not in sh(lab, lb, "cat /etc/hosts")
    # the next cluster.up on the edited inventory has nothing to do; plan flags nothing
    assert work(actions.up(rest, bundle_dir=built)) == {}
    assert removal.strays(rest) == []


def test_remove_etcd_member_then_add_it_back(lab, built, tmp_path):
    rest = without(lab, tmp_path, "w1")
    old = members(lab)
    start = time.monotonic()
    did = work(removal.remove_node(rest, "cp3", bundle_dir=built))
    TIMES["control plane + etcd member"] = time.monotonic() - start
    assert {"drain", "etcd-servers", "etcd-leave", "reset-node", "delete-node"} <= set(did)
    assert set(members(lab)) == {"cp1", "cp2"}
    assert healthy(lab, "cp1") and healthy(lab, "cp2")
    want = "--etcd-servers=https://10.90.3.11:2379,https://10.90.3.12:2379"
    for cp in ("cp1", "cp2"):
        manifest = sh(lab, cp, "cat /etc/kubernetes/manifests/kube-apiserver.yaml")
        assert [line.strip("- ") for line in manifest.splitlines()
                if "--etcd-servers" in line] == [want.lstrip("-")]
    init = sh(lab, "cp1", "cat /etc/kubernetes/kubeadm-init.yaml")
    assert "10.90.3.12:2379" in init and "10.90.3.13:2379" not in init
    for lb in ("lb1", "lb2"):
        sh(lab, lb, "haproxy -c -f /etc/haproxy/haproxy.cfg")
        servers = sh(lab, lb, "grep -E '^ +server ' /etc/haproxy/haproxy.cfg")
        assert [line.split()[1] for line in servers.splitlines()] == ["cp1", "cp2"]
    out = lab.run("cp3", "systemctl is-active etcd; ls /var/lib/etcd/member 2>&1")[1]
    assert out.startswith("inactive") and "No such file" in out
    # a rerun has nothing left to do, nor has cluster.up on the edited inventory (2 etcd
    # members: validate warns, the user may add a replacement later)
    assert work(removal.remove_node(rest, "cp3", bundle_dir=built, dry_run=True)) == {}
    edited = without(lab, tmp_path, "w1", "cp3")
    assert any("odd number" in w for w in edited.warnings)
    assert work(actions.up(edited, bundle_dir=built, dry_run=True)) == {}

    # cp3 back through cluster.up: member add, started with initial-cluster-state existing
    planned = work(actions.up(rest, bundle_dir=built, dry_run=True))
    assert any("member add" in c for c in planned["etcd"]["cp3"]), planned
    assert set(planned["etcd-servers"]) == {"cp1", "cp2"}  # cp3 has no API server yet
    start = time.monotonic()
    added = work(actions.up(rest, bundle_dir=built))
    TIMES["cluster.up adding cp3 back"] = time.monotonic() - start
    # the running API servers that lacked cp3 got it (one at a time). cp3 too: the stand-in
    # kubeadm's join writes no --etcd-servers (it has no cluster to read the ClusterConfiguration
    # from; real kubeadm writes the list the control-plane phase just uploaded, all three)
    assert set(added["etcd-servers"]) == {"cp1", "cp2", "cp3"}
    assert "--etcd-servers" not in sh(lab, "cp3", "cat /var/log/standin/kubeadm.jsonl")
    want = "etcd-servers=https://10.90.3.11:2379,https://10.90.3.12:2379,https://10.90.3.13:2379"
    for cp in ("cp1", "cp2", "cp3"):
        manifest = sh(lab, cp, "cat /etc/kubernetes/manifests/kube-apiserver.yaml")
        assert [line.strip("- ") for line in manifest.splitlines()
                if "--etcd-servers" in line] == [want], cp
    now = members(lab)
    assert set(now) == {"cp1", "cp2", "cp3"} and now["cp3"] != old["cp3"]
    assert all(healthy(lab, n) for n in ("cp1", "cp2", "cp3"))
    assert "initial-cluster-state: existing" in sh(lab, "cp3", "cat /etc/etcd/etcd.conf.yml")
    assert work(actions.up(rest, bundle_dir=built)) == {}


def test_remove_the_first_control_plane(lab, built, tmp_path):
    """cp2 takes the first control plane's part: kubectl, kubeadm-init.yaml (uploaded to the
    cluster), the admin kubeconfig."""
    rest = without(lab, tmp_path, "w1")
    start = time.monotonic()
    did = work(removal.remove_node(rest, "cp1", bundle_dir=built))
    TIMES["first control plane + etcd member"] = time.monotonic() - start
    assert list(did["drain"]) == list(did["delete-node"]) == ["cp2"]
    assert list(did["control-plane (without cp1)"]) == ["cp2"]
    assert set(members(lab, via="cp2")) == {"cp2", "cp3"}
    assert healthy(lab, "cp2") and healthy(lab, "cp3")
    init = sh(lab, "cp2", "cat /etc/kubernetes/kubeadm-init.yaml")
    assert "10.90.3.12:2379" in init and "10.90.3.11:2379" not in init
    uploads = [e["argv"] for e in map(json.loads, sh(
        lab, "cp2", "cat /var/log/standin/kubeadm.jsonl").splitlines())
        if e["argv"][:3] == ["init", "phase", "upload-config"] and e.get("result") == "ok"]
    assert uploads, "cp2 never uploaded the cluster configuration"
    for lb in ("lb1", "lb2"):
        servers = sh(lab, lb, "grep -E '^ +server ' /etc/haproxy/haproxy.cfg")
        assert [line.split()[1] for line in servers.splitlines()] == ["cp2", "cp3"]
    assert lab.run("cp1", "systemctl is-active etcd kubelet")[1].split() == ["inactive"] * 2
    edited = without(lab, tmp_path, "w1", "cp1")
    assert work(actions.up(edited, bundle_dir=built, dry_run=True)) == {}
    print("\nremove-node wall time:", {k: f"{v:.1f} s" for k, v in TIMES.items()})
