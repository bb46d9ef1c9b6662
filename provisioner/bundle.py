"""The offline bundle: every binary and image a cluster needs, fetched once, checked on every use.

    <bundle>/
      kubeadm-v1.36.4-linux-amd64/     # <distribution>-<version>-linux-<arch>
        kubeadm kubelet kubectl        # dl.k8s.io
        crictl                         # from the cri-tools release tarball
        cni-plugins/                   # from the containernetworking/plugins tarball
        containerd/                    # containerd, containerd-shim-runc-v2, ctr (upstream tarball)
        runc                           # opencontainers/runc release binary
        SHA256SUMS                     # sha256 of every file above (`sha256sum -c` reads it)
        SOURCES.json                   # per artifact: URL, the published sha256, and the sha256
                                       # of every file taken from it (the authority)
        images/*.tar                   # one OCI archive per image (provisioner.images)
        IMAGES.json                    # image ref -> archive, manifest digest, source
      k3s-v1.36.4+k3s1-linux-amd64/
        k3s  k3s-airgap-images-amd64.tar.zst  SHA256SUMS  SOURCES.json

What goes in is one table (provisioner/versions.py). `fetch` downloads from the upstream release
sites (or mirrors of them) and checks every download against its published checksum before
anything is moved into place; what it took is recorded in SOURCES.json. `locate` (cluster.up,
bundle.verify) finds the folder for a cluster and, before anything is pushed to a node, checks
that SHA256SUMS names only plain paths inside the folder, that it agrees with SOURCES.json, and
that every file matches. `rows` is what `bundle.list` prints: every artifact without a download.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import images, versions
from .errors import UserError
from .model import Cluster

DEFAULT_DIR = "bundle"
DEFAULT_MIRROR = "https://dl.k8s.io"
DEFAULT_GITHUB = "https://github.com"
SUMS = "SHA256SUMS"
SOURCES = "SOURCES.json"
USER_AGENT = "provisioner-bundle/0.1 (python-urllib)"
TIMEOUT = 30  # seconds without a byte from the server
CHUNK = 1 << 20
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")
# one path component of a bundle file: no "..", no "/", no leading dot (temp files start with one)
COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")

NO_ROUTE = ("no route to the download site ({url}: {reason}): run bundle.fetch on a machine "
            "with internet access, copy the bundle folder, and pass --bundle DIR or set "
            "bundle_dir")
REFETCH = "rerun bundle.fetch, or copy the bundle folder again from where it was fetched"


@dataclass(frozen=True)
class Artifact:
    """One published file and the checksum published next to it.

    kind "binary": saved as `name` (0755). kind "file": saved as `name` (0644). kind "archive":
    its executable members are saved under `name` ("crictl" for a single file, "cni-plugins/"
    for a folder of them); `members` limits which (by base name), and all of them must be there.
    """

    key: str  # what and which version: a rerun skips it when SOURCES.json has it
    url: str
    checksum_url: str
    name: str
    kind: str = "binary"
    checksum_for: str | None = None  # the line to use in a multi-file checksum list
    members: tuple[str, ...] = ()
    component: str = ""
    version: str = ""


@dataclass
class Bundle:
    dir: Path
    files: dict[str, tuple[Path, str]] = field(default_factory=dict)  # name -> (path, sha256)
    images: dict[str, dict] | None = None  # IMAGES.json; None: a bundle of binaries only


@dataclass(frozen=True)
class Row:
    """One line of `bundle.list`: what the cluster needs, from where, checked against what."""

    kind: str
    name: str
    version: str
    source: str
    checksum: str


# ---------------------------------------------------------------------------------------------
# What a cluster needs
# ---------------------------------------------------------------------------------------------


def folder_name(cluster: Cluster, arch: str = "amd64") -> str:
    return f"{cluster.distribution}-{cluster.kubernetes_version}-linux-{arch}"


def containerd_from_bundle(cluster: Cluster) -> bool:
    """kubeadm clusters run the bundle's containerd and runc unless the inventory asks for the
    OS package (containerd_source: os)."""
    return not cluster.is_k3s and getattr(cluster, "containerd_source", "bundle") != "os"


def needed(cluster: Cluster, arch: str = "amd64") -> list[str]:
    """The bundle files cluster.up cannot do without."""
    if cluster.is_k3s:  # its airgap images are optional: without them nodes pull
        return ["k3s"]
    out = ["kubeadm", "kubelet", "kubectl", "crictl"]
    if containerd_from_bundle(cluster):
        out += [f"containerd/{b}" for b in CONTAINERD_BINARIES] + ["runc"]
    return out


def artifacts(cluster: Cluster, mirror: str | None = None, github_mirror: str | None = None,
              arch: str = "amd64") -> list[Artifact]:
    """The files `fetch` downloads for this cluster, with the URLs they come from.

    mirror replaces the Kubernetes release site (kubeadm) or the k3s release base URL (k3s);
    github_mirror replaces https://github.com for the assets hosted on GitHub releases."""
    gh = (github_mirror or getattr(cluster, "github_mirror", None) or DEFAULT_GITHUB).rstrip("/")
    version = cluster.kubernetes_version
    pin = versions.pins(version)
    if cluster.is_k3s:
        base = mirror or cluster.download_mirror
        if not mirror and base.rstrip("/") == DEFAULT_MIRROR:  # the kubeadm default
            base = f"{gh}/k3s-io/k3s/releases/download"
        base = f"{base.rstrip('/')}/{urllib.parse.quote(version)}"
        asset = "k3s" if arch == "amd64" else f"k3s-{arch}"
        images = f"k3s-airgap-images-{arch}.tar.zst"
        sums = f"{base}/sha256sum-{arch}.txt"
        return [Artifact(f"k3s {version}", f"{base}/{asset}", sums, "k3s", checksum_for=asset,
                         component="k3s", version=version),
                Artifact(f"k3s-airgap-images {version}", f"{base}/{images}", sums, images,
                         "file", checksum_for=images, component="k3s airgap images",
                         version=version)]
    base = (mirror or cluster.download_mirror).rstrip("/")
    out = [Artifact(f"{b} {version}", f"{base}/release/{version}/bin/linux/{arch}/{b}",
                    f"{base}/release/{version}/bin/linux/{arch}/{b}.sha256", b,
                    component=b, version=version)
           for b in ("kubeadm", "kubelet", "kubectl")]
    tools = f"{gh}/kubernetes-sigs/cri-tools/releases/download/{pin.crictl}"
    tgz = f"crictl-{pin.crictl}-linux-{arch}.tar.gz"
    out.append(Artifact(f"crictl {pin.crictl}", f"{tools}/{tgz}", f"{tools}/{tgz}.sha256",
                        "crictl", "archive", component="crictl", version=pin.crictl))
    plugins = f"{gh}/containernetworking/plugins/releases/download/{pin.cni_plugins}"
    tgz = f"cni-plugins-linux-{arch}-{pin.cni_plugins}.tgz"
    out.append(Artifact(f"cni-plugins {pin.cni_plugins}", f"{plugins}/{tgz}",
                        f"{plugins}/{tgz}.sha256", "cni-plugins/", "archive",
                        component="CNI plugins", version=pin.cni_plugins))
    if containerd_from_bundle(cluster):
        rel = f"{gh}/containerd/containerd/releases/download/{pin.containerd}"
        tgz = f"containerd-{pin.containerd.lstrip('v')}-linux-{arch}.tar.gz"
        out.append(Artifact(f"containerd {pin.containerd}", f"{rel}/{tgz}",
                            f"{rel}/{tgz}.sha256sum", "containerd/", "archive",
                            checksum_for=tgz, members=CONTAINERD_BINARIES,
                            component="containerd", version=pin.containerd))
        rel = f"{gh}/opencontainers/runc/releases/download/{pin.runc}"
        out.append(Artifact(f"runc {pin.runc}", f"{rel}/runc.{arch}", f"{rel}/runc.sha256sum",
                            "runc", checksum_for=f"runc.{arch}", component="runc",
                            version=pin.runc))
    return out


