"""The SSH layer: one paramiko connection per host, opened once (in parallel) and reused.

    with Pool(cluster.nodes, known_hosts_path(cluster)) as pool:
        results = pool.run("uname -r")                 # {name: Result}, all hosts in parallel
        pool.put("cp1", "/etc/x.conf", b"...", 0o600)  # atomic, skipped when unchanged

Host keys are checked against the cluster's own known_hosts file. An unknown key is refused
(unless `trust_new`), a changed key always is; both raise `HostKeyError` (a `UserError`) naming
every such host and how to trust it. An unreachable host is not an exception: its `Result`
has `rc=None` and `error` says which host and why, so the caller decides what to do.

Ctrl-C: a KeyboardInterrupt while commands are in flight (or `close()` while they are) stops
them on the hosts too. sshd leaves a command without a terminal running when its connection
drops, so every command first prints its shell's pid (sshd makes each session its own process
group, led by that shell; the line is stripped from stdout) and `close()` kills that process
group over a fresh channel before closing the connections. The thread pool is shut down
without waiting; its threads notice the closed channels within half a second.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import posixpath
import random
import select
import shlex
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import paramiko

from . import become
from .errors import UserError

log = logging.getLogger(__name__)
# paramiko logs a dropped handshake (which we retry) as an error from its own thread: keep that
# off the terminal unless the application configured logging
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# sshd drops unauthenticated connections beyond MaxStartups (default 10:30:100): keep the
# number of handshakes in flight below 10 and retry the ones dropped anyway.
MAX_HANDSHAKES = 8
CONNECT_RETRIES = 5
BUFSIZE = 65536


@dataclass(frozen=True)
class Result:
    """What one command did on one host. rc None: it did not run (or finish); see `error`."""

    rc: int | None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    error: str | None = None
    started: float = 0.0      # wall-clock time the command was sent (time.time())

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass(frozen=True)
class PutResult:
    """Which files `put_many` wrote on one host; `error` set when the host could not be reached."""

    changed: list[str] = field(default_factory=list)
    error: str | None = None


class HostKeyError(UserError):
    """One or more hosts presented a host key that is unknown or differs from the recorded one."""


class SudoFailed(Exception):
    """A user other than root cannot act as root through sudo on a host (see become.py)."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.message, self.fix = message, fix


class RevokedHostKey(paramiko.SSHException):
    def __init__(self, entry: str, key: paramiko.PKey, line: int):
        super().__init__(f"revoked host key for {entry}")
        self.entry, self.key, self.line = entry, key, line


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, entry: str, key: paramiko.PKey):
        super().__init__(f"unknown host key for {entry}")
        self.entry, self.key = entry, key


# -- host key helpers -------------------------------------------------------------------------

def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint: `SHA256:base64` of the public key blob."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_entry(address: str, port: int) -> str:
    """How known_hosts names a host: `addr`, or `[addr]:port` for a port other than 22."""
    return address if port == 22 else f"[{address}]:{port}"


def known_hosts_path(cluster) -> Path:
    """<state folder>/<cluster>/known_hosts (see provisioner.state)."""
    from .state import State

    return State(cluster).known_hosts


class KnownHostsError(UserError):
    """A known_hosts line that cannot be read: FILE:LINE: what is wrong (how to fix)."""


@dataclass
class KnownHosts:
    """What a known_hosts file says: the keys (paramiko.HostKeys) and the @revoked keys."""

    keys: paramiko.HostKeys
    revoked: dict[bytes, int] = field(default_factory=dict)  # key blob -> line
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, why) not used


