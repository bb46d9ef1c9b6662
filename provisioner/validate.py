"""Semantic checks on a structurally sound inventory (types and keys were checked on load).

Each check is a small function `(cluster, where) -> iterable of Problem`, one rule each;
`CHECKS` lists them. `where.setting(key)`, `where.host(name, key)` and `where.group(name)` give
the dotted key and line a problem names (see `inventory.Where`).

Decisions worth knowing:
- `ansible_host` must be an IP address, not a DNS name: it becomes the node's advertise
  address, its etcd peer URL and an IP SAN of the certificates.
- The API VIP must share a /24 with at least one host that holds it: a control plane
  (kube-vip) or a load balancer (haproxy + keepalived). Both announce it on the local segment,
  so a VIP in another subnet is unreachable. So the .0 and .255 of that /24 are refused too.
- Each node needs one pod subnet of /24, the kubeadm and k3s default.
- IPv4 only: IPv6 single-stack is not supported yet (templates, the VIP and the pod subnets
  have never been checked with it), so IPv6 node addresses, VIPs and networks are refused with
  one message per key instead of being half-supported.
- The cluster networks may not touch special IPv4 ranges (0/8, loopback, link-local,
  multicast, 240/4): the kernel routes them specially or not at all.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import Counter
from typing import Iterable
from urllib.parse import urlparse

from . import versions
from .errors import Problem
from .model import CONTROL_PLANE, ETCD, LOADBALANCERS, WORKERS, Cluster, Node

RFC1123 = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
IFNAME = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.@]{0,14}$")
TAINT = re.compile(r"^(?P<key>[^=:\s]+)(=(?P<value>[^:\s]*))?:(?P<effect>\S+)$")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

# The supported minors and their pins live in one table (provisioner/versions.py).
SUPPORTED_MINORS = versions.SUPPORTED
VERSION = {
    "kubeadm": re.compile(r"^v1\.(0|[1-9]\d*)\.(0|[1-9]\d*)$"),
    "k3s": re.compile(r"^v1\.(0|[1-9]\d*)\.(0|[1-9]\d*)\+k3s[1-9]\d*$"),
}
VERSION_EXAMPLE = versions.DEFAULT

# Ports of the components besides the API server (kubelet, controller-manager, scheduler, etcd,
# kube-proxy's health and metrics ports, the kubelet's health port).
KUBELET, CONTROLLER, SCHEDULER, ETCD_PORTS = 10250, 10257, 10259, (2379, 2380)
KUBE_PROXY_PORTS, KUBELET_HEALTHZ = (10249, 10256), 10248
# IPv4 ranges a cluster network may not touch: what the kernel routes specially or not at all.
SPECIAL_NETS = {
    "0.0.0.0/8": "'this network' (0.0.0.0/8)",
    "127.0.0.0/8": "loopback (127.0.0.0/8)",
    "169.254.0.0/16": "link-local (169.254.0.0/16)",
    "224.0.0.0/4": "multicast (224.0.0.0/4)",
    "240.0.0.0/4": "reserved (240.0.0.0/4, with the broadcast address)",
}
IPV6 = "IPv6 single-stack is not supported yet (IPv4 only)"
# A container image reference: [host[:port]/]path[:tag][@sha256:digest].
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(rf"^(?:{_DOMAIN}(?::(?P<port>\d{{1,5}}))?/)?{_PATH}(?:/{_PATH})*"
                   r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$")
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
    file, dotted, line = (where.host_loc(host, key, *sub) if host else
                          where.setting_loc(key, *sub))
    return Problem(file, line, dotted, message, fix)


def group_problem(where, group: str, message: str, fix: str = "") -> Problem:
    file, dotted, line = where.group_loc(group)
    return Problem(file, line, dotted, message, fix)


def check_for_fetch(cluster: Cluster, where) -> list[Problem]:
    """Every rule but the one that wants bundle_dir to exist: bundle.fetch creates it."""
    return [p for c in CHECKS if c is not check_bundle_dir for p in c(cluster, where)]


def check(cluster: Cluster, where) -> list[Problem]:
    """Every problem every rule finds, each once."""
    return list(dict.fromkeys(p for c in CHECKS for p in c(cluster, where)))


def warnings(cluster: Cluster, where) -> list[Problem]:
    """What is allowed but unwise (printed by validate, plan and up; never refused)."""
    return list(dict.fromkeys(p for c in WARNINGS for p in c(cluster, where)))


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
    return url_problem(value) is None


def url_problem(value) -> tuple[str, str] | None:
    """(message, fix) when `value` is not a plain http(s) base URL, else None."""
    example = "write it like https://mirror.example.com/path"
    if not isinstance(value, str):
        return f"{value!r} is not an http(s) URL", example
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return f"{value!r} contains a space, newline or control character", example
    u = urlparse(value)
    if u.scheme not in ("http", "https") or not u.hostname:
        return f"{value!r} is not an http(s) URL", example
    if "@" in u.netloc:
        return ("credentials in a mirror URL are not supported: they would be written into "
                "files every user on the nodes can read", "remove user:password@ from the URL; "
                "use a mirror that allows anonymous pulls, or set up its credentials on the "
                "nodes yourself")
    try:
        port = u.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        return f"{value!r} has an invalid port", "use a port from 1 to 65535"
    if u.query or u.fragment or "?" in value or "#" in value:
        return f"{value!r} has a query string or fragment", "remove what follows '?' or '#'"
    return None


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
        if net and net.version == 4:  # IPv6 is refused by check_ipv6
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
                          f"use a {versions.supported_range()} release (e.g. "
                          f"{VERSION_EXAMPLE[dist]}); see the version table in README.md")
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
    elif VERSION[dist].match(fixed := re.sub(r"(?<=[.])0+(?=\d)", "", version)):
        yield problem(where, "kubernetes_version", f"{version!r} has a leading zero",
                      f"did you mean {fixed!r}?")
    else:
        yield problem(where, "kubernetes_version", f"{version!r} is not a {dist} version",
                      f"write it like {VERSION_EXAMPLE[dist]}")


def check_cni(cluster: Cluster, where) -> Iterable[Problem]:
    """Calico needs its tigera-operator (CRDs, the operator Deployment) applied before its
    Installation resource; neither is in the bundle yet, so a Calico cluster would never get a
    pod network. Refused rather than half-built."""
    if cluster.cni == "calico":
        yield problem(where, "cni", "calico is not available yet: its tigera-operator is not in "
                      "the offline bundle, so only half of Calico could be applied",
                      "use cni: flannel (the default)")


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
        elif labels[0] == "localhost":
            yield problem(where, None, f"host name {n.name!r} is reserved: every machine "
                          "resolves localhost to itself", "name the host after the machine, "
                          "e.g. node1", host=n.name)


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
        elif ip.version == 6:
            continue  # reported by check_ipv6
        elif ip.is_unspecified or ip.is_multicast or ip.is_reserved or ip.is_link_local or (
                ip in ipaddress.ip_network("0.0.0.0/8")):
            what = ("the broadcast address" if ip == ipaddress.ip_address("255.255.255.255")
                    else "not a unicast host address")
            yield problem(where, "ansible_host", f"{n.address} cannot be a node address: it "
                          f"is {what}", "write the node's own unicast IP address", host=n.name)
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
            continue
        net = ipaddress.ip_network(value)
        if net.version != 4:
            continue  # reported by check_ipv6
        for special, what in SPECIAL_NETS.items():
            if net.overlaps(ipaddress.ip_network(special)):
                yield problem(where, key, f"{net} overlaps {what}",
                              "use a private network such as 10.244.0.0/16 (pods) or "
                              "10.96.0.0/12 (services)")
                break


def check_ipv6(cluster: Cluster, where) -> Iterable[Problem]:
    """One message per key that holds an IPv6 value: not half-supported, refused."""
    for key in ("pod_cidr", "service_cidr"):
        value = getattr(cluster, key)
        net = network(value)
        if (net and net.version == 6) or (net is None and ":" in value):
            yield problem(where, key, f"{value} is an IPv6 network: {IPV6}",
                          "use an IPv4 network, e.g. 10.244.0.0/16 (pods) and 10.96.0.0/12 "
                          "(services)")
    vip = address(cluster.api_vip)
    if vip and vip.version == 6:
        yield problem(where, "api_vip", f"{vip} is an IPv6 address: {IPV6}",
                      "use a free IPv4 address on the hosts' network")
    for n in cluster.nodes:
        ip = address(n.address)
        if ip and ip.version == 6:
            yield problem(where, "ansible_host", f"{n.address} is an IPv6 address: {IPV6}",
                          "use the node's IPv4 address", host=n.name)


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


def warn_even_etcd(cluster: Cluster, where) -> Iterable[Problem]:
    """A warning, not an error: etcd runs with an even count (a member removed, its
    replacement not added yet), it only tolerates no more failures than a member less."""
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


def check_single_etcd_under_ha(cluster: Cluster, where) -> Iterable[Problem]:
    if cluster.is_k3s and cluster.etcd_nodes:
        return  # reported by check_k3s_etcd_group
    members, kind = etcd_members(cluster)
    if kind == "external" and len(members) == 1 and len(cluster.control_planes) >= 2:
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
    if vip.version == 6:
        return  # reported by check_ipv6
    if (vip.is_unspecified or vip.is_multicast or vip.is_reserved or vip.is_loopback
            or vip.is_link_local or vip in ipaddress.ip_network("0.0.0.0/8")):
        yield problem(where, "api_vip", f"api_vip {vip} is not a unicast host address",
                      "write a free IP address on the hosts' network")
        return
    segment24 = ipaddress.ip_network(f"{vip}/24", strict=False)
    if vip in (segment24.network_address, segment24.broadcast_address):
        yield problem(where, "api_vip", f"api_vip {vip} is the network or broadcast address of "
                      f"{segment24}", "pick a free host address in that network")
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
    if cluster.ha_mode != "haproxy":
        return
    for i, n in enumerate(cluster.loadbalancers):  # render.keepalived_priority's default
        if n.keepalived_priority is None and DEFAULT_PRIORITY - PRIORITY_STEP * i < 1:
            yield problem(where, "keepalived_priority", f"load balancer number {i + 1} would get "
                          f"keepalived priority {DEFAULT_PRIORITY - PRIORITY_STEP * i} by default "
                          "(150 minus 10 per load balancer before it), below keepalived's 1",
                          "set keepalived_priority (1 to 254) on this host", host=n.name)


# ---------------------------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------------------------


DEFAULT_PRIORITY, PRIORITY_STEP = 150, 10  # render.keepalived_priority


def check_backup_keep(cluster: Cluster, where) -> Iterable[Problem]:
    if cluster.backup_keep < 1:
        yield problem(where, "backup_keep", f"{cluster.backup_keep} backups cannot be kept",
                      "keep at least 1 (the default is 10); cluster.backup removes the older "
                      "ones after each new backup")


def check_containerd_source(cluster: Cluster, where) -> Iterable[Problem]:
    """k3s runs the containerd it embeds: a containerd_source for it would silently do nothing."""
    if cluster.is_k3s and "containerd_source" in where.settings:
        yield problem(where, "containerd_source", "k3s runs its own embedded containerd; "
                      "containerd_source applies to kubeadm clusters only",
                      "remove containerd_source (or set distribution: kubeadm)")


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
        ports += [(KUBELET, "kubelet"), (KUBELET_HEALTHZ, "kubelet")]
        ports += [(p, "kube-proxy") for p in KUBE_PROXY_PORTS]
    if node.has(CONTROL_PLANE) or node.has(LOADBALANCERS):
        ports.append((node.ssh_port, "sshd"))
    if node.has(LOADBALANCERS) and cluster.ha_mode == "haproxy":
        ports.append((cluster.api_port, "haproxy"))
    if cluster.ha_mode == "local" and node in cluster.lb_nodes:
        ports.append((cluster.endpoint_port, "haproxy"))
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
        if "haproxy" in who and "kube-apiserver" in who and cluster.ha_mode == "local":
            yield problem(where, "api_port", f"port {cluster.api_port} is the port of the "
                          "local API proxy (ha_mode local) on every node", "use another port, "
                          "e.g. the default 6443")
        elif "haproxy" in who and "kube-apiserver" in who:
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
                r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:\d{1,5})?$", registry) or (
                ":" in registry and not 1 <= int(registry.rsplit(":", 1)[1]) <= 65535):
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
            why = url_problem(url)
            if why:
                yield problem(where, "registry_mirrors", *why, sub=(registry, i))


def check_download_mirror(cluster: Cluster, where) -> Iterable[Problem]:
    for key in ("download_mirror", "github_mirror"):
        value = getattr(cluster, key)
        why = url_problem(value)
        if why:
            yield problem(where, key, *why)


def check_become(cluster: Cluster, where) -> Iterable[Problem]:
    """A user other than root works through sudo; its password only from a private file."""
    for n in cluster.nodes:
        if n.ssh_user != "root" and not n.become:
            yield problem(where, "ansible_become", f"ansible_user {n.ssh_user} without become "
                          "cannot install anything: the provisioner needs root on every host",
                          "remove `ansible_become: false` (the provisioner then uses sudo) or "
                          "log in as root", host=n.name)
        if where.host_sets(n.name, "ansible_become_password"):
            yield problem(where, "ansible_become_password", "a password written in the "
                          "inventory would end up in version control and backups",
                          "write it to a file only you can read (`chmod 600 FILE`) and set "
                          "ansible_become_password_file: FILE instead", host=n.name)
        path = n.become_password_file
        if not path:
            continue
        why = password_file_problem(path)
        if why:
            yield problem(where, "ansible_become_password_file", why[0], why[1], host=n.name)


def password_file_problem(path: str) -> tuple[str, str] | None:
    """(message, fix) when `path` is not a regular file only its owner can read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{path} does not exist", "write the sudo password into it (chmod 600) or fix the path"
    except OSError as e:
        return f"{path} cannot be read: {e.strerror}", "fix the path or its permissions"
    if not os.path.isfile(path):
        return f"{path} is not a file", "point it at a file holding the sudo password"
    if st.st_mode & 0o077:
        return (f"{path} has mode {st.st_mode & 0o777:04o}: other users can read the sudo "
                "password", f"`chmod 600 {path}`")
    if not os.access(path, os.R_OK):
        return f"{path} is not readable by this user", "fix its owner or permissions"
    return None


