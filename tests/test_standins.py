"""The TEST-ONLY stand-ins (tests/standins) run locally against the provisioner's real rendered
configs (provisioner.render for inventories/*.yml), each "node" a temporary STANDIN_ROOT.

They must accept what a real kubeadm/kubelet/kubectl/k3s would accept from the provisioner and
refuse, with the real tools' kind of message, what those would refuse. kubeadm and k3s go
through their real steps in order; /etc/standin/faults makes one step fail once. There is no
API server: kubectl answers about the local node only, from the steps the stand-ins recorded
on it, so these tests prove what one node would report, never that a cluster works.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as random
import shutil
import socket
import stat
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from provisioner import bundle as bundles
from provisioner import inventory as inv
from provisioner import pki, render
from tests.standins import build_tool, make_standin_bundle

ROOT = Path(__file__).resolve().parent.parent


def node_python() -> str:
    """The interpreter lab nodes have (Debian's python3 + python3-yaml) when this machine has
    it too, else the test's own."""
    debian = "/usr/bin/python3"
    if os.path.exists(debian) and subprocess.run([debian, "-c", "import yaml"],
                                                 capture_output=True).returncode == 0:
        return debian
    return sys.executable


PYTHON = node_python()
INIT = "/etc/kubernetes/kubeadm-init.yaml"
JOIN = "/etc/kubernetes/kubeadm-join.yaml"
K3S = "/etc/rancher/k3s/config.yaml"
K3S_ETCD = "/var/lib/rancher/k3s/server/db/etcd/standin-etcd.json"


def make_ca() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        pki.ensure_ca(Path(d), "ca", "kubernetes")
        return (Path(d) / "ca.crt").read_bytes()


CA = make_ca()  # the cluster CA the provisioner places on nodes before they join


def make_secrets() -> dict[str, str]:
    alnum = string.ascii_lowercase + string.digits
    pick = lambda n: "".join(random.choice(alnum) for _ in range(n))  # noqa: E731
    return {"bootstrap_token": f"{pick(6)}.{pick(16)}", "certificate_key": random.token_hex(32),
            "k3s_token": random.token_hex(24), "ca_cert_hash": pki.ca_cert_hash(CA)}


class Node:
    """A node's file system under a temporary STANDIN_ROOT, with a container runtime socket,
    ip_forward=1 and the kubelet installed, as the phases before the kube phases leave it."""

    def __init__(self, bundle_dir: Path, name: str):
        self.bin = bundle_dir
        self.name = name
        # short: the containerd socket path must fit in sun_path (108 bytes)
        self.root = Path(tempfile.mkdtemp(prefix=f"si-{name}-", dir="/tmp"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.put("/proc/sys/net/ipv4/ip_forward", "1\n")
        sock = self.path("/run/containerd/containerd.sock")
        sock.parent.mkdir(parents=True)
        self.sock.bind(str(sock))
        kubelet = bundle_dir / "kubelet"
        if kubelet.exists():
            self.path("/usr/local/bin").mkdir(parents=True)
            shutil.copy(kubelet, self.path("/usr/local/bin/kubelet"))

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def put(self, p: str, text: str | bytes, mode: int = 0o644) -> None:
        target = self.path(p)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode() if isinstance(text, str) else text)
        target.chmod(mode)

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("K3S_", "NOTIFY"))}
        return {**env, "STANDIN_ROOT": str(self.root), **extra}

    def run(self, tool: str, *args: str, **extra) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, str(self.bin / tool), *args], capture_output=True,
                              text=True, env=self.env(**extra), timeout=60)

    def start(self, tool: str, *args: str, **extra) -> subprocess.Popen:
        return subprocess.Popen([PYTHON, str(self.bin / tool), *args], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env(**extra))

    def log(self, tool: str = "kubeadm") -> list[dict]:
        p = self.path(f"/var/log/standin/{tool}.jsonl")
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def close(self):
        self.sock.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def lab_cluster():
    return inv.load(str(ROOT / "inventories/lab.yml"))


@pytest.fixture(scope="module")
def kube_bundle(tmp_path_factory, lab_cluster) -> Path:
    dest = make_standin_bundle(tmp_path_factory.mktemp("standin-bundle"), lab_cluster,
                               runtime=False)  # the stand-ins only: no containerd to fetch
    return dest / bundles.folder_name(lab_cluster)


@pytest.fixture
def nodes(kube_bundle):
    made = []

    def make(name="cp1", bundle=kube_bundle):
        made.append(Node(bundle, name))
        return made[-1]

    yield make
    for n in made:
        n.close()


def place(node: Node, rendered: dict, host: str) -> None:
    for path, f in rendered[host].items():
        node.put(path, f.content, f.mode)


def place_external_etcd_client_certs(node: Node, init_text: str) -> None:
    """What the pki phase puts on a control plane before kubeadm init (external etcd)."""
    external = [d for d in yaml.safe_load_all(init_text)
                if d.get("kind") == "ClusterConfiguration"][0].get("etcd", {}).get("external")
    for key in ("caFile", "certFile", "keyFile") if external else ():
        node.put(external[key], "-----BEGIN PLACEHOLDER-----\n", 0o600)


def assert_prefixed(text: str, tool: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(line.startswith(f"[stand-in {tool}] ") for line in lines), text


# ---------------------------------------------------------------------------------------------
# The bundle of stand-ins
# ---------------------------------------------------------------------------------------------


def test_standin_bundle_has_the_real_layout_and_verifies(tmp_path, lab_cluster):
    dest = make_standin_bundle(tmp_path / "a", lab_cluster, runtime=False)
    found = bundles.locate(lab_cluster, dest)
    assert found is not None
    from provisioner import images

    refs = [i.ref for i in images.needed(lab_cluster)]
    assert set(found.files) == {"kubeadm", "kubelet", "kubectl", "crictl", "cni-plugins/README.md",
                                "containerd/containerd", "containerd/containerd-shim-runc-v2",
                                "containerd/ctr", "runc"
                                } | {f"images/{images.archive_name(r)}" for r in refs}
    assert sorted(found.images) == sorted(refs)  # IMAGES.json: every image the cluster needs
    assert bundles.locate(lab_cluster, dest, deep=True).images == found.images  # blobs check
    # recorded like bundle.fetch records: SOURCES.json is what locate trusts
    assert (dest / bundles.folder_name(lab_cluster) / "SOURCES.json").exists()
    for name in ("containerd/containerd", "runc"):  # TEST-ONLY placeholders: they say so
        run = subprocess.run([str(found.files[name][0])], capture_output=True, text=True)
        assert run.returncode == 1 and "stand-in" in run.stderr and "TEST-ONLY" in run.stderr
    # deterministic: a rebuilt bundle has the same bytes, so a second `up` pushes nothing new
    again = make_standin_bundle(tmp_path / "b", lab_cluster, runtime=False)
    name = bundles.folder_name(lab_cluster)
    assert (dest / name / "SHA256SUMS").read_text() == (again / name / "SHA256SUMS").read_text()


def test_every_tool_says_it_is_a_stand_in(kube_bundle):
    for tool, args, version in (("kubeadm", ["version", "-o", "short"], "v1.36.4"),
                                ("kubelet", ["--version"], "v1.36.4"),
                                ("kubectl", ["version", "--client"], "v1.36.4"),
                                ("crictl", ["--version"], "v1.36.0")):
        # executed directly (shebang + zip application), as systemd and Ansible run them
        out = subprocess.run([str(kube_bundle / tool), *args], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"{tool} version: stand-in (not Kubernetes) for {version}\n"


# ---------------------------------------------------------------------------------------------
# kubeadm against the provisioner's rendered configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inventory", ["lab.yml", "ha-external-etcd.yml", "ha-kubevip.yml",
                                       "single.yml"])
