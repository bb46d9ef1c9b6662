"""Semantic checks on a structurally sound inventory (types and keys were checked on load).

Each check is a small function `(cluster, where) -> iterable of Problem`, one rule each;
`CHECKS` lists them. `where.setting(key)`, `where.host(name, key)` and `where.group(name)` give
the dotted key and line a problem names (see `inventory.Where`).

Decisions worth knowing:
- `ansible_host` must be an IP address, not a DNS name: it becomes the node's advertise
  address, its etcd peer URL and an IP SAN of the certificates.
- The API VIP must share a /24 (IPv4) or /64 (IPv6) with at least one host that holds it: a
  control plane (kube-vip) or a load balancer (haproxy + keepalived). Both announce it on the
  local segment, so a VIP in another subnet is unreachable.
- Each node needs one pod subnet of /24 (IPv4) or /64 (IPv6), the kubeadm and k3s default.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import Counter
from typing import Iterable
from urllib.parse import urlparse

from .errors import Problem
from .model import CONTROL_PLANE, ETCD, LOADBALANCERS, WORKERS, Cluster, Node

RFC1123 = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
IFNAME = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.@]{0,14}$")
TAINT = re.compile(r"^(?P<key>[^=:\s]+)(=(?P<value>[^:\s]*))?:(?P<effect>\S+)$")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

# Minor versions whose kubeadm speaks v1beta4 (1.31+) and that the provisioner was checked with.
SUPPORTED_MINORS = ("1.31", "1.32", "1.33", "1.34")
VERSION = {
    "kubeadm": re.compile(r"^v1\.(\d+)\.(\d+)$"),
    "k3s": re.compile(r"^v1\.(\d+)\.(\d+)\+k3s\d+$"),
}
VERSION_EXAMPLE = {"kubeadm": "v1.32.4", "k3s": "v1.32.4+k3s1"}

# Ports of the components besides the API server (kubelet, controller-manager, scheduler, etcd).
KUBELET, CONTROLLER, SCHEDULER, ETCD_PORTS = 10250, 10257, 10259, (2379, 2380)
NODE_MASK = {4: 24, 6: 64}  # the pod subnet each node gets (kubeadm and k3s defaults)
VIP_SEGMENT = {4: 24, 6: 64}  # the VIP must be in this prefix of a host that announces it
MAX_SERVICE_BITS = 20  # kube-apiserver refuses a service network larger than 2^20 addresses

# Labels a kubelet may set on its own node in the kubernetes.io / k8s.io namespaces.
KUBELET_LABELS = {
    "kubernetes.io/hostname", "kubernetes.io/instance-type", "kubernetes.io/os",
    "kubernetes.io/arch", "beta.kubernetes.io/instance-type", "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch", "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region", "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region", "node.kubernetes.io/instance-type",
}
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


def problem(where, key: str, message: str, fix: str = "", host: str | None = None,
            sub: tuple = ()) -> Problem:
    """A problem named at a setting, or at a host's key when `host` is given."""
    dotted, line = where.host(host, key, *sub) if host else where.setting(key, *sub)
    return Problem(where.doc.path, line, dotted, message, fix)


def group_problem(where, group: str, message: str, fix: str = "") -> Problem:
    dotted, line = where.group(group)
    return Problem(where.doc.path, line, dotted, message, fix)


def check_for_fetch(cluster: Cluster, where) -> list[Problem]:
    """Every rule but the one that wants bundle_dir to exist: bundle.fetch creates it."""
    return [p for c in CHECKS if c is not check_bundle_dir for p in c(cluster, where)]


def check(cluster: Cluster, where) -> list[Problem]:
    """Every problem every rule finds, each once."""
    return list(dict.fromkeys(p for c in CHECKS for p in c(cluster, where)))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def network(value: str) -> Net | None:
    try:
        return ipaddress.ip_network(value, strict=True) if "/" in value else None
    except ValueError:
        return None


def address(value: str | None) -> Addr | None:
    try:
        return ipaddress.ip_address(value) if value else None
    except ValueError:
        return None


