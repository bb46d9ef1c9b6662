"""Jinja rendering of the files phases place on nodes (templates/ is laid out as the node's
file system). Which template goes to which host belongs to the phase that places it
(provisioner/phases/); `render` walks every phase for `invoke cluster.render`.

Templates are Jinja (StrictUndefined: a missing value is an error, never an empty string) and
see `cluster`, `node`, `secrets`, `item` (for per-item files), the helpers in `GLOBALS` and the
filter `q` (a value as a quoted YAML/JSON scalar). The same cluster and secrets always give the
same bytes.

Secrets: `bootstrap_token`, `certificate_key`, `k3s_token`, and optionally `vrrp_password` and
`ca_cert_hash`. The kubeadm join files need `ca_cert_hash` (the pin of the cluster CA, known
on the controller before `kubeadm init` because the provisioner makes that CA); without it they
are left out rather than rendered with a placeholder.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import jinja2

from . import images, paths, versions
from .model import Cluster, Node

TEMPLATES = Path(__file__).resolve().parent / "templates"

# Images the rendered manifests run, upstream names (pinned in versions; provisioner.images
# lists them for the bundle); templates write them through image(), i.e. after image_repository.
KUBE_VIP_IMAGE = versions.KUBE_VIP
FLANNEL_IMAGE = versions.FLANNEL
FLANNEL_CNI_IMAGE = versions.FLANNEL_CNI_PLUGIN
CRI_SOCKET = "unix:///run/containerd/containerd.sock"

@dataclass(frozen=True)
class File:
    content: bytes
    mode: int  # 0o644, or 0o600 for anything holding a secret
    phase: str  # the title of the phase that places it
    restart: tuple[str, ...] = ()  # systemd units restarted when this file changes on a host


def registries(c: Cluster) -> list[str]:
    return sorted(c.registry_mirrors)


def mirror_urls(c: Cluster, registry: str) -> list[str]:
    """The mirrors of one registry (a single URL may be written without a list)."""
    urls = c.registry_mirrors[registry]
    return [urls] if isinstance(urls, str) else list(urls)


# ---------------------------------------------------------------------------------------------
# Values templates use (kept here so templates stay declarative)
# ---------------------------------------------------------------------------------------------


def apiserver_port(c: Cluster) -> int:
    """The API servers listen on the API port; load balancers forward the same port."""
    return c.api_port


def k3s_server_url(c: Cluster) -> str:
    """k3s agents balance across servers themselves: without a VIP they use the first server."""
    host = c.api_vip if c.ha_mode in ("kube-vip", "haproxy") and c.api_vip else \
        c.first_control_plane.address
    return f"https://{host}:{c.api_port}"


def vip_prefix(c: Cluster) -> int:
    """Prefix length of the VIP: the lab bridge's when the VIP lies in it, else a host route."""
    if c.api_vip and c.lab_bridge_address:
        net = ipaddress.ip_interface(c.lab_bridge_address).network
        if ipaddress.ip_address(c.api_vip) in net:
            return net.prefixlen
    return 32


def vrrp_router_id(c: Cluster) -> int:
    """1..255, stable per cluster name, so two clusters on one segment do not collide."""
    return int(hashlib.sha256(c.cluster_name.encode()).hexdigest(), 16) % 255 + 1


def vrrp_password(secrets: Mapping[str, str]) -> str:
    """keepalived PASS auth takes 8 characters: the state's vrrp_password, else derived."""
    if secrets.get("vrrp_password"):
        return str(secrets["vrrp_password"])[:8]
    return hashlib.sha256(("vrrp:" + secrets["k3s_token"]).encode()).hexdigest()[:8]


def keepalived_priority(c: Cluster, n: Node) -> int:
    if n.keepalived_priority is not None:
        return n.keepalived_priority
    return 150 - 10 * [x.name for x in c.loadbalancers].index(n.name)


def kube_vip_kubeconfig(c: Cluster, n: Node) -> str:
    """The host file kube-vip reads. kubeadm 1.29+ grants admin.conf its rights only after init,
    so on the first control plane kube-vip uses super-admin.conf (as kube-vip's docs say)."""
    if c.is_k3s:
        return "/etc/rancher/k3s/k3s.yaml"
    if n.name == c.first_control_plane.name and minor(c) >= (1, 29):
        return "/etc/kubernetes/super-admin.conf"
    return "/etc/kubernetes/admin.conf"


