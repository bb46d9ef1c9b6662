"""facts.probe against real sshd hosts on loopback: they are this machine, so compare with it."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

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
        assert abs(f.skew) < 1.0 and 0 < f.clock_ran < f.seconds
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
    kubernetes_version: v1.36.4
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


def test_preflight_opens_probes_and_prints(sshd_hosts, tmp_path, monkeypatch):
    """What `invoke cluster.preflight` does: known_hosts under $PROVISIONER_STATE_DIR/<cluster>."""
    import io

    from rich.console import Console

    from provisioner.ssh import HostKeyError

    lines = [f"        {h.name}: {{ansible_host: {h.address}, ansible_port: {h.port}}}" for h in sshd_hosts]
    (tmp_path / "inv.yml").write_text(f"""all:
  vars:
    cluster_name: loop
    kubernetes_version: v1.36.4
    ansible_ssh_private_key_file: {sshd_hosts[0].key_file}
  children:
    control_plane: {{hosts: {{{sshd_hosts[0].name}: {{ansible_host: {sshd_hosts[0].address}, ansible_port: {sshd_hosts[0].port}}}}}}}
    workers:
      hosts:
""" + "\n".join(lines[1:]) + "\n")
    cluster = inv.load(tmp_path / "inv.yml", check=lambda cluster, where: [])
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path / "state"))
    from provisioner import actions

    with pytest.raises(HostKeyError, match="cluster.trust"):
        actions.check(cluster)
    buf = io.StringIO()
    problems, facts = actions.check(cluster, trust_new=True)
    preflight.render(problems, facts, Console(file=buf, width=200))
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
    kubernetes_version: v1.36.4
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


# -- what is shipped, and the new facts --------------------------------------------------------

class LocalPool:
    """Runs each host's command with /bin/sh on this machine, as sshd would; records what it sent."""

    def __init__(self, names):
        self.nodes = {n: None for n in names}
        self.sent = {}

    def run(self, cmd, hosts, stdin, timeout):
        from provisioner.ssh import Result

        results = {}
        for name in hosts:
            c = cmd[name] if isinstance(cmd, dict) else cmd
            data = stdin[name] if isinstance(stdin, dict) else stdin
            self.sent[name] = (c, data)
            start = time.time()
            r = subprocess.run(["/bin/sh", "-c", c], input=data, capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, "PATH": "/usr/bin:/bin"})
            results[name] = Result(r.returncode, r.stdout, r.stderr, time.time() - start, None, start)
        return results


def test_the_source_shipped_is_probe_py_exactly(tmp_path):
    from provisioner import probe as node_probe

    pool = LocalPool(["a"])
    facts = fx.probe(pool, {"a": ["/etc/hostname"]})
    cmd, stdin = pool.sent["a"]
    assert stdin == Path(node_probe.__file__).read_text() == fx.probe_source()
    assert Path(node_probe.__file__).parent == Path(fx.__file__).parent
    assert cmd.startswith("python3 - '") and json.loads(shlex.split(cmd)[2]) == fx.params_for(["/etc/hostname"])
    assert facts["a"].reachable and facts["a"].files["/etc/hostname"]
    assert fx.SCRIPT == stdin   # the old name still answers


def test_parameters_too_long_for_a_command_line_go_on_stdin(tmp_path):
    paths = [str(tmp_path / f"{i:05d}-{'x' * 60}") for i in range(2000)]
    (tmp_path / Path(paths[7]).name).write_text("seven\n")
    pool = LocalPool(["a"])
    f = fx.probe(pool, {"a": paths})["a"]
    cmd, stdin = pool.sent["a"]
    assert cmd == "python3 -" and stdin.startswith(fx.probe_source()) and len(stdin) > fx.MAX_PARAMS_ARG
    assert f.reachable and list(f.files) == paths
    assert f.files[paths[7]] == hashlib.sha256(b"seven\n").hexdigest() and f.stats[paths[7]]["owner"] == "root"
    assert sum(v is None for v in f.files.values()) == len(paths) - 1


def test_a_read_killed_at_its_deadline_is_asked_again_with_patience(monkeypatch):
    """A loaded node: what answers the second time (deadlines RETRY_PATIENCE times longer) is
    the fact; what still does not is in timed_out, never read as a "no"."""
    pool = LocalPool(["a", "b"])
    rounds = []
    run = pool.run
    monkeypatch.setattr(pool, "run", lambda cmd, hosts, **k: rounds.append(hosts) or run(cmd, hosts, **k))
    facts = fx.probe(pool, hosts=["a", "b"], commands_by_host={"a": {
        "slow": {"argv": ["sleep", "2"], "timeout": 1}, "hangs": {"argv": ["sleep", "60"], "timeout": 0.2},
        "quick": ["echo", "yes"]}})
    assert rounds == [["a", "b"], ["a"]]   # only the host with a read that did not answer
    a = facts["a"]
    assert a.commands == {"slow": {"rc": 0, "out": ""}, "hangs": {"rc": None, "out": ""},
                          "quick": {"rc": 0, "out": "yes"}}
    assert a.timed_out == {"command hangs": {"argv": ["sleep", "60"], "seconds": 0.2 * fx.RETRY_PATIENCE}}
    assert a.unanswered() == ["`sleep 60` (command hangs) did not answer within 1 s"]
    assert facts["b"].timed_out == {} and facts["b"].unanswered() == []