def read_known_hosts(path: str | os.PathLike) -> KnownHosts:
    """Read a known_hosts file as OpenSSH does (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT").

    `host[,host...] keytype base64 [comment]` lines, hashed names (|1|salt|hash) included;
    blank lines and # comments are skipped; fields may be separated by runs of spaces or tabs.
    Marker lines: `@revoked` keys are refused whatever else the file says; `@cert-authority`
    lines are skipped (this provisioner checks plain host keys, never host certificates).
    Lines of a key type paramiko cannot use are skipped (OpenSSH would skip unknown types too).
    Anything else that cannot be read raises `KnownHostsError` naming FILE:LINE, all at once.
    """
    path = Path(path)
    out = KnownHosts(paramiko.HostKeys())
    if not path.exists():
        return out
    problems = []
    data = path.read_bytes()
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            problems.append(f"{path}:{lineno}: bytes that are not UTF-8 (fix or remove the line)")
            continue
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = fields.pop(0) if fields[0].startswith("@") else None
        if marker not in (None, "@revoked", "@cert-authority"):
            problems.append(f"{path}:{lineno}: unknown marker {marker!r} (OpenSSH knows "
                            "@cert-authority and @revoked; fix or remove the line)")
            continue
        if len(fields) < 3:
            problems.append(f"{path}:{lineno}: not `host keytype key` (fix or remove the line)")
            continue
        names, kind, blob = fields[:3]
        if marker == "@cert-authority":
            out.skipped.append((lineno, "@cert-authority: host certificates are not used"))
            continue
        try:
            key_bytes = base64.b64decode(blob, validate=True)
        except ValueError:
            problems.append(f"{path}:{lineno}: the key is not base64 (fix or remove the line)")
            continue
        try:
            key = paramiko.PKey.from_type_string(kind, key_bytes)
        except paramiko.pkey.UnknownKeyType:
            out.skipped.append((lineno, f"key type {kind} is not supported by paramiko"))
            continue
        except Exception as e:  # noqa: BLE001 - a corrupt key of a known type
            problems.append(f"{path}:{lineno}: the {kind} key cannot be read ({e or type(e).__name__}; "
                            "fix or remove the line)")
            continue
        if marker == "@revoked":
            out.revoked[key.asbytes()] = lineno
            continue
        for name in names.split(","):
            if name and not name.startswith("!"):
                out.keys.add(name, key.get_name(), key)
    if problems:
        raise KnownHostsError("known_hosts cannot be read:\n  " + "\n  ".join(problems))
    return out


def load_known_hosts(path: str | os.PathLike) -> paramiko.HostKeys:
    return read_known_hosts(path).keys


def key_status(known: paramiko.HostKeys, entry: str, key: paramiko.PKey) -> str:
    """'known', 'unknown' or 'changed' for the key a host presented."""
    recorded = known.lookup(entry)
    if not recorded:
        return "unknown"
    return "known" if recorded.get(key.get_name()) == key else "changed"


_record_lock = threading.Lock()


def record_host_keys(path: str | os.PathLike, entries: Iterable[tuple[str, paramiko.PKey]]) -> None:
    """Append `entry keytype base64` lines to a known_hosts file (created 0600, parents too)."""
    path = Path(path)
    lines = "".join(f"{e} {k.get_name()} {k.get_base64()}\n" for e, k in entries)
    if not lines:
        return
    with _record_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(lines)
        os.chmod(path, 0o600)


def _trust_hint(path) -> str:
    return (f"check the fingerprint, then record it with `invoke cluster.trust -i INVENTORY` "
            f"(shows each host's fingerprint, writes {path}) or rerun with --trust-new-hosts")


def scan_host_key(address: str, port: int = 22, timeout: float = 10.0) -> paramiko.PKey:
    """The host key a server presents (the type paramiko negotiates first: ed25519, ecdsa, rsa)."""
    sock = socket.create_connection((address, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


@dataclass(frozen=True)
class ScannedKey:
    """A host's presented key and how it compares with known_hosts: known, unknown, changed, error."""

    name: str
    entry: str
    key: paramiko.PKey | None
    status: str
    error: str | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key) if self.key else ""


def scan_hosts(nodes: Iterable, known_hosts: str | os.PathLike, timeout: float = 10.0,
               max_parallel: int = MAX_HANDSHAKES) -> list[ScannedKey]:
    """Fetch every host's key (no login) and compare it with the known_hosts file."""
    known = load_known_hosts(known_hosts)

    def one(node) -> ScannedKey:
        entry = known_hosts_entry(node.address, node.ssh_port)
        delay = 0.2
        for attempt in range(CONNECT_RETRIES + 1):
            try:
                key = scan_host_key(node.address, node.ssh_port, timeout)
                return ScannedKey(node.name, entry, key, key_status(known, entry, key))
            except Exception as e:  # noqa: BLE001 - reported per host
                if attempt == CONNECT_RETRIES or not _transient(e):
                    return ScannedKey(node.name, entry, None, "error", f"{node.name}: {_describe(e, node)}")
                time.sleep(delay + random.uniform(0, delay))
                delay *= 2
        raise AssertionError("unreachable")

    nodes = list(nodes)
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(nodes) or 1))) as ex:
        return list(ex.map(one, nodes))