def minor(c: Cluster) -> tuple[int, int]:
    major, mnr = c.version_minor.split(".")
    return int(major), int(mnr)


def taints(n: Node) -> list[dict]:
    """`key=value:Effect` or `key:Effect` strings as Taint objects."""
    out = []
    for t in n.taints:
        kv, _, effect = t.rpartition(":")
        key, _, value = kv.partition("=")
        taint = {"key": key, "effect": effect}
        if value:
            taint["value"] = value
        out.append(taint)
    return out


def node_labels(n: Node) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))


def preflight_ignores(c: Cluster, n: Node) -> list[str]:
    """kubeadm join checks the provisioner's own placements would trip: the kube-vip static
    pod already in manifests/ on control planes. (Workers get their CA from the join itself.)"""
    out = []
    if c.ha_mode == "kube-vip" and n.has("control_plane"):
        out.append("DirAvailable--etc-kubernetes-manifests")
    return out


def containerd_config_version(c: Cluster) -> int:
    from .runtime import config_version

    return config_version(c)


def containerd_cni_bin_dirs(c: Cluster) -> bool:
    from .runtime import cni_bin_dirs

    return cni_bin_dirs(c)


GLOBALS = {
    "containerd_config_version": containerd_config_version,
    "containerd_cni_bin_dirs": containerd_cni_bin_dirs,
    "apiserver_port": apiserver_port,
    "k3s_server_url": k3s_server_url,
    "vip_prefix": vip_prefix,
    "vrrp_router_id": vrrp_router_id,
    "vrrp_password": vrrp_password,
    "keepalived_priority": keepalived_priority,
    "kube_vip_kubeconfig": kube_vip_kubeconfig,
    "taints": taints,
    "node_labels": node_labels,
    "preflight_ignores": preflight_ignores,
    "mirror_urls": mirror_urls,
    "image": images.rename,
    "kubeadm_repository": images.kubeadm_repository,
    "KUBE_VIP_IMAGE": KUBE_VIP_IMAGE,
    "FLANNEL_IMAGE": FLANNEL_IMAGE,
    "FLANNEL_CNI_IMAGE": FLANNEL_CNI_IMAGE,
    "CRI_SOCKET": CRI_SOCKET,
    "HAPROXY_STATS_SOCKET": paths.HAPROXY_STATS_SOCKET,
}


def _quote(value) -> str:
    """A scalar as JSON, which is also valid YAML and TOML for strings, numbers and booleans."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined: raises UndefinedError naming the missing value
    return json.dumps(value)


@functools.cache
def environment() -> jinja2.Environment:
    """One environment per process: templates are compiled once."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.globals.update(GLOBALS)
    env.filters["q"] = _quote
    return env


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def template(name: str, cluster: Cluster, node: Node, secrets: Mapping[str, str],
             item=None) -> bytes:
    """One template (a path under templates/) rendered for one node."""
    text = environment().get_template(name).render(cluster=cluster, node=node,
                                                   secrets=dict(sorted(secrets.items())),
                                                   item=item)
    return text.encode()


def render(cluster: Cluster, secrets: Mapping[str, str], pki=None) -> dict[str, dict[str, File]]:
    """{inventory host name: {absolute node path: File}}: every file the phases of `cluster.up`
    place (PKI only when `pki` is given; binaries never). Every host has a key."""
    from . import phases

    ctx = phases.Context(cluster, dict(secrets), pki or {})
    out: dict[str, dict[str, File]] = {n.name: {} for n in cluster.nodes}
    for phase in phases.ALL:
        for node in phase.hosts(cluster):
            for i in ctx.files(phase, node):
                if i.path in out[node.name]:
                    raise ValueError(f"{node.name}: {i.path} placed twice (phases "
                                     f"{out[node.name][i.path].phase} and {phase.title})")
                out[node.name][i.path] = File(i.data, i.mode, phase.title, i.units)
    return {host: dict(sorted(files.items())) for host, files in out.items()}


def write_tree(rendered: Mapping[str, Mapping[str, File]], out_dir) -> list[Path]:
    """Write DIR/<host>/<absolute node path>; secret files are 0600 from their first byte."""
    written = []
    base = Path(out_dir)
    for host, files in sorted(rendered.items()):
        for path, f in sorted(files.items()):
            target = base / host / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, f.mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(f.content)
            os.chmod(tmp, f.mode)
            os.replace(tmp, target)
            written.append(target)
    return written
