"""TEST-ONLY stand-ins for kubeadm, kubelet, kubectl, crictl and k3s, packed as an offline bundle.

The real Kubernetes binaries cannot be downloaded on the machines these tests run on. The
stand-ins (tools/) check what the provisioner hands them as strictly as the real tools decode
it, record every call, and write the files the real tools write, so that tests can prove phase
order, secret passing, join order and idempotency guards over real SSH. kubeadm and k3s go
through their real steps in upstream order and record them on the node; a test-only fault
switch (/etc/standin/faults) makes one step fail once; kubectl answers a few questions about
the local node only from that record (tools/state.py). They never run a Kubernetes component
and every free-text line they print says "stand-in". Never ship them to users.

`make_standin_bundle(dest, cluster)` lays them out exactly like `invoke bundle.fetch` does
(`<dest>/<distribution>-<version>-linux-amd64/` with SHA256SUMS), so `cluster.up --bundle DEST`
takes the same code path as with a real bundle.

The container runtime in it is real, not a stand-in (kubeadm clusters with containerd_source
bundle): containerd 2.x (containerd, containerd-shim-runc-v2, ctr) from Debian sid's containerd
package, which is built from the upstream release and needs only libc on bookworm, and runc
from bookworm's runc package (sid's needs glibc 2.38). `runtime_binaries()` fetches the two .debs
once through the host's Debian mirror (provisioner.lab.packages.suite_debs) into
/var/cache/provisioner-lab and takes the binaries out with dpkg-deb. Each stand-in is one executable file: a Python
zip application (PEP 441) holding tools/ and the upstream data files it checks against
(tests/data/upstream/), because only the binaries themselves are pushed to the nodes.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

from provisioner import bundle as bundles
from provisioner import versions
from provisioner.model import Cluster
from provisioner.versions import IMAGES

HERE = Path(__file__).resolve().parent
TOOLS = HERE / "tools"
UPSTREAM = HERE.parent / "data" / "upstream"
DATA = ("kubeadm-v1beta4.yaml", "kubelet-v1beta1.yaml", "kubeproxy-v1alpha1.yaml",
        "k3s-flags.yaml")
SHEBANG = b"#!/usr/bin/env python3\n"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # same bytes on every build: a rebuilt bundle changes nothing

CNI_README = """\
# cni-plugins (stand-in bundle, TEST-ONLY)

