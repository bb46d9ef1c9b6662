"""What a host is and has, read in one round trip per host. This module only reads.

`probe(pool, paths_by_host)` sends the text of provisioner/probe.py to each host as the stdin of
one `python3 - 'PARAMS'` command (parameters as JSON); it prints one JSON document, which becomes
a `Facts`. Unreachable hosts get `Facts(reachable=False, error=...)`, so every host of the pool
has an entry.
"""

from __future__ import annotations

import functools
import json
import shlex
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any, Iterable, Mapping

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
    clock: float = 0.0                # host's time.time() when the probe had read the rest
    controller_clock: float = 0.0     # controller's time when the answer arrived
    files: dict = field(default_factory=dict)        # path -> sha256 hex or None (missing, not a file)
    services: dict = field(default_factory=dict)     # unit -> {"active": str, "enabled": str}
    versions: dict = field(default_factory=dict)     # binary -> first line of its version, or None
    kernel_features: dict = field(default_factory=dict)  # br_netfilter, overlay -> bool
    leftovers: dict = field(default_factory=dict)    # LEFTOVERS path -> present
    marker: dict | None = None        # contents of MARKER, None when absent
    seconds: float = 0.0              # how long the probe took
    # new fields go last (positional compatibility)
    stats: dict = field(default_factory=dict)        # path (as in files) -> {"mode", "uid", "gid", "owner", "group"} or None
    started: dict = field(default_factory=dict)      # unit -> ActiveEnterTimestamp, usec since epoch, or 0
    commands: dict = field(default_factory=dict)     # name -> {"rc": int or None (timed out), "out": str}
    certs: dict = field(default_factory=dict)        # path -> its CERTIFICATE PEM blocks or None; never a key
    probe_errors: dict = field(default_factory=dict)  # fact or "files[PATH]", "certs[PATH]" -> why it is missing
    sudo_fix: str = ""                # the user is not root and sudo failed: how to fix it (error says why)
    cgroup_fs: str = ""               # file system at /sys/fs/cgroup: "cgroup2fs" (v2) or "tmpfs" (v1/hybrid)
    # read only when asked (cluster.status / cluster.doctor: provisioner/doctor.py)
    mem_available_mb: int = 0
    disks: dict = field(default_factory=dict)        # path -> {"total_mb", "used_pct"} or None
    sysctls: dict = field(default_factory=dict)      # name -> value or None
    texts: dict = field(default_factory=dict)        # path -> text or None (never a key)
    processes: dict = field(default_factory=dict)    # command name -> [state letters]
    sockets: dict = field(default_factory=dict)      # name -> what the unix socket answered, or None
    # what did not answer even when asked again with RETRY_PATIENCE: "command NAME",
    # "version NAME", "ip", "systemctl", "cgroup" -> {"argv", "seconds"}; its facts say nothing
    timed_out: dict = field(default_factory=dict)
    clock_ran: float = 0.0            # seconds the probe had run when it read `clock`
    controller_sent: float = 0.0      # controller's time when it sent the probe

    def unanswered(self) -> list[str]:
        """One line per read that did not answer (see `timed_out`)."""
        return [f"`{' '.join(t['argv'])}` ({label}) did not answer within {t['seconds']:.0f} s"
                for label, t in sorted(self.timed_out.items())]

    @classmethod
    def from_dict(cls, host: str, data: dict) -> "Facts":
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in known}, "host": host})

    @property
    def cgroup_v2(self) -> bool | None:
        """True on a cgroup v2 host, False on v1 or hybrid, None when not probed."""
        return self.cgroup_fs == "cgroup2fs" if self.cgroup_fs else None

    @property
    def is_systemd(self) -> bool:
        return self.init == "systemd"

    @property
    def skew(self) -> float:
        """How far the host's clock is off the controller's at least, in seconds (positive:
        ahead). The host read it after the controller sent the probe and the probe ran
        `clock_ran` seconds, and before the answer arrived: a reading inside that window is 0
        (a slow answer is no clock off); outside, the distance to the window."""
        earliest = self.controller_sent + self.clock_ran if self.controller_sent else self.controller_clock
        if self.clock > self.controller_clock:
            return self.clock - self.controller_clock
        return min(0.0, self.clock - earliest)

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


PROBE_MODULE = "probe.py"   # provisioner/probe.py: the program that runs on each node
# One argument of a command line is limited to 128 KiB on Linux (MAX_ARG_STRLEN), and the remote
# shell gets the whole command as one argument: larger parameters go on stdin after the source.
MAX_PARAMS_ARG = 96 * 1024
# A host where a read was killed at its deadline is probed again, alone, with every timeout
# this many times longer: on a loaded or emulated node the reads started together compete for
# its CPUs, and a read that did not answer must not pass for a "no" (a missing label, a
# stopped service) that the run would then try to fix.
RETRY_PATIENCE = 4


@functools.lru_cache(maxsize=1)
def probe_source() -> str:
    """The text of provisioner/probe.py, exactly as it is shipped to the nodes."""
    return resources.files(__package__).joinpath(PROBE_MODULE).read_text(encoding="utf-8")


EXTRA_PARAMS = ("disks", "sysctls", "texts", "processes", "sockets")


