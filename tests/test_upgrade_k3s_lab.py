"""`cluster.upgrade` of k3s on booted lab nodes (tests/data/lab-upgrade-k3s.yml: 3 k3s servers
with embedded etcd behind kube-vip, 2 agents), from v1.35.4+k3s1 to v1.36.4+k3s1.

k3s is the test-only stand-in: each start records the version it runs, and a node reports (k3s
kubectl get node) the version of the k3s that last started there, not of the binary on disk;
drain and uncordon are the kubectl stand-in's. So this proves the order (servers one at a time,
then agents; per node drain → new binary → restart → uncordon), that no agent ran the new
version before every server did, the refusals and the no-op rerun, not a working k3s upgrade.
"""

from __future__ import annotations

import json

import pytest

from provisioner import actions, upgrade as upgrades
from provisioner.errors import UserError
from tests.conftest import REPO, booted_lab

pytestmark = pytest.mark.lab

INVENTORY = REPO / "tests/data/lab-upgrade-k3s.yml"
OLD, NEW = "v1.35.4+k3s1", "v1.36.4+k3s1"
SERVERS, AGENTS = ("ks1", "ks2", "ks3"), ("ka1", "ka2")
FIRST = SERVERS[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with booted_lab(INVENTORY, tmp_path_factory.mktemp("upgrade-k3s-state")) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def bundles(lab, tmp_path_factory):
    """Two stand-in bundles in one folder: the current version and the target."""
    from tests.standins import make_standin_bundle

    folder = tmp_path_factory.mktemp("bundles")
    make_standin_bundle(folder, lab.cluster)
    make_standin_bundle(folder, upgrades.target_cluster(lab.cluster, NEW))
    return folder


def log(lab, node, tool):
    _, out, _ = lab.run(node, f"cat /var/log/standin/{tool}.jsonl 2>/dev/null")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def kubectl_calls(lab, verb):
    """(node, time) of each successful `k3s kubectl VERB NODE` on the first server."""
    out = []
    for e in log(lab, FIRST, "kubectl"):
        words = [a for a in e["argv"] if not a.startswith("--kubeconfig")
                 and not a.endswith("k3s.yaml")]
        if words[:1] == [verb] and e["result"] == "ok":
            out.append((words[1], e["time"]))
    return out


def starts(lab, node):
    return [e for e in log(lab, node, "k3s") if e["result"] == "running"]


def test_k3s_upgrade_servers_one_at_a_time_then_agents(lab, bundles):
    cluster = lab.cluster
    actions.up(cluster, bundle_dir=str(bundles))
    binary = {n: lab.run(n, "sha256sum /usr/local/bin/k3s")[1] for n in SERVERS + AGENTS}

    with pytest.raises(UserError, match="skips a minor"):
        upgrades.upgrade(cluster, "v1.37.0+k3s1", bundle_dir=str(bundles))
    with pytest.raises(UserError, match="downgrade"):
        upgrades.upgrade(cluster, "v1.35.1+k3s1", bundle_dir=str(bundles))
    assert {n: lab.run(n, "sha256sum /usr/local/bin/k3s")[1] for n in binary} == binary
    assert all(len(starts(lab, n)) == 1 for n in binary)  # nothing restarted
    assert kubectl_calls(lab, "drain") == []

    planned = {p.title: w for p, w in
               upgrades.upgrade(cluster, NEW, bundle_dir=str(bundles), dry_run=True).done if w}
    assert set(planned) == {"upgrade-nodes"}  # k3s: no separate control plane step
    assert set(planned["upgrade-nodes"]) == set(SERVERS + AGENTS)

    result = upgrades.upgrade(cluster, NEW, bundle_dir=str(bundles))
    assert set(dict((p.title, w) for p, w in result.done)["upgrade-nodes"]) == set(binary)
    drains, uncordons = dict(kubectl_calls(lab, "drain")), dict(kubectl_calls(lab, "uncordon"))
    restart = {}
    for n in SERVERS + AGENTS:
        new = [e for e in starts(lab, n) if e["version"] == NEW]
        assert len(new) == 1 and all(e["version"] == OLD for e in starts(lab, n)[:-1]), n
        restart[n] = new[0]["time"]
        replaced = float(lab.run(n, "stat -c %Z /usr/local/bin/k3s")[1])
        # per node: drain -> new binary -> restart -> uncordon
        assert drains[n] < restart[n] < uncordons[n], n
        assert int(drains[n]) <= replaced <= restart[n], n
    # servers one at a time (each back before the next is drained), then the agents: no agent
    # ever ran newer than a server
    order = [restart[n] for n in SERVERS + AGENTS]
    assert order == sorted(order)
    assert uncordons["ks1"] < drains["ks2"] and uncordons["ks2"] < drains["ks3"]
    assert uncordons["ks3"] < min(drains[a] for a in AGENTS)
    assert "set `kubernetes_version: v1.36.4+k3s1`" in upgrades.summary(cluster, result)

    again = upgrades.upgrade(cluster, NEW, bundle_dir=str(bundles), dry_run=True)
    assert {p.title: w for p, w in again.done if w} == {}
    assert {v.kubelet for v in again.before} == {NEW}
    with pytest.raises(UserError, match="set kubernetes_version: v1.36.4"):
        actions.up(cluster, bundle_dir=str(bundles))
    target = upgrades.target_cluster(cluster, NEW)
    assert {p.title: w for p, w in actions.up(target, bundle_dir=str(bundles)) if w
            and p.title != "binaries"} == {}
    assert {p.title: w for p, w in actions.up(target, bundle_dir=str(bundles)) if w} == {}