def rows(cluster: Cluster, mirror: str | None = None, github_mirror: str | None = None,
         arch: str = "amd64") -> list[Row]:
    """Every artifact the cluster needs, as `bundle.list` shows it; nothing is downloaded.
    (Other kinds of artifacts, e.g. container images, extend this list.)"""
    out = []
    for a in artifacts(cluster, mirror, github_mirror, arch):
        if a.members:
            name = ", ".join(a.name + m for m in a.members)
        elif a.name.endswith("/"):
            name = a.name + "* (every executable)"
        else:
            name = a.name
        check = a.checksum_url + (f" (line {a.checksum_for})" if a.checksum_for else "")
        out.append(Row(a.kind, name, a.version, a.url, check))
    return out


# ---------------------------------------------------------------------------------------------
# Hashing (cached by size and mtime for the life of the process)
# ---------------------------------------------------------------------------------------------

_hashes: dict[str, tuple[int, int, str]] = {}


def sha256_file(path: Path) -> str:
    st = path.stat()
    cached = _hashes.get(str(path))
    if cached and cached[:2] == (st.st_size, st.st_mtime_ns):
        return cached[2]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    _hashes[str(path)] = (st.st_size, st.st_mtime_ns, h.hexdigest())
    return h.hexdigest()


def safe_name(name: str) -> bool:
    """A plain relative path inside the bundle: components of letters, digits and ._+-, none
    empty, "." or "..", none starting with a dot; no absolute path, no backslash."""
    parts = name.split("/")
    return bool(name) and all(COMPONENT.fullmatch(p) for p in parts)


