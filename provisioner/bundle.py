"""The offline bundle: the Kubernetes binaries a cluster needs, fetched once, checked on every use.

    <bundle>/
      kubeadm-v1.32.4-linux-amd64/     # <distribution>-<version>-linux-<arch>
        kubeadm kubelet kubectl        # k3s bundles: k3s
        crictl                         # from the cri-tools release tarball
        cni-plugins/                   # from the containernetworking/plugins tarball
        SHA256SUMS                     # sha256 of every file above (`sha256sum -c` reads it)
        SOURCES.json                   # where each file came from (lets a rerun skip it)
        images/*.tar                   # kubeadm: one OCI archive per image (provisioner.images)
        IMAGES.json                    # image ref -> archive, manifest digest, source

`fetch` downloads from the upstream release sites (or mirrors of them) and checks every file
against its published checksum before moving it into place; `locate` finds the folder for a
cluster and checks every file against SHA256SUMS before anything is pushed to a node.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import images
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

# crictl (kubernetes-sigs/cri-tools) and CNI plugins (containernetworking/plugins) per
# Kubernetes minor: crictl follows the Kubernetes minor; CNI plugins are the release current
# when that minor came out.
PINNED: dict[str, tuple[str, str]] = {
    "1.29": ("v1.29.0", "v1.4.0"),
    "1.30": ("v1.30.1", "v1.4.1"),
    "1.31": ("v1.31.1", "v1.5.1"),
    "1.32": ("v1.32.0", "v1.6.2"),
    "1.33": ("v1.33.0", "v1.7.1"),
}

NO_ROUTE = ("no route to the download site ({url}: {reason}): run bundle.fetch on a machine "
            "with internet access, copy the bundle folder, and pass --bundle DIR or set "
            "bundle_dir")


@dataclass(frozen=True)
class Artifact:
    """One published file and the checksum published next to it.

    kind "binary": saved as `name`. kind "archive": its executable members are saved under
    `name` ("crictl" for a single file, "cni-plugins/" for a folder of them).
    """

    key: str  # what and which version: a rerun skips it when SOURCES.json has it
    url: str
    checksum_url: str
    name: str
    kind: str = "binary"
    checksum_for: str | None = None  # the line to use in a multi-file checksum list


@dataclass
class Bundle:
    dir: Path
    files: dict[str, tuple[Path, str]] = field(default_factory=dict)  # name -> (path, sha256)
    images: dict[str, dict] | None = None  # IMAGES.json; None: a bundle of binaries only


# ---------------------------------------------------------------------------------------------
# What a cluster needs
# ---------------------------------------------------------------------------------------------


def folder_name(cluster: Cluster, arch: str = "amd64") -> str:
    return f"{cluster.distribution}-{cluster.kubernetes_version}-linux-{arch}"


def pinned(cluster: Cluster) -> tuple[str, str]:
    """(crictl version, CNI plugins version) for the cluster's Kubernetes minor."""
    try:
        return PINNED[cluster.version_minor]
    except KeyError:
        raise UserError(
            f"kubernetes_version {cluster.kubernetes_version}: no crictl/CNI versions pinned "
            f"for {cluster.version_minor} (supported minors: {', '.join(PINNED)})") from None


def artifacts(cluster: Cluster, mirror: str | None = None, github_mirror: str | None = None,
              arch: str = "amd64") -> list[Artifact]:
    """The files `fetch` downloads for this cluster, with the URLs they come from.

    mirror replaces the Kubernetes release site (kubeadm) or the k3s release base URL (k3s);
    github_mirror replaces https://github.com for the assets hosted on GitHub releases."""
    gh = (github_mirror or getattr(cluster, "github_mirror", None) or DEFAULT_GITHUB).rstrip("/")
    version = cluster.kubernetes_version
    if cluster.is_k3s:
        base = mirror or cluster.download_mirror
        if not mirror and base.rstrip("/") == DEFAULT_MIRROR:  # the kubeadm default
            base = f"{gh}/k3s-io/k3s/releases/download"
        base = f"{base.rstrip('/')}/{urllib.parse.quote(version)}"
        asset = "k3s" if arch == "amd64" else f"k3s-{arch}"
        return [Artifact(f"k3s {version}", f"{base}/{asset}", f"{base}/sha256sum-{arch}.txt",
                         "k3s", checksum_for=asset)]
    base = (mirror or cluster.download_mirror).rstrip("/")
    out = [Artifact(f"{b} {version}", f"{base}/release/{version}/bin/linux/{arch}/{b}",
                    f"{base}/release/{version}/bin/linux/{arch}/{b}.sha256", b)
           for b in ("kubeadm", "kubelet", "kubectl")]
    crictl, cni = pinned(cluster)
    tools = f"{gh}/kubernetes-sigs/cri-tools/releases/download/{crictl}"
    tgz = f"crictl-{crictl}-linux-{arch}.tar.gz"
    out.append(Artifact(f"crictl {crictl}", f"{tools}/{tgz}", f"{tools}/{tgz}.sha256",
                        "crictl", "archive"))
    plugins = f"{gh}/containernetworking/plugins/releases/download/{cni}"
    tgz = f"cni-plugins-linux-{arch}-{cni}.tgz"
    out.append(Artifact(f"cni-plugins {cni}", f"{plugins}/{tgz}", f"{plugins}/{tgz}.sha256",
                        "cni-plugins/", "archive"))
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


