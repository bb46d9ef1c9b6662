"""Background processes of the lab, tracked by pid files so a later run can find and end them."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def flocked(path: Path):
    """Hold an exclusive lock on `path` (waits): one builder of a shared cache at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start_background(cmd: list[str], pidfile: Path, logfile: Path) -> int:
    """Start `cmd` in its own session (it outlives this process); write its pid to `pidfile`."""
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True)
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pidfile: Path, must_contain: str) -> int | None:
    """The pid in `pidfile` if that process still runs and its command line contains
    `must_contain` (a reused pid of some other program is never returned)."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if must_contain in cmdline(pid) and not _zombie(pid) else None


def pid_alive(pidfile: Path) -> bool:
    return read_pid(pidfile, "") is not None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of `pids` runs (reaping our own children); return those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if os.path.exists(f"/proc/{pid}") and not _zombie(pid):
                alive.append(pid)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_pidfile(pidfile: Path, must_contain: str, timeout: float = 5) -> None:
    """End the process named by `pidfile` (TERM, then KILL) and remove the file."""
    pid = read_pid(pidfile, must_contain)
    if pid:
        kill([pid], signal.SIGTERM)
        if wait_gone([pid], timeout):
            kill([pid], signal.SIGKILL)
            wait_gone([pid], 5)
    pidfile.unlink(missing_ok=True)
