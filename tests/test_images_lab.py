"""Images on booted lab nodes (tests/data/lab-images.yml: 1 kubeadm control plane + 1 worker,
bridge k8slab11).

Real here: the registry (Debian's docker-registry, the CNCF distribution registry, serving
plain HTTP on the bridge address 10.90.11.1:5000 only), skopeo pulling from it in bundle.fetch,
the archive check, containerd (the nodes' own) importing the archives and pulling through the
rendered certs.d mirror. TEST-ONLY: the images are tiny busybox-static images under the real
names (tests/standins/images.py), the Kubernetes binaries are the stand-ins.
"""

from __future__ import annotations

import json
import time

import pytest

from provisioner import actions, images
from provisioner import bundle as bundles
from provisioner.errors import UserError
from tests.conftest import REPO, booted_lab
from tests.registry import Registry
from tests.standins import make_standin_bundle
from tests.standins.images import build

pytestmark = pytest.mark.lab
INVENTORY = REPO / "tests/data/lab-images.yml"
MIRROR_TAG = "docker.io/library/busybox:pulled-through-mirror"  # in no bundle


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with booted_lab(INVENTORY, tmp_path_factory.mktemp("images-state")) as booted:
        yield booted


@pytest.fixture(scope="module")
def registry(lab):
    """The registry on the bridge address (the bridge exists once the lab is up)."""
    reg = Registry("k8slab11", "10.90.11.1", 5000).start()
    try:
        for i in images.needed(lab.cluster):  # --image-mirror layout: <mirror>/<full name>
            reg.push(build(i.ref)[0], i.ref, i.ref)
        # docker.io's pull-through layout, for containerd's registry_mirrors (no host prefix)
        reg.push(build(MIRROR_TAG)[0], MIRROR_TAG, MIRROR_TAG.split("/", 1)[1])
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def bundle(lab, registry, tmp_path_factory):
    """The stand-in binaries, and the images as bundle.fetch --image-mirror pulls them."""
    dest = make_standin_bundle(tmp_path_factory.mktemp("bundle"), lab.cluster, images=False)
    folder = dest / bundles.folder_name(lab.cluster)
    started = time.monotonic()
    images.fetch(lab.cluster, folder, mirror=registry.url, progress=lambda s: None)
    print(f"\nfetch of {len(images.needed(lab.cluster))} images: "
          f"{time.monotonic() - started:.1f} s")
    return dest


def sh(lab, node, cmd):
    rc, out, err = lab.run(node, cmd)
    assert rc == 0, f"{node}: {cmd}: {err}"
    return out


def node_images(lab, node) -> dict[str, str]:
    out = sh(lab, node, "ctr -n k8s.io images ls")
    return {c[0]: c[2] for c in (line.split() for line in out.splitlines()[1:]) if len(c) > 2}


def work(result):
    return {p.title: w for p, w in result if w}


