"""`cluster.up` on real VMs: inventories/single.yml (1 control plane + 1 worker) booted by
`lab.up --provider vagrant` from the lab box, reached as the non-root user `vagrant` with sudo.

The VMs run Debian's own kernel (6.1) under QEMU, so what a container lab can only skip is real
here: kernel modules load, swap is managed, vm.* and kernel.* sysctls take, cgroup v2, and
containerd unpacks the bundle's images on a real overlayfs. Every phase of `cluster.up` runs,
through sudo. kubeadm, the kubelet and kubectl are the TEST-ONLY stand-ins (tests/standins):
their phases converge as far as a stand-in can tell, which is not a Kubernetes cluster.
Its own network (10.90.12.0/24, k8slab12) and VM names (vg-single-*), clear of the other labs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provisioner import actions
from provisioner import inventory as inv
from provisioner import preflight
from provisioner.lab import vagrant
from provisioner.state import State
from tests import skip_outside_ci
from tests.conftest import REPO, check_up

pytestmark = pytest.mark.lab
NODES = ("cp1", "w1")


def vm_inventory(name: str, folder: Path) -> Path:
    """inventories/NAME as it is, moved to the VM lab's subnet and bridge, state under folder."""
    text = (REPO / "inventories" / name).read_text()
    text = text.replace("192.168.56.", "10.90.12.").replace("../state/", f"{REPO}/state/")
    anchor, indent = ("    cluster:\n", " " * 6) if "    cluster:\n" in text else ("  vars:\n", " " * 4)
    text = text.replace(anchor, anchor + f"{indent}lab_bridge: k8slab12\n"
                        f"{indent}lab_bridge_address: 10.90.12.1/24\n"
                        f"{indent}state_dir: {folder / 'state'}\n", 1)
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def vm_lab(tmp_path_factory):
    if os.geteuid() != 0:
        skip_outside_ci("the VM lab needs root")
    missing = [t for t in vagrant.TOOLS if not shutil.which(t)]
    if missing:
        skip_outside_ci(f"missing {', '.join(missing)}: run ./bootstrap.sh")
    folder = tmp_path_factory.mktemp("vagrant")
    lab = vagrant.VagrantLab(inv.load(vm_inventory("single.yml", folder)),
                             log=lambda msg: print(msg, flush=True))
    with lab.locked(wait=1800):
        try:
            started = time.monotonic()
            results = lab.up()
            check_up(results)
            print(f"\nVM lab up in {time.monotonic() - started:.0f} s: "
                  + ", ".join(f"{r.name} {r.seconds:.0f} s" for r in results))
            yield lab
        finally:
            lab.down()


@pytest.fixture(scope="module")
def bundle(vm_lab, tmp_path_factory):
    from tests.standins import make_standin_bundle

    return make_standin_bundle(tmp_path_factory.mktemp("vagrant-bundle"), vm_lab.cluster)


def sudo(lab, node: str, command: str) -> tuple[int, str]:
    rc, out, err = lab.run(node, f"sudo -n sh -c '{command}'", timeout=300)
    return rc, out + err


def test_vms_run_their_own_kernel_as_vagrant_with_sudo(vm_lab):
    for name in NODES:
        rc, out, _ = vm_lab.run(name, "id -un; sudo -n id -un; uname -r; "
                                "stat -fc %T /sys/fs/cgroup; hostname")
        user, root, kernel, cgroup, hostname = out.split()
        assert (rc, user, root, cgroup, hostname) == (0, "vagrant", "root", "cgroup2fs", name)
        assert kernel.startswith("6.1.") and kernel.endswith("-amd64"), kernel
    # the host keys came from the consoles, one per VM, and nothing else is trusted
    lines = vm_lab.known_hosts.read_text().split("\n")
    assert sorted(line.split()[0] for line in lines if line) == ["10.90.12.11", "10.90.12.21"]
    # the VMs reach each other on the private network and nothing beyond it
    rc, out, _ = vm_lab.run("cp1", "ip -4 route; timeout 10 bash -c \"</dev/tcp/10.90.12.21/22\" "
                            "&& echo ok")  # (the box has no ping, as Debian's minimal images)
    assert rc == 0 and out.strip().endswith("ok"), out
    assert "default" not in out, out