def read_sums(folder: Path) -> dict[str, str]:
    """SHA256SUMS as {name: sha256}; every entry must be a plain path inside the folder, once."""
    path = folder / SUMS
    if not path.exists():
        return {}
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {e.start}): the file is damaged "
                        f"({REFETCH})") from None
    sums: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](\S.*)", line.strip())
        if not m:
            raise UserError(f"{path}:{n}: not a sha256sum line ({REFETCH})")
        name = m.group(2)
        if not safe_name(name):
            raise UserError(f"{path}:{n}: {name!r} is not a plain relative path inside the bundle "
                            f"(no '..', absolute paths or hidden names): refused; this bundle was "
                            f"not made by bundle.fetch or was altered ({REFETCH})")
        if name in sums:
            raise UserError(f"{path}:{n}: {name} is listed twice: refused ({REFETCH})")
        sums[name] = m.group(1)
    return sums


def write_sources(folder: Path, sources: dict) -> None:
    """SOURCES.json, then SHA256SUMS derived from it: the two always agree when we write them.
    sources: {artifact key: {"url", "checksum_url", "sha256" (published), "files": {name:
    sha256}}}."""
    for name, text in _texts(sources).items():
        _atomic_write(folder / name, text)


def _temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new file in folder that nobody else made: mkstemp opens it O_CREAT|O_EXCL (a planted
    file or symlink of that name makes it pick another), 0600, random name."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name.replace('/', '_')}.", suffix=".part")
    return fd, Path(tmp)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = _temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plain_file(folder: Path, name: str) -> Path | None:
    """folder/name when every component below folder is a real directory / regular file (no
    symlink anywhere), else None."""
    path = folder
    parts = name.split("/")
    for i, part in enumerate(parts):
        path = path / part
        try:
            st = os.lstat(path)
        except OSError:
            return None
        last = i == len(parts) - 1
        if not (stat.S_ISREG(st.st_mode) if last else stat.S_ISDIR(st.st_mode)):
            return None
    return path


def _real_dir(folder: Path, sub: str) -> Path:
    """folder/sub as a real directory made by us (a symlink or file there is refused)."""
    path = folder / sub
    try:
        path.mkdir(mode=0o755)
    except FileExistsError:
        pass
    if path.is_symlink() or not path.is_dir():
        raise UserError(f"{path}: not a plain folder (a symlink or a file is in the way): "
                        f"refused; remove it and rerun bundle.fetch")
    return path


# ---------------------------------------------------------------------------------------------
# locate / verify
# ---------------------------------------------------------------------------------------------


def default_dir(cluster: Cluster, bundle_dir: Path | str | None = None) -> Path:
    """--bundle, else the inventory's bundle_dir, else ./bundle."""
    return Path(bundle_dir or cluster.bundle_dir or DEFAULT_DIR)


