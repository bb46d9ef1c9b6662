"""bundle.fetch / locate against a local HTTP server laid out like the upstream release sites.

The server (127.0.0.1 only) serves small fake binaries with their published .sha256 files at
the paths dl.k8s.io and GitHub releases use, and counts every request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from provisioner import bundle as bundles
from provisioner import inventory as inv
from provisioner import versions
from provisioner.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
ARCH = "amd64"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tgz(members: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Release:
    """A fake release tree: {url path: bytes}, served by a thread; records request paths."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        release = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                release.requests.append(self.path)
                data = release.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path: str, data: bytes, published: bytes | None = None, line: bool = False):
        """Serve data at path and its sha256 at path.sha256 (a bare hash, or `HASH  NAME`)."""
        self.files[path] = data
        digest = sha(published if published is not None else data)
        name = path.rsplit("/", 1)[-1]
        self.files[path + ".sha256"] = (f"{digest}  {name}\n" if line else digest).encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def kubeadm_tree(rel: Release, cluster, prefix="", gh="/gh", corrupt=()) -> dict[str, bytes]:
    """Publish what a kubeadm cluster needs under prefix (dl.k8s.io) and gh (github.com)."""
    v = cluster.kubernetes_version
    pin = versions.pins(v)
    crictl, cni = pin.crictl, pin.cni_plugins
    payload = {}
    for b in ("kubeadm", "kubelet", "kubectl"):
        data = f"#!/bin/sh\necho fake {b} {v}\n".encode()
        payload[b] = data
        rel.add(f"{prefix}/release/{v}/bin/linux/{ARCH}/{b}",
                data + b"tampered" if b in corrupt else data, published=data)
    payload["crictl"] = b"\x7fELF fake crictl"
    rel.add(f"{gh}/kubernetes-sigs/cri-tools/releases/download/{crictl}/"
            f"crictl-{crictl}-linux-{ARCH}.tar.gz", tgz({"crictl": (payload["crictl"], 0o755)}))
    plugins = {"./bridge": (b"bridge", 0o755), "./host-local": (b"host-local", 0o755),
               "./loopback": (b"loopback", 0o755), "./portmap": (b"portmap", 0o755),
               "./LICENSE": (b"Apache", 0o644), "./README.md": (b"# CNI", 0o644)}
    rel.add(f"{gh}/containernetworking/plugins/releases/download/{cni}/"
            f"cni-plugins-linux-{ARCH}-{cni}.tgz", tgz(plugins), line=True)
    payload.update({"cni-plugins/" + k[2:]: d for k, (d, m) in plugins.items() if m & 0o111})
    ctd = pin.containerd.lstrip("v")
    tarball = f"containerd-{ctd}-linux-{ARCH}.tar.gz"
    members = {f"bin/{b}": (f"\x7fELF fake {b} {ctd}".encode(), 0o755)
               for b in ("containerd", "containerd-shim-runc-v2", "ctr", "containerd-stress")}
    data = tgz(members)
    base = f"{gh}/containerd/containerd/releases/download/{pin.containerd}/{tarball}"
    rel.files[base] = data
    rel.files[base + ".sha256sum"] = f"{sha(data)}  {tarball}\n".encode()
    payload.update({f"containerd/{b}": members[f"bin/{b}"][0]
                    for b in ("containerd", "containerd-shim-runc-v2", "ctr")})
    runc = b"\x7fELF fake runc"
    base = f"{gh}/opencontainers/runc/releases/download/{pin.runc}"
    rel.files[f"{base}/runc.{ARCH}"] = runc
    rel.files[f"{base}/runc.sha256sum"] = (f"{sha(b'arm')}  runc.arm64\n"
                                           f"{sha(runc)}  runc.{ARCH}\n").encode()
    payload["runc"] = runc
    return payload


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Requests go to 127.0.0.1 directly, whatever the environment says; any other host
    (e.g. a default URL a test forgot to replace) fails before a packet leaves."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kw):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(f"test: no traffic to {host} (only 127.0.0.1)")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def release():
    rel = Release()
    yield rel
    rel.close()


