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
    crictl, cni = bundles.pinned(cluster)
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
    assert folder == tmp_path / "kubeadm-v1.32.4-linux-amd64"
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
    url = f"{release.url}/release/v1.32.4/bin/linux/amd64/kubelet"
    good = f"#!/bin/sh\necho fake kubelet v1.32.4\n".encode()
    msg = str(err.value)
    assert url in msg and sha(good) in msg and sha(good + b"tampered") in msg
    folder = tmp_path / "kubeadm-v1.32.4-linux-amd64"
    assert not (folder / "kubelet").exists() and not (folder / "kubelet.part").exists()
    assert "kubelet" not in bundles.read_sums(folder)
    # what was verified before the failure stays, listed: the next fetch resumes after it
    assert (folder / "kubeadm").exists() and "kubeadm" in bundles.read_sums(folder)


def test_second_fetch_downloads_nothing(tmp_path, release, cluster):
    kubeadm_tree(release, cluster)
    fetch(cluster, tmp_path, release)
    first = len(release.requests)
    assert first == 10  # 5 files, 5 checksums
    release.requests.clear()
    _, lines = fetch(cluster, tmp_path, release)
    assert release.requests == []
    assert all("present and verified" in line for line in lines) and len(lines) == 5


def test_interrupted_fetch_resumes_with_what_is_missing(tmp_path, release, cluster):
    kubeadm_tree(release, cluster)
    crictl, cni = bundles.pinned(cluster)
    tarball = f"/gh/containernetworking/plugins/releases/download/{cni}/" \
              f"cni-plugins-linux-amd64-{cni}.tgz"
    saved = release.files.pop(tarball)
    with pytest.raises(UserError, match="HTTP 404"):
        fetch(cluster, tmp_path, release)
    release.files[tarball] = saved
    release.requests.clear()
    fetch(cluster, tmp_path, release)
    assert sorted(release.requests) == sorted([tarball, tarball + ".sha256"])


def test_a_damaged_file_is_fetched_again(tmp_path, release, cluster):
    payload = kubeadm_tree(release, cluster)
    folder, _ = fetch(cluster, tmp_path, release)
    (folder / "kubectl").write_bytes(b"damaged")
    release.requests.clear()
    fetch(cluster, tmp_path, release)
    assert sorted(release.requests) == sorted(
        [f"/release/v1.32.4/bin/linux/amd64/kubectl{s}" for s in ("", ".sha256")])
    assert (folder / "kubectl").read_bytes() == payload["kubectl"]


def test_mirrors_change_every_url(tmp_path, release, cluster):
    kubeadm_tree(release, cluster, prefix="/k8s-mirror", gh="/github-mirror")
    fetch(cluster, tmp_path, release, mirror=release.url + "/k8s-mirror",
          github_mirror=release.url + "/github-mirror")
    assert len(release.requests) == 10
    assert all(p.startswith(("/k8s-mirror/release/", "/github-mirror/")) for p in
               release.requests), release.requests
    assert sum(p.startswith("/github-mirror/") for p in release.requests) == 4
    # without the mirror the inventory's download_mirror is used: the tree is not there
    with pytest.raises(UserError, match=r"HTTP 404.*--mirror"):
        fetch(cluster, tmp_path / "other", release)


def test_k3s_bundle_uses_the_k3s_release_layout(tmp_path, release):
    c = inv.load(str(ROOT / "inventories/k3s-ha.yml"))
    c = dataclasses.replace(c, download_mirror=release.url + "/k3s-io/k3s/releases/download")
    binary = b"\x7fELF fake k3s"
    base = "/k3s-io/k3s/releases/download/v1.32.4%2Bk3s1"
    release.files[base + "/k3s"] = binary
    release.files[base + "/sha256sum-amd64.txt"] = (
        f"{sha(b'images')}  k3s-airgap-images-amd64.tar\n{sha(binary)}  k3s\n"
        f"{sha(b'other')}  k3s-arm64\n").encode()
    folder = bundles.fetch(c, tmp_path, github_mirror=release.url, progress=lambda s: None,
                           timeout=5)
    assert folder.name == "k3s-v1.32.4+k3s1-linux-amd64"
    assert (folder / "k3s").read_bytes() == binary
    assert bundles.read_sums(folder) == {"k3s": sha(binary)}
    found = bundles.locate(c, tmp_path)
    assert found is not None and set(found.files) == {"k3s"}
    # the default download_mirror (dl.k8s.io) is not a k3s site: GitHub (or its mirror) is used
    plain = dataclasses.replace(c, download_mirror=bundles.DEFAULT_MIRROR)
    (art,) = bundles.artifacts(plain, github_mirror="https://gh.example")
    assert art.url == "https://gh.example/k3s-io/k3s/releases/download/v1.32.4%2Bk3s1/k3s"
    (art,) = bundles.artifacts(plain, arch="arm64")
    assert art.url.endswith("/k3s-arm64") and art.checksum_url.endswith("sha256sum-arm64.txt")


def test_default_urls_are_the_upstream_release_sites():
    c = inv.load(str(ROOT / "inventories/single.yml"))
    urls = [a.url for a in bundles.artifacts(c)]
    assert urls == [
        "https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubeadm",
        "https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubelet",
        "https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl",
        "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.32.0/"
        "crictl-v1.32.0-linux-amd64.tar.gz",
        "https://github.com/containernetworking/plugins/releases/download/v1.6.2/"
        "cni-plugins-linux-amd64-v1.6.2.tgz",
    ]
    with pytest.raises(UserError, match="no crictl/CNI versions pinned for 1.20"):
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
    (tmp_path / "named" / "kubeadm-v1.31.0-linux-amd64").mkdir(parents=True)
    with pytest.raises(UserError, match="holds kubeadm-v1.31.0-linux-amd64, not "
                                        "kubeadm-v1.32.4-linux-amd64"):
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
    assert "/release/v1.32.4/bin/linux/amd64/kubeadm" in str(err.value)
    assert list((tmp_path / "kubeadm-v1.32.4-linux-amd64").iterdir()) == []


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
    (tmp_path / "kubeadm-v1.31.0-linux-amd64").mkdir()
    msg = bundles.missing_message(cluster, tmp_path)
    assert f"invoke bundle.fetch -i {cluster.source}" in msg
    assert "--mirror URL" in msg and "--bundle DIR" in msg
    assert "kubeadm-v1.31.0-linux-amd64, not kubeadm-v1.32.4-linux-amd64" in msg
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
    assert "8 files" in r.stdout and "verified" in r.stdout
    r = invoke("bundle.verify", "-i", str(inventory), "--bundle", str(dest))
    assert r.returncode == 0 and "all 8 files match SHA256SUMS" in r.stdout, r.stderr
    (dest / "kubeadm-v1.32.4-linux-amd64/cni-plugins/bridge").write_bytes(b"x")
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
