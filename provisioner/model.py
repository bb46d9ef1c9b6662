"""The cluster as the provisioner sees it: nodes, their roles, and the topology derived from them.

Built by `provisioner.inventory.load`; everything downstream (render, phases, lab) reads this.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property

# Inventory group names, in the order a cluster is built.
LOADBALANCERS = "loadbalancers"
ETCD = "etcd"
CONTROL_PLANE = "control_plane"
WORKERS = "workers"
ROLE_GROUPS = (LOADBALANCERS, ETCD, CONTROL_PLANE, WORKERS)

# kubeadm's `local` HA: each node's API proxy on 127.0.0.1 (the control planes' API servers
# hold the API port on every address, so the proxy takes the next one)
LOCAL_PROXY_PORT = 6444


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    roles: tuple[str, ...]
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_key: str | None = None
    # root through sudo (ansible_become): on for a user other than root unless the inventory
    # says `ansible_become: false` (refused by validate: the provisioner needs root)
    become: bool = False
    become_password_file: str | None = None  # ansible_become_password_file (absolute, 0600)
    labels: dict = field(default_factory=dict, hash=False, compare=False)
    taints: tuple[str, ...] = ()
    keepalived_priority: int | None = None

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class Cluster:
    """Settings plus nodes. Field names match the inventory keys (see `inventory.SETTINGS`)."""

    source: str
    nodes: tuple[Node, ...]
    cluster_name: str
    distribution: str
    kubernetes_version: str
    pod_cidr: str
    service_cidr: str
    cluster_domain: str
    cni: str
    ha_mode: str
    api_vip: str | None
    api_port: int
    vip_interface: str
    registry_mirrors: dict
    sandbox_image: str | None  # None only on an inventory validation refuses (no pins)
    bundle_dir: str | None
    download_mirror: str
    github_mirror: str
    state_dir: str
    backup_keep: int = 10
    containerd_source: str = "bundle"  # kubeadm nodes: "bundle" (upstream release) or "os"
    allow_cgroup_v1: bool = False  # kubelet failCgroupV1: false on cgroup v1 hosts (>= 1.35)
    lab_bridge: str | None = None
    lab_bridge_address: str | None = None
    k3s_token_file: str | None = None
    image_repository: str | dict = "registry.k8s.io"  # see provisioner.images: names
    warnings: tuple[str, ...] = ()  # FILE:LINE: key: message lines of validate.WARNINGS

    # -- roles -------------------------------------------------------------------------------
    def with_role(self, role: str) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.has(role))

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def control_planes(self) -> tuple[Node, ...]:
        return self.with_role(CONTROL_PLANE)

    @property
    def workers(self) -> tuple[Node, ...]:
        return self.with_role(WORKERS)

    @property
    def etcd_nodes(self) -> tuple[Node, ...]:
        return self.with_role(ETCD)

    @property
    def loadbalancers(self) -> tuple[Node, ...]:
        return self.with_role(LOADBALANCERS)

    @property
    def first_control_plane(self) -> Node:
        return self.control_planes[0]

    # The one vocabulary of "which hosts" that phases, render, validate, preflight and smoke use.
    @property
    def joining_control_planes(self) -> tuple[Node, ...]:
        """Control planes after the first: they join it, one at a time."""
        return self.control_planes[1:]

    @property
    def kube_workers(self) -> tuple[Node, ...]:
        """Workers that are not control planes too (those join once, as control planes)."""
        return tuple(n for n in self.workers if not n.has(CONTROL_PLANE))

    @property
    def kube_nodes(self) -> tuple[Node, ...]:
        """Every host that runs a kubelet (or k3s): control planes, then kube workers."""
        return self.control_planes + self.kube_workers

    @property
    def runtime_nodes(self) -> tuple[Node, ...]:
        """Hosts that get containerd from us (k3s brings its own)."""
        return () if self.is_k3s else self.kube_nodes

    @property
    def etcd_members(self) -> tuple[Node, ...]:
        """Members of the external etcd (systemd, mutual TLS); none when etcd is stacked."""
        return self.etcd_nodes if self.external_etcd else ()

    @property
    def lb_nodes(self) -> tuple[Node, ...]:
        """Hosts that balance the API: the haproxy + keepalived pair, the kube-vip control
        planes, or (`local`) a 127.0.0.1 proxy on every kubeadm node — control planes too, so
        a joining control plane reaches the serving API servers, not its own — or on each k3s
        agent (servers serve the API themselves)."""
        local = self.kube_workers if self.is_k3s else self.kube_nodes
        return {"haproxy": self.loadbalancers, "kube-vip": self.control_planes,
                "local": local}.get(self.ha_mode, ())

    @property
    def lb_units(self) -> tuple[str, ...]:
        return {"haproxy": ("haproxy", "keepalived"), "local": ("haproxy",)}.get(self.ha_mode, ())

    # -- derived topology --------------------------------------------------------------------
    @property
    def is_k3s(self) -> bool:
        return self.distribution == "k3s"

    @property
    def external_etcd(self) -> bool:
        """kubeadm with an `etcd` group runs etcd as its own systemd service (mutual TLS)."""
        return not self.is_k3s and bool(self.etcd_nodes)

    @property
    def is_ha(self) -> bool:
        return self.ha_mode != "none"

    @property
    def api_host(self) -> str:
        """Where clients (kubeconfig, joins) reach the API server."""
        if self.ha_mode in ("kube-vip", "haproxy"):
            return self.api_vip or ""
        if self.ha_mode == "local":
            return "127.0.0.1"
        return self.first_control_plane.address

    @property
    def endpoint_port(self) -> int:
        """The port of the API endpoint: kubeadm's `local` proxy listens beside the control
        planes' own API servers, so on LOCAL_PROXY_PORT; everywhere else the API port."""
        return LOCAL_PROXY_PORT if self.ha_mode == "local" and not self.is_k3s else self.api_port

    @property
    def api_endpoint(self) -> str:
        return f"{self.api_host}:{self.endpoint_port}"

    @property
    def kubeconfig_server(self) -> str:
        """The API URL written to the admin kubeconfig on the controller: the HA endpoint when
        there is one reachable from outside the nodes, else the first control plane."""
        host = self.first_control_plane.address if self.ha_mode == "local" else self.api_host
        return f"https://{host}:{self.api_port}"

    @property
    def etcd_endpoints(self) -> list[str]:
        return [f"https://{n.address}:2379" for n in self.etcd_members]

    @cached_property
    def dns_service_ip(self) -> str:
        """The tenth address of the service network, as kubeadm and k3s choose it."""
        return str(ipaddress.ip_network(self.service_cidr, strict=False)[10])

    @cached_property
    def api_service_ip(self) -> str:
        return str(ipaddress.ip_network(self.service_cidr, strict=False)[1])

    @property
    def version_minor(self) -> str:
        """`v1.36.4+k3s1` -> `1.36`."""
        major, minor = self.kubernetes_version.lstrip("v").split(".")[:2]
        return f"{major}.{minor}"

    @property
    def cert_sans(self) -> list[str]:
        sans = ["127.0.0.1", "localhost", self.api_service_ip]
        if self.api_vip:
            sans.append(self.api_vip)
        for n in self.control_planes:
            sans += [n.name, n.address]
        return list(dict.fromkeys(sans))
