"""`invoke lab.box`: the libvirt Vagrant box of the VM lab, built offline from the lab's base.

The box is the container lab's debootstrap base (base.py) plus what a VM needs to boot and what
a Vagrant box has: a kernel and initramfs, udev, sudo, and the user `vagrant` with the lab's
SSH key and password-less sudo. It has no partition table and no boot loader: the root file
system is one ext4 image (`mkfs.ext4 -d`) that libvirt boots directly with the box's kernel
(`root=/dev/vda`). Each VM generates its one ssh host key (ed25519) at first boot and prints
its public half on the serial console, where the host reads it (vagrant.py): host keys are
never taken on first use over the network.

Network: networkd asks DHCP on the first NIC (vagrant-libvirt's management network, isolated);
Vagrant configures the private network on the second NIC itself (networkd files).

Cached as CACHE_DIR/box/provisioner-lab.box with a stamp of its inputs (base, packages, the
files below, the key): a rebuild happens only when one of them changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from . import CACHE_DIR, base, packages
from .procs import flocked

BOX_NAME = "provisioner/bookworm-lab"
BOX_DIR = CACHE_DIR / "box"
BOX_FILE = BOX_DIR / "provisioner-lab.box"
STAMP = BOX_DIR / "stamp"
DEBS_DIR = CACHE_DIR / "debs-box"
BOX_PACKAGES = ("linux-image-amd64", "initramfs-tools", "udev", "sudo", "procps")
# Recommends of the kernel left out: apparmor's profile compilation holds the boot for minutes
# under emulation (the container lab's nodes have none either)
LEFT_OUT = ("apparmor",)
DISK_GB = 8
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
HOST_KEY_TAG = "provisioner-host-key:"  # prefix of the console line carrying the host key

HOST_KEY_UNIT = f"""\
[Unit]
Description=ssh host key (ed25519, made at first boot) and its public half on the console
Before=ssh.service
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'test -e /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -C "" -f /etc/ssh/ssh_host_ed25519_key; echo "{HOST_KEY_TAG} $(cat /etc/ssh/ssh_host_ed25519_key.pub)" > /dev/ttyS0'
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""

# (path in the box, content, mode)
FILES = (
    ("etc/systemd/system/provisioner-host-key.service", HOST_KEY_UNIT, 0o644),
    ("etc/systemd/network/10-eth0.network",
     "# vagrant-libvirt's management network (isolated): its DHCP lease tells Vagrant the "
     "address\n[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n"
     "IPv6AcceptRA=no\n\n[DHCPv4]\nClientIdentifier=mac\nUseRoutes=no\nUseDNS=no\n", 0o644),
    ("etc/ssh/sshd_config.d/lab.conf",
     "HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\n", 0o644),
    ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
    ("etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n", 0o644),
    ("etc/sudoers.d/vagrant", "vagrant ALL=(ALL) NOPASSWD:ALL\n", 0o440),
    ("etc/modules-load.d/lab.conf", "", 0o644),
)
ENABLED = (
    ("multi-user.target.wants/provisioner-host-key.service", "/etc/systemd/system/provisioner-host-key.service"),
    ("multi-user.target.wants/systemd-networkd.service", "/lib/systemd/system/systemd-networkd.service"),
    ("sockets.target.wants/systemd-networkd.socket", "/lib/systemd/system/systemd-networkd.socket"),
    ("multi-user.target.wants/ssh.service", "/lib/systemd/system/ssh.service"),
)

BOX_VAGRANTFILE = f"""\
# The provisioner's lab box: direct kernel boot of a root file system without partitions.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(__dir__, "vmlinuz")
    lv.initrd = File.join(__dir__, "initrd.img")
    lv.cmd_line = "{CMDLINE}"
    lv.disk_bus = "virtio"
  end
end
"""


