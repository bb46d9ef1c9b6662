"""What a host is and has, read in one round trip per host. This module only reads.

`probe(pool, paths_by_host)` sends one small python3 script per host on stdin (`python3 -`); it
prints one JSON document, which becomes a `Facts`. Unreachable hosts get `Facts(reachable=False,
error=...)`, so every host of the pool has an entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

SERVICES = ("containerd", "etcd", "haproxy", "keepalived", "kubelet", "k3s", "k3s-agent", "chrony")
BINARIES = ("containerd", "runc", "etcd", "kubeadm", "kubelet", "kubectl", "k3s", "haproxy", "keepalived")
# Present after an earlier install; see `Facts.leftovers`.
LEFTOVERS = ("/etc/kubernetes/manifests", "/var/lib/etcd/member", "/var/lib/kubelet/config.yaml",
             "/etc/rancher/k3s")
# Written by the provisioner on the hosts it installs (JSON: cluster_name, distribution), so
# leftovers of our own earlier run can be told from a foreign install.
MARKER = "/etc/provisioner/cluster.json"


@dataclass(frozen=True)
class Facts:
    """One host's facts. Nested values stay plain dicts/lists (they come from JSON)."""

    host: str
    reachable: bool = True
    error: str | None = None
    hostname: str = ""
    os_id: str = ""
    os_version: str = ""
    os_pretty: str = ""
    arch: str = ""
    cpus: int = 0
    mem_mb: int = 0
    swap_mb: int = 0
    kernel: str = ""
    init: str = ""                    # command name of PID 1 ("systemd" on a supported host)
    interfaces: dict = field(default_factory=dict)   # name -> {"mac": str, "addresses": ["ip/len"]}
    listeners: list = field(default_factory=list)    # [{"address", "port", "process"}], TCP LISTEN
    clock: float = 0.0                # host's time.time() when the script ran
    controller_clock: float = 0.0     # controller's time halfway through the round trip
    files: dict = field(default_factory=dict)        # path -> sha256 hex or None (missing)
    services: dict = field(default_factory=dict)     # unit -> {"active": str, "enabled": str}
    versions: dict = field(default_factory=dict)     # binary -> first line of its version, or None
    kernel_features: dict = field(default_factory=dict)  # br_netfilter, overlay -> bool
    leftovers: dict = field(default_factory=dict)    # LEFTOVERS path -> present
    marker: dict | None = None        # contents of MARKER, None when absent
    seconds: float = 0.0              # how long the probe took

    @classmethod
    def from_dict(cls, host: str, data: dict) -> "Facts":
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in known}, "host": host})

    @property
    def is_systemd(self) -> bool:
        return self.init == "systemd"

    @property
    def skew(self) -> float:
        """Seconds the host's clock is ahead of the controller's (negative: behind)."""
        return self.clock - self.controller_clock

    @property
    def addresses(self) -> list[str]:
        return [a.split("/")[0] for i in self.interfaces.values() for a in i.get("addresses", [])]

    @property
    def binaries(self) -> dict:
        """Same as `versions`: binary -> version line, None when not installed."""
        return self.versions

    def listening(self, port: int) -> list[dict]:
        return [x for x in self.listeners if x.get("port") == port]

    def active(self, service: str) -> bool:
        return self.services.get(service, {}).get("active") == "active"


