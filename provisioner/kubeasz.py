"""Convert a kubeasz hosts file (`/etc/kubeasz/clusters/<name>/hosts`, Ansible INI) into our
YAML inventory: `invoke cluster.import --kubeasz HOSTS -o FILE`.

kubeasz's groups map onto our role groups; its variables onto our settings. Whatever has no
equivalent here is written into the new inventory as a comment (with the kubeasz line it came
from and what happens instead), never dropped:

    [etcd]          -> etcd (kubeasz always runs etcd as its own systemd service: external etcd)
    [kube_master]   -> control_plane        k8s_nodename -> the node's name (else its address)
    [kube_node]     -> workers
    [ex_lb]         -> loadbalancers, ha_mode haproxy; EX_APISERVER_VIP -> api_vip,
                       LB_ROLE master/backup -> keepalived_priority
    [chrony], [harbor] -> comments (no equivalent: every node runs chrony; no registry host)
    [all:vars]      -> settings (see VARS), the rest as comments

Without an [ex_lb] pair, kubeasz reaches the API servers through kube-lb, a local proxy on
every node: that is `ha_mode: local` here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import ini
from .errors import InvalidInventory, Problem, UserError
from .inventory import ANSIBLE_VARS, decode

# kubeasz group -> our role group (None: no equivalent, written as a comment). The dashed names
# are kubeasz 2.x's.
GROUPS = {
    "etcd": "etcd", "kube_master": "control_plane", "kube-master": "control_plane",
    "kube_node": "workers", "kube-node": "workers", "ex_lb": "loadbalancers",
    "ex-lb": "loadbalancers", "chrony": None, "harbor": None,
}
ROLE_ORDER = ("control_plane", "workers", "etcd", "loadbalancers")

# kubeasz variable -> (our setting, how to convert the value). Ansible connection variables
# are kept as they are.
VARS = {
    "CLUSTER_CIDR": "pod_cidr",
    "SERVICE_CIDR": "service_cidr",
    "CLUSTER_DNS_DOMAIN": "cluster_domain",
    "CLUSTER_NETWORK": "cni",
    "SECURE_PORT": "api_port",
    "K8S_VER": "kubernetes_version",
    "CLUSTER_NAME": "cluster_name",
    "SANDBOX_IMAGE": "sandbox_image",
    "LB_IF": "vip_interface",
}
# kubeasz variables with no equivalent: why, or what happens here instead.
NO_EQUIVALENT = {
    "CONTAINER_RUNTIME": "the runtime here is always containerd",
    "PROXY_MODE": "kube-proxy runs in its default mode (iptables); no setting for ipvs",
    "NODE_PORT_RANGE": "the API server's default NodePort range (30000-32767) is used",
    "bin_dir": "binaries go to fixed paths (/usr/local/bin)",
    "base_dir": "kubeasz's workspace; the state folder (state_dir) holds what this tool keeps",
    "cluster_dir": "kubeasz's per-cluster folder; see state_dir",
    "ca_dir": "certificates live where kubeadm puts them (/etc/kubernetes/pki)",
    "k8s_nodename": "an empty k8s_nodename means the node is named after its address",
    "EX_APISERVER_PORT": "haproxy on the load balancers listens on api_port, the API "
                         "servers' own port",
    "NODE_NAME": "etcd members are named after their nodes here",
    "NEW_INSTALL": "no harbor registry is installed here",
    "SELF_SIGNED_CERT": "no harbor registry is installed here",
    "HARBOR_DOMAIN": "no harbor registry is installed here; point registry_mirrors at it",
    "LB_ROLE": "",  # turned into keepalived_priority
    "EX_APISERVER_VIP": "",  # turned into api_vip
}
CNIS = ("flannel",)  # calico: refused by validation until its operator is in the bundle
# Variables a [group:vars] section hands to each of its hosts; others there become comments.
PER_HOST = set(ANSIBLE_VARS) | {"k8s_nodename", "LB_ROLE", "EX_APISERVER_VIP",
                                "EX_APISERVER_PORT"}
MASTER_PRIORITY, BACKUP_PRIORITY = 150, 100


@dataclass
class KHost:
    address: str  # the inventory name kubeasz uses: usually the IP
    line: int  # first line that lists it
    groups: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # group -> line listing the host
    vars: dict[str, tuple[Any, int]] = field(default_factory=dict)  # key -> (value, line)


@dataclass
class Result:
    text: str  # the new inventory
    nodes: dict[str, list[str]]  # role group -> node names
    comments: int  # settings kept as comments


def scalar(value: Any) -> str:
    """A YAML scalar for one value (quoted when YAML would read it as something else)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).removesuffix(
        "\n...\n").strip()


