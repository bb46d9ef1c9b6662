"""Real OpenSSH servers on loopback addresses, for tests of the SSH layer and everything above it.

    from tests.sshd import sshd_hosts            # the fixture (3 hosts by default)

    @pytest.mark.parametrize("sshd_hosts", [10], indirect=True)   # or another count
    def test_something(sshd_hosts): ...

or directly: `hosts, stop = start_sshd_hosts(5, tmp_path)`, then `stop()`.

Each host is `/usr/sbin/sshd -D -e -f CONFIG` running as root, bound to its own loopback address
(127.0.0.11, 127.0.0.12, ...; Linux answers on all of 127.0.0.0/8 without configuration) on
port 2222 (the next free port when another run holds 2222), with its own ed25519 host key.
One generated client key (`Host.key_file`) is authorized on all of them for root.

Servers of a crashed earlier run are found through pid files in RUNTIME_DIR, which name the
process that started them; they are stopped when that process is gone. Outside CI the fixture
skips when not root or sshd is missing; with CI=true it fails instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import skip_outside_ci

SSHD = "/usr/sbin/sshd"
RUNTIME_DIR = Path("/run/provisioner-test-sshd") if os.geteuid() == 0 else Path("/tmp/provisioner-test-sshd")
BASE_PORT = 2222
FIRST_ADDRESS = 11  # 127.0.0.11 is the first host


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int
    key_file: str           # client private key authorized for root
    host_pubkey_line: str   # "ssh-ed25519 AAAA..." (the server's host key)
    user: str = "root"

    def node(self, roles: tuple[str, ...] = ("workers",), name: str | None = None):
        """This host as a `provisioner.model.Node` (root, its port, the client key)."""
        from provisioner.model import Node

        return Node(name or self.name, self.address, tuple(roles), ssh_user=self.user,
                    ssh_port=self.port, ssh_key=self.key_file)

    @property
    def known_hosts_line(self) -> str:
        where = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{where} {self.host_pubkey_line}"


class SshdHosts(list):
    """The started hosts (a list of `Host`) plus `stop()` and where their files are."""

    def __init__(self, hosts, procs, workdir: Path):
        super().__init__(hosts)
        self.procs = procs
        self.workdir = workdir

    def stop(self) -> None:
        for proc, pidfile in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, pidfile in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            pidfile.unlink(missing_ok=True)
        self.procs = []

    def write_known_hosts(self, path: str | os.PathLike) -> str:
        Path(path).write_text("".join(h.known_hosts_line + "\n" for h in self))
        os.chmod(path, 0o600)
        return str(path)

    def log(self, i: int = 0) -> str:
        return (self.workdir / f"sshd-{i + 1}.log").read_text(errors="replace")


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "real sshd hosts need root"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing (run ./bootstrap.sh)"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers() -> None:
    """Stop sshd servers whose starting process has died (a crashed or killed test run)."""
    if not RUNTIME_DIR.is_dir():
        return
    for pidfile in RUNTIME_DIR.glob("*.pid"):
        owner = int(pidfile.name.split("-", 1)[0])
        if _alive(owner):
            continue  # another test run, still going
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"sshd" in cmdline.split(b"\0")[0] and b"/sshd/sshd-" in cmdline:
                os.kill(pid, signal.SIGTERM)
        except (ValueError, OSError):
            pass
        pidfile.unlink(missing_ok=True)


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _supports(option: str) -> bool:
    r = subprocess.run([SSHD, "-T", "-f", "/dev/null", "-o", option], capture_output=True)
    return r.returncode == 0


def _wait_banner(address: str, port: int, proc: subprocess.Popen, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((address, port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def start_sshd_hosts(n: int, tmp_path: str | os.PathLike, max_startups: str | None = None,
                     first: int = FIRST_ADDRESS) -> SshdHosts:
    """Start n sshd servers on 127.0.0.<first>.. and return them once all answer with a banner.

    `max_startups` sets sshd's MaxStartups (default: sshd's own 10:30:100).
    """
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    if first + n > 255:
        raise ValueError("at most 244 hosts")
    work = Path(tmp_path) / "sshd"
    work.mkdir(parents=True, exist_ok=True)
    RUNTIME_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    clean_leftovers()

    client_key = work / "id_ed25519"
    if not client_key.exists():
        _keygen(client_key, "provisioner-test-client")
    authorized = work / "authorized_keys"
    authorized.write_text((work / "id_ed25519.pub").read_text())
    addresses = [f"127.0.0.{first + i}" for i in range(n)]
    extra = []
    if _supports("PerSourcePenalties=no"):  # OpenSSH >= 9.8 would slow down refused clients
        extra.append("PerSourcePenalties no")
    if _supports("SetEnv=SHLVL=1"):
        # bash sources ~/.bashrc for commands run by sshd unless SHLVL says it is nested; this
        # machine's root .bashrc (pyenv init) costs ~100 ms a command, a node's does not
        extra.append("SetEnv SHLVL=1")
    if max_startups:
        extra.append(f"MaxStartups {max_startups}")

    hostkeys = []
    for i in range(n):
        key = work / f"host-{i + 1}_ed25519"
        if not key.exists():
            _keygen(key, f"host-{i + 1}")
        kind, blob = (work / f"host-{i + 1}_ed25519.pub").read_text().split()[:2]
        hostkeys.append((key, f"{kind} {blob}"))

    port = BASE_PORT
    for _attempt in range(20):
        while not all(_port_free(a, port) for a in addresses):
            port += 1
        started = _start_all(work, addresses, port, hostkeys, authorized, extra)
        if started is not None:
            hosts = [Host(f"h{i + 1}", a, port, str(client_key), hostkeys[i][1])
                     for i, a in enumerate(addresses)]
            return SshdHosts(hosts, started, work)
        port += 1  # lost a race for the port with another run: try the next one
    raise RuntimeError(f"could not start {n} sshd servers; see {work}/sshd-*.log")


def _start_all(work, addresses, port, hostkeys, authorized, extra):
    procs = []
    for i, address in enumerate(addresses):
        cfg = work / f"sshd-{i + 1}.conf"
        cfg.write_text("\n".join([
            f"ListenAddress {address}:{port}",
            f"HostKey {hostkeys[i][0]}",
            f"PidFile {work}/sshd-{i + 1}.sshd-pid",
            # the shared file for root; a user's own file for the users of `sudo_users`
            f"AuthorizedKeysFile {authorized} .ssh/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "Subsystem sftp internal-sftp",
            *extra,
        ]) + "\n")
        log = open(work / f"sshd-{i + 1}.log", "ab")
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        pidfile = RUNTIME_DIR / f"{os.getpid()}-{address}-{port}.pid"
        pidfile.write_text(f"{proc.pid}\n")
        procs.append((proc, pidfile))
    deadline = time.monotonic() + 15
    ok = all(_wait_banner(a, port, p, deadline) for a, (p, _) in zip(addresses, procs))
    if ok:  # a banner may have come from another run's server on that port: ours must be alive
        time.sleep(0.1)
        ok = all(p.poll() is None for p, _ in procs)
    if not ok:
        SshdHosts([], procs, work).stop()
        return None
    return procs


def _need_sshd() -> None:
    reason = unavailable_reason()
    if reason:
        skip_outside_ci(reason)


@pytest.fixture(scope="module")
def sshd_hosts(request, tmp_path_factory):
    """N real sshd hosts for this module (3 unless parametrized indirectly with a count)."""
    _need_sshd()
    n = getattr(request, "param", 3)
    hosts = start_sshd_hosts(n, tmp_path_factory.mktemp(f"sshd{n}"))
    yield hosts
    hosts.stop()


def skip_without_sshd() -> None:
    """Call at the top of a test that starts its own servers with `start_sshd_hosts`."""
    _need_sshd()



# -- users other than root, with and without sudo --------------------------------------------

SUDO_KINDS = {"nopw": "NOPASSWD:ALL", "pw": "ALL", "none": None}


@dataclass(frozen=True)
class SudoUsers:
    """Local users the test sshd lets in with the client key (its AuthorizedKeysFile is shared):
    `nopw` may sudo without a password, `pw` with `password`, `none` may not sudo at all."""

    nopw: str
    pw: str
    none: str
    password: str


def _user_name(kind: str, pid: int | None = None) -> str:
    return f"pvt{pid or os.getpid()}{kind}"


def _remove_user(name: str) -> None:
    subprocess.run(["userdel", "-r", "-f", name], capture_output=True)
    Path(f"/etc/sudoers.d/{name}").unlink(missing_ok=True)


def _clean_sudo_leftovers() -> None:
    """Users of a crashed earlier run (their pid is gone)."""
    import re

    for line in Path("/etc/passwd").read_text().splitlines():
        m = re.match(r"^(pvt(\d+)(?:nopw|pw|none)):", line)
        if m and not _alive(int(m.group(2))):
            _remove_user(m.group(1))


@pytest.fixture(scope="module")
def sudo_users(sshd_hosts):
    """Three users (see SudoUsers) for this module, each with the client key of `sshd_hosts`,
    removed afterwards. Changes this machine's /etc/passwd and /etc/sudoers.d, so it needs
    root, useradd and sudo (./bootstrap.sh)."""
    import pwd
    import secrets as _secrets
    import shutil

    _need_sshd()
    missing = [t for t in ("sudo", "useradd", "userdel", "chpasswd") if not shutil.which(t)]
    if missing:
        skip_outside_ci(f"{', '.join(missing)} missing (run ./bootstrap.sh)")
    _clean_sudo_leftovers()
    password = "pw-" + _secrets.token_urlsafe(12)
    names = {kind: _user_name(kind) for kind in SUDO_KINDS}
    try:
        for kind, name in names.items():
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True,
                           capture_output=True)
            # a locked account ("!") cannot log in even with a key when sshd runs without PAM
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True,
                           capture_output=True)
            ssh = Path(pwd.getpwnam(name).pw_dir) / ".ssh"
            ssh.mkdir(mode=0o700)
            (ssh / "authorized_keys").write_text(Path(sshd_hosts[0].key_file + ".pub").read_text())
            subprocess.run(["chown", "-R", f"{name}:", str(ssh)], check=True)
            rule = SUDO_KINDS[kind]
            if rule:
                path = Path(f"/etc/sudoers.d/{name}")
                path.write_text(f"{name} ALL=(ALL) {rule}\n")
                os.chmod(path, 0o440)
        yield SudoUsers(names["nopw"], names["pw"], names["none"], password)
    finally:
        for name in names.values():
            _remove_user(name)