@pytest.fixture
def cluster(release):
    c = inv.load(str(ROOT / "inventories/single.yml"))
    return dataclasses.replace(c, download_mirror=release.url, bundle_dir=None)


def fetch(cluster, dest, release, **kw):
    lines = []
    kw.setdefault("github_mirror", release.url + "/gh")
    folder = bundles.fetch(cluster, dest, progress=lines.append, timeout=5, **kw)
    return folder, lines


def test_fetch_verifies_and_writes_sha256sums(tmp_path, release, cluster):
    payload = kubeadm_tree(release, cluster)
    folder, _ = fetch(cluster, tmp_path, release)
    assert folder == tmp_path / "kubeadm-v1.36.4-linux-amd64"
    for name, data in payload.items():
        assert (folder / name).read_bytes() == data, name
        assert os.access(folder / name, os.X_OK), name
    assert not (folder / "cni-plugins/LICENSE").exists()  # only executables are plugins
    sums = bundles.read_sums(folder)
    assert sums == {name: sha(data) for name, data in payload.items()}
    # the file is the format `sha256sum -c` checks
    check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=folder,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not list(folder.rglob("*.part")) and not list(folder.glob(".download-*"))


def test_every_request_carries_a_user_agent(tmp_path, release, cluster):
    seen = []

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("User-Agent"))
            self.send_error(404)

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=srv.handle_request, daemon=True).start()
    with pytest.raises(UserError, match="HTTP 404"):
        bundles.fetch(cluster, tmp_path, mirror=f"http://127.0.0.1:{srv.server_address[1]}",
                      github_mirror=release.url, progress=lambda s: None, timeout=5)
    srv.server_close()
    assert seen and seen[0].startswith("provisioner-bundle/")


def test_corrupted_download_is_rejected_and_nothing_is_kept(tmp_path, release, cluster):
    kubeadm_tree(release, cluster, corrupt=("kubelet",))
    with pytest.raises(UserError) as err:
        fetch(cluster, tmp_path, release)
    url = f"{release.url}/release/v1.36.4/bin/linux/amd64/kubelet"
    good = f"#!/bin/sh\necho fake kubelet v1.36.4\n".encode()
    msg = str(err.value)
    assert url in msg and sha(good) in msg and sha(good + b"tampered") in msg
    folder = tmp_path / "kubeadm-v1.36.4-linux-amd64"
    assert not (folder / "kubelet").exists() and not (folder / "kubelet.part").exists()
    assert "kubelet" not in bundles.read_sums(folder)
    # what was verified before the failure stays, listed: the next fetch resumes after it
    assert (folder / "kubeadm").exists() and "kubeadm" in bundles.read_sums(folder)


def test_second_fetch_downloads_nothing(tmp_path, release, cluster):
    kubeadm_tree(release, cluster)
    fetch(cluster, tmp_path, release)
    first = len(release.requests)
    assert first == 14  # 7 downloads, 7 checksums
    release.requests.clear()
    folder = tmp_path / "kubeadm-v1.36.4-linux-amd64"
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    _, lines = fetch(cluster, tmp_path, release)
    assert release.requests == []
    assert all("present and verified" in line for line in lines) and len(lines) == 7
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before  # nothing rewritten


def test_interrupted_fetch_resumes_with_what_is_missing(tmp_path, release, cluster):
    kubeadm_tree(release, cluster)
    cni = versions.pins(cluster.kubernetes_version).cni_plugins
    tarball = f"/gh/containernetworking/plugins/releases/download/{cni}/" \
              f"cni-plugins-linux-amd64-{cni}.tgz"
    saved = release.files.pop(tarball)
    with pytest.raises(UserError, match="HTTP 404"):
        fetch(cluster, tmp_path, release)
    release.files[tarball] = saved
    release.requests.clear()
    fetch(cluster, tmp_path, release)
    pin = versions.pins(cluster.kubernetes_version)
    ctd = f"/gh/containerd/containerd/releases/download/{pin.containerd}/" \
          f"containerd-{pin.containerd[1:]}-linux-amd64.tar.gz"
    runc = f"/gh/opencontainers/runc/releases/download/{pin.runc}/runc."
    assert sorted(release.requests) == sorted([tarball, tarball + ".sha256", ctd,
                                               ctd + ".sha256sum", runc + "amd64",
                                               runc + "sha256sum"])