def check_bundle_dir(cluster: Cluster, where) -> Iterable[Problem]:
    if cluster.bundle_dir and not os.path.isdir(cluster.bundle_dir):
        what = "is a file, not a folder" if os.path.exists(cluster.bundle_dir) else "does not exist"
        yield problem(where, "bundle_dir", f"{cluster.bundle_dir} {what} (relative to "
                      f"{os.getcwd()})", "run `invoke bundle.fetch` to make it, or fix the path")


def check_state_dir(cluster: Cluster, where) -> Iterable[Problem]:
    """The state folder (and the cluster's folder in it) must be folders, or creatable."""
    env = os.environ.get("PROVISIONER_STATE_DIR")
    base = env or cluster.state_dir
    named = "$PROVISIONER_STATE_DIR" if env else "state_dir"
    if not base.strip() or "\0" in base:
        yield problem(where, "state_dir", f"{named} {base!r} is not a folder name",
                      "write a folder path, e.g. state")
        return
    path = os.path.join(base, cluster.cluster_name)
    while path and not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if path and os.path.lexists(path) and not os.path.isdir(path):
        via = "$PROVISIONER_STATE_DIR: " if env else ""
        yield problem(where, "state_dir", f"{via}{path} is a file, not a folder (relative to "
                      f"{os.getcwd()})", f"point {named} at a folder, or move the file away")