def test_rendered_configs_init_and_join_in_order(inventory, nodes):
    cluster = inv.load(str(ROOT / "inventories" / inventory))
    secrets = make_secrets()
    rendered = render.render(cluster, secrets)
    first = cluster.first_control_plane.name
    cp = nodes(first)
    place(cp, rendered, first)
    place_external_etcd_client_certs(cp, rendered[first][INIT].content.decode())
    r = cp.run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 0, r.stderr
    assert_prefixed(r.stdout, "kubeadm")
    assert "NO control plane is running" in r.stdout
    admin = cp.path("/etc/kubernetes/admin.conf")
    assert stat.S_IMODE(admin.stat().st_mode) == 0o600
    assert yaml.safe_load(admin.read_text())["clusters"][0]["cluster"]["server"] == \
        f"https://{cluster.api_host if cluster.ha_mode != 'none' else cluster.first_control_plane.address}:6443"
    assert "stand-in" in admin.read_text()
    for m in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert "stand-in" in cp.path(f"/etc/kubernetes/manifests/{m}.yaml").read_text()
    assert cp.path("/etc/kubernetes/manifests/etcd.yaml").exists() != cluster.external_etcd
    # the kubelet config kubeadm wrote satisfies the kubelet stand-in
    kubelet = cp.start("kubelet", "--config=/var/lib/kubelet/config.yaml",
                       "--container-runtime-endpoint=unix:///run/containerd/containerd.sock")
    if cluster.allow_cgroup_v1:
        assert "is valid; sleeping" in kubelet.stdout.readline()
        kubelet.terminate()
        assert kubelet.wait(10) == 0
    else:  # the fake node has no cgroup2 mount: a 1.35+ kubelet refuses it, after the schema
        assert kubelet.wait(10) != 0
        assert "not run on a host using cgroup v1" in kubelet.stderr.read()

    for joiner in list(cluster.control_planes[1:]) + list(cluster.workers):
        node = nodes(joiner.name)
        place(node, rendered, joiner.name)
        if joiner.has("control_plane"):
            node.put("/etc/kubernetes/pki/ca.crt", CA)  # the pki phase placed it
        r = node.run("kubeadm", "join", "--config", JOIN)
        assert r.returncode == 0, (joiner.name, r.stderr)
        assert node.path("/etc/kubernetes/kubelet.conf").exists()
        assert node.path("/etc/kubernetes/admin.conf").exists() == joiner.has("control_plane")
        (entry,) = node.log()
        assert entry["result"] == "ok"
        config = json.dumps(entry["config"])
        assert hashlib.sha256(secrets["bootstrap_token"].encode()).hexdigest() in config
        assert secrets["bootstrap_token"] not in json.dumps(entry)
        assert secrets["certificate_key"] not in json.dumps(entry)


def init_docs(lab_cluster) -> tuple[list[dict], dict]:
    secrets = make_secrets()
    text = render.render(lab_cluster, secrets)["cp1"][INIT].content.decode()
    return list(yaml.safe_load_all(text)), secrets


def init_node(nodes, docs) -> Node:
    node = nodes("cp1")
    text = yaml.safe_dump_all(docs)
    node.put(INIT, text, 0o600)
    place_external_etcd_client_certs(node, text)
    return node


def test_unknown_field_is_a_strict_decoding_error(nodes, lab_cluster):
    docs, _ = init_docs(lab_cluster)
    docs[0]["bootstrapTokens"][0]["foo"] = 1
    docs[1]["networking"]["podCIDR"] = "10.0.0.0/16"
    r = init_node(nodes, docs).run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 1
    assert ('error unmarshaling configuration schema.GroupVersionKind{Group:"kubeadm.k8s.io", '
            'Version:"v1beta4", Kind:"InitConfiguration"}: strict decoding error: unknown field '
            '"bootstrapTokens[0].foo"') in r.stderr
    assert 'Kind:"ClusterConfiguration"}: strict decoding error: unknown field ' \
           '"networking.podCIDR"' in r.stderr
    assert_prefixed(r.stderr, "kubeadm")


def test_unknown_field_in_a_component_config_is_refused(nodes, lab_cluster):
    docs, _ = init_docs(lab_cluster)
    kubelet = [d for d in docs if d["kind"] == "KubeletConfiguration"][0]
    kubelet["cgroupDriverr"] = "systemd"
    r = init_node(nodes, docs).run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 1 and 'unknown field "cgroupDriverr"' in r.stderr


def test_wrong_type_is_refused(nodes, lab_cluster):
    docs, _ = init_docs(lab_cluster)
    docs[0]["localAPIEndpoint"]["bindPort"] = "6443"
    r = init_node(nodes, docs).run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 1
    assert ("json: cannot unmarshal string into Go struct field "
            "InitConfiguration.localAPIEndpoint.bindPort of type int") in r.stderr


@pytest.mark.parametrize("api", ["kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1"])
def test_only_v1beta4_is_accepted(nodes, lab_cluster, api):
    docs, _ = init_docs(lab_cluster)
    docs[0]["apiVersion"] = api
    r = init_node(nodes, docs).run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 1
    assert f'no kind "InitConfiguration" is registered for version "{api}"' in r.stderr


def test_bad_token_is_refused_without_printing_it(nodes, lab_cluster):
    docs, _ = init_docs(lab_cluster)
    docs[0]["bootstrapTokens"][0]["token"] = "ABCDEF.0123456789abcdef"
    node = init_node(nodes, docs)
    r = node.run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 1
    assert "bootstrapTokens[0].token: Invalid value" in r.stderr
    assert "ABCDEF" not in r.stderr + r.stdout + json.dumps(node.log())
    assert not node.path("/etc/kubernetes/admin.conf").exists()


def test_upload_certs_needs_a_certificate_key(nodes, lab_cluster):
    docs, _ = init_docs(lab_cluster)
    del docs[0]["certificateKey"]
    node = init_node(nodes, docs)
    r = node.run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 1 and "certificateKey: Required value" in r.stderr
    r = node.run("kubeadm", "init", "--config", INIT)  # without --upload-certs it is optional
    assert r.returncode == 0, r.stderr
    docs[0]["certificateKey"] = "abc"
    node.put(INIT, yaml.safe_dump_all(docs))
    node.run("kubeadm", "reset", "-f")
    r = node.run("kubeadm", "init", "--config", INIT)
    assert r.returncode == 1 and "certificateKey: Invalid value: <redacted>" in r.stderr


def test_init_twice_is_refused_and_reset_allows_it_again(nodes, lab_cluster):
    docs, _ = init_docs(lab_cluster)
    node = init_node(nodes, docs)
    assert node.run("kubeadm", "init", "--config", INIT, "--upload-certs").returncode == 0
    r = node.run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 1
    assert ("[ERROR FileAvailable--etc-kubernetes-manifests-kube-apiserver.yaml]: "
            "/etc/kubernetes/manifests/kube-apiserver.yaml already exists") in r.stderr
    assert [e["result"] for e in node.log()] == ["ok", "error: error execution phase preflight: "
                                                 "[preflight] Some fatal errors occurred:"]
    r = node.run("kubeadm", "reset", "-f")
    assert r.returncode == 0, r.stderr
    assert not node.path("/etc/kubernetes/admin.conf").exists()
    assert not node.path("/etc/kubernetes/manifests/kube-apiserver.yaml").exists()
    assert node.path(INIT).exists()  # reset removes only what kubeadm wrote
    assert node.run("kubeadm", "init", "--config", INIT, "--upload-certs").returncode == 0


