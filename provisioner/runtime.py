"""The container runtime of kubeadm nodes: which containerd and runc, from where, in which
config format, and what the cluster's minor asks of the host (k3s brings its own runtime).

    containerd_source: bundle   upstream containerd + runc from the checked bundle (default):
                                /usr/local/bin/containerd, containerd-shim-runc-v2, ctr and
                                /usr/local/sbin/runc, our own containerd.service, config v3
                                for containerd 2.x
    containerd_source: os       the OS packages (apt), refused by preflight when older than the
                                minor's `containerd_min`; config version 2 (containerd 1.7
                                reads it, 2.x converts it)

The versions come from provisioner.versions (one row per supported minor).
"""

from __future__ import annotations

from . import versions
from .errors import UserError
from .model import Cluster

UNIT = "containerd"
UNIT_FILE = "/etc/systemd/system/containerd.service"
# bundle name -> (node path, units restarted when it changes). ctr is a client: replacing it
# needs no restart; the daemon, its shim and runc are what the running containerd executes.
BUNDLE_FILES = {
    "containerd/containerd": ("/usr/local/bin/containerd", (UNIT,)),
    "containerd/containerd-shim-runc-v2": ("/usr/local/bin/containerd-shim-runc-v2", (UNIT,)),
    "containerd/ctr": ("/usr/local/bin/ctr", ()),
    "runc": ("/usr/local/sbin/runc", (UNIT,)),
}


def pins(c: Cluster) -> versions.Minor:
    """The minor's row of versions.MINORS. Validation accepts only those minors; a cluster
    built without validation (an unsupported version) gets the default minor's runtime rather
    than none."""
    try:
        return versions.pins(c.kubernetes_version)
    except UserError:
        return versions.MINORS[versions.DEFAULT_MINOR]


def from_bundle(c: Cluster) -> bool:
    return not c.is_k3s and c.containerd_source == "bundle"


def config_version(c: Cluster) -> int:
    """containerd 2.x reads config version 3 (plugin IDs io.containerd.cri.v1.*); 1.x reads 2.
    The OS package is a 1.7 on the distributions supported today: version 2, which 2.x would
    still read (converted at start)."""
    if from_bundle(c) and versions.as_tuple(pins(c).containerd)[0] >= 2:
        return 3
    return 2


def cni_bin_dirs(c: Cluster) -> bool:
    """containerd 2.1 reads the CNI plugin folders as a list (`bin_dirs`) and reports the old
    `bin_dir` as deprecated (removed in 2.3)."""
    return config_version(c) == 3 and versions.as_tuple(pins(c).containerd) >= (2, 1)


def os_minimum(c: Cluster) -> dict[str, str]:
    """OS packages the runtime phase installs with containerd_source: os -> oldest version."""
    return {"containerd": pins(c).containerd_min, "runc": "1.1"}


def needs_cgroup_v2(c: Cluster) -> bool:
    """Kubelets from versions.CGROUP_V2_FROM on refuse cgroup v1 unless told otherwise."""
    return versions.as_tuple(c.kubernetes_version) >= versions.as_tuple(versions.CGROUP_V2_FROM)
