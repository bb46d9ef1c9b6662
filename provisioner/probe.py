"""The facts probe: runs ON A NODE, reads what the host is and has, prints one JSON document.

`provisioner.facts` sends this file's text, unchanged, as the stdin of `python3 - PARAMS_JSON`
(one command per host), so this module must stay standard library only and run on the node's
own python3 (>= 3.9: Debian 11). It only reads; it changes nothing on the host.

PARAMS (JSON, every key optional):
    paths      [path]               -> files {path: sha256 or None}, stats {path: {...} or None}
    certs      [path]               -> certs {path: PEM CERTIFICATE blocks or None}
    services   [unit without .service] -> services {unit: {active, enabled}}, started {unit: usec}
    binaries   [name]               -> versions {name: first line of --version or None}
    (always)                        -> cgroup_fs: `stat -fc %T /sys/fs/cgroup` (cgroup2fs: v2)
    commands   {name: {"argv": [..], "timeout": s}} -> commands {name: {"rc", "out"}}
    leftovers  [path]               -> leftovers {path: present}
    marker     path                 -> marker (its JSON, None when absent)
    disks      [path]               -> disks {path: {total_mb, used_pct} or None}
    sysctls    [name]               -> sysctls {name: value or None} (/proc/sys)
    texts      [path]               -> texts {path: text or None}; never a file holding a key
    processes  [command name]       -> processes {name: [state letter of each such process]}
    sockets    {name: {"path", "send"}} -> sockets {name: what a unix socket answered}
    commands may carry "limit" (characters kept), "tail" (keep the last ones), "stderr":
    "stdout" (merged into out) and "own_deadline": {"--flag={:.0f}s": seconds, ...}, the
    tool's own deadlines (etcdctl's), given as those arguments and patient like the probe.
    patience   factor               every subprocess's timeout multiplied by it (default 1)
    (always)                        -> timed_out {"command NAME" | "version NAME" | "ip" |
                                       "systemctl" | "cgroup": {"argv", "seconds"}}: killed at
                                       their deadline, so their facts say nothing; or, asked
                                       without patience, failed at their own deadline (a quorum
                                       read on a busy member): asked again with patience, what
                                       such a command says is its answer

Each fact is guarded: a failing read leaves that fact out and adds `probe_errors[key]`, it never
crashes the probe. Every subprocess is started at once at the beginning and collected at the end,
so they run while the files are read; each has a deadline and is killed (its process group) when
it passes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the node (start-up time)
    from collections.abc import Callable
    from typing import Any

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/bin"
ENV = dict(os.environ, LC_ALL="C", PATH=PATH)
COMMAND_TIMEOUT = 10.0     # default for a named command
VERSION_TIMEOUT = 15.0     # a binary's --version
SYSTEM_TIMEOUT = 20.0      # ip, systemctl
OUT_LIMIT = 4000           # characters of a command's stdout kept
PATIENCE = 1.0             # every timeout is multiplied by it (params "patience")
READ_LIMIT = 1 << 20       # bytes read from one pipe, or from one certificate file
VERSION_ARGS = {"kubectl": ["version", "--client"], "kubeadm": ["version", "-o", "short"], "haproxy": ["-v"]}
SHOW_PROPERTIES = "Id,LoadState,ActiveState,UnitFileState,ActiveEnterTimestamp"
CERT_RE = rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----"

def describe(e: BaseException) -> str:
    return "%s: %s" % (type(e).__name__, e)


def guard(out: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """out[key] = fn(); on any exception leave key out and record probe_errors[key]."""
    try:
        out[key] = fn()
    except Exception as e:
        out.setdefault("probe_errors", {})[key] = describe(e)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def which(name: str, path: str = PATH) -> str | None:
    """shutil.which without importing shutil (start-up time)."""
    for d in path.split(os.pathsep):
        exe = os.path.join(d, name)
        if os.access(exe, os.X_OK) and not os.path.isdir(exe):
            return exe
    return None


# -- subprocesses: started together, collected together ---------------------------------------

class Job:
    """One subprocess: stdin /dev/null, its own process group, a deadline.

    After `finish`: rc (None when it timed out and was killed; 127 when the executable is
    missing, 126 when it cannot be executed), out and err (bytes, at most READ_LIMIT each).
    """

    def __init__(self, argv: list[str], timeout: float, stderr: str = "null", path: str = PATH,
                 env: dict[str, str] | None = None, own_deadline: dict | None = None) -> None:
        self.argv = list(argv)
        self.own_seconds = float("inf")
        if own_deadline:  # the tool's own deadlines, patient like ours; it gave up at the longest
            self.argv += [arg.format(s * PATIENCE) for arg, s in own_deadline.items()]
            self.own_seconds = max(own_deadline.values()) * PATIENCE
        self.rc: int | None = None
        self.out = bytearray()
        self.err = bytearray()
        self.timed_out = False
        self.missing = False
        self.timeout = timeout * PATIENCE
        self.started = time.monotonic()
        self.ended = self.started   # when its output closed (or it was seen to have ended)
        self.deadline = self.started + self.timeout
        self.proc: subprocess.Popen[bytes] | None = None
        exe = self.argv[0] if "/" in self.argv[0] else which(self.argv[0], path)
        if exe is None:
            self.rc, self.missing = 127, True
            return
        err = {"pipe": subprocess.PIPE, "stdout": subprocess.STDOUT}.get(stderr, subprocess.DEVNULL)
        try:
            self.proc = subprocess.Popen([exe] + self.argv[1:], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=err, env=env or ENV,
                                         close_fds=True, start_new_session=True)
        except FileNotFoundError:
            self.rc, self.missing = 127, True
        except OSError as e:
            self.rc = 126
            self.err += describe(e).encode()

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    def kill(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            try:
                self.proc.kill()
            except OSError:
                pass


def finish(jobs: list[Job]) -> list[Job]:
    """Read every job's pipes together until each ends or passes its deadline; set rc."""
    sel = selectors.DefaultSelector()
    running = [j for j in jobs if j.proc is not None]
    for j in running:
        assert j.proc is not None
        for stream, buf in ((j.proc.stdout, j.out), (j.proc.stderr, j.err)):
            if stream is not None:
                sel.register(stream, selectors.EVENT_READ, (j, buf))

    def close(j: Job) -> None:
        for key in list(sel.get_map().values()):
            if key.data[0] is j:
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]

    def drain(j: Job) -> None:
        """Read what is already in j's pipes, without waiting for more."""
        for key in list(sel.get_map().values()):
            if key.data[0] is j:
                os.set_blocking(key.fd, False)
                try:
                    while len(key.data[1]) < READ_LIMIT and (chunk := os.read(key.fd, 65536)):
                        key.data[1].extend(chunk[:READ_LIMIT - len(key.data[1])])
                except BlockingIOError:
                    pass

    def expire(j: Job) -> None:
        assert j.proc is not None
        if j.proc.poll() is None:   # still running: kill it and everything it started
            j.kill()
            j.timed_out = True
        else:   # it ended in time (the probe was busy reading files): what it wrote is its answer
            drain(j)
            j.ended = time.monotonic()
        close(j)                     # a child of it may still hold the pipe: stop reading

    while sel.get_map():
        now = time.monotonic()
        for j in {key.data[0] for key in sel.get_map().values()}:
            if now >= j.deadline:
                expire(j)
        if not sel.get_map():
            break
        wait = min(key.data[0].deadline for key in sel.get_map().values()) - now
        for key, _ in sel.select(max(0.0, wait)):
            j, buf = key.data
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                j.ended = time.monotonic()
            elif len(buf) < READ_LIMIT:
                buf += chunk[:READ_LIMIT - len(buf)]
    sel.close()
    for j in running:
        assert j.proc is not None
        if not j.timed_out:
            try:
                j.rc = j.proc.wait(timeout=max(0.0, j.deadline - time.monotonic()))
                # failed at its own deadline, asked without patience: no answer yet, not a "no"
                j.timed_out = bool(j.rc) and PATIENCE == 1 and j.ended - j.started >= j.own_seconds
                continue
            except subprocess.TimeoutExpired:   # closed its output but did not exit
                j.kill()
                j.timed_out = True
        try:
            j.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        j.rc = None
    return jobs


