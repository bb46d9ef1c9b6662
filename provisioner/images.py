"""The container images a cluster runs: which (per version, topology and role), under which name
(`image_repository`), fetched into the bundle as checked OCI archives.

Which images — computed the way `kubeadm config images list` does (kubeadm's
cmd/kubeadm/app/images/images.go: GetControlPlaneImages / GetKubernetesImage / GetEtcdImage /
GetDNSImage / GetPauseImage, with the tags of constants.go pinned in `versions.IMAGES`):

    <repo>/kube-apiserver:<version>  <repo>/kube-controller-manager:<version>
    <repo>/kube-scheduler:<version>  <repo>/kube-proxy:<version>
    <repo>/coredns/coredns:<tag>     (with an imageRepository other than registry.k8s.io
                                      kubeadm drops the inner "coredns/": <repo>/coredns:<tag>)
    <repo>/pause:<tag>               <repo>/etcd:<tag>   (etcd only when it is stacked)

plus what the provisioner's own manifests run: flannel and flannel-cni-plugin (cni flannel),
kube-vip (ha_mode kube-vip, control planes only), and cluster.smoke's busybox. k3s: none here
(its airgap images archive carries them).

Names (`image_repository`): a string R stands for {registry.k8s.io: R} — kubeadm's
imageRepository, so only the kube images move (what kubeasz and kubespray users set for a
mirror such as registry.aliyuncs.com/google_containers, which holds only those). A mapping
{source registry: target} moves each listed registry's images: `ghcr.io: harbor.local/ghcr`
makes ghcr.io/flannel-io/flannel:v0.26.7 harbor.local/ghcr/flannel-io/flannel:v0.26.7.
Images of registries it does not list keep their names (`registry_mirrors` redirects their
pulls without renaming them).

Archives: `bundle.fetch` copies each image with skopeo (linux/amd64 only, no Docker daemon) to
`<bundle>/images/<name>.tar` (OCI archive) and, before it is moved into place and listed in
SHA256SUMS, checks every blob itself: index.json -> manifest -> config + layers, each blob's
size and sha256 against its descriptor, the layers' uncompressed digests against the config's
diff_ids. IMAGES.json records ref -> file, manifest digest and where it came from.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import versions
from .errors import UserError
from .model import Cluster, Node

KUBE = "registry.k8s.io"  # kubeadm's DefaultImageRepository
INDEX = "IMAGES.json"
FOLDER = "images"
ARCH = "amd64"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEXES = ("application/vnd.oci.image.index.v1+json",
           "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
CONTROL_PLANES, ALL_NODES = "control planes", "all nodes"
TIMEOUT = 900  # seconds for one skopeo copy


@dataclass(frozen=True)
class Image:
    ref: str       # the name nodes run it under (after image_repository)
    upstream: str  # where the project publishes it
    hosts: str     # CONTROL_PLANES or ALL_NODES
    why: str       # what runs it


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


def repositories(c: Cluster) -> dict[str, str]:
    """{source registry: target} from image_repository (a string is registry.k8s.io's)."""
    raw = getattr(c, "image_repository", None) or KUBE
    return {KUBE: raw} if isinstance(raw, str) else dict(raw)


def kubeadm_repository(c: Cluster) -> str:
    """ClusterConfiguration.imageRepository."""
    return repositories(c).get(KUBE, KUBE)


def rename(c: Cluster, upstream: str) -> str:
    """The name an upstream image runs under on this cluster's nodes."""
    registry, _, rest = upstream.partition("/")
    target = repositories(c).get(registry)
    if not target or target == registry:
        return upstream
    if registry == KUBE and rest.startswith("coredns/coredns:"):
        rest = rest[len("coredns/"):]  # kubeadm: <imageRepository>/coredns:<tag>
    return f"{target}/{rest}"


def sandbox_default(c: Cluster) -> str:
    """The pause image kubeadm lists for the version, under image_repository."""
    return rename(c, f"{KUBE}/pause:{versions.image_pins(c.kubernetes_version).pause}")


def needed(c: Cluster) -> list[Image]:
    """Every image the cluster's nodes run, in `kubeadm config images list` order, then ours."""
    if c.is_k3s:
        return []
    pins = versions.image_pins(c.kubernetes_version)
    v = c.kubernetes_version
    rows = [(f"{KUBE}/kube-apiserver:{v}", CONTROL_PLANES, "kubeadm: API server"),
            (f"{KUBE}/kube-controller-manager:{v}", CONTROL_PLANES, "kubeadm: controller manager"),
            (f"{KUBE}/kube-scheduler:{v}", CONTROL_PLANES, "kubeadm: scheduler"),
            (f"{KUBE}/kube-proxy:{v}", ALL_NODES, "kubeadm: kube-proxy DaemonSet"),
            (f"{KUBE}/coredns/coredns:{pins.coredns}", ALL_NODES, "kubeadm: CoreDNS"),
            (f"{KUBE}/pause:{pins.pause}", ALL_NODES, "kubeadm: pod sandbox")]
    if not c.external_etcd:
        rows.append((f"{KUBE}/etcd:{pins.etcd}", CONTROL_PLANES, "kubeadm: stacked etcd"))
    if c.cni == "flannel":
        rows += [(versions.FLANNEL, ALL_NODES, "flannel DaemonSet"),
                 (versions.FLANNEL_CNI_PLUGIN, ALL_NODES, "flannel DaemonSet (init)")]
    if c.ha_mode == "kube-vip":
        rows.append((versions.KUBE_VIP, CONTROL_PLANES, "kube-vip static pod"))
    rows.append((versions.SMOKE, ALL_NODES, "cluster.smoke DaemonSet"))
    out = [Image(rename(c, up), up, hosts, why) for up, hosts, why in rows]
    if c.sandbox_image and c.sandbox_image not in {i.ref for i in out}:
        out.append(Image(c.sandbox_image, c.sandbox_image, ALL_NODES, "sandbox_image"))
    return out


def for_node(c: Cluster, node: Node) -> list[Image]:
    return [i for i in needed(c) if i.hosts == ALL_NODES or node.has("control_plane")]


def archive_name(ref: str) -> str:
    """registry.k8s.io/kube-apiserver:v1.36.4 -> registry.k8s.io_kube-apiserver_v1.36.4.tar"""
    return re.sub(r"[^A-Za-z0-9._-]", "_", ref) + ".tar"


def source(ref: str, mirror: str | None = None) -> str:
    """Where bundle.fetch copies an image from: the registry its name says, or --image-mirror,
    which holds every image under <mirror>/<full name> (registry host included)."""
    if not mirror:
        return ref
    return mirror.split("://", 1)[-1].rstrip("/") + "/" + ref


def rows(c: Cluster, mirror: str | None = None) -> list[dict]:
    """bundle.list's image rows: nothing is downloaded."""
    return [{"kind": "image", "name": i.ref, "version": i.ref.rsplit(":", 1)[-1],
             "source": "docker://" + source(i.ref, mirror), "hosts": i.hosts,
             "checksum": "manifest digest recorded in IMAGES.json at fetch; every blob "
                         "checked against its sha256 digest (OCI descriptors)"}
            for i in needed(c)]


# ---------------------------------------------------------------------------------------------
# Checking an OCI archive
# ---------------------------------------------------------------------------------------------


def _blob_name(digest: str, where: str) -> str:
    m = re.fullmatch(r"sha256:([0-9a-f]{64})", str(digest))
    if not m:
        raise UserError(f"{where}: digest {digest!r} is not a sha256 digest")
    return f"blobs/sha256/{m.group(1)}"


def verify_archive(path: Path, ref: str) -> str:
    """Check every blob of an OCI archive against its digest; returns the manifest digest.

    The archive must hold exactly oci-layout, index.json and blobs/sha256/<hex> (regular files,
    no links, no duplicates); index.json one linux/amd64 image named `ref`; the manifest, config
    and layers present with the sizes and sha256 their descriptors give, and the layers'
    uncompressed sha256 equal to the config's diff_ids. Any difference is a UserError."""
    where = str(path)
    blobs: dict[str, tuple[int, str]] = {}  # member name -> (size, sha256)
    small: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if m.isdir() and name.rstrip("/") in ("", "blobs", "blobs/sha256"):
                    continue
                if not m.isfile():
                    raise UserError(f"{where}: member {m.name!r} is not a regular file")
                if name in blobs or name in small:
                    raise UserError(f"{where}: member {m.name!r} appears twice")
                f = tar.extractfile(m)
                assert f is not None
                if name in ("oci-layout", "index.json"):
                    small[name] = f.read(1 << 20)
                    continue
                if not re.fullmatch(r"blobs/sha256/[0-9a-f]{64}", name):
                    raise UserError(f"{where}: unexpected member {m.name!r}")
                h = hashlib.sha256()
                head = b""
                while chunk := f.read(1 << 20):
                    if len(head) < (1 << 20):
                        head += chunk[:(1 << 20) - len(head)]
                    h.update(chunk)
                blobs[name] = (m.size, h.hexdigest())
                small[name] = head  # manifests and configs are small; layers are re-read
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{where}: not a readable OCI archive ({e})") from None
    for name, (size, sha) in blobs.items():
        if sha != name.rsplit("/", 1)[1]:
            raise UserError(f"{where}: blob {name} has sha256 {sha}: its content does not match "
                            "its digest (damaged or tampered with)")
    try:
        layout = json.loads(small.get("oci-layout") or b"null")
        index = json.loads(small.get("index.json") or b"null")
    except ValueError:
        raise UserError(f"{where}: oci-layout or index.json is not JSON") from None
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
        raise UserError(f"{where}: no OCI image layout 1.0.0 (oci-layout)")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or len(entries) != 1:
        raise UserError(f"{where}: index.json must list exactly one image")
    top = entries[0]
    named = (top.get("annotations") or {}).get(REF_NAME)
    if named != ref:
        raise UserError(f"{where}: index.json names the image {named!r}, not {ref!r}")
    if top.get("mediaType") in INDEXES:
        raise UserError(f"{where}: holds a multi-platform index: expected one linux/{ARCH} image")

    def blob(desc: dict, what: str) -> str:
        name = _blob_name(desc.get("digest"), f"{where}: {what}")
        if name not in blobs:
            raise UserError(f"{where}: {what} blob {desc.get('digest')} is missing")
        if desc.get("size") != blobs[name][0]:
            raise UserError(f"{where}: {what} blob {desc.get('digest')} has {blobs[name][0]} "
                            f"bytes, its descriptor says {desc.get('size')}")
        return name

    manifest_name = blob(top, "manifest")
    try:
        manifest = json.loads(small[manifest_name])
        config = json.loads(small[blob(manifest["config"], "config")])
        layers = manifest["layers"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{where}: the manifest or config is not a valid image") from None
    if top.get("mediaType") not in (OCI_MANIFEST, DOCKER_MANIFEST):
        raise UserError(f"{where}: unexpected manifest type {top.get('mediaType')!r}")
    if (config.get("os"), config.get("architecture")) != ("linux", ARCH):
        raise UserError(f"{where}: the image is {config.get('os')}/{config.get('architecture')}"
                        f", not linux/{ARCH}")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if not isinstance(layers, list) or len(layers) != len(diff_ids):
        raise UserError(f"{where}: {len(layers or [])} layers but {len(diff_ids)} diff_ids")
    names = [blob(d, f"layer {n}") for n, d in enumerate(layers)]
    with tarfile.open(path, "r:") as tar:
        members = {m.name[2:] if m.name.startswith("./") else m.name: m for m in tar}
        for n, (desc, name, diff_id) in enumerate(zip(layers, names, diff_ids)):
            media = str(desc.get("mediaType", ""))
            f = tar.extractfile(members[name])
            assert f is not None
            if media.endswith("gzip"):
                try:
                    stream = gzip.GzipFile(fileobj=f)
                    h = hashlib.sha256()
                    while chunk := stream.read(1 << 20):
                        h.update(chunk)
                except (OSError, EOFError) as e:
                    raise UserError(f"{where}: layer {n} does not decompress ({e})") from None
                actual = "sha256:" + h.hexdigest()
            elif media.endswith(".tar") or media.endswith("tar.layer"):
                actual = "sha256:" + blobs[name][1]
            else:
                continue  # e.g. zstd: its compressed digest was checked above
            if actual != diff_id:
                raise UserError(f"{where}: layer {n} uncompresses to {actual}, the config says "
                                f"{diff_id}")
    return str(top["digest"])


# ---------------------------------------------------------------------------------------------
# The bundle's images: read, fetch
# ---------------------------------------------------------------------------------------------


def read_index(folder: Path) -> dict[str, dict] | None:
    """IMAGES.json of a bundle folder: {ref: {file, digest, source}}; None when absent."""
    path = Path(folder) / INDEX
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("file"), str)
                and re.fullmatch(rf"{FOLDER}/[A-Za-z0-9._-]+\.tar", v["file"])
                and re.fullmatch(r"sha256:[0-9a-f]{64}", str(v.get("digest")))
                for v in data.values()):
            raise ValueError("unexpected entries")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a valid image index ({e}): rerun bundle.fetch") from None
    return data