def test_preflight_checks_what_earlier_phases_provide(nodes, lab_cluster):
    docs, _ = init_docs(lab_cluster)
    node = init_node(nodes, docs)
    node.sock.close()
    node.path("/run/containerd/containerd.sock").unlink()
    node.put("/proc/sys/net/ipv4/ip_forward", "0\n")
    node.path("/etc/kubernetes/pki/apiserver-etcd-client.key").unlink()
    node.path("/usr/local/bin/kubelet").unlink()
    r = node.run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 1
    for expected in ("[ERROR CRI]: container runtime is not running",
                     "[ERROR FileContent--proc-sys-net-ipv4-ip_forward]",
                     "[ERROR ExternalEtcdClientCertificates]: "
                     "/etc/kubernetes/pki/apiserver-etcd-client.key doesn't exist",
                     "[ERROR KubeletVersion]"):
        assert expected in r.stderr
    r = node.run("kubeadm", "init", "--config", INIT, "--upload-certs",
                 "--ignore-preflight-errors=all")
    assert r.returncode == 0, r.stderr


def test_the_log_never_holds_a_secret(nodes, lab_cluster):
    docs, secrets = init_docs(lab_cluster)
    node = init_node(nodes, docs)
    node.run("kubeadm", "init", "--config", INIT, "--upload-certs")
    node.run("kubeadm", "init", "--config", INIT, "--upload-certs")  # refused, logged too
    text = node.path("/var/log/standin/kubeadm.jsonl").read_text()
    assert secrets["bootstrap_token"] not in text and secrets["certificate_key"] not in text
    assert hashlib.sha256(secrets["bootstrap_token"].encode()).hexdigest() in text
    assert hashlib.sha256(secrets["certificate_key"].encode()).hexdigest() in text
    assert stat.S_IMODE(node.path("/var/log/standin/kubeadm.jsonl").stat().st_mode) == 0o600
    entries = node.log()
    assert [e["argv"] for e in entries] == [["init", "--config", INIT, "--upload-certs"]] * 2
    assert entries[0]["time"] < entries[1]["time"]


def join_docs(lab_cluster, host) -> list[dict]:
    text = render.render(lab_cluster, make_secrets())[host][JOIN].content.decode()
    return list(yaml.safe_load_all(text))


def test_join_needs_discovery_with_a_ca_pin(nodes, lab_cluster):
    docs = join_docs(lab_cluster, "w1")
    del docs[0]["discovery"]["bootstrapToken"]["caCertHashes"]
    node = nodes("w1")
    node.put(JOIN, yaml.safe_dump_all(docs), 0o600)
    r = node.run("kubeadm", "join", "--config", JOIN)
    assert r.returncode == 1
    assert "using token-based discovery without caCertHashes can be unsafe" in r.stderr
    docs[0]["discovery"]["bootstrapToken"]["caCertHashes"] = ["sha256:abc"]
    node.put(JOIN, yaml.safe_dump_all(docs), 0o600)
    r = node.run("kubeadm", "join", "--config", JOIN)
    assert r.returncode == 1 and "must be sha256:<64 hex characters>" in r.stderr


def test_join_refuses_a_ca_pin_that_does_not_match_the_cluster_ca(nodes, lab_cluster):
    docs = join_docs(lab_cluster, "cp2")
    node = nodes("cp2")
    node.put("/etc/kubernetes/pki/ca.crt", CA)
    node.put(JOIN, yaml.safe_dump_all(docs), 0o600)
    assert node.run("kubeadm", "join", "--config", JOIN).returncode == 0
    node.run("kubeadm", "reset", "-f")
    other = pki.ca_cert_hash(make_ca())
    docs[0]["discovery"]["bootstrapToken"]["caCertHashes"] = [other]
    node.put(JOIN, yaml.safe_dump_all(docs), 0o600)
    r = node.run("kubeadm", "join", "--config", JOIN)
    assert r.returncode == 1
    assert f'none of the public keys "{pki.ca_cert_hash(CA)}" are pinned' in r.stderr


def test_control_plane_join_needs_the_certificate_key(nodes, lab_cluster):
    docs = join_docs(lab_cluster, "cp2")
    del docs[0]["controlPlane"]["certificateKey"]
    node = nodes("cp2")
    node.put(JOIN, yaml.safe_dump_all(docs), 0o600)
    r = node.run("kubeadm", "join", "--config", JOIN)
    assert r.returncode == 1 and "controlPlane.certificateKey: Required value" in r.stderr


def test_worker_join_refuses_a_ca_already_there_and_refuses_twice(nodes, lab_cluster):
    docs = join_docs(lab_cluster, "w1")
    assert not docs[0]["nodeRegistration"].get("ignorePreflightErrors")
    node = nodes("w1")
    node.put(JOIN, yaml.safe_dump_all(docs), 0o600)
    node.put("/etc/kubernetes/pki/ca.crt", CA)  # why the provisioner never places it on workers
    r = node.run("kubeadm", "join", "--config", JOIN)
    assert r.returncode == 1
    assert "[ERROR FileAvailable--etc-kubernetes-pki-ca.crt]" in r.stderr
    assert node.run("kubeadm", "join", "--config", JOIN,
                    "--ignore-preflight-errors=FileAvailable--etc-kubernetes-pki-ca.crt"
                    ).returncode == 0
    r = node.run("kubeadm", "join", "--config", JOIN,
                 "--ignore-preflight-errors=FileAvailable--etc-kubernetes-pki-ca.crt")
    assert r.returncode == 1
    assert "[ERROR FileAvailable--etc-kubernetes-kubelet.conf]" in r.stderr


# ---------------------------------------------------------------------------------------------
# kubelet, kubectl
# ---------------------------------------------------------------------------------------------


def test_kubelet_fails_until_its_config_exists_then_checks_it(nodes):
    node = nodes("w1")
    r = node.run("kubelet", "--config=/var/lib/kubelet/config.yaml")
    assert r.returncode == 1
    assert "failed to load kubelet config file, path: /var/lib/kubelet/config.yaml" in r.stderr
    node.put("/var/lib/kubelet/config.yaml", "apiVersion: kubelet.config.k8s.io/v1beta1\n"
             "kind: KubeletConfiguration\ncgroupDriver: systemd\nmaxPods: many\n")
    r = node.run("kubelet", "--config=/var/lib/kubelet/config.yaml")
    assert r.returncode == 1
    assert "cannot unmarshal string into Go struct field KubeletConfiguration.maxPods" in r.stderr
    assert [e["result"].split(":")[0] for e in node.log("kubelet")] == ["error", "error"]