def test_a_whole_probe_outlasts_its_longest_read_and_is_asked_again_when_it_passes_its_deadline():
    """The whole probe of a host gets at least its longest read's timeout (the images listing:
    120 s, above the usual 60); a probe killed at that deadline (an overloaded node) is asked
    again with patience, like a single read."""
    from provisioner.ssh import Result

    pool = LocalPool(["a"])
    calls = []
    run = pool.run

    def slow_first(cmd, hosts, stdin, timeout):
        calls.append(timeout)
        if len(calls) == 1:
            return {"a": Result(None, seconds=timeout, error=f"a: timed out after {timeout:.0f} s")}
        return run(cmd, hosts, stdin=stdin, timeout=timeout)

    pool.run = slow_first
    f = fx.probe(pool, hosts=["a"], commands_by_host={"a": {
        "images": {"argv": ["echo", "listed"], "timeout": 120}}})["a"]
    assert calls == [120 + 30, 120 * fx.RETRY_PATIENCE + 30]
    assert f.reachable and f.commands["images"] == {"rc": 0, "out": "listed"} and f.timed_out == {}


@pytest.mark.parametrize("clock, skew", [
    (1000.3, 0.0),     # read while the answer was on its way (sent 995, ran 5 s, back 1002)
    (1001.9, 0.0),     # a slow answer: 2 s in the window is no clock off
    (1004.5, 2.5),     # after the answer arrived: ahead by at least that
    (996.0, -4.0),     # before the probe could have read it: behind by at least that
])
def test_the_clock_is_off_by_what_the_answers_window_cannot_explain(clock, skew):
    f = fx.Facts("h", clock=clock, controller_sent=995.0, clock_ran=5.0, controller_clock=1002.0)
    assert f.skew == pytest.approx(skew)


def test_commands_must_be_argv_lists():
    with pytest.raises(ValueError, match="argv"):
        fx.params_for(commands={"readyz": "kubectl get --raw /readyz"})
    assert fx.params_for(commands={"x": ("true",), "y": {"argv": ["sleep", 2], "timeout": 1}})["commands"] == {
        "x": {"argv": ["true"]}, "y": {"argv": ["sleep", "2"], "timeout": 1}}


def test_new_facts_over_ssh(pool, sshd_hosts, tmp_path):
    """stats, certs, commands and started, per host, in the same single round trip."""
    conf = tmp_path / "admin.conf"
    conf.write_text("apiVersion: v1\n")
    os.chown(conf, 0, 0)
    conf.chmod(0o600)
    crt, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-subj", "/CN=kubernetes", "-days", "1"],
                   check=True, capture_output=True)
    facts = fx.probe(pool, {"h1": [str(conf)]}, hosts=["h1", "h2"],
                     commands_by_host={"h1": {"echo": ["echo", "ready"], "fails": ["false"],
                                              "missing": ["kubectl-not-installed-x"],
                                              "slow": {"argv": ["sleep", "20"], "timeout": 0.5}}},
                     certs_by_host={"h1": [str(crt), str(key)]})
    h1, h2 = facts["h1"], facts["h2"]
    assert h1.reachable and h2.reachable
    assert h1.stats == {str(conf): {"mode": 0o600, "uid": 0, "gid": 0, "owner": "root", "group": "root"}}
    assert h1.files[str(conf)] == hashlib.sha256(b"apiVersion: v1\n").hexdigest()
    assert h1.commands == {"echo": {"rc": 0, "out": "ready"}, "fails": {"rc": 1, "out": ""},
                           "missing": {"rc": 127, "out": ""}, "slow": {"rc": None, "out": ""}}
    assert list(h1.timed_out) == ["command slow"] and h2.timed_out == {}
    assert h1.certs == {str(crt): crt.read_text(), str(key): None}
    assert "PRIVATE KEY" in h1.probe_errors[f"certs[{key}]"]
    assert h1.seconds < 10
    # services: this machine may have no systemd; then both are empty, else one entry per unit
    assert set(h1.started) == (set(fx.SERVICES) if h1.services else set())
    assert all(isinstance(v, int) for v in h1.started.values())
    assert (h2.stats, h2.commands, h2.certs) == ({}, {}, {})