def is_url(value) -> bool:
    u = urlparse(value) if isinstance(value, str) else None
    return bool(u and u.scheme in ("http", "https") and u.hostname and " " not in value)


def names(nodes: Iterable[Node], limit: int = 4) -> str:
    nodes = [n.name for n in nodes]
    more = f" and {len(nodes) - limit} more" if len(nodes) > limit else ""
    return ", ".join(nodes[:limit]) + more


def kube_nodes(cluster: Cluster) -> tuple[Node, ...]:
    """Nodes that run a kubelet (or a k3s server/agent) and so get a pod subnet."""
    return tuple(n for n in cluster.nodes if n.has(CONTROL_PLANE) or n.has(WORKERS))


def etcd_members(cluster: Cluster) -> tuple[tuple[Node, ...], str]:
    """The etcd members and how they come about (external, stacked, k3s embedded, none)."""
    if cluster.is_k3s:
        cps = cluster.control_planes
        return (cps, "embedded") if len(cps) > 1 else ((), "none")
    if cluster.etcd_nodes:
        return cluster.etcd_nodes, "external"
    return cluster.control_planes, "stacked"


def label_key_problem(key) -> str | None:
    if not isinstance(key, str):
        return f"label key {key!r} must be a string"
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not RFC1123.match(prefix)):
        return f"label key prefix {prefix!r} must be a lowercase DNS name"
    if not LABEL_NAME.match(name):
        return (f"label key name {name!r} must be 1-63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit")
    return None


def nets(cluster: Cluster) -> dict[str, Net]:
    """The cluster networks that are valid (invalid ones are reported by check_cidrs)."""
    out = {}
    for key in ("pod_cidr", "service_cidr"):
        net = network(getattr(cluster, key))
        if net:
            out[key] = net
    return out


# ---------------------------------------------------------------------------------------------
# Names and versions
# ---------------------------------------------------------------------------------------------


def check_version(cluster: Cluster, where) -> Iterable[Problem]:
    dist, version = cluster.distribution, cluster.kubernetes_version
    other = "k3s" if dist == "kubeadm" else "kubeadm"
    m = VERSION[dist].match(version)
    if m:
        if f"1.{m.group(1)}" not in SUPPORTED_MINORS:
            yield problem(where, "kubernetes_version", f"{version} is not supported",
                          "use a 1.31 to 1.34 release; they speak kubeadm config API v1beta4")
        return
    if VERSION[other].match(version):
        plain = version.split("+")[0]
        fix = (f"kubeadm versions have no +k3s suffix: write {plain}, or set distribution: k3s"
               if dist == "kubeadm" else
               f"k3s versions end in +k3sN: write {version}+k3s1, or set distribution: kubeadm")
        yield problem(where, "kubernetes_version", f"{version!r} is a {other} version", fix)
    elif VERSION[dist].match("v" + version):
        yield problem(where, "kubernetes_version", f"{version!r} lacks the leading 'v'",
                      f"did you mean 'v{version}'?")
    else:
        yield problem(where, "kubernetes_version", f"{version!r} is not a {dist} version",
                      f"write it like {VERSION_EXAMPLE[dist]}")


def check_cluster_name(cluster: Cluster, where) -> Iterable[Problem]:
    name = cluster.cluster_name
    if len(name) > 63 or "." in name or not RFC1123.match(name):
        yield problem(where, "cluster_name", f"{name!r} is not a valid cluster name",
                      "use at most 63 lowercase letters, digits and '-', e.g. "
                      f"{_rfc1123_guess(name)!r}")


def check_cluster_domain(cluster: Cluster, where) -> Iterable[Problem]:
    domain = cluster.cluster_domain
    if len(domain) > 253 or not RFC1123.match(domain):
        yield problem(where, "cluster_domain", f"{domain!r} is not a valid DNS domain",
                      "use lowercase labels of letters, digits and '-' joined by dots, "
                      "without a trailing dot, e.g. cluster.local")


def _rfc1123_guess(name: str) -> str:
    guess = re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-.")[:63].strip("-.")
    return guess or "node1"


