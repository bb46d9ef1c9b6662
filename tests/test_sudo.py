"""A user other than root with sudo, against real OpenSSH servers on loopback (tests/sshd.py)
and this machine's real sudo: commands, pushes, probes, Ctrl-C, preflight and playbooks run as
root; the sudo password never reaches a command line, a command's stdin or a run's files."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import threading
import time
from pathlib import Path

import paramiko
import pytest

from provisioner import become, facts as host_facts, preflight, runner
from provisioner.model import Cluster, Node
from provisioner.ssh import Pool
from tests.sshd import sshd_hosts, sudo_users  # noqa: F401 (fixtures)
from tests.test_runner import _everything_under, run_dir_of

DATA = Path(__file__).parent / "data" / "playbooks"


@pytest.fixture
def known(sshd_hosts, tmp_path):  # noqa: F811
    return sshd_hosts.write_known_hosts(tmp_path / "known_hosts")


@pytest.fixture
def password_file(sudo_users, tmp_path):  # noqa: F811
    path = tmp_path / "sudo-password"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, sudo_users.password.encode() + b"\n")
    os.close(fd)
    return str(path)


def node(host, user: str, password_file: str | None = None, name: str | None = None) -> Node:
    return Node(name or host.name, host.address, ("workers",), ssh_user=user, ssh_port=host.port,
                ssh_key=host.key_file, become=user != "root", become_password_file=password_file)


@pytest.fixture
def commands(monkeypatch):
    """Every command line sent to a host in this test."""
    sent: list[str] = []
    original = paramiko.Channel.exec_command

    def record(self, command):
        sent.append(command if isinstance(command, str) else command.decode())
        return original(self, command)

    monkeypatch.setattr(paramiko.Channel, "exec_command", record)
    return sent


@pytest.mark.parametrize("kind", ["nopw", "pw"])
def test_commands_files_and_probe_run_as_root(sshd_hosts, known, sudo_users, password_file,  # noqa: F811
                                             tmp_path, commands, kind):
    user = getattr(sudo_users, kind)
    n = node(sshd_hosts[0], user, password_file if kind == "pw" else None)
    private = tmp_path / "etc-pki"  # root's 0700 folder: the SSH user cannot even list it
    private.mkdir(mode=0o700)
    target = str(private / "deep" / "ca.key")
    with Pool([n], known) as pool:
        assert pool.sudo == {"h1": sudo_users.password if kind == "pw" else None}
        r = pool.run_one("h1", "id -un; echo $HOME")
        assert (r.rc, r.stdout) == (0, "root\n/root\n"), r
        # a command's stdin is exactly what it was given: the password line went to sudo
        assert pool.run_one("h1", "cat", stdin=b"data\n").stdout == "data\n"
        assert pool.run_one("h1", "cat").stdout == ""
        r = pool.run_one("h1", "echo out; echo err >&2; exit 3")
        assert (r.rc, r.stdout, r.stderr) == (3, "out\n", "err\n")
        # pushes: root-owned, mode right, atomic, skipped when unchanged
        assert pool.put("h1", target, b"key-1\n", 0o600) is True
        assert pool.put("h1", target, b"key-1\n", 0o600) is False
        assert pool.put("h1", target, b"key-2\n", 0o600) is True
        big = os.urandom(2 * 1024 * 1024 + 5)
        result = pool.put_many({"h1": {str(private / "a.conf"): (b"a\n", 0o644),
                                       str(private / "bin"): (big, 0o755)}})
        assert sorted(result["h1"].changed) == [str(private / "a.conf"), str(private / "bin")]
        assert pool.put("h1", str(private / "owned"), b"x\n", 0o640, owner="nobody")
        # send / fetch (restore / backup) through sudo
        local = tmp_path / "snap.db"
        local.write_bytes(big)
        pool.send("h1", local, str(private / "restore.db"), 0o600)
        back = tmp_path / "back.db"
        assert pool.fetch("h1", str(private / "restore.db"), back) == hashlib.sha256(big).hexdigest()
        assert back.read_bytes() == big
        # the facts probe reads what only root can
        found = host_facts.probe(pool, {"h1": [target, "/etc/shadow"]}, services=(), binaries=())
    f = found["h1"]
    assert f.reachable, f.error
    assert f.files[target] == hashlib.sha256(b"key-2\n").hexdigest()
    assert f.files["/etc/shadow"] is not None
    st = os.stat(target)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600)
    assert Path(target).read_bytes() == b"key-2\n"
    assert (private / "bin").read_bytes() == big and os.stat(private / "bin").st_mode & 0o777 == 0o755
    assert os.stat(private / "a.conf").st_mode & 0o777 == 0o644
    nobody = pwd.getpwnam("nobody")
    st = os.stat(private / "owned")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (nobody.pw_uid, nobody.pw_gid, 0o640)
    assert os.stat(private / "restore.db").st_uid == 0
    assert sorted(os.listdir(private / "deep")) == ["ca.key"]  # no temp file left
    # the password and the pushed secrets never were on a command line
    assert commands and all("sudo" in c for c in commands)
    for c in commands:
        assert sudo_users.password not in c and "key-2" not in c and "key-1" not in c


def test_root_logins_are_unchanged(sshd_hosts, known, commands):  # noqa: F811
    with Pool([node(sshd_hosts[0], "root")], known) as pool:
        assert pool.sudo == {}
        assert pool.run_one("h1", "id -un").stdout == "root\n"
    assert len(commands) == 1 and "sudo" not in commands[0]  # no extra round trip


@pytest.mark.parametrize("case", ["no sudo", "needs a password", "wrong password"])
def test_sudo_that_cannot_work_is_a_clear_preflight_error(sshd_hosts, known, sudo_users, tmp_path,  # noqa: F811
                                                           case):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    user, pw_file, want = {
        "no sudo": (sudo_users.none, None, "cannot run sudo without a password"),
        "needs a password": (sudo_users.pw, None, "cannot run sudo without a password"),
        "wrong password": (sudo_users.pw, str(wrong), f"did not accept the password from {wrong}"),
    }[case]
    n = node(sshd_hosts[0], user, pw_file)
    started = time.monotonic()
    with Pool([n], known) as pool:
        assert "h1" not in pool.clients and "h1" not in pool.sudo
        assert want in pool.errors["h1"]
        found = host_facts.probe(pool)
    assert time.monotonic() - started < 15  # no prompt waiting for a terminal
    cluster = Cluster(source="x.yml", nodes=(n,), cluster_name="t", distribution="kubeadm",
                      kubernetes_version="v1.36.4", pod_cidr="10.244.0.0/16",
                      service_cidr="10.96.0.0/12", cluster_domain="cluster.local", cni="flannel",
                      ha_mode="none", api_vip=None, api_port=6443, vip_interface="eth0",
                      registry_mirrors={}, sandbox_image="x", bundle_dir=None,
                      download_mirror="x", github_mirror="x", state_dir="state")
    problems = preflight.check(cluster, found)
    assert [(p.host, p.check, p.level) for p in problems] == [("h1", "sudo", "error")]
    assert want in problems[0].message
    fix = problems[0].fix
    if pw_file:
        assert "check the password" in fix
    else:
        assert f"{user} ALL=(ALL) NOPASSWD:ALL" in fix and f"/etc/sudoers.d/{user}" in fix
        assert "ansible_become_password_file" in fix


def test_ctrl_c_stops_root_commands_started_through_sudo(sshd_hosts, known, sudo_users):  # noqa: F811
    import signal

    marker = f"700.{secrets.randbelow(10**6) + 10**6}"
    with Pool([node(sshd_hosts[0], sudo_users.nopw)], known) as pool:
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            pool.run(f"sleep {marker}; echo never")
        timer.cancel()
    deadline = time.monotonic() + 3
    while _running(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running(f"sleep {marker}") == []


def _running(needle: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if needle.encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


@pytest.mark.parametrize("kind", ["nopw", "pw"])
def test_playbooks_become_root_and_the_password_is_nowhere(sshd_hosts, known, sudo_users,  # noqa: F811
                                                           password_file, tmp_path_factory, kind,
                                                           monkeypatch):
    user = getattr(sudo_users, kind)
    state = tmp_path_factory.mktemp("st")
    out = tmp_path_factory.mktemp("out") / "whoami"
    n = node(sshd_hosts[0], user, password_file if kind == "pw" else None)
    unsafe = runner.Redactor
    monkeypatch.setattr(runner, "Redactor", lambda values: unsafe(()))
    result = runner.run_playbook(None, str(DATA / "runner-become.yml"), [n],
                                 {"out_path": str(out)}, None, state, Path(known), phase="become")
    assert result.ok, result.failures
    assert out.read_text().split() == ["root", "0600"]
    assert os.stat(out).st_uid == 0
    run_dir = run_dir_of(result)
    inv = json.loads((run_dir / "inventory" / "hosts.json").read_text())["all"]["hosts"]["h1"]
    assert (inv["ansible_user"], inv["ansible_become"], inv["ansible_become_method"]) == (
        user, True, "sudo")
    assert ("ansible_become_password" in inv) == (kind == "pw")
    # absent, not scrubbed: the redaction safety net was switched off for this run
    assert sudo_users.password.encode() not in _everything_under(run_dir)
    assert not list(run_dir.glob(".secrets-*"))


def test_prompted_password_is_used_for_nodes_without_a_file(sshd_hosts, known, sudo_users,  # noqa: F811
                                                           monkeypatch):
    monkeypatch.setattr("getpass.getpass", lambda prompt: sudo_users.password)
    become.ask()
    try:
        with Pool([node(sshd_hosts[0], sudo_users.pw)], known) as pool:
            assert pool.run_one("h1", "id -un").stdout == "root\n"
    finally:
        become.forget()
