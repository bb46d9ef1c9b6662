"""Images: which ones a cluster needs and under which names (image_repository), the OCI archive
check, bundle.fetch against a real registry (docker-registry on 127.0.0.1, real skopeo), the
images phase's decisions from facts, and the smoke image.

The registry holds TEST-ONLY tiny images built from busybox-static (tests/standins/images.py)
under the real names: what is proven is the fetch, check and import path, not the upstream
images' content."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile

import pytest
import yaml

from provisioner import bundle as bundles
from provisioner import images, inventory as inv, render, smoke, versions
from provisioner.errors import UserError
from tests.conftest import REPO
from tests.registry import Registry
from tests.standins.images import build

INV = REPO / "inventories"


def load(name: str, **changes):
    c = inv.load(INV / name)
    if "image_repository" in changes and "sandbox_image" not in changes:
        changes["sandbox_image"] = None
    c = dataclasses.replace(c, **changes)
    if c.sandbox_image is None:
        c = dataclasses.replace(c, sandbox_image=images.sandbox_default(c))
    return c


# ---------------------------------------------------------------------------------------------
# Which images, under which names
# ---------------------------------------------------------------------------------------------

PINS = versions.IMAGES["1.36"]
KUBE_1_36 = ["registry.k8s.io/kube-apiserver:v1.36.4",
             "registry.k8s.io/kube-controller-manager:v1.36.4",
             "registry.k8s.io/kube-scheduler:v1.36.4", "registry.k8s.io/kube-proxy:v1.36.4",
             f"registry.k8s.io/coredns/coredns:{PINS.coredns}",
             f"registry.k8s.io/pause:{PINS.pause}"]
FLANNEL = [versions.FLANNEL, versions.FLANNEL_CNI_PLUGIN]

NEEDED = [  # inventory, changes, the refs `kubeadm config images list` + ours give
    ("single.yml", {}, KUBE_1_36 + [f"registry.k8s.io/etcd:{PINS.etcd}"] + FLANNEL
     + [versions.SMOKE]),
    ("ha-external-etcd.yml", {}, KUBE_1_36 + FLANNEL + [versions.SMOKE]),  # no etcd image
    ("ha-kubevip.yml", {"cni": "flannel"}, KUBE_1_36 + [f"registry.k8s.io/etcd:{PINS.etcd}"]
     + FLANNEL + [versions.KUBE_VIP, versions.SMOKE]),
    ("k3s-ha.yml", {}, []),  # the airgap archive carries k3s's images
    ("single.yml", {"sandbox_image": "harbor.local/pause:3.9"},
     KUBE_1_36 + [f"registry.k8s.io/etcd:{PINS.etcd}"] + FLANNEL + [versions.SMOKE,
                                                                   "harbor.local/pause:3.9"]),
]


@pytest.mark.parametrize("name, changes, refs", NEEDED)
def test_needed_follows_version_topology_and_cni(name, changes, refs):
    assert [i.ref for i in images.needed(load(name, **changes))] == refs


def test_control_plane_images_go_to_control_planes_only():
    c = load("ha-kubevip.yml", cni="flannel")
    cp, = [n for n in c.nodes if n.name == c.first_control_plane.name]
    worker = c.kube_workers[0]
    on_cp = {i.ref for i in images.for_node(c, cp)}
    on_worker = {i.ref for i in images.for_node(c, worker)}
    only_cp = {"registry.k8s.io/kube-apiserver:v1.36.4", f"registry.k8s.io/etcd:{PINS.etcd}",
               "registry.k8s.io/kube-scheduler:v1.36.4", versions.KUBE_VIP,
               "registry.k8s.io/kube-controller-manager:v1.36.4"}
    assert on_cp - on_worker == only_cp and on_worker <= on_cp
    assert versions.SMOKE in on_worker and f"registry.k8s.io/pause:{PINS.pause}" in on_worker


ALIYUN = "registry.aliyuncs.com/google_containers"
NAMES = [  # image_repository, upstream, name on the nodes
    ("registry.k8s.io", "registry.k8s.io/coredns/coredns:v1.11.3",
     "registry.k8s.io/coredns/coredns:v1.11.3"),
    # a China mirror of the kube images: kubeadm flattens coredns/coredns to coredns
    (ALIYUN, "registry.k8s.io/kube-apiserver:v1.36.4", f"{ALIYUN}/kube-apiserver:v1.36.4"),
    (ALIYUN, "registry.k8s.io/coredns/coredns:v1.11.3", f"{ALIYUN}/coredns:v1.11.3"),
    (ALIYUN, "registry.k8s.io/pause:3.10", f"{ALIYUN}/pause:3.10"),
    # ... which holds no flannel, kube-vip or busybox: those keep their names
    (ALIYUN, versions.FLANNEL, versions.FLANNEL),
    (ALIYUN, versions.SMOKE, versions.SMOKE),
    # a private registry that holds everything: one mapping entry per source registry
    ({"registry.k8s.io": "harbor.local:5000/k8s", "ghcr.io": "harbor.local:5000/ghcr",
      "docker.io": "harbor.local:5000/hub"}, versions.FLANNEL,
     "harbor.local:5000/ghcr/" + versions.FLANNEL.split("/", 1)[1]),
    ({"registry.k8s.io": "harbor.local:5000/k8s", "docker.io": "harbor.local:5000/hub"},
     versions.SMOKE, "harbor.local:5000/hub/library/busybox:1.37.0"),
    ({"docker.io": "harbor.local:5000/hub"}, "registry.k8s.io/pause:3.10",
     "registry.k8s.io/pause:3.10"),
]


@pytest.mark.parametrize("repository, upstream, name", NAMES)
def test_image_repository_names(repository, upstream, name):
    assert images.rename(load("single.yml", image_repository=repository), upstream) == name


def rendered(c, host, path):
    secrets = {"bootstrap_token": "abcdef.0123456789abcdef", "certificate_key": "0" * 64,
               "k3s_token": "t" * 32, "ca_cert_hash": "sha256:" + "0" * 64}
    return render.render(c, secrets)[host][path].content.decode()


def test_image_repository_reaches_kubeadm_containerd_and_every_manifest():
    c = load("ha-kubevip.yml", cni="flannel", image_repository={
        "registry.k8s.io": ALIYUN, "ghcr.io": "harbor.local/ghcr"})
    cp = c.first_control_plane.name
    init = list(yaml.safe_load_all(rendered(c, cp, "/etc/kubernetes/kubeadm-init.yaml")))
    assert init[1]["imageRepository"] == ALIYUN
    assert f'sandbox = "{ALIYUN}/pause:{PINS.pause}"' in rendered(
        c, cp, "/etc/containerd/config.toml")
    flannel = rendered(c, cp, "/etc/kubernetes/addons/flannel.yaml")
    assert "harbor.local/ghcr/flannel-io/flannel:" in flannel and "ghcr.io/" not in flannel
    vip = rendered(c, cp, "/etc/kubernetes/manifests/kube-vip.yaml")
    assert "harbor.local/ghcr/kube-vip/kube-vip:" in vip
    assert f"image: {versions.SMOKE}" in smoke.manifest(c)  # docker.io not mapped
    refs = {i.ref for i in images.needed(c)}
    run = set()  # every image a manifest runs is bundled
    for text in (flannel, vip, smoke.manifest(c)):
        run |= set(images_in(list(yaml.safe_load_all(text))))
    assert len(run) == 4 and run <= refs


def images_in(doc):
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "image" and isinstance(v, str):
                yield v
            else:
                yield from images_in(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from images_in(v)


def test_the_default_sandbox_image_is_kubeadms_pause_for_the_version():
    c = inv.load(INV / "single.yml")
    assert c.sandbox_image == f"registry.k8s.io/pause:{PINS.pause}"
    assert images.kubeadm_repository(c) == "registry.k8s.io"


# ---------------------------------------------------------------------------------------------
# The archive check
# ---------------------------------------------------------------------------------------------

REF = "registry.k8s.io/pause:3.10"


def rewrite(data: bytes, change=lambda n, b: b, extra=()) -> bytes:
    """A copy of an archive with change(name, bytes) -> bytes | None applied to each member
    (None leaves it out) and the (TarInfo, bytes) of `extra` appended."""
    src = tarfile.open(fileobj=io.BytesIO(data))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as dst:
        for m in src:
            if not m.isfile():
                dst.addfile(m)
                continue
            new = change(m.name, src.extractfile(m).read())
            if new is not None:
                m.size = len(new)
                dst.addfile(m, io.BytesIO(new))
        for info, body in extra:
            info.size = len(body) if info.isfile() else 0
            dst.addfile(info, io.BytesIO(body) if info.isfile() else None)
    return out.getvalue()


def manifest_of(data: bytes) -> dict:
    tar = tarfile.open(fileobj=io.BytesIO(data))
    index = json.loads(tar.extractfile("index.json").read())
    digest = index["manifests"][0]["digest"].split(":")[1]
    return json.loads(tar.extractfile(f"blobs/sha256/{digest}").read())


def layer_name(data: bytes, n: int) -> str:
    return "blobs/sha256/" + manifest_of(data)["layers"][n]["digest"].split(":")[1]


def flip(body: bytes) -> bytes:
    return body[:100] + bytes([body[100] ^ 1]) + body[101:]


def add_member(data: bytes, info: tarfile.TarInfo, body: bytes = b"") -> bytes:
    return rewrite(data, extra=[(info, body)])


def symlink(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
    return info


def bad_cases():
    good, _ = build(REF)
    layer = layer_name(good, 1)
    return [
        ("a flipped byte in a layer", rewrite(good, lambda n, b: flip(b) if n == layer else b),
         "does not match its digest"),
        ("a layer left out", rewrite(good, lambda n, b: None if n == layer else b),
         "is missing"),
        ("another name in index.json", rewrite(good, lambda n, b: b.replace(
            REF.encode(), b"registry.k8s.io/pause:9.9") if n == "index.json" else b),
         "names the image 'registry.k8s.io/pause:9.9'"),
        ("a symlink member", add_member(good, symlink("blobs/sha256/" + "a" * 64)),
         "is not a regular file"),
        ("a stray file", add_member(good, tarfile.TarInfo("etc/passwd")), "unexpected member"),
        ("not a tar", b"<html>proxy error</html>" * 40, "not a readable OCI archive"),
    ]


@pytest.mark.parametrize("what, data, message", bad_cases(), ids=[c[0] for c in bad_cases()])
def test_verify_archive_refuses(tmp_path, what, data, message):
    path = tmp_path / "image.tar"
    path.write_bytes(data)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        images.verify_archive(path, REF)


def test_verify_archive_checks_sizes_and_diff_ids(tmp_path):
    good, digest = build(REF)
    path = tmp_path / "image.tar"
    path.write_bytes(good)
    assert images.verify_archive(path, REF) == digest
    # a manifest whose layer descriptor lies about the size (manifest re-hashed to match)
    import hashlib

    man = manifest_of(good)
    man["layers"][1]["size"] += 1
    raw = json.dumps(man).encode()
    new = "sha256:" + hashlib.sha256(raw).hexdigest()

    def change(n, b):
        if n == "index.json":
            idx = json.loads(b)
            idx["manifests"][0].update(digest=new, size=len(raw))
            return json.dumps(idx).encode()
        return b
    lied = add_member(rewrite(good, change), _info("blobs/sha256/" + new.split(":")[1], raw), raw)
    path.write_bytes(lied)
    with pytest.raises(UserError, match="its descriptor says"):
        images.verify_archive(path, REF)


def _info(name, body):
    info = tarfile.TarInfo(name)
    info.size = len(body)
    return info


# ---------------------------------------------------------------------------------------------
# bundle.fetch against a real registry
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry():
    reg = Registry("unit", "127.0.0.1", 5091).start()
    try:
        c = load("single.yml")
        for i in images.needed(c):
            reg.push(build(i.ref)[0], i.ref, i.ref)  # <mirror>/<full name>
        yield reg
    finally:
        reg.stop()


def test_fetch_pulls_every_image_checks_it_and_a_rerun_copies_nothing(tmp_path, registry):
    c = load("single.yml")
    folder = tmp_path / bundles.folder_name(c)
    said = []
    index = images.fetch(c, folder, mirror=registry.url, progress=said.append)
    assert sorted(index) == sorted(i.ref for i in images.needed(c))
    for ref, rec in index.items():
        assert rec["digest"] == build(ref)[1]  # the manifest digest the node will list
        assert rec["source"] == f"docker://127.0.0.1:5091/{ref}"
        assert images.verify_archive(folder / rec["file"], ref) == rec["digest"]
    sums = bundles.read_sums(folder)
    assert set(sums) == {rec["file"] for rec in index.values()}
    assert images.check(c, folder, sums, deep=True) == index
    assert not list((folder / "images").glob(".pull-*"))
    said.clear()
    images.fetch(c, folder, mirror=registry.url, progress=said.append)
    assert said and all(s.endswith("present and verified") for s in said)


def test_a_tampered_blob_in_the_registry_is_refused_and_nothing_is_kept(tmp_path, registry):
    c = load("single.yml")
    victim = "registry.k8s.io/kube-scheduler:v1.36.4"
    blob = registry.blob(manifest_of(build(victim)[0])["layers"][1]["digest"])
    original = blob.read_bytes()
    blob.write_bytes(flip(original))
    folder = tmp_path / bundles.folder_name(c)
    try:
        with pytest.raises(UserError, match="nothing was kept") as e:
            images.fetch(c, folder, mirror=registry.url, progress=lambda s: None)
        assert "kube-scheduler" in str(e.value) and "igest" in str(e.value)
    finally:
        blob.write_bytes(original)
    assert not (folder / "images" / images.archive_name(victim)).exists()
    assert not list((folder / "images").glob(".pull-*"))
    assert victim not in (images.read_index(folder) or {})
    assert images.archive_name(victim) not in "".join(bundles.read_sums(folder))


def test_the_standin_bundle_lists_the_same_digests_as_a_fetch(tmp_path, registry):
    from tests.standins import make_standin_bundle

    c = load("single.yml")
    found = bundles.locate(c, make_standin_bundle(tmp_path, c), deep=True)
    assert {r: v["digest"] for r, v in found.images.items()} == {
        i.ref: build(i.ref)[1] for i in images.needed(c)}


def test_a_bundle_missing_an_image_is_refused(tmp_path):
    from tests.standins import make_standin_bundle

    c = load("single.yml")
    dest = make_standin_bundle(tmp_path, c)
    folder = dest / bundles.folder_name(c)
    index = json.loads((folder / images.INDEX).read_text())
    del index[versions.SMOKE]
    (folder / images.INDEX).write_text(json.dumps(index))
    with pytest.raises(UserError, match="missing from IMAGES.json: docker.io/library/busybox"):
        bundles.locate(c, dest)


def test_bundle_list_rows_name_the_source_after_the_mirror():
    rows = images.rows(load("single.yml"), mirror="https://mirror.internal/all")
    pause = next(r for r in rows if r["name"].startswith("registry.k8s.io/pause:"))
    assert pause["source"] == f"docker://mirror.internal/all/registry.k8s.io/pause:{PINS.pause}"
    assert pause["kind"] == "image" and "digest" in pause["checksum"]


# ---------------------------------------------------------------------------------------------
# The images phase decides from the node's image list
# ---------------------------------------------------------------------------------------------


def test_ctr_images_ls_is_read_by_name_and_digest():
    out = ("REF                          TYPE                                       DIGEST"
           + " " * 66 + "SIZE    PLATFORMS   LABELS\n"
           "registry.k8s.io/pause:3.10   application/vnd.oci.image.manifest.v1+json "
           "sha256:" + "a" * 64 + " 1.0 MiB linux/amd64 io.cri-containerd.image=managed\n"
           "sha256:" + "b" * 64 + " application/vnd.oci.image.manifest.v1+json sha256:"
           + "c" * 64 + " 1.0 MiB linux/amd64 -\n")
    assert images_phase().__class__.__module__.endswith("05_images")
    from importlib import import_module

    listed = import_module("provisioner.phases.05_images").listed
    assert listed(out) == {"registry.k8s.io/pause:3.10": "sha256:" + "a" * 64,
                           "sha256:" + "b" * 64: "sha256:" + "c" * 64}


def images_phase():
    from provisioner import phases

    return phases.IMAGES


def test_only_missing_or_different_images_are_imported(tmp_path):
    from provisioner import phases
    from provisioner.facts import Facts
    from tests.standins import make_standin_bundle

    c = load("single.yml")
    found = bundles.locate(c, make_standin_bundle(tmp_path, c))
    ctx = phases.Context(c, {}, {}, bundle=found)
    cp, worker = c.first_control_plane, c.kube_workers[0]

    def node_has(node, table):
        lines = ["REF TYPE DIGEST SIZE PLATFORMS LABELS"] + [
            f"{ref} application/vnd.oci.image.manifest.v1+json {d} 1 linux/amd64 -"
            for ref, d in table.items()]
        ctx.facts[node.name] = Facts(node.name, commands={"images": {
            "rc": 0, "out": "\n".join(lines) + "\n"}})

    everything = {r: v["digest"] for r, v in found.images.items()}
    node_has(cp, everything)
    node_has(worker, {})
    assert images_phase().checks(ctx, cp) is not None and list(images_phase().checks(ctx, cp)) == []
    want = sorted(f"import image {i.ref}" for i in images.for_node(c, worker))
    assert sorted(images_phase().checks(ctx, worker)) == want
    assert not any("kube-apiserver" in w for w in want)
    changed = dict(everything, **{versions.SMOKE: "sha256:" + "0" * 64})
    node_has(cp, changed)
    assert list(images_phase().checks(ctx, cp)) == [f"import image {versions.SMOKE}"]
    assert images_phase().hostvars(ctx, cp)["image_archives"] == [
        "/var/lib/provisioner/images/" + images.archive_name(versions.SMOKE)]
    # without images in the bundle (binaries only) there is nothing to import
    ctx.bundle = dataclasses.replace(found, images=None)
    assert list(images_phase().checks(ctx, worker)) == []


def test_verify_finds_a_tampered_image_even_with_a_matching_sha256sums(tmp_path):
    """bundle.verify (deep) checks inside every archive: a changed layer whose SOURCES.json and
    SHA256SUMS lines were both edited to match passes the sha256 check but not the blob
    digests."""
    from tests.standins import make_standin_bundle

    c = load("single.yml")
    dest = make_standin_bundle(tmp_path, c, runtime=False)
    folder = dest / bundles.folder_name(c)
    rel = json.loads((folder / images.INDEX).read_text())[versions.SMOKE]["file"]
    data = (folder / rel).read_bytes()
    layer = layer_name(data, 0)
    (folder / rel).write_bytes(rewrite(data, lambda n, b: flip(b) if n == layer else b))
    with pytest.raises(UserError, match="checksum mismatch"):  # the file alone changed
        bundles.locate(c, dest)
    sources = bundles.read_sources(folder)  # whoever also rewrites the record...
    for record in sources.values():
        if rel in record["files"]:
            record["files"][rel] = bundles.sha256_file(folder / rel)
    bundles.write_sources(folder, sources)
    assert bundles.locate(c, dest).images  # ...passes cluster.up's quick check (sha256 only)
    with pytest.raises(UserError, match="does not match its digest"):
        bundles.locate(c, dest, deep=True)


def test_a_long_image_list_is_read_whole_and_a_silent_containerd_is_named(tmp_path):
    """A node keeps the images of every version it ran: the listing is read to its end (a
    cut listing made held images look missing after an upgrade). When containerd runs but
    `ctr` does not answer, the plan says that, not only which images look missing."""
    from provisioner import phases, probe
    from provisioner.facts import Facts
    from tests.standins import make_standin_bundle

    c = load("single.yml")
    found = bundles.locate(c, make_standin_bundle(tmp_path, c))
    ctx = phases.Context(c, {}, {}, bundle=found)
    cp = c.first_control_plane
    held = {f"registry.example/old-{i}:v1.{i}.0": "sha256:" + "1" * 64 for i in range(40)}
    held.update({r: v["digest"] for r, v in found.images.items()})
    listing = tmp_path / "ls.txt"
    listing.write_text("REF TYPE DIGEST SIZE PLATFORMS LABELS\n" + "".join(
        f"{ref} application/vnd.oci.image.manifest.v1+json {d} 1.0 MiB linux/amd64 "
        "io.cri-containerd.image=managed\n" for ref, d in sorted(held.items())))
    assert len(listing.read_text()) > probe.OUT_LIMIT
    spec = images_phase().probes(c, cp)["commands"]["images"]
    out = probe.commands({"images": dict(spec, argv=["cat", str(listing)])})
    ctx.facts[cp.name] = Facts(cp.name, commands=out)
    assert list(images_phase().checks(ctx, cp)) == []

    running = {"containerd": {"active": "active", "enabled": "enabled"}}
    ctx.facts[cp.name] = Facts(cp.name, services=running,
                               commands={"images": {"rc": None, "out": ""}})
    work = list(images_phase().checks(ctx, cp))
    assert work[0] == "read the node's images (`ctr images ls` did not answer within 120 s)"
    assert len(work) == 1 + len(images.for_node(c, cp))
    assert images_phase().hostvars(ctx, cp)["image_replaced"] == []
