"""remove-node refusals and phases, decided from the model and probed facts alone (data cases:
each names a cluster, the host to remove, facts made unhealthy, and the refusal expected)."""

from __future__ import annotations

import dataclasses
import json
from importlib import import_module

import pytest

from provisioner import inventory, removal
from provisioner.phases import kube
from tests.test_phases import K3S, LAB, converged

HEALTH = import_module("provisioner.phases.03_etcd").HEALTH
SINGLE = inventory.load("inventories/single.yml")
STACKED = inventory.load("inventories/ha-kubevip.yml")


def one_etcd_member(c):
    """LAB with cp1 the only external etcd member."""
    nodes = tuple(dataclasses.replace(n, roles=tuple(r for r in n.roles if r != "etcd"))
                  if n.name in ("cp2", "cp3") else n for n in c.nodes)
    return dataclasses.replace(c, nodes=nodes)


CASES = [  # (id, cluster, host, [(host, failing probe command)], refusal or None)
    ("worker", LAB, "w1", [], None),
    ("etcd-member-all-healthy", LAB, "cp3", [], None),
    ("etcd-member-other-stopped", LAB, "cp3", [("cp2", HEALTH)],
     "etcd member cp2 is not healthy: after removing cp3 the 2 remaining member(s) need 2"),
    ("etcd-member-itself-stopped", LAB, "cp3", [("cp3", HEALTH)], None),  # replacing a dead one
    ("last-control-plane", SINGLE, SINGLE.control_planes[0].name, [],
     "is the last control plane"),
    ("first-control-plane", LAB, "cp1", [], None),  # cp2 becomes the first
    ("first-stacked-quorum", STACKED, STACKED.control_planes[0].name,
     [(STACKED.control_planes[1].name, kube.API)], "could lose quorum"),
    ("first-k3s-server", K3S, K3S.control_planes[0].name, [], None),  # s2 becomes the first
    ("first-k3s-server-quorum", K3S, K3S.control_planes[0].name,
     [(K3S.control_planes[2].name, kube.NODE)], "embedded etcd"),
    ("last-k3s-server", dataclasses.replace(K3S, nodes=tuple(
        n for n in K3S.nodes if n.name not in ("s2", "s3"))), "s1", [],
     "is the last control plane"),
    ("load-balancer", LAB, "lb1", [], "is a load balancer"),
    ("stacked-quorum", STACKED, STACKED.control_planes[2].name,
     [(STACKED.control_planes[1].name, kube.API)], "could lose quorum"),
    ("stacked-healthy", STACKED, STACKED.control_planes[2].name, [], None),
    ("k3s-server-quorum", K3S, K3S.control_planes[1].name,
     [(K3S.control_planes[2].name, kube.NODE)], "embedded etcd"),
    ("last-etcd-member", one_etcd_member(LAB), "cp1", [], "is the last etcd member"),
]


