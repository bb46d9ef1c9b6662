"""TEST-ONLY tiny OCI images under the real image names, built from this machine's
busybox-static (Debian package busybox-static): no registry can be reached here.

Each image is two layers: the shared busybox layer (/bin/busybox and /bin/sh; the same bytes
in every image, so containerd stores it once) and a one-file layer naming the image
(/TEST-ONLY-image, so every image has its own digest). Deterministic: same name, same busybox,
same bytes (fixed mtimes, owners and gzip headers), so a rebuilt stand-in bundle changes nothing.
The archives look like skopeo's (oci-archive, index.json naming the image by its full
reference), which is what bundle.fetch stores and the images phase imports.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
MTIME = 946684800  # 2000-01-01: fixed
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _tar(files: dict[str, tuple[bytes, int]], links: dict[str, str] = {}) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = sorted({p.rsplit("/", 1)[0] for p in [*files, *links] if "/" in p})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            t.addfile(info)
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, MTIME
            t.addfile(info, io.BytesIO(data))
        for path, target in sorted(links.items()):
            info = tarfile.TarInfo(path)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, MTIME
            t.addfile(info)
    return out.getvalue()


@functools.cache
def busybox_layer() -> tuple[bytes, bytes]:
    """(uncompressed tar, gzip) of the shared layer."""
    if not BUSYBOX.is_file():
        raise RuntimeError("tests need busybox-static (/bin/busybox): apt-get install "
                           "busybox-static (./bootstrap.sh installs it)")
    raw = _tar({"bin/busybox": (BUSYBOX.read_bytes(), 0o755)}, {"bin/sh": "busybox"})
    return raw, gzip.compress(raw, 6, mtime=0)


def build(ref: str) -> tuple[bytes, str]:
    """An OCI archive of a tiny linux/amd64 image named `ref`; returns (archive, manifest
    digest)."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media, "digest": digest, "size": len(data)}

    base_raw, base_gz = busybox_layer()
    note = f"TEST-ONLY stand-in for {ref}: busybox-static, not the real image\n".encode()
    own_raw = _tar({"TEST-ONLY-image": (note, 0o644)})
    own_gz = gzip.compress(own_raw, 6, mtime=0)
    layers = [blob(base_gz, OCI_LAYER), blob(own_gz, OCI_LAYER)]
    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2000-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"],
                   "Labels": {"test-only": "stand-in image"}},
        "rootfs": {"type": "layers", "diff_ids": [
            "sha256:" + hashlib.sha256(r).hexdigest() for r in (base_raw, own_raw)]},
    }, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": layers}, sort_keys=True).encode(),
        "application/vnd.oci.image.manifest.v1+json")
    entry = dict(manifest, annotations={"org.opencontainers.image.ref.name": ref})
    files = {"oci-layout": (b'{"imageLayoutVersion":"1.0.0"}', 0o644),
             "index.json": (json.dumps({"schemaVersion": 2, "manifests": [entry]},
                                       sort_keys=True).encode(), 0o644)}
    files.update({f"blobs/sha256/{d.split(':')[1]}": (data, 0o644) for d, data in blobs.items()})
    return _tar(files), manifest["digest"]


def write_bundle_images(folder: Path, refs: list[str]) -> dict[str, dict]:
    """Put a tiny image per ref into a bundle folder as bundle.fetch would (images/*.tar,
    IMAGES.json); returns {bundle name: sha256} for SHA256SUMS."""
    from provisioner import images

    (folder / images.FOLDER).mkdir(exist_ok=True)
    index, sums = {}, {}
    for ref in refs:
        data, digest = build(ref)
        rel = f"{images.FOLDER}/{images.archive_name(ref)}"
        (folder / rel).write_bytes(data)
        index[ref] = {"file": rel, "digest": digest, "source": "TEST-ONLY stand-in"}
        sums[rel] = hashlib.sha256(data).hexdigest()
    (folder / images.INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return sums