def test_a_damaged_file_is_fetched_again(tmp_path, release, cluster):
    payload = kubeadm_tree(release, cluster)
    folder, _ = fetch(cluster, tmp_path, release)
    (folder / "kubectl").write_bytes(b"damaged")
    release.requests.clear()
    fetch(cluster, tmp_path, release)
    assert sorted(release.requests) == sorted(
        [f"/release/v1.36.4/bin/linux/amd64/kubectl{s}" for s in ("", ".sha256")])
    assert (folder / "kubectl").read_bytes() == payload["kubectl"]


def test_mirrors_change_every_url(tmp_path, release, cluster):
    kubeadm_tree(release, cluster, prefix="/k8s-mirror", gh="/github-mirror")
    fetch(cluster, tmp_path, release, mirror=release.url + "/k8s-mirror",
          github_mirror=release.url + "/github-mirror")
    assert len(release.requests) == 14
    assert all(p.startswith(("/k8s-mirror/release/", "/github-mirror/")) for p in
               release.requests), release.requests
    assert sum(p.startswith("/github-mirror/") for p in release.requests) == 8
    # without the mirror the inventory's download_mirror is used: the tree is not there
    with pytest.raises(UserError, match=r"HTTP 404.*--mirror"):
        fetch(cluster, tmp_path / "other", release)


def test_k3s_bundle_uses_the_k3s_release_layout(tmp_path, release):
    c = inv.load(str(ROOT / "inventories/k3s-ha.yml"))
    c = dataclasses.replace(c, download_mirror=release.url + "/k3s-io/k3s/releases/download")
    binary, images = b"\x7fELF fake k3s", b"(zstd) fake images"
    base = "/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1"
    release.files[base + "/k3s"] = binary
    release.files[base + "/k3s-airgap-images-amd64.tar.zst"] = images
    release.files[base + "/sha256sum-amd64.txt"] = (
        f"{sha(b'images')}  k3s-airgap-images-amd64.tar\n{sha(binary)}  k3s\n"
        f"{sha(images)}  k3s-airgap-images-amd64.tar.zst\n"
        f"{sha(b'other')}  k3s-arm64\n").encode()
    folder = bundles.fetch(c, tmp_path, github_mirror=release.url, progress=lambda s: None,
                           timeout=5)
    assert folder.name == "k3s-v1.36.4+k3s1-linux-amd64"
    assert (folder / "k3s").read_bytes() == binary
    airgap = "k3s-airgap-images-amd64.tar.zst"
    assert (folder / airgap).read_bytes() == images
    assert not os.access(folder / airgap, os.X_OK) and os.access(folder / "k3s", os.X_OK)
    assert bundles.read_sums(folder) == {"k3s": sha(binary), airgap: sha(images)}
    found = bundles.locate(c, tmp_path)
    assert found is not None and set(found.files) == {"k3s", airgap}
    # the default download_mirror (dl.k8s.io) is not a k3s site: GitHub (or its mirror) is used
    plain = dataclasses.replace(c, download_mirror=bundles.DEFAULT_MIRROR)
    art, img = bundles.artifacts(plain, github_mirror="https://gh.example")
    assert art.url == "https://gh.example/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1/k3s"
    assert img.url == ("https://gh.example/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1/"
                       "k3s-airgap-images-amd64.tar.zst")
    art, img = bundles.artifacts(plain, arch="arm64")
    assert art.url.endswith("/k3s-arm64") and art.checksum_url.endswith("sha256sum-arm64.txt")
    assert img.url.endswith("/k3s-airgap-images-arm64.tar.zst")
    assert img.checksum_for == "k3s-airgap-images-arm64.tar.zst"


