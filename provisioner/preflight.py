"""Preflight: what would stop the install on each host, found from probed facts before any change.

`check(cluster, facts)` is a pure function of the inventory and `facts.probe` output; it returns
`HostProblem`s. Level "error" problems make `invoke cluster.preflight` exit non-zero; "info"
ones say what the prepare phase will change (swap). `render` prints one table per host.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import runtime
from .facts import Facts
from .model import CONTROL_PLANE, ETCD, LOADBALANCERS, WORKERS, Cluster, Node

SUPPORTED_OS = {"debian": ("11", "12", "13"), "ubuntu": ("22.04", "24.04")}
SUPPORTED_OS_TEXT = "Debian 11/12/13 or Ubuntu 22.04/24.04"
# Minimum memory (MB) per role, as kubespray checks it; a node with several roles needs the most.
MIN_MEM_MB = {CONTROL_PLANE: 1500, WORKERS: 1024, ETCD: 512, LOADBALANCERS: 256}
MIN_CPUS_CONTROL_PLANE = 2  # kubeadm's NumCPU preflight check
MAX_SKEW_S = 2.0
# Interfaces whose MAC is random or shared by design: not compared across hosts.
VIRTUAL_IFACES = ("lo", "docker", "cni", "flannel", "cali", "veth", "vxlan", "tunl", "kube-ipvs",
                  "nodelocaldns", "virbr", "br-", "ifb", "dummy", "kube-bridge")

K3S_PROCS = {"k3s", "k3s-server", "k3s-agent"}
K8S_SERVICES = {"kubelet", "k3s", "k3s-agent"}


@dataclass(frozen=True, order=True)
class HostProblem:
    host: str
    check: str
    message: str
    fix: str = ""
    level: str = "error"  # "error" stops the install; "warning" is allowed but said every run;
    # "info" is something prepare will change

    def __str__(self) -> str:
        fix = f" ({self.fix})" if self.fix else ""
        return f"{self.host}: {self.check}: {self.message}{fix}"


def has_errors(problems: Iterable[HostProblem]) -> bool:
    return any(p.level == "error" for p in problems)


def report(problems: Iterable[HostProblem]) -> str:
    """Plain text, one problem a line, errors first (for a UserError message)."""
    rank = {"error": 0, "warning": 1}
    ordered = sorted(problems, key=lambda p: rank.get(p.level, 2))
    return "\n".join(f"{p.level}: {p}" for p in ordered)


def owners(cluster: Cluster) -> dict[int, tuple[set[str], set[str]]]:
    """port -> (process names, services) of our own components that listen on it."""
    return {
        cluster.api_port: ({"kube-apiserver", "haproxy"} | K3S_PROCS, {"haproxy", "kubelet", "k3s"}),
        cluster.endpoint_port: ({"haproxy", "kube-apiserver"} | K3S_PROCS,
                                {"haproxy", "kubelet", "k3s"}),
        2379: ({"etcd"} | K3S_PROCS, {"etcd", "kubelet", "k3s"}),
        2380: ({"etcd"} | K3S_PROCS, {"etcd", "kubelet", "k3s"}),
        10250: ({"kubelet"} | K3S_PROCS, K8S_SERVICES),
        10257: ({"kube-controller"} | K3S_PROCS, {"kubelet", "k3s"}),  # comm is cut at 15 chars
        10259: ({"kube-scheduler"} | K3S_PROCS, {"kubelet", "k3s"}),
    }


def ports_for(cluster: Cluster, node: Node) -> list[int]:
    """TCP ports the install will listen on at this node (UDP, e.g. flannel's 8472, is not probed)."""
    ports: list[int] = []
    kube = node.has(CONTROL_PLANE) or node.has(WORKERS)
    if node.has(CONTROL_PLANE):
        ports += [cluster.api_port, 10257, 10259]
        embedded = len(cluster.control_planes) > 1 if cluster.is_k3s else not cluster.external_etcd
        if embedded:
            ports += [2379, 2380]  # k3s HA embedded etcd, or kubeadm's stacked etcd
    if node.has(ETCD) and cluster.external_etcd:
        ports += [2379, 2380]
    if node.has(LOADBALANCERS) and cluster.ha_mode == "haproxy":
        ports.append(cluster.api_port)
    if cluster.ha_mode == "local" and node in cluster.lb_nodes:
        ports.append(cluster.endpoint_port)
    if kube:
        ports.append(10250)
    return sorted(set(ports))


def _min_mem(node: Node) -> tuple[int, str]:
    need = [(MIN_MEM_MB[r], r) for r in node.roles if r in MIN_MEM_MB]
    return max(need) if need else (0, "")


def _is_local(ip: str, f: Facts) -> bool:
    try:
        want = ipaddress.ip_address(ip)
    except ValueError:
        return True  # a DNS name: nothing to compare
    for iface, info in f.interfaces.items():
        for cidr in info.get("addresses", []):
            addr = ipaddress.ip_interface(cidr)
            if addr.ip == want or (iface == "lo" and want in addr.network):
                return True
    return False


def _macs(f: Facts) -> dict[str, str]:
    return {name: info["mac"].lower() for name, info in f.interfaces.items()
            if info.get("mac") and info["mac"] != "00:00:00:00:00:00"
            and not name.startswith(VIRTUAL_IFACES)}


def check_host(cluster: Cluster, node: Node, f: Facts) -> list[HostProblem]:
    """Everything about one reachable host on its own."""
    out: list[HostProblem] = []
    add = lambda check, msg, fix="", level="error": out.append(HostProblem(node.name, check, msg, fix, level))  # noqa: E731
    kube = node.has(CONTROL_PLANE) or node.has(WORKERS)

    for line in f.unanswered():
        add("probe", f"{line} (asked twice): the run cannot tell what is there",
            "see why on the host (load, a hung daemon), then run again")
    if f.os_version not in SUPPORTED_OS.get(f.os_id, ()):
        add("os", f"{f.os_pretty or f.os_id + ' ' + f.os_version} is not supported",
            f"use {SUPPORTED_OS_TEXT}")
    if not f.is_systemd:
        add("init", f"PID 1 is {f.init or 'unknown'}, not systemd", "boot the host with systemd as init")

    need, role = _min_mem(node)
    if f.mem_mb < need:
        add("memory", f"{f.mem_mb} MB of memory, {role} needs at least {need} MB",
            "give the host more memory or move the role to another host")
    if node.has(CONTROL_PLANE) and f.cpus < MIN_CPUS_CONTROL_PLANE:
        add("cpus", f"{f.cpus} CPU, a control plane needs at least {MIN_CPUS_CONTROL_PLANE}",
            "give the host another CPU")
    if kube and f.swap_mb > 0:
        add("swap", f"swap is on ({f.swap_mb} MB); the prepare phase will turn it off for the kubelet",
            level="info")

    if kube:
        missing = [k for k in ("br_netfilter", "overlay") if not f.kernel_features.get(k, False)]
        if missing:
            add("kernel", f"kernel lacks {' and '.join(missing)}",
                "install the kernel modules package (e.g. linux-modules-extra) or use a stock kernel")

    if kube:
        out += runtime_problems(cluster, node, f)

    table = owners(cluster)
    for port in ports_for(cluster, node):
        procs, services = table.get(port, (set(), set()))
        for lst in f.listening(port):
            who = lst.get("process")
            ours = who in procs if who else any(f.active(s) for s in services)
            if not ours:
                add("port", f"TCP port {port} is already taken by {who or 'another process'} "
                    f"on {lst.get('address')}", f"stop that service or move it to another port")
                break

    if not _is_local(node.address, f):
        have = ", ".join(a for a in f.addresses if not a.startswith(("127.", "::1", "fe80:"))) or "none"
        add("address", f"inventory address {node.address} is not configured on the host (it has {have})",
            "set ansible_host to an address of the host (cluster traffic uses it)")

    if abs(f.skew) > MAX_SKEW_S:
        add("clock", f"clock is {f.skew:+.1f} s off the controller's",
            "enable time sync (chrony or systemd-timesyncd) on the host and the controller")

    present = [p for p, there in f.leftovers.items() if there]
    marker = f.marker or {}
    ours = (marker.get("cluster_name") == cluster.cluster_name
            and marker.get("distribution") == cluster.distribution)
    if present and not ours:
        whose = (f"cluster {marker.get('cluster_name')!r} ({marker.get('distribution')})" if marker
                 else "an install not made by this provisioner")
        add("leftovers", f"{', '.join(present)} left by {whose}",
            f"wipe it with `invoke cluster.reset -i {cluster.source}`")
    return out


CGROUP_V2_HOW = ("boot the host with systemd.unified_cgroup_hierarchy=1 on the kernel command "
                 "line (e.g. GRUB_CMDLINE_LINUX in /etc/default/grub, update-grub) and reboot, "
                 "or use an OS that boots cgroup v2 (Debian 11+, Ubuntu 21.10+)")


def runtime_problems(cluster: Cluster, node: Node, f: Facts) -> list[HostProblem]:
    """cgroup v2 for the minors whose kubelet refuses v1, and an OS containerd new enough for
    the minor (containerd_source: os; the bundle's is pinned per minor)."""
    out = []
    minor = cluster.version_minor
    if runtime.needs_cgroup_v2(cluster) and f.cgroup_v2 is False:
        found = f"cgroup v1 (/sys/fs/cgroup is {f.cgroup_fs}, not cgroup2fs)"
        if cluster.allow_cgroup_v1:
            out.append(HostProblem(
                node.name, "cgroup", f"{found}: the kubelet of Kubernetes {minor} runs here only "
                "because allow_cgroup_v1 is set (failCgroupV1: false); cgroup v1 is in "
                "maintenance upstream and will be removed", CGROUP_V2_HOW, "warning"))
        else:
            out.append(HostProblem(
                node.name, "cgroup", f"{found}: the kubelet of Kubernetes {minor} refuses to "
                "run on cgroup v1", CGROUP_V2_HOW + "; or, knowingly, set allow_cgroup_v1: true"))
    if not cluster.is_k3s and not runtime.from_bundle(cluster):
        least = runtime.pins(cluster).containerd_min
        line = f.versions.get("containerd") or ""
        have = CONTAINERD_VERSION.search(line)
        if have and version_tuple(have.group(1)) < version_tuple(least):
            out.append(HostProblem(
                node.name, "containerd", f"containerd {have.group(1)} is installed; Kubernetes "
                f"{minor} needs containerd >= {least}", CONTAINERD_FIX.format(least=least)))
    return out


def check(cluster: Cluster, facts: Mapping[str, Facts]) -> list[HostProblem]:
    """All problems of all hosts of `cluster`, sorted by inventory order then check."""
    problems: list[HostProblem] = []
    up: dict[str, Facts] = {}
    for node in cluster.nodes:
        f = facts.get(node.name)
        if f is not None and f.sudo_fix:
            problems.append(HostProblem(node.name, "sudo", f.error.removeprefix(f"{node.name}: "),
                                        f.sudo_fix))
            continue
        if f is None or not f.reachable:
            why = f.error if f and f.error else "not probed"
            problems.append(HostProblem(node.name, "reachable", why,
                                        f"`ssh -p {node.ssh_port} {node.ssh_user}@{node.address}` must work "
                                        "with the inventory's key"))
            continue
        up[node.name] = f
        problems += check_host(cluster, node, f)

    # across hosts: hostnames and MACs must be unique (cloned VMs)
    by_hostname: dict[str, list[str]] = defaultdict(list)
    by_mac: dict[str, list[str]] = defaultdict(list)
    for name, f in up.items():
        by_hostname[f.hostname].append(name)
        for mac in set(_macs(f).values()):
            by_mac[mac].append(name)
    for hostname, names in by_hostname.items():
        # the prepare phase names every host after its inventory name: a shared hostname is
        # fixed there, so it is info on the hosts that will be renamed
        if len(names) > 1:
            for n in names:
                if n != hostname:
                    others = ", ".join(o for o in names if o != n)
                    problems.append(HostProblem(
                        n, "hostname", f"hostname {hostname!r} is shared with {others}; "
                        f"the prepare phase will set it to {n!r}", level="info"))
    for mac, names in by_mac.items():
        if len(names) > 1:
            for n in names:
                others = ", ".join(o for o in names if o != n)
                problems.append(HostProblem(n, "mac", f"MAC address {mac} is also on {others}",
                                            "give each cloned VM its own MAC address"))

    order = {n.name: i for i, n in enumerate(cluster.nodes)}
    return sorted(problems, key=lambda p: (order.get(p.host, 1 << 30), p.check, p.message))


def render(problems: list[HostProblem], facts: Mapping[str, Facts], console=None) -> None:
    """One rich table per host with problems, then a one-line summary."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    by_host: dict[str, list[HostProblem]] = defaultdict(list)
    for p in problems:
        by_host[p.host].append(p)
    for host, items in by_host.items():
        f = facts.get(host)
        title = host if not f or not f.reachable else f"{host} ({f.os_pretty}, {f.cpus} CPU, {f.mem_mb} MB)"
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("level")
        table.add_column("check")
        table.add_column("problem")
        table.add_column("fix")
        for p in items:
            style = {"error": "red", "warning": "yellow"}.get(p.level, "cyan")
            table.add_row(f"[{style}]{p.level}[/{style}]", p.check, p.message, p.fix)
        console.print(table)
    errors = sum(p.level == "error" for p in problems)
    hosts = len({p.host for p in problems if p.level == "error"})
    ok = [h for h in facts if h not in by_host]
    if errors:
        console.print(f"[red]preflight: {errors} problem(s) on {hosts} host(s)[/red]"
                      + (f"; fine: {', '.join(ok)}" if ok else ""))
    else:
        warned = sum(p.level == "warning" for p in problems)
        console.print(f"[green]preflight: {len(facts)} host(s) ready[/green]"
                      + (f" [yellow]({warned} warning(s) above)[/yellow]" if warned else ""))


# -- package versions: what the phases install, from the node's own package lists ---------------

POLICY = "packages"  # the probe command: `apt-cache policy PKG...`
# `containerd --version`: "containerd containerd.io 1.7.24 ..." / "... github.com/containerd/containerd/v2 v2.1.9 ..."
CONTAINERD_VERSION = re.compile(r"\sv?(\d+\.\d+\.\d+)")
CONTAINERD_FIX = ("set containerd_source: bundle (the upstream containerd the bundle carries for "
                  "this minor), or install containerd >= {least} from another package source")


def policy_versions(text: str) -> dict[str, str]:
    """{package: installed version, else candidate} from `apt-cache policy` output."""
    out, pkg, have = {}, None, {}
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            pkg, have = line.strip()[:-1], {}
            continue
        key, _, value = line.strip().partition(":")
        if pkg and key in ("Installed", "Candidate"):
            have[key] = value.strip()
            version = have.get("Installed", "(none)")
            if version == "(none)":
                version = have.get("Candidate", "(none)")
            if version != "(none)":
                out[pkg] = version
    return out


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numbers of a Debian version: `1:1.6.20~ds1-1+b1` -> (1, 6, 20)."""
    upstream = version.split(":", 1)[-1]
    numbers = []
    for part in upstream.replace("~", ".").replace("-", ".").replace("+", ".").split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def package_problems(node: Node, f: Facts, minimum: Mapping[str, str]) -> list[HostProblem]:
    """Packages the phases would install whose version (installed, else the candidate of the
    node's package lists) is older than the cluster needs. Nothing is said when the lists are
    not read yet (a fresh image): the phase's own install then fails clearly."""
    result = (getattr(f, "commands", None) or {}).get(POLICY) or {}
    found = policy_versions(result.get("out") or "") if result.get("rc") == 0 else {}
    out = []
    for pkg, least in sorted(minimum.items()):
        have = found.get(pkg)
        if have and version_tuple(have) < version_tuple(least):
            fix = (CONTAINERD_FIX.format(least=least) if pkg == "containerd" else
                   f"use Debian 12+ or Ubuntu 24.04+, or a package source with {pkg} >= {least}")
            out.append(HostProblem(
                node.name, "packages", f"{pkg} {have} from this host's package sources is older "
                f"than {least}, the oldest that works with the cluster's Kubernetes version", fix))
    return out