# Under emulation (no vmx/svm here) every Ansible task costs seconds: `cluster.up` takes about
# 9 minutes on the two VMs, half of it prepare and runtime.
KUBE_PHASES = {"control-plane", "join-workers", "cni", "addons", "node-meta", "kubeconfig"}


def test_up_as_vagrant_prepares_real_kernels(vm_lab, bundle):
    vm_lab.set_clocks()  # no time server in the lab: right before preflight compares clocks
    problems, facts = actions.check(vm_lab.cluster)
    assert [f.cgroup_v2 for f in facts.values()] == [True, True]
    assert not preflight.has_errors(problems), problems
    started = time.monotonic()
    done = {p.title: w for p, w in actions.up(vm_lab.cluster, bundle_dir=str(bundle)) if w}
    print(f"\ncluster.up on 2 VMs: {time.monotonic() - started:.0f} s")
    assert set(done) == {"prepare", "runtime", "binaries", "images"} | KUBE_PHASES, done
    assert set(done["join-workers"]) == {"w1"} and set(done["control-plane"]) == {"cp1"}
    for name in NODES:
        rc, out = sudo(vm_lab, name, "lsmod | cut -d\" \" -f1 | grep -xE \"br_netfilter|overlay\" "
                       "| sort; tail -n +2 /proc/swaps | wc -l; sysctl -n vm.overcommit_memory "
                       "net.bridge.bridge-nf-call-iptables net.ipv4.ip_forward kernel.panic "
                       "fs.inotify.max_user_watches")
        assert rc == 0, out
        assert out.split() == ["br_netfilter", "overlay", "0", "1", "1", "1", "10", "524288"], out
        # containerd on cgroup v2 with the systemd driver, every image unpacked on overlayfs
        rc, out = sudo(vm_lab, name, "systemctl show -p ControlGroup --value containerd; "
                       "ctr -n k8s.io images ls -q | grep -vc ^sha256:; "
                       "ls /var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots "
                       "| wc -l")
        cgroup, count, snapshots = out.split()
        assert cgroup == "/system.slice/containerd.service", out
        assert int(count) == len(done["images"][name]) and int(snapshots) > 0, out
        # the kubelet unit the binaries phase installed runs under systemd, with its kubeconfig
        rc, out = sudo(vm_lab, name, "systemctl is-active kubelet; systemctl is-enabled kubelet; "
                       "stat -c %a /etc/kubernetes/kubelet.conf")
        assert out.split() == ["active", "enabled", "600"], out
        rc, out = sudo(vm_lab, name, "journalctl --no-pager _COMM=sshd | grep -c "
                       "\"Accepted publickey for vagrant\"; journalctl --no-pager _COMM=sshd "
                       "| grep -c \"Accepted publickey for root\" || true")
        assert int(out.split()[0]) > 0 and out.split()[1] == "0", out
    assert State(vm_lab.cluster).kubeconfig.stat().st_mode & 0o777 == 0o600


def test_rerun_is_a_no_op(vm_lab, bundle):
    vm_lab.set_clocks()  # no time server in the lab: right before preflight compares clocks
    started = time.monotonic()
    work = {p.title: w for p, w in actions.up(vm_lab.cluster, bundle_dir=str(bundle)) if w}
    print(f"\nno-op rerun on 2 VMs: {time.monotonic() - started:.0f} s")
    assert work == {}


def test_down_leaves_nothing(vm_lab):
    lab = vm_lab
    lab.down()
    assert not lab.runtime.exists() and not lab.dotfiles.exists()
    if subprocess.run(["virsh", "-c", vagrant.URI, "uri"], capture_output=True).returncode == 0:
        doms = vagrant._virsh("list", "--all", "--name").stdout.split()
        nets = vagrant._virsh("net-list", "--all", "--name").stdout.split()
        assert not [d for d in doms if d.startswith("vg-single-")]
        assert not {lab.network, f"{lab.network}-m"} & set(nets)
        assert not [v for v in vagrant.volumes() if v.startswith("vg-single-")]
    else:  # the lab started libvirt, so it stopped it, and its leftovers with it
        assert not vagrant.DAEMONS_DIR.exists()
        assert vagrant.libvirt_chains() == []
    addresses = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert "10.90.12.1/24" not in addresses and "172.30.12.1/24" not in addresses
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(vagrant.VAGRANT_DIR) not in mounts
