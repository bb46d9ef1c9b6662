"""`invoke cluster.import --kubeasz HOSTS -o FILE`: kubeasz hosts files (written here in
kubeasz's documented format, tests/data/kubeasz/*.hosts) convert into inventories that validate,
with the same hosts per role, and every kubeasz variable either converted or kept as a comment.
Bad files (tests/data/kubeasz/bad/) are refused with FILE:LINE."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner import ini, inventory, kubeasz
from provisioner.errors import InvalidInventory

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests/data/kubeasz"
FILES = sorted(DATA.glob("*.hosts"))
VALID = [p for p in FILES if p.stem != "multi-master-kube-lb"]
BIN = Path(sys.executable).parent
LINE = re.compile(r"^[^:]+:\d+: \S+: .+")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def kubeasz_roles(path: Path) -> dict[str, set[str]]:
    """Hosts per kubeasz role, read straight from the file (not through the converter)."""
    groups = ini.parse(path.read_text())
    out: dict[str, set[str]] = {}
    for name, role in kubeasz.GROUPS.items():
        if role and name in groups:
            out.setdefault(role, set()).update(h.name for h in groups[name].hosts)
    return {k: v for k, v in out.items() if v}


def convert_and_load(path: Path, tmp_path: Path):
    result = kubeasz.write(str(path.relative_to(ROOT)), str(tmp_path / "inv.yml"))
    return result, inventory.load(tmp_path / "inv.yml")


def test_at_least_four_shapes():
    assert len(VALID) >= 4
    text = {p.stem: p.read_text() for p in FILES}
    assert "[ex_lb]\n192" in text["multi-node-ex-lb"]
    assert "[chrony]\n192" in text["chrony-harbor"] and "[harbor]\n192" in text["chrony-harbor"]


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_converts_validates_and_keeps_the_roles(path, tmp_path):
    result, cluster = convert_and_load(path, tmp_path)
    roles = kubeasz_roles(path)
    for role, hosts in roles.items():
        nodes = cluster.with_role(role)
        assert len(nodes) == len(hosts), role
        assert {n.address for n in nodes} == hosts, role  # kubeasz names hosts by address
    assert sum(1 for r in ("control_plane", "workers", "etcd", "loadbalancers")
               if cluster.with_role(r)) == len(roles)
    assert cluster.distribution == "kubeadm"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_no_kubeasz_variable_is_dropped(path, tmp_path):
    """Every variable of the hosts file is in the new inventory: converted or as a comment."""
    kubeasz.write(str(path), str(tmp_path / "inv.yml"))
    out = (tmp_path / "inv.yml").read_text()
    converted = kubeasz.VARS
    for g in ini.parse(path.read_text()).values():
        keys = set(g.vars) | {k for h in g.hosts for k in h.vars}
        for key in keys:
            if key in ("k8s_nodename", "LB_ROLE", "EX_APISERVER_VIP"):
                continue  # turned into node names, keepalived priorities and api_vip
            assert re.search(rf"(^|\s|#)({re.escape(key)}=|{converted.get(key, key)}:)", out,
                             re.M), f"{key} of [{g.name}] is not in:\n{out}"


def test_settings_and_names(tmp_path):
    _, c = convert_and_load(DATA / "extra-vars.hosts", tmp_path)
    assert c.cluster_name == "prod-a" and c.kubernetes_version == "v1.37.1"
    assert (c.pod_cidr, c.service_cidr, c.cluster_domain) == ("172.20.0.0/16", "10.68.0.0/16",
                                                              "corp.local")
    assert (c.ha_mode, c.api_vip, c.vip_interface, c.cni) == ("haproxy", "10.20.0.100", "ens3",
                                                              "flannel")
    assert [n.name for n in c.control_planes] == ["cp-a", "cp-b", "cp-c"]
    assert [n.name for n in c.kube_workers] == ["node-a", "node-b"]  # Node_A as kubeasz does
    assert c.node("node-b").ssh_port == 2222 and c.node("cp-a").ssh_user == "debian"
    assert [n.keepalived_priority for n in c.loadbalancers] == [150, 100, 90]
    text = (tmp_path / "inv.yml").read_text()
    assert "CLUSTER_NETWORK=\"cilium\" (line 38): cilium is not supported here" in text
    _, c = convert_and_load(DATA / "chrony-harbor.hosts", tmp_path / "b")
    assert c.cluster_domain == "cluster.local"  # kubeasz's trailing dot dropped
    assert c.cni == "flannel" and len(c.nodes) == 4  # the harbor host is not a node
    assert 'CLUSTER_NETWORK="calico" (line 31): calico is not supported here' in \
        (tmp_path / "b/inv.yml").read_text()
    assert "#   192.168.122.188 (line 20) HARBOR_DOMAIN=" in (tmp_path / "b/inv.yml").read_text()


def test_without_ex_lb_several_masters_use_local_proxies(tmp_path):
    """kubeasz's kube-lb is ha_mode local: a proxy on every node to every API server."""
    kubeasz.write(str(DATA / "multi-master-kube-lb.hosts"), str(tmp_path / "inv.yml"))
    assert "      ha_mode: local  # kubeasz without [ex_lb]" in (tmp_path / "inv.yml").read_text()
    c = inventory.load(tmp_path / "inv.yml")
    assert c.ha_mode == "local" and len(c.control_planes) == 3
    assert set(c.lb_nodes) == set(c.kube_nodes)