def check(cluster: Cluster, folder: Path, sums: dict[str, str], deep: bool = False
          ) -> dict[str, dict] | None:
    """The bundle's images for this cluster (None: a bundle of binaries only). Every image the
    cluster needs must be there and listed in SHA256SUMS; deep: every archive's blobs too."""
    index = read_index(folder)
    if index is None:
        return None
    missing = [i.ref for i in needed(cluster) if i.ref not in index]
    if missing:
        raise UserError(f"{folder}: images missing from {INDEX}: {', '.join(missing)} (rerun "
                        f"bundle.fetch into {folder.parent})")
    for ref, rec in index.items():
        if rec["file"] not in sums:
            raise UserError(f"{folder / rec['file']}: image {ref} is not listed in SHA256SUMS "
                            "(rerun bundle.fetch)")
        if deep:
            digest = verify_archive(folder / rec["file"], ref)
            if digest != rec["digest"]:
                raise UserError(f"{folder / rec['file']}: manifest {digest}, {INDEX} says "
                                f"{rec['digest']} (rerun bundle.fetch)")
    return index


def skopeo() -> str:
    path = shutil.which("skopeo")
    if not path:
        raise UserError("skopeo is needed to fetch images (Debian/Ubuntu: apt-get install "
                        "skopeo; ./bootstrap.sh installs it)")
    return path


