"""The lab's base root file system: one debootstrap'd Debian bookworm, built once and cached.

Nodes mount it read-only as the lower layer of their own overlayfs, so it must never hold
anything node specific: no ssh host keys, no apt sources pointing outside the lab.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from . import CACHE_DIR
from .procs import flocked

SUITE = "bookworm"
# What a Debian cloud or Vagrant image has: python3-apt for ansible's apt module, kmod for
# modprobe.d, python3-yaml (cloud-init's dependency there; the test stand-ins read YAML with it).
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2",
                 "python3-apt", "kmod", "ca-certificates", "python3-yaml")
BASE_DIR = CACHE_DIR / f"base-{SUITE}"
STAMP = ".provisioner-base"  # in BASE_DIR: what it was built with; a change rebuilds it
SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


def host_mirror(sources: tuple[Path, ...] = SOURCES) -> str:
    """The Debian mirror the host's own apt uses (never hard-coded: read at run time)."""
    found: list[tuple[bool, str]] = []  # (serves SUITE itself, uri)
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":
            for block in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", block, re.M))
                if "deb" in fields.get("Types", "").split() and fields.get("URIs"):
                    suites = fields.get("Suites", "").split()
                    found.append((SUITE in suites, fields["URIs"].split()[0]))
        else:
            for line in text.splitlines():
                m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
                if m:
                    found.append((m.group(2) == SUITE, m.group(1)))
    for exact, uri in found:
        if exact:
            return uri
    for _, uri in found:
        if "security" not in uri:
            return uri
    raise UserError(f"{' or '.join(map(str, sources))}: no Debian mirror found in the host's apt "
                    "sources (the lab builds its nodes from the mirror the host uses; add one)")


def ensure_base(log=print) -> Path:
    """Return the cached base, building it first if missing or built from another package
    list (about 60 s, 220 MB).

    Built in a temporary folder next to the cache and renamed into place, so a crash never
    leaves a half-built base behind.
    """
    wanted = f"{SUITE} {','.join(BASE_PACKAGES)}\n"
    if _stamp() == wanted:
        return BASE_DIR
    with flocked(CACHE_DIR / ".base.lock"):
        if _stamp() != wanted:  # nobody built it while we waited
            _build(wanted, log)
    return BASE_DIR


def _stamp() -> str | None:
    try:
        return (BASE_DIR / STAMP).read_text()
    except OSError:
        return None


def _build(wanted: str, log) -> None:
    if not shutil.which("debootstrap"):
        raise UserError("debootstrap is not installed (run ./bootstrap.sh, or apt-get install "
                        "debootstrap)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    for stale in CACHE_DIR.glob(f"base-{SUITE}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    mirror = host_mirror()
    tmp = Path(tempfile.mkdtemp(prefix=f"base-{SUITE}.tmp", dir=CACHE_DIR))
    log(f"lab: building the base file system with debootstrap from {mirror} (once; about a minute)")
    started = time.monotonic()
    cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
           SUITE, str(tmp), mirror]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join(done.stdout.splitlines()[-15:])
        raise UserError(f"debootstrap failed (exit {done.returncode}); last lines:\n{tail}")
    _make_generic(tmp)
    (tmp / STAMP).write_text(wanted)
    if BASE_DIR.exists():  # built with another package list
        old = BASE_DIR.with_name(f"{tmp.name}.old")
        BASE_DIR.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(BASE_DIR)
    log(f"lab: base ready in {time.monotonic() - started:.0f} s at {BASE_DIR}")


def _make_generic(root: Path) -> None:
    """Strip what must be per node or must not leave the lab: host keys, apt sources, caches."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/apt/sources.list").write_text(
        "# lab nodes install only from the host's package source (sources.list.d/lab.list)\n")
    for folder in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for f in (root / folder).glob("*"):
            if f.is_file():
                f.unlink()
    (root / "etc/resolv.conf").unlink(missing_ok=True)  # debootstrap copied the host's
    (root / "etc/resolv.conf").write_text("# lab nodes have no DNS: names are in /etc/hosts\n"
                                          "nameserver 127.0.0.1\n")
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("")