# An image repository: host[:port] and an optional path, no scheme, tag or digest.
REPOSITORY = re.compile(rf"^{_DOMAIN}(?::(?P<port>\d{{1,5}}))?(?:/{_PATH})*$")
IMAGE_REGISTRIES = ("registry.k8s.io", "ghcr.io", "docker.io")  # where our images come from


def repository_problem(value) -> tuple[str, str] | None:
    example = ("write it like registry.aliyuncs.com/google_containers or "
               "harbor.local:5000/k8s")
    if not isinstance(value, str) or not value:
        return f"{value!r} is not an image repository", example
    if "://" in value:
        return (f"{value!r} has a URL scheme: an image repository is host[/path]",
                f"write it without the scheme: {value.split('://', 1)[1].rstrip('/')}")
    if "@" in value:
        return ("credentials or a digest in an image repository are not supported",
                "write host[/path] only; set up registry credentials on the nodes yourself")
    host = value.split("/")[0]
    if "." not in host and ":" not in host and host != "localhost":
        return (f"{value!r} does not start with a registry host: containerd would read its "
                "first part as a docker.io path", f"name the registry, e.g. docker.io/{value}")
    m = REPOSITORY.match(value)
    if not m or len(value) > 255 or (m["port"] and not 1 <= int(m["port"]) <= 65535):
        return f"{value!r} is not an image repository (host[:port][/path], no tag)", example
    return None