def check_host_names(cluster: Cluster, where) -> Iterable[Problem]:
    for n in cluster.nodes:
        labels = n.name.split(".")
        if (len(n.name) > 253 or any(len(label) > 63 for label in labels)
                or not RFC1123.match(n.name)):
            yield problem(where, None, f"host name {n.name!r} is not a valid node name",
                          "use lowercase letters, digits and '-', at most 63 per dot-separated "
                          f"part, e.g. {_rfc1123_guess(n.name)!r}", host=n.name)


# ---------------------------------------------------------------------------------------------
# Addresses and networks
# ---------------------------------------------------------------------------------------------


def check_addresses(cluster: Cluster, where) -> Iterable[Problem]:
    for n in cluster.nodes:
        ip = address(n.address)
        if not where.host_sets(n.name, "ansible_host"):
            yield problem(where, "ansible_host", "host has no ansible_host",
                          "set ansible_host to the node's IP address", host=n.name)
        elif ip is None:
            yield problem(where, "ansible_host", f"{n.address!r} is not an IP address",
                          "write the node's IP address; DNS names are not accepted since the "
                          "address goes into certificates and etcd URLs", host=n.name)
        elif ip.is_unspecified or ip.is_multicast:
            yield problem(where, "ansible_host", f"{n.address} cannot be a node address",
                          "write the node's own unicast IP address", host=n.name)
        elif ip.is_loopback and len(cluster.nodes) > 1:
            yield problem(where, "ansible_host", f"{n.address} is a loopback address",
                          "other nodes cannot reach it: write the node's address on the network "
                          "the nodes share", host=n.name)


def check_duplicate_addresses(cluster: Cluster, where) -> Iterable[Problem]:
    seen: dict[str, Node] = {}
    for n in cluster.nodes:
        ip = address(n.address)
        key = str(ip) if ip else n.address
        if key in seen:
            yield problem(where, "ansible_host", f"address {n.address} is also {seen[key].name}'s",
                          "give every host its own address", host=n.name)
        else:
            seen[key] = n


def check_cidrs(cluster: Cluster, where) -> Iterable[Problem]:
    for key in ("pod_cidr", "service_cidr"):
        value = getattr(cluster, key)
        if "/" not in value:
            yield problem(where, key, f"{value!r} has no prefix length",
                          "write a network like 10.244.0.0/16")
            continue
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError:
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError:
                yield problem(where, key, f"{value!r} is not a network",
                              "write a network like 10.244.0.0/16")
            else:
                yield problem(where, key, f"{value} has host bits set", f"did you mean {net}?")


def check_families(cluster: Cluster, where) -> Iterable[Problem]:
    found = nets(cluster)
    pod, svc = found.get("pod_cidr"), found.get("service_cidr")
    if pod and svc and pod.version != svc.version:
        yield problem(where, "service_cidr", f"service_cidr is IPv{svc.version} but pod_cidr is "
                      f"IPv{pod.version}", "use one address family for both; dual stack is not "
                      "supported")
    ref = svc or pod
    if ref is None:
        return
    for n in cluster.nodes:
        ip = address(n.address)
        if ip and ip.version != ref.version:
            yield problem(where, "ansible_host", f"{n.address} is IPv{ip.version} but the cluster "
                          f"networks are IPv{ref.version}", "use node addresses of the cluster "
                          "networks' family", host=n.name)


def check_overlaps(cluster: Cluster, where) -> Iterable[Problem]:
    found = nets(cluster)
    pod, svc = found.get("pod_cidr"), found.get("service_cidr")
    if pod and svc and pod.version == svc.version and pod.overlaps(svc):
        yield problem(where, "service_cidr", f"service_cidr {svc} overlaps pod_cidr {pod}",
                      "pick two separate networks, e.g. 10.244.0.0/16 and 10.96.0.0/12")
    for key, net in found.items():
        inside = [n for n in cluster.nodes if (ip := address(n.address)) and ip in net]
        if inside:
            yield problem(where, key, f"{key} {net} contains the address of {names(inside)}",
                          "pick a network your hosts do not use")
        vip = address(cluster.api_vip)
        if vip and vip in net:
            yield problem(where, "api_vip", f"api_vip {vip} is inside {key} {net}",
                          f"move {key} off the hosts' network, or pick another api_vip")


