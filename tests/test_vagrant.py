"""The VM lab's host-side decisions, without booting anything (tests/test_vagrant_lab.py boots)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from provisioner import inventory as inv
from provisioner.errors import UserError
from provisioner.lab import box, vagrant

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, kvm_dev, expected", [
    ("fpu vme sse4_2 vmx ept", True, True),       # Intel VT-x
    ("fpu vme sse4_2 svm npt", True, True),       # AMD-V
    ("fpu vme sse4_2 hypervisor", True, False),   # a nested /dev/kvm (kvm_pvm) without vmx/svm
    ("fpu vme sse4_2 vmx", False, False),         # no /dev/kvm at all
])
def test_kvm_only_with_hardware_virtualisation(monkeypatch, flags, kvm_dev, expected):
    monkeypatch.setattr(vagrant.Path, "exists", lambda self: kvm_dev if str(self) == "/dev/kvm"
                        else os.path.exists(self))
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert vagrant.kvm_usable(cpuinfo) is expected


def test_the_wrapper_caps_only_the_tcg_accelerator(tmp_path):
    script = tmp_path / "qemu"
    script.write_text(vagrant.wrapper_script(qemu="printf '<%s>'", tb_size_mb=128))
    script.chmod(0o755)
    args = ["-name", "guest=a b", "-accel", "tcg", "-cpu", "Nehalem", "tcg", "-accel", "kvm", ""]
    out = subprocess.run([str(script), *args], capture_output=True, text=True, check=True).stdout
    assert out == ("<-name><guest=a b><-accel><tcg,tb-size=128><-cpu><Nehalem><tcg><-accel>"
                   "<kvm><>")


@pytest.mark.parametrize("address, expected", [
    ("10.90.12.1/24", "172.30.12.0/24"),
    ("192.168.56.1/24", "172.30.56.0/24"),
])
def test_management_network_follows_the_lab_subnet(address, expected):
    assert vagrant.management_network(address) == expected


def test_host_key_is_read_from_the_console_last_one_wins():
    key1, key2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA1", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2"
    console = (f"[  OK  ] Started ssh\r\n{box.HOST_KEY_TAG} {key1} \r\nlogin: "
               f"\n{box.HOST_KEY_TAG} {key2}\r\n")
    assert vagrant.host_key_from_console(console) == key2
    assert vagrant.host_key_from_console("ssh-ed25519 AAAA (not tagged)\n") is None
    assert vagrant.host_key_from_console(f"{box.HOST_KEY_TAG} ssh-rsa AAAAB3\n") is None


def lab_for(tmp_path, text: str) -> vagrant.VagrantLab:
    path = tmp_path / "inv.yml"
    path.write_text(text)
    return vagrant.VagrantLab(inv.load(path), log=lambda m: None)


def test_settings_follow_the_inventory(tmp_path):
    lab = lab_for(tmp_path, (REPO / "inventories/single.yml").read_text().replace(
        "192.168.56.", "10.90.12."))
    s = lab.settings("tcg")
    assert s["network"] == "lab010090012" and s["host_ip"] == "10.90.12.1"
    assert s["netmask"] == "255.255.255.0" and s["prefix"] == "vg-single-"
    assert s["management_network"] == "lab010090012-m"
    assert s["management_address"] == "172.30.12.0/24"
    assert s["driver"] == "qemu" and s["emulator"] == str(vagrant.WRAPPER)
    assert s["apt_source"] == "deb [trusted=yes] http://10.90.12.1:8090 ./"
    assert lab.settings("kvm")["driver"] == "kvm" and lab.settings("kvm")["emulator"] is None
    assert lab.domain("cp1") == "vg-single-cp1"
    env = lab.env("tcg")
    assert json.loads(env["PROVISIONER_LAB"]) == s
    assert env["VAGRANT_HOME"] == str(vagrant.VAGRANT_HOME)


def test_a_host_outside_the_lab_network_is_refused(tmp_path):
    text = (REPO / "inventories/single.yml").read_text().replace(
        "cni: flannel", "cni: flannel\n    lab_bridge: k8slab12\n    lab_bridge_address: 10.90.12.1/24")
    with pytest.raises(UserError, match=r"cp1: ansible_host 192.168.56.11 must be an address "
                       r"in 10.90.12.0/24"):
        lab_for(tmp_path, text).check()


def test_the_box_stamp_changes_with_its_inputs(monkeypatch, tmp_path):
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (base_dir / ".provisioner-base").write_text("bookworm a,b\n")
    monkeypatch.setattr(box.base, "BASE_DIR", base_dir)
    one = box.wanted_stamp("ssh-ed25519 AAAA key1")
    assert box.wanted_stamp("ssh-ed25519 AAAA key1\n") == one  # same key, file newline or not
    assert box.wanted_stamp("ssh-ed25519 AAAA key2") != one
    monkeypatch.setattr(box, "BOX_PACKAGES", box.BOX_PACKAGES + ("vim",))
    assert box.wanted_stamp("ssh-ed25519 AAAA key1") != one
    monkeypatch.undo()
    monkeypatch.setattr(box.base, "BASE_DIR", base_dir)
    (base_dir / ".provisioner-base").write_text("bookworm a,b,c\n")
    assert box.wanted_stamp("ssh-ed25519 AAAA key1") != one


def test_examples_reach_nodes_as_vagrant_with_sudo_and_the_lab_key():
    for path in sorted((REPO / "inventories").glob("*.yml")):
        if path.name == "lab.yml":  # the built-in lab logs in as root
            continue
        cluster = inv.load(path)
        for n in cluster.nodes:
            assert (n.ssh_user, Path(n.ssh_key).resolve(), n.become) == (
                "vagrant", REPO / "state/lab/ssh/id_ed25519", True), (path.name, n.name)


def test_an_unknown_provider_is_refused():
    from provisioner.tasks.lab import _lab

    with pytest.raises(UserError, match=r"--provider docker: unknown \(use nspawn or vagrant\)"):
        _lab(str(REPO / "inventories/single.yml"), "docker")
    assert isinstance(_lab(str(REPO / "inventories/single.yml"), "vagrant"), vagrant.VagrantLab)