A real bundle holds the upstream CNI plugins (containernetworking/plugins) here. The lab nodes
use Debian's containernetworking-plugins package instead (installed by the binaries phase into
/usr/lib/cni), so this stand-in bundle ships no plugin.
"""

AIRGAP_TEXT = """\
stand-in k3s-airgap-images for {version} (TEST-ONLY): named like the k3s release's image
tarball so that the bundle and the binaries phase take the real path; it holds no image.
"""


def build_tool(name: str, version: str) -> bytes:
    """One stand-in as an executable zip application: `#!/usr/bin/env python3` + zip."""
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        def add(arcname: str, data: bytes) -> None:
            info = zipfile.ZipInfo(arcname, FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)

        add("__main__.py", (
            f'"""TEST-ONLY stand-in for {name} {version}: not Kubernetes (see standin/)."""\n'
            "import sys\n"
            f"from standin import Tool, run, {name}\n"
            f"sys.exit(run(Tool({name!r}, {version!r}), {name}.main, sys.argv[1:]))\n"
        ).encode())
        for src in sorted(TOOLS.glob("*.py")):
            add(f"standin/{src.name}", src.read_bytes())
        for d in DATA:
            add(f"standin/data/{d}", (UPSTREAM / d).read_bytes())
    return buf.getvalue()


# bundle name -> (Debian suite, package, path inside the package)
RUNTIME_DEBS = {
    "containerd/containerd": ("sid", "containerd", "/usr/bin/containerd"),
    "containerd/containerd-shim-runc-v2": ("sid", "containerd", "/usr/bin/containerd-shim-runc-v2"),
    "containerd/ctr": ("sid", "containerd", "/usr/bin/ctr"),
    "runc": ("bookworm", "runc", "/usr/sbin/runc"),
}
RUNTIME_CACHE = "runtime-bin"  # under the lab cache: the extracted binaries, per .deb
RUNTIME_PLACEHOLDER = """#!/bin/sh
echo "stand-in: {name} is a TEST-ONLY placeholder in the stand-in bundle, not {name}" >&2
exit 1
"""


def runtime_binaries(log=print) -> dict[str, Path]:
    """{bundle name: cached binary} of the real containerd and runc the test bundle carries."""
    from provisioner.lab import CACHE_DIR
    from provisioner.lab.packages import deb_files, suite_debs

    out = {}
    for suite in sorted({s for s, _, _ in RUNTIME_DEBS.values()}):
        wanted = {n: (p, inside) for n, (s, p, inside) in RUNTIME_DEBS.items() if s == suite}
        debs = suite_debs(suite, tuple(sorted({p for p, _ in wanted.values()})), log)
        for package, deb in debs.items():
            members = {inside: n for n, (p, inside) in wanted.items() if p == package}
            folder = CACHE_DIR / RUNTIME_CACHE / deb.stem  # NAME_VERSION_ARCH: a new .deb, anew
            if not all((folder / n).is_file() for n in members.values()):
                deb_files(deb, members, folder)
            out.update({n: folder / n for n in members.values()})
    return out


def make_standin_bundle(dest: Path, cluster: Cluster, arch: str = "amd64",
                        runtime: bool | None = None, airgap: bool = True,
                        images: bool = True) -> Path:
    """A bundle of stand-ins for the cluster's distribution and version under dest; returns
    dest (what `--bundle` takes). runtime: carry the real containerd and runc (default: when
    the cluster takes them from the bundle; fetched once, see runtime_binaries). k3s: with
    `airgap`, also a small stand-in file named like k3s's image tarball. kubeadm: with `images`,
    a tiny TEST-ONLY image (tests/standins/images.py) for every image the cluster needs, so the
    import path runs in every lab."""
    dest = Path(dest)
    folder = dest / bundles.folder_name(cluster, arch)
    folder.mkdir(parents=True, exist_ok=True)
    version = cluster.kubernetes_version
    pin = versions.pins(version)
    if runtime is None:
        runtime = bundles.containerd_from_bundle(cluster)
    files: dict[str, bytes] = {}
    if cluster.is_k3s:
        files["k3s"] = build_tool("k3s", version)
        if airgap:  # what bundle.fetch saves from the k3s release: here a marker, not images
            files[f"k3s-airgap-images-{arch}.tar.zst"] = AIRGAP_TEXT.format(version=version).encode()
    else:
        for name, v in (("kubeadm", version), ("kubelet", version), ("kubectl", version),
                        ("crictl", pin.crictl)):
            files[name] = build_tool(name, v)
        files["cni-plugins/README.md"] = CNI_README.encode()
        if not runtime and bundles.containerd_from_bundle(cluster):
            # TEST-ONLY placeholders for tests that never push them (no network to fetch)
            for name in [f"containerd/{b}" for b in bundles.CONTAINERD_BINARIES] + ["runc"]:
                files[name] = RUNTIME_PLACEHOLDER.format(name=name).encode()
    sources = {}
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o644 if name.endswith((".md", ".zst")) else 0o755)
        sha = bundles.sha256_file(path)
        sources[f"stand-in {name}"] = {"url": "test-only stand-in", "checksum_url": "-",
                                       "sha256": sha, "files": {name: sha}}
    for name, src in (runtime_binaries() if runtime else {}).items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, target)
        target.chmod(0o755)
        sha = bundles.sha256_file(target)
        sources[f"test runtime {name}"] = {"url": f"Debian package ({src.parent.name})",
                                           "checksum_url": "-", "sha256": sha,
                                           "files": {name: sha}}
    if images and not cluster.is_k3s and cluster.version_minor in IMAGES:
        # TEST-ONLY tiny images under the real names (minors with image pins)
        from provisioner import images as needed
        from .images import write_bundle_images

        for rel, sha in write_bundle_images(folder, [i.ref for i in needed.needed(cluster)]).items():
            sources[f"stand-in {rel}"] = {"url": "test-only stand-in", "checksum_url": "-",
                                          "sha256": sha, "files": {rel: sha}}
    bundles.write_sources(folder, sources)
    return dest