def wanted_stamp(public_key: str) -> str:
    """Everything the box is made of: a change of any of it rebuilds the box."""
    inputs = {"base": (base.BASE_DIR / base.STAMP).read_text(), "packages": BOX_PACKAGES,
              "left_out": LEFT_OUT,
              "files": FILES, "enabled": ENABLED, "vagrantfile": BOX_VAGRANTFILE,
              "cmdline": CMDLINE, "disk": DISK_GB, "key": public_key.strip()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest() + "\n"


def ensure_box(public_key: str, log=print) -> tuple[Path, bool]:
    """The cached box file, built first when missing or made from other inputs; (path, built)."""
    base.ensure_base(log)
    wanted = wanted_stamp(public_key)
    if BOX_FILE.exists() and _read(STAMP) == wanted:
        return BOX_FILE, False
    with flocked(CACHE_DIR / ".box.lock"):
        if BOX_FILE.exists() and _read(STAMP) == wanted:
            return BOX_FILE, False
        for tool in ("mkfs.ext4", "qemu-img", "chroot"):
            if not shutil.which(tool):
                raise UserError(f"{tool} is missing on this host: run ./bootstrap.sh (it "
                                "installs qemu-utils and the VM lab's packages)")
        started = time.monotonic()
        log("lab: building the Vagrant box from the lab base (once per change of its inputs)")
        debs = packages.build_repo(DEBS_DIR, base.BASE_DIR / "var/lib/dpkg/status",
                                   packages=BOX_PACKAGES, log=log)
        BOX_DIR.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="build.", dir=BOX_DIR))
        try:
            _build(work, debs, public_key)
            STAMP.unlink(missing_ok=True)
            (work / "provisioner-lab.box").rename(BOX_FILE)
            STAMP.write_text(wanted)
        finally:
            _unmount_all(work / "root")
            shutil.rmtree(work, ignore_errors=True)
        log(f"lab: box built in {time.monotonic() - started:.0f} s "
            f"({BOX_FILE.stat().st_size / 2**20:.0f} MB) at {BOX_FILE}")
    return BOX_FILE, True


def _build(work: Path, debs: Path, public_key: str) -> None:
    root = work / "root"
    _run(["cp", "-a", f"{base.BASE_DIR}/.", str(root)])
    (root / base.STAMP).unlink(missing_ok=True)
    _install_debs(root, sorted(d for d in debs.glob("*.deb")
                               if d.name.split("_")[0] not in LEFT_OUT))
    for path, text, mode in FILES:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.write_text(text)
        os.chmod(target, mode)
    for link, unit in ENABLED:
        target = root / "etc/systemd/system" / link
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.symlink_to(unit)
    _add_vagrant_user(root, public_key)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")  # systemd makes one at first boot
    (root / "etc/hostname").write_text("localhost\n")
    box = work / "box"
    box.mkdir()
    kernel = sorted((root / "boot").glob("vmlinuz-*"))
    initrd = sorted((root / "boot").glob("initrd.img-*"))
    if not kernel or not initrd:
        raise UserError(f"the box build found no kernel or initramfs in {root}/boot")
    shutil.copy(kernel[-1], box / "vmlinuz")
    shutil.copy(initrd[-1], box / "initrd.img")
    raw = work / "root.img"
    with open(raw, "wb") as f:
        f.truncate(DISK_GB * 2**30)  # sparse
    _run(["mkfs.ext4", "-q", "-L", "root", "-d", str(root), str(raw)])
    _run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(box / "box.img")])
    raw.unlink()
    (box / "metadata.json").write_text(json.dumps(
        {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GB}))
    (box / "Vagrantfile").write_text(BOX_VAGRANTFILE)
    _run(["tar", "-C", str(box), "-cf", str(work / "provisioner-lab.box"),
          "metadata.json", "Vagrantfile", "vmlinuz", "initrd.img", "box.img"])


def _install_debs(root: Path, debs: list[Path]) -> None:
    """dpkg inside the tree (the kernel's hooks build the initramfs there: /proc, /sys, /dev
    are bound in for the duration)."""
    if not debs:
        raise UserError(f"no packages for the box in {DEBS_DIR}")
    (root / "tmp/debs").mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy(deb, root / "tmp/debs" / deb.name)
    for sub in ("proc", "sys", "dev"):
        _run(["mount", "--bind", f"/{sub}", str(root / sub)])
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        done = subprocess.run(["chroot", str(root), "sh", "-c", "dpkg -i /tmp/debs/*.deb"],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise UserError(f"installing the box packages failed (exit {done.returncode}):\n{tail}")
    finally:
        _unmount_all(root)
    shutil.rmtree(root / "tmp/debs")


def _add_vagrant_user(root: Path, public_key: str) -> None:
    _run(["chroot", str(root), "useradd", "-m", "-s", "/bin/bash", "-p", "*", "vagrant"])
    fields = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                  if line.startswith("vagrant:"))
    uid, gid, home = int(fields[2]), int(fields[3]), fields[5]
    ssh = root / home.lstrip("/") / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text(public_key.strip() + "\n")
    os.chmod(ssh / "authorized_keys", 0o600)
    for path in (ssh, ssh / "authorized_keys"):
        os.chown(path, uid, gid)


def _unmount_all(root: Path) -> None:
    prefix = str(root)
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in reversed([p for p in points if p == prefix or p.startswith(prefix + "/")]):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
