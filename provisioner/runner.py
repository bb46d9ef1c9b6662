"""Run one playbook on some hosts through ansible-runner, with live progress and safe secrets.

    result = run_playbook(cluster, "03-etcd.yml", nodes, extravars={...}, hostvars={...},
                          state_dir=state.dir, known_hosts=state.known_hosts,
                          secrets={"bootstrap_token": ...}, progress=progress, phase="etcd")

Each run gets its own ansible-runner private data dir, kept for later reading:

    <state_dir>/runs/<UTC time>-<phase>/
      inventory/hosts.json   only the given hosts: address, port, user, key, role groups, hostvars
      env/extravars          the non-secret extravars (0600)
      artifacts/<id>/stdout  the full Ansible output (RunResult.log_path)
      artifacts/<id>/job_events/*.json

The newest KEEP_RUNS run dirs are kept; older ones are removed.

Secrets (the `secrets` argument, plus any extravar named in SECRET_VARS or ending in _token,
_key or _password) never go on the command line or into env/: they are written to a 0600 vars
file passed as `-e @file` and deleted when the run ends. Tasks that use them are marked
`no_log: true` in the playbooks; as a safety net every event is redacted before ansible-runner
writes it, and every file of the run dir is scrubbed of secret values after the run.

Ansible is set up for speed and strictness: pipelining, ControlPersist (masters reused across
the runs of one cluster), no fact gathering (facts come from the paramiko probe as hostvars),
strict host key checking against the cluster's own known_hosts file and nothing else.

ansible-playbook gets a minimal environment (`MINIMAL_ENV` plus the ANSIBLE_* settings made
here and by ansible-runner), never the controller's: ansible-runner writes the environment into
artifacts/<id>/command, so a secret held in a controller variable would land on disk.

Local files other users must not touch: ControlPersist sockets live in <state_dir>/cp when that
path is short enough for a socket, else in a fresh mkdtemp() folder removed after the run;
Ansible's local temp folder is inside the run dir. A pre-existing folder that is not ours or
not 0700 is refused (`UnsafeDirectory`), never reused.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat as stat_
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import become
from .errors import UserError
from .model import ROLE_GROUPS, Node

PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
KEEP_RUNS = 20
SECRET_VARS = {"bootstrap_token", "certificate_key", "k3s_token", "vrrp_password",
               "join_token", "encryption_key"}
SECRET_SUFFIXES = ("_token", "_key", "_password")
BECOME_PASSWORDS = "become_passwords"  # secret extravar: {host: sudo password}
REDACTED = "********"
# What ansible-playbook and ssh need from the controller's environment; nothing else is passed.
MINIMAL_ENV = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "USER", "LOGNAME", "SSH_AUTH_SOCK",
               "TMPDIR", "TZ")
MAX_SOCKET_DIR = 60  # ssh adds its own suffix to ControlPath; a socket path has 108 bytes
MESSAGE_CHARS = 400
# A host the probe has just reached that answers slowly is slow, not gone. SSH_TIMEOUT: ssh's
# ConnectTimeout, and Ansible's wait for sudo to answer (that + 2 s). SSH_RETRIES: how many
# more times Ansible tries a task whose connection failed (ssh exit 255) or whose sudo did not
# answer in time; every task is idempotent, so trying one again is safe. On 9 emulated VMs,
# the first task's ssh + sudo took over 17 s on 1-vCPU guests (15 s was the setting then).
SSH_TIMEOUT = 30
SSH_RETRIES = 2


@dataclass
class RunResult:
    ok: bool
    per_host: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    log_path: Path | None = None
    rc: int | None = None
    seconds: float = 0.0

    @property
    def changed(self) -> list[str]:
        return [h for h, c in self.per_host.items() if c.get("changed")]


def _flat(values):
    """The plain values inside `values` (a secret may be a {host: value} mapping)."""
    for v in values:
        if isinstance(v, dict):
            yield from _flat(v.values())
        elif isinstance(v, (list, tuple)):
            yield from _flat(v)
        else:
            yield v


def is_secret(name: str) -> bool:
    return name in SECRET_VARS or name.endswith(SECRET_SUFFIXES)


class Redactor:
    """Replaces known secret values in strings and nested event data."""

    def __init__(self, values=()):
        plain = {str(v) for v in _flat(values) if v is not None and len(str(v)) >= 4}
        # as JSON-encoded in event files too (a secret with a quote, backslash or newline)
        variants = plain | {json.dumps(v)[1:-1] for v in plain} | {
            json.dumps(v, ensure_ascii=False)[1:-1] for v in plain}
        # Longest first, so a secret containing another is replaced whole.
        self.values = sorted(variants, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.values)

    def text(self, s: str) -> str:
        for v in self.values:
            if v in s:
                s = s.replace(v, REDACTED)
        return s

    def data(self, obj):
        if not self.values:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            for k, v in obj.items():
                obj[k] = self.data(v)
            return obj
        if isinstance(obj, list):
            return [self.data(v) for v in obj]
        return obj

    def scrub_tree(self, root: Path) -> None:
        """Rewrite every file under root that holds a secret value (the safety net)."""
        if not self.values:
            return
        needles = [v.encode() for v in self.values]
        for path in root.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                for n in needles:
                    data = data.replace(n, REDACTED.encode())
                path.write_bytes(data)


# -- the private data dir -------------------------------------------------------------------------
def inventory(cluster, hosts: list[Node], hostvars: dict[str, dict] | None,
              passwords: dict[str, str] | None = None) -> dict:
    """Ansible inventory (hosts.json) for just `hosts`, grouped by role. A host in `passwords`
    reads its sudo password from the secret extravar BECOME_PASSWORDS (never from this file)."""
    hostvars = hostvars or {}
    all_hosts = {}
    for n in hosts:
        v = {"ansible_host": n.address, "ansible_port": n.ssh_port, "ansible_user": n.ssh_user,
             "ansible_python_interpreter": "/usr/bin/python3"}
        if n.ssh_key:
            v["ansible_ssh_private_key_file"] = os.path.expanduser(n.ssh_key)
        if n.become:  # every task as root through sudo; the password (if any) is a secret
            v.update(ansible_become=True, ansible_become_method="sudo", ansible_become_user="root")
            if n.name in (passwords or {}):
                v["ansible_become_password"] = "{{ %s[inventory_hostname] }}" % BECOME_PASSWORDS
        v.update(hostvars.get(n.name, {}))
        all_hosts[n.name] = v
    groups = {g: {"hosts": {n.name: None for n in hosts if n.has(g)}} for g in ROLE_GROUPS}
    return {"all": {"hosts": all_hosts, "children": groups}}


def _write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.chmod(path, 0o600)


def new_run_dir(state_dir: Path, phase: str) -> Path:
    runs = Path(state_dir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    os.chmod(runs, 0o700)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in phase) or "run"
    path = runs / f"{stamp}-{safe}"
    path.mkdir(mode=0o700)
    rotate(runs)
    return path


def rotate(runs: Path, keep: int = KEEP_RUNS) -> list[Path]:
    """Remove all but the newest `keep` run dirs (names sort by time); returns those removed."""
    dirs = sorted(p for p in runs.iterdir() if p.is_dir())
    old = dirs[:-keep] if keep else dirs
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


class UnsafeDirectory(UserError):
    """A folder we would put sockets or module payloads in exists but is not private to us."""


def private_dir(path: Path) -> Path:
    """Create `path` 0700, or accept it if it is already a real folder owned by us, 0700.

    Never chmod or reuse someone else's folder: another local user could have made it first
    (a ControlPath socket or a module payload in it could then be theirs)."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat_.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{path} exists and is not a folder (a symlink or a file): "
                              "refusing to use it; remove it and rerun")
    if st.st_uid != os.getuid():
        raise UnsafeDirectory(f"{path} belongs to uid {st.st_uid}, not to this user "
                              f"(uid {os.getuid()}): refusing to use it; remove it and rerun")
    if stat_.S_IMODE(st.st_mode) != 0o700:
        raise UnsafeDirectory(f"{path} has mode {stat_.S_IMODE(st.st_mode):o}, not 700: "
                              f"refusing to use it; check who changed it, then `chmod 700 {path}`")
    return path


