"""containerd and runc from the bundle, on booted lab nodes (tests/data/lab-runtime.yml: one
control plane and one worker, Kubernetes 1.36, bridge k8slab7).

Real here: containerd 2.1.9 (Debian sid's build of the upstream release) and runc from the
test bundle, pushed by the runtime phase with our unit and config version 3, running under
systemd on the nodes. Its CRI plugin is asked through its own socket (tests/cri.py speaks gRPC
with the standard library, as crictl would): the sandbox image it tries to fetch and the
registry mirror it tries to pull through are read from its own log. Only prepare and runtime
run: the kube phases have nothing to do with the runtime.

The lab's nodes share this machine's cgroup v1 hierarchy: the inventory says
allow_cgroup_v1, and preflight must still warn about it on every run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

from provisioner import actions, phases as ph
from tests.conftest import REPO, booted_lab

pytestmark = pytest.mark.lab
INVENTORY = REPO / "tests/data/lab-runtime.yml"
NODES = ("rt1", "rt2")
PHASES = (ph.PREPARE, ph.RUNTIME)
CRI_CLIENT = (REPO / "tests/cri.py").read_text()
CONTAINERD = "2.1.9"  # Debian sid's containerd in the stand-in bundle (tests/standins)


class Warnings:
    """Progress stand-in that keeps what the run warned about."""

    def __init__(self):
        self.lines: list[str] = []

    def warn(self, text):
        self.lines.append(text)

    def __getattr__(self, _name):
        return lambda *a, **k: None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with booted_lab(INVENTORY, tmp_path_factory.mktemp("runtime-state")) as booted:
        yield booted


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, lab):
    from tests.standins import make_standin_bundle

    return str(make_standin_bundle(tmp_path_factory.mktemp("bundle"), lab.cluster))


def up(cluster, bundle, progress=None):
    done = actions.up(cluster, bundle_dir=bundle, phases=PHASES, progress=progress)
    return {p.title: w for p, w in done if w}


@pytest.fixture(scope="module")
def first(lab, bundle):
    warned = Warnings()
    return up(lab.cluster, bundle, warned), warned.lines


def sh(lab, node, cmd):
    rc, out, err = lab.run(node, cmd)
    assert rc == 0, f"{node}: {cmd}: rc={rc} {err.strip()[-500:]}"
    return out


def invocation(lab):
    """systemd's InvocationID of containerd on each node: a restart changes it."""
    return {n: sh(lab, n, "systemctl show -p InvocationID --value containerd").strip()
            for n in NODES}


# -- the CRI API through containerd's socket (what crictl would send) -------------------------

def field(number: int, value: bytes | str | int) -> bytes:
    """One protobuf field: a varint, or length-delimited bytes / string / message."""
    def varint(n):
        out = b""
        while n >= 0x80:
            out += bytes([n & 0x7F | 0x80])
            n >>= 7
        return out + bytes([n])
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def cri(lab, node, method: str, request: bytes = b"") -> dict:
    client = lab.connect(node)
    try:
        stdin, stdout, stderr = client.exec_command(
            f"python3 - {shlex.quote(method)} {request.hex()}", timeout=60)
        stdin.write(CRI_CLIENT)
        stdin.channel.shutdown_write()
        out, err = stdout.read().decode(), stderr.read().decode()
    finally:
        client.close()
    assert out.strip(), f"{node}: {method}: {err[-500:]}"
    return json.loads(out)


def journal_since(lab, node, mark: str) -> str:
    return sh(lab, node, f"journalctl -u containerd -o cat --no-pager --since @{mark}")


def now(lab, node) -> str:
    return sh(lab, node, "date +%s.%N").strip()


def sandbox_image_tried(lab, node, name: str) -> str:
    """RunPodSandbox of a host-network pod (no CNI needed): containerd fetches its sandbox
    image first, which fails offline and names it in its log."""
    mark = now(lab, node)
    meta = field(1, name) + field(2, f"uid-{name}") + field(3, "default")
    host_network = field(8, field(2, field(1, field(1, 2))))  # linux.security_context.namespace_options.network = NODE
    cri(lab, node, "/runtime.v1.RuntimeService/RunPodSandbox",
        field(1, field(1, meta) + host_network))
    log = journal_since(lab, node, mark)
    found = re.findall(r'failed to get sandbox image \\"([^"\\]+)\\"', log)
    assert found, log[-2000:]
    return found[-1]