def test_a_tampered_blob_is_refused_and_nothing_is_kept(lab, registry, tmp_path):
    victim = f"registry.k8s.io/kube-proxy:{lab.cluster.kubernetes_version}"
    data = build(victim)[0]
    import io
    import tarfile

    tar = tarfile.open(fileobj=io.BytesIO(data))
    index = json.loads(tar.extractfile("index.json").read())
    manifest = json.loads(tar.extractfile(
        "blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]).read())
    blob = registry.blob(manifest["layers"][1]["digest"])  # the image's own layer
    original = blob.read_bytes()
    blob.write_bytes(original[:-5] + bytes(b ^ 0xFF for b in original[-5:]))
    folder = tmp_path / bundles.folder_name(lab.cluster)
    try:
        with pytest.raises(UserError, match="nothing was kept") as e:
            images.fetch(lab.cluster, folder, mirror=registry.url, progress=lambda s: None)
        assert "kube-proxy" in str(e.value)
    finally:
        blob.write_bytes(original)
    assert not (folder / "images" / images.archive_name(victim)).exists()
    assert not list((folder / "images").glob(".pull-*"))
    assert victim not in (images.read_index(folder) or {})


def test_fetched_images_verify(lab, bundle):
    found = bundles.locate(lab.cluster, bundle, deep=True)
    assert sorted(found.images) == sorted(i.ref for i in images.needed(lab.cluster))
    for ref, rec in found.images.items():
        assert rec["source"] == f"docker://10.90.11.1:5000/{ref}"
        assert rec["digest"] == build(ref)[1]


def test_up_imports_each_nodes_images_once(lab, bundle):
    found = bundles.locate(lab.cluster, bundle)
    actions.up(lab.cluster, bundle_dir=str(bundle))
    for node in lab.cluster.kube_nodes:
        have = node_images(lab, node.name)
        want = {i.ref: found.images[i.ref]["digest"]
                for i in images.for_node(lab.cluster, node)}
        assert {r: have.get(r) for r in want} == want, node.name  # names and digests
        if not node.has("control_plane"):  # control plane images only on control planes
            assert not any("kube-apiserver" in r or "/etcd:" in r for r in have)
        assert sh(lab, node.name, f"ls -A {images_stage()} || true").strip() == ""
    rerun = actions.up(lab.cluster, bundle_dir=str(bundle))
    assert work(rerun) == {}  # the no-op rerun imports nothing
    assert all(node_images(lab, n.name) == node_images(lab, n.name)
               for n in lab.cluster.kube_nodes)


def images_stage() -> str:
    from importlib import import_module

    return import_module("provisioner.phases.05_images").STAGE


def test_import_time_per_node(lab, bundle):
    """Take a node's images away; the next up imports exactly them (timed, for the README)."""
    for node in lab.cluster.kube_nodes:
        refs = [i.ref for i in images.for_node(lab.cluster, node)]
        sh(lab, node.name, "ctr -n k8s.io images rm " + " ".join(refs) + " >/dev/null")
        started = time.monotonic()
        result = actions.up(lab.cluster, bundle_dir=str(bundle))
        took = time.monotonic() - started
        assert work(result) == {"images": {node.name: [f"import image {r}" for r in refs]}}
        started = time.monotonic()
        assert work(actions.up(lab.cluster, bundle_dir=str(bundle))) == {}
        noop = time.monotonic() - started
        size = sum(len(build(r)[0]) for r in refs)
        rc, out, err = lab.run(node.name, "sh -c 'mkdir -p /run/t && cd /run/t && "
                               "ctr -n k8s.io images export x.tar " + refs[-1] + " && "
                               "ctr -n k8s.io images rm " + refs[-1] + " >/dev/null && "
                               "s=$(date +%s.%N) && ctr -n k8s.io images import x.tar >/dev/null"
                               " && e=$(date +%s.%N) && rm -rf /run/t && echo $s $e'")
        assert rc == 0, err
        one = float(out.split()[1]) - float(out.split()[0])
        print(f"\n{node.name}: {len(refs)} images ({size / 1e6:.1f} MB) imported: cluster.up "
              f"{took:.1f} s, the no-op rerun {noop:.1f} s; one `ctr images import` {one:.2f} s")


def test_containerd_pulls_through_registry_mirrors(lab, registry):
    """The rendered certs.d hosts.toml sends docker.io pulls to the lab registry (nodes have no
    other way out), with real containerd."""
    node = lab.cluster.kube_workers[0].name
    hosts = sh(lab, node, "cat /etc/containerd/certs.d/docker.io/hosts.toml")
    assert '[host."http://10.90.11.1:5000"]' in hosts
    sh(lab, node, f"ctr -n k8s.io images rm {MIRROR_TAG} >/dev/null 2>&1 || true")
    sh(lab, node, f"ctr -n k8s.io images pull --hosts-dir /etc/containerd/certs.d {MIRROR_TAG}")
    assert node_images(lab, node)[MIRROR_TAG] == build(MIRROR_TAG)[1]
    sh(lab, node, f"ctr -n k8s.io images rm {MIRROR_TAG} >/dev/null")


def test_a_crashed_runs_registry_is_cleaned_first(lab):
    reg = Registry("k8slab11-leftover", "10.90.11.1", 5001).start()
    leftover, reg.proc = reg.proc, None  # as if the test run had crashed
    again = Registry("k8slab11-leftover", "10.90.11.1", 5001).start()  # stops it first
    try:
        assert leftover.wait(10) is not None and again.proc.poll() is None
    finally:
        again.stop()
