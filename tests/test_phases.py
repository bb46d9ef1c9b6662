"""The phase list decides from facts alone: which hosts have work, and what it is."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from provisioner import inventory, phases as ph

LAB = inventory.load("inventories/lab.yml")
K3S = inventory.load("inventories/k3s-ha.yml")


def converged_facts(cluster, items):
    """Facts of hosts on which every phase has finished."""
    facts = {}
    for n in cluster.nodes:
        files = {i.path: i.sha256 for per in items.get(n.name, {}).values() for i in per}
        for p in ph.UP:
            files[p.stamp_path] = hashlib.sha256(p.stamp(ctx_for(cluster, items, {}), n)).hexdigest()
            for m in p.markers:
                files[m] = "0" * 64
        facts[n.name] = SimpleNamespace(
            hostname=n.name, swap_mb=0, files=files,
            services={u: {"active": "active", "enabled": "enabled"} for u in ph.SERVICES},
            binaries={b: "v1" for b in ("kubeadm", "kubelet", "kubectl", "k3s")})
    return facts


def ctx_for(cluster, items, facts, bundle=object()):
    c = ph.Context(cluster, items, facts, bundle=bundle)
    c.local["kubeconfig_source"] = "0" * 64  # taken from the admin config the node has
    return c


def items_for(cluster):
    cfg = ph.Item("/etc/containerd/config.toml", b"version = 2\n", restart=("containerd",))
    return {n.name: {"runtime": [cfg]} for n in ph.runtime_nodes(cluster)}


def test_phase_order_is_the_documented_spine():
    assert [p.name for p in ph.UP] == [
        "prepare", "runtime", "pki", "etcd", "loadbalancer", "binaries", "control-plane",
        "join-control-plane", "join-workers", "cni", "addons", "kubeconfig"]
    playbooks = [p.playbook for p in ph.UP if p.playbook]
    assert playbooks == sorted(playbooks), "numbered playbooks follow the phase order"


def test_converged_hosts_have_no_work():
    items = items_for(LAB)
    ctx = ctx_for(LAB, items, converged_facts(LAB, items))
    assert {p.name: p.work(ctx) for p in ph.UP if p.work(ctx)} == {}


CASES = [
    # (what differs on cp2, phase, expected pending on cp2)
    ("file changed", "runtime", ["write /etc/containerd/config.toml (changed)"]),
    ("file missing", "runtime", ["write /etc/containerd/config.toml (new)"]),
    ("service stopped", "runtime", ["start containerd"]),
    ("service disabled", "runtime", ["enable containerd"]),
    ("stamp missing", "runtime",
     ["finish applying the files in place (an earlier run stopped here)"]),
    ("hostname", "prepare", ["set hostname cp2"]),
    ("swap", "prepare", ["turn swap off"]),
    ("not joined", "join-control-plane", ["kubeadm join"]),
    ("etcd down", "etcd", ["start etcd"]),
]


@pytest.mark.parametrize("change, phase, expected", CASES, ids=[c[0] for c in CASES])
def test_one_difference_gives_exactly_that_work(change, phase, expected):
    items = items_for(LAB)
    facts = converged_facts(LAB, items)
    f = facts["cp2"]
    path = "/etc/containerd/config.toml"
    stamp = ph.named("runtime").stamp_path
    {
        "file changed": lambda: f.files.__setitem__(path, "f" * 64),
        "file missing": lambda: f.files.__setitem__(path, None),
        "service stopped": lambda: f.services.__setitem__("containerd", {"active": "failed"}),
        "service disabled": lambda: f.services["containerd"].__setitem__("enabled", "disabled"),
        "stamp missing": lambda: f.files.__setitem__(stamp, None),
        "hostname": lambda: setattr(f, "hostname", "localhost"),
        "swap": lambda: setattr(f, "swap_mb", 1024),
        "not joined": lambda: f.files.__setitem__(ph.KUBELET_CONF, None),
        "etcd down": lambda: f.services.__setitem__("etcd", {"active": "inactive"}),
    }[change]()
    ctx = ctx_for(LAB, items, facts)
    work = {p.name: p.work(ctx) for p in ph.UP if p.work(ctx)}
    assert work == {phase: {"cp2": expected}}


def test_without_a_bundle_missing_binaries_are_work_and_present_ones_are_not():
    items = items_for(LAB)
    facts = converged_facts(LAB, items)
    facts["w1"].binaries["kubelet"] = None
    ctx = ctx_for(LAB, items, facts, bundle=None)
    assert ph.named("binaries").work(ctx) == {"w1": ["install kubelet from the bundle"]}


def test_hosts_per_phase_follow_the_topology():
    names = lambda f, c: [n.name for n in f(c)]  # noqa: E731
    assert names(ph.etcd_nodes, LAB) == ["cp1", "cp2", "cp3"]
    assert names(ph.lb_nodes, LAB) == ["lb1", "lb2"]
    assert names(ph.joining_control_planes, LAB) == ["cp2", "cp3"]
    assert names(ph.runtime_nodes, K3S) == []  # k3s brings its own containerd
    assert names(ph.etcd_nodes, K3S) == []  # embedded etcd
    assert names(ph.lb_nodes, K3S) == ["s1", "s2", "s3"]  # kube-vip on the servers
    assert ph.named("join-control-plane").serial and not ph.named("join-workers").serial


def test_a_new_admin_config_on_the_first_control_plane_is_copied_again():
    items = items_for(LAB)
    facts = converged_facts(LAB, items)
    facts["cp1"].files[ph.ADMIN_CONF] = "a" * 64  # e.g. the cluster was rebuilt
    work = {p.name: p.work(ctx_for(LAB, items, facts)) for p in ph.UP}
    assert {k: v for k, v in work.items() if v} == {
        "kubeconfig": {"cp1": ["copy the admin kubeconfig to the controller (0600)"]}}
