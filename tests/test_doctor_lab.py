"""`cluster.status` / `cluster.doctor` against real faults on booted lab nodes
(tests/data/lab-doctor.yml: a haproxy + keepalived pair holding the API VIP, one kubeadm control
plane that is also one of 3 external etcd members, two etcd-only members, one worker).

Real here: etcd 3.4 (mutual TLS), haproxy 2.6 and its stats socket, keepalived 2.2 and VRRP,
containerd 1.6, systemd, the disks. TEST-ONLY here: kubeadm / kubelet / kubectl are the
stand-ins; the kube side is a scenario the kubectl stand-in replays (tests/data/doctor/*.json,
written on the control plane); a small TLS responder answers haproxy's /readyz checks on the
control plane's port 6443 in place of kube-apiserver; and the "sandbox image" containerd holds is
a tiny image built here under the pause image's name (no registry can be reached). None of that
is a working Kubernetes cluster.

One fault at a time on the converged cluster; each: doctor names the host, the component and the
fix, exits non-zero; then the fault is undone and the cluster is healthy again. Every tarball is
searched for every secret value and every private key of the state folder.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from provisioner import actions, doctor, pki
from provisioner.state import State
from tests.conftest import REPO, booted_lab

pytestmark = pytest.mark.lab
INVENTORY = REPO / "tests/data/lab-doctor.yml"
SCENARIOS = REPO / "tests/data/doctor"
FIGURES: dict = {}
# every keepalived process (parent and VRRP child); `systemctl kill` fails in the lab's nspawn
# nodes ("Failed to send signal SIGSTOP to auxiliary processes: Input/output error")
SIGNAL = ("python3 -c \"import os, signal; [os.kill(int(p), signal.%s) for p in os.listdir('/proc') "
          "if p.isdigit() and open('/proc/' + p + '/comm').read().strip() == 'keepalived']\"")
READYZ_START = "systemd-run --unit=test-only-readyz python3 /run/doctor-test/readyz.py"
INVOKE = str(Path(sys.executable).parent / "invoke")

READYZ = r'''
import http.server, ssl
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path.startswith("/readyz") else b"stand-in"
        self.send_response(200 if self.path.startswith("/readyz") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/run/doctor-test/readyz.crt", "/run/doctor-test/readyz.key")
s = http.server.ThreadingHTTPServer(("0.0.0.0", 6443), H)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
'''


def put(lab, node: str, path: str, data: bytes, mode: str = "0644") -> None:
    client = lab.connect(node)
    try:
        stdin, stdout, _ = client.exec_command(f"mkdir -p $(dirname {path}) && umask 077 && "
                                               f"cat > {path}.part && chmod {mode} {path}.part "
                                               f"&& mv {path}.part {path}")
        stdin.write(data)
        stdin.channel.shutdown_write()
        assert stdout.channel.recv_exit_status() == 0
    finally:
        client.close()


def must(lab, node: str, command: str) -> str:
    rc, out, err = lab.run(node, command)
    assert rc == 0, f"{node}: {command}: {err or out}"
    return out


def self_signed() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-only readyz responder")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=2))
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def tiny_image(name: str) -> bytes:
    """An OCI archive of a one-file image named `name` (TEST-ONLY: stands where the sandbox
    image would be after a pull; it is not the pause image)."""
    blobs = {}

    def blob(data: bytes, media: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media, "digest": digest, "size": len(data)}

    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as t:
        info = tarfile.TarInfo("TEST-ONLY-not-pause")
        info.size = 0
        t.addfile(info)
    raw = layer_tar.getvalue()
    layer = blob(gzip.compress(raw, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    config = blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                              "rootfs": {"type": "layers", "diff_ids": [
                                  "sha256:" + hashlib.sha256(raw).hexdigest()]}}).encode(),
                  "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "config": config, "layers": [layer]}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"io.containerd.image.name": name,
                               "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        def add(path, data):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest]}).encode())
        for digest, data in blobs.items():
            add("blobs/sha256/" + digest.split(":")[1], data)
    return out.getvalue()


@pytest.fixture(scope="module")
def dlab(tmp_path_factory):
    with booted_lab(INVENTORY, tmp_path_factory.mktemp("doctor")) as lab:
        yield lab


@pytest.fixture(scope="module")
def built(dlab, tmp_path_factory):
    from tests.standins import make_standin_bundle

    bundle = make_standin_bundle(tmp_path_factory.mktemp("bundle"), dlab.cluster)
    t0 = time.monotonic()
    actions.up(dlab.cluster, bundle_dir=str(bundle))
    FIGURES["cluster.up (stand-ins) s"] = round(time.monotonic() - t0, 1)
    crt, key = self_signed()
    put(dlab, "dcp1", "/run/doctor-test/readyz.crt", crt)
    put(dlab, "dcp1", "/run/doctor-test/readyz.key", key, "0600")
    put(dlab, "dcp1", "/run/doctor-test/readyz.py", READYZ.encode())
    must(dlab, "dcp1", READYZ_START)
    put(dlab, "dcp1", "/etc/standin/kube-scenario.json", (SCENARIOS / "healthy.json").read_bytes())
    image = tiny_image(dlab.cluster.sandbox_image)
    for node in ("dcp1", "dw1"):
        put(dlab, node, "/run/doctor-test/pause.tar", image)
        must(dlab, node, "ctr -n k8s.io images import /run/doctor-test/pause.tar")
    wait(lambda: not [f for f in run_doctor(dlab)[1] if f.rule == "haproxy-backend-down"], 20,
         "haproxy sees the readyz responder UP")
    return bundle


def run_doctor(lab, out: Path | None = None):
    """(view, findings, tarball or None, seconds) in process, as `invoke cluster.doctor` does."""
    t0 = time.monotonic()
    view, extra = doctor.read(lab.cluster, deep=out is not None)
    found = doctor.findings(view, str(INVENTORY))
    target = doctor.bundle(view, found, extra, out, doctor.status_lines(view)) if out else None
    return view, found, target, time.monotonic() - t0


def wait(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting: {what}")
        time.sleep(1)


def secrets_of(lab) -> list[str]:
    """Every value of secrets.yaml, every private key of the state folder (whole and line by line)."""
    import yaml

    state = State(lab.cluster)
    values = [str(v) for v in yaml.safe_load(state.secrets_file.read_text()).values()]
    for key in state.pki.rglob("*.key"):
        text = key.read_text()
        values.append(text.strip())
        values += [line for line in text.splitlines() if line and not line.startswith("-----")]
    return values


def assert_clean(lab, tarball: Path) -> None:
    text = doctor.tar_text(tarball)
    leaked = [v[:12] + "..." for v in secrets_of(lab) if len(v) >= 8 and v in text]
    assert not leaked and "PRIVATE KEY" not in text, leaked
    FIGURES.setdefault("tarball KiB", []).append(tarball.stat().st_size // 1024)


def rules(found, severity=None) -> set[tuple[str, str]]:
    return {(f.rule, f.host) for f in found if severity in (None, f.severity)}


def test_healthy_cluster_gives_no_error(dlab, built, tmp_path):
    view, found, tarball, seconds = run_doctor(dlab, tmp_path)
    FIGURES["doctor s (healthy, 6 nodes)"] = round(seconds, 1)
    assert [f for f in found if f.severity == "error"] == [], doctor.render_findings(found)
    assert found == [], doctor.render_findings(found)
    text = "\n".join(doctor.status_lines(view))
    assert "VIP 10.90.5.100: on dlb1" in text and "haproxy dlb1: dcp1 UP" in text
    assert "etcd 3/3 healthy" in text and "kube (kubectl on dcp1)" in text
    assert_clean(dlab, tarball)
    # the CLI, end to end: exit 0, status on one screen
    t0 = time.monotonic()
    r = subprocess.run([INVOKE, "cluster.status", "-i", str(INVENTORY)], capture_output=True,
                       text=True, env=dict(os.environ, PROVISIONER_STATE_DIR=str(dlab.cluster.state_dir)), cwd=REPO, timeout=300, stdin=subprocess.DEVNULL)
    FIGURES["status s (CLI)"] = round(time.monotonic() - t0, 1)
    assert r.returncode == 0 and "etcd 3/3 healthy" in r.stdout, r.stdout + r.stderr
    print(r.stdout)


def check_fault(dlab, tmp_path, rule: str, host: str, component: str, fix: str,
                severity: str = "error"):
    view, found, tarball, seconds = run_doctor(dlab, tmp_path)
    print(doctor.render_findings(found))
    hit = [f for f in found if f.rule == rule and host in f.host.split(",")]
    assert hit, doctor.render_findings(found)
    assert hit[0].component == component and fix in hit[0].fix and hit[0].severity == severity
    assert doctor.exit_code(found) == 2 if severity == "error" else doctor.exit_code(found) >= 1
    assert_clean(dlab, tarball)
    return view, found, tarball


def healthy_again(dlab) -> None:
    wait(lambda: not [f for f in run_doctor(dlab)[1] if f.severity != "info"], 60,
         "the cluster healthy again")


def test_etcd_stopped_on_one_member(dlab, built, tmp_path):
    must(dlab, "de2", "systemctl stop etcd")
    try:
        _, found, _ = check_fault(dlab, tmp_path, "etcd-member-down", "de2", "etcd",
                                  "systemctl restart etcd")
        assert ("etcd-quorum-at-risk", "-") in rules(found, "warning")
    finally:
        must(dlab, "de2", "systemctl start etcd")
    healthy_again(dlab)


def test_keepalived_sigstopped_on_the_vip_holder(dlab, built, tmp_path):
    must(dlab, "dlb1", SIGNAL % "SIGSTOP")
    try:
        wait(lambda: "10.90.5.100" in must(dlab, "dlb2", "ip -4 -o addr show host0"), 20,
             "the VIP on dlb2")
        view, found, _ = check_fault(dlab, tmp_path, "process-stopped", "dlb1", "keepalived",
                                     "systemctl restart keepalived")
        assert "dlb2" in view.vip_holders()   # where it is now
        assert ("vip-on-two-hosts", "dlb1,dlb2") in rules(found) or view.vip_holders() == ["dlb2"]
        status = "\n".join(doctor.status_lines(view))
        assert "STOPPED(T)" in status and "dlb2" in status.split("VIP 10.90.5.100:")[1].splitlines()[0]
    finally:
        must(dlab, "dlb1", SIGNAL % "SIGCONT")
    wait(lambda: run_doctor(dlab)[0].vip_holders() == ["dlb1"], 30, "the VIP back on dlb1 only")
    healthy_again(dlab)


def test_haproxy_stopped_on_one_lb(dlab, built, tmp_path):
    must(dlab, "dlb2", "systemctl stop haproxy")
    try:
        check_fault(dlab, tmp_path, "haproxy-down", "dlb2", "haproxy", "systemctl restart haproxy")
    finally:
        must(dlab, "dlb2", "systemctl start haproxy")
    healthy_again(dlab)


def test_containerd_config_broken_on_the_worker(dlab, built, tmp_path):
    must(dlab, "dw1", "printf '[plugins\\n' >> /etc/containerd/config.toml; "
                      "systemctl restart containerd || true")
    _, found, tarball = check_fault(dlab, tmp_path, "containerd-down", "dw1", "containerd",
                                    "invoke cluster.up")
    assert ("config-drift", "dw1") in rules(found, "warning")
    text = doctor.tar_text(tarball)
    assert "+[plugins" in text and "dw1/etc/containerd/config.toml" in text   # the diff
    assert "journal-containerd" in "".join(tarfile.open(tarball).getnames())
    # the advised fix (the TEST-ONLY responder holds the API port meanwhile: preflight refuses
    # a taken 6443, so it steps aside while cluster.up runs)
    must(dlab, "dcp1", "systemctl stop test-only-readyz")
    try:
        actions.up(dlab.cluster, bundle_dir=str(built))
    finally:
        must(dlab, "dcp1", READYZ_START)
    must(dlab, "dw1", "ctr -n k8s.io images import /run/doctor-test/pause.tar")
    healthy_again(dlab)


def test_etcd_certificate_with_ten_days_of_life(dlab, built, tmp_path):
    state = State(dlab.cluster)
    folder = tmp_path / "pki"
    folder.mkdir()
    for ext in ("crt", "key"):
        shutil.copy(state.pki / "etcd" / f"de3-server.{ext}", folder / f"de3-server.{ext}")
    pki.renew_cert(folder, "de3-server", pki.load_ca(state.pki / "etcd"), days=10)
    original = must(dlab, "de3", "cat /etc/etcd/pki/server.crt").encode()
    put(dlab, "de3", "/etc/etcd/pki/server.crt", (folder / "de3-server.crt").read_bytes())
    must(dlab, "de3", "chown etcd:etcd /etc/etcd/pki/server.crt; systemctl restart etcd")
    try:
        _, found, _ = check_fault(dlab, tmp_path / "out", "cert-expiring", "de3", "certificates",
                                  "cluster.certs --renew", severity="warning")
        f = [f for f in found if f.rule == "cert-expiring"][0]
        assert "etcd server" in f.message and "expires in 10 days" in f.message
    finally:
        put(dlab, "de3", "/etc/etcd/pki/server.crt", original)
        must(dlab, "de3", "chown etcd:etcd /etc/etcd/pki/server.crt; systemctl restart etcd")
    healthy_again(dlab)


def test_disk_past_90_percent(dlab, built, tmp_path):
    """A 4 MiB tmpfs over /var/log on the worker, filled to 95 % (the nodes may mount tmpfs)."""
    rc, _, err = dlab.run("dw1", "mount -t tmpfs -o size=4m doctor-test /var/log")
    if rc != 0:
        pytest.skip(f"the lab cannot mount a small file system here: {err.strip()}")
    try:
        must(dlab, "dw1", "dd if=/dev/zero of=/var/log/fill bs=1k count=3900 status=none")
        _, found, _ = check_fault(dlab, tmp_path, "disk-full", "dw1", "disk", "du -xh /var/log")
    finally:
        must(dlab, "dw1", "umount /var/log")
    healthy_again(dlab)


def test_replayed_kube_scenarios(dlab, built, tmp_path):
    """The kubectl stand-in replays upstream-format scenarios; doctor reads them in one batch."""
    try:
        for name, rule in (("coredns-loop", "coredns-loop"), ("flannel-1-of-3", "cni-not-ready"),
                           ("node-notready", "node-not-ready")):
            put(dlab, "dcp1", "/etc/standin/kube-scenario.json", (SCENARIOS / f"{name}.json").read_bytes())
            _, found, tarball, _ = run_doctor(dlab, tmp_path / name)
            assert rule in {f.rule for f in found} and doctor.exit_code(found) == 2
            if name == "coredns-loop":
                names = tarfile.open(tarball).getnames()
                assert any("kube/describe/kube-system_coredns-" in n for n in names)
                assert any("kube/logs/kube-system_coredns-" in n for n in names)
            assert_clean(dlab, tarball)
    finally:
        put(dlab, "dcp1", "/etc/standin/kube-scenario.json", (SCENARIOS / "healthy.json").read_bytes())


def test_zz_figures():
    print("doctor lab figures:", json.dumps(FIGURES))