def control_path_dir(state_dir: Path, known_hosts: Path | None = None) -> tuple[Path, bool]:
    """Where SSH ControlPersist sockets live, and whether the caller must remove it after the run.

    <state_dir>/cp (masters reused across the runs of one cluster) when the state folder is ours
    and not writable by others and the path leaves room for ssh's socket name; else a fresh
    mkdtemp() folder for this run only (0700, created atomically: nobody can make it first)."""
    state = Path(state_dir).resolve()
    path = state / "cp"
    try:
        st = os.stat(state)
        safe_parent = st.st_uid == os.getuid() and not st.st_mode & 0o022
    except OSError:
        safe_parent = False
    if len(str(path)) <= MAX_SOCKET_DIR and safe_parent:
        return private_dir(path), False
    return Path(tempfile.mkdtemp(prefix="pv-cp-")), True


def ansible_env(known_hosts: Path, control_dir: Path, timeout: int = SSH_TIMEOUT) -> dict[str, str]:
    kh = shlex.quote(str(Path(known_hosts).resolve()))
    ssh_args = ("-o ControlMaster=auto -o ControlPersist=60s "
                f"-o UserKnownHostsFile={kh} -o GlobalKnownHostsFile=/dev/null "
                "-o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes "
                "-o ServerAliveInterval=30")
    bindir = str(Path(sys.executable).parent)
    base = {k: os.environ[k] for k in MINIMAL_ENV if k in os.environ}
    if not (base.get("LC_ALL") or base.get("LANG")):
        base["LANG"] = "C.UTF-8"  # ansible refuses a non-UTF-8 locale
    return base | {
        "PATH": bindir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": ssh_args,
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_TIMEOUT": str(timeout),
        "ANSIBLE_SSH_RETRIES": str(SSH_RETRIES),
        "ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles"),
        "ANSIBLE_LIBRARY": str(PLAYBOOKS / "library"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_SYSTEM_WARNINGS": "False",
        "ANSIBLE_INTERPRETER_PYTHON": "/usr/bin/python3",
    }