def locate(cluster: Cluster, bundle_dir: Path | None = None, arch: str = "amd64",
           deep: bool = False) -> Bundle | None:
    """The verified bundle folder for this cluster, or None when ./bundle has none.

    A folder named by --bundle or bundle_dir must hold the cluster's version (UserError
    otherwise). Every file listed in SHA256SUMS must be present and match; anything else is a
    UserError naming the file. The binaries the cluster needs must all be listed; with images
    (IMAGES.json), every image the cluster needs too (deep: each archive's blobs checked
    against their digests, what bundle.verify does)."""
    folder = default_dir(cluster, bundle_dir)
    if folder.name != folder_name(cluster, arch):  # --bundle may name the inner folder too
        folder = folder / folder_name(cluster, arch)
    if not folder.is_dir():
        if bundle_dir or cluster.bundle_dir:  # asked for by name: say so now, not later
            raise UserError(f"bundle: {_what_is_there(cluster, bundle_dir)}\n"
                            + how_to_supply(cluster, bundle_dir))
        return None
    sums = read_sums(folder)
    if not sums:
        raise UserError(f"{folder}: no {SUMS}: the bundle is incomplete (rerun bundle.fetch "
                        f"into {folder.parent})")
    recorded = _recorded(folder)
    files = {}
    for name, expected in sorted(sums.items()):
        if recorded.get(name) != expected:
            said = (f"{SOURCES} records {recorded[name]}" if name in recorded
                    else f"{SOURCES} does not list it")
            raise UserError(f"{folder / name}: {SUMS} says {expected} but {said} (the upstream "
                            f"checksums recorded at fetch time are the authority: the bundle "
                            f"was altered after bundle.fetch; {REFETCH})")
        path = _plain_file(folder, name)
        if path is None:
            what = ("missing" if not os.path.lexists(folder / name)
                    else "not a regular file inside the bundle (a symlink or folder)")
            raise UserError(f"{folder / name}: listed in {SUMS} but {what} ({REFETCH})")
        actual = sha256_file(path)
        if actual != expected:
            raise UserError(f"{path}: checksum mismatch: {SUMS} says {expected}, the file has "
                            f"{actual} (the file was changed or damaged: {REFETCH})")
        files[name] = (path, actual)
    unlisted = sorted(set(recorded) - set(sums))
    if unlisted:
        raise UserError(f"{folder}: {', '.join(unlisted)} recorded in {SOURCES} but not in {SUMS} "
                        f"({REFETCH})")
    absent = [n for n in needed(cluster, arch) if n not in files]
    if absent:
        raise UserError(f"{folder}: {', '.join(absent)} missing from {SUMS}: the bundle is "
                        f"incomplete (rerun bundle.fetch into {folder.parent})")
    return Bundle(folder, files, images.check(cluster, folder, sums, deep=deep))


def _recorded(folder: Path) -> dict[str, str]:
    """{file: sha256} as SOURCES.json recorded them at fetch time."""
    path = folder / SOURCES
    if not path.exists():
        raise UserError(f"{path}: missing: without the checksums recorded at fetch time the bundle "
                        f"cannot be trusted ({REFETCH})")
    try:
        sources = json.loads(path.read_bytes().decode("utf-8"))
        out: dict[str, str] = {}
        for rec in sources.values():
            for name, sha in rec["files"].items():
                if not safe_name(name) or not re.fullmatch(r"[0-9a-f]{64}", sha) or name in out:
                    raise ValueError(f"entry {name!r}")
                out[name] = sha
        return out
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"{path}: not a bundle record bundle.fetch wrote ({e}; {REFETCH})") \
            from None


def missing_message(cluster: Cluster, bundle_dir: Path | str | None = None) -> str:
    """What cluster.up prints when it stops before the phases that need Kubernetes binaries."""
    what = ("k3s and its airgap images" if cluster.is_k3s else
            "kubeadm, kubelet, kubectl, crictl, the CNI plugins"
            + (", containerd and runc" if containerd_from_bundle(cluster) else ""))
    return (f"stopped before the Kubernetes phases: {what} {cluster.kubernetes_version} are "
            f"needed and {_what_is_there(cluster, bundle_dir)}.\n"
            + how_to_supply(cluster, bundle_dir))


def _what_is_there(cluster: Cluster, bundle_dir) -> str:
    where = default_dir(cluster, bundle_dir)
    want = folder_name(cluster)
    have = sorted(p.name for p in where.iterdir() if p.is_dir()) if where.is_dir() else []
    return (f"{where}/ holds {', '.join(have)}, not {want}" if have
            else f"there is no bundle folder {where}/{want}/")