@pytest.mark.parametrize("cluster, host, failing, refusal", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_refusals(cluster, host, failing, refusal):
    ctx = converged(cluster)
    for name, command in failing:
        ctx.facts[name].commands[command] = {"rc": 1, "out": ""}
    found = removal.refusals(ctx, cluster.node(host))
    if refusal is None:
        assert found == []
    else:
        assert any(refusal in line for line in found), found


def test_unknown_host_is_a_user_error():
    with pytest.raises(removal.UserError, match="cp9 is not in"):
        removal.target_of(LAB, "cp9")


def test_phases_of_a_converged_cluster():
    """A worker: drain (its kubelet runs) and reset on it; /etc/hosts and node labels change on
    the others. An etcd member adds the API servers' endpoints and member remove."""
    ctx = converged(LAB)
    for n in LAB.nodes:
        ctx.facts[n.name].commands.update({
            "reset-leftovers": {"rc": 0, "out": "/etc/kubernetes\n"},
            "node-object-w1": {"rc": 0, "out": "node/w1"},
            "node-object-cp3": {"rc": 0, "out": "node/cp3"},
            "etcd-servers": {"rc": 0, "out": ",".join(LAB.etcd_endpoints)},
            "etcd-members": {"rc": 0, "out": json.dumps({"members": [
                {"name": m.name, "peerURLs": [f"https://{m.address}:2380"]}
                for m in LAB.etcd_members]})}})
    got = {p.title: sorted(w) for p in removal.removal_phases(LAB, LAB.node("w1"))
           if (w := p.work(ctx))}
    assert got == {"drain": ["cp1"], "reset-node": ["w1"], "delete-node": ["cp1"],
                   "prepare (without w1)": ["cp1", "cp2", "cp3", "lb1", "lb2"],
                   "node-meta (without w1)": ["cp1"]}
    got = {p.title: sorted(w) for p in removal.removal_phases(LAB, LAB.node("cp3"))
           if (w := p.work(ctx))}
    assert got["etcd-servers"] == ["cp1", "cp2"] and got["etcd-leave"] == ["cp1"]
    assert got["loadbalancer (without cp3)"] == ["lb1", "lb2"]
    assert got["etcd (without cp3)"] == ["cp1", "cp2"]
    for n in LAB.nodes:
        ctx.facts[n.name].commands["node-object-cp1"] = {"rc": 0, "out": "node/cp1"}
    for command in (kube.CLUSTER_INFO, kube.ADDONS):  # cluster-wide: cp2 sees them too
        ctx.facts["cp2"].commands[command] = {"rc": 0, "out": "found"}
    got = {p.title: w for p in removal.removal_phases(LAB, LAB.node("cp1"))
           if (w := p.work(ctx))}
    # cp2 takes the first control plane's part: kubectl runs there, it gets kubeadm-init.yaml
    # (and uploads it); the admin kubeconfig is then fetched from it (lab test)
    assert sorted(got["drain"]) == ["cp2"] and sorted(got["delete-node"]) == ["cp2"]
    assert got["control-plane (without cp1)"] == {
        "cp2": ["write /etc/kubernetes/kubeadm-init.yaml (new)"]}


def test_drain_stand_in_checks_what_kubectl_drain_checks(tmp_path, monkeypatch, capsys):
    """The kubectl stand-in's drain (tests/standins/tools/nodes.py): DaemonSet and emptyDir
    pods need their flags, a PodDisruptionBudget holds eviction until --timeout, --force
    --disable-eviction deletes past it, DaemonSet pods stay; the drain phase's probe reads the
    result."""
    import sys

    monkeypatch.syspath_prepend("tests/standins")
    monkeypatch.setenv("STANDIN_ROOT", str(tmp_path))
    sys.modules.pop("tools", None)
    from tools import Tool, kubectl, run, state

    monkeypatch.setattr(state, "node_view", lambda tool: {
        "node": "cp1", "control_plane": True, "api_up": True, "reachable": True,
        "registered": True, "labels": {}, "taints": [], "addons": False})
    (tmp_path / "etc/kubernetes").mkdir(parents=True)
    (tmp_path / "etc/kubernetes/admin.conf").write_text("{}")
    (tmp_path / "etc/standin").mkdir(parents=True)
    (tmp_path / "etc/standin/pods.json").write_text(json.dumps({"w1": [
        {"namespace": "kube-system", "name": "kp", "controller": "DaemonSet"},
        {"namespace": "default", "name": "db", "controller": "StatefulSet", "pdbBlocks": True},
        {"namespace": "default", "name": "web", "controller": "ReplicaSet", "emptyDir": True}]}))
    drain = import_module("provisioner.phases.31_drain")
    tool, k = Tool("kubectl", "v1.36.4"), ["--kubeconfig", "/etc/kubernetes/admin.conf"]

    def call(*args):
        capsys.readouterr()
        rc = run(tool, kubectl.main, k + list(args))
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, _, err = call("drain", "w1")
    assert rc == 1 and "--ignore-daemonsets" in err and "--delete-emptydir-data" in err
    rc, out, err = call("drain", "w1", "--ignore-daemonsets", "--delete-emptydir-data",
                        "--timeout=1s")
    assert rc == 1 and "disruption budget" in err and "global timeout reached" in err
    assert "pod/web evicted" in out
    assert call("get", "pods", "-A", "--field-selector", "spec.nodeName=w1", "-o",
                drain.OWNERS)[1].split() == ["kube-system/kp=DaemonSet", "default/db=StatefulSet"]
    rc, out, _ = call("drain", "w1", "--ignore-daemonsets", "--delete-emptydir-data",
                      "--timeout=1s", "--force", "--disable-eviction")
    assert rc == 0 and "pod/db deleted" in out
    assert call("get", "node", "w1", "-o", "jsonpath={.spec.unschedulable}")[1] == "true"
    assert call("get", "pods", "-A", "--field-selector", "spec.nodeName=w1", "-o",
                drain.OWNERS)[1].split() == ["kube-system/kp=DaemonSet"]
    assert call("delete", "node", "w1")[0] == 0
    assert call("get", "node", "w1", "-o", "name", "--ignore-not-found")[1] == ""
    sys.modules.pop("tools", None)


def test_removing_the_first_k3s_server_hands_its_part_to_the_next():
    """s2 becomes the first server: kubectl runs there, it gets the first server's config
    (cluster-init, no server URL), the admin kubeconfig comes from it."""
    import yaml

    ctx = converged(K3S)
    todo = {p.title: (p, w) for p in removal.removal_phases(K3S, K3S.node("s1"))
            if (w := p.work(ctx))}
    assert set(todo["drain"][1]) == {"s2"} and set(todo["delete-node"][1]) == {"s2"}
    assert set(todo["reset-node"][1]) == {"s1"}
    phase, work = todo["control-plane (without s1)"]
    assert work == {"s2": ["write /etc/rancher/k3s/config.yaml (changed)"]}
    (item,) = phase.files(ctx, K3S.node("s2"))
    config = yaml.safe_load(item.data)
    assert config["cluster-init"] is True and "server" not in config
    assert set(todo["kubeconfig (without s1)"][1]) == {"s2"}
