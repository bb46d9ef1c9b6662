"""Semantic checks on a structurally sound inventory (types and keys were checked on load).

Each check is a small function `(cluster, where) -> iterable of Problem`; `CHECKS` lists them.
`where.setting(key)` and `where.host(name, key)` give the dotted key and line a problem names.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable

from .errors import Problem
from .model import Cluster

RFC1123 = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")

# Minor versions whose kubeadm speaks v1beta4 (1.31+) and that the provisioner was checked with.
SUPPORTED_MINORS = ("1.31", "1.32", "1.33", "1.34")
VERSION = {
    "kubeadm": re.compile(r"^v1\.(\d+)\.(\d+)$"),
    "k3s": re.compile(r"^v1\.(\d+)\.(\d+)\+k3s\d+$"),
}
VERSION_EXAMPLE = {"kubeadm": "v1.32.4", "k3s": "v1.32.4+k3s1"}


def problem(where, key: str, message: str, fix: str = "", host: str | None = None) -> Problem:
    dotted, line = where.host(host, key) if host else where.setting(key)
    return Problem(where.doc.path, line, dotted, message, fix)


def check_version(cluster: Cluster, where) -> Iterable[Problem]:
    dist, version = cluster.distribution, cluster.kubernetes_version
    m = VERSION[dist].match(version)
    if not m:
        yield problem(where, "kubernetes_version", f"{version!r} is not a {dist} version",
                      f"write it like {VERSION_EXAMPLE[dist]}")
    elif f"1.{m.group(1)}" not in SUPPORTED_MINORS:
        yield problem(where, "kubernetes_version", f"{version} is not supported",
                      "use a 1.31 to 1.34 release (kubeadm config API v1beta4)")


CHECKS = [check_version]


def check(cluster: Cluster, where) -> list[Problem]:
    return [p for c in CHECKS for p in c(cluster, where)]


def network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        return None