def how_to_supply(cluster: Cluster, bundle_dir: Path | str | None = None) -> str:
    where = default_dir(cluster, bundle_dir)
    inventory = cluster.source or "INVENTORY"
    return "\n".join([
        "On a machine with internet access, fetch them (checksums are verified):",
        f"    invoke bundle.fetch -i {inventory} --dest {where} [--mirror URL] "
        "[--github-mirror URL]",
        "then rerun cluster.up (it finds ./bundle, or pass --bundle DIR, or set bundle_dir in "
        "the inventory).",
        f"For an offline site: copy the whole {where}/ folder (e.g. rsync -a {where}/ "
        "offline-host:bundle/) and run",
        f"    invoke cluster.up -i {inventory} --bundle DIR",
        f"there; `invoke bundle.verify -i {inventory} --bundle DIR` checks a copied bundle "
        "first.",
    ])


# ---------------------------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------------------------


def fetch(cluster: Cluster, dest: Path, mirror: str | None = None, arch: str = "amd64",
          progress: Callable[[str], None] = print, github_mirror: str | None = None,
          timeout: float = TIMEOUT) -> Path:
    """Download and verify every file the cluster needs into dest/<folder>; returns the folder.

    Idempotent and resumable per artifact: what SOURCES.json records and the files on disk
    match is not downloaded again; anything else (missing, damaged, or a file whose SHA256SUMS
    line was edited) is downloaded again and checked against the published checksum. Nothing
    is moved into place before its checksum matched; downloads and extractions go to temp
    files that only this process created, inside the folder."""
    folder = Path(dest) / folder_name(cluster, arch)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    sources = read_sources(folder)
    wanted = artifacts(cluster, mirror, github_mirror, arch)
    for art in wanted:
        record = sources.get(art.key)
        if record and still_valid(folder, record):
            progress(f"{art.key}: present and verified")
            continue
        sources.pop(art.key, None)
        expected = _published_sha256(art, timeout)
        started = time.monotonic()
        fd, download = _temp(folder, art.url.rsplit("/", 1)[-1])
        try:
            size = _download(art.url, fd, download, expected, timeout)
            if art.kind == "archive":
                files = _extract(download, folder, art)
            else:
                os.chmod(download, 0o755 if art.kind == "binary" else 0o644)
                os.replace(download, folder / art.name)
                files = {art.name: expected}
        finally:
            download.unlink(missing_ok=True)
        progress(f"{art.key}: {size / 1e6:.1f} MB in {time.monotonic() - started:.1f} s, "
                 f"sha256 verified ({art.url})")
        sources[art.key] = {"url": art.url, "checksum_url": art.checksum_url,
                            "sha256": expected, "files": files}
        write_sources(folder, sources)  # after each artifact: an interrupted fetch resumes here
    # SOURCES.json keeps only what this cluster needs, and SHA256SUMS is derived from it: an
    # edited or damaged SHA256SUMS is put back, an unchanged bundle is not rewritten
    keys = {a.key for a in wanted} | {images.source_key(i.ref) for i in images.needed(cluster)}
    sources = {k: v for k, v in sources.items() if k in keys}
    if not all(_same(folder / f, t) for f, t in _texts(sources).items()):
        write_sources(folder, sources)
    return folder


def _texts(sources: dict) -> dict[str, str]:
    sums = {n: sha for rec in sources.values() for n, sha in rec["files"].items()}
    return {SOURCES: json.dumps(sources, indent=1, sort_keys=True) + "\n",
            SUMS: "".join(f"{sha}  {name}\n" for name, sha in sorted(sums.items()))}


def _same(path: Path, text: str) -> bool:
    try:
        return path.read_bytes() == text.encode()
    except OSError:
        return False


