"""Ansible inventory parity beyond one YAML file: nested and extra groups, group vars,
group_vars/ and host_vars/ beside the inventory, INI inventories — and problems in any of them
named at the file and line that set the value.

tests/data/ansible/<case>/ are good inventories (test_inventory.py also compares each with
`ansible-inventory --list`); tests/data/ansible-bad/<case>/ hold one mistake each, with
`# expect: FILE:LINE: key: message` (FILE relative to the case folder) in the inventory file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provisioner import inventory
from provisioner.errors import InvalidInventory

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests/data/ansible"
BAD = sorted((ROOT / "tests/data/ansible-bad").iterdir())
LINE = re.compile(r"^[^:]+:\d+: \S+: .+")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def inventory_file(case: Path) -> Path:
    (path,) = [p for p in case.iterdir() if p.name in ("inventory.yml", "hosts")]
    return path


@pytest.mark.parametrize("case", BAD, ids=lambda p: p.name)
def test_bad_case(case):
    path = inventory_file(case)
    expected = [ln.split("# expect:", 1)[1].strip() for ln in path.read_text().splitlines()
                if ln.startswith("# expect:")]
    assert expected
    with pytest.raises(InvalidInventory) as e:
        inventory.load(path.relative_to(ROOT))
    lines = [str(p) for p in e.value.problems]
    assert all(LINE.match(ln) for ln in lines), lines
    prefix = str(case.relative_to(ROOT)) + "/"
    for want in expected:
        assert any(ln.startswith(prefix + want) for ln in lines), f"{want!r} not in:\n" + \
            "\n".join(lines)


def test_precedence_as_ansible_merges():
    """Each key wins at the highest level that sets it (see the inventory's comment)."""
    c = inventory.load("tests/data/ansible/precedence/inventory.yml")
    cp1, w1, w2 = c.node("cp1"), c.node("w1"), c.node("w2")
    assert cp1.ssh_user == "L5"  # group_vars/k8s_cluster/20-rest.yml; control_plane sets none
    assert w1.ssh_user == "L7"  # the host's own, over group_vars/workers.yml
    assert w2.ssh_user == "L6"  # group_vars/workers.yml over group_vars/k8s_cluster
    assert w2.ssh_port == 2202  # the parent group's vars: nothing above sets it
    assert w1.labels == {"level": "L5"}  # group_vars/ folder: files in name order
    assert w1.taints == ("level=L4:NoSchedule",)  # group_vars/all beats every inventory group
    assert w2.ssh_key.endswith("keys/zone-b")  # groups of one depth: in name order
    hv = inventory.variables("tests/data/ansible/precedence/inventory.yml")
    assert hv["w1"]["ansible_python_interpreter"] == "/usr/bin/python3-L8"  # host_vars/w1.yml
    assert hv["w2"]["ansible_connection"] == "L3"  # child group over parent group
    assert hv["cp1"]["ansible_connection"] == "L2"


def test_values_point_at_the_file_that_set_them():
    where = {}
    inventory.load("tests/data/ansible/precedence/inventory.yml",
                   check=lambda c, w: where.setdefault("w", w) and [])
    w = where["w"]
    assert w.host_loc("w1", "ansible_python_interpreter") == (
        "tests/data/ansible/precedence/host_vars/w1.yml", "ansible_python_interpreter", 1)
    assert w.host_loc("cp1", "node_labels") == (
        "tests/data/ansible/precedence/group_vars/k8s_cluster/20-rest.yml", "node_labels", 4)
    assert w.host_loc("w1", "ansible_user")[1:] == (
        "all.children.k8s_cluster.children.workers.hosts.w1.ansible_user", 43)
    assert w.setting_loc("cluster_name")[2] == 11


def test_nested_groups_and_group_vars_folder():
    c = inventory.load("tests/data/ansible/nested-yaml/inventory.yml")
    assert (c.cluster_name, c.ha_mode, c.api_vip) == ("nested", "kube-vip", "10.10.0.100")
    assert [n.name for n in c.control_planes] == ["cp1", "cp2", "cp3"]
    assert c.node("w2").labels == {"accelerator": "gpu"}
    assert c.node("w2").taints == ("gpu=true:NoSchedule",)
    assert c.node("w1").labels == {}


def test_ini_inventory():
    c = inventory.load("tests/data/ansible/ini/hosts")
    assert c.cluster_name == "ini" and c.pod_cidr == "10.32.0.0/16"
    assert [n.name for n in c.kube_workers] == ["w1", "w2", "w3"]  # w[1:2] and w3:2222
    w3 = c.node("w3")
    assert (w3.ssh_port, w3.ssh_user, w3.taints) == (2222, "debian",
                                                      ("dedicated=db:NoSchedule",))
    assert c.node("w1").labels == {"tier": "app"} and c.node("w2").address == "192.168.56.22"
    assert c.node("cp1").ssh_user == "root"


@pytest.mark.parametrize("text, want", [
    ("[workers]\nw[3:1]\n", ":2: w[3:1]: an empty host range"),
    ("[workers]\nw[01:9]\n", ":2: w[01:9]: a zero-padded host range"),
    ("[workers:foo]\n", ":1: [workers:foo]: unknown section type 'foo'"),
    ("[work ers]\n", ":1: [work: not a valid section header"),
    ("[workers]\nw1 x='a\n", ":2: w1: cannot read this host line"),
    ("[workers:vars]\nx\n[workers]\n", ":2: x: expected key=value in a :vars section"),
    ("[workers:vars]\nx=1\n", ":2: [workers:vars]: vars for the group 'workers'"),
    ("[workers]\nw1:\n", ":2: w1:: a host name ending in ':'"),
])
def test_ini_errors(tmp_path, text, want):
    f = tmp_path / "inv.ini"
    f.write_text(text)
    with pytest.raises(InvalidInventory) as e:
        inventory.load(f)
    lines = [str(p) for p in e.value.problems]
    assert all(LINE.match(ln) for ln in lines), lines
    assert any(ln.startswith(f"{f}{want}") for ln in lines), lines


def test_ini_values_as_ansible_reads_them():
    from provisioner import ini

    assert ini.value("6443") == 6443 and ini.value('"6443"') == "6443"
    assert ini.value("yes") == "yes" and ini.value("True") is True
    assert ini.value("{'a': (1, 2)}") == {"a": [1, 2]}
    assert ini.value("cluster.local.") == "cluster.local." and ini.value("") == ""
    assert ini.expand("n[01:03]", 1) == ["n01", "n02", "n03"]
    assert ini.expand("n[a:c]x[1:2]", 1) == ["nax1", "nax2", "nbx1", "nbx2", "ncx1", "ncx2"]
