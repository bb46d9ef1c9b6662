"""Preflight checks as data: tests/data/preflight/*.yaml.

Each case names an inventory (`inventory_file`, relative to the repo, or inline `inventory`),
per-host fact overrides on top of a healthy baseline (`healthy` below; dicts are merged, other
values replaced; `null` drops the host from the probe), and the exact list of expected problems
({host, check, level (default error), message: a substring}).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from provisioner import inventory as inv
from provisioner import preflight
from provisioner.facts import LEFTOVERS, Facts

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted((ROOT / "tests/data/preflight").glob("*.yaml"))
CLOCK = 1700000000.0


def healthy(node, i: int) -> dict:
    """A host that passes every check: Debian 12, systemd, 2 CPUs, 4 GB, its own name and MAC."""
    return {
        "hostname": node.name, "os_id": "debian", "os_version": "12",
        "os_pretty": "Debian GNU/Linux 12 (bookworm)", "arch": "x86_64", "cpus": 2, "mem_mb": 4096,
        "swap_mb": 0, "kernel": "6.1.0-31-amd64", "init": "systemd",
        "interfaces": {"lo": {"mac": "00:00:00:00:00:00", "addresses": ["127.0.0.1/8", "::1/128"]},
                       "eth0": {"mac": f"52:54:00:00:00:{i + 1:02x}", "addresses": [f"{node.address}/24"]}},
        "listeners": [{"address": "0.0.0.0", "port": 22, "process": "sshd"}],
        "clock": CLOCK, "controller_clock": CLOCK, "files": {}, "services": {},
        "versions": {}, "kernel_features": {"br_netfilter": True, "overlay": True},
        "leftovers": {p: False for p in LEFTOVERS}, "marker": None,
    }


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "interfaces" else v
    return out


def load_case(path: Path, tmp_path: Path):
    case = yaml.safe_load(path.read_text())
    if "inventory" in case:
        file = tmp_path / "inventory.yml"
        file.write_text(case["inventory"])
    else:
        file = ROOT / case["inventory_file"]
    cluster = inv.load(file)
    overrides = case.get("facts") or {}
    assert set(overrides) <= {n.name for n in cluster.nodes}, "facts for a host not in the inventory"
    facts = {}
    for i, node in enumerate(cluster.nodes):
        if node.name in overrides and overrides[node.name] is None:
            continue
        facts[node.name] = Facts.from_dict(node.name, merge(healthy(node, i), overrides.get(node.name) or {}))
    return case, cluster, facts


def test_enough_cases():
    assert len(CASES) >= 12


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path, tmp_path):
    case, cluster, facts = load_case(path, tmp_path)
    problems = preflight.check(cluster, facts)
    got = sorted((p.host, p.check, p.level) for p in problems)
    want = sorted((e["host"], e["check"], e.get("level", "error")) for e in case["expect"])
    assert got == want, "\n".join(map(str, problems))
    for e in case["expect"]:
        if "message" in e:
            texts = [f"{p.message} ({p.fix})" for p in problems if (p.host, p.check) == (e["host"], e["check"])]
            assert any(e["message"] in t for t in texts), (e, texts)
    assert preflight.has_errors(problems) == any(lvl == "error" for *_, lvl in want)


def test_every_problem_has_a_fix(tmp_path):
    for path in CASES:
        _case, cluster, facts = load_case(path, tmp_path)
        for p in preflight.check(cluster, facts):
            assert p.fix or p.level == "info", p


def test_render_one_table_per_host(tmp_path):
    _case, cluster, facts = load_case(ROOT / "tests/data/preflight/05-memory-per-role.yaml", tmp_path)
    problems = preflight.check(cluster, facts)
    buf = io.StringIO()
    preflight.render(problems, facts, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    for host in ("cp1", "w1", "etcd1", "lb1"):
        assert f"{host} (Debian GNU/Linux 12" in text
    assert "cp2 (" not in text
    assert "4 problem(s) on 4 host(s)" in text


def test_ports_per_role(tmp_path):
    lab = inv.load(ROOT / "inventories/lab.yml")  # external etcd on the control planes, haproxy lbs
    assert preflight.ports_for(lab, lab.node("lb1")) == [6443]
    assert preflight.ports_for(lab, lab.node("cp1")) == [2379, 2380, 6443, 10250, 10257, 10259]
    assert preflight.ports_for(lab, lab.node("w1")) == [10250]
    single = inv.load(ROOT / "inventories/single.yml")  # stacked etcd
    assert 2379 in preflight.ports_for(single, single.node("cp1"))


def test_loopback_addresses_are_local_through_lo():
    f = Facts.from_dict("h1", {"interfaces": {"lo": {"mac": "00:00:00:00:00:00", "addresses": ["127.0.0.1/8"]},
                                              "eth0": {"mac": "52:54:00:00:00:01", "addresses": ["10.0.0.5/24"]}}})
    assert preflight._is_local("127.0.0.11", f)
    assert preflight._is_local("10.0.0.5", f)
    assert not preflight._is_local("10.0.0.6", f)  # same subnet is not enough off lo
    assert preflight._is_local("node1.example.org", f)  # names are not compared


POLICY = """containerd:
  Installed: (none)
  Candidate: 1.4.13~ds1-1~deb11u4
  Version table:
     1.4.13~ds1-1~deb11u4 500
