"""Lab nodes as systemd-nspawn containers booting Debian 12 on a host bridge.

Per node, on the host:

    /var/lib/provisioner-lab/<cluster>/<node>/
        upper/ work/     the node's own overlayfs layers (lower layer: the cached base)
        root/            the mounted overlay, the node's / (booted by systemd-nspawn)
        hostkeys/        its ssh host key, kept across `reset` so known_hosts stays valid
    /run/provisioner-lab/<cluster>/
        lab.json         what this lab put on the host (bridge, nodes), for cleanup after a crash
        <node>.pid/.log  the systemd-nspawn process and its console
        http.pid/.log    the package source

Nodes get a static address on interface host0 and no default route: they reach the host and
each other over the bridge, nothing else (the host's ip_forward is not needed and not touched).
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ..errors import UserError
from ..model import Cluster, Node
from ..state import State
from . import RUNTIME_ROOT, base, packages, procs

DATA_ROOT = Path("/var/lib/provisioner-lab")
# sudo and what it needs beyond the base, for nodes whose inventory user is not root (Debian
# cloud and Vagrant images have it; the base is kept as it is so running labs keep theirs)
SUDO_DEBS_DIR = packages.DEBS_DIR.with_name("debs-sudo")
MIN_INOTIFY_INSTANCES = 512
NSPAWN = "systemd-nspawn"
INSTALL_HINT = "run ./bootstrap.sh (it installs systemd-container debootstrap dpkg-dev)"


@dataclass
class NodeResult:
    name: str
    address: str
    state: str  # running, degraded, or what went wrong
    seconds: float | None = None
    failed_units: tuple[str, ...] = ()


class Lab:
    """One lab (one inventory) on this host."""

    def __init__(self, cluster: Cluster, log=print):
        self.cluster, self.log = cluster, log
        self.name = cluster.cluster_name
        self.runtime = RUNTIME_ROOT / self.name
        self.data = DATA_ROOT / self.name
        self.state = State(cluster)
        self.known_hosts = self.state.known_hosts
        keys = {n.ssh_key for n in cluster.nodes if n.ssh_key}
        self.key_file = Path(sorted(keys)[0] if keys else self.state.dir / "ssh/id_ed25519")
        self.bridge, self.bridge_address = lab_network(cluster)

    # -- checks ------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse early, with what to do, when this host or the inventory cannot run the lab."""
        self.check_network()
        if os.geteuid() != 0:
            raise UserError("the lab needs root (it mounts overlays, creates a bridge and boots "
                            "containers): run it as root")
        missing = [t for t in (NSPAWN, "debootstrap", "dpkg-scanpackages", "ssh-keygen", "ip")
                   if not shutil.which(t)]
        if missing:
            raise UserError(f"missing on this host: {', '.join(missing)}; {INSTALL_HINT}")

    def check_network(self) -> None:
        """The inventory gives (or lets the lab derive) a bridge and host address holding every
        host's address (the VM lab's private network follows the same rules)."""
        src = self.cluster.source
        for key, value in (("lab_bridge", self.bridge), ("lab_bridge_address", self.bridge_address)):
            if not value:
                raise UserError(f"{src}: {key}: not set, and the hosts are not all in one /24 "
                                "to derive it from (the lab needs lab_bridge and "
                                "lab_bridge_address, e.g. k8slab0 and 10.90.0.1/24; see "
                                "inventories/lab.yml)")
        try:
            iface = ipaddress.ip_interface(self.bridge_address)
        except ValueError:
            raise UserError(f"{src}: lab_bridge_address: {self.bridge_address!r} is not an "
                            "address with prefix length (write e.g. 10.90.0.1/24)") from None
        for n in self.cluster.nodes:
            try:
                inside = ipaddress.ip_address(n.address) in iface.network
            except ValueError:
                inside = False
            if not inside or n.address == str(iface.ip):
                raise UserError(f"{src}: {n.name}: ansible_host {n.address} must be an address "
                                f"in {iface.network} other than the host's {iface.ip}")
        if len(self.bridge) > 15:
            raise UserError(f"{src}: lab_bridge: {self.bridge!r} is longer than 15 characters")

    @contextmanager
    def locked(self, wait: float = 0):
        """Hold this lab for the duration (one `lab.up`/`lab.down`, or a whole test session);
        wait up to `wait` seconds for another holder, then refuse naming it."""
        RUNTIME_ROOT.mkdir(parents=True, exist_ok=True)
        fd = os.open(RUNTIME_ROOT / f"{self.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 300, 0).decode(errors="replace").strip()
                        raise UserError(f"lab {self.name} is in use by "
                                        f"{holder or 'another process'}; wait until it ends"
                                        ) from None
                    time.sleep(1)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})".encode(), 0)
            yield self
        finally:
            os.close(fd)

    @property
    def prefix(self) -> int:
        return ipaddress.ip_interface(self.bridge_address).network.prefixlen

    @property
    def host_ip(self) -> str:
        return str(ipaddress.ip_interface(self.bridge_address).ip)

    def node_dir(self, name: str) -> Path:
        return self.data / name

    def machine(self, node: str) -> str:
        """The node's nspawn machine name, unique to this lab: nspawn names the host side of the
        node's link `vb-<machine>`, so two labs with a `cp1` each must not share it (the node's
        hostname comes from its /etc/hostname)."""
        tag = hashlib.sha256(f"{self.name}/{node}".encode()).hexdigest()[:4]
        return f"{node[:7]}-{tag}"

    # -- up ------------------------------------------------------------------------------------
    def up(self, timeout: float | None = None) -> list[NodeResult]:
        """Clean leftovers, prepare the base, key, package source and bridge, boot every node
        and wait until each answers SSH with a booted systemd."""
        self.check()
        self.cleanup()
        base_dir = base.ensure_base(self.log)
        self.ensure_key()
        repo = packages.build_repo(packages.DEBS_DIR, base_dir / "var/lib/dpkg/status",
                                   log=self.log)
        self.runtime.mkdir(parents=True, exist_ok=True)
        self._record()
        self._raise_inotify()
        self._bridge_up()
        packages.serve(repo, self.host_ip, self.runtime)
        for n in self.cluster.nodes:
            self._host_key(n)
            self._prepare(n)
        self._write_known_hosts()
        return self.boot_and_wait(self.cluster.nodes, timeout)

    def boot_and_wait(self, nodes, timeout: float | None = None) -> list[NodeResult]:
        started = {}
        for n in nodes:
            started[n.name] = time.monotonic()
            self._boot(n)
        timeout = timeout or 120 + 2 * len(nodes)
        with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
            results = list(pool.map(lambda n: self._wait(n, started[n.name], timeout), nodes))
        return results

    def reset(self, names=None, timeout: float | None = None) -> list[NodeResult]:
        """Return nodes to their state right after `up`: stop, wipe, re-create files, boot."""
        nodes = [n for n in self.cluster.nodes if names is None or n.name in names]
        self._stop([n.name for n in nodes], grace=3)  # nothing on them is worth keeping
        for n in nodes:
            for layer in ("upper", "work"):
                shutil.rmtree(self.node_dir(n.name) / layer, ignore_errors=True)
            self._prepare(n)
        return self.boot_and_wait(nodes, timeout)

    def stop(self, names) -> None:
        """Power nodes off at once, as a crash would (tests of a node lost mid-run)."""
        self._stop(list(names), grace=0)

    def ensure_key(self) -> Path:
        """The lab's SSH key (created once, 0600), authorized for root on every node."""
        if not self.key_file.exists():
            self.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"provisioner-{self.name}",
                  "-f", str(self.key_file)])
            self.log(f"lab: created the lab SSH key {self.key_file}")
        os.chmod(self.key_file, 0o600)
        return self.key_file

    def _record(self) -> None:
        (self.runtime / "lab.json").write_text(json.dumps({
            "bridge": self.bridge, "nodes": [n.name for n in self.cluster.nodes]}))

    def _raise_inotify(self) -> None:
        knob = Path("/proc/sys/fs/inotify/max_user_instances")
        current = int(knob.read_text())
        if current < MIN_INOTIFY_INSTANCES:
            knob.write_text(str(MIN_INOTIFY_INSTANCES))
            self.log(f"lab: raised fs.inotify.max_user_instances from {current} to "
                     f"{MIN_INOTIFY_INSTANCES} (each node's systemd needs several)")

    def _bridge_up(self) -> None:
        if Path(f"/sys/class/net/{self.bridge}").exists():
            raise UserError(f"interface {self.bridge} already exists and is not this lab's; "
                            "choose another lab_bridge")
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", self.bridge_address, "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def _host_key(self, n: Node) -> None:
        keys = self.node_dir(n.name) / "hostkeys"
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (keys / "ssh_host_ed25519_key").exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{n.name}",
                  "-f", str(keys / "ssh_host_ed25519_key")])

    def _prepare(self, n: Node) -> None:
        """Mount the node's overlay and write everything that makes it this node."""
        d = self.node_dir(n.name)
        for sub in ("upper", "work", "root"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        _run(["mount", "-t", "overlay", f"provisioner-lab-{self.name}-{n.name}", "-o",
              f"lowerdir={base.BASE_DIR},upperdir={d / 'upper'},workdir={d / 'work'}",
              str(d / "root")])
        for path, text, mode in self.node_files(n):
            target = d / "root" / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)  # never write through a symlink of the base
            target.write_text(text)
            os.chmod(target, mode)
        root = d / "root"
        os.chmod(root / "root/.ssh", 0o700)
        if n.ssh_user != "root":
            self._add_sudo_user(root, n.ssh_user)
        for src in (d / "hostkeys").iterdir():
            shutil.copy2(src, root / "etc/ssh" / src.name)
        for link, unit in ENABLED_UNITS:
            target = root / "etc/systemd/system" / link
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.symlink_to(f"/lib/systemd/system/{unit}")

    def node_files(self, n: Node) -> list[tuple[str, str, int]]:
        """(path on the node, content, mode) of every file that differs between nodes."""
        hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        hosts += [f"{m.address}\t{m.name}" for m in self.cluster.nodes]
        network = (f"# written by the provisioner lab: the bridge only, no gateway, no DNS\n"
                   f"[Match]\nName=host0\n\n[Network]\nAddress={n.address}/{self.prefix}\n"
                   "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
        return [
            ("/etc/hostname", f"{n.name}\n", 0o644),
            ("/etc/hosts", "\n".join(hosts) + "\n", 0o644),
            ("/etc/machine-id", uuid.uuid4().hex + "\n", 0o444),
            ("/etc/resolv.conf", "# lab nodes have no DNS: names are in /etc/hosts\n"
                                 "nameserver 127.0.0.1\n", 0o644),
            # Same name as systemd's default (DHCP on host0) so it replaces it.
            ("/etc/systemd/network/80-container-host0.network", network, 0o644),
            ("/etc/ssh/sshd_config.d/lab.conf",
             "HostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\n"
             "UseDNS no\n", 0o644),
            ("/root/.ssh/authorized_keys", self.public_key() + "\n", 0o600),
            ("/etc/apt/sources.list.d/lab.list",
             f"deb [trusted=yes] http://{self.host_ip}:{packages.PORT} ./\n", 0o644),
        ]

    def _add_sudo_user(self, root: Path, user: str) -> None:
        """What a cloud or Vagrant image has: sudo, and `user` with the lab key and password-less
        sudo (root keeps the key too: the lab's own helpers and tests use it)."""
        packages.build_repo(SUDO_DEBS_DIR, base.BASE_DIR / "var/lib/dpkg/status",
                            packages=("sudo",), log=self.log)  # once; then a no-op
        if not (root / "usr/bin/sudo").exists():
            _run(["dpkg", "--root", str(root), "-i", *map(str, sorted(SUDO_DEBS_DIR.glob("*.deb")))])
        if f"\n{user}:" not in "\n" + (root / "etc/passwd").read_text():
            _run(["chroot", str(root), "useradd", "-m", "-s", "/bin/bash", "-p", "*", user])
        rule = root / f"etc/sudoers.d/lab-{user}"
        rule.write_text(f"{user} ALL=(ALL) NOPASSWD:ALL\n")
        os.chmod(rule, 0o440)
        fields = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                      if line.startswith(f"{user}:"))
        uid, gid, home = int(fields[2]), int(fields[3]), fields[5]
        ssh = root / home.lstrip("/") / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        keys = ssh / "authorized_keys"
        keys.unlink(missing_ok=True)
        keys.write_text(self.public_key() + "\n")
        os.chmod(keys, 0o600)
        for path in (ssh, keys):
            os.chown(path, uid, gid)

    def public_key(self) -> str:
        return Path(f"{self.key_file}.pub").read_text().strip()

    def _write_known_hosts(self) -> None:
        """Trust exactly the host keys this lab made: replace the nodes' lines, keep others."""
        mine = {n.address for n in self.cluster.nodes} | {n.name for n in self.cluster.nodes}
        kept = []
        if self.known_hosts.exists():
            for line in self.known_hosts.read_text().splitlines():
                hosts = line.split()[0].split(",") if line.strip() else []
                if not mine.intersection(hosts):
                    kept.append(line)
        for n in self.cluster.nodes:
            pub = (self.node_dir(n.name) / "hostkeys/ssh_host_ed25519_key.pub").read_text()
            kind, blob = pub.split()[:2]
            kept.append(f"{n.address} {kind} {blob}")
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.known_hosts.write_text("\n".join(kept) + "\n")

    def _boot(self, n: Node) -> None:
        root = self.node_dir(n.name) / "root"
        log = self.runtime / f"{n.name}.log"
        log.unlink(missing_ok=True)
        procs.start_background(
            [NSPAWN, "-D", str(root), "-M", self.machine(n.name), "-b", "--register=no",
             "--keep-unit",
             f"--network-bridge={self.bridge}", "--resolv-conf=off", "--link-journal=no"],
            self.runtime / f"{n.name}.pid", log)

    def _wait(self, n: Node, started: float, timeout: float) -> NodeResult:
        deadline = started + timeout
        last = "not answering SSH"
        while time.monotonic() < deadline:
            if not procs.pid_alive(self.runtime / f"{n.name}.pid"):
                tail = (self.runtime / f"{n.name}.log").read_text(errors="replace")[-400:]
                return NodeResult(n.name, n.address, f"nspawn exited: {tail.strip()}")
            try:
                rc, out, _ = self.run(n.name, "timeout 60 systemctl is-system-running --wait; "
                                      "systemctl --failed --no-legend --plain | cut -d' ' -f1",
                                      timeout=70)
            except (OSError, paramiko.SSHException) as e:
                last = f"SSH: {e}"
                time.sleep(0.5)
                continue
            lines = out.split()
            state = lines[0] if lines else "unknown"
            if state in ("running", "degraded"):
                return NodeResult(n.name, n.address, state, time.monotonic() - started,
                                  tuple(lines[1:]))
            last = f"systemd {state}"
            time.sleep(0.5)
        console = (self.runtime / f"{n.name}.log").read_text(errors="replace")[-600:].strip()
        return NodeResult(n.name, n.address, f"timeout ({last}); its console ends:\n{console}")

    # -- talking to nodes ------------------------------------------------------------------------
    def connect(self, name: str, timeout: float = 5) -> paramiko.SSHClient:
        """A paramiko connection that trusts only the host keys in the lab's known_hosts."""
        n = self.cluster.node(name)
        if not Path(f"/sys/class/net/{self.bridge}").exists():  # else the route leads outside
            raise UserError(f"lab {self.name} is not up (no bridge {self.bridge}): "
                            "run `invoke lab.up` first")
        return ssh_connect(n, self.known_hosts, self.key_file, timeout)

    def run(self, name: str, command: str, timeout: float = 120) -> tuple[int, str, str]:
        """Run `command` on node `name`; return (exit status, stdout, stderr)."""
        return ssh_run(self.connect(name), command, timeout)

    def is_running(self, name: str) -> bool:
        return procs.read_pid(self.runtime / f"{name}.pid", NSPAWN) is not None

    def status(self) -> list[dict]:
        rows = []
        for n in self.cluster.nodes:
            running = self.is_running(n.name)
            state = "-"
            if running:
                try:
                    _, out, _ = self.run(n.name, "systemctl is-system-running", timeout=10)
                    state = out.strip() or "unknown"
                except (OSError, paramiko.SSHException) as e:
                    state = f"no SSH ({e.__class__.__name__})"
            rows.append({"node": n.name, "address": n.address, "running": running,
                         "ssh": state})
        return rows

    # -- down / cleanup --------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove everything this lab (or a crashed earlier run of it) left on the host: node
        processes, overlay mounts, node folders, the bridge, the package source. Idempotent.
        The cached base and packages stay."""
        names = {n.name for n in self.cluster.nodes}
        bridges = {self.bridge} if self.bridge else set()
        record = self.runtime / "lab.json"
        if record.exists():
            try:
                old = json.loads(record.read_text())
                names |= set(old.get("nodes", []))
                bridges.add(old.get("bridge", ""))
            except ValueError:
                pass
        if self.data.exists():
            names |= {p.name for p in self.data.iterdir() if p.is_dir()}
        self._stop(sorted(names))
        packages.stop(self.runtime)
        for mount in reversed(_mounts_under(self.data)):
            _umount(mount)
        shutil.rmtree(self.data, ignore_errors=True)
        for br in filter(None, bridges):
            if Path(f"/sys/class/net/{br}").exists():
                subprocess.run(["ip", "link", "del", br], capture_output=True)
        shutil.rmtree(self.runtime, ignore_errors=True)

    down = cleanup

    def _stop(self, names: list[str], grace: float = 10) -> None:
        """Stop nodes: SIGTERM to nspawn (an orderly poweroff inside), then kill what is left,
        including containers whose nspawn already died."""
        pids = {}
        for name in names:
            pid = procs.read_pid(self.runtime / f"{name}.pid", NSPAWN)
            if pid:
                pids[name] = pid
        procs.kill(list(pids.values()), signal.SIGTERM)
        left = procs.wait_gone(list(pids.values()), grace)
        inits = _container_inits([self.node_dir(name) for name in names])
        procs.kill(inits + left, signal.SIGKILL)
        procs.wait_gone(inits + left, 10)
        # nspawn's own helper processes end a moment after the one in the pid file: return
        # only when no process of these nodes is left
        roots = [str(self.node_dir(name) / "root") for name in names]
        strays = procs.wait_gone(_nspawn_pids(roots), 10)
        procs.kill(strays, signal.SIGKILL)
        procs.wait_gone(strays, 5)
        for name in names:
            (self.runtime / f"{name}.pid").unlink(missing_ok=True)
            self._unmount(self.node_dir(name))
            _drop_link(f"vb-{self.machine(name)}")

    def _unmount(self, node_dir: Path) -> None:
        for mount in reversed(_mounts_under(node_dir)):
            _umount(mount)


# Units every node starts: networkd (static address on host0) and sshd.
ENABLED_UNITS = (
    ("multi-user.target.wants/systemd-networkd.service", "systemd-networkd.service"),
    ("sockets.target.wants/systemd-networkd.socket", "systemd-networkd.socket"),
    ("network-online.target.wants/systemd-networkd-wait-online.service",
     "systemd-networkd-wait-online.service"),
    ("multi-user.target.wants/ssh.service", "ssh.service"),
)


def lab_network(cluster: Cluster) -> tuple[str, str]:
    """(bridge, host address with prefix): the inventory's lab_bridge and lab_bridge_address;
    when it sets neither and every host is in one /24, a bridge named after that /24 with the
    first address no host uses (so any inventory, e.g. the examples, boots as a lab)."""
    if cluster.lab_bridge or cluster.lab_bridge_address:
        return cluster.lab_bridge or "", cluster.lab_bridge_address or ""
    try:
        nets = {ipaddress.ip_interface(f"{n.address}/24").network for n in cluster.nodes}
    except ValueError:
        return "", ""
    if len(nets) != 1:
        return "", ""
    net = nets.pop()
    if net.version != 4:
        return "", ""
    used = {n.address for n in cluster.nodes} | ({cluster.api_vip} if cluster.api_vip else set())
    free = next((str(a) for a in net.hosts() if str(a) not in used), None)
    if free is None:
        return "", ""
    return "lab" + "".join(f"{int(o):03d}" for o in str(net.network_address).split(".")[:3]), \
        f"{free}/{net.prefixlen}"


def _drop_link(name: str, wait: float = 5) -> None:
    """The kernel removes a dead node's veth shortly after; a reboot must not race it."""
    deadline = time.monotonic() + wait
    while Path("/sys/class/net", name).exists():
        if time.monotonic() > deadline:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
            return
        time.sleep(0.1)


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _mounts_under(folder: Path) -> list[str]:
    """Mount points at or below `folder`, in mount order."""
    prefix = str(folder)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def _umount(point: str) -> None:
    if subprocess.run(["umount", point], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", point], capture_output=True)


def _nspawn_pids(roots: list[str]) -> list[int]:
    """Every systemd-nspawn process started with `-D ROOT` for one of these roots."""
    wanted = set(roots)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args and args[0].endswith(NSPAWN) and any(
                a == "-D" and b in wanted for a, b in zip(args, args[1:])):
            found.append(int(entry.name))
    return found


def _container_inits(node_dirs: list[Path]) -> list[int]:
    """PID 1 of every container whose root is one of these nodes' overlays (found from the
    overlay's upperdir in its mount table), so containers are found even without nspawn."""
    uppers = [f"upperdir={d}/upper" for d in node_dirs]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            nspid = next(ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:"))
            if len(nspid) < 2 or nspid[-1] != "1":
                continue
            root_line = next((ln for ln in (entry / "mountinfo").read_text().splitlines()
                              if ln.split()[4] == "/"), "")
        except (OSError, StopIteration):
            continue
        if any(u + "," in root_line + "," for u in uppers):
            found.append(int(entry.name))
    return found


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header] + rows)


def ssh_connect(n, known_hosts: Path, key_file: Path, timeout: float) -> paramiko.SSHClient:
    """A paramiko connection to lab node n that trusts only the host keys in known_hosts."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(n.address, port=n.ssh_port, username=n.ssh_user,
                       key_filename=str(key_file), timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout, look_for_keys=False, allow_agent=False)
    except BaseException:
        client.close()
        raise
    return client


def ssh_run(client: paramiko.SSHClient, command: str, timeout: float) -> tuple[int, str, str]:
    """Run command over client, then close it; (exit status, stdout, stderr)."""
    try:
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out, err
    finally:
        client.close()