def check_pod_cidr_size(cluster: Cluster, where) -> Iterable[Problem]:
    pod = nets(cluster).get("pod_cidr")
    if pod is None:
        return
    mask = NODE_MASK[pod.version]
    nodes = len(kube_nodes(cluster))
    room = 2 ** (mask - pod.prefixlen) if pod.prefixlen <= mask else 0
    if room < nodes:
        need = mask - max(nodes - 1, 0).bit_length()
        yield problem(where, "pod_cidr", f"{pod} has room for {room} node subnet(s) of /{mask} "
                      f"but the cluster has {nodes} nodes",
                      f"use a prefix of /{need} or shorter")


def check_service_cidr_size(cluster: Cluster, where) -> Iterable[Problem]:
    svc = nets(cluster).get("service_cidr")
    if svc is None:
        return
    bits = svc.max_prefixlen
    if bits - svc.prefixlen > MAX_SERVICE_BITS:
        yield problem(where, "service_cidr", f"{svc} is larger than kube-apiserver allows",
                      f"use a prefix of /{bits - MAX_SERVICE_BITS} or longer")
    elif svc.num_addresses < 16:
        yield problem(where, "service_cidr", f"{svc} is too small: the DNS service takes its "
                      "tenth address", f"use a prefix of /{bits - 4} or shorter")


# ---------------------------------------------------------------------------------------------
# Topology: etcd, HA, load balancers
# ---------------------------------------------------------------------------------------------


def check_k3s_etcd_group(cluster: Cluster, where) -> Iterable[Problem]:
    if cluster.is_k3s and cluster.etcd_nodes:
        yield group_problem(where, ETCD, "k3s runs etcd embedded in its servers",
                            "remove the etcd group; the control_plane hosts form the etcd cluster")


def check_etcd_count(cluster: Cluster, where) -> Iterable[Problem]:
    if cluster.is_k3s and cluster.etcd_nodes:
        return  # reported by check_k3s_etcd_group
    members, kind = etcd_members(cluster)
    count = len(members)
    if count and count % 2 == 0:
        if kind == "external":
            yield group_problem(where, ETCD, f"{count} etcd members: etcd needs an odd number to "
                                "keep quorum; an even one tolerates no more failures",
                                "use 1, 3 or 5 etcd hosts")
        else:
            how = "kubeadm stacks" if kind == "stacked" else "k3s embeds"
            yield group_problem(where, CONTROL_PLANE, f"{how} an etcd member on each control "
                                f"plane: {count} control planes make an even etcd cluster that "
                                "tolerates no more failures than one with a member less",
                                "use 1, 3 or 5 control planes" + (
                                    ", or an external etcd group of 3" if kind == "stacked"
                                    else ""))
    if kind == "external" and count == 1 and len(cluster.control_planes) >= 2:
        yield group_problem(where, ETCD, "a single etcd member under an HA control plane: the "
                            "cluster stops when that host does", "use 3 etcd hosts, or remove "
                            "the etcd group to stack etcd on the control planes")


def check_vip_required(cluster: Cluster, where) -> Iterable[Problem]:
    if cluster.ha_mode in ("kube-vip", "haproxy") and not cluster.api_vip:
        yield problem(where, "api_vip", f"ha_mode {cluster.ha_mode} needs api_vip",
                      "set api_vip to a free IP address on the hosts' network")


def check_vip_unused(cluster: Cluster, where) -> Iterable[Problem]:
    if cluster.api_vip and cluster.ha_mode in ("none", "local"):
        yield problem(where, "api_vip", f"api_vip is set but ha_mode is {cluster.ha_mode}, "
                      "so nothing holds it", "set ha_mode: kube-vip, or haproxy with a "
                      "loadbalancers group, or remove api_vip")