# -- the host ----------------------------------------------------------------------------------

def parse_os_release(text: str) -> dict[str, str]:
    d = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            d[k] = v.strip().strip('"')
    return {"os_id": d.get("ID", ""), "os_version": d.get("VERSION_ID", ""), "os_pretty": d.get("PRETTY_NAME", "")}


def cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def mem_mb(meminfo: str) -> int | None:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def available_mb(meminfo: str) -> int | None:
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return None


def swap_mb(swaps: str) -> int:
    return sum(int(line.split()[2]) for line in swaps.splitlines()[1:] if line.strip()) // 1024


# -- interfaces: `ip -j addr`, else /sys + ioctl + /proc ---------------------------------------

IP_ARGV = ["ip", "-j", "addr", "show"]


def parse_ip_json(text: str) -> dict[str, dict[str, Any]]:
    return {i["ifname"]: {"mac": i.get("address", ""),
                          "addresses": ["%s/%s" % (a["local"], a["prefixlen"]) for a in i.get("addr_info", [])]}
            for i in json.loads(text)}


def sys_interfaces(sys_net: str = "/sys/class/net", if_inet6: str = "/proc/net/if_inet6") -> dict[str, dict[str, Any]]:
    """Without iproute2: MACs from /sys, IPv4 (primary only) by ioctl, IPv6 from /proc."""
    import fcntl

    res: dict[str, dict[str, Any]] = {}
    for name in sorted(os.listdir(sys_net)):
        mac = read("%s/%s/address" % (sys_net, name)).strip()
        addrs = []
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            packed = struct.pack("256s", name[:15].encode())
            ip = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, packed)[20:24])      # SIOCGIFADDR
            mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x891b, packed)[20:24])    # SIOCGIFNETMASK
            addrs.append("%s/%d" % (ip, bin(struct.unpack("!I", socket.inet_aton(mask))[0]).count("1")))
        except OSError:
            pass
        finally:
            s.close()
        res[name] = {"mac": mac, "addresses": addrs}
    try:
        text = read(if_inet6)
    except OSError:
        return res
    for line in text.splitlines():
        h, _, plen, _, _, name = line.split()
        ip = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(h))
        res.setdefault(name, {"mac": "", "addresses": []})["addresses"].append("%s/%d" % (ip, int(plen, 16)))
    return res