def check_image_repository(cluster: Cluster, where) -> Iterable[Problem]:
    raw = cluster.image_repository
    if isinstance(raw, str):
        why = repository_problem(raw)
        if why:
            yield problem(where, "image_repository", *why)
        elif cluster.is_k3s and raw != "registry.k8s.io":
            yield problem(where, "image_repository", "k3s does not use image_repository (its "
                          "images come from its airgap archive)", "remove it; point "
                          "registry_mirrors at your registry for pulls")
        return
    if not raw:
        yield problem(where, "image_repository", "is an empty mapping",
                      "write a registry, e.g. registry.aliyuncs.com/google_containers, or "
                      "{registry.k8s.io: REPO, ghcr.io: REPO, docker.io: REPO}")
        return
    if cluster.is_k3s:
        yield problem(where, "image_repository", "k3s does not use image_repository (its "
                      "images come from its airgap archive)", "remove it; point "
                      "registry_mirrors at your registry for pulls")
        return
    for source, target in raw.items():
        if source not in IMAGE_REGISTRIES:
            yield problem(where, "image_repository", f"no image of the cluster comes from "
                          f"{source!r}", f"map one of {', '.join(IMAGE_REGISTRIES)}",
                          sub=(source,))
            continue
        why = repository_problem(target)
        if why:
            yield problem(where, "image_repository", *why, sub=(source,))