def pull_went_to(lab, node, image: str) -> str:
    """PullImage through the CRI: the host containerd asked first, from its log."""
    mark = now(lab, node)
    cri(lab, node, "/runtime.v1.ImageService/PullImage", field(1, field(1, image)))
    log = journal_since(lab, node, mark)
    found = re.findall(r'Head \\"https://([^/"\\]+)/v2/', log)
    assert found, log[-2000:]
    return found[0]


# -- the tests --------------------------------------------------------------------------------

def test_first_run_places_containerd_and_runc_from_the_bundle(first):
    did, _ = first
    for node in NODES:
        writes = did["runtime"][node]
        for path in ("/usr/local/bin/containerd", "/usr/local/bin/containerd-shim-runc-v2",
                     "/usr/local/bin/ctr", "/usr/local/sbin/runc",
                     "/etc/systemd/system/containerd.service", "/etc/containerd/config.toml",
                     "/etc/containerd/certs.d/docker.io/hosts.toml"):
            assert f"write {path} (new)" in writes, writes


def test_preflight_warns_about_cgroup_v1_on_every_node(lab, first):
    _, warned = first
    assert sh(lab, "rt1", "stat -fc %T /sys/fs/cgroup").strip() != "cgroup2fs"
    for node in NODES:
        mine = [w for w in warned if f"{node}: cgroup: cgroup v1" in w]
        assert mine and "allow_cgroup_v1" in mine[0], warned


def test_containerd_2_runs_from_the_bundle_under_our_unit(lab, first):
    for node in NODES:
        version = sh(lab, node, "ctr version")
        server = version.split("Server:", 1)[1]
        assert re.search(rf"Version:\s+v?{re.escape(CONTAINERD)}\b", server), version
        unit = sh(lab, node, "systemctl show -p FragmentPath -p ExecStart -p Delegate "
                  "-p KillMode containerd")
        assert "FragmentPath=/etc/systemd/system/containerd.service" in unit
        assert "path=/usr/local/bin/containerd" in unit
        assert "Delegate=yes" in unit and "KillMode=process" in unit
        assert sh(lab, node, "command -v runc").strip() == "/usr/local/sbin/runc"
        assert "runc version 1.1" in sh(lab, node, "runc --version")
        rc, _, _ = lab.run(node, "dpkg -s containerd")
        assert rc != 0, "the OS package must not be installed with containerd_source: bundle"


def test_config_v3_is_read_without_errors_or_deprecations(lab, first):
    for node in NODES:
        rc, plugins, err = lab.run(node, "ctr plugins ls")
        assert rc == 0
        assert "DEPRECATION" not in err, err  # the daemon reports deprecated config keys
        rows = {tuple(line.split()[:2]): line.split()[-1] for line in plugins.splitlines()[1:]}
        for plugin in (("io.containerd.cri.v1", "images"), ("io.containerd.cri.v1", "runtime"),
                       ("io.containerd.grpc.v1", "cri")):
            assert rows.get(plugin) == "ok", plugins
        current = invocation(lab)[node]
        log = sh(lab, node, f"journalctl -o cat --no-pager _SYSTEMD_INVOCATION_ID={current}")
        bad = [line for line in log.splitlines() if re.search(r"level=(error|fatal)", line)
               and "failed to load cni during init" not in line]  # no CNI config before the cni phase
        assert not bad, bad
        assert "containerd successfully booted" in log
        # the CRI plugin's own view (crictl info): runtime config from the v3 sections
        status = cri(lab, node, "/runtime.v1.RuntimeService/Status", field(1, 1))
        info = bytes.fromhex(status["response"]).decode("utf-8", "replace")
        assert '"SystemdCgroup":true' in info and '"binDirs":["/opt/cni/bin"]' in info
        assert "ContainerdHasDeprecationWarnings" not in info


def test_sandbox_image_and_registry_mirror_take_effect(lab, first):
    c = lab.cluster
    for node in NODES:
        assert sandbox_image_tried(lab, node, f"probe-{node}") == c.sandbox_image
        assert pull_went_to(lab, node, "docker.io/library/busybox:1.36") == "mirror-a.lab.test"


