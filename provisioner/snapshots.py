"""The controller's etcd backups: `<state>/<cluster>/backups/<UTC time>.db` (0600, folder 0700)
with `<UTC time>.json` beside it, the metadata a restore needs:

    {"format": 1, "file": "20251129T190312Z.db", "created": "2025-11-29T19:03:12Z",
     "cluster_name": "lab", "distribution": "kubeadm", "etcd": "external",
     "sha256": "...", "size": 1056800,
     "member": {"name": "cp1", "address": "10.90.0.11", "id": "c82c8e05d3da77d3"},
     "etcd_version": "3.4.23", "revision": 1042, "cluster_id": "8e6ea075ba93b236",
     "members": [{"name": "cp1", "id": "c82c...", "peer_urls": ["https://10.90.0.11:2380"],
                  "client_urls": ["https://10.90.0.11:2379"]}, ...]}

`revision`, `etcd_version`, `cluster_id` and member IDs may be null (k3s snapshots are taken by
k3s itself, without etcdctl). `read_metadata` checks a file and names what is wrong with it;
`verify` checks a snapshot against its metadata and this cluster before anything changes;
`rotate` keeps the newest `backup_keep` pairs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from .errors import UserError
from .model import Cluster
from .state import State, write_atomic

FORMAT = 1
NAME = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")  # <UTC time>[-N] (N: a second one that second)
SHA256 = re.compile(r"^[0-9a-f]{64}$")
HEX = re.compile(r"^[0-9a-f]{1,16}$")
KINDS = ("external", "stacked", "k3s")


def folder(cluster: Cluster) -> Path:
    return State(cluster).dir / "backups"


def make_folder(cluster: Cluster) -> Path:
    d = folder(cluster)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    return d


def utc_stamp(now: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def iso(stamp: str) -> str:
    """20251129T190312Z -> 2025-11-29T19:03:12Z"""
    t = time.strptime(stamp[:16], "%Y%m%dT%H%M%SZ")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", t)


def new_name(directory: Path, now: float | None = None) -> str:
    """A name for a new backup: the UTC time, with -2, -3... when that second is taken."""
    stamp = utc_stamp(now)
    name, n = stamp, 1
    while (directory / f"{name}.db").exists() or (directory / f"{name}.json").exists():
        n += 1
        name = f"{stamp}-{n}"
    return name


def sort_key(stem: str) -> tuple[str, int]:
    m = NAME.match(stem)
    return (m.group(1), int(m.group(2) or 1)) if m else ("", 0)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_metadata(path: Path, meta: dict) -> None:
    write_atomic(path, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode(), 0o600)


def backups(directory: Path) -> list[str]:
    """Stems of the backups in `directory` (a .db or a .json of our name pattern), oldest first.
    Anything else in the folder is not ours and never touched."""
    if not directory.is_dir():
        return []
    stems = {p.stem for p in directory.iterdir()
             if p.suffix in (".db", ".json") and NAME.match(p.stem) and p.is_file()}
    return sorted(stems, key=sort_key)


def rotate(directory: Path, keep: int) -> list[str]:
    """Remove all but the newest `keep` backups (the .db and .json of each); returns the stems
    removed, oldest first. A half-written `.<name>.part` of a running backup is not a backup."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    stems = backups(directory)
    gone = stems[:-keep] if len(stems) > keep else []
    for stem in gone:
        for suffix in (".db", ".json"):
            (directory / f"{stem}{suffix}").unlink(missing_ok=True)
    return gone


# -- reading and checking metadata --------------------------------------------------------------

def _problems(meta) -> list[str]:
    if not isinstance(meta, dict):
        return ["it is not a JSON object"]
    out = []

    def want(key, kinds, what, check=None, nullable=False):
        if key not in meta:
            out.append(f"{key}: missing")
            return
        value = meta[key]
        if value is None and nullable:
            return
        if isinstance(value, bool) or not isinstance(value, kinds):
            out.append(f"{key}: must be {what}, got {json.dumps(value)[:40]}")
        elif check is not None and not check(value):
            out.append(f"{key}: {json.dumps(value)[:60]} is not {what}")

    want("format", int, f"format {FORMAT}", lambda v: v == FORMAT)
    want("file", str, "a file name <UTC time>.db",
         lambda v: v.endswith(".db") and bool(NAME.match(v[:-3])))
    want("created", str, "a UTC time like 2025-11-29T19:03:12Z",
         lambda v: bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", v)))
    want("cluster_name", str, "a cluster name", lambda v: bool(v))
    want("distribution", str, "kubeadm or k3s", lambda v: v in ("kubeadm", "k3s"))
    want("etcd", str, "external, stacked or k3s", lambda v: v in KINDS)
    want("sha256", str, "64 lowercase hex digits", lambda v: bool(SHA256.match(v)))
    want("size", int, "a size in bytes (> 0)", lambda v: v > 0)
    want("revision", int, "a revision (>= 0)", lambda v: v >= 0, nullable=True)
    want("etcd_version", str, "a version", nullable=True)
    want("cluster_id", str, "a hex cluster ID", lambda v: bool(HEX.match(v)), nullable=True)
    want("member", dict, "the member it came from ({name, address, id})",
         lambda v: isinstance(v.get("name"), str) and bool(v["name"]))
    want("members", list, "the member list ([{name, peer_urls}])",
         lambda v: bool(v) and all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                   and isinstance(m.get("peer_urls"), list) for m in v))
    return out


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata in `path`, checked; UserError naming the file and every problem."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing: a snapshot is restored only with the metadata file "
                        "cluster.backup wrote beside it (sha256, cluster name, members)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e})") from None
    problems = _problems(meta)
    if problems:
        raise UserError(f"{path}: not a backup metadata file of this provisioner:\n  "
                        + "\n  ".join(problems))
    return meta


def metadata_path(snapshot: str | os.PathLike) -> Path:
    p = Path(snapshot)
    return p.with_suffix(".json") if p.suffix == ".db" else p.with_name(p.name + ".json")


def verify(snapshot: str | os.PathLike, cluster: Cluster) -> dict:
    """Everything a restore checks on the controller before it connects: the metadata file,
    the snapshot's size and sha256, its cluster and distribution. Returns the metadata with
    `path` (absolute) added; UserError with what is wrong, and nothing changed anywhere."""
    path = Path(snapshot).expanduser().absolute()
    if path.suffix == ".json":  # the metadata file was named: its snapshot is beside it
        path = path.with_suffix(".db")
    if not path.is_file():
        raise UserError(f"--snapshot {snapshot}: no such file")
    meta = read_metadata(metadata_path(path))
    size = path.stat().st_size
    refuse = "refused: nothing was changed on any host"
    if size != meta["size"]:
        raise UserError(f"{path}: {size} bytes, its metadata says {meta['size']}: the snapshot is "
                        f"truncated or damaged; {refuse} (pick another backup in {path.parent})")
    digest = sha256_file(path)
    if digest != meta["sha256"]:
        raise UserError(f"{path}: sha256 {digest} does not match {meta['sha256']} in its metadata:"
                        f" the snapshot is damaged; {refuse} (pick another backup in "
                        f"{path.parent})")
    if meta["cluster_name"] != cluster.cluster_name:
        raise UserError(f"{path}: a snapshot of cluster {meta['cluster_name']!r}, not of "
                        f"{cluster.cluster_name!r} ({cluster.source}); {refuse}")
    if meta["distribution"] != cluster.distribution:
        raise UserError(f"{path}: a {meta['distribution']} snapshot, the inventory says "
                        f"{cluster.distribution}; {refuse}")
    return {**meta, "path": str(path)}