def read_sums(folder: Path) -> dict[str, str]:
    path = folder / SUMS
    if not path.exists():
        return {}
    sums = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](\S.*)", line.strip())
        if not m:
            raise UserError(f"{path}:{n}: not a sha256sum line (rerun bundle.fetch)")
        sums[m.group(2)] = m.group(1)
    return sums


def write_sums(folder: Path, sums: dict[str, str]) -> None:
    text = "".join(f"{sha}  {name}\n" for name, sha in sorted(sums.items()))
    _atomic_write(folder / SUMS, text)


def _atomic_write(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


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
    files = {}
    for name, expected in sorted(sums.items()):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path}: listed in {SUMS} but missing (rerun bundle.fetch, or "
                            f"copy the bundle folder again)")
        actual = sha256_file(path)
        if actual != expected:
            raise UserError(f"{path}: checksum mismatch: {SUMS} says {expected}, the file has "
                            f"{actual} (the file was changed or damaged: rerun bundle.fetch, "
                            f"or copy the bundle folder again)")
        files[name] = (path, actual)
    needed = ["k3s"] if cluster.is_k3s else ["kubeadm", "kubelet", "kubectl"]
    absent = [n for n in needed if n not in files]
    if absent:
        raise UserError(f"{folder}: {', '.join(absent)} missing from {SUMS}: the bundle is "
                        f"incomplete (rerun bundle.fetch into {folder.parent})")
    return Bundle(folder, files, images.check(cluster, folder, sums, deep=deep))


def missing_message(cluster: Cluster, bundle_dir: Path | str | None = None) -> str:
    """What cluster.up prints when it stops before the phases that need Kubernetes binaries."""
    what = "k3s" if cluster.is_k3s else "kubeadm, kubelet, kubectl, crictl and the CNI plugins"
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

    Idempotent and resumable per file: what SOURCES.json records and SHA256SUMS verifies is
    not downloaded again; a file is only renamed into place after its checksum matched."""
    folder = Path(dest) / folder_name(cluster, arch)
    folder.mkdir(parents=True, exist_ok=True)
    sums = read_sums(folder)
    sources = _read_sources(folder)
    for art in artifacts(cluster, mirror, github_mirror, arch):
        record = sources.get(art.key)
        if record and _still_valid(folder, record["files"], sums):
            progress(f"{art.key}: present and verified")
            continue
        expected = _published_sha256(art, timeout)
        started = time.monotonic()
        if art.kind == "binary":
            size = _download(art.url, folder / art.name, expected, timeout)
            files = {art.name: expected}
            os.chmod(folder / art.name, 0o755)
        else:
            archive = folder / (".download-" + art.url.rsplit("/", 1)[-1])
            size = _download(art.url, archive, expected, timeout)
            try:
                files = _extract(archive, folder, art.name)
            finally:
                archive.unlink(missing_ok=True)
        progress(f"{art.key}: {size / 1e6:.1f} MB in {time.monotonic() - started:.1f} s, "
                 f"sha256 verified ({art.url})")
        sums.update(files)
        sources[art.key] = {"url": art.url, "sha256": expected, "files": sorted(files)}
        write_sums(folder, sums)  # after each artifact: an interrupted fetch resumes here
        _atomic_write(folder / SOURCES, json.dumps(sources, indent=1, sort_keys=True) + "\n")
    return folder


def _read_sources(folder: Path) -> dict:
    try:
        return json.loads((folder / SOURCES).read_text())
    except (OSError, ValueError):
        return {}


def _still_valid(folder: Path, names: list[str], sums: dict[str, str]) -> bool:
    return bool(names) and all(
        n in sums and (folder / n).is_file() and sha256_file(folder / n) == sums[n]
        for n in names)


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


def _download(url: str, target: Path, expected: str, timeout: float) -> int:
    """Stream url to target.part, hash it, rename to target only when the hash matches."""
    part = target.with_name(target.name + ".part")
    h = hashlib.sha256()
    size = 0
    try:
        with _open(url, timeout) as resp, open(part, "wb") as out:
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
        part.unlink(missing_ok=True)
        raise UserError(f"cannot write {part}: {e.strerror or e}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if promised is not None and size != promised:
        part.unlink(missing_ok=True)
        raise UserError(NO_ROUTE.format(url=url, reason=f"transfer cut short: {size} of "
                                                        f"{promised} bytes"))
    actual = h.hexdigest()
    if actual != expected:
        part.unlink(missing_ok=True)
        raise UserError(f"{url}: checksum mismatch: expected sha256 {expected} (published), "
                        f"got {actual} ({size} bytes); nothing was kept. A broken mirror or a "
                        f"proxy that changes downloads? Try again or use another --mirror.")
    os.replace(part, target)
    return size


def _extract(archive: Path, folder: Path, name: str) -> dict[str, str]:
    """Executable regular files of a verified tarball -> folder/name (or folder/name<member>
    when name ends with /). Returns {bundle name: sha256}."""
    files: dict[str, str] = {}
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.mode & 0o111]
        if not members:
            raise UserError(f"{archive.name}: no executable in the archive")
        if not name.endswith("/") and len(members) != 1:
            raise UserError(f"{archive.name}: expected one executable, found "
                            f"{', '.join(m.name for m in members)}")
        for m in members:
            base = m.name.rsplit("/", 1)[-1]
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", base):
                raise UserError(f"{archive.name}: unexpected member name {m.name!r}")
            rel = name + base if name.endswith("/") else name
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            src = tar.extractfile(m)
            assert src is not None
            with src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
            os.chmod(part, 0o755)
            os.replace(part, target)
            files[rel] = sha256_file(target)
    return files