def test_rerun_changes_and_restarts_nothing(lab, bundle, first):
    before = invocation(lab)
    assert up(lab.cluster, bundle) == {}
    assert invocation(lab) == before


def test_editing_the_sandbox_image_restarts_containerd(lab, bundle, first):
    before = invocation(lab)
    cluster = dataclasses.replace(lab.cluster, sandbox_image="registry.k8s.io/pause:3.10.1")
    did = up(cluster, bundle)
    assert did == {"runtime": {n: ["write /etc/containerd/config.toml (changed)"]
                               for n in NODES}}
    after = invocation(lab)
    assert all(after[n] != before[n] for n in NODES), (before, after)
    for node in NODES:
        assert sandbox_image_tried(lab, node, f"edited-{node}") == "registry.k8s.io/pause:3.10.1"
    assert up(cluster, bundle) == {}


def test_editing_a_mirror_restarts_nothing(lab, bundle, first):
    cluster = dataclasses.replace(lab.cluster, sandbox_image="registry.k8s.io/pause:3.10.1",
                                  registry_mirrors={"docker.io": ["https://mirror-b.lab.test"]})
    up(cluster, bundle)  # the sandbox image as the test before left it (no-op if it ran)
    before = invocation(lab)
    cluster = dataclasses.replace(cluster, registry_mirrors={
        "docker.io": ["https://mirror-c.lab.test"]})
    did = up(cluster, bundle)
    assert did == {"runtime": {n: ["write /etc/containerd/certs.d/docker.io/hosts.toml (changed)"]
                               for n in NODES}}
    assert invocation(lab) == before
    for node in NODES:  # read at the next pull, without a restart
        assert pull_went_to(lab, node, "docker.io/library/busybox:1.36") == "mirror-c.lab.test"


def test_the_os_package_is_refused_before_any_change_when_too_old(lab, bundle, first):
    """containerd_source os on Debian 12: the package apt would install (1.6) is older than
    1.36 needs; nothing is changed, and the error says what to do."""
    before = invocation(lab)
    cluster = dataclasses.replace(lab.cluster, containerd_source="os")
    with pytest.raises(actions.UserError) as refused:
        up(cluster, bundle)
    text = str(refused.value)
    for node in NODES:
        assert re.search(rf"{node}: packages: containerd 1\.6\.\S+ from this host's package "
                         r"sources is older than 2\.0\.0", text), text
    assert "containerd_source: bundle" in text and "nothing was changed" in text
    assert invocation(lab) == before
    assert sh(lab, "rt1", "command -v containerd").strip() == "/usr/local/bin/containerd"


def test_the_kubelet_stand_in_refuses_this_cgroup_v1_node_unless_told(lab, bundle, first):
    """What allow_cgroup_v1 is for: the kubelet (stand-in, checking like the real one with
    statfs) of 1.36 on a lab node, with and without the rendered failCgroupV1: false."""
    from provisioner import bundle as bundles

    kubelet = Path(bundle) / bundles.folder_name(lab.cluster) / "kubelet"
    client = lab.connect("rt1")
    try:
        sftp = client.open_sftp()
        sftp.put(str(kubelet), "/tmp/standin-kubelet")
        for name, extra in (("default", ""), ("allowed", "failCgroupV1: false\n")):
            with sftp.open(f"/tmp/kubelet-{name}.yaml", "w") as f:
                f.write("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                        "cgroupDriver: systemd\ncontainerRuntimeEndpoint: "
                        "unix:///run/containerd/containerd.sock\n" + extra)
        sftp.close()
    finally:
        client.close()
    rc, out, err = lab.run("rt1", "python3 /tmp/standin-kubelet --config=/tmp/kubelet-default.yaml")
    assert rc == 1 and "kubelet is configured to not run on a host using cgroup v1" in err, err
    rc, out, err = lab.run("rt1", "timeout 5 python3 /tmp/standin-kubelet "
                           "--config=/tmp/kubelet-allowed.yaml")
    assert rc == 124 and "is valid; sleeping" in out, (rc, out, err)
