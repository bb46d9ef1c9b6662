"""The package source of lab nodes: a flat apt repository the host builds and serves.

Nodes have no route out of the lab, so they install OS packages only from
`deb [trusted=yes] http://<bridge address>:PORT ./`. The host downloads the .debs (and their
dependencies missing from a given dpkg status file) through its own apt, indexes them with
dpkg-scanpackages and serves the folder with `python3 -m http.server` on the bridge address only.

`build_repo(dest)` is the same step for users: it writes an offline OS-package folder that any
Debian 12 machine can use as `deb [trusted=yes] file:/path/to/dest ./`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError
from . import CACHE_DIR
from .procs import flocked, pid_alive, start_background, stop_pidfile

PORT = 8090
DEBS_DIR = CACHE_DIR / "debs"
# What the provisioner's phases install on nodes (runtime, etcd, load balancers, time, tools).
NODE_PACKAGES = (
    "containerd", "runc", "etcd-server", "etcd-client", "haproxy", "keepalived", "chrony",
    "conntrack", "socat", "ethtool", "ebtables", "containernetworking-plugins", "ipset",
    "ipvsadm", "curl",
)
STAMP = ".packages"  # the package list the folder was built for


def build_repo(dest: str | os.PathLike, status_file: str | os.PathLike | None = None,
               packages: tuple[str, ...] = NODE_PACKAGES, log=print) -> Path:
    """Write a flat apt repository with `packages` and every dependency that a system with
    dpkg status `status_file` lacks into `dest`; return `dest`. Skips work already done.

    `status_file` defaults to the lab base's (a minimal Debian 12 with systemd, sshd and
    python3: what a Debian cloud image has at least)."""
    dest = Path(dest)
    if status_file is None:
        from .base import ensure_base

        status_file = ensure_base(log) / "var/lib/dpkg/status"
    with flocked(dest.parent / f".{dest.name}.lock"):
        return _build_repo(dest, status_file, packages, log)


def _build_repo(dest: Path, status_file, packages: tuple[str, ...], log) -> Path:
    status = hashlib.sha256(Path(status_file).read_bytes()).hexdigest()
    wanted = f"status {status}\n" + "\n".join(sorted(packages)) + "\n"
    if (dest / "Packages").exists() and _read(dest / STAMP) == wanted:
        return dest
    if not shutil.which("dpkg-scanpackages"):
        raise UserError("dpkg-scanpackages is not installed (run ./bootstrap.sh, or apt-get "
                        "install dpkg-dev)")
    (dest / "partial").mkdir(parents=True, exist_ok=True)
    if not glob.glob("/var/lib/apt/lists/*_Packages*"):
        _apt(["update", "-q"], "apt-get update")
    cmd = ["install", "--download-only", "-y", "-q", *packages,
           "-o", f"Dir::State::status={status_file}", "-o", f"Dir::Cache::archives={dest}"]
    log(f"lab: downloading {len(packages)} node packages and their dependencies to {dest}")
    try:
        _apt(cmd, "apt-get install --download-only")
    except UserError:  # stale package lists on the host: refresh once and retry
        _apt(["update", "-q"], "apt-get update")
        _apt(cmd, "apt-get install --download-only")
    index = subprocess.run(["dpkg-scanpackages", "--multiversion", ".", "/dev/null"], cwd=dest,
                           capture_output=True, text=True)
    if index.returncode != 0:
        raise UserError(f"dpkg-scanpackages failed in {dest}: {index.stderr.strip()}")
    (dest / "Packages").write_text(index.stdout)
    (dest / STAMP).write_text(wanted)
    shutil.rmtree(dest / "partial", ignore_errors=True)
    (dest / "lock").unlink(missing_ok=True)  # apt's lock file, not part of the repository
    return dest


def _apt(args: list[str], what: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
        raise UserError(f"{what} failed on the host (exit {done.returncode}); the host must "
                        f"reach its Debian mirror to fetch packages for the lab:\n{tail}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def serve(directory: Path, address: str, runtime: Path, port: int = PORT) -> None:
    """Serve `directory` on address:port in the background (pid file `runtime/http.pid`)."""
    pidfile = runtime / "http.pid"
    stop_pidfile(pidfile, "http.server")
    start_background([sys.executable, "-m", "http.server", str(port), "--bind", address,
                      "--directory", str(directory)], pidfile, runtime / "http.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            if not pid_alive(pidfile):
                break
            time.sleep(0.1)
    log = _read(runtime / "http.log") or ""
    raise UserError(f"the lab package source did not start on {address}:{port} (is the port "
                    f"in use?): {log.strip()[-300:]}")


def stop(runtime: Path) -> None:
    stop_pidfile(runtime / "http.pid", "http.server")


# -- single packages from another Debian suite (the test bundle's containerd) -------------------

SUITE_DEBS_DIR = CACHE_DIR / "suites"


def suite_debs(suite: str, packages: tuple[str, ...], log=print) -> dict[str, Path]:
    """The .deb of each package as Debian `suite` has it (e.g. sid's containerd 2.x), fetched
    once through the host's Debian mirror and cached in SUITE_DEBS_DIR/<suite>/: {name: .deb}.

    The host's own apt does the work with a separate sources list and lists folder, so its
    configuration (bookworm) is never touched: `apt-get update` then `apt-get download`, both
    with `-o Dir::Etc::sourcelist=... -o Dir::State::Lists=...`. No dependency is resolved:
    callers take single binaries out of the packages (dpkg-deb -x)."""
    from .base import host_mirror

    root = SUITE_DEBS_DIR / suite
    with flocked(SUITE_DEBS_DIR / f".{suite}.lock"):
        found = {p: _one_deb(root, p) for p in packages}
        if all(found.values()):
            return found
        lists = root / "lists"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        sources = root / "sources.list"
        sources.write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                           f"{host_mirror()} {suite} main\n")
        opts = ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-",
                "-o", f"Dir::State::Lists={lists}", "-o", "APT::Get::List-Cleanup=0"]
        log(f"lab: fetching {', '.join(packages)} from Debian {suite} into {root}")
        _apt(["update", "-q", *opts], f"apt-get update ({suite})")
        missing = [p for p, deb in found.items() if deb is None]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        done = subprocess.run(["apt-get", "download", "-q", *opts, *missing], cwd=root,
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
            raise UserError(f"apt-get download {' '.join(missing)} from Debian {suite} failed on "
                            f"the host (exit {done.returncode}):\n{tail}")
        found = {p: _one_deb(root, p) for p in packages}
        lost = [p for p, deb in found.items() if deb is None]
        if lost:
            raise UserError(f"apt-get download left no .deb of {', '.join(lost)} in {root}")
        return found


def _one_deb(root: Path, package: str) -> Path | None:
    """The newest cached .deb of `package` in `root` (apt names them NAME_VERSION_ARCH.deb)."""
    debs = sorted(root.glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


def deb_files(deb: Path, members: dict[str, str], dest: Path) -> dict[str, Path]:
    """Extract `members` ({path inside the package: name under dest}) of a .deb with
    `dpkg-deb -x` into a scratch folder and move them to dest/name: {name: path}."""
    import tempfile

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        done = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"dpkg-deb -x {deb} failed: {done.stderr.strip()}")
        out = {}
        for inside, name in members.items():
            src = Path(tmp) / inside.lstrip("/")
            if not src.is_file():
                raise UserError(f"{deb} has no {inside}")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, target)
            out[name] = target
    return out