def test_default_urls_are_the_upstream_release_sites():
    c = inv.load(str(ROOT / "inventories/single.yml"))
    urls = [a.url for a in bundles.artifacts(c)]
    assert urls == [
        "https://dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubeadm",
        "https://dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubelet",
        "https://dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubectl",
        "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.36.0/"
        "crictl-v1.36.0-linux-amd64.tar.gz",
        "https://github.com/containernetworking/plugins/releases/download/v1.9.1/"
        "cni-plugins-linux-amd64-v1.9.1.tgz",
        "https://github.com/containerd/containerd/releases/download/v2.3.5/"
        "containerd-2.3.5-linux-amd64.tar.gz",
        "https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64",
    ]
    checks = [a.checksum_url for a in bundles.artifacts(c)]
    assert checks[-2:] == [
        "https://github.com/containerd/containerd/releases/download/v2.3.5/"
        "containerd-2.3.5-linux-amd64.tar.gz.sha256sum",
        "https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.sha256sum"]
    with pytest.raises(UserError, match="not a supported minor"):
        bundles.artifacts(dataclasses.replace(c, kubernetes_version="v1.20.1"))


def test_locate_verifies_and_detects_tampering(tmp_path, release, cluster):
    payload = kubeadm_tree(release, cluster)
    folder, _ = fetch(cluster, tmp_path, release)
    found = bundles.locate(cluster, tmp_path)
    assert found.dir == folder
    assert {n: s for n, (p, s) in found.files.items()} == {n: sha(d) for n, d in payload.items()}
    assert bundles.locate(cluster, folder).dir == folder  # the inner folder works as --bundle too
    (folder / "kubectl").write_bytes(b"#!/bin/sh\necho evil\n")
    with pytest.raises(UserError, match=r"kubectl: checksum mismatch") as err:
        bundles.locate(cluster, tmp_path)
    assert sha(payload["kubectl"]) in str(err.value)
    (folder / "kubectl").unlink()
    with pytest.raises(UserError, match=r"kubectl: listed in SHA256SUMS but missing"):
        bundles.locate(cluster, tmp_path)


def test_locate_caches_hashes_by_size_and_mtime(tmp_path, release, cluster, monkeypatch):
    kubeadm_tree(release, cluster)
    fetch(cluster, tmp_path, release)
    bundles.locate(cluster, tmp_path)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: (opened.append(p), real_open(
        p, *a, **k))[1])
    bundles.locate(cluster, tmp_path)
    assert not [p for p in opened if "linux-amd64" in str(p) and "SHA256SUMS" not in str(p)]


def test_locate_uses_the_inventory_bundle_dir(tmp_path, release, cluster):
    kubeadm_tree(release, cluster)
    fetch(cluster, tmp_path / "b", release)
    with_setting = dataclasses.replace(cluster, bundle_dir=str(tmp_path / "b"))
    assert bundles.locate(with_setting, None).dir.parent == tmp_path / "b"


def test_a_named_bundle_without_the_version_is_an_error_but_no_default_bundle_is_none(
        tmp_path, cluster, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./bundle here
    assert bundles.locate(cluster, None) is None
    (tmp_path / "named" / "kubeadm-v1.35.0-linux-amd64").mkdir(parents=True)
    with pytest.raises(UserError, match="holds kubeadm-v1.35.0-linux-amd64, not "
                                        "kubeadm-v1.36.4-linux-amd64"):
        bundles.locate(cluster, tmp_path / "named")


def test_a_transfer_cut_short_keeps_nothing(tmp_path, release, cluster):
    kubeadm_tree(release, cluster)

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = release.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) + 1000))  # promises more
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(UserError, match="transfer cut short") as err:
            bundles.fetch(cluster, tmp_path, mirror=f"http://127.0.0.1:{srv.server_address[1]}",
                          github_mirror=f"http://127.0.0.1:{srv.server_address[1]}/gh",
                          progress=lambda s: None, timeout=5)
    finally:
        srv.shutdown()
        srv.server_close()
    assert "/release/v1.36.4/bin/linux/amd64/kubeadm" in str(err.value)
    assert list((tmp_path / "kubeadm-v1.36.4-linux-amd64").iterdir()) == []