def shown(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def default_name(path: Path) -> str:
    """kubeasz keeps each cluster in clusters/<name>/hosts: that name; else k8s."""
    parent = path.resolve().parent
    if parent.parent.name == "clusters":
        name = re.sub(r"[^a-z0-9-]+", "-", parent.name.lower()).strip("-")
        if name:
            return name[:63]
    return "k8s"


def convert(path: str, name: str | None = None) -> Result:
    """The kubeasz hosts file at `path` as our inventory text; `InvalidInventory` naming the
    file and line of anything that cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidInventory([Problem(path, 0, "file", f"cannot read: {e.strerror}",
                                        "give the path of kubeasz's hosts file, e.g. "
                                        "/etc/kubeasz/clusters/NAME/hosts")]) from None
    text = decode(path, data)
    try:
        groups = ini.parse(text)
    except ini.IniError as e:
        key = e.key.split()[0] if e.key.strip() else "ini"
        raise InvalidInventory([Problem(path, e.line, key, e.message, e.fix)]) from None
    problems: list[Problem] = []

    def bad(line: int, key: str, message: str, fix: str) -> None:
        key = (str(key).split() or ["hosts"])[0]  # one word, as FILE:LINE: key: says
        problems.append(Problem(path, line, key, message, fix))

    hosts: dict[str, KHost] = {}
    all_vars: dict[str, tuple[Any, int]] = {}
    group_notes: list[str] = []  # [group:vars] with no equivalent
    for g in groups.values():
        if g.name == "all":
            all_vars = {k: (v, g.var_lines[k]) for k, v in g.vars.items()}
            for h in g.hosts:
                if "=" in h.name:
                    bad(h.line, h.name, "a variable in an [all] section, which lists hosts",
                        "write the section header as [all:vars]")
                else:
                    bad(h.line, h.name, "a host in [all]", "list it under [kube_master], "
                        "[kube_node], [etcd] or [ex_lb]")
            continue
        if g.name not in GROUPS:
            where = "before any [group] section" if g.name == "ungrouped" else f"[{g.name}]"
            bad(g.line, g.name if g.name != "ungrouped" else "hosts",
                f"{where}: not a kubeasz group", "a kubeasz hosts file has the groups "
                + ", ".join(k for k in GROUPS if "-" not in k) + "; rename or remove it")
            continue
        if g.children:
            bad(min(g.children.values()), f"[{g.name}:children]", "kubeasz hosts files have "
                "no :children sections", "list the hosts in the group itself")
        for h in g.hosts:
            host = hosts.setdefault(h.name, KHost(h.name, h.line))
            if g.name not in host.groups:
                host.groups.append(g.name)
            host.lines.setdefault(g.name, h.line)
            merged = {k: (v, g.var_lines[k]) for k, v in g.vars.items() if k in PER_HOST}
            merged |= {k: (v, h.var_lines[k]) for k, v in h.vars.items()}
            for k, (v, line) in merged.items():
                if k in host.vars and host.vars[k][0] != v and v != "":
                    if host.vars[k][0] == "":
                        host.vars[k] = (v, line)
                        continue
                    bad(line, k, f"{h.name} has {k}={shown(v)} here and "
                        f"{shown(host.vars[k][0])} on line {host.vars[k][1]}",
                        "give it one value")
                host.vars.setdefault(k, (v, line))
        for k, v in g.vars.items():
            if k not in PER_HOST:
                group_notes.append(f"[{g.name}:vars] {k}={shown(v)} (line {g.var_lines[k]}): "
                                   + (NO_EQUIVALENT.get(k) or "no equivalent here"))
    if problems:
        raise InvalidInventory(problems)
    if not name and "CLUSTER_NAME" in all_vars:
        name = str(all_vars["CLUSTER_NAME"][0])
    return _write(path, hosts, all_vars, group_notes, name or default_name(Path(path)), bad,
                  problems)


def _write(path, hosts, all_vars, group_notes, cluster_name, bad, problems) -> Result:
    settings: dict[str, tuple[Any, str]] = {}  # our key -> (value, comment)
    notes: list[str] = []  # kubeasz settings with no equivalent, as comment lines

    def note(key, value, line, why):
        notes.append(f"{key}={shown(value)} (line {line}): {why}")

    # -- nodes ------------------------------------------------------------------------------
    names: dict[str, str] = {}  # kubeasz host -> our node name
    seen: dict[str, int] = {}
    for h in hosts.values():
        if not any(GROUPS[g] for g in h.groups):
            continue
        nodename = str(h.vars.get("k8s_nodename", ("", 0))[0] or "")
        name = nodename.replace("_", "-").lower() if nodename else h.address
        if name in seen:
            bad(h.line, h.address, f"node name {name} is also the name of the host on line "
                f"{seen[name]}", "give each host its own k8s_nodename")
        seen[name] = h.line
        names[h.address] = name
        address = h.vars.get("ansible_host", (h.address, 0))[0]
        try:
            ipaddress.ip_address(str(address))
        except ValueError:
            bad(h.line, h.address, f"{h.address} is not an IP address and has no ansible_host",
                "add ansible_host=IP to the host's line")
    masters = [h for h in hosts.values() if any(GROUPS[g] == "control_plane" for g in h.groups)]
    if not masters:
        bad(1, "kube_master", "no host in [kube_master]", "list the control plane hosts under "
            "[kube_master]")

    # -- [ex_lb]: the haproxy + keepalived pair and its VIP --------------------------------
    lbs = [h for h in hosts.values() if any(GROUPS[g] == "loadbalancers" for g in h.groups)]
    priorities: dict[str, int] = {}
    if lbs:
        vips = {h.vars["EX_APISERVER_VIP"] for h in lbs if "EX_APISERVER_VIP" in h.vars}
        if len({v for v, _ in vips}) > 1:
            line = max(line for _, line in vips)
            bad(line, "EX_APISERVER_VIP", "the [ex_lb] hosts name different VIPs",
                "give every [ex_lb] host the same EX_APISERVER_VIP")
        elif vips:
            vip, line = min(vips, key=lambda v: v[1])
            settings["api_vip"] = (str(vip), f"kubeasz EX_APISERVER_VIP (line {line})")
        settings["ha_mode"] = ("haproxy", "kubeasz [ex_lb]: haproxy + keepalived on the "
                               "loadbalancers, holding the VIP")
        backups = 0
        for h in lbs:
            role, line = h.vars.get("LB_ROLE", ("backup", h.line))
            if role == "master":
                priorities[h.address] = MASTER_PRIORITY
            else:
                priorities[h.address] = BACKUP_PRIORITY - 10 * backups
                backups += 1
        ports = {h.vars["EX_APISERVER_PORT"] for h in lbs if "EX_APISERVER_PORT" in h.vars}
        api_port = str(all_vars.get("SECURE_PORT", (6443, 0))[0])
        for port, line in sorted(ports, key=lambda p: p[1])[:1]:
            note("EX_APISERVER_PORT", port, line, NO_EQUIVALENT["EX_APISERVER_PORT"]
                 + f" ({api_port})")
    elif len(masters) > 1:
        settings["ha_mode"] = ("local", "kubeasz without [ex_lb]: kube-lb, a local proxy to "
                               "every API server on each node")

    # -- [all:vars] -------------------------------------------------------------------------
    for key, (value, line) in all_vars.items():
        ours = VARS.get(key)
        if key in ANSIBLE_VARS:
            settings[key] = (value, "")
        elif ours == "cni" and value not in CNIS:
            note(key, value, line, f"{value} is not supported here (flannel only: Calico "
                 "needs its operator in the offline bundle, not built yet): flannel is used")
        elif ours == "kubernetes_version":
            v = str(value)
            settings[ours] = (v if v.startswith("v") else f"v{v}", f"kubeasz {key} (line {line})")
        elif ours == "api_port":
            try:
                settings[ours] = (int(value), f"kubeasz {key} (line {line})")
            except (TypeError, ValueError):
                bad(line, key, f"{shown(value)} is not a port number", "write a port, e.g. 6443")
        elif ours == "cluster_domain":
            settings[ours] = (str(value).rstrip("."), f"kubeasz {key} (line {line})")
        elif ours == "cluster_name":
            continue  # the name given, else this one (see convert)
        elif ours is not None:
            settings[ours] = (value, f"kubeasz {key} (line {line})")
        elif key == "k8s_nodename" and value in ("", None):
            continue  # kubeasz's default: nodes are named after their addresses, as here
        else:
            note(key, value, line, NO_EQUIVALENT.get(key) or "no equivalent here")
    if problems:
        raise InvalidInventory(problems)

    # -- text -------------------------------------------------------------------------------
    out = [f"# Converted from the kubeasz hosts file {path} by `invoke cluster.import`.",
           "# kubeasz installs the binaries with its own units; here kubeadm (v1beta4) builds",
           "# the same roles. What has no equivalent here is kept below as a comment.",
           "all:", "  vars:", "    cluster:",
           f"      cluster_name: {scalar(cluster_name)}", "      distribution: kubeadm"]
    for key, (value, comment) in settings.items():
        if key in ANSIBLE_VARS or key == "cluster_name":
            continue
        out.append(f"      {key}: {scalar(value)}" + (f"  # {comment}" if comment else ""))
    for key in ANSIBLE_VARS:
        if key in settings:
            out.append(f"    {key}: {scalar(settings[key][0])}")
    notes += group_notes
    if notes:
        out.append("    # kubeasz settings with no equivalent here:")
        out += [f"    #   {n}" for n in notes]
    out.append("  children:")
    placed: set[str] = set()
    nodes: dict[str, list[str]] = {}
    for role in ROLE_ORDER:
        members = [h for h in hosts.values() if any(GROUPS[g] == role for g in h.groups)]
        if not members:
            continue
        out += [f"    {role}:", "      hosts:"]
        for h in members:
            nodes.setdefault(role, []).append(names[h.address])
            if h.address in placed:
                out.append(f"        {scalar(names[h.address])}:")
                continue
            placed.add(h.address)
            hv = {"ansible_host": str(h.vars.get("ansible_host", (h.address, 0))[0])}
            hv |= {k: v for k, (v, _) in h.vars.items() if k in ANSIBLE_VARS}
            if h.address in priorities:
                hv["keepalived_priority"] = priorities[h.address]
            body = ", ".join(f"{k}: {scalar(v)}" for k, v in hv.items())
            extra = [f"{k}={shown(v)} (line {line}): "
                     + (NO_EQUIVALENT.get(k) or "no equivalent here")
                     for k, (v, line) in h.vars.items() if k not in PER_HOST]
            notes += extra
            out += [f"        # kubeasz: {e}" for e in extra]
            out.append(f"        {scalar(names[h.address])}: {{{body}}}")
    for kgroup in ("chrony", "harbor"):
        members = [h for h in hosts.values() if kgroup in h.groups]
        if not members:
            continue
        why = ("kubeasz's NTP server for the cluster; here every node runs chrony with its own "
               "sources" if kgroup == "chrony" else "kubeasz's harbor registry host; nothing "
               "is installed for it here: point registry_mirrors at your registry")
        out.append(f"    # kubeasz [{kgroup}] (no equivalent: {why}):")
        for h in members:
            line = h.lines[kgroup]
            hv = " ".join(f"{k}={shown(v)}" for k, (v, n) in h.vars.items() if n == line)
            out.append(f"    #   {h.address} (line {line}){' ' + hv if hv else ''}")
            notes.append(f"[{kgroup}] {h.address}")
    return Result("\n".join(out) + "\n", nodes, len(notes))


def write(hosts: str, out: str, force: bool = False, name: str | None = None) -> Result:
    """Convert and write `out` (never over an existing file unless `force`)."""
    target = Path(out)
    if target.exists() and not force:
        raise UserError(f"{out}: already exists; choose another -o, or pass --force to "
                        "replace it")
    result = convert(hosts, name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(result.text)
    except OSError as e:
        raise UserError(f"{out}: cannot write: {e.strerror} (choose another -o)") from None
    return result
