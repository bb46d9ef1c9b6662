"""`lab.up --provider vagrant`: one libvirt VM per inventory host, booted from the lab box.

What it does on the host, and `lab.down` undoes:

    libvirtd, virtlogd     started by hand when not running (PID 1 here need not be systemd);
                           stopped again by lab.down when no VM of any lab is left
    /dev/kvm               group kvm, mode 0660 (else libvirt re-probes QEMU on every call)
    acceleration           KVM when the CPU offers vmx/svm, else QEMU's emulator (TCG, CPU model
                           Nehalem) through a wrapper capping its translation cache
                           (`-accel tcg,tb-size=256`: the 1 GiB default becomes resident)
    pool provisioner-lab   libvirt storage pool in CACHE_DIR/vagrant/pool (box volume, disks)
    networks               <lab_bridge>: the inventory's subnet, isolated (no forwarding, no
                           DHCP), the host on lab_bridge_address; <lab_bridge>-m: vagrant-
                           libvirt's management network (isolated, DHCP), 172.30.<c>.0/24
    package source         the container lab's flat repository, served on the host's address
    iptables               libvirt's LIBVIRT_* chains, removed once libvirtd is stopped

VMs are named vg-<cluster>-<host>. Their ssh host keys are read from each VM's serial console
(the box prints it at boot) and written to the cluster's known_hosts before the first SSH
connection: nothing is trusted on first use.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

from ..errors import UserError
from ..model import Cluster
from ..state import State
from . import CACHE_DIR, RUNTIME_ROOT, base, box, packages, procs
from .nspawn import Lab, NodeResult, lab_network, ssh_connect, ssh_run

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = CACHE_DIR / "vagrant"
VAGRANT_HOME = VAGRANT_DIR / "home"
POOL = "provisioner-lab"
POOL_DIR = VAGRANT_DIR / "pool"
WRAPPER = VAGRANT_DIR / "qemu-tcg"
QEMU = "/usr/bin/qemu-system-x86_64"
TB_SIZE_MB = 256
URI = "qemu:///system"
DAEMONS_DIR = RUNTIME_ROOT / "libvirt"  # pid files of the daemons the lab started
TOOLS = ("vagrant", "virsh", "libvirtd", "virtlogd", "qemu-img", "mkfs.ext4", "iptables")
INSTALL_HINT = ("run ./bootstrap.sh (the VM lab needs vagrant vagrant-libvirt "
                "libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base "
                "iptables)")


def wrapper_script(qemu: str = QEMU, tb_size_mb: int = TB_SIZE_MB) -> str:
    """The emulator libvirt runs for TCG VMs: QEMU with every argument kept but the cache size."""
    return f"""#!/bin/sh
# QEMU with a capped TCG translation cache: `-accel tcg` becomes `-accel tcg,tb-size={tb_size_mb}`
# (written by the provisioner's VM lab; vagrant-libvirt has no setting for it)
n=$#; prev=
while [ "$n" -gt 0 ]; do
  a=$1; shift; n=$((n - 1))
  if [ "$prev" = "-accel" ] && [ "$a" = "tcg" ]; then a="tcg,tb-size={tb_size_mb}"; fi
  set -- "$@" "$a"; prev=$a
done
exec {qemu} "$@"
"""


def kvm_usable(cpuinfo: str) -> bool:
    """KVM runs a stock guest kernel only with hardware virtualisation (vmx/svm): a /dev/kvm
    without it (e.g. a nested kvm_pvm device) hangs a Debian kernel."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    return bool(flags & {"vmx", "svm"}) and Path("/dev/kvm").exists()


def management_network(lab_address: str) -> str:
    """vagrant-libvirt's management subnet for a lab on a.b.c.d/n: 172.30.c.0/24 (isolated)."""
    third = str(ipaddress.ip_interface(lab_address).ip).split(".")[2]
    return f"172.30.{third}.0/24"


def host_key_from_console(text: str) -> str | None:
    """The last host key the box printed on its console ("ssh-ed25519 AAAA..."), or None."""
    found = re.findall(re.escape(box.HOST_KEY_TAG) + r"\s+(ssh-ed25519\s+[A-Za-z0-9+/=]+)", text)
    return found[-1] if found else None