def interfaces_from(job: Job | None) -> dict[str, dict[str, Any]]:
    if job is not None and job.rc == 0:
        try:
            return parse_ip_json(job.text)
        except (ValueError, KeyError, TypeError):
            pass
    return sys_interfaces()


def interfaces(path: str = PATH) -> dict[str, dict[str, Any]]:
    return interfaces_from(finish([Job(IP_ARGV, SYSTEM_TIMEOUT, path=path)])[0])


# -- TCP listeners and the processes holding them ----------------------------------------------

def parse_proc_net_tcp(text: str, family: int) -> dict[str, dict[str, Any]]:
    """LISTEN sockets of one /proc/net/tcp or tcp6 text: {inode: {address, port, process None}}."""
    found = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or parts[3] != "0A":  # 0A: LISTEN
            continue
        hexip, hexport = parts[1].split(":")
        raw = bytes.fromhex(hexip)
        if family == socket.AF_INET:
            ip = socket.inet_ntop(family, raw[::-1])
        else:
            ip = socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
        found[parts[9]] = {"address": ip, "port": int(hexport, 16), "process": None}
    return found


def socket_owners(found: dict[str, dict[str, Any]], proc: str = "/proc") -> None:
    """Set "process" of each socket to the comm of a process holding it (root reads every fd)."""
    wanted = {"socket:[%s]" % inode: inode for inode in found}
    for pid in os.listdir(proc):
        if not wanted:
            return
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir("%s/%s/fd" % (proc, pid))
        except OSError:
            continue
        comm = None
        for fd in fds:
            try:
                target = os.readlink("%s/%s/fd/%s" % (proc, pid, fd))
            except OSError:
                continue
            if target in wanted:
                try:
                    comm = comm or read("%s/%s/comm" % (proc, pid)).strip()
                except OSError:
                    continue
                found[wanted.pop(target)]["process"] = comm


def listeners(proc: str = "/proc") -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            text = read("%s/net/%s" % (proc, name))
        except OSError:
            continue
        found.update(parse_proc_net_tcp(text, family))
    socket_owners(found, proc)
    return sorted(found.values(), key=lambda x: (x["port"], x["address"]))


# -- files: sha256 and stat in one pass; certificates ------------------------------------------

def _name(cache: dict[tuple[str, int], str], kind: str, num: int) -> str:
    key = (kind, num)
    if key not in cache:
        try:
            if kind == "user":
                import pwd
                cache[key] = pwd.getpwuid(num).pw_name
            else:
                import grp
                cache[key] = grp.getgrgid(num).gr_name
        except (KeyError, ImportError):
            cache[key] = str(num)
    return cache[key]