def check_vip_address(cluster: Cluster, where) -> Iterable[Problem]:
    if not cluster.api_vip:
        return
    vip = address(cluster.api_vip)
    if vip is None:
        yield problem(where, "api_vip", f"{cluster.api_vip!r} is not an IP address",
                      "write a free IP address on the hosts' network")
        return
    owner = next((n for n in cluster.nodes if address(n.address) == vip), None)
    if owner:
        yield problem(where, "api_vip", f"api_vip {vip} is {owner.name}'s address",
                      "the VIP must be a free address that no host uses")
        return
    holders = (cluster.loadbalancers if cluster.ha_mode == "haproxy"
               else cluster.control_planes if cluster.ha_mode == "kube-vip" else ())
    segment = VIP_SEGMENT[vip.version]
    ips = [ip for n in holders if (ip := address(n.address)) and ip.version == vip.version]
    if ips and not any(vip in ipaddress.ip_network(f"{ip}/{segment}", strict=False) for ip in ips):
        role = "load balancers" if cluster.ha_mode == "haproxy" else "control planes"
        near = ipaddress.ip_network(f"{ips[0]}/{segment}", strict=False)
        yield problem(where, "api_vip", f"api_vip {vip} is not in the /{segment} of any of the "
                      f"{role} that announce it", f"pick a free address in {near}")


def check_haproxy_pair(cluster: Cluster, where) -> Iterable[Problem]:
    count = len(cluster.loadbalancers)
    if cluster.ha_mode == "haproxy" and count < 2:
        found = f"found {count}" if count else "there is none"
        yield problem(where, "ha_mode", "ha_mode haproxy needs a loadbalancers group of 2 or "
                      f"more hosts (a keepalived pair), {found}",
                      "add loadbalancers hosts, or use ha_mode: kube-vip")


def check_loadbalancers_unused(cluster: Cluster, where) -> Iterable[Problem]:
    if cluster.loadbalancers and cluster.ha_mode != "haproxy":
        yield group_problem(where, LOADBALANCERS, f"loadbalancers hosts are only used with "
                            f"ha_mode haproxy, but ha_mode is {cluster.ha_mode}",
                            "set ha_mode: haproxy, or remove the loadbalancers group")


def check_single_endpoint(cluster: Cluster, where) -> Iterable[Problem]:
    count = len(cluster.control_planes)
    if count > 1 and cluster.ha_mode == "none":
        yield problem(where, "ha_mode", f"ha_mode none with {count} control planes: clients "
                      "and nodes would reach only the first one",
                      "use ha_mode kube-vip, haproxy or local")


def check_local_mode_kubeadm(cluster: Cluster, where) -> Iterable[Problem]:
    """`local` puts the 127.0.0.1 API proxy on workers only; a joining kubeadm control plane
    would bootstrap its kubelet against 127.0.0.1, its own API server not yet serving."""
    count = len(cluster.control_planes)
    if cluster.ha_mode == "local" and not cluster.is_k3s and count > 1:
        yield problem(where, "ha_mode", f"ha_mode local (the default with {count} control "
                      "planes) cannot join further kubeadm control planes",
                      "use ha_mode kube-vip with an api_vip, or haproxy with a loadbalancers "
                      "pair; local suits k3s or a single control plane")


def check_keepalived_priority(cluster: Cluster, where) -> Iterable[Problem]:
    for n in cluster.nodes:
        prio = n.keepalived_priority
        if prio is None:
            continue
        if not n.has(LOADBALANCERS):
            yield problem(where, "keepalived_priority", "only loadbalancers hosts run keepalived",
                          "remove it, or move the host to the loadbalancers group", host=n.name)
        elif not 1 <= prio <= 254:
            yield problem(where, "keepalived_priority", f"{prio} is out of range",
                          "use 1 to 254; the higher one holds the VIP", host=n.name)


# ---------------------------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------------------------


def check_port_ranges(cluster: Cluster, where) -> Iterable[Problem]:
    if not 1 <= cluster.api_port <= 65535:
        yield problem(where, "api_port", f"{cluster.api_port} is not a TCP port",
                      "use 1 to 65535; the default is 6443")
    for n in cluster.nodes:
        if not 1 <= n.ssh_port <= 65535:
            yield problem(where, "ansible_port", f"{n.ssh_port} is not a TCP port",
                          "use 1 to 65535; SSH listens on 22 by default", host=n.name)


