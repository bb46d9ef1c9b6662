"""The paramiko layer against real OpenSSH servers on loopback (tests/sshd.py)."""

from __future__ import annotations

import base64
import hashlib
import os
import time

import paramiko
import pytest

from provisioner.errors import UserError
from provisioner.model import Node
from provisioner.ssh import HostKeyError, Pool, fingerprint, scan_hosts
from tests.sshd import sshd_hosts, start_sshd_hosts  # noqa: F401 (fixture)

pytestmark = pytest.mark.parametrize("sshd_hosts", [10], indirect=True)


def nodes_of(hosts, **extra) -> list[Node]:
    return [Node(h.name, h.address, ("workers",), ssh_port=h.port, ssh_key=h.key_file, **extra) for h in hosts]


def key_of(host) -> paramiko.PKey:
    kind, blob = host.host_pubkey_line.split()
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


@pytest.fixture
def known(sshd_hosts, tmp_path):
    return sshd_hosts.write_known_hosts(tmp_path / "known_hosts")


def accepted(sshd_hosts, i: int) -> int:
    return sshd_hosts.log(i).count("Accepted publickey")


def test_parallel_run_on_10_hosts_reuses_one_connection_each(sshd_hosts, known):
    with Pool(nodes_of(sshd_hosts), known) as pool:
        logins = [accepted(sshd_hosts, i) for i in range(len(sshd_hosts))]
        start = time.monotonic()
        results = pool.run("sleep 1; echo $SSH_CONNECTION")
        elapsed = time.monotonic() - start
        again = pool.run("echo second")
    assert len(results) == 10
    for h in sshd_hosts:
        r = results[h.name]
        assert r.rc == 0, r
        assert r.stdout.split()[2:] == [h.address, str(h.port)]  # it ran on that very server
        assert again[h.name].stdout == "second\n"
    assert elapsed < 5, f"10 x 1 s took {elapsed:.1f} s: not parallel"
    # both runs went over the connection opened once per host
    assert [accepted(sshd_hosts, i) for i in range(len(sshd_hosts))] == logins


def test_unknown_host_key_is_refused_with_how_to_trust(sshd_hosts, tmp_path):
    path = tmp_path / "known_hosts"
    with pytest.raises(HostKeyError) as e:
        Pool(nodes_of(sshd_hosts[:2]), path)
    msg = str(e.value)
    assert isinstance(e.value, UserError)
    assert "invoke cluster.trust -i" in msg and "--trust-new-hosts" in msg
    for h in sshd_hosts[:2]:
        assert f"{h.name} ([{h.address}]:{h.port}): unknown host key" in msg
        assert fingerprint(key_of(h)) in msg
    assert not path.exists()


def test_trust_new_records_keys_0600_then_they_are_checked(sshd_hosts, tmp_path):
    path = tmp_path / "state" / "known_hosts"
    with Pool(nodes_of(sshd_hosts[:3]), path, trust_new=True) as pool:
        assert pool.run("true", hosts=["h1"])["h1"].rc == 0
    assert os.stat(path).st_mode & 0o777 == 0o600
    lines = sorted(path.read_text().splitlines())
    assert lines == sorted(h.known_hosts_line for h in sshd_hosts[:3])
    with Pool(nodes_of(sshd_hosts[:3]), path) as pool:  # no trust needed any more
        assert all(r.rc == 0 for r in pool.run("true").values())
    assert sorted(path.read_text().splitlines()) == lines  # nothing recorded twice


def test_changed_host_key_is_always_refused(sshd_hosts, tmp_path):
    h1, h2 = sshd_hosts[0], sshd_hosts[1]
    path = tmp_path / "known_hosts"
    path.write_text(f"[{h1.address}]:{h1.port} {h2.host_pubkey_line}\n")  # h2's key recorded for h1
    for trust_new in (False, True):
        with pytest.raises(HostKeyError) as e:
            Pool(nodes_of([h1]), path, trust_new=trust_new)
        msg = str(e.value)
        assert "HOST KEY CHANGED" in msg
        assert fingerprint(key_of(h2)) in msg and fingerprint(key_of(h1)) in msg
        assert f"ssh-keygen -f {path} -R '[{h1.address}]:{h1.port}'" in msg
    assert path.read_text() == f"[{h1.address}]:{h1.port} {h2.host_pubkey_line}\n"