def source_key(ref: str) -> str:
    """An image's key in the bundle's SOURCES.json (beside the binaries' artifacts)."""
    return f"image {ref}"


def fetch(cluster: Cluster, folder: Path, mirror: str | None = None,
          progress: Callable[[str], None] = print, timeout: float = TIMEOUT) -> dict[str, dict]:
    """Copy every image the cluster needs into folder/images/ and record it (IMAGES.json,
    SHA256SUMS). An archive is moved into place only after verify_archive passed; a rerun
    copies only what is missing or damaged. Returns the index."""
    from . import bundle as bundles

    folder = Path(folder)
    (folder / FOLDER).mkdir(parents=True, exist_ok=True)
    sources = bundles.read_sources(folder)
    index = read_index(folder) or {}
    tls = not (mirror or "").startswith("http://")
    for image in needed(cluster):
        rel = f"{FOLDER}/{archive_name(image.ref)}"
        target = folder / rel
        rec, record = index.get(image.ref), sources.get(source_key(image.ref))
        if rec and rec["file"] == rel and record and bundles.still_valid(folder, record):
            progress(f"{image.ref}: present and verified")
            continue
        src = source(image.ref, mirror)
        work = Path(tempfile.mkdtemp(prefix=".pull-", dir=folder / FOLDER))  # 0700, ours
        try:
            part = work / "image.tar"
            argv = [skopeo(), "--insecure-policy", "copy", "--quiet", "--override-os", "linux",
                    "--override-arch", ARCH, "--retry-times", "2"]
            if not tls:
                argv.append("--src-tls-verify=false")
            argv += [f"docker://{src}", f"oci-archive:{part}:{image.ref}"]
            # --insecure-policy: no signature policy file is read; what is trusted here is the
            # digest of every blob, checked below (skopeo also checks them while copying).
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(work),
                   "HOME": os.environ.get("HOME", "/root")}
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                   env=env)
            except subprocess.TimeoutExpired:
                raise UserError(f"{src}: no image after {timeout:.0f} s (skopeo); nothing was "
                                "kept") from None
            if r.returncode != 0:
                raise UserError(f"docker://{src}: skopeo could not copy it: "
                                f"{r.stderr.strip()[-400:]}; nothing was kept (is it in the "
                                "registry or --image-mirror? a blob that does not match its "
                                "digest is refused)")
            try:
                digest = verify_archive(part, image.ref)
            except UserError as e:
                raise UserError(f"docker://{src}: refused, nothing was kept: {e}") from None
            os.chmod(part, 0o644)
            os.replace(part, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        index[image.ref] = {"file": rel, "digest": digest, "source": f"docker://{src}"}
        sources[source_key(image.ref)] = {
            "url": f"docker://{src}", "checksum_url": "OCI descriptors (every blob's digest)",
            "sha256": digest, "files": {rel: bundles.sha256_file(target)}}
        progress(f"{image.ref}: {target.stat().st_size / 1e6:.1f} MB, {digest}, every blob "
                 f"verified (docker://{src})")
        bundles.write_sources(folder, sources)  # SOURCES.json, and SHA256SUMS from it
        bundles._atomic_write(folder / INDEX, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index
