"""The Kubernetes versions the provisioner supports, and every artifact pinned per minor.

One table (MINORS) drives validation (which kubernetes_version is accepted), `bundle.fetch` and
`bundle.list` (what is downloaded, from where, checked against which published checksum) and the
README's version table. Adding a minor is one row.

Where each checksum is published (`bundle.list` prints it per artifact):
- kubeadm, kubelet, kubectl: `<file>.sha256` next to each binary on dl.k8s.io.
- crictl (kubernetes-sigs/cri-tools) and CNI plugins (containernetworking/plugins):
  `<tarball>.sha256` next to each release asset on GitHub.
- containerd (containerd/containerd): `<tarball>.sha256sum` next to each release asset.
- runc (opencontainers/runc): the release's `runc.sha256sum` list.
- k3s: the release's `sha256sum-<arch>.txt` list (binary and airgap images archive).

Chosen minors: the three upstream maintains on 2026-12 (1.35, 1.36, 1.37; 1.34 left
maintenance in October 2026). 1.35 is the last minor whose kubelet still runs on containerd 1.7;
from 1.36 containerd 2.0 or newer is required (Kubernetes release notes).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Minor:
    minor: str            # "1.36"
    kubernetes: str       # newest pinned patch, kubeadm flavour: "v1.36.4"
    k3s: str              # newest pinned k3s release of the minor: "v1.36.4+k3s1"
    crictl: str           # cri-tools follows the Kubernetes minor
    cni_plugins: str      # the containernetworking/plugins release current for the minor
    containerd: str       # upstream containerd release the bundle carries
    containerd_min: str   # oldest containerd the minor's kubelet accepts (containerd_source: os)
    runc: str             # upstream runc release the bundle carries


MINORS: dict[str, Minor] = {m.minor: m for m in (
    Minor("1.35", "v1.35.9", "v1.35.9+k3s1", "v1.35.0", "v1.8.0", "v2.1.9", "1.7.0", "v1.3.6"),
    Minor("1.36", "v1.36.4", "v1.36.4+k3s1", "v1.36.0", "v1.8.0", "v2.1.9", "2.0.0", "v1.3.6"),
    Minor("1.37", "v1.37.1", "v1.37.1+k3s1", "v1.37.0", "v1.9.0", "v2.2.1", "2.0.0", "v1.3.6"),
)}
DEFAULT_MINOR = "1.36"
DEFAULT = {"kubeadm": MINORS[DEFAULT_MINOR].kubernetes, "k3s": MINORS[DEFAULT_MINOR].k3s}
# kubelets of these minors refuse cgroup v1 unless told otherwise (KubeletConfiguration
# failCgroupV1: false, which the provisioner sets only when the inventory says allow_cgroup_v1).
CGROUP_V2_FROM = "1.35"


def minor_of(version: str) -> str:
    """"v1.36.4" or "v1.36.4+k3s1" -> "1.36"."""
    major, minor = version.lstrip("v").split("+")[0].split(".")[:2]
    return f"{major}.{minor}"


def pins(version: str) -> Minor:
    try:
        return MINORS[minor_of(version)]
    except (KeyError, ValueError):
        raise UserError(f"kubernetes_version {version}: not a supported minor "
                        f"(supported: {', '.join(MINORS)})") from None


def as_tuple(version: str) -> tuple[int, ...]:
    """"v2.1.9" / "2.1.9~ds1-1" -> (2, 1, 9) for comparisons."""
    out = []
    for part in version.lstrip("v").split(".")[:3]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        out.append(int(digits or 0))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Container images per minor (kept apart from MINORS: the rows above pin binaries)
# ---------------------------------------------------------------------------------------------
#
# The tags kubeadm itself uses, from cmd/kubeadm/app/constants/constants.go of each release:
# PauseVersion, CoreDNSVersion and SupportedEtcdVersion[minor] (the etcd image of a stacked
# member; DefaultEtcdVersion only when the map has no row for the minor). Read (search tool,
# 2026-12): v1.35.8's constants.go holds PauseVersion 3.10.1, CoreDNSVersion v1.13.1,
# DefaultEtcdVersion 3.6.6-0 (quoted verbatim in a public test of kubeadm's constants,
# colonel-byte/*/upstream test, TestKubeadmConstants); the etcd-io release procedure (2026,
# "Bump etcd image") shows SupportedEtcdVersion {34, 35, 36: "3.6.9-0"} on master. NOT read at
# release-1.36 / release-1.37 themselves (those branches are not in the stored index): their
# CoreDNS and pause tags are carried over from 1.35 and the 1.37 etcd tag from 1.36. A tag that
# does not exist upstream fails `bundle.fetch` loudly (no image is ever guessed at run time);
# check with `kubeadm config images list --kubernetes-version vX.Y.Z` when a row changes.


@dataclass(frozen=True)
class ImagePins:
    pause: str
    etcd: str
    coredns: str


IMAGES: dict[str, ImagePins] = {
    # release-1.32's constants.go (stored kubernetes/kubernetes 00886ac): PauseVersion 3.10,
    # SupportedEtcdVersion[32] 3.5.24-0, CoreDNSVersion v1.11.3. Only while the lab
    # inventories still say v1.32.4 (the MINORS retarget removes it).
    "1.32": ImagePins(pause="3.10", etcd="3.5.24-0", coredns="v1.11.3"),
    "1.35": ImagePins(pause="3.10.1", etcd="3.6.6-0", coredns="v1.13.1"),
    "1.36": ImagePins(pause="3.10.1", etcd="3.6.9-0", coredns="v1.13.1"),
    "1.37": ImagePins(pause="3.10.1", etcd="3.6.9-0", coredns="v1.13.1"),
}

# Images of the manifests the provisioner renders (not kubeadm's): one release for every minor.
FLANNEL = "ghcr.io/flannel-io/flannel:v0.26.7"
FLANNEL_CNI_PLUGIN = "ghcr.io/flannel-io/flannel-cni-plugin:v1.6.2-flannel1"
KUBE_VIP = "ghcr.io/kube-vip/kube-vip:v0.8.9"
SMOKE = "docker.io/library/busybox:1.37.0"  # cluster.smoke's DaemonSet (httpd, nslookup, wget)


def image_pins(version: str) -> ImagePins:
    try:
        return IMAGES[minor_of(version)]
    except (KeyError, ValueError):
        raise UserError(f"kubernetes_version {version}: no images pinned for its minor "
                        f"(pinned: {', '.join(IMAGES)})") from None