def minimal_env(env: dict[str, str], ours: dict[str, str]) -> dict[str, str]:
    """ansible-runner's environment (the controller's, plus ours, plus its own settings) cut
    down to ours and what ansible-runner itself adds (callback plugin, artifact dir)."""
    keep = {}
    for k, v in env.items():
        if k in ours:
            keep[k] = ours[k]
        elif k.startswith(("ANSIBLE_", "AWX_", "RUNNER_")) and os.environ.get(k) != v:
            keep[k] = v
    return keep


def _playbook_path(playbook: str) -> Path:
    p = Path(playbook)
    if not p.is_absolute():
        p = PLAYBOOKS / p
    if not p.is_file():
        raise FileNotFoundError(f"playbook {p} does not exist")
    return p


# -- results --------------------------------------------------------------------------------------
def task_message(res: dict) -> str:
    """The useful part of a failed task's result: msg, else the last lines of stderr/stdout."""
    if not isinstance(res, dict):
        return str(res)[:MESSAGE_CHARS]
    if res.get("censored"):
        return "output hidden (no_log); rerun the task by hand to see it"
    parts = []
    msg = res.get("msg")
    if msg:
        parts.append(str(msg))
    for key in ("stderr", "stdout"):
        text = (res.get(key) or "").strip()
        if text and text not in parts:
            lines = text.splitlines()
            parts.append("\n".join(lines[-5:]))
            break
    if not parts and res.get("results"):  # a loop: the first failed item
        for item in res["results"]:
            if isinstance(item, dict) and item.get("failed"):
                return f"item {item.get('item')!r}: {task_message(item)}"
    text = " | ".join(p.strip() for p in parts if p.strip()) or "failed (no message)"
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "..."


def _tail(path: Path | None, lines: int = 8) -> str:
    if not path or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