def ports_on(cluster: Cluster, node: Node) -> list[tuple[int, str]]:
    """(port, component) pairs that will listen on a node."""
    ports = []
    etcd, kind = etcd_members(cluster)
    if node.has(CONTROL_PLANE):
        ports += [(cluster.api_port, "kube-apiserver"), (CONTROLLER, "kube-controller-manager"),
                  (SCHEDULER, "kube-scheduler")]
    if node in etcd:
        ports += [(p, "etcd") for p in ETCD_PORTS]
    if node.has(CONTROL_PLANE) or node.has(WORKERS):
        ports.append((KUBELET, "kubelet"))
    if node.has(LOADBALANCERS) and cluster.ha_mode == "haproxy":
        ports.append((cluster.api_port, "haproxy"))
    return ports


def check_port_clash(cluster: Cluster, where) -> Iterable[Problem]:
    clashes: dict[tuple[str, str], list[Node]] = {}
    for n in cluster.nodes:
        owners: dict[int, set[str]] = {}
        for port, who in ports_on(cluster, n):
            owners.setdefault(port, set()).add(who)
        for port, who in owners.items():
            if len(who) > 1 and port == cluster.api_port:
                clashes.setdefault(tuple(sorted(who)), []).append(n)
    for who, nodes in clashes.items():
        if "haproxy" in who and "kube-apiserver" in who:
            for n in nodes:
                yield problem(where, None, f"haproxy and kube-apiserver would both listen on "
                              f"port {cluster.api_port} here", "put the load balancers on hosts "
                              "that are not control planes", host=n.name)
        else:
            other = ", ".join(w for w in who if w not in ("kube-apiserver", "haproxy"))
            yield problem(where, "api_port", f"port {cluster.api_port} is also used by {other} "
                          f"on {names(nodes)}", "use another port, e.g. the default 6443")


# ---------------------------------------------------------------------------------------------
# URLs, folders, mirrors
# ---------------------------------------------------------------------------------------------


def check_registry_mirrors(cluster: Cluster, where) -> Iterable[Problem]:
    for registry, urls in cluster.registry_mirrors.items():
        if not isinstance(registry, str) or "://" in registry or not re.match(
                r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:\d{1,5})?$", registry):
            host = urlparse(registry).netloc if isinstance(registry, str) else ""
            yield problem(where, "registry_mirrors", f"{registry!r} is not a registry host name",
                          f"write the registry as host[:port], e.g. {host or 'docker.io'}",
                          sub=(registry,))
            continue
        if not isinstance(urls, list) or not urls:
            fix = f"write it as a list: [{urls}]" if isinstance(urls, str) else (
                "write a list of mirror URLs, e.g. [\"https://mirror.example.com\"]")
            yield problem(where, "registry_mirrors", "must be a list of mirror URLs", fix,
                          sub=(registry,))
            continue
        for i, url in enumerate(urls):
            if not is_url(url):
                yield problem(where, "registry_mirrors", f"{url!r} is not an http(s) URL",
                              "write it like https://mirror.example.com", sub=(registry, i))


def check_download_mirror(cluster: Cluster, where) -> Iterable[Problem]:
    for key in ("download_mirror", "github_mirror"):
        value = getattr(cluster, key)
        if not is_url(value):
            yield problem(where, key, f"{value!r} is not an http(s) URL",
                          "write it like https://mirror.example.com/path")


def check_bundle_dir(cluster: Cluster, where) -> Iterable[Problem]:
    if cluster.bundle_dir and not os.path.isdir(cluster.bundle_dir):
        what = "is a file, not a folder" if os.path.exists(cluster.bundle_dir) else "does not exist"
        yield problem(where, "bundle_dir", f"{cluster.bundle_dir} {what} (relative to "
                      f"{os.getcwd()})", "run `invoke bundle.fetch` to make it, or fix the path")