def test_unreachable_site_says_how_to_work_offline(tmp_path, cluster):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError) as err:
        bundles.fetch(cluster, tmp_path, mirror=f"http://127.0.0.1:{port}",
                      github_mirror=f"http://127.0.0.1:{port}", progress=lambda s: None,
                      timeout=5)
    msg = str(err.value)
    assert msg.startswith("no route to the download site (http://127.0.0.1:")
    assert "copy the bundle folder" in msg and "--bundle DIR" in msg and "bundle_dir" in msg


def test_missing_message_names_the_command_and_the_offline_way(tmp_path, cluster):
    (tmp_path / "kubeadm-v1.35.0-linux-amd64").mkdir()
    msg = bundles.missing_message(cluster, tmp_path)
    assert f"invoke bundle.fetch -i {cluster.source}" in msg
    assert "--mirror URL" in msg and "--bundle DIR" in msg
    assert "kubeadm-v1.35.0-linux-amd64, not kubeadm-v1.36.4-linux-amd64" in msg
    assert msg.startswith("stopped before the Kubernetes phases")


def invoke(*args, cwd=ROOT):
    return subprocess.run([str(Path(sys.executable).parent / "invoke"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})


def test_tasks_fetch_and_verify(tmp_path, release, cluster):
    kubeadm_tree(release, cluster)
    inventory = tmp_path / "inv.yml"
    inventory.write_text((ROOT / "inventories/single.yml").read_text())
    dest = tmp_path / "bundle"
    r = invoke("bundle.fetch", "-i", str(inventory), "--dest", str(dest),
               "--mirror", release.url, "--github-mirror", release.url + "/gh", "--no-images")
    assert r.returncode == 0, r.stderr
    assert "12 files" in r.stdout and "verified" in r.stdout
    r = invoke("bundle.verify", "-i", str(inventory), "--bundle", str(dest))
    assert r.returncode == 0 and "all 12 files match SHA256SUMS" in r.stdout, r.stderr
    (dest / "kubeadm-v1.36.4-linux-amd64/cni-plugins/bridge").write_bytes(b"x")
    r = invoke("bundle.verify", "-i", str(inventory), "--bundle", str(dest))
    assert r.returncode == 2 and "cni-plugins/bridge: checksum mismatch" in r.stderr
    assert "Traceback" not in r.stderr
    r = invoke("bundle.verify", "-i", str(inventory), "--bundle", str(tmp_path / "none"))
    assert r.returncode == 2 and "invoke bundle.fetch" in r.stderr


def test_fetch_accepts_a_bundle_dir_it_is_about_to_create_and_the_inventory_github_mirror(tmp_path):
    from provisioner import inventory as inv
    from provisioner import validate
    from provisioner.errors import InvalidInventory

    path = tmp_path / "inv.yml"
    path.write_text(f"""all:
  vars:
    bundle_dir: {tmp_path}/not-yet
    github_mirror: https://gh.mirror.internal/proxy
  children:
    control_plane: {{hosts: {{cp1: {{ansible_host: 192.168.56.11}}}}}}
""")
    with pytest.raises(InvalidInventory, match="bundle_dir"):
        inv.load(path)  # cluster.up needs the folder
    cluster = inv.load(path, check=validate.check_for_fetch)  # bundle.fetch makes it
    urls = [a.url for a in bundles.artifacts(cluster)]
    assert any(u.startswith("https://gh.mirror.internal/proxy/kubernetes-sigs/cri-tools/")
               for u in urls), urls


# -- hardening: the bundle is data from elsewhere; nothing in it may steer where we read/write --

def fetched(tmp_path, release, cluster):
    payload = kubeadm_tree(release, cluster)
    folder, _ = fetch(cluster, tmp_path, release)
    return folder, payload


def edit_sums(folder, change):
    """Rewrite SHA256SUMS through change({name: sha}) -> {name: sha} (what an attacker can)."""
    sums = bundles.read_sums(folder)
    text = "".join(f"{h}  {n}\n" for n, h in change(sums).items())
    (folder / "SHA256SUMS").write_text(text)


@pytest.mark.parametrize("bad", [
    "cni-plugins/../../../../etc/hostname", "/etc/hostname", "../outside", "./kubelet",
    "cni-plugins//bridge", ".hidden", "cni-plugins/.x", "a\\b",
])
def test_sums_entries_must_be_plain_paths_inside_the_bundle(tmp_path, release, cluster, bad):
    folder, _ = fetched(tmp_path, release, cluster)
    target = Path("/etc/hostname")
    edit_sums(folder, lambda s: {**s, bad: sha(target.read_bytes()) if target.exists()
                                 else "0" * 64})
    with pytest.raises(UserError, match="not a plain relative path inside the bundle") as err:
        bundles.locate(cluster, tmp_path)
    assert "SHA256SUMS:" in str(err.value)  # FILE:LINE
    r = invoke("bundle.verify", "-i", str(ROOT / "inventories/single.yml"), "--bundle",
               str(tmp_path))
    assert r.returncode == 2 and "not a plain relative path" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_name_listed_twice_is_refused(tmp_path, release, cluster):
    folder, _ = fetched(tmp_path, release, cluster)
    text = (folder / "SHA256SUMS").read_text()
    (folder / "SHA256SUMS").write_text(text + text.splitlines()[0] + "\n")
    with pytest.raises(UserError, match="listed twice"):
        bundles.locate(cluster, tmp_path)


def test_a_symlinked_bundle_file_is_refused(tmp_path, release, cluster):
    folder, _ = fetched(tmp_path, release, cluster)
    outside = tmp_path / "outside"
    outside.write_bytes((folder / "kubectl").read_bytes())  # same bytes, same hash
    (folder / "kubectl").unlink()
    (folder / "kubectl").symlink_to(outside)
    with pytest.raises(UserError, match="kubectl: listed in SHA256SUMS but not a regular file"):
        bundles.locate(cluster, tmp_path)
    # a symlinked folder too: cni-plugins -> somewhere else holding the same files
    (folder / "kubectl").unlink()
    fetch(cluster, tmp_path, release)  # repaired
    (folder / "cni-plugins").rename(tmp_path / "elsewhere")
    (folder / "cni-plugins").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="not a regular file inside the bundle"):
        bundles.locate(cluster, tmp_path)


