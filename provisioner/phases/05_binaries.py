"""Phase binaries (kube nodes; needs the bundle) ↔ playbooks/05-binaries.yml: kubeadm, kubelet,
kubectl, crictl and the CNI plugins (or k3s) from the checked bundle, and the units that run
them. A different version than the nodes run is refused before any change (see
provisioner.actions: that is `cluster.upgrade`).

k3s: when the bundle holds k3s's image tarball (`k3s-airgap-images-<arch>.tar.zst`, as
bundle.fetch names it), every k3s node gets it in /var/lib/rancher/k3s/agent/images/ before k3s
first starts, which imports it from there: the node needs no registry for k3s's own images.
Without it the nodes pull those images (`notes` says so in the plan)."""

from __future__ import annotations

from pathlib import Path

from .. import paths
from ..render import template
from .base import Item, Phase, service_running

BINARIES = ("kubeadm", "kubelet", "kubectl", "crictl", "k3s")
UNITS = {"kubelet": ("kubelet",), "k3s": ("k3s", "k3s-agent")}
AIRGAP = "k3s-airgap-images-{arch}.tar.zst"


def airgap_images(bundle) -> list[str]:
    """The k3s image tarballs of the bundle (one per architecture it was fetched for)."""
    prefix, suffix = AIRGAP.split("{arch}")
    return sorted(n for n in (bundle.files if bundle else ())
                  if n.startswith(prefix) and n.endswith(suffix) and "/" not in n)


class Binaries(Phase):
    title = "binaries"
    playbook = "05-binaries.yml"
    needs_bundle = True

    def hosts(self, c):
        return c.kube_nodes

    def files(self, ctx, node):
        c, s = ctx.cluster, ctx.secrets
        unit = self.unit(c, node)
        if ctx.bundle is not None:
            for name, (path, _sha) in sorted(ctx.bundle.files.items()):
                if name in BINARIES:
                    units = tuple(u for u in UNITS.get(name, ()) if u == unit)
                    yield Item(f"{paths.BIN_DIR}/{name}", Path(path).read_bytes(), 0o755,
                               units=units)
                elif name.startswith("cni-plugins/") and not name.endswith((".md", ".txt")):
                    yield Item(f"{paths.CNI_BIN_DIR}/{name.split('/', 1)[1]}",
                               Path(path).read_bytes(), 0o755)
        if c.is_k3s:
            # read by k3s when it starts (no restart for a new tarball: an upgrade restarts it)
            for name in airgap_images(ctx.bundle):
                yield Item(f"{paths.K3S_IMAGES}/{name}", ctx.bundle.files[name][0].read_bytes(),
                           0o644)
            yield Item(f"/etc/systemd/system/{unit}.service",
                       template("etc/systemd/system/k3s.service.j2", c, node, s), units=(unit,))
        else:
            yield Item("/etc/systemd/system/kubelet.service",
                       template("etc/systemd/system/kubelet.service.j2", c, node, s),
                       units=("kubelet",))
            yield Item("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
                       template("etc/systemd/system/kubelet.service.d/10-kubeadm.conf.j2", c,
                                node, s), units=("kubelet",))

    @staticmethod
    def unit(c, node) -> str:
        if not c.is_k3s:
            return "kubelet"
        return "k3s" if node.has("control_plane") else "k3s-agent"

    def probes(self, c, node):
        return {"paths": [paths.KUBELET_CONFIG]}

    def joined(self, ctx, node) -> bool:
        """kubeadm starts the kubelet (its kubelet-start step writes the kubelet's config);
        from then on, keeping it running is ours."""
        return not ctx.cluster.is_k3s and ctx.has_file(node, paths.KUBELET_CONFIG)

    def checks(self, ctx, node):
        """Without a bundle the expected binaries are unknown: only their absence is work."""
        if ctx.bundle is None:
            names = ("k3s",) if ctx.cluster.is_k3s else ("kubeadm", "kubelet", "kubectl")
            missing = [b for b in names if not ctx.facts[node.name].binaries.get(b)]
            if missing:
                yield "install " + ", ".join(missing) + " from the bundle"
        if self.joined(ctx, node):
            yield from service_running(ctx, node, "kubelet")

    def notes(self, ctx) -> list[str]:
        """What the plan should say about the bundle beyond the work per host."""
        if ctx.cluster.is_k3s and ctx.bundle is not None and not airgap_images(ctx.bundle):
            return [f"the bundle {ctx.bundle.dir} has no {AIRGAP.format(arch='amd64')}: k3s "
                    "nodes will pull their system images (pause, CoreDNS, ...) from registries "
                    "(or registry_mirrors) when k3s starts"]
        return []

    def hostvars(self, ctx, node):
        return {"kubelet_joined": self.joined(ctx, node)}


PHASE = Binaries()