def test_scan_hosts_reports_known_unknown_changed(sshd_hosts, tmp_path):
    h1, h2, h3 = sshd_hosts[:3]
    path = tmp_path / "known_hosts"
    path.write_text(f"{h1.known_hosts_line}\n[{h2.address}]:{h2.port} {h3.host_pubkey_line}\n")
    dead = Node("dead", "127.0.0.99", ("workers",), ssh_port=h1.port)
    scanned = {s.name: s for s in scan_hosts(nodes_of([h1, h2, h3]) + [dead], path)}
    assert {n: s.status for n, s in scanned.items()} == {
        "h1": "known", "h2": "changed", "h3": "unknown", "dead": "error"}
    assert scanned["h3"].fingerprint == fingerprint(key_of(h3))
    assert "dead" in scanned["dead"].error and "127.0.0.99" in scanned["dead"].error


def test_5mb_on_stdout_and_stderr_does_not_deadlock(sshd_hosts, known):
    cmd = ("head -c 5000000 /dev/zero | tr '\\0' o & head -c 5000000 /dev/zero | tr '\\0' e >&2; "
           "wait; exit 7")
    with Pool(nodes_of(sshd_hosts[:2]), known) as pool:
        results = pool.run(cmd, timeout=60)
        payload = os.urandom(3_000_000)
        echoed = pool.run_one("h1", "sha256sum", stdin=payload, timeout=60)
    for r in results.values():
        assert r.rc == 7 and r.error is None
        assert len(r.stdout) == 5_000_000 and set(r.stdout) == {"o"}
        assert len(r.stderr) == 5_000_000 and set(r.stderr) == {"e"}
    assert echoed.stdout.split()[0] == hashlib.sha256(payload).hexdigest()


def test_command_timeout_is_a_result_not_a_hang(sshd_hosts, known):
    with Pool(nodes_of(sshd_hosts[:1]), known) as pool:
        start = time.monotonic()
        r = pool.run("sleep 30", timeout=1)["h1"]
    assert time.monotonic() - start < 10
    assert r.rc is None and "h1: timed out" in r.error


def test_put_writes_atomically_0600_and_skips_unchanged(sshd_hosts, known, tmp_path):
    target = str(tmp_path / "etc" / "deep" / "secret.key")
    with Pool(nodes_of(sshd_hosts[:1]), known) as pool:
        assert pool.put("h1", target, b"token-1\n", 0o600) is True
        st = os.stat(target)
        assert st.st_mode & 0o777 == 0o600 and open(target, "rb").read() == b"token-1\n"
        assert pool.put("h1", target, b"token-1\n", 0o600) is False
        sha = hashlib.sha256(b"token-1\n").hexdigest()
        assert pool.put("h1", target, b"token-1\n", 0o600, known_sha256=sha) is False
        st2 = os.stat(target)
        assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)  # not transferred again
        assert pool.put("h1", target, b"token-2\n", 0o600) is True
        st3 = os.stat(target)
        assert st3.st_ino != st.st_ino  # replaced by rename, never rewritten in place
        assert st3.st_mode & 0o777 == 0o600 and open(target, "rb").read() == b"token-2\n"
        assert pool.put("h1", target, b"token-2\n", 0o644) is True  # same content, other mode
        assert os.stat(target).st_mode & 0o777 == 0o644
    assert os.listdir(os.path.dirname(target)) == ["secret.key"]  # no temp files left