# The script runs on the host with its parameters prepended as PARAMS. Standard library only,
# python3 >= 3.6 (Debian 11 has 3.9). Each part is guarded: one failing read gives None, not a crash.
SCRIPT = r'''
import hashlib, json, os, socket, struct, subprocess, time

ENV = dict(os.environ, LC_ALL="C", PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/bin")
out = {}

def guard(key, fn):
    try:
        out[key] = fn()
    except Exception as e:
        out.setdefault("probe_errors", {})[key] = "%s: %s" % (type(e).__name__, e)

def read(path):
    with open(path) as f:
        return f.read()

def os_release():
    d = {}
    for line in read("/etc/os-release").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            d[k] = v.strip().strip('"')
    out["os_id"], out["os_version"], out["os_pretty"] = d.get("ID", ""), d.get("VERSION_ID", ""), d.get("PRETTY_NAME", "")

def cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()

def mem_mb():
    for line in read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024

def swap_mb():
    lines = read("/proc/swaps").splitlines()[1:]
    return sum(int(l.split()[2]) for l in lines if l.strip()) // 1024

def init():
    return read("/proc/1/comm").strip()

def interfaces():
    try:
        data = json.loads(subprocess.run(["ip", "-j", "addr", "show"], stdout=subprocess.PIPE,
                                         env=ENV, timeout=10, check=True).stdout)
        return {i["ifname"]: {"mac": i.get("address", ""),
                              "addresses": ["%s/%s" % (a["local"], a["prefixlen"]) for a in i.get("addr_info", [])]}
                for i in data}
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    # without iproute2: MACs from /sys, IPv4 (primary only) by ioctl, IPv6 from /proc
    import fcntl
    res = {}
    for name in os.listdir("/sys/class/net"):
        mac = read("/sys/class/net/%s/address" % name).strip()
        addrs = []
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            packed = struct.pack("256s", name[:15].encode())
            ip = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, packed)[20:24])
            mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x891b, packed)[20:24])
            addrs.append("%s/%d" % (ip, bin(struct.unpack("!I", socket.inet_aton(mask))[0]).count("1")))
        except OSError:
            pass
        finally:
            s.close()
        res[name] = {"mac": mac, "addresses": addrs}
    try:
        for line in read("/proc/net/if_inet6").splitlines():
            h, _, plen, _, _, name = line.split()
            ip = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(h))
            res.setdefault(name, {"mac": "", "addresses": []})["addresses"].append("%s/%d" % (ip, int(plen, 16)))
    except OSError:
        pass
    return res

def listeners():
    found = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = read("/proc/net/" + name).splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] != "0A":  # LISTEN
                continue
            hexip, hexport = parts[1].split(":")
            raw = bytes.fromhex(hexip)
            if family == socket.AF_INET:
                ip = socket.inet_ntop(family, raw[::-1])
            else:
                ip = socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            found[parts[9]] = {"address": ip, "port": int(hexport, 16), "process": None}
    # which process holds each listening socket (root can read every /proc/PID/fd)
    wanted = {"socket:[%s]" % inode: inode for inode in found}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or not wanted:
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
            comm = None
            for fd in fds:
                try:
                    target = os.readlink("/proc/%s/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if target in wanted:
                    comm = comm or read("/proc/%s/comm" % pid).strip()
                    found[wanted.pop(target)]["process"] = comm
        except OSError:
            continue
    return sorted(found.values(), key=lambda x: (x["port"], x["address"]))

def sha256(path):
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None

def services():
    units = [s + ".service" for s in PARAMS["services"]]
    if not units:
        return {}
    r = subprocess.run(["systemctl", "show", "-p", "Id,LoadState,ActiveState,UnitFileState"] + units,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV, timeout=20,
                       universal_newlines=True)
    if r.returncode != 0:
        return None
    res = {}
    for block in r.stdout.strip().split("\n\n"):
        d = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        name = d.get("Id", "").rsplit(".service", 1)[0]
        if d.get("LoadState") == "not-found":
            res[name] = {"active": "inactive", "enabled": "not-found"}
        else:
            res[name] = {"active": d.get("ActiveState", ""), "enabled": d.get("UnitFileState", "")}
    return res

VERSION_ARGS = {"kubectl": ["version", "--client"], "kubeadm": ["version", "-o", "short"], "haproxy": ["-v"]}

def versions():
    import shutil
    procs = {}
    for b in PARAMS["binaries"]:
        exe = shutil.which(b, path=ENV["PATH"])
        if exe:
            try:
                procs[b] = subprocess.Popen([exe] + VERSION_ARGS.get(b, ["--version"]), stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV)
            except OSError:
                pass
    res = {b: None for b in PARAMS["binaries"]}
    for b, p in procs.items():
        try:
            text = p.communicate(timeout=15)[0].decode(errors="replace")
            lines = [l.strip() for l in text.splitlines() if l.strip()]
            res[b] = lines[0] if lines else ""
        except subprocess.TimeoutExpired:
            p.kill()
            res[b] = ""
    return res

def kernel_features():
    release = os.uname().release
    def module(path):
        base = "/lib/modules/%s/kernel/%s" % (release, path)
        return any(os.path.exists(base + ext) for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"))
    try:
        fs = read("/proc/filesystems")
    except OSError:
        fs = ""
    return {"br_netfilter": os.path.isdir("/proc/sys/net/bridge") or module("net/bridge/br_netfilter"),
            "overlay": "\toverlay" in fs or module("fs/overlayfs/overlay")}

def leftovers():
    res = {}
    for p in PARAMS["leftovers"]:
        if p.endswith("manifests"):
            res[p] = os.path.isdir(p) and bool(os.listdir(p))
        else:
            res[p] = os.path.exists(p)
    return res

def marker():
    try:
        return json.loads(read(PARAMS["marker"]))
    except FileNotFoundError:
        return None
    except ValueError:
        return {"invalid": True}

guard("hostname", socket.gethostname)
guard("os", os_release); out.pop("os", None)
guard("arch", lambda: os.uname().machine)
guard("kernel", lambda: os.uname().release)
guard("cpus", cpus)
guard("mem_mb", mem_mb)
guard("swap_mb", swap_mb)
guard("init", init)
guard("interfaces", interfaces)
guard("listeners", listeners)
guard("files", lambda: {p: sha256(p) for p in PARAMS["paths"]})
guard("services", services)
guard("versions", versions)
guard("kernel_features", kernel_features)
guard("leftovers", leftovers)
guard("marker", marker)
out["clock"] = time.time()
print(json.dumps(out))
'''