class VagrantLab:
    """One VM lab (one inventory) on this host."""

    def __init__(self, cluster: Cluster, log=print):
        self.cluster, self.log = cluster, log
        self.name = cluster.cluster_name
        self.runtime = RUNTIME_ROOT / f"vagrant-{self.name}"
        self.dotfiles = VAGRANT_DIR / "machines" / self.name
        self.state = State(cluster)
        self.known_hosts = self.state.known_hosts
        keys = {n.ssh_key for n in cluster.nodes if n.ssh_key}
        self.key_file = Path(sorted(keys)[0] if keys else self.state.dir / "ssh/id_ed25519")
        self.network, self.network_address = lab_network(cluster)
        self.prefix = f"vg-{self.name}-"

    # -- checks ----------------------------------------------------------------------------------
    locked = Lab.locked  # one lock per cluster name, whichever provider
    ensure_key = Lab.ensure_key  # the same key handling: created once, 0600

    def check(self) -> None:
        Lab(self.cluster, self.log).check_network()
        if os.geteuid() != 0:
            raise UserError("the VM lab needs root (it starts libvirtd, defines networks and "
                            "a storage pool): run it as root")
        missing = [t for t in TOOLS if not shutil.which(t)]
        if not Path(QEMU).exists():
            missing.append(QEMU)
        if missing:
            raise UserError(f"missing on this host: {', '.join(missing)}; {INSTALL_HINT}")

    @property
    def host_ip(self) -> str:
        return str(ipaddress.ip_interface(self.network_address).ip)

    def domain(self, node: str) -> str:
        return self.prefix + node

    def settings(self, accel: str) -> dict:
        """What the Vagrantfile reads from $PROVISIONER_LAB for this lab."""
        net = ipaddress.ip_interface(self.network_address).network
        return {
            "box": box.BOX_NAME, "ssh_key": str(self.key_file), "prefix": self.prefix,
            "network": self.network, "host_ip": self.host_ip, "netmask": str(net.netmask),
            "management_network": f"{self.network}-m",
            "management_address": management_network(self.network_address),
            "pool": POOL, "driver": "kvm" if accel == "kvm" else "qemu",
            "emulator": str(WRAPPER) if accel == "tcg" else None,
            "console_dir": str(self.runtime),
            # the guest's TSC, calibrated on a starved emulated CPU, ran seconds slow per minute;
            # QEMU's HPET follows the host clock
            "cmdline": box.CMDLINE + (" clocksource=hpet" if accel == "tcg" else ""),
            "apt_source": f"deb [trusted=yes] http://{self.host_ip}:{packages.PORT} ./",
        }

    def env(self, accel: str = "tcg") -> dict:
        return dict(os.environ, VAGRANT_HOME=str(VAGRANT_HOME),
                    VAGRANT_DOTFILE_PATH=str(self.dotfiles),
                    VAGRANT_DEFAULT_PROVIDER="libvirt", VAGRANT_CHECKPOINT_DISABLE="1",
                    VAGRANT_DISABLE_VERSION_CHECK="1", LIBVIRT_DEFAULT_URI=URI,
                    INVENTORY=str(Path(self.cluster.source).resolve()),
                    PROVISIONER_LAB=json.dumps(self.settings(accel)))

    # -- up --------------------------------------------------------------------------------------
    def up(self) -> list[NodeResult]:
        self.check()
        self.down(quiet=True)
        self.runtime.mkdir(parents=True, exist_ok=True)
        self.ensure_key()
        box_file, built = box.ensure_box(self.public_key(), self.log)
        repo = packages.build_repo(packages.DEBS_DIR, base.BASE_DIR / "var/lib/dpkg/status",
                                   log=self.log)
        self.add_box(box_file, built)
        accel = self.prepare_host()
        started = time.monotonic()
        self.log(f"lab: vagrant up of {len(self.cluster.nodes)} VM(s) ({accel})")
        done = self._vagrant_up(accel)
        if done.returncode != 0:  # a VM too slow for one of Vagrant's checks: once more
            self.log("lab: vagrant up failed; once more (the log is kept in vagrant-up.log)")
            done = self._vagrant_up(accel, "--provision")
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-20:])
            raise UserError(f"vagrant up failed (exit {done.returncode}); last lines:\n{tail}\n"
                            f"(whole log: {self.runtime}/vagrant-up.log; `invoke lab.down "
                            "--provider vagrant` removes what was made)")
        packages.serve(repo, self.host_ip, self.runtime)
        self._write_known_hosts()
        results = [self._wait(n, started) for n in self.cluster.nodes]
        self.set_clocks([r.name for r in results if r.state in ("running", "degraded")])
        return results

    def set_clocks(self, names: list[str] | None = None) -> None:
        """Set the VMs' clocks from the host's, all at once: the lab has no time server (nspawn
        nodes share the host's clock), and preflight refuses a clock over 2 s off. Measured on 9
        loaded emulated VMs: within 0.3 s of the host 13 minutes after."""
        names = names if names is not None else [n.name for n in self.cluster.nodes]
        if names:
            with ThreadPoolExecutor(len(names)) as pool:
                list(pool.map(self._set_clock, names))

    def _set_clock(self, name: str) -> None:
        """The guest reads the time on stdin once sudo and its shell run: the seconds they take
        to start under emulation would otherwise put the clock that far behind."""
        client = self.connect(name)
        try:
            stdin, stdout, stderr = client.exec_command(
                "sudo -n sh -c 'echo ready; read t; date -u -s \"@$t\" >/dev/null'", timeout=60)
            stdout.readline()  # its shell runs: only `read` and `date` are left
            stdin.write(f"{time.time():.3f}\n")
            stdin.flush()
            rc = stdout.channel.recv_exit_status()
            err = stderr.read().decode(errors="replace")
        finally:
            client.close()
        if rc:
            raise UserError(f"{name}: setting the clock failed: {err.strip()}")

    def _vagrant_up(self, accel: str, *extra: str) -> subprocess.CompletedProcess:
        done = subprocess.run(["vagrant", "up", "--provider", "libvirt", *extra], cwd=REPO,
                              env=self.env(accel), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        with open(self.runtime / "vagrant-up.log", "a") as log:
            log.write(done.stdout)
        return done

    def public_key(self) -> str:
        return Path(f"{self.key_file}.pub").read_text().strip()

    def prepare_host(self) -> str:
        """Daemons, /dev/kvm, the acceleration and the storage pool; returns "kvm" or "tcg"."""
        kvm = Path("/dev/kvm")
        if kvm.exists():
            st = kvm.stat()
            if (st.st_mode & 0o777) != 0o660 or _group(st.st_gid) != "kvm":
                _run(["chgrp", "kvm", str(kvm)])
                os.chmod(kvm, 0o660)
                self.log("lab: /dev/kvm set to root:kvm 0660 (libvirt re-probes QEMU on every "
                         "call without it)")
        accel = "kvm" if kvm_usable(Path("/proc/cpuinfo").read_text()) else "tcg"
        VAGRANT_DIR.mkdir(parents=True, exist_ok=True)
        if accel == "tcg" and _read(WRAPPER) != wrapper_script():
            WRAPPER.write_text(wrapper_script())
            os.chmod(WRAPPER, 0o755)
        self._start_daemons()
        if _virsh("pool-info", POOL, check=False).returncode != 0:
            POOL_DIR.mkdir(parents=True, exist_ok=True)
            _virsh("pool-define-as", POOL, "dir", "--target", str(POOL_DIR))
        if "running" not in _virsh("pool-info", POOL).stdout.replace(" ", ""):
            _virsh("pool-start", POOL)
        _virsh("pool-refresh", POOL)
        return accel

    def _start_daemons(self) -> None:
        if _virsh("uri", check=False).returncode == 0:
            return
        DAEMONS_DIR.mkdir(parents=True, exist_ok=True)
        if not procs.read_pid(Path("/run/virtlogd.pid"), "virtlogd"):
            _run(["virtlogd", "-d"])
            shutil.copy("/run/virtlogd.pid", DAEMONS_DIR / "virtlogd.pid")
        _run(["libvirtd", "-d", "-p", str(DAEMONS_DIR / "libvirtd.pid")])
        deadline = time.monotonic() + 30
        while _virsh("uri", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise UserError("libvirtd started but does not answer on qemu:///system")
            time.sleep(0.3)
        self.log("lab: started libvirtd and virtlogd (lab.down stops them when no VM is left)")

    def add_box(self, box_file: Path, built: bool) -> None:
        """`vagrant box add` when the box is new or was rebuilt; a rebuilt box also drops the old
        box's volume from the pool (vagrant-libvirt uploads a box once, by name)."""
        listed = subprocess.run(["vagrant", "box", "list"], env=self.env(),
                                capture_output=True, text=True).stdout
        if not built and re.search(rf"^{re.escape(box.BOX_NAME)}\s", listed, re.M):
            return
        _run(["vagrant", "box", "add", "--force", "--name", box.BOX_NAME, str(box_file)],
             env=self.env())
        stale = box.BOX_NAME.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
        if _virsh("uri", check=False).returncode == 0 and \
                _virsh("pool-info", POOL, check=False).returncode == 0:
            for vol in volumes():
                if vol.startswith(stale):
                    _virsh("vol-delete", vol, "--pool", POOL)
        for path in POOL_DIR.glob(stale + "*"):  # libvirt not running: the pool is a folder
            path.unlink()

    def console(self, node: str) -> Path:
        return self.runtime / f"{node}.console"

    def _write_known_hosts(self, timeout: float = 120) -> None:
        """Trust exactly the host keys the VMs printed on their consoles."""
        keys, deadline = {}, time.monotonic() + timeout
        while len(keys) < len(self.cluster.nodes):
            for n in self.cluster.nodes:
                key = host_key_from_console(_read(self.console(n.name)) or "")
                if key:
                    keys[n.name] = key
            if len(keys) < len(self.cluster.nodes):
                if time.monotonic() > deadline:
                    missing = sorted({n.name for n in self.cluster.nodes} - set(keys))
                    raise UserError(f"no host key on the console of {', '.join(missing)} "
                                    f"(see {self.runtime}/<node>.console)")
                time.sleep(1)
        mine = {n.address for n in self.cluster.nodes} | {n.name for n in self.cluster.nodes}
        kept = []
        if self.known_hosts.exists():
            for line in self.known_hosts.read_text().splitlines():
                hosts = line.split()[0].split(",") if line.strip() else []
                if not mine.intersection(hosts):
                    kept.append(line)
        kept += [f"{n.address} {keys[n.name]}" for n in self.cluster.nodes]
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.known_hosts.write_text("\n".join(kept) + "\n")

    def _wait(self, n, started: float, timeout: float = 300) -> NodeResult:
        deadline, last = time.monotonic() + timeout, "not answering SSH"
        while time.monotonic() < deadline:
            try:
                rc, out, _ = self.run(n.name, "timeout 120 systemctl is-system-running --wait; "
                                      "systemctl --failed --no-legend --plain | cut -d' ' -f1",
                                      timeout=130)
            except (OSError, paramiko.SSHException) as e:
                last = f"SSH: {e}"
                time.sleep(1)
                continue
            lines = out.split()
            if lines and lines[0] in ("running", "degraded"):
                return NodeResult(n.name, n.address, lines[0], time.monotonic() - started,
                                  tuple(lines[1:]))
            last = f"systemd {lines[0] if lines else 'unknown'}"
            time.sleep(1)
        return NodeResult(n.name, n.address, f"timeout ({last})")

    # -- talking to nodes --------------------------------------------------------------------------
    def connect(self, name: str, timeout: float = 10) -> paramiko.SSHClient:
        """Lab.connect without its bridge check: a libvirt network, not a host bridge."""
        return ssh_connect(self.cluster.node(name), self.known_hosts, self.key_file, timeout)

    def run(self, name: str, command: str, timeout: float = 120) -> tuple[int, str, str]:
        return ssh_run(self.connect(name), command, timeout)

    def is_running(self, name: str) -> bool:
        if _virsh("uri", check=False).returncode != 0:
            return False
        done = _virsh("domstate", self.domain(name), check=False)
        return done.returncode == 0 and done.stdout.strip() == "running"

    def status(self) -> list[dict]:
        rows = []
        for n in self.cluster.nodes:
            running = self.is_running(n.name)
            state = "-"
            if running:
                try:
                    _, out, _ = self.run(n.name, "systemctl is-system-running", timeout=20)
                    state = out.strip() or "unknown"
                except (OSError, paramiko.SSHException) as e:
                    state = f"no SSH ({e.__class__.__name__})"
            rows.append({"node": n.name, "address": n.address, "running": running, "ssh": state})
        return rows

    # -- down ------------------------------------------------------------------------------------
    def down(self, quiet: bool = False) -> None:
        """Remove this lab's VMs, disks, networks and package source; when no VM of any lab is
        left, also the pool definition, the daemons the lab started and libvirt's iptables
        chains. Idempotent; the box and the pool's box volume stay in the cache."""
        packages.stop(self.runtime)
        if _virsh("uri", check=False).returncode == 0:
            if self.dotfiles.exists():
                subprocess.run(["vagrant", "destroy", "-f"], cwd=REPO, env=self.env(),
                               capture_output=True, text=True)
            for dom in _virsh("list", "--all", "--name").stdout.split():
                if dom.startswith(self.prefix):  # whatever vagrant did not remove
                    _virsh("destroy", dom, check=False)
                    _virsh("undefine", dom, "--nvram", check=False)
            if _virsh("pool-info", POOL, check=False).returncode == 0:
                for vol in volumes():
                    if vol.startswith(self.prefix):
                        _virsh("vol-delete", vol, "--pool", POOL, check=False)
            for net in (self.network, f"{self.network}-m"):
                if net and _virsh("net-info", net, check=False).returncode == 0:
                    _virsh("net-destroy", net, check=False)
                    _virsh("net-undefine", net, check=False)
            if not _virsh("list", "--all", "--name").stdout.split():
                self._stop_host_services()
        shutil.rmtree(self.dotfiles, ignore_errors=True)
        shutil.rmtree(self.runtime, ignore_errors=True)

    def _stop_host_services(self) -> None:
        started = [p for p in ("libvirtd", "virtlogd") if (DAEMONS_DIR / f"{p}.pid").exists()]
        if not started:
            return  # libvirt was running before the lab: it is not the lab's to stop
        if not [n for n in _virsh("net-list", "--all", "--name").stdout.split()]:
            if _virsh("pool-info", POOL, check=False).returncode == 0:
                _virsh("pool-destroy", POOL, check=False)
                _virsh("pool-undefine", POOL, check=False)
        for name in started:
            procs.stop_pidfile(DAEMONS_DIR / f"{name}.pid", name, timeout=15)
        shutil.rmtree(DAEMONS_DIR, ignore_errors=True)
        remove_libvirt_chains()
        self.log("lab: stopped libvirtd and virtlogd, removed libvirt's iptables chains")


def remove_libvirt_chains() -> None:
    """libvirt leaves its LIBVIRT_* chains (and the jumps to them) behind when it stops."""
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for table in ("filter", "nat", "mangle"):
            rules = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True)
            if rules.returncode != 0:
                continue
            chains = [ln.split()[1] for ln in rules.stdout.splitlines()
                      if ln.startswith("-N LIBVIRT_")]
            for ln in rules.stdout.splitlines():  # jumps from the built-in chains
                parts = ln.split()
                if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in chains:
                    subprocess.run([tool, "-t", table, "-D", *parts[1:]], capture_output=True)
            for chain in chains:
                subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
            for chain in chains:
                subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)


def volumes() -> list[str]:
    """Names of the volumes in the lab's pool (this virsh's vol-list has no --name)."""
    out = _virsh("vol-list", POOL, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def libvirt_chains() -> list[str]:
    found = []
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            out = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout
            found += [f"{tool} {table} {ln.split()[1]}" for ln in out.splitlines()
                      if ln.startswith("-N LIBVIRT_")]
    return found


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise UserError(f"virsh {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _run(cmd: list[str], env: dict | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise UserError(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