def stat_dict(st: os.stat_result, cache: dict[tuple[str, int], str] | None = None) -> dict[str, Any]:
    cache = {} if cache is None else cache
    return {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
            "owner": _name(cache, "user", st.st_uid), "group": _name(cache, "group", st.st_gid)}


def _open_regular(path: str) -> int:
    """An fd of `path` if it is a regular file (never blocks on a FIFO, never opens a device)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise IsADirectoryError("not a regular file") if os.path.isdir(path) else ValueError("not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError("not a regular file")
    return fd


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with os.fdopen(_open_regular(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MISSING = (FileNotFoundError, NotADirectoryError)


def file_facts(paths: list[str]) -> tuple[dict[str, str | None], dict[str, dict[str, Any] | None], dict[str, str]]:
    """(files, stats, errors). files: sha256 of a regular file, else None (missing, a directory or
    another kind of file, unreadable: the last with errors["files[PATH]"]). stats: mode bits, ids
    and names of what the path points to (symlinks followed), None when missing."""
    files: dict[str, str | None] = {}
    stats: dict[str, dict[str, Any] | None] = {}
    errors: dict[str, str] = {}
    names: dict[tuple[str, int], str] = {}
    for p in paths:
        files[p] = stats[p] = None
        try:
            st = os.stat(p)
        except MISSING:
            continue
        except OSError as e:
            errors["files[%s]" % p] = describe(e)
            continue
        stats[p] = stat_dict(st, names)
        if not stat.S_ISREG(st.st_mode):
            continue
        try:
            files[p] = sha256(p)
        except MISSING:            # removed meanwhile
            stats[p] = None
        except (OSError, ValueError) as e:
            errors["files[%s]" % p] = describe(e)
    return files, stats, errors


def read_cert(path: str) -> str:
    """The CERTIFICATE blocks of a PEM file ("" when it has none). Refuses any file that holds a
    private key: a probe never carries a secret."""
    with os.fdopen(_open_regular(path), "rb") as f:
        data = f.read(READ_LIMIT + 1)
    if len(data) > READ_LIMIT:
        raise ValueError("larger than %d bytes: not read" % READ_LIMIT)
    if b"PRIVATE KEY" in data:
        raise PermissionError("holds a PRIVATE KEY: not sent")
    import re

    return "".join(b.decode("ascii", "replace") + "\n" for b in re.findall(CERT_RE, data, re.DOTALL))


def cert_facts(paths: list[str]) -> tuple[dict[str, str | None], dict[str, str]]:
    certs: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    for p in paths:
        certs[p] = None
        try:
            certs[p] = read_cert(p)
        except MISSING:
            pass
        except (OSError, ValueError) as e:
            errors["certs[%s]" % p] = describe(e)
    return certs, errors


# -- services: one `systemctl show` ------------------------------------------------------------

SYSTEMCTL_ENV = dict(ENV, TZ="UTC")   # timestamps in UTC whatever the format


def systemctl_job(units: list[str], path: str = PATH, timestamp_option: bool = True) -> Job | None:
    if not units:
        return None
    option = ["--timestamp=us+utc"] if timestamp_option else []   # systemd >= 247
    return Job(["systemctl", "show"] + option + ["-p", SHOW_PROPERTIES] + [u + ".service" for u in units],
               SYSTEM_TIMEOUT, stderr="pipe", path=path, env=SYSTEMCTL_ENV)


def parse_timestamp(value: str) -> int:
    """Microseconds since the epoch of a systemd timestamp; 0 when empty or unknown.

    "@1700000000" (--timestamp=unix), "Tue 2023-11-14 22:13:20.123456 UTC" (us+utc), or
    "Tue 2023-11-14 22:13:20 UTC" (the default format under TZ=UTC)."""
    # imported here only: calendar imports locale (~10 ms of start-up on every node)
    import calendar
    import re

    value = value.strip()
    if not value or value == "n/a":
        return 0
    if value.startswith("@"):
        return round(float(value[1:]) * 1000000)
    m = re.match(r"^\w+ (\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))? (UTC|GMT|\+0000)$", value)
    if not m:
        return 0
    secs = calendar.timegm(tuple(int(x) for x in m.groups()[:6]) + (0, 0, 0))
    return secs * 1000000 + int((m.group(7) or "0").ljust(6, "0"))


def parse_systemctl_show(text: str) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """(services, started) of `systemctl show -p SHOW_PROPERTIES UNITS...` output."""
    services, started = {}, {}
    for block in text.strip().split("\n\n"):
        d = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if not d.get("Id"):
            continue
        name = d["Id"].rsplit(".service", 1)[0]
        if d.get("LoadState") == "not-found":
            services[name] = {"active": "inactive", "enabled": "not-found"}
        else:
            services[name] = {"active": d.get("ActiveState", ""), "enabled": d.get("UnitFileState", "")}
        started[name] = parse_timestamp(d.get("ActiveEnterTimestamp", ""))
    return services, started


def services_from(job: Job | None, units: list[str], path: str = PATH) -> tuple[dict[str, dict[str, str]] | None, dict[str, int] | None]:
    """(services, started), ({}, {}) with no units, (None, None) when systemctl fails."""
    if job is None:
        return {}, {}
    if job.rc not in (0, None) and b"timestamp" in bytes(job.err).lower():
        job = finish([systemctl_job(units, path, timestamp_option=False)])[0]  # type: ignore[list-item]
    if job.rc != 0:
        return None, None
    return parse_systemctl_show(job.text)


def services(units: list[str], path: str = PATH) -> tuple[dict[str, dict[str, str]] | None, dict[str, int] | None]:
    job = systemctl_job(units, path)
    return services_from(finish([job])[0] if job else None, units, path)


# -- binaries' versions and named commands -----------------------------------------------------

def version_jobs(binaries: list[str], path: str = PATH, timeout: float = VERSION_TIMEOUT) -> dict[str, Job]:
    return {b: Job([b] + VERSION_ARGS.get(b, ["--version"]), timeout, stderr="stdout", path=path)
            for b in binaries}


def versions_from(jobs: dict[str, Job]) -> dict[str, str | None]:
    """First non-empty line of each version output; None when not installed, "" when it hung."""
    res: dict[str, str | None] = {}
    for b, j in jobs.items():
        if j.proc is None:
            res[b] = None
        else:
            lines = [line.strip() for line in j.text.splitlines() if line.strip()]
            res[b] = lines[0] if lines and not j.timed_out else ""
    return res


def versions(binaries: list[str], path: str = PATH, timeout: float = VERSION_TIMEOUT) -> dict[str, str | None]:
    jobs = version_jobs(binaries, path, timeout)
    finish(list(jobs.values()))
    return versions_from(jobs)


def command_jobs(commands: dict[str, Any], path: str = PATH) -> dict[str, Job]:
    """commands: {name: [argv...] or {"argv": [...], "timeout": seconds}}."""
    jobs = {}
    for name, spec in commands.items():
        if isinstance(spec, dict):
            argv, timeout = spec["argv"], float(spec.get("timeout") or COMMAND_TIMEOUT)
        else:
            argv, timeout = spec, COMMAND_TIMEOUT
        stderr = spec.get("stderr", "null") if isinstance(spec, dict) else "null"
        own = spec.get("own_deadline") if isinstance(spec, dict) else None
        jobs[name] = Job([str(a) for a in argv], timeout, stderr=stderr, path=path, own_deadline=own)
        if isinstance(spec, dict):
            jobs[name].limit = int(spec.get("limit") or OUT_LIMIT)   # type: ignore[attr-defined]
            jobs[name].tail = bool(spec.get("tail"))                 # type: ignore[attr-defined]
    return jobs


def commands_from(jobs: dict[str, Job]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, j in jobs.items():
        limit = getattr(j, "limit", OUT_LIMIT)
        text = "" if j.missing else j.text.strip()
        out[name] = {"rc": j.rc, "out": text[-limit:] if getattr(j, "tail", False) else text[:limit]}
    return out


def commands(spec: dict[str, Any], path: str = PATH) -> dict[str, dict[str, Any]]:
    jobs = command_jobs(spec, path)
    finish(list(jobs.values()))
    return commands_from(jobs)


# -- the rest ----------------------------------------------------------------------------------

CGROUP_ARGV = ["stat", "-fc", "%T", "/sys/fs/cgroup"]


def cgroup_fs_from(job: Job) -> str:
    """The file system type at /sys/fs/cgroup: "cgroup2fs" on a cgroup v2 (unified) host,
    "tmpfs" on a v1 or hybrid one (what the kubelet's cgroup v1 check looks at)."""
    text = job.text.strip()
    if job.rc != 0 or not text:
        raise OSError("stat /sys/fs/cgroup failed: " + (text or "exit %s" % job.rc))
    return text.splitlines()[0]


def kernel_features() -> dict[str, bool]:
    release = os.uname().release

    def module(path: str) -> bool:
        base = "/lib/modules/%s/kernel/%s" % (release, path)
        return any(os.path.exists(base + ext) for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"))
    try:
        fs = read("/proc/filesystems")
    except OSError:
        fs = ""
    return {"br_netfilter": os.path.isdir("/proc/sys/net/bridge") or module("net/bridge/br_netfilter"),
            "overlay": "\toverlay" in fs or module("fs/overlayfs/overlay")}


def leftovers(paths: list[str]) -> dict[str, bool]:
    res = {}
    for p in paths:
        if p.endswith("manifests"):
            res[p] = os.path.isdir(p) and bool(os.listdir(p))
        else:
            res[p] = os.path.exists(p)
    return res


def marker(path: str) -> dict[str, Any] | None:
    try:
        value = json.loads(read(path))
    except FileNotFoundError:
        return None
    except ValueError:
        return {"invalid": True}
    return value if isinstance(value, dict) else {"invalid": True}


def disk_usage(paths: list[str]) -> dict[str, dict[str, Any] | None]:
    """Size and use of the file system holding each path, as df counts it (reserved blocks
    are used); None when the path is missing."""
    res: dict[str, dict[str, Any] | None] = {}
    for p in paths:
        try:
            st = os.statvfs(p)
        except MISSING:
            res[p] = None
            continue
        used = st.f_blocks - st.f_bfree
        usable = used + st.f_bavail
        res[p] = {"total_mb": st.f_blocks * st.f_frsize // (1 << 20),
                  "used_pct": round(100.0 * used / usable, 1) if usable else 0.0}
    return res


def sysctl_values(names: list[str]) -> dict[str, str | None]:
    res: dict[str, str | None] = {}
    for n in names:
        try:
            res[n] = read("/proc/sys/" + n.replace(".", "/")).strip()
        except OSError:
            res[n] = None
    return res


TEXT_LIMIT = 256 * 1024


def texts(paths: list[str]) -> tuple[dict[str, str | None], dict[str, str]]:
    """Text of small files (configs); a file holding a private key is never sent."""
    res: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    for p in paths:
        res[p] = None
        try:
            with os.fdopen(_open_regular(p), "rb") as f:
                data = f.read(TEXT_LIMIT + 1)
        except MISSING:
            continue
        except (OSError, ValueError) as e:
            errors["texts[%s]" % p] = describe(e)
            continue
        if len(data) > TEXT_LIMIT:
            errors["texts[%s]" % p] = "larger than %d bytes: not read" % TEXT_LIMIT
        elif b"PRIVATE KEY" in data:
            errors["texts[%s]" % p] = "holds a PRIVATE KEY: not sent"
        else:
            res[p] = data.decode("utf-8", "replace")
    return res, errors


def process_states(names: list[str], proc: str = "/proc") -> dict[str, list[str]]:
    """{command name: [state letter (R, S, D, T stopped, Z ...) of each process]}."""
    res: dict[str, list[str]] = {n: [] for n in names}
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            stat_line = read("%s/%s/stat" % (proc, pid))
        except OSError:
            continue
        comm = stat_line[stat_line.find("(") + 1:stat_line.rfind(")")]
        if comm in res:
            res[comm].append(stat_line[stat_line.rfind(")") + 2:][:1])
    return res


def unix_ask(path: str, send: str, timeout: float = 5.0) -> str:
    """What a unix stream socket answers to `send` (e.g. haproxy's stats socket)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(send.encode())
        chunks = []
        while sum(map(len, chunks)) < READ_LIMIT:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        s.close()
    return b"".join(chunks).decode("utf-8", "replace")


def sockets(spec: dict[str, Any]) -> tuple[dict[str, str | None], dict[str, str]]:
    res: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    for name, ask in spec.items():
        res[name] = None
        try:
            res[name] = unix_ask(ask["path"], ask.get("send", ""))
        except Exception as e:
            errors["sockets[%s]" % name] = describe(e)
    return res, errors


def probe(params: dict[str, Any]) -> dict[str, Any]:
    """Every fact, as one JSON-ready dict."""
    global PATIENCE
    PATIENCE = float(params.get("patience") or 1)
    began = time.monotonic()
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    units = list(params.get("services", []))
    # start every subprocess first: they run while this process reads files
    jobs: list[Job] = []

    def start(make: Callable[[], Any]) -> Any:
        try:
            made = make()
        except Exception as e:
            errors["start"] = describe(e)
            return None
        jobs.extend(made.values() if isinstance(made, dict) else [made] if made else [])
        return made
    ip = start(lambda: Job(IP_ARGV, SYSTEM_TIMEOUT))
    show = start(lambda: systemctl_job(units))
    vjobs = start(lambda: version_jobs(list(params.get("binaries", []))))
    cjobs = start(lambda: command_jobs(dict(params.get("commands", {}))))
    cgroup = start(lambda: Job(CGROUP_ARGV, SYSTEM_TIMEOUT))

    guard(out, "hostname", socket.gethostname)
    guard(out, "os", lambda: parse_os_release(read("/etc/os-release")))
    out.update(out.pop("os", {}))
    guard(out, "arch", lambda: os.uname().machine)
    guard(out, "kernel", lambda: os.uname().release)
    guard(out, "cpus", cpus)
    guard(out, "mem_mb", lambda: mem_mb(read("/proc/meminfo")))
    guard(out, "swap_mb", lambda: swap_mb(read("/proc/swaps")))
    guard(out, "init", lambda: read("/proc/1/comm").strip())
    guard(out, "listeners", listeners)
    guard(out, "files", lambda: file_facts(list(params.get("paths", []))))
    if "files" in out:
        out["files"], out["stats"], more = out["files"]
        errors.update(more)
    guard(out, "certs", lambda: cert_facts(list(params.get("certs", []))))
    if "certs" in out:
        out["certs"], more = out["certs"]
        errors.update(more)
    guard(out, "kernel_features", kernel_features)
    guard(out, "leftovers", lambda: leftovers(list(params.get("leftovers", []))))
    guard(out, "marker", lambda: marker(params.get("marker", "/etc/provisioner/cluster.json")))
    guard(out, "mem_available_mb", lambda: available_mb(read("/proc/meminfo")))
    if params.get("disks"):
        guard(out, "disks", lambda: disk_usage(list(params["disks"])))
    if params.get("sysctls"):
        guard(out, "sysctls", lambda: sysctl_values(list(params["sysctls"])))
    if params.get("processes"):
        guard(out, "processes", lambda: process_states(list(params["processes"])))
    for key, fn in (("texts", texts), ("sockets", sockets)):
        if params.get(key):
            guard(out, key, lambda fn=fn, key=key: fn(params[key]))
            if key in out:
                out[key], more = out[key]
                errors.update(more)

    guard(out, "jobs", lambda: finish(jobs))
    out.pop("jobs", None)
    guard(out, "interfaces", lambda: interfaces_from(ip))
    guard(out, "services", lambda: services_from(show, units))
    if "services" in out:
        out["services"], out["started"] = out["services"]
    if vjobs is not None:
        guard(out, "versions", lambda: versions_from(vjobs))
    if cjobs is not None:
        guard(out, "commands", lambda: commands_from(cjobs))
    if cgroup is not None:
        guard(out, "cgroup_fs", lambda: cgroup_fs_from(cgroup))
    labelled = [("ip", ip), ("systemctl", show), ("cgroup", cgroup)]
    labelled += [("version " + b, j) for b, j in (vjobs or {}).items()]
    labelled += [("command " + n, j) for n, j in (cjobs or {}).items()]
    out["timed_out"] = {label: {"argv": j.argv, "seconds": min(j.timeout, j.own_seconds)}
                        for label, j in labelled if j is not None and j.timed_out}
    if errors:
        out.setdefault("probe_errors", {}).update(errors)
    out["clock"] = time.time()
    out["clock_ran"] = time.monotonic() - began   # the controller bounds when it was read
    return out


def main(argv: list[str]) -> int:
    params = json.loads(argv[1]) if len(argv) > 1 else {}
    sys.stdout.write(json.dumps(probe(params)) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__" and len(sys.argv) > 1:
    sys.exit(main(sys.argv))
