"""The version rules of `cluster.upgrade` as data cases (provisioner/upgrade.py), and the
upgrade phases' place in the phase list."""

from __future__ import annotations

import pytest

from provisioner import phases as ph
from provisioner import upgrade as up
from provisioner.errors import UserError

N = up.NodeVersions


def cluster(api: str, kubelet: str, workers: str | None = None) -> list:
    nodes = [N("cp1", kubelet, api, True), N("cp2", kubelet, api, True)]
    return nodes + [N("w1", workers or kubelet)]


# (nodes, --to, expected fragment of a refusal or None when allowed)
CASES = [
    ("patch", cluster("v1.36.4", "v1.36.4"), "v1.36.9", None),
    ("next minor", cluster("v1.36.4", "v1.36.4"), "v1.37.1", None),
    ("skips a minor", cluster("v1.35.9", "v1.35.9"), "v1.37.1", "skips a minor"),
    ("downgrade patch", cluster("v1.36.4", "v1.36.4"), "v1.36.1", "downgrade"),
    ("downgrade minor", cluster("v1.37.1", "v1.37.1"), "v1.36.4", "downgrade"),
    ("resume: API servers done", cluster("v1.37.1", "v1.36.4"), "v1.37.1", None),
    ("resume: one worker left", cluster("v1.37.1", "v1.37.1", "v1.36.4"), "v1.37.1", None),
    ("half done, then a skip", cluster("v1.36.4", "v1.35.9"), "v1.37.1", "skips a minor"),
    ("half done, then back", cluster("v1.37.1", "v1.36.4"), "v1.36.4", "downgrade"),
    ("unsupported", cluster("v1.38.1", "v1.38.1"), "v1.39.0", "not supported"),
    ("a node without version", [N("cp1", None, "v1.36.4", True)], "v1.37.1", "no version"),
    ("API server down", [N("cp1", "v1.36.4", None, True)], "v1.37.1", "API server reports no"),
]


@pytest.mark.parametrize("nodes,to,refused", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_version_rules(nodes, to, refused):
    found = up.refusals(nodes, to)
    if refused is None:
        assert found == []
    else:
        assert found and any(refused in f for f in found), found


@pytest.mark.parametrize("to", ["1.37.1", "v1.37", "v1.37.1+k3s1", "latest"])
def test_malformed_kubeadm_versions_are_user_errors(to):
    with pytest.raises(UserError, match="not a kubeadm version"):
        up.refusals(cluster("v1.36.4", "v1.36.4"), to)


def test_k3s_versions():
    nodes = [N("s1", "v1.36.4+k3s1", None, True), N("a1", "v1.36.4+k3s1")]
    assert up.refusals(nodes, "v1.37.1+k3s1", "k3s") == []
    assert up.refusals(nodes, "v1.36.4+k3s2", "k3s") == []
    old = [N("s1", "v1.35.4+k3s1", None, True), N("a1", "v1.35.4+k3s1")]
    assert "skips a minor" in up.refusals(old, "v1.37.0+k3s1", "k3s")[0]
    with pytest.raises(UserError):
        up.refusals(nodes, "v1.37.1", "k3s")


SKEW = [
    ("all old", cluster("v1.36.4", "v1.36.4"), []),
    ("API servers first", cluster("v1.37.1", "v1.36.4"), []),
    ("kubelet before its API server", [N("cp1", "v1.37.1", "v1.36.4", True)], ["newer"]),
    ("kubelet newer than the oldest API server",
     [N("cp1", "v1.37.1", "v1.37.1", True), N("cp2", "v1.36.4", "v1.36.4", True)], ["newer"]),
    ("API servers two minors apart",
     [N("cp1", "v1.36.4", "v1.38.0", True), N("cp2", "v1.36.4", "v1.36.4", True)],
     ["one minor"]),
    ("kubelet four minors behind", [N("cp1", "v1.34.0", "v1.38.0", True)], ["more than 3"]),
    ("kubelet three minors behind", [N("cp1", "v1.35.0", "v1.38.0", True)], []),
]


@pytest.mark.parametrize("nodes,expected", [c[1:] for c in SKEW], ids=[c[0] for c in SKEW])
def test_skew_rules(nodes, expected):
    found = up.skew_problems(nodes)
    assert len(found) == len(expected)
    for f, e in zip(found, expected):
        assert e in f


def test_upgrade_phases_are_day_2_only():
    assert ph.UPGRADE_CONTROL_PLANE not in ph.ALL and ph.UPGRADE_NODES not in ph.ALL
    assert [p.playbook for p in up.UPGRADE] == ["05-images.yml", "93-upgrade-control-plane.yml",
                                                 "93-upgrade-nodes.yml"]


def test_batches_control_planes_one_at_a_time_then_workers_n_at_a_time():
    from provisioner import inventory as inv
    from tests.conftest import REPO

    c = inv.load(REPO / "tests/data/lab-upgrade.yml")
    names = [[n.name for n in b] for b in ph.UPGRADE_NODES.batches(c, c.kube_nodes, 2)]
    assert names == [["ucp1"], ["ucp2"], ["ucp3"], ["uw1", "uw2"]]
    names = [[n.name for n in b] for b in ph.UPGRADE_NODES.batches(c, c.kube_nodes, 1)]
    assert names[-2:] == [["uw1"], ["uw2"]]


def test_max_unavailable_below_one_is_refused():
    from provisioner import inventory as inv
    from tests.conftest import REPO

    with pytest.raises(UserError, match="max-unavailable"):
        up.upgrade(inv.load(REPO / "tests/data/lab-upgrade.yml"), "v1.36.4", max_unavailable=0)