# -- running --------------------------------------------------------------------------------------
def run_playbook(cluster, playbook: str, hosts: list[Node], extravars: dict | None,
                 hostvars: dict[str, dict] | None, state_dir: Path, known_hosts: Path,
                 progress=None, phase: str = "", secrets: dict | None = None,
                 forks: int | None = None, timeout: int = SSH_TIMEOUT) -> RunResult:
    """Run `playbook` (a name under playbooks/ or an absolute path) on `hosts` only.

    Returns RunResult; never raises for task failures or unreachable hosts (those are data).
    """
    import ansible_runner  # imported here: it is slow to import and only needed to apply

    book = _playbook_path(playbook)
    run_dir = new_run_dir(Path(state_dir), phase or book.stem)
    names = [n.name for n in hosts]
    plain = {k: v for k, v in (extravars or {}).items() if not is_secret(k)}
    hidden = {k: v for k, v in (extravars or {}).items() if is_secret(k)}
    hidden.update(secrets or {})
    passwords = {n.name: p for n in hosts if n.become and (p := become.password(n)) is not None}
    if passwords:
        hidden[BECOME_PASSWORDS] = passwords
    redact = Redactor(hidden.values())
    if progress is not None:
        if hasattr(progress, "add_secrets"):
            progress.add_secrets(list(_flat(hidden.values())))
        if hasattr(progress, "phase"):
            progress.phase(phase or book.stem, names)

    _write_private(run_dir / "inventory" / "hosts.json",
                   json.dumps(inventory(cluster, hosts, hostvars, passwords), indent=1))
    _write_private(run_dir / "env" / "extravars", json.dumps(plain, indent=1))
    cmdline = []
    secret_file = None
    if hidden:
        fd, name = tempfile.mkstemp(prefix=".secrets-", suffix=".json", dir=run_dir)
        secret_file = Path(name)
        with os.fdopen(fd, "w") as f:  # mkstemp creates it 0600
            json.dump(hidden, f)
        cmdline = ["-e", f"@{secret_file}"]

    failures: list[tuple[str, str, str]] = []
    stats: dict = {}

    def on_event(event: dict) -> bool:
        redact.data(event)  # mutated in place: ansible-runner writes it after this returns
        kind = event.get("event", "")
        data = event.get("event_data", {}) or {}
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            failures.append((data.get("host", "?"), data.get("task", "?"),
                             ("unreachable: " if kind == "runner_on_unreachable" else "")
                             + task_message(data.get("res", {}))))
        elif kind == "playbook_on_stats":
            stats.update(data)
        if progress is not None:
            progress.event(event)
        return True

    control_dir, temporary = control_path_dir(Path(state_dir), Path(known_hosts))
    env = ansible_env(Path(known_hosts), control_dir, timeout)
    env["ANSIBLE_LOCAL_TEMP"] = str(private_dir(run_dir / "tmp"))
    started = datetime.now(timezone.utc)
    interrupted = threading.Event()
    # ansible-runner's default cancel callback installs SIGINT/SIGTERM handlers for good, after
    # which Ctrl-C never raises KeyboardInterrupt again in this process: ours last one run.
    saved = None
    if threading.current_thread() is threading.main_thread():
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in saved:
            signal.signal(sig, lambda *_: interrupted.set())
    try:
        r = ansible_runner.interface.init_runner(
            private_data_dir=str(run_dir), playbook=str(book), envvars=env,
            cmdline=" ".join(shlex.quote(c) for c in cmdline) or None,
            event_handler=on_event, quiet=True, limit=",".join(names) or None,
            forks=forks or max(5, len(names)), cancel_callback=interrupted.is_set,
        )
        r.config.env = minimal_env(r.config.env, env)
        r.run()
    finally:
        if saved:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        if secret_file is not None:
            secret_file.unlink(missing_ok=True)
        if temporary:
            shutil.rmtree(control_dir, ignore_errors=True)
        redact.scrub_tree(run_dir)
    if interrupted.is_set():
        raise KeyboardInterrupt  # ansible-playbook was stopped; the caller stops too
    seconds = (datetime.now(timezone.utc) - started).total_seconds()

    log_path = Path(r.config.artifact_dir) / "stdout"
    per_host = {}
    for n in names:
        per_host[n] = {
            "ok": stats.get("ok", {}).get(n, 0),
            "changed": stats.get("changed", {}).get(n, 0),
            "failed": stats.get("failures", {}).get(n, 0),
            "unreachable": stats.get("dark", {}).get(n, 0),
            "skipped": stats.get("skipped", {}).get(n, 0),
        }
    if r.rc != 0 and not failures:
        tail = redact.text(_tail(log_path)) or f"ansible-playbook exited {r.rc} ({r.status})"
        failures.append(("*", book.name, tail[-MESSAGE_CHARS * 2:]))
    ok = r.rc == 0 and r.status == "successful" and not failures
    return RunResult(ok=ok, per_host=per_host, failures=failures, log_path=log_path, rc=r.rc,
                     seconds=seconds)
