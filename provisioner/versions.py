"""The Kubernetes versions the provisioner supports, and every artifact pinned per minor.

One table (MINORS) drives validation (which kubernetes_version is accepted), the default version,
`bundle.fetch` and `bundle.list` (what is downloaded, from where, checked against which published
checksum) and the README's version table (`python -m provisioner.versions` prints it;
tests/test_versions.py checks that the README holds exactly that). Adding a minor is one row.

Where each checksum is published (`bundle.list` prints it per artifact):
- kubeadm, kubelet, kubectl: `<file>.sha256` next to each binary on dl.k8s.io.
- crictl (kubernetes-sigs/cri-tools) and CNI plugins (containernetworking/plugins):
  `<tarball>.sha256` next to each release asset on GitHub.
- containerd (containerd/containerd): `containerd-<ver>-linux-<arch>.tar.gz.sha256sum` next to
  the release tarball (whose bin/ holds containerd, containerd-shim-runc-v2 and ctr).
- runc (opencontainers/runc): the release's `runc.sha256sum` list (`runc.<arch>` lines).
- k3s: the release's `sha256sum-<arch>.txt` list (the binary and
  `k3s-airgap-images-<arch>.tar.zst`).

Why these values (checked 2026-12-03; sources are public release records):
- Minors: kubernetes.io/releases lists 1.35 (maintenance from 2026-12-28, EOL 2027-02-28), 1.36
  (EOL 2027-06-28) and 1.37 (released 2026-08-26, EOL 2027-10-28) as actively supported; 1.34
  reached end of life on 2026-10-27. kubeadm's config API is v1beta4 for all three.
- kubernetes: the newest patch each minor's release page lists as released: 1.35.9
  (2026-09-15), 1.36.4 (2026-08-11), 1.37.1 (2026-09-15).
- k3s: the newest k3s release of each minor we found published (k3s-io/k3s release notes:
  v1.35.4+k3s1, v1.36.4+k3s1, v1.37.0+k3s1 "updates Kubernetes to v1.37.0"). k3s trails
  upstream patches; bump a row when a newer +k3s1 is out.
- crictl: cri-tools tags one release per Kubernetes minor, vX.Y.0 with the minor (v1.36.0:
  kubernetes/kubernetes#138613, 2026-04; v1.37.0: 2026-09; v1.35.0 with 1.35 in 2025-12).
- CNI plugins v1.9.1 (2026-04) for every minor: it fixes GHSA-jv3w-x3r3-g6rm (fixed from v1.9.0)
  and is what k3s 1.35.3+ ships ("Bump cni plugins to v1.9.1").
- containerd v2.3.5 (2026-09-04, security fixes) for every minor: containerd's RELEASES.md marks
  2.3 LTS until 2028-04-30, 2.1 end of life since 2026-07 and 2.2 since 2026-11-06, so 2.3 is
  the only line with a future; k3s 1.36 embeds containerd 2.3 too.
- containerd_min: the Kubernetes 1.35 release notice ("Kubernetes is deprecating containerd
  v1.y support": switch to 2.0 or later before upgrading to the next version): 1.35 is the last
  minor whose kubelet runs on containerd 1.7; from 1.36 containerd 2.0 or newer is required.
  Used only when the inventory brings the OS's containerd (containerd_source: os). 1.7.0 and
  2.0.0 are the floors of those lines; containerd's RELEASES.md rows for 1.35+ (which may name a
  higher 1.7 patch) were not in the records checked.
- runc v1.4.3 (2026-06, fixes CVE-2026-41579): containerd's release/2.3 branch moved its runc to
  v1.4.3 (containerd/containerd#13590) and kOps pairs containerd 2.3.4 with runc 1.4.3.
- CGROUP_V2_FROM: the kubelet refuses cgroup v1 by default from 1.35 (KubeletConfiguration
  failCgroupV1 defaults to true).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import UserError


@dataclass(frozen=True)
class Minor:
    minor: str            # "1.36"
    kubernetes: str       # newest pinned patch, kubeadm flavour: "v1.36.4"
    k3s: str              # newest pinned k3s release of the minor: "v1.36.4+k3s1"
    crictl: str           # cri-tools follows the Kubernetes minor
    cni_plugins: str      # containernetworking/plugins release
    containerd: str       # upstream containerd release the bundle carries
    containerd_min: str   # oldest containerd the minor's kubelet accepts (containerd_source: os)
    runc: str             # upstream runc release the bundle carries


MINORS: dict[str, Minor] = {m.minor: m for m in (
    Minor("1.35", "v1.35.9", "v1.35.4+k3s1", "v1.35.0", "v1.9.1", "v2.3.5", "1.7.0", "v1.4.3"),
    Minor("1.36", "v1.36.4", "v1.36.4+k3s1", "v1.36.0", "v1.9.1", "v2.3.5", "2.0.0", "v1.4.3"),
    Minor("1.37", "v1.37.1", "v1.37.0+k3s1", "v1.37.0", "v1.9.1", "v2.3.5", "2.0.0", "v1.4.3"),
)}
SUPPORTED = tuple(MINORS)
DEFAULT_MINOR = "1.36"  # the middle minor: a year of patches left, and 1.37 to upgrade to
DEFAULT = {"kubeadm": MINORS[DEFAULT_MINOR].kubernetes, "k3s": MINORS[DEFAULT_MINOR].k3s}
CGROUP_V2_FROM = "1.35"

TABLE_HEAD = ("minor", "kubeadm", "k3s", "crictl", "CNI plugins", "containerd",
              "containerd (OS) at least", "runc")


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


def supported_range() -> str:
    """"1.35 to 1.37" for messages."""
    return f"{SUPPORTED[0]} to {SUPPORTED[-1]}"


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


def markdown_table() -> str:
    """The README's version table, rendered from MINORS (the README must hold exactly this)."""
    rows = [TABLE_HEAD, tuple("---" for _ in TABLE_HEAD)]
    for m in MINORS.values():
        values = [getattr(m, f.name) for f in fields(Minor)]
        if m.minor == DEFAULT_MINOR:
            values[1] += " (default)"
            values[2] += " (default)"
        rows.append(tuple(values))
    return "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
