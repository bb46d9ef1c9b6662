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
takes the same code path as with a real bundle. Each stand-in is one executable file: a Python
zip application (PEP 441) holding tools/ and the upstream data files it checks against
(tests/data/upstream/), because only the binaries themselves are pushed to the nodes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from provisioner import bundle as bundles
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


def make_standin_bundle(dest: Path, cluster: Cluster, arch: str = "amd64",
                        images: bool = True) -> Path:
    """A bundle of stand-ins for the cluster's distribution and version under dest; returns
    dest (what `--bundle` takes). kubeadm: with a tiny TEST-ONLY image (tests/standins/
    images.py) for every image the cluster needs, so the import path runs in every lab."""
    dest = Path(dest)
    folder = dest / bundles.folder_name(cluster, arch)
    folder.mkdir(parents=True, exist_ok=True)
    version = cluster.kubernetes_version
    if cluster.is_k3s:
        tools = {"k3s": version}
    else:
        crictl, _cni = bundles.pinned(cluster)
        tools = {"kubeadm": version, "kubelet": version, "kubectl": version, "crictl": crictl}
        (folder / "cni-plugins").mkdir(exist_ok=True)
        (folder / "cni-plugins" / "README.md").write_text(CNI_README)
    for name, v in tools.items():
        path = folder / name
        path.write_bytes(build_tool(name, v))
        path.chmod(0o755)
    names = list(tools) + ([] if cluster.is_k3s else ["cni-plugins/README.md"])
    sums = {n: bundles.sha256_file(folder / n) for n in names}
    if images and not cluster.is_k3s and cluster.version_minor in IMAGES:
        # TEST-ONLY tiny images under the real names (minors with image pins)
        from provisioner import images as needed
        from .images import write_bundle_images

        sums.update(write_bundle_images(folder, [i.ref for i in needed.needed(cluster)]))
    bundles.write_sums(folder, sums)
    return dest