def _remove_leftovers(folder: Path) -> None:
    """Temp files of an interrupted run (".NAME.RANDOM.part"): removed, never followed."""
    for sub in [folder] + [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]:
        for p in sub.glob(".*.part"):
            p.unlink(missing_ok=True)
        for p in sub.glob(".*.extract"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


def read_sources(folder: Path) -> dict:
    """SOURCES.json as written by this version (per artifact: files as {name: sha256}); an
    older or unreadable one counts as empty (everything is checked again)."""
    try:
        data = json.loads((folder / SOURCES).read_bytes().decode("utf-8"))
        if all(isinstance(r.get("files"), dict) and all(safe_name(n) for n in r["files"])
               for r in data.values()):
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def still_valid(folder: Path, record: dict) -> bool:
    """Every file of the artifact is a plain file matching the sha256 recorded at fetch time."""
    files = record.get("files") or {}
    for name, sha in files.items():
        path = _plain_file(folder, name)
        if path is None or sha256_file(path) != sha:
            return False
    return bool(files)


def _open(url: str, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise UserError(f"{url}: HTTP {e.code} {e.reason} (is this version published there? "
                        f"check kubernetes_version and --mirror/--github-mirror)") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(NO_ROUTE.format(url=url, reason=reason)) from None


def _published_sha256(art: Artifact, timeout: float) -> str:
    """The checksum published next to the file: a bare hash, `HASH  NAME`, or a list of them."""
    with _open(art.checksum_url, timeout) as resp:
        text = resp.read(1 << 20).decode("utf-8", "replace")
    for line in text.splitlines():
        parts = line.split()
        if not parts or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            continue
        if art.checksum_for is None or (len(parts) > 1 and
                                        parts[1].lstrip("*") == art.checksum_for):
            return parts[0].lower()
    which = f" for {art.checksum_for}" if art.checksum_for else ""
    raise UserError(f"{art.checksum_url}: no sha256{which} in it (is the mirror complete?)")


def _download(url: str, fd: int, part: Path, expected: str, timeout: float) -> int:
    """Stream url into the temp file (fd, part), hash it; UserError unless the hash matches."""
    h = hashlib.sha256()
    size = 0
    try:
        with _open(url, timeout) as resp, os.fdopen(fd, "wb") as out:
            length = resp.headers.get("Content-Length")
            promised = int(length) if length and length.isdigit() else None
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:  # timeout, reset, cut short
                    raise UserError(NO_ROUTE.format(url=url, reason=e or type(e).__name__))
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except OSError as e:
        raise UserError(f"cannot write {part}: {e.strerror or e}") from None
    if promised is not None and size != promised:
        raise UserError(NO_ROUTE.format(url=url, reason=f"transfer cut short: {size} of "
                                                        f"{promised} bytes"))
    actual = h.hexdigest()
    if actual != expected:
        raise UserError(f"{url}: checksum mismatch: expected sha256 {expected} (published), "
                        f"got {actual} ({size} bytes); nothing was kept. A truncated download, "
                        f"a broken mirror or a proxy that changes downloads? Try again or use "
                        f"another --mirror.")
    return size


def _extract(archive: Path, folder: Path, art: Artifact) -> dict[str, str]:
    """Executable regular files of a verified tarball -> folder/name (or folder/name<member>
    when name ends with /). Everything is written to a temp folder first and moved into place
    only when the whole archive was read: a damaged archive leaves nothing behind.
    Returns {bundle name: sha256}."""
    scratch = Path(tempfile.mkdtemp(dir=folder, prefix=f".{art.name.strip('/')}.",
                                    suffix=".extract"))
    try:
        staged: dict[str, Path] = {}
        try:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.mode & 0o111]
                if art.members:
                    members = [m for m in members if m.name.rsplit("/", 1)[-1] in art.members]
                    got = sorted(m.name.rsplit("/", 1)[-1] for m in members)
                    if got != sorted(art.members):
                        raise UserError(f"{art.url}: expected the executables "
                                        f"{', '.join(art.members)} in the archive, found "
                                        f"{', '.join(got) or 'none'}")
                if not members:
                    raise UserError(f"{art.url}: no executable in the archive")
                if not art.name.endswith("/") and len(members) != 1:
                    raise UserError(f"{art.url}: expected one executable, found "
                                    f"{', '.join(m.name for m in members)}")
                for i, m in enumerate(members):
                    base = m.name.rsplit("/", 1)[-1]
                    if not COMPONENT.fullmatch(base):
                        raise UserError(f"{art.url}: unexpected member name {m.name!r}")
                    rel = art.name + base if art.name.endswith("/") else art.name
                    if rel in staged:
                        raise UserError(f"{art.url}: {base} is in the archive twice")
                    src = tar.extractfile(m)
                    assert src is not None
                    tmp = scratch / str(i)
                    with src, open(tmp, "xb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                    os.chmod(tmp, 0o755)
                    staged[rel] = tmp
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise UserError(f"{art.url}: not a readable tar archive ({type(e).__name__}: {e}); "
                            f"its checksum matched what is published, so the mirror publishes "
                            f"a damaged file: try another --mirror / --github-mirror") from None
        files: dict[str, str] = {}
        for rel, tmp in staged.items():
            target = folder / rel
            if "/" in rel:
                _real_dir(folder, rel.split("/", 1)[0])
            os.replace(tmp, target)
            files[rel] = sha256_file(target)
        return files
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