etcd-server:
  Installed: 3.3.25+dfsg-7
  Candidate: 3.3.25+dfsg-7
runc:
  Installed: (none)
  Candidate: (none)
"""


@pytest.mark.parametrize("text, minimum, expected", [
    (POLICY, {"containerd": "1.6"}, ["containerd 1.4.13~ds1-1~deb11u4"]),  # Debian 11
    (POLICY, {"etcd-server": "3.4"}, ["etcd-server 3.3.25+dfsg-7"]),  # Debian 11, Ubuntu 22.04
    (POLICY, {"runc": "1.1"}, []),  # lists not read yet: the install itself will say
    ("containerd:\n  Installed: 1.6.20~ds1-1+b1\n  Candidate: 1.6.20~ds1-1+b1\n",
     {"containerd": "1.6"}, []),  # Debian 12
    ("containerd:\n  Installed: (none)\n  Candidate: 1.7.24~ds1-6+b3\n", {"containerd": "1.6"}, []),
    ("etcd-server:\n  Installed: (none)\n  Candidate: 1:3.5.16-4\n", {"etcd-server": "3.4"}, []),
])
def test_packages_are_checked_by_version_not_by_os_name(text, minimum, expected):
    from types import SimpleNamespace

    from provisioner.model import Node

    f = SimpleNamespace(commands={preflight.POLICY: {"rc": 0, "out": text}})
    problems = preflight.package_problems(Node("n1", "10.0.0.1", ("workers",)), f, minimum)
    assert [p.message.split(" from")[0] for p in problems] == expected
    assert all(p.level == "error" and ("containerd_source: bundle" in p.fix
                                       if p.message.startswith("containerd ")
                                       else "Debian 12" in p.fix) for p in problems)


def test_an_acknowledged_cgroup_v1_is_shown_as_a_warning_and_passes(tmp_path):
    _case, cluster, facts = load_case(ROOT / "tests/data/preflight/19-cgroup-v1-acknowledged.yaml",
                                      tmp_path)
    problems = preflight.check(cluster, facts)
    buf = io.StringIO()
    preflight.render(problems, facts, Console(file=buf, width=300, color_system=None))
    text = buf.getvalue()
    assert "warning" in text and "allow_cgroup_v1" in text
    assert "3 host(s) ready (2 warning(s) above)" in text
    assert preflight.report(problems).splitlines()[0].startswith("warning: cp1: cgroup:")