def script_for(paths: Iterable[str], services=SERVICES, binaries=BINARIES) -> str:
    params = {"paths": list(paths), "services": list(services), "binaries": list(binaries),
              "leftovers": list(LEFTOVERS), "marker": MARKER}
    return f"PARAMS = {json.dumps(params)!r}\nimport json as _j\nPARAMS = _j.loads(PARAMS)\n" + SCRIPT


def probe(pool, paths_by_host: dict[str, list[str]] | None = None, services=SERVICES,
          binaries=BINARIES, hosts: Iterable[str] | None = None, timeout: float = 60) -> dict[str, "Facts"]:
    """Facts of every host of `pool` (or `hosts`), one command per host, all in parallel."""
    paths_by_host = paths_by_host or {}
    names = list(pool.nodes) if hosts is None else list(hosts)
    stdin = {n: script_for(paths_by_host.get(n, []), services, binaries) for n in names}
    results = pool.run("python3 -", hosts=names, stdin=stdin, timeout=timeout)
    facts = {}
    for name, r in results.items():
        if r.rc is None:
            facts[name] = Facts(name, reachable=False, error=r.error, seconds=r.seconds)
            continue
        try:
            if r.rc != 0:
                raise ValueError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.rc}")
            # the JSON is the last line (a chatty shell rc file may print before it)
            data = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as e:
            why = "python3 is missing" if r.rc == 127 else f"facts script failed: {e}"
            facts[name] = Facts(name, reachable=False, error=f"{name}: {why}", seconds=r.seconds)
            continue
        # the host read its clock just before printing: compare with the controller's clock
        # when the answer arrived (off by one-way latency, milliseconds on a LAN)
        data["controller_clock"] = r.started + r.seconds
        data["seconds"] = r.seconds
        data["services"] = data.get("services") or {}
        facts[name] = Facts.from_dict(name, data)
    return facts