# -- the pool ---------------------------------------------------------------------------------

class _Policy(paramiko.MissingHostKeyPolicy):
    """Unknown key: record it when trusting new hosts, else refuse. Never adds silently."""

    def __init__(self, pool: "Pool"):
        self.pool = pool

    def missing_host_key(self, client, hostname, key):
        revoked = self.pool._known.revoked.get(key.asbytes())
        if revoked:
            raise RevokedHostKey(hostname, key, revoked)
        if not self.pool.trust_new:
            raise UnknownHostKey(hostname, key)
        record_host_keys(self.pool.known_hosts, [(hostname, key)])
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.info("trusted new host key %s %s", hostname, fingerprint(key))


def _describe(exc: BaseException, node) -> str:
    where = f"{node.address}:{node.ssh_port}"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        errnos = {getattr(e, "errno", None) for e in exc.errors.values()}
        exc = ConnectionRefusedError() if errnos == {errno.ECONNREFUSED} else OSError(errno.EHOSTUNREACH, "no route to host")
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused at {where} (is sshd running there?)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer from {where} (host down, wrong address or firewalled?)"
    if isinstance(exc, paramiko.AuthenticationException):
        key = node.ssh_key or "agent/default keys"
        return f"authentication as {node.ssh_user} failed at {where} with {key}"
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc):
        return f"no SSH banner from {where} (sshd dropped the connection: MaxStartups or overload?)"
    if isinstance(exc, FileNotFoundError):
        return f"SSH key {exc.filename or node.ssh_key} not found"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return f"{where}: {exc}"


def _transient(exc: BaseException) -> bool:
    """Dropped by sshd's MaxStartups or reset mid-handshake: worth another try."""
    if isinstance(exc, (ConnectionResetError, EOFError, BrokenPipeError)):
        return True
    if isinstance(exc, paramiko.SSHException) and not isinstance(
            exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException, UnknownHostKey,
                  RevokedHostKey)):
        text = str(exc)
        return "banner" in text or "reset" in text.lower() or "EOF" in text
    return False