def test_a_tampered_binary_with_a_matching_sums_edit_is_refused(tmp_path, release, cluster):
    """SHA256SUMS alone is not trusted: SOURCES.json, written at fetch time from what upstream
    published, must agree with it."""
    folder, payload = fetched(tmp_path, release, cluster)
    evil = b"#!/bin/sh\necho evil\n"
    (folder / "kubelet").write_bytes(evil)
    edit_sums(folder, lambda s: {**s, "kubelet": sha(evil)})
    check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=folder,
                           capture_output=True, text=True)
    assert check.returncode == 0  # sha256sum alone would be fooled
    with pytest.raises(UserError, match="kubelet: SHA256SUMS says .* but SOURCES.json records"):
        bundles.locate(cluster, tmp_path)
    # a file SOURCES.json never recorded is refused the same way
    (folder / "extra").write_bytes(b"x")
    edit_sums(folder, lambda s: {**s, "kubelet": sha(payload["kubelet"]), "extra": sha(b"x")})
    with pytest.raises(UserError, match="extra: SHA256SUMS says .* SOURCES.json does not list"):
        bundles.locate(cluster, tmp_path)
    # a rerun of fetch (e.g. at the site that copied the bundle, once online) repairs it:
    # the kubelet is downloaded again, SHA256SUMS is derived from SOURCES.json again
    (folder / "kubelet").write_bytes(evil)
    edit_sums(folder, lambda s: {**s, "kubelet": sha(evil)})
    release.requests.clear()
    fetch(cluster, tmp_path, release)
    assert sorted(release.requests) == sorted(
        f"/release/v1.36.4/bin/linux/amd64/kubelet{s}" for s in ("", ".sha256"))
    assert (folder / "kubelet").read_bytes() == payload["kubelet"]
    assert bundles.locate(cluster, tmp_path).files["kubelet"][1] == sha(payload["kubelet"])