def params_for(paths: Iterable[str] = (), services=SERVICES, binaries=BINARIES,
               commands: Mapping[str, Any] | None = None, certs: Iterable[str] = (),
               extra: Mapping[str, Any] | None = None) -> dict:
    """The JSON parameters of probe.py for one host. commands: {name: [argv...]}, or
    {name: {"argv": [...], "timeout": seconds}} for another timeout than probe.COMMAND_TIMEOUT."""
    cmds = {}
    for name, spec in (commands or {}).items():
        spec = dict(spec) if isinstance(spec, Mapping) else {"argv": spec}
        if isinstance(spec["argv"], str) or not spec["argv"]:
            raise ValueError(f"command {name!r}: argv must be a non-empty list (no shell)")
        cmds[str(name)] = {**spec, "argv": [str(a) for a in spec["argv"]]}
    params = {"paths": list(paths), "services": list(services), "binaries": list(binaries),
              "leftovers": list(LEFTOVERS), "marker": MARKER, "commands": cmds, "certs": list(certs)}
    for key, value in (extra or {}).items():
        if key not in EXTRA_PARAMS:
            raise ValueError(f"probe parameter {key!r}: not one of {', '.join(EXTRA_PARAMS)}")
        params[key] = value
    return params


def command_for(params: dict) -> tuple[str, str]:
    """(command, stdin) for one host: `python3 - 'PARAMS'` with probe.py's text on stdin."""
    arg = json.dumps(params, separators=(",", ":"))
    if len(arg) <= MAX_PARAMS_ARG:
        return f"python3 - {shlex.quote(arg)}", probe_source()
    return "python3 -", script_for(params=params)


def script_for(paths: Iterable[str] = (), services=SERVICES, binaries=BINARIES, *,
               params: dict | None = None) -> str:
    """A standalone program (for `python3 -` without arguments): probe.py plus a call of its main."""
    params = params_for(paths, services, binaries) if params is None else params
    arg = json.dumps(params, separators=(",", ":"))
    return probe_source() + f"\nsys.exit(main([\"-\", {arg!r}]))\n"


def __getattr__(name: str) -> Any:
    if name == "SCRIPT":   # before probe.py existed, the script was this string
        return probe_source()
    raise AttributeError(name)


def probe(pool, paths_by_host: Mapping[str, Iterable[str]] | None = None, services=SERVICES,
          binaries=BINARIES, hosts: Iterable[str] | None = None, timeout: float = 60,
          commands_by_host: Mapping[str, Mapping[str, Any]] | None = None,
          certs_by_host: Mapping[str, Iterable[str]] | None = None,
          extra_by_host: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, "Facts"]:
    """Facts of every host of `pool` (or `hosts`), one command per host, all in parallel.

    paths_by_host {host: [path]} -> files, stats; certs_by_host {host: [path]} -> certs;
    commands_by_host {host: {name: [argv...]}} -> commands (no shell; each with a 10 s timeout,
    or {name: {"argv": [...], "timeout": s}}; keep it well below `timeout`, which bounds the whole
    probe of a host); extra_by_host {host: {disks, sysctls, texts, processes, sockets}}. Hosts
    without an entry get empty dicts. A host where a read timed out is probed once more with
    RETRY_PATIENCE; what still does not answer is in its `timed_out`."""
    paths_by_host, commands_by_host, certs_by_host = paths_by_host or {}, commands_by_host or {}, certs_by_host or {}
    extra_by_host = extra_by_host or {}
    names = list(pool.nodes) if hosts is None else list(hosts)
    params = {n: params_for(paths_by_host.get(n, []), services, binaries, commands_by_host.get(n),
                            certs_by_host.get(n, []), extra_by_host.get(n)) for n in names}
    facts = _probe_round(pool, params, timeout)
    slow = [n for n, f in facts.items() if f.timed_out]
    if slow:  # once more, with patience: what answers now is the fact
        facts.update(_probe_round(pool, {n: {**params[n], "patience": RETRY_PATIENCE}
                                         for n in slow}, timeout * RETRY_PATIENCE))
    return facts


def _probe_round(pool, params: Mapping[str, dict], timeout: float) -> dict[str, "Facts"]:
    cmd, stdin = {}, {}
    for n, p in params.items():
        cmd[n], stdin[n] = command_for(p)
    # the whole probe of a host outlasts its longest read (ctr images ls: 120 s)
    longest = max((float(c.get("timeout") or 0) * float(p.get("patience") or 1)
                   for p in params.values() for c in p["commands"].values()), default=0)
    timeout = max(timeout, longest + 30)
    results = pool.run(cmd, hosts=list(params), stdin=stdin, timeout=timeout)
    facts = {}
    sudo_failed = getattr(pool, "sudo_errors", {})
    for name, r in results.items():
        if name in sudo_failed:
            message, fix = sudo_failed[name]
            facts[name] = Facts(name, reachable=False, error=f"{name}: {message}", sudo_fix=fix)
            continue
        if r.rc is None:  # lost, or the whole probe passed its deadline (asked again)
            late = {"probe": {"argv": ["python3", "-"], "seconds": timeout}} \
                if r.seconds >= timeout else {}
            facts[name] = Facts(name, reachable=False, error=r.error, seconds=r.seconds,
                                timed_out=late)
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
        # the host read its clock between these two (see Facts.skew)
        data["controller_sent"], data["controller_clock"] = r.started, r.started + r.seconds
        data["seconds"] = r.seconds
        for key in ("services", "started", "files", "stats", "certs", "commands",
                    "timed_out") + EXTRA_PARAMS:
            data[key] = data.get(key) or {}
        facts[name] = Facts.from_dict(name, data)
    return facts