def cgroup2_mount() -> str | None:
    """A cgroup2 mount point of this machine (hybrid hosts have one under /sys/fs/cgroup)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            return left.split()[4]
    return None


@pytest.mark.parametrize("version, config, flags, refused", [
    ("v1.36.4", "", [], True),                            # 1.35+: failCgroupV1 defaults to true
    ("v1.35.9", "failCgroupV1: true\n", [], True),
    ("v1.36.4", "failCgroupV1: false\n", [], False),      # allow_cgroup_v1 renders this
    ("v1.36.4", "", ["--fail-cgroupv1=false"], False),     # k3s passes it as a kubelet-arg
    ("v1.34.2", "", [], False),                           # older kubelets run on cgroup v1
])
def test_kubelet_refuses_cgroup_v1_like_the_real_one(tmp_path, version, config, flags, refused):
    """The host under STANDIN_ROOT has no cgroup2 mount at /sys/fs/cgroup: cgroup v1."""
    tool = tmp_path / "kubelet"
    tool.write_bytes(build_tool("kubelet", version))
    node = Node(tmp_path, "w1")
    try:
        node.put("/var/lib/kubelet/config.yaml", "apiVersion: kubelet.config.k8s.io/v1beta1\n"
                 "kind: KubeletConfiguration\ncgroupDriver: systemd\n" + config)
        proc = node.start("kubelet", "--config=/var/lib/kubelet/config.yaml", *flags)
        if refused:
            assert proc.wait(30) == 1
            assert ("kubelet is configured to not run on a host using cgroup v1"
                    in proc.stderr.read())
        else:
            assert "is valid; sleeping" in proc.stdout.readline()
            proc.terminate()
            assert proc.wait(10) == 0
        mount = cgroup2_mount()
        if refused and mount:  # the same config on a cgroup v2 host runs
            node.path("/sys/fs").mkdir(parents=True)
            node.path("/sys/fs/cgroup").symlink_to(mount)
            proc = node.start("kubelet", "--config=/var/lib/kubelet/config.yaml", *flags)
            assert "is valid; sleeping" in proc.stdout.readline()
            proc.terminate()
            assert proc.wait(10) == 0
    finally:
        node.close()


def test_kubectl_apply_checks_and_records_the_rendered_addons(nodes, lab_cluster):
    rendered = render.render(lab_cluster, make_secrets())
    node = nodes("cp1")
    place(node, rendered, "cp1")
    addons = sorted(p for p in rendered["cp1"] if p.startswith("/etc/kubernetes/addons/"))
    assert addons
    kubeconfig = ["--kubeconfig", "/etc/kubernetes/admin.conf"]
    r = node.run("kubectl", *kubeconfig, "apply", "-f", addons[0])
    assert r.returncode == 1 and "stat /etc/kubernetes/admin.conf" in r.stderr  # before init
    node.put("/etc/kubernetes/admin.conf", "apiVersion: v1\nkind: Config\n", 0o600)
    for path in addons:
        r = node.run("kubectl", *kubeconfig, "apply", "-f", path)
        assert r.returncode == 0, (path, r.stderr)
        assert_prefixed(r.stdout, "kubectl")
        # the addons playbook counts "created"/"configured" as a change: none is claimed
        assert "created" not in r.stdout and "configured" not in r.stdout
    first, *logged = node.log("kubectl")
    assert first["result"].startswith("error: stat /etc/kubernetes/admin.conf")
    assert len(logged) == len(addons) and all(e["result"] == "ok" for e in logged)
    assert any(o["kind"] == "DaemonSet" for e in logged for o in e["objects"])
    node.put("/tmp/bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n")
    r = node.run("kubectl", *kubeconfig, "apply", "-f", "/tmp/bad.yaml")
    assert r.returncode == 1 and "metadata.name is required" in r.stderr
    r = node.run("kubectl", *kubeconfig, "get", "--raw", "/readyz")
    assert r.returncode == 1 and "stand-in: no API server" in r.stderr


# ---------------------------------------------------------------------------------------------
# k3s
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k3s_cluster():
    return inv.load(str(ROOT / "inventories/k3s-ha.yml"))


@pytest.fixture(scope="module")
def k3s_bundle(tmp_path_factory, k3s_cluster) -> Path:
    dest = make_standin_bundle(tmp_path_factory.mktemp("k3s-bundle"), k3s_cluster)
    return dest / bundles.folder_name(k3s_cluster)


def run_until_ready(node: Node, role: str) -> tuple[subprocess.Popen, bytes]:
    """Start `k3s ROLE` with a NOTIFY_SOCKET as systemd (Type=notify) does; return what it sent."""
    notify = node.path("/run/notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(notify))
        s.settimeout(30)
        proc = node.start("k3s", role, NOTIFY_SOCKET=str(notify))
        try:
            message = s.recv(512)
        except socket.timeout:
            proc.kill()
            raise AssertionError(proc.communicate()[1])
    return proc, message


def test_k3s_rendered_configs_start_servers_and_agents(nodes, k3s_cluster, k3s_bundle):
    secrets = make_secrets()
    rendered = render.render(k3s_cluster, secrets)
    for host in [n.name for n in k3s_cluster.nodes]:
        role = "server" if k3s_cluster.node(host).has("control_plane") else "agent"
        node = nodes(host, bundle=k3s_bundle)
        place(node, rendered, host)
        proc, message = run_until_ready(node, role)
        assert message.startswith(b"READY=1")
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert_prefixed(out, "k3s")
        (entry,) = node.log("k3s")
        assert entry["result"] == "running" and entry["role"] == role
        text = node.path("/var/log/standin/k3s.jsonl").read_text()
        assert secrets["k3s_token"] not in text
        assert hashlib.sha256(secrets["k3s_token"].encode()).hexdigest() in text
        if role == "server":
            token_file = node.path("/var/lib/rancher/k3s/server/node-token")
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            assert secrets["k3s_token"] not in token_file.read_text()
            assert stat.S_IMODE(node.path("/etc/rancher/k3s/k3s.yaml").stat().st_mode) == 0o600
        else:
            assert node.path("/var/lib/rancher/k3s/agent/kubelet.kubeconfig").exists()


def test_k3s_etcd_snapshot_save_needs_a_running_server_and_writes_a_recorded_file(
        nodes, k3s_cluster, k3s_bundle):
    """TEST-ONLY `k3s etcd-snapshot save` for cluster.backup: named as real k3s names it."""
    rendered = render.render(k3s_cluster, make_secrets())
    node = nodes("s1", bundle=k3s_bundle)
    place(node, rendered, "s1")
    r = node.run("k3s", "etcd-snapshot", "save", "--dir", "/var/lib/x", "--name", "bk")
    assert r.returncode == 1 and "etcd datastore is not running" in r.stderr
    proc, _ = run_until_ready(node, "server")
    try:
        r = node.run("k3s", "etcd-snapshot", "save", "--dir", "/var/lib/x", "--name", "bk")
        assert r.returncode == 0, r.stderr
        (snap,) = node.path("/var/lib/x").iterdir()
        assert snap.name.startswith("bk-s1-") and snap.name[len("bk-s1-"):].isdigit()
        assert stat.S_IMODE(snap.stat().st_mode) == 0o600
        assert "TEST-ONLY" in snap.read_text()
        r = node.run("k3s", "etcd-snapshot", "restore")
        assert r.returncode == 1 and "implements only save" in r.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    saved = [e for e in node.log("k3s") if e["result"] == "saved"]
    assert len(saved) == 1 and saved[0]["snapshot"] == f"/var/lib/x/{snap.name}"


def test_k3s_cluster_reset_restores_a_snapshot_as_k3s_does(nodes, k3s_cluster, k3s_bundle):
    """`k3s server --cluster-reset --cluster-reset-restore-path` (cluster.restore): the flag
    rules and refusals of real k3s, then the reset itself, which exits."""
    rendered = render.render(k3s_cluster, make_secrets())
    node = nodes("s1", bundle=k3s_bundle)
    place(node, rendered, "s1")
    proc, _ = run_until_ready(node, "server")
    try:
        assert node.run("k3s", "etcd-snapshot", "save", "--dir", "/snap").returncode == 0
        (snap,) = node.path("/snap").iterdir()
        snap_path = f"/snap/{snap.name}"
        r = node.run("k3s", "server", "--cluster-reset")
        assert r.returncode == 1 and "the k3s service still runs" in r.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    before = json.loads(node.path(K3S_ETCD).read_text())
    assert before["origin"] == "cluster-init"
    r = node.run("k3s", "server", f"--cluster-reset-restore-path={snap_path}")
    assert r.returncode == 1
    assert "invalid flag use; --cluster-reset required with --cluster-reset-restore-path" in r.stderr
    r = node.run("k3s", "server", "--cluster-reset", "--cluster-reset-restore-path=/snap/none")
    assert r.returncode == 1 and "snapshot path does not exist: /snap/none" in r.stderr
    node.put("/snap/other", "not a snapshot\n")
    r = node.run("k3s", "server", "--cluster-reset", "--cluster-reset-restore-path=/snap/other")
    assert r.returncode == 1 and "is not an etcd snapshot" in r.stderr
    r = node.run("k3s", "server", "--cluster-reset", f"--cluster-reset-restore-path={snap_path}")
    assert r.returncode == 0, r.stderr
    assert "restart without --cluster-reset flag now" in r.stderr
    after = json.loads(node.path(K3S_ETCD).read_text())
    assert after["origin"] == "snapshot" and after["snapshot_of"] == before["cluster"]
    assert after["cluster"] != before["cluster"]  # a new one-member cluster
    old = [p.name for p in node.path("/var/lib/rancher/k3s/server/db").iterdir()
           if p.name.startswith("etcd-old-")]
    assert len(old) == 1
    r = node.run("k3s", "server", "--cluster-reset", f"--cluster-reset-restore-path={snap_path}")
    assert r.returncode == 1 and "previously reset" in r.stderr
    node.path("/run/notify.sock").unlink()
    proc, _ = run_until_ready(node, "server")
    proc.terminate()
    proc.communicate(timeout=10)
    results = [(e["result"], e.get("etcd_data")) for e in node.log("k3s")
               if e["argv"][:1] == ["server"]]
    assert results[0] == ("running", "cluster-init") and results[-1] == ("running", "snapshot")
    assert [r for r, _ in results].count("reset") == 1


def test_k3s_refuses_a_flag_its_role_does_not_have(nodes, k3s_cluster, k3s_bundle):
    rendered = render.render(k3s_cluster, make_secrets())
    node = nodes("a1", bundle=k3s_bundle)
    place(node, rendered, "a1")
    config = yaml.safe_load(node.path(K3S).read_text())
    node.put(K3S, yaml.safe_dump({**config, "cluster-init": True}), 0o600)
    r = node.run("k3s", "agent")
    assert r.returncode == 1
    assert f"{K3S}: cluster-init: flag provided but not defined: -cluster-init (a server " \
           "flag)" in r.stderr
    node.put(K3S, yaml.safe_dump({**config, "node-label": {"a": "b"}}), 0o600)
    r = node.run("k3s", "agent")
    assert r.returncode == 1 and "want a list for -node-label" in r.stderr
    del config["token"]
    node.put(K3S, yaml.safe_dump(config), 0o600)
    r = node.run("k3s", "agent")
    assert r.returncode == 1 and '--token is required' in r.stderr
    assert len(node.log("k3s")) == 3


def test_k3s_kubectl_needs_the_server_kubeconfig(nodes, k3s_bundle):
    node = nodes("s1", bundle=k3s_bundle)
    node.put("/tmp/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    r = node.run("k3s", "kubectl", "apply", "-f", "/tmp/cm.yaml")
    assert r.returncode == 1 and "stat /etc/rancher/k3s/k3s.yaml" in r.stderr
    node.put("/etc/rancher/k3s/k3s.yaml", "apiVersion: v1\nkind: Config\n", 0o600)
    r = node.run("k3s", "kubectl", "apply", "-f", "/tmp/cm.yaml")
    assert r.returncode == 0 and "configmap/x recorded" in r.stdout


def test_token_renewal_and_upload_certs_need_the_cluster_and_never_log_the_secret(nodes):
    node = nodes("cp1")
    token, key = "abcdef.0123456789abcdef", "a" * 64
    r = node.run("kubeadm", "token", "create", token, "--ttl", "24h")
    assert r.returncode == 1 and "failed to load admin kubeconfig" in r.stderr
    node.put("/etc/kubernetes/admin.conf", "apiVersion: v1\nkind: Config\n", 0o600)
    assert node.run("kubeadm", "token", "delete", "abcdef").returncode == 0
    assert node.run("kubeadm", "token", "create", token, "--ttl", "24h").returncode == 0
    assert node.run("kubeadm", "init", "phase", "upload-certs", "--upload-certs",
                    "--certificate-key", key).returncode == 0
    r = node.run("kubeadm", "init", "phase", "upload-certs", "--upload-certs",
                 "--certificate-key", "short")
    assert r.returncode == 1 and "64 hexadecimal" in r.stderr
    logged = json.dumps(node.log())
    assert token not in logged and key not in logged


# ---------------------------------------------------------------------------------------------
# Steps, the fault switch and what kubectl answers (the local node only, from stand-in state)
# ---------------------------------------------------------------------------------------------

ADMIN = ["--kubeconfig", "/etc/kubernetes/admin.conf"]
KUBELET_CONF = ["--kubeconfig", "/etc/kubernetes/kubelet.conf"]
M = "/etc/kubernetes/manifests/"
# the files each step writes (stacked etcd); /run/standin/active/kubelet stands for the unit
INIT_FILES = {
    "preflight": [], "certs": [],
    "kubeconfig": ["/etc/kubernetes/admin.conf", "/etc/kubernetes/super-admin.conf",
                   "/etc/kubernetes/kubelet.conf", "/etc/kubernetes/controller-manager.conf",
                   "/etc/kubernetes/scheduler.conf"],
    "etcd": [M + "etcd.yaml"],
    "control-plane": [M + "kube-apiserver.yaml", M + "kube-controller-manager.yaml",
                      M + "kube-scheduler.yaml"],
    "kubelet-start": ["/var/lib/kubelet/config.yaml", "/var/lib/kubelet/kubeadm-flags.env",
                      "/run/standin/active/kubelet", "/var/lib/etcd/member/standin-member"],
    "wait-control-plane": [], "upload-config": [], "upload-certs": [], "mark-control-plane": [],
    "bootstrap-token": [], "kubelet-finalize": [], "addon": [], "show-join-command": [],
}
INIT_ORDER = list(INIT_FILES)
# the steps `kubeadm init phase ...` can finish, with their arguments
PHASE_ARGS = {"upload-config": ["all"], "upload-certs": ["--upload-certs"],
              "mark-control-plane": [], "bootstrap-token": [], "kubelet-finalize": ["all"],
              "addon": ["all"]}
JOIN_CP_FILES = {
    "preflight": [],
    "control-plane-prepare": ["/etc/kubernetes/admin.conf",
                              "/etc/kubernetes/controller-manager.conf",
                              "/etc/kubernetes/scheduler.conf", M + "kube-apiserver.yaml",
                              M + "kube-controller-manager.yaml", M + "kube-scheduler.yaml"],
    "kubelet-start": ["/var/lib/kubelet/config.yaml", "/var/lib/kubelet/kubeadm-flags.env",
                      "/etc/kubernetes/kubelet.conf", "/run/standin/active/kubelet"],
    "etcd-join": [M + "etcd.yaml", "/var/lib/etcd/member/standin-member"],
    "kubelet-wait-bootstrap": [], "control-plane-join": [], "wait-control-plane": [],
}
JOIN_WORKER_FILES = {"preflight": [], "kubelet-start": JOIN_CP_FILES["kubelet-start"],
                     "kubelet-wait-bootstrap": []}
NOT_COMPARED = ("var/log/standin/", "etc/standin/", "run/containerd/",
                "var/lib/standin/")  # the stand-ins' own bookkeeping


def snapshot(node: Node) -> dict[str, str]:
    """relative path -> sha256 of every regular file under the node's root (the stand-ins' own
    log, fault file and state left out)."""
    out = {}
    for p in node.root.rglob("*"):
        rel = str(p.relative_to(node.root))
        if p.is_file() and not p.is_socket() and not rel.startswith(NOT_COMPARED):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def kstate(node: Node) -> dict:
    p = node.path("/var/lib/standin/kubeadm-state.json")
    return json.loads(p.read_text()) if p.exists() else {}


SHARED = make_secrets()  # one set for a clean run and the faulted runs compared with it


def single_node(nodes, host: str, secrets=None) -> tuple[Node, dict]:
    cluster = inv.load(str(ROOT / "inventories/single.yml"))
    rendered = render.render(cluster, secrets or SHARED)
    node = nodes(host)
    place(node, rendered, host)
    return node, rendered


def answers(node: Node, name: str, kubeconfig=ADMIN) -> dict[str, object]:
    """What the kubectl stand-in says about this node: (rc, stdout) per question."""
    def ask(*args):
        r = node.run("kubectl", *kubeconfig, *args)
        for line in r.stderr.splitlines():
            assert line.startswith("[stand-in kubectl] "), r.stderr
        return r.returncode, r.stdout

    return {
        "readyz": ask("get", "--raw", "/readyz"),
        "node": ask("get", "node", name, "-o", "name"),
        "labels": ask("get", "node", name, "-o", "jsonpath={.metadata.labels}"),
        "cluster-info": ask("-n", "kube-public", "get", "configmap", "cluster-info", "-o",
                            "name"),
        "addons": ask("-n", "kube-system", "get", "daemonset/kube-proxy", "deployment/coredns",
                      "-o", "name"),
        "etcd": ask("-n", "kube-system", "get", "pod", f"etcd-{name}", "-o", "name"),
    }


def expected_init_answers(done: set[str], name: str) -> dict[str, tuple[int, str]]:
    up = "wait-control-plane" in done
    labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
              "kubernetes.io/os": "linux"}
    if "mark-control-plane" in done:
        labels.update({"node-role.kubernetes.io/control-plane": "",
                       "node.kubernetes.io/exclude-from-external-load-balancers": ""})
    ok = lambda cond, out: (0, out) if cond else (1, "")  # noqa: E731
    return {"readyz": ok(up, "ok\n"), "node": ok(up, f"node/{name}\n"),
            "labels": ok(up, json.dumps(labels, sort_keys=True, separators=(",", ":")) + "\n"),
            "cluster-info": ok(up and "bootstrap-token" in done, "configmap/cluster-info\n"),
            "addons": ok(up and "addon" in done,
                         "daemonset.apps/kube-proxy\ndeployment.apps/coredns\n"),
            "etcd": ok(up, f"pod/etcd-{name}\n")}


@pytest.fixture
def clean_init(nodes):
    """A node where `kubeadm init` ran through without a fault (single.yml, stacked etcd)."""
    node, _ = single_node(nodes, "cp1")
    r = node.run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 0, r.stderr
    return node, SHARED


def test_a_clean_init_records_every_step_in_upstream_order(clean_init):
    node, _ = clean_init
    s = kstate(node)
    assert s["steps"] == {"init": INIT_ORDER}
    assert (s["node"], s["role"], s["etcd"]) == ("cp1", "control-plane", "stacked")
    assert "failed" not in s
    assert answers(node, "cp1") == expected_init_answers(set(INIT_ORDER), "cp1")
    kubelet = yaml.safe_load(node.path("/etc/kubernetes/kubelet.conf").read_text())
    assert kubelet["users"][0]["user"]["client-certificate"] == \
        "/var/lib/kubelet/pki/kubelet-client-current.pem"  # kubelet-finalize ran
    # the kubelet unit stopped: the API answers no more (the stand-in reads its unit)
    node.path("/run/standin/active/kubelet").unlink()
    r = node.run("kubectl", *ADMIN, "get", "--raw", "/readyz")
    assert r.returncode == 1 and "The connection to the server" in r.stderr \
        and "was refused" in r.stderr and "stand-in" in r.stderr
    r = node.run("kubectl", *ADMIN, "--server", "https://10.0.0.1:6443", "get", "--raw",
                 "/readyz")
    assert r.returncode == 1 and "The connection to the server 10.0.0.1:6443 was refused" \
        in r.stderr


def test_init_without_upload_certs_skips_that_step(nodes):
    node, _ = single_node(nodes, "cp1")
    r = node.run("kubeadm", "init", "--config", INIT)
    assert r.returncode == 0, r.stderr
    assert "upload-certs" not in kstate(node)["steps"]["init"]
    assert "[upload-certs] Skipping phase" in r.stdout


@pytest.mark.parametrize("step", INIT_ORDER)
def test_init_fault_at_each_step_and_how_a_rerun_finishes_it(step, nodes, clean_init):
    clean, _ = clean_init
    node, _ = single_node(nodes, "cp1")
    before = snapshot(node)
    node.put("/etc/standin/faults", f"kubeadm init {step}\nk3s agent kubelet\n")
    r = node.run("kubeadm", "init", "--config", INIT, "--upload-certs")
    assert r.returncode == 1
    assert f"error execution phase {step}: " in r.stderr and "(stand-in fault switch" in r.stderr
    assert_prefixed(r.stderr, "kubeadm")
    # the fault fired once: its line is gone, the others stay
    assert node.path("/etc/standin/faults").read_text() == "k3s agent kubelet\n"
    assert node.log()[-1]["result"].startswith(f"error: error execution phase {step}: ")
    i = INIT_ORDER.index(step)
    earlier = INIT_ORDER[:i]
    written = set(snapshot(node)) - set(before)
    assert written == {p.lstrip("/") for s in earlier for p in INIT_FILES[s]}
    s = kstate(node)
    assert s.get("steps", {}).get("init", []) == earlier
    if earlier:
        assert s["failed"] == {"init": step}
    assert answers(node, "cp1") == expected_init_answers(set(earlier), "cp1")

    if i <= INIT_ORDER.index("wait-control-plane"):
        # no API: the rerun needs a reset first once static pod manifests are left behind
        # (existing kubeconfig files alone are reused, as kubeadm does)
        if any(p.startswith("etc/kubernetes/manifests/") for p in written):
            r = node.run("kubeadm", "init", "--config", INIT, "--upload-certs")
            assert r.returncode == 1 and "error execution phase preflight" in r.stderr
            assert kstate(node) == s  # a refused rerun leaves the state alone
        assert node.run("kubeadm", "reset", "-f").returncode == 0
        assert not node.path("/var/lib/standin/kubeadm-state.json").exists()
        r = node.run("kubeadm", "init", "--config", INIT, "--upload-certs")
        assert r.returncode == 0, r.stderr
        assert kstate(node) == kstate(clean)
    else:
        # the API answers: the init phase subcommands finish it
        for phase in [p for p in INIT_ORDER[i:] if p in PHASE_ARGS]:
            r = node.run("kubeadm", "init", "phase", phase, *PHASE_ARGS[phase], "--config", INIT)
            assert r.returncode == 0, (phase, r.stderr)
            again = node.run("kubeadm", "init", "phase", phase, *PHASE_ARGS[phase], "--config",
                             INIT)
            assert again.returncode == 0, (phase, again.stderr)  # idempotent
        # show-join-command only prints: nothing finishes it, nothing needs to
        want = kstate(clean)
        want["steps"]["init"] = [x for x in want["steps"]["init"] if x != "show-join-command"]
        got = kstate(node)
        if got.get("failed") == {"init": "show-join-command"}:
            del got["failed"]
        assert got == want
    assert snapshot(node) == snapshot(clean)
    assert answers(node, "cp1") == answers(clean, "cp1") == \
        expected_init_answers(set(INIT_ORDER), "cp1")


def test_init_phase_subcommands_need_the_api_and_check_like_kubeadm(nodes):
    node, _ = single_node(nodes, "cp1")
    r = node.run("kubeadm", "init", "phase", "addon", "all", "--config", INIT)
    assert r.returncode == 1 and "failed to load admin kubeconfig" in r.stderr
    node.put("/etc/standin/faults", "kubeadm init wait-control-plane\n")
    assert node.run("kubeadm", "init", "--config", INIT, "--upload-certs").returncode == 1
    r = node.run("kubeadm", "init", "phase", "addon", "all", "--config", INIT)
    assert r.returncode == 1 and "connection refused" in r.stderr  # the API never came up
    node.run("kubeadm", "reset", "-f")
    node.put("/etc/standin/faults", "kubeadm init upload-config\nkubeadm init addon\n")
    assert node.run("kubeadm", "init", "--config", INIT, "--upload-certs").returncode == 1
    r = node.run("kubeadm", "init", "phase", "nonsense", "--config", INIT)
    assert r.returncode == 1 and 'unknown command "nonsense" for "kubeadm init phase"' in r.stderr
    r = node.run("kubeadm", "init", "phase", "addon", "--config", INIT)
    assert r.returncode == 1 and "needs a sub-phase" in r.stderr
    r = node.run("kubeadm", "init", "phase", "addon", "all", "--config", INIT)
    assert r.returncode == 1 and "error execution phase addon: planned failure" in r.stderr
    assert node.run("kubeadm", "init", "phase", "addon", "all", "--config", INIT).returncode == 0
    r = node.run("kubeadm", "init", "phase", "upload-certs", "--config", INIT)
    assert r.returncode == 0 and "Skipping phase" in r.stdout
    docs = list(yaml.safe_load_all(node.path(INIT).read_text()))
    key = docs[0].pop("certificateKey")
    node.put("/tmp/no-key.yaml", yaml.safe_dump_all(docs), 0o600)
    r = node.run("kubeadm", "init", "phase", "upload-certs", "--upload-certs", "--config",
                 "/tmp/no-key.yaml")
    assert r.returncode == 1 and "certificateKey: Required value" in r.stderr
    docs[0]["certificateKey"] = "0123"
    node.put("/tmp/bad-key.yaml", yaml.safe_dump_all(docs), 0o600)
    r = node.run("kubeadm", "init", "phase", "upload-certs", "--upload-certs", "--config",
                 "/tmp/bad-key.yaml")
    assert r.returncode == 1 and "certificateKey: Invalid value: <redacted>" in r.stderr
    assert "upload-certs" not in kstate(node)["steps"]["init"]
    r = node.run("kubeadm", "init", "phase", "upload-certs", "--upload-certs", "--config", INIT)
    assert r.returncode == 0, r.stderr
    assert "upload-certs" in kstate(node)["steps"]["init"]
    assert key not in json.dumps(node.log()) + node.path(
        "/var/lib/standin/kubeadm-state.json").read_text()


@pytest.fixture
def clean_joins(nodes):
    """cp2 (control plane, stacked etcd) and w1 after a join without a fault (single.yml has
    one control plane: cp2's join config comes from ha-kubevip.yml, also stacked)."""
    out = {}
    for host, inventory in (("cp2", "ha-kubevip.yml"), ("w1", "single.yml")):
        node = join_node(nodes, host, inventory)
        r = node.run("kubeadm", "join", "--config", JOIN)
        assert r.returncode == 0, r.stderr
        out[host] = node
    return out


def join_node(nodes, host: str, inventory: str) -> Node:
    cluster = inv.load(str(ROOT / "inventories" / inventory))
    node = nodes(host)
    place(node, render.render(cluster, SHARED), host)
    if host.startswith("cp"):
        node.put("/etc/kubernetes/pki/ca.crt", CA)
    return node


JOIN_CASES = [("cp2", "ha-kubevip.yml", s) for s in JOIN_CP_FILES] + \
             [("w1", "single.yml", s) for s in JOIN_WORKER_FILES]


@pytest.mark.parametrize("host,inventory,step", JOIN_CASES)
def test_join_fault_at_each_step_then_reset_and_rejoin(host, inventory, step, nodes,
                                                       clean_joins):
    files = JOIN_CP_FILES if host == "cp2" else JOIN_WORKER_FILES
    order = list(files)
    node = join_node(nodes, host, inventory)
    before = snapshot(node)
    node.put("/etc/standin/faults", f"kubeadm join {step}\n")
    r = node.run("kubeadm", "join", "--config", JOIN)
    assert r.returncode == 1
    shown = "control-plane-join/mark-control-plane" if step == "control-plane-join" else step
    assert f"error execution phase {shown}: planned failure" in r.stderr
    assert node.path("/etc/standin/faults").read_text() == ""
    earlier = order[:order.index(step)]
    assert set(snapshot(node)) - set(before) == \
        {p.lstrip("/") for s in earlier for p in files[s]}
    assert kstate(node).get("steps", {}).get("join", []) == earlier
    done = set(earlier)
    cp = host == "cp2"
    kubeconfig = ADMIN if cp else KUBELET_CONF
    got = answers(node, host, kubeconfig)
    # its own API serves once the kubelet runs the static pods and the etcd member joined,
    # unless the join failed waiting for it
    api = cp and {"kubelet-start", "etcd-join"} <= done and step != "wait-control-plane"
    assert got["readyz"][0] == (0 if api else 1)
    assert got["node"] == ((0, f"node/{host}\n") if "kubelet-start" in done else (1, ""))
    assert got["etcd"][0] == (0 if "etcd-join" in done else 1)
    if got["labels"][0] == 0:
        assert ('"node-role.kubernetes.io/control-plane":""' in got["labels"][1]) == \
            ("control-plane-join" in done)
    # cluster-wide objects the init made: asked through the node's kubeconfig, the cluster
    # answers (another control plane serves) as soon as the join wrote that file
    cluster = 0 if node.path(kubeconfig[1]).exists() else 1
    assert got["cluster-info"][0] == got["addons"][0] == cluster
    assert node.run("kubeadm", "reset", "-f").returncode == 0
    r = node.run("kubeadm", "join", "--config", JOIN)
    assert r.returncode == 0, r.stderr
    clean = clean_joins[host]
    assert kstate(node) == kstate(clean)
    assert snapshot(node) == snapshot(clean)
    assert answers(node, host, kubeconfig) == answers(clean, host, kubeconfig)


def test_joined_nodes_answer_about_themselves_only(clean_joins):
    cp2, w1 = clean_joins["cp2"], clean_joins["w1"]
    assert kstate(cp2)["steps"]["join"] == list(JOIN_CP_FILES)
    assert kstate(w1)["steps"]["join"] == list(JOIN_WORKER_FILES)
    assert cp2.run("kubectl", *ADMIN, "get", "--raw", "/readyz").stdout == "ok\n"
    assert cp2.run("kubectl", *ADMIN, "-n", "kube-system", "get", "pod", "etcd-cp2", "-o",
                   "name").stdout == "pod/etcd-cp2\n"
    r = w1.run("kubectl", *KUBELET_CONF, "get", "node", "w1", "--output=name")
    assert (r.returncode, r.stdout) == (0, "node/w1\n")
    r = w1.run("kubectl", *KUBELET_CONF, "get", "node", "cp1", "-o", "name")
    assert r.returncode == 1 and 'Error from server (NotFound): nodes "cp1" not found' in r.stderr
    r = w1.run("kubectl", *ADMIN, "get", "node", "w1", "-o", "name")
    assert r.returncode == 1 and "stat /etc/kubernetes/admin.conf" in r.stderr
    r = w1.run("kubectl", *KUBELET_CONF, "get", "--raw", "/readyz")
    assert r.returncode == 1 and "was refused" in r.stderr  # a worker serves no API
    r = w1.run("kubectl", *KUBELET_CONF, "get", "pods", "-A")
    assert r.returncode == 1 and "stand-in: no API server" in r.stderr
    # a full join on leftovers still fails kubeadm's preflight
    r = cp2.run("kubeadm", "join", "--config", JOIN)
    assert r.returncode == 1 and "[ERROR FileAvailable--etc-kubernetes-kubelet.conf]" in r.stderr
    assert "[ERROR DirAvailable--var-lib-etcd]: /var/lib/etcd is not empty" in r.stderr


def test_external_etcd_join_has_no_etcd_join_step(nodes, lab_cluster):
    node = join_node(nodes, "cp2", "lab.yml")
    node.put("/etc/kubernetes/pki/apiserver-etcd-client.key", "placed by the pki phase\n")
    assert node.run("kubeadm", "join", "--config", JOIN).returncode == 0
    s = kstate(node)
    assert s["etcd"] == "external" and "etcd-join" not in s["steps"]["join"]
    assert not node.path("/etc/kubernetes/manifests/etcd.yaml").exists()
    assert node.run("kubectl", *ADMIN, "get", "--raw", "/readyz").stdout == "ok\n"


LABEL_TAINT_ERRORS = [
    (["label", "node", "cp1", "Bad Key=x"], "error: invalid label spec: Bad Key=x"),
    (["label", "node", "cp1", "k=-bad"], "error: invalid label spec: k=-bad"),
    (["label", "node", "cp1", "a" * 64 + "=v"], "name part must consist"),
    (["label", "node", "cp1", "Example.com/k=v"], "prefix part must be a lowercase"),
    (["label", "node", "cp1", "justakey"], "all resources must be specified before label"),
    (["label", "node", "cp1"], "at least one label update is required"),
    (["label", "node", "cp1", "k=v", "--force"], "unknown flag: --force"),
    (["taint", "node", "cp1", "k=v:NoWay"], "invalid taint effect: NoWay, unsupported"),
    (["taint", "node", "cp1", "k=v"], "error: invalid taint spec: k=v"),
    (["taint", "node", "cp1", "k=v:NoSchedule-"], "error: invalid taint spec: k=v:NoSchedule-"),
    (["taint", "node", "cp1", "bad key:NoSchedule"], "error: invalid taint spec: bad key"),
    (["taint", "node", "cp1", "gone:NoExecute-"], 'error: taint "gone:NoExecute" not found'),
]


@pytest.mark.parametrize("args,message", LABEL_TAINT_ERRORS)
def test_kubectl_label_and_taint_syntax_errors(args, message, clean_init):
    node, _ = clean_init
    r = node.run("kubectl", *ADMIN, *args)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert_prefixed(r.stderr, "kubectl")
    assert not node.path("/var/lib/standin/kubectl-records.json").exists()


def test_kubectl_label_and_taint_are_recorded_for_the_named_node(clean_init):
    node, _ = clean_init
    r = node.run("kubectl", *ADMIN, "label", "node", "cp1", "tier=front",
                 "example.com/zone=a", "--overwrite")
    assert r.returncode == 0 and "node/cp1 labeled (recorded by the stand-in" in r.stdout
    labels = json.loads(node.run("kubectl", *ADMIN, "get", "node", "cp1", "-o",
                                 "jsonpath={.metadata.labels}").stdout)
    assert labels["tier"] == "front" and labels["example.com/zone"] == "a"
    assert labels["node-role.kubernetes.io/control-plane"] == ""
    r = node.run("kubectl", *ADMIN, "label", "node", "cp1", "tier=back")
    assert r.returncode == 1 and "'tier' already has a value (front), and --overwrite is false" \
        in r.stderr
    assert node.run("kubectl", *ADMIN, "label", "node/cp1", "tier-").returncode == 0
    labels = json.loads(node.run("kubectl", *ADMIN, "get", "node", "cp1", "-o",
                                 "jsonpath={.metadata.labels}").stdout)
    assert "tier" not in labels
    # any name: the stand-in cannot know the cluster's other nodes, and says it recorded it
    r = node.run("kubectl", *ADMIN, "taint", "node", "w1", "dedicated=db:NoSchedule",
                 "--overwrite")
    assert r.returncode == 0 and "node/w1 tainted (recorded by the stand-in" in r.stdout
    r = node.run("kubectl", *ADMIN, "taint", "node", "cp1",
                 "node-role.kubernetes.io/control-plane:NoSchedule-")
    assert r.returncode == 0 and "node/cp1 untainted" in r.stdout
    records = json.loads(node.path("/var/lib/standin/kubectl-records.json").read_text())
    assert records["w1"]["taints"] == [{"key": "dedicated", "value": "db",
                                        "effect": "NoSchedule"}]
    assert records["cp1"]["taints"] == []
    node.run("kubeadm", "reset", "-f")  # forgets them with the rest of the node's state
    assert not node.path("/var/lib/standin/kubectl-records.json").exists()


K3S_SERVER_STEPS = ["node-token", "etcd", "kubeconfig", "kubelet", "node-registration"]
K3S_JOIN_SERVER_STEPS = ["node-token", "etcd-join", "kubeconfig", "kubelet", "node-registration"]
K3S_AGENT_STEPS = ["load-balancer", "tunnel", "kubelet", "node-registration"]
K3S_CASES = [("s1", "server", s) for s in K3S_SERVER_STEPS] + \
            [("s2", "server", s) for s in K3S_JOIN_SERVER_STEPS] + \
            [("a1", "agent", s) for s in K3S_AGENT_STEPS]


@pytest.mark.parametrize("host,role,step", K3S_CASES)
def test_k3s_fault_fails_once_and_the_restart_registers(host, role, step, nodes, k3s_cluster,
                                                        k3s_bundle):
    node = nodes(host, bundle=k3s_bundle)
    place(node, render.render(k3s_cluster, make_secrets()), host)
    node.put("/etc/standin/faults", f"k3s {role} {step}\n")
    r = node.run("k3s", role)
    assert r.returncode == 1 and f'msg="{step}: planned failure (stand-in fault switch' in r.stderr
    assert node.path("/etc/standin/faults").read_text() == ""
    s = json.loads(node.path("/var/lib/rancher/k3s/standin/k3s-state.json").read_text())
    steps = {"s1": K3S_SERVER_STEPS, "s2": K3S_JOIN_SERVER_STEPS, "a1": K3S_AGENT_STEPS}[host]
    assert s["steps"] == steps[:steps.index(step)] and s["failed"] == step
    assert s["registered"] is False
    kubeconfig = [] if role == "server" else [
        "--kubeconfig", "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"]
    node.put("/var/lib/rancher/k3s/agent/kubelet.kubeconfig", "apiVersion: v1\n", 0o600)
    node.put("/etc/rancher/k3s/k3s.yaml", "apiVersion: v1\n", 0o600)
    r = node.run("k3s", "kubectl", *kubeconfig, "get", "node", host, "-o", "name")
    assert r.returncode == 1 and "was refused" in r.stderr  # the unit is not active
    proc, message = run_until_ready(node, role)  # what systemd's Restart= does
    try:
        assert message.startswith(b"READY=1")
        r = node.run("k3s", "kubectl", *kubeconfig, "get", "node", host, "-o", "name")
        assert (r.returncode, r.stdout) == (0, f"node/{host}\n"), r.stderr
        r = node.run("k3s", "kubectl", *kubeconfig, "get", "node", "other", "-o", "name")
        assert r.returncode == 1 and 'nodes "other" not found' in r.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    s = json.loads(node.path("/var/lib/rancher/k3s/standin/k3s-state.json").read_text())
    assert s["steps"] == steps and s["registered"] is True and "failed" not in s
    r = node.run("k3s", "kubectl", *kubeconfig, "get", "node", host, "-o", "name")
    assert r.returncode == 1 and "was refused" in r.stderr  # stopped: nothing answers