def test_a_bundle_without_sources_json_is_not_trusted(tmp_path, release, cluster):
    folder, _ = fetched(tmp_path, release, cluster)
    (folder / "SOURCES.json").unlink()
    with pytest.raises(UserError, match="SOURCES.json: missing"):
        bundles.locate(cluster, tmp_path)


def test_a_non_utf8_sums_file_is_a_clear_error(tmp_path, release, cluster):
    folder, _ = fetched(tmp_path, release, cluster)
    (folder / "SHA256SUMS").write_bytes((folder / "SHA256SUMS").read_bytes() + b"\xff\xfe\n")
    with pytest.raises(UserError, match=r"SHA256SUMS:13: not UTF-8"):
        bundles.locate(cluster, tmp_path)


def test_a_planted_part_symlink_is_never_followed(tmp_path, release, cluster):
    """An old fetch wrote kubelet.part; someone plants kubelet.part -> a file outside. Nothing
    outside the bundle is written, and the symlink is cleaned away, not followed."""
    kubeadm_tree(release, cluster)
    folder = tmp_path / "kubeadm-v1.36.4-linux-amd64"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in ("kubelet.part", ".kubelet.x.part", "SHA256SUMS.part", "SOURCES.json.part",
                 ".download-crictl.tar.gz"):
        (folder / name).symlink_to(victim)
    (folder / "cni-plugins").symlink_to(tmp_path)  # a planted folder symlink is refused
    with pytest.raises(UserError, match="cni-plugins: not a plain folder"):
        fetch(cluster, tmp_path, release)
    assert victim.read_text() == "precious\n"
    assert not list(tmp_path.glob("bridge")) and not (tmp_path / "host-local").exists()
    (folder / "cni-plugins").unlink()
    fetch(cluster, tmp_path, release)
    assert victim.read_text() == "precious\n"
    assert not (folder / ".kubelet.x.part").is_symlink()  # removed as a leftover
    assert bundles.locate(cluster, tmp_path) is not None


def test_a_non_tar_archive_is_a_clear_error_and_leaves_nothing(tmp_path, release, cluster):
    kubeadm_tree(release, cluster)
    pin = versions.pins(cluster.kubernetes_version)
    path = (f"/gh/containerd/containerd/releases/download/{pin.containerd}/"
            f"containerd-{pin.containerd[1:]}-linux-amd64.tar.gz")
    for junk in (b"<html>not found</html>", tgz({"bin/containerd": (b"x" * 5000, 0o755)})[:60]):
        release.files[path] = junk  # published checksum matches: the mirror is broken
        release.files[path + ".sha256sum"] = f"{sha(junk)}  {path.rsplit('/', 1)[1]}\n".encode()
        with pytest.raises(UserError, match="not a readable tar archive"):
            fetch(cluster, tmp_path, release)
        folder = tmp_path / "kubeadm-v1.36.4-linux-amd64"
        assert not (folder / "containerd").exists()
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp left


