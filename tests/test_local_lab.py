"""HA without a VIP (ha_mode local) on booted lab nodes (tests/data/lab-local.yml: 3 kubeadm
control planes with stacked etcd, 1 worker, bridge k8slab2).

Real here: every node's haproxy (its rendered config, `haproxy -c`, the socket it listens on,
the backends it reports through its stats socket), host preparation, containerd. The kube
binaries are the test-only stand-ins: they check the kubeadm configs and record the calls, no
API server runs, so the proxies' backends are reported down — these tests prove where every
node's proxy listens and forwards, not a working Kubernetes cluster.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from provisioner import actions, paths, removal
from provisioner.model import LOCAL_PROXY_PORT
from tests.conftest import REPO, booted_lab, lab_cluster

pytestmark = pytest.mark.lab
INVENTORY = REPO / "tests/data/lab-local.yml"
CONTROL_PLANES = {"lcp1": "10.90.2.11", "lcp2": "10.90.2.12", "lcp3": "10.90.2.13"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with booted_lab(INVENTORY, tmp_path_factory.mktemp("local-state")) as booted:
        yield booted


@pytest.fixture(scope="module")
def built(lab, tmp_path_factory):
    from tests.standins import make_standin_bundle

    bundle = str(make_standin_bundle(tmp_path_factory.mktemp("bundle"), lab.cluster))
    actions.up(lab.cluster, bundle_dir=bundle)
    return bundle


def sh(lab, node, cmd):
    rc, out, err = lab.run(node, cmd)
    assert rc == 0, f"{node}: {cmd}: {err}"
    return out


def work(result):
    return {p.title: w for p, w in result if w}


def backends(lab, node) -> dict[str, str]:
    """name -> address of the API backends, as the running haproxy reports them."""
    out = sh(lab, node, "python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); "
             f"s.connect('{paths.HAPROXY_STATS_SOCKET}'); s.sendall(b'show servers state "
             "kube-apiserver\\n'); print(s.makefile().read())\"")
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
    return {row[3]: row[4] for row in rows}


def test_every_node_proxies_to_every_api_server(lab, built):
    assert work(actions.up(lab.cluster, bundle_dir=built, dry_run=True)) == {}
    for node in ("lcp1", "lcp2", "lcp3", "lw1"):
        sh(lab, node, "haproxy -c -f /etc/haproxy/haproxy.cfg")
        listening = sh(lab, node, f"ss -ltnH 'sport = :{LOCAL_PROXY_PORT}'").split()
        assert f"127.0.0.1:{LOCAL_PROXY_PORT}" in listening, (node, listening)
        assert backends(lab, node) == CONTROL_PLANES, node
    endpoint = f"127.0.0.1:{LOCAL_PROXY_PORT}"
    init = yaml.safe_load_all(sh(lab, "lcp1", "cat /etc/kubernetes/kubeadm-init.yaml"))
    assert {d["kind"]: d for d in init}["ClusterConfiguration"]["controlPlaneEndpoint"] == endpoint
    for node in ("lcp2", "lcp3", "lw1"):
        join = yaml.safe_load(sh(lab, node, "cat /etc/kubernetes/kubeadm-join.yaml"))
        assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == endpoint


def test_removing_a_control_plane_updates_every_proxy(lab, built, tmp_path):
    removal.remove_node(lab.cluster, "lcp3", bundle_dir=built)
    left = {k: v for k, v in CONTROL_PLANES.items() if k != "lcp3"}
    for node in ("lcp1", "lcp2", "lw1"):
        assert backends(lab, node) == left, node
    assert lab.run("lcp3", "systemctl is-active haproxy kubelet")[1].split() == ["inactive"] * 2
    # the edited inventory (2 stacked etcd members: a warning) has nothing left to do
    data = copy.deepcopy(yaml.safe_load(INVENTORY.read_text()))
    data["all"]["vars"]["ansible_ssh_private_key_file"] = lab.cluster.nodes[0].ssh_key
    del data["all"]["children"]["control_plane"]["hosts"]["lcp3"]
    (tmp_path / "edited.yml").write_text(yaml.safe_dump(data))
    edited = lab_cluster(tmp_path / "edited.yml", lab.cluster.state_dir)
    assert any("even" in w for w in edited.warnings)
    assert work(actions.up(edited, bundle_dir=built, dry_run=True)) == {}