class Pool:
    """One SSHClient per host of `cluster_nodes` (model.Node), connected in parallel."""

    def __init__(self, cluster_nodes: Iterable, known_hosts_path: str | os.PathLike,
                 trust_new: bool = False, max_parallel: int = 32, max_handshakes: int = MAX_HANDSHAKES,
                 connect_timeout: float = 10.0, command_timeout: float = 600.0):
        self.nodes = {n.name: n for n in cluster_nodes}
        self.known_hosts = Path(known_hosts_path)
        self.trust_new = trust_new
        self.max_parallel = max(1, max_parallel)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.clients: dict[str, paramiko.SSHClient] = {}
        self.errors: dict[str, str] = {}          # unreachable host -> why
        # hosts whose user is not root: sudo's password (None: sudo needs none), and the hosts
        # where sudo does not work: (message, fix), also in `errors`
        self.sudo: dict[str, str | None] = {}
        self.sudo_errors: dict[str, tuple[str, str]] = {}
        self._sftp: dict[str, paramiko.SFTPClient] = {}
        self._host_locks = {name: threading.Lock() for name in self.nodes}
        self._handshakes = threading.BoundedSemaphore(max(1, max_handshakes))
        self._known = read_known_hosts(self.known_hosts)
        self._pool = ThreadPoolExecutor(max_workers=self.max_parallel, thread_name_prefix="ssh")
        self._running: dict[int, tuple[str, list]] = {}  # id(chan) -> (host, [remote pid])
        self._running_lock = threading.Lock()
        self._closing = threading.Event()
        self.connect_seconds = 0.0
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- connecting ----------------------------------------------------------------------------
    def _open(self) -> None:
        start = time.monotonic()
        key_problems: dict[str, str] = {}
        futures = {name: self._pool.submit(self._connect, node) for name, node in self.nodes.items()}
        for name, fut in futures.items():
            try:
                self.clients[name] = fut.result()
            except UnknownHostKey as e:
                key_problems[name] = (f"{name} ({e.entry}): unknown host key {e.key.get_name()} "
                                      f"{fingerprint(e.key)}")
            except RevokedHostKey as e:
                key_problems[name] = (f"{name} ({e.entry}): host key {e.key.get_name()} "
                                      f"{fingerprint(e.key)} is marked @revoked on line {e.line}")
            except SudoFailed as e:
                self.sudo_errors[name] = (e.message, e.fix)
                self.errors[name] = f"{name}: {e.message} ({e.fix})"
            except paramiko.BadHostKeyException as e:
                entry = known_hosts_entry(self.nodes[name].address, self.nodes[name].ssh_port)
                key_problems[name] = (
                    f"{name} ({entry}): HOST KEY CHANGED: recorded {fingerprint(e.expected_key)}, "
                    f"presented {e.key.get_name()} {fingerprint(e.key)}; if the host was reinstalled, "
                    f"remove the old key with `ssh-keygen -f {self.known_hosts} -R '{entry}'` "
                    f"and trust it again (`invoke cluster.trust -i INVENTORY`)")
            except Exception as e:  # noqa: BLE001 - unreachable hosts become data, not tracebacks
                self.errors[name] = f"{name}: {_describe(e, self.nodes[name])}"
                log.info("%s", self.errors[name])
        self.connect_seconds = time.monotonic() - start
        if key_problems:
            self.close()
            unknown = any("unknown host key" in p for p in key_problems.values())
            hint = f"\n({_trust_hint(self.known_hosts)})" if unknown else ""
            raise HostKeyError(f"{self.known_hosts}: host keys refused:\n  "
                               + "\n  ".join(key_problems[n] for n in self.nodes if n in key_problems) + hint)

    def _connect(self, node) -> paramiko.SSHClient:
        delay = 0.2
        for attempt in range(CONNECT_RETRIES + 1):
            client = paramiko.SSHClient()
            known = client.get_host_keys()
            for entry in self._known.keys._entries:
                for hostname in entry.hostnames:
                    known.add(hostname, entry.key.get_name(), entry.key)
            client.set_missing_host_key_policy(_Policy(self))
            kwargs = dict(hostname=node.address, port=node.ssh_port, username=node.ssh_user,
                          timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                          auth_timeout=self.connect_timeout)
            if node.ssh_key:
                kwargs.update(key_filename=os.path.expanduser(node.ssh_key),
                              look_for_keys=False, allow_agent=False)
            try:
                with self._handshakes:
                    client.connect(**kwargs)
                transport = client.get_transport()
                presented = transport.get_remote_server_key()
                if presented.asbytes() in self._known.revoked:
                    raise RevokedHostKey(known_hosts_entry(node.address, node.ssh_port),
                                         presented, self._known.revoked[presented.asbytes()])
                transport.set_keepalive(30)
                # small request/reply packets: without this, Nagle + delayed ACK add ~40 ms to
                # every channel open
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if node.become:
                    self._check_sudo(node, client)
                return client
            except Exception as e:
                client.close()
                if isinstance(e, SudoFailed):
                    raise
                if attempt == CONNECT_RETRIES or not _transient(e):
                    raise
                log.debug("%s: retrying connect after %s", node.name, e)
                time.sleep(delay + random.uniform(0, delay))
                delay *= 2
        raise AssertionError("unreachable")

    def _check_sudo(self, node, client: paramiko.SSHClient) -> None:
        """One round trip: sudo works without a terminal (and with the password, if given)."""
        password = become.password(node)
        script = become.CHECK_NOPASSWD if password is None else become.CHECK_PASSWORD
        chan = client.get_transport().open_session(timeout=self.connect_timeout)
        try:
            chan.exec_command(script)
            stdin = None if password is None else password.encode() + b"\n"
            rc, out, err, _ = _exchange(chan, stdin, time.monotonic() + self.connect_timeout + 20)
        finally:
            chan.close()
        if rc != 0:
            raise SudoFailed(*become.problem(node, rc, err.decode(errors="replace"),
                                             password is not None))
        self.sudo[node.name] = None if b"nopasswd" in out else password

    def _as_root(self, name: str, cmd: str, stdin):
        """(command, stdin) that run `cmd` as root on `name`: unchanged for root logins."""
        if name not in self.sudo:
            return cmd, stdin
        password = self.sudo[name]
        if password is None:
            return become.wrap(cmd, False), stdin
        return become.wrap(cmd, True), _Source(password.encode() + b"\n", stdin)

    @property
    def reachable(self) -> list[str]:
        return [n for n in self.nodes if n in self.clients]

    def close(self) -> None:
        """Stop commands still running on the hosts, close every connection, never wait for
        the thread pool."""
        self._closing.set()
        self._stop_remote()
        for sftp in list(self._sftp.values()):
            try:
                sftp.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        for client in list(self.clients.values()):
            client.close()
        self._sftp.clear()
        self.clients.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _stop_remote(self, grace: float = 0.3) -> None:
        """Kill the process group of every command in flight, all hosts at once."""
        with self._running_lock:
            running = [(host, pids[0]) for host, pids in self._running.values() if pids]
        by_host: dict[str, list[int]] = {}
        for host, pid in running:
            by_host.setdefault(host, []).append(pid)

        def kill(host: str, pids: list[int]) -> None:
            groups = " ".join(f"-{p}" for p in pids)
            script = (f"kill -TERM -- {groups} 2>/dev/null; sleep {grace}; "
                      f"kill -KILL -- {groups} 2>/dev/null; true")
            try:
                transport = self.clients[host].get_transport()
                chan = transport.open_session(timeout=2)
                chan.settimeout(grace + 2)
                cmd, stdin = self._as_root(host, script, None)
                chan.exec_command(cmd)
                if stdin is not None:
                    chan.sendall(stdin.read(BUFSIZE))
                chan.shutdown_write()
                chan.recv_exit_status()
                chan.close()
            except Exception as e:  # noqa: BLE001 - best effort while closing
                log.info("%s: could not stop remote commands: %s", host, e)

        threads = [threading.Thread(target=kill, args=item, daemon=True)
                   for item in by_host.items() if item[0] in self.clients]
        for t in threads:
            t.start()
        deadline = time.monotonic() + grace + 2.5
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- commands ------------------------------------------------------------------------------
    def run(self, cmd: str | Mapping[str, str], hosts: Iterable[str] | None = None,
            stdin: bytes | str | Mapping[str, bytes | str] | None = None,
            timeout: float | None = None) -> dict[str, Result]:
        """Run `cmd` (or cmd[host]) on every host (or `hosts`) in parallel; {name: Result}.

        stdin may be one value for all or a dict per host. stdout and stderr are read while the
        command runs, so any amount of output is fine.
        """
        names = list(self.nodes) if hosts is None else list(hosts)
        timeout = timeout or self.command_timeout

        def one(name: str) -> Result:
            c = cmd[name] if isinstance(cmd, Mapping) else cmd
            data = stdin.get(name) if isinstance(stdin, Mapping) else stdin
            return self.run_one(name, c, data, timeout)

        futures = {n: self._pool.submit(one, n) for n in names}
        return self._results(futures)

    def _results(self, futures: dict) -> dict:
        """Wait for every future; on Ctrl-C (or any exception here) stop everything at once."""
        try:
            return {n: f.result() for n, f in futures.items()}
        except BaseException:
            self.close()
            raise

    def run_one(self, name: str, cmd: str, stdin: bytes | str | None = None,
                timeout: float | None = None) -> Result:
        start, started = time.monotonic(), time.time()
        if name not in self.nodes:
            return Result(None, error=f"{name}: not in this pool")
        if name not in self.clients:
            return Result(None, error=self.errors.get(name, f"{name}: not connected"))
        timeout = timeout or self.command_timeout
        try:
            transport = self.clients[name].get_transport()
            if transport is None or not transport.is_active():
                return Result(None, error=f"{name}: connection lost")
            if self._closing.is_set():
                return Result(None, error=f"{name}: interrupted", started=started)
            chan = transport.open_session(timeout=self.connect_timeout)
            pid: list[int] = []
            cmd, stdin = self._as_root(name, cmd, stdin)
            with self._running_lock:
                self._running[id(chan)] = (name, pid)
            try:
                # the first line of stdout is the session's pid (see the module docstring)
                chan.exec_command("echo $$\n" + cmd)
                rc, out, err, timed_out = _exchange(chan, stdin, start + timeout, pid,
                                                    self._closing)
            finally:
                with self._running_lock:
                    self._running.pop(id(chan), None)
                chan.close()
        except (paramiko.SSHException, OSError, EOFError) as e:
            return Result(None, error=f"{name}: {e or type(e).__name__}",
                          seconds=time.monotonic() - start, started=started)
        seconds = time.monotonic() - start
        if self._closing.is_set() and rc is None:
            return Result(None, error=f"{name}: interrupted", seconds=seconds, started=started)
        out_s, err_s = out.decode(errors="replace"), err.decode(errors="replace")
        if timed_out:
            return Result(None, out_s, err_s, seconds, f"{name}: timed out after {timeout:.0f} s", started)
        return Result(rc, out_s, err_s, seconds, started=started)

    # -- files -------------------------------------------------------------------------------
    def put(self, host: str, path: str, content: bytes, mode: int = 0o644, owner: str = "root",
            known_sha256: str | None = None) -> bool:
        """Write `content` to `path` on `host` atomically unless it is already there; True if written.

        `known_sha256` is the remote file's hash when the caller has it (facts); without it one
        quick remote check decides. Raises UserError when the host is unreachable.
        """
        want = hashlib.sha256(content).hexdigest()
        if known_sha256 is None:
            known = self.remote_state(host, [path]).get(path)
            if known and known[0] == want and known[1] == mode:
                return False
        elif known_sha256 == want:
            return False
        with self._host_locks[host]:
            self._write(host, path, content, mode, owner)
        return True

    def remote_state(self, host: str, paths: list[str]) -> dict[str, tuple[str, int] | None]:
        """{path: (sha256, mode) or None} in one command."""
        quoted = " ".join(shlex.quote(p) for p in paths)
        script = (f"for p in {quoted}; do if [ -f \"$p\" ]; then "
                  "printf '%s %s\\n' \"$(stat -c %a \"$p\")\" \"$(sha256sum < \"$p\" | cut -d' ' -f1)\"; "
                  "else echo -; fi; done")
        r = self.run_one(host, script, timeout=60)
        if r.rc != 0:
            raise UserError(r.error or f"{host}: checking {paths[0]}...: {r.stderr.strip()}")
        state = {}
        for p, line in zip(paths, r.stdout.splitlines()):
            parts = line.split()
            state[p] = (parts[1], int(parts[0], 8)) if len(parts) == 2 else None
        return state

    def put_many(self, files: Mapping[str, Mapping[str, tuple[bytes, int]]],
                 remote_hashes: Mapping[str, Mapping[str, str | None]] | None = None
                 ) -> dict[str, PutResult]:
        """Push {host: {path: (content, mode)}} in parallel, one SFTP session per host.

        A file whose remote sha256 (remote_hashes[host][path], e.g. from facts) matches is
        skipped; for a host missing from remote_hashes one quick check gets them all.
        """
        remote_hashes = remote_hashes or {}

        def one(host: str) -> PutResult:
            if host not in self.clients:
                return PutResult(error=self.errors.get(host, f"{host}: not connected"))
            wanted = files[host]
            try:
                if host in remote_hashes:
                    known = {p: remote_hashes[host].get(p) for p in wanted}
                    todo = [p for p, (c, _m) in wanted.items()
                            if known[p] != hashlib.sha256(c).hexdigest()]
                else:
                    state = self.remote_state(host, list(wanted)) if wanted else {}
                    todo = [p for p, (c, m) in wanted.items()
                            if state.get(p) != (hashlib.sha256(c).hexdigest(), m)]
                with self._host_locks[host]:
                    for p in todo:
                        content, mode = wanted[p]
                        self._write(host, p, content, mode, "root")
                return PutResult(changed=todo)
            except (UserError, paramiko.SSHException, OSError, EOFError) as e:
                return PutResult(error=f"{host}: {e}")

        futures = {h: self._pool.submit(one, h) for h in files}
        return self._results(futures)

    def fetch(self, host: str, remote: str, local: str | os.PathLike) -> str:
        """Copy `remote` from `host` into the new file `local` (0600 from its first byte, over
        the host's existing connection); returns the sha256 of what arrived. Raises UserError
        (the host is not connected) or OSError / paramiko.SSHException."""
        digest = hashlib.sha256()
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with self._host_locks[host], os.fdopen(fd, "wb") as out:
                if host in self.sudo:
                    self._cat_as_root(host, remote, out, digest)
                else:
                    sftp = self._sftp_for(host)
                    with sftp.open(remote, "rb") as f:
                        f.prefetch()
                        while chunk := f.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(local)  # ours (O_EXCL): never a partial copy left behind
            raise
        return digest.hexdigest()

    def _cat_as_root(self, host: str, remote: str, out, digest) -> None:
        """`cat remote` through sudo, streamed into `out` (fetch for a user other than root)."""
        if host not in self.clients:
            raise UserError(self.errors.get(host, f"{host}: not connected"))
        cmd, stdin = self._as_root(host, f"cat -- {shlex.quote(remote)}", None)
        chan = self.clients[host].get_transport().open_session(timeout=self.connect_timeout)
        try:
            chan.settimeout(self.command_timeout)
            chan.exec_command(cmd)
            if stdin is not None:
                chan.sendall(stdin.read(BUFSIZE))
            chan.shutdown_write()
            err = bytearray()
            while chunk := chan.recv(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(BUFSIZE)
            rc = chan.recv_exit_status()
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(BUFSIZE)
        finally:
            chan.close()
        if rc != 0:
            raise UserError(f"{host}: cannot read {remote}: {err.decode(errors='replace').strip()}")

    def send(self, host: str, local: str | os.PathLike, remote: str, mode: int = 0o600) -> None:
        """Stream the file `local` to `remote` on `host`: a temp file beside it (chmod-ed
        before any byte is written), then renamed; the file is never read whole into memory."""
        if host in self.sudo:
            with self._host_locks[host], open(local, "rb") as src:
                self._write_as_root(host, remote, src, mode, "root")
            return
        with self._host_locks[host]:
            sftp = self._sftp_for(host)
            directory = posixpath.dirname(remote) or "/"
            _makedirs(sftp, directory)
            tmp = posixpath.join(directory, f".{posixpath.basename(remote)}.tmp{os.getpid()}")
            try:
                with sftp.open(tmp, "wb") as f, open(local, "rb") as src:
                    sftp.chmod(tmp, mode)
                    f.set_pipelined(True)
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
                sftp.posix_rename(tmp, remote)
            except BaseException:
                try:
                    sftp.remove(tmp)
                except OSError:
                    pass
                raise

    def _sftp_for(self, host: str) -> paramiko.SFTPClient:
        sftp = self._sftp.get(host)
        if sftp is None:
            if host not in self.clients:
                raise UserError(self.errors.get(host, f"{host}: not connected"))
            sftp = self._sftp[host] = self.clients[host].open_sftp()
        return sftp

    def _owner_ids(self, host: str, owner: str) -> tuple[int, int]:
        if owner == "root":
            return 0, 0
        r = self.run_one(host, f"id -u {shlex.quote(owner)} && id -g {shlex.quote(owner)}", timeout=30)
        if r.rc != 0:
            raise UserError(f"{host}: user {owner} does not exist ({r.error or r.stderr.strip()})")
        uid, gid = r.stdout.split()
        return int(uid), int(gid)

    def _write(self, host: str, path: str, content: bytes, mode: int, owner: str) -> None:
        """SFTP to a temp file beside `path`, chmod before any byte is written, chown, rename."""
        if host in self.sudo:
            self._write_as_root(host, path, content, mode, owner)
            return
        sftp = self._sftp_for(host)
        directory = posixpath.dirname(path) or "/"
        _makedirs(sftp, directory)
        tmp = posixpath.join(directory, f".{posixpath.basename(path)}.tmp{os.getpid()}-{random.randrange(1 << 30)}")
        uid, gid = self._owner_ids(host, owner)
        try:
            with sftp.open(tmp, "wb") as f:
                sftp.chmod(tmp, mode)
                f.set_pipelined(True)
                f.write(content)
            if (uid, gid) != (0, 0):
                sftp.chown(tmp, uid, gid)
            sftp.posix_rename(tmp, path)
        except BaseException:
            try:
                sftp.remove(tmp)
            except OSError:
                pass
            raise
        log.debug("%s: wrote %s (%d bytes, mode %o)", host, path, len(content), mode)


    def _write_as_root(self, host: str, path: str, content, mode: int, owner: str) -> None:
        """The same through sudo, for a user other than root: a temp file beside `path` made by
        root with mktemp (0600), given its owner and mode, then filled from stdin (the data
        never appears in a command line) and renamed over `path`."""
        q = shlex.quote
        directory = posixpath.dirname(path) or "/"
        chown = "" if owner == "root" else f'chown -- {q(owner)}: "$t"\n'
        script = (f"set -e\numask 022\nmkdir -p -- {q(directory)}\n"
                  f"t=$(mktemp -- {q(posixpath.join(directory, '.' + posixpath.basename(path)))}.XXXXXXXX)\n"
                  "trap 'rm -f -- \"$t\"' EXIT\n"
                  f'{chown}chmod {mode:o} "$t"\ncat > "$t"\nmv -f -- "$t" {q(path)}\ntrap - EXIT\n')
        r = self.run_one(host, script, stdin=content)
        if r.rc != 0:
            raise UserError(r.error or f"{host}: writing {path}: {r.stderr.strip()[-300:]}")
        log.debug("%s: wrote %s as root through sudo (mode %o)", host, path, mode)


def _makedirs(sftp: paramiko.SFTPClient, directory: str) -> None:
    missing = []
    d = directory
    while d not in ("", "/"):
        try:
            sftp.stat(d)
            break
        except FileNotFoundError:
            missing.append(d)
            d = posixpath.dirname(d)
    for d in reversed(missing):
        sftp.mkdir(d, 0o755)


class _Source:
    """What a command reads on stdin: `head` (sudo's password line), then bytes, text or an
    open binary file read in chunks (never whole)."""

    def __init__(self, head: bytes = b"", rest=None):
        if isinstance(rest, _Source):
            head, rest = head + rest.head, rest.rest
        self.head = head
        self.rest = rest.encode() if isinstance(rest, str) else rest

    def read(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        if isinstance(self.rest, (bytes, bytearray)):
            out, self.rest = bytes(self.rest[:n]), self.rest[n:]
            return out
        return self.rest.read(n) if self.rest is not None else b""


def _exchange(chan: paramiko.Channel, stdin, deadline: float,
              pid: list | None = None, stop: threading.Event | None = None):
    """Feed stdin (bytes, text, a binary file or a _Source) and read stdout/stderr together
    until EOF; (rc, out, err, timed_out).

    With `pid` (a list), the first line of stdout is the remote shell's pid: it is appended to
    `pid` as soon as it arrives and left out of `out`. `stop` set: give up at once."""
    source = stdin if isinstance(stdin, _Source) else _Source(b"", stdin)
    pending = source.read(BUFSIZE)
    if not pending:
        chan.shutdown_write()
    out, err = bytearray(), bytearray()
    head = pid is not None
    while True:
        progressed = False
        while chan.recv_ready():
            out += chan.recv(BUFSIZE)
            progressed = True
            if head and b"\n" in out:
                line, _, rest = bytes(out).partition(b"\n")
                out = bytearray(rest)
                head = False
                if line.strip().isdigit():
                    pid.append(int(line))
        if stop is not None and stop.is_set():
            return None, bytes(out), bytes(err), False
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(BUFSIZE)
            progressed = True
        if pending and chan.send_ready():
            pending = pending[chan.send(pending):]
            if not pending:
                pending = source.read(BUFSIZE)
                if not pending:
                    chan.shutdown_write()
            progressed = True
        if (chan.eof_received or chan.closed) and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
        if time.monotonic() > deadline:
            return None, bytes(out), bytes(err), True
        if not progressed:
            select.select([chan], [], [], 0.01 if pending else 0.5)
    if head and bytes(out).strip().isdigit():  # only the pid line, without its newline
        out = bytearray()
    remaining = max(0.0, deadline - time.monotonic())
    if not chan.status_event.wait(min(remaining, 30)):
        return None, bytes(out), bytes(err), True
    return chan.recv_exit_status(), bytes(out), bytes(err), False