def check_interfaces(cluster: Cluster, where) -> Iterable[Problem]:
    for key in ("vip_interface", "lab_bridge"):
        value = getattr(cluster, key)
        if value is not None and not IFNAME.match(value):
            yield problem(where, key, f"{value!r} is not a network interface name",
                          "use at most 15 letters, digits, '-', '_' or '.'")
    if cluster.lab_bridge_address is not None:
        try:
            if "/" not in cluster.lab_bridge_address:
                raise ValueError
            ipaddress.ip_interface(cluster.lab_bridge_address)
        except ValueError:
            yield problem(where, "lab_bridge_address", f"{cluster.lab_bridge_address!r} is not "
                          "an address with a prefix length", "write it like 10.90.0.1/24")


# ---------------------------------------------------------------------------------------------
# Per-host node labels and taints
# ---------------------------------------------------------------------------------------------


def check_taints(cluster: Cluster, where) -> Iterable[Problem]:
    for n in cluster.nodes:
        for i, taint in enumerate(n.taints):
            m = TAINT.match(taint) if isinstance(taint, str) else None
            if not m:
                yield problem(where, "node_taints", f"{taint!r} is not a taint",
                              "write key=value:Effect, e.g. dedicated=db:NoSchedule",
                              host=n.name, sub=(i,))
            elif m["effect"] not in TAINT_EFFECTS:
                yield problem(where, "node_taints", f"unknown taint effect {m['effect']!r}",
                              "use one of: " + ", ".join(TAINT_EFFECTS), host=n.name, sub=(i,))
            elif (why := label_key_problem(m["key"])) or (
                    m["value"] and not LABEL_NAME.match(m["value"])):
                yield problem(where, "node_taints", why or f"taint value {m['value']!r} is not "
                              "valid", "keys and values take letters, digits, '-', '_' and '.'",
                              host=n.name, sub=(i,))


def check_labels(cluster: Cluster, where) -> Iterable[Problem]:
    for n in cluster.nodes:
        for key, value in n.labels.items():
            at = dict(host=n.name, sub=(key,))
            why = label_key_problem(key)
            if why:
                yield problem(where, "node_labels", why, "write the key like example.com/role "
                              "or role", **at)
            elif not isinstance(value, str):
                text = str(value).lower() if isinstance(value, bool) else value
                yield problem(where, "node_labels", f"label value {value!r} must be a string",
                              f"quote it: '{text}'", **at)
            elif value and (len(value) > 63 or not LABEL_NAME.match(value)):
                yield problem(where, "node_labels", f"label value {value!r} is not valid",
                              "use at most 63 letters, digits, '-', '_' or '.', starting and "
                              "ending with a letter or digit", **at)
            elif _kubelet_refuses(key):
                yield problem(where, "node_labels", f"the kubelet may not set {key!r} on its "
                              "own node (NodeRestriction)", "use your own prefix such as "
                              "example.com/role, or label the node with kubectl later", **at)


def _kubelet_refuses(key: str) -> bool:
    prefix = key.rpartition("/")[0]
    restricted = any(prefix == d or prefix.endswith("." + d) for d in ("kubernetes.io", "k8s.io"))
    allowed = key in KUBELET_LABELS or any(
        prefix == d or prefix.endswith("." + d) for d in KUBELET_LABEL_NAMESPACES)
    return restricted and not allowed


CHECKS = [
    check_local_mode_kubeadm,
    check_version,
    check_cluster_name,
    check_cluster_domain,
    check_host_names,
    check_addresses,
    check_duplicate_addresses,
    check_cidrs,
    check_families,
    check_overlaps,
    check_pod_cidr_size,
    check_service_cidr_size,
    check_k3s_etcd_group,
    check_etcd_count,
    check_vip_required,
    check_vip_unused,
    check_vip_address,
    check_haproxy_pair,
    check_loadbalancers_unused,
    check_single_endpoint,
    check_keepalived_priority,
    check_port_ranges,
    check_port_clash,
    check_registry_mirrors,
    check_download_mirror,
    check_bundle_dir,
    check_interfaces,
    check_taints,
    check_labels,
]