def test_send_and_fetch_stream_a_file_both_ways(sshd_hosts, known, tmp_path):
    """What backup (fetch) and restore (send) move: bytes unchanged, 0600 from the start, a temp
    file renamed into place, no file of the same name overwritten by a fetch."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "snapshot.db"
    local.write_bytes(data)
    remote = str(tmp_path / "node" / "etcd" / "restore.db")
    back = tmp_path / "back.db"
    with Pool(nodes_of(sshd_hosts[:1]), known) as pool:
        pool.send("h1", local, remote, 0o600)
        assert open(remote, "rb").read() == data
        assert os.stat(remote).st_mode & 0o777 == 0o600
        assert os.listdir(os.path.dirname(remote)) == ["restore.db"]
        assert pool.fetch("h1", remote, back) == hashlib.sha256(data).hexdigest()
        assert back.read_bytes() == data and back.stat().st_mode & 0o777 == 0o600
        with pytest.raises(FileExistsError):
            pool.fetch("h1", remote, back)
        with pytest.raises(FileNotFoundError):
            pool.fetch("h1", remote + ".missing", tmp_path / "none.db")
        assert not (tmp_path / "none.db").exists()  # no partial copy left


def test_put_sets_the_owner(sshd_hosts, known, tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    target = str(tmp_path / "owned.conf")
    with Pool([sshd_hosts[0].node()], known) as pool:
        assert pool.put("h1", target, b"x\n", 0o640, owner="nobody")
        with pytest.raises(UserError, match="no-such-user"):
            pool.put("h1", str(tmp_path / "other"), b"y", 0o600, owner="no-such-user")
    st = os.stat(target)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (nobody.pw_uid, nobody.pw_gid, 0o640)
    assert not os.path.exists(tmp_path / "other")


def test_put_many_in_parallel_with_known_hashes(sshd_hosts, known, tmp_path):
    hosts = sshd_hosts[:4]
    files = {h.name: {str(tmp_path / h.name / "a.conf"): (f"a {h.name}\n".encode(), 0o644),
                      str(tmp_path / h.name / "b.key"): (b"secret\n", 0o600)} for h in hosts}
    with Pool(nodes_of(hosts), known) as pool:
        first = pool.put_many(files)
        assert all(sorted(r.changed) == sorted(files[n]) and r.error is None for n, r in first.items())
        inodes = {p: os.stat(p).st_ino for fs in files.values() for p in fs}
        second = pool.put_many(files)  # quick remote check finds everything in place
        assert all(r.changed == [] for r in second.values())
        hashes = {n: {p: hashlib.sha256(c).hexdigest() for p, (c, _m) in fs.items()} for n, fs in files.items()}
        stale = str(tmp_path / "h2" / "a.conf")
        hashes["h2"][stale] = None  # facts said: missing
        third = pool.put_many(files, hashes)
    assert {n: r.changed for n, r in third.items()} == {"h1": [], "h2": [stale], "h3": [], "h4": []}
    assert all(os.stat(p).st_ino == inodes[p] for p in inodes if p != stale)
    assert os.stat(str(tmp_path / "h3" / "b.key")).st_mode & 0o777 == 0o600


def test_unreachable_host_gives_a_clean_error_naming_it(sshd_hosts, known):
    h1 = sshd_hosts[0]
    dead = Node("deadhost", "127.0.0.99", ("workers",), ssh_port=h1.port, ssh_key=h1.key_file)
    with Pool(nodes_of([h1]) + [dead], known, connect_timeout=3) as pool:
        results = pool.run("echo ok")
        assert pool.reachable == ["h1"]
        puts = pool.put_many({"deadhost": {"/tmp/x": (b"x", 0o600)}})
    assert results["h1"].stdout == "ok\n"
    r = results["deadhost"]
    assert r.rc is None and r.error.startswith("deadhost: ")
    assert "127.0.0.99" in r.error and "refused" in r.error and "\n" not in r.error
    assert puts["deadhost"].error == r.error


def test_retries_connections_dropped_by_maxstartups(sshd_hosts, tmp_path):
    """One sshd with MaxStartups 2 and 16 simultaneous handshakes: the dropped ones are retried."""
    busy = start_sshd_hosts(1, tmp_path / "busy", max_startups="2", first=80)
    try:
        server = busy[0]
        nodes = [Node(f"n{i}", server.address, ("workers",), ssh_port=server.port, ssh_key=server.key_file)
                 for i in range(16)]
        with Pool(nodes, busy.write_known_hosts(tmp_path / "kh"), max_handshakes=16) as pool:
            assert pool.errors == {}
            assert all(r.rc == 0 for r in pool.run("true").values())
        assert "past MaxStartups" in busy.log(0)  # sshd did drop some: the retries were needed
    finally:
        busy.stop()


def _remote_running(marker: str) -> list[str]:
    """The sshd hosts are this machine: their commands show up in our process table."""
    import subprocess

    r = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return r.stdout.split()


def test_ctrl_c_stops_remote_commands_and_returns_promptly(sshd_hosts, known):
    import random
    import signal
    import threading

    marker = f"600.{random.randrange(10**6, 10**7)}"
    with Pool(nodes_of(sshd_hosts[:3]), known) as pool:
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            pool.run(f"sleep {marker}; echo never")
        elapsed = time.monotonic() - start
        timer.cancel()
        assert pool.clients == {}  # closed on the way out
    assert elapsed < 3, f"took {elapsed:.1f} s to stop"
    deadline = time.monotonic() + 2
    while _remote_running(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _remote_running(f"sleep {marker}") == []


def test_first_line_of_pid_is_not_in_stdout(sshd_hosts, known):
    with Pool(nodes_of(sshd_hosts[:1]), known) as pool:
        assert pool.run_one("h1", "printf x").stdout == "x"
        assert pool.run_one("h1", "true").stdout == ""
        r = pool.run_one("h1", "echo a; echo b >&2; exit 3")
        assert (r.rc, r.stdout, r.stderr) == (3, "a\n", "b\n")