def test_cluster_name_from_kubeasz_folder(tmp_path):
    folder = tmp_path / "etc/kubeasz/clusters/Edge_1"
    folder.mkdir(parents=True)
    (folder / "hosts").write_text((DATA / "allinone.hosts").read_text())
    kubeasz.write(str(folder / "hosts"), str(tmp_path / "inv.yml"))
    assert inventory.load(tmp_path / "inv.yml").cluster_name == "edge-1"


BAD = {
    "unknown-group": ":5: kube_workers: [kube_workers]: not a kubeasz group",
    "malformed-section": ":5: [kube_node: not a valid section header",
    "malformed-host-line": ":4: k8s_nodename: expected key=value",
    "same-node-name": ":5: 192.168.1.2: node name a is also the name of the host on line 2",
    "not-an-address": ":2: node1: node1 is not an IP address and has no ansible_host",
    "no-master": ":1: kube_master: no host in [kube_master]",
    "two-vips": ":7: EX_APISERVER_VIP: the [ex_lb] hosts name different VIPs",
    "two-names": ":6: k8s_nodename: 192.168.1.1 has k8s_nodename=\"b\" here and \"a\" on line 4",
    "bad-port": ":6: SECURE_PORT: \"https\" is not a port number",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_hosts_file(name, tmp_path):
    path = f"tests/data/kubeasz/bad/{name}.hosts"
    with pytest.raises(InvalidInventory) as e:
        kubeasz.write(path, str(tmp_path / "inv.yml"))
    lines = [str(p) for p in e.value.problems]
    assert all(LINE.match(ln) for ln in lines), lines
    assert any(ln.startswith(path + BAD[name]) for ln in lines), lines
    assert not (tmp_path / "inv.yml").exists()


def test_bad_files_cover_every_case():
    assert sorted(p.stem for p in (DATA / "bad").glob("*.hosts")) == sorted(BAD)


def run_import(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "invoke"), "cluster.import", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli(tmp_path):
    out = tmp_path / "inv.yml"
    r = run_import("--kubeasz", "tests/data/kubeasz/multi-node-ex-lb.hosts", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "3 control_plane, 2 workers, 3 etcd, 2 loadbalancers" in r.stdout
    assert f"{out}: valid: 7 host(s)" in r.stdout
    before = out.read_bytes()
    r = run_import("--kubeasz", "tests/data/kubeasz/allinone.hosts", "-o", str(out))
    assert r.returncode == 2 and "already exists" in r.stderr and "--force" in r.stderr
    assert out.read_bytes() == before  # not overwritten
    r = run_import("--kubeasz", "tests/data/kubeasz/allinone.hosts", "-o", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() != before
    r = run_import("--kubeasz", "tests/data/kubeasz/no-such-file", "-o", str(tmp_path / "x.yml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "tests/data/kubeasz/no-such-file:0: file: cannot read" in r.stderr