def test_an_archive_missing_a_containerd_binary_is_refused_whole(tmp_path, release, cluster):
    kubeadm_tree(release, cluster)
    pin = versions.pins(cluster.kubernetes_version)
    path = (f"/gh/containerd/containerd/releases/download/{pin.containerd}/"
            f"containerd-{pin.containerd[1:]}-linux-amd64.tar.gz")
    data = tgz({"bin/containerd": (b"c", 0o755), "bin/ctr": (b"ctr", 0o755)})
    release.files[path] = data
    release.files[path + ".sha256sum"] = f"{sha(data)}  {path.rsplit('/', 1)[1]}\n".encode()
    with pytest.raises(UserError, match="expected the executables containerd, "
                                        "containerd-shim-runc-v2, ctr in the archive, found "
                                        "containerd, ctr"):
        fetch(cluster, tmp_path, release)
    assert not (tmp_path / "kubeadm-v1.36.4-linux-amd64" / "containerd").exists()


def test_a_truncated_download_without_content_length_is_refused(tmp_path, release, cluster):
    kubeadm_tree(release, cluster)

    class NoLength(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # no Content-Length: the end is the connection's end

        def do_GET(self):
            data = release.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            cut = not self.path.endswith(".sha256")
            self.wfile.write(data[: len(data) // 2] if cut else data)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoLength)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        with pytest.raises(UserError, match="checksum mismatch.*truncated download"):
            bundles.fetch(cluster, tmp_path, mirror=url, github_mirror=url + "/gh",
                          progress=lambda s: None, timeout=5)
    finally:
        srv.shutdown()
        srv.server_close()
    assert list((tmp_path / "kubeadm-v1.36.4-linux-amd64").iterdir()) == []


def test_containerd_source_os_leaves_containerd_and_runc_out(cluster):
    class OsContainerd:  # the inventory setting `containerd_source: os` (read with getattr)
        containerd_source = "os"

        def __getattr__(self, name):
            return getattr(cluster, name)

    names = {a.component for a in bundles.artifacts(OsContainerd())}
    assert "containerd" not in names and "runc" not in names
    assert not [n for n in bundles.needed(OsContainerd()) if "containerd" in n or n == "runc"]
    assert {"containerd", "runc"} <= {a.component for a in bundles.artifacts(cluster)}
    assert {"containerd/containerd", "containerd/containerd-shim-runc-v2", "containerd/ctr",
            "runc"} <= set(bundles.needed(cluster))


def test_bundle_list_names_every_artifact_and_downloads_nothing(tmp_path, release, cluster):
    import json

    r = invoke("bundle.list", "-i", str(ROOT / "inventories/single.yml"), "--json",
               "--mirror", release.url, "--github-mirror", release.url + "/gh")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert release.requests == []
    pin = versions.pins(cluster.kubernetes_version)
    binaries = [x for x in rows if x["kind"] != "image"]
    assert [(x["name"].split(",")[0], x["version"]) for x in binaries] == [
        ("kubeadm", "v1.36.4"), ("kubelet", "v1.36.4"), ("kubectl", "v1.36.4"),
        ("crictl", pin.crictl), ("cni-plugins/* (every executable)", pin.cni_plugins),
        ("containerd/containerd", pin.containerd), ("runc", pin.runc)]
    assert all(x["source"].startswith(release.url) and x["checksum"].startswith(release.url)
               for x in binaries)
    assert binaries[-1]["checksum"].endswith("/runc.sha256sum (line runc.amd64)")
    # then every image, from its own registry unless --image-mirror says otherwise
    from provisioner import images
    assert [x["name"] for x in rows[len(binaries):]] == [i.ref for i in images.needed(cluster)]
    assert all(x["source"] == "docker://" + x["name"] for x in rows[len(binaries):])
    r = invoke("bundle.list", "-i", str(ROOT / "inventories/k3s-ha.yml"))
    assert r.returncode == 0, r.stderr
    assert "k3s-airgap-images-amd64.tar.zst" in r.stdout and "sha256sum-amd64.txt" in r.stdout