def check_sandbox_image(cluster: Cluster, where) -> Iterable[Problem]:
    image = cluster.sandbox_image
    if image is None:  # no pins for the version: check_version names it
        return
    m = IMAGE.match(image)
    if not image or len(image) > 255 or not m or (
            m["port"] and not 1 <= int(m["port"]) <= 65535):
        yield problem(where, "sandbox_image", f"{image!r} is not an image reference",
                      "write it like registry.k8s.io/pause:3.10")


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
        seen: dict[tuple, int] = {}
        for i, taint in enumerate(n.taints):
            m = TAINT.match(taint) if isinstance(taint, str) else None
            if m and (m["key"], m["effect"]) in seen:
                yield problem(where, "node_taints", f"taint {m['key']}:{m['effect']} is given "
                              f"twice (also item {seen[m['key'], m['effect']] + 1})",
                              "keep one taint per key and effect", host=n.name, sub=(i,))
                continue
            if m:
                seen[m["key"], m["effect"]] = i
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
            elif value is None:
                yield problem(where, "node_labels", "label value is empty (YAML reads a missing "
                              "value as null)", "write the value, or '' for an empty one", **at)
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
    check_version,
    check_cni,
    check_cluster_name,
    check_cluster_domain,
    check_host_names,
    check_addresses,
    check_duplicate_addresses,
    check_cidrs,
    check_ipv6,
    check_overlaps,
    check_pod_cidr_size,
    check_service_cidr_size,
    check_k3s_etcd_group,
    check_single_etcd_under_ha,
    check_vip_required,
    check_vip_unused,
    check_vip_address,
    check_haproxy_pair,
    check_loadbalancers_unused,
    check_single_endpoint,
    check_keepalived_priority,
    check_port_ranges,
    check_backup_keep,
    check_containerd_source,
    check_port_clash,
    check_registry_mirrors,
    check_download_mirror,
    check_bundle_dir,
    check_become,
    check_state_dir,
    check_sandbox_image,
    check_image_repository,
    check_interfaces,
    check_taints,
    check_labels,
]

WARNINGS = [warn_even_etcd]
