"""facts.probe against real sshd hosts on loopback: they are this machine, so compare with it."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from provisioner import facts as fx
from provisioner import inventory as inv
from provisioner import preflight
from provisioner.model import Node
from provisioner.ssh import Pool
from tests.sshd import sshd_hosts  # noqa: F401 (fixture)


def nodes_of(hosts) -> list[Node]:
    return [Node(h.name, h.address, ("workers",), ssh_port=h.port, ssh_key=h.key_file) for h in hosts]


def local_os() -> dict:
    d = dict(line.split("=", 1) for line in open("/etc/os-release").read().splitlines() if "=" in line)
    return {k: v.strip('"') for k, v in d.items()}


@pytest.fixture(scope="module")
def pool(sshd_hosts, tmp_path_factory):
    known = sshd_hosts.write_known_hosts(tmp_path_factory.mktemp("kh") / "known_hosts")
    dead = Node("dead", "127.0.0.99", ("workers",), ssh_port=sshd_hosts[0].port, ssh_key=sshd_hosts[0].key_file)
    with Pool(nodes_of(sshd_hosts) + [dead], known, connect_timeout=3) as p:
        yield p


def test_probe_matches_this_machine(pool, sshd_hosts, tmp_path):
    managed = tmp_path / "managed.conf"
    managed.write_bytes(b"managed by the provisioner\n")
    paths = {"h1": [str(managed), str(tmp_path / "missing.conf")], "h2": [str(managed)]}
    facts = fx.probe(pool, paths)
    assert set(facts) == {"h1", "h2", "h3", "dead"}
    osr = local_os()
    for h in sshd_hosts:
        f = facts[h.name]
        assert f.reachable and f.error is None
        assert f.hostname == socket.gethostname()
        assert (f.os_id, f.os_version) == (osr["ID"], osr.get("VERSION_ID", ""))
        assert f.arch == os.uname().machine and f.kernel == os.uname().release
        assert f.cpus == len(os.sched_getaffinity(0))
        assert abs(f.mem_mb - os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20) <= 1
        assert f.init == open("/proc/1/comm").read().strip()
        assert abs(f.skew) < 1.0
        assert "127.0.0.1/8" in f.interfaces["lo"]["addresses"]
        # every test server is listening, held by sshd
        for other in sshd_hosts:
            assert {"address": other.address, "port": other.port, "process": "sshd"} in f.listeners
        assert set(f.versions) == set(fx.BINARIES)
        assert set(f.leftovers) == set(fx.LEFTOVERS)
        assert set(f.kernel_features) == {"br_netfilter", "overlay"}
    want = hashlib.sha256(managed.read_bytes()).hexdigest()
    assert facts["h1"].files == {str(managed): want, str(tmp_path / "missing.conf"): None}
    assert facts["h2"].files == {str(managed): want}
    assert facts["h3"].files == {}
    assert facts["h1"].swap_mb == sum(int(l.split()[2]) for l in open("/proc/swaps").read().splitlines()[1:]) // 1024


def test_one_round_trip_per_host(pool, monkeypatch):
    calls = []
    real = pool.run_one
    monkeypatch.setattr(pool, "run_one", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    start = time.monotonic()
    facts = fx.probe(pool, hosts=["h1", "h2", "h3"])
    assert sorted(calls) == ["h1", "h2", "h3"]
    assert all(f.reachable for f in facts.values())
    print(f"probe of 3 hosts: {time.monotonic() - start:.2f} s")


def test_unreachable_host_is_a_fact_not_an_exception(pool):
    f = fx.probe(pool, hosts=["dead"])["dead"]
    assert not f.reachable and f.error.startswith("dead: ") and "127.0.0.99" in f.error


def test_preflight_of_the_loopback_hosts(pool, sshd_hosts, tmp_path):
    """End to end: real facts into preflight. The hosts are one machine: same hostname and MACs."""
    hosts = "\n".join(f"        {h.name}: {{ansible_host: {h.address}, ansible_port: {h.port}}}" for h in sshd_hosts)
    (tmp_path / "inv.yml").write_text(f"""all:
  vars:
    cluster_name: loop
    kubernetes_version: v1.32.4
    ansible_user: root
    ansible_ssh_private_key_file: {sshd_hosts[0].key_file}
  children:
    control_plane:
      hosts:
{hosts.splitlines()[0]}
    workers:
      hosts:
""" + "\n".join(hosts.splitlines()[1:]) + "\n")
    # the inventory validator refuses loopback addresses (right for real clusters): skip it here
    cluster = inv.load(tmp_path / "inv.yml", check=lambda cluster, where: [])
    facts = fx.probe(pool, hosts=[h.name for h in sshd_hosts])
    problems = preflight.check(cluster, facts)
    checks = {(p.host, p.check) for p in problems}
    for h in sshd_hosts:
        assert (h.name, "hostname") in checks           # one machine, one hostname (info)
        assert (h.name, "mac") in checks                # and the same NICs
        assert (h.name, "address") not in checks        # 127.0.0.x is local through lo
        assert (h.name, "reachable") not in checks
        assert ((h.name, "init") in checks) == (facts[h.name].init != "systemd")


def test_preflight_run_opens_probes_and_prints(sshd_hosts, tmp_path, monkeypatch):
    """What `invoke cluster.preflight` does: known_hosts under $PROVISIONER_STATE_DIR/<cluster>."""
    import io

    from rich.console import Console

    from provisioner.ssh import HostKeyError

    lines = [f"        {h.name}: {{ansible_host: {h.address}, ansible_port: {h.port}}}" for h in sshd_hosts]
    (tmp_path / "inv.yml").write_text(f"""all:
  vars:
    cluster_name: loop
    kubernetes_version: v1.32.4
    ansible_ssh_private_key_file: {sshd_hosts[0].key_file}
  children:
    control_plane: {{hosts: {{{sshd_hosts[0].name}: {{ansible_host: {sshd_hosts[0].address}, ansible_port: {sshd_hosts[0].port}}}}}}}
    workers:
      hosts:
""" + "\n".join(lines[1:]) + "\n")
    cluster = inv.load(tmp_path / "inv.yml", check=lambda cluster, where: [])
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(HostKeyError, match="cluster.trust"):
        preflight.run(cluster)
    buf = io.StringIO()
    problems = preflight.run(cluster, trust_new=True, console=Console(file=buf, width=200))
    assert (tmp_path / "state/loop/known_hosts").read_text().count("ssh-ed25519") == len(sshd_hosts)
    out = buf.getvalue()
    assert preflight.has_errors(problems)  # one machine under three names: MACs clash
    for h in sshd_hosts:
        assert f"{h.name} (" in out
    assert "is also on" in out


def test_trust_then_preflight_tasks(sshd_hosts, tmp_path, monkeypatch, capsys):
    """`invoke cluster.trust --yes` records the keys; `cluster.preflight` then exits 2 (MACs clash)."""
    from invoke import Context, Exit

    from provisioner.tasks import cluster as tasks

    lines = [f"        {h.name}: {{ansible_host: {h.address}, ansible_port: {h.port}}}" for h in sshd_hosts]
    path = tmp_path / "inv.yml"
    path.write_text(f"""all:
  vars:
    cluster_name: loop
    kubernetes_version: v1.32.4
    ansible_ssh_private_key_file: {sshd_hosts[0].key_file}
  children:
    control_plane:
      hosts:
{lines[0]}
    workers:
      hosts:
""" + "\n".join(lines[1:]) + "\n")
    real_load = inv.load
    monkeypatch.setattr(tasks.inv, "load", lambda p: real_load(p, check=lambda cluster, where: []))
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "250")  # rich: no wrapping inside table cells
    known = tmp_path / "state/loop/known_hosts"

    with pytest.raises(Exit) as e:
        tasks.preflight(Context(), inventory=str(path))
    assert e.value.code == 2 and "invoke cluster.trust" in capsys.readouterr().err

    tasks.trust(Context(), inventory=str(path), yes=True)
    out = capsys.readouterr().out
    assert f"recorded {len(sshd_hosts)} host key(s)" in out
    assert sorted(known.read_text().splitlines()) == sorted(h.known_hosts_line for h in sshd_hosts)
    tasks.trust(Context(), inventory=str(path), yes=True)
    assert "no new host keys" in capsys.readouterr().out

    with pytest.raises(Exit) as e:
        tasks.preflight(Context(), inventory=str(path))
    assert e.value.code == 2 and "is also on" in capsys.readouterr().out
