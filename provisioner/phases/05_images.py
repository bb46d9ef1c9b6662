"""Phase images (kubeadm nodes; needs the bundle) ↔ playbooks/05-images.yml: the bundle's
container images imported into containerd (`ctr -n k8s.io images import`), so that kubeadm,
the CNI, kube-vip and cluster.smoke never pull from a registry.

Only the images a node lacks: the probe lists the node's images (`ctr -n k8s.io images ls`,
names and digests) in the one round trip, so the no-op rerun pushes and imports nothing. An
image whose name is there with another digest is imported again. Control plane images
(kube-apiserver, controller-manager, scheduler, stacked etcd, kube-vip) go to control planes
only; the others (kube-proxy, CoreDNS, pause, flannel, smoke) to every kube node. A bundle of
binaries only (no IMAGES.json) leaves the nodes to pull images themselves: no work here.
"""

from __future__ import annotations

from .. import images
from .base import Phase

LIST = "images"  # the probe command's name
LIST_LIMIT = 4_000_000  # characters of its output kept (about 250 a line)
LIST_TIMEOUT = 120.0  # seconds: ctr takes seconds on a small or loaded node
STAGE = "/var/lib/provisioner/images"  # archives wait here for the playbook, which removes them


def listed(out: str) -> dict[str, str]:
    """`ctr images ls` output -> {name: digest} (columns REF TYPE DIGEST SIZE ...)."""
    have = {}
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3 and cols[2].startswith("sha256:"):
            have[cols[0]] = cols[2]
    return have


class Images(Phase):
    title = "images"
    playbook = "05-images.yml"
    needs_bundle = True

    def hosts(self, c):
        return c.runtime_nodes  # kubeadm nodes (k3s: its airgap archive, phase binaries)

    def probes(self, c, node):
        # every line (a node keeps the images of earlier versions), and time for a slow node
        return {"commands": {LIST: {"argv": ["ctr", "-n", "k8s.io", "images", "ls"],
                                    "limit": LIST_LIMIT, "timeout": LIST_TIMEOUT,
                                    "stderr": "stdout"}}}

    def held(self, ctx, node) -> dict[str, str] | str:
        """{ref: digest} of the node's images, or why containerd could not list them."""
        result = ctx.command(node, LIST)
        out = (result.get("out") or "").strip()
        if result.get("rc") == 0:
            return listed(out)
        if result.get("rc") is None:
            return f"`ctr images ls` did not answer within {LIST_TIMEOUT:.0f} s"
        return f"`ctr images ls` failed: {out.splitlines()[-1] if out else 'no output'}"

    def missing(self, ctx, node) -> list[tuple[str, dict]]:
        """(ref, IMAGES.json record) of the bundle's images this node should hold and lacks."""
        bundle = ctx.bundle
        if bundle is None or getattr(bundle, "images", None) is None:
            return []
        have = self.held(ctx, node)
        have = have if isinstance(have, dict) else {}
        return [(i.ref, bundle.images[i.ref]) for i in images.for_node(ctx.cluster, node)
                if have.get(i.ref) != bundle.images[i.ref]["digest"]]

    def checks(self, ctx, node):
        missing = self.missing(ctx, node)
        held = self.held(ctx, node)
        if missing and isinstance(held, str) and ctx.facts[node.name].active("containerd"):
            yield f"read the node's images ({held})"  # containerd runs, yet did not answer
        for ref, _rec in missing:
            yield f"import image {ref}"

    def staged(self, ctx, node) -> list[str]:
        return [f"{STAGE}/{rec['file'].rsplit('/', 1)[1]}" for _r, rec in self.missing(ctx, node)]

    def replaced(self, ctx, node) -> list[str]:
        """Refs the node holds with another digest: removed first, since an import does not
        move an existing name to another image."""
        have = self.held(ctx, node)
        if not isinstance(have, dict):
            return []
        return [ref for ref, _rec in self.missing(ctx, node) if ref in have]

    def hostvars(self, ctx, node):
        return {"image_archives": self.staged(ctx, node), "image_stage": STAGE,
                "image_replaced": self.replaced(ctx, node)}

    def run(self, run, nodes):
        """Push each node's missing archives (0600, root), then the playbook imports them."""
        folder = run.ctx.bundle.dir
        todo = {}
        for n in nodes:
            files = {}
            for _ref, rec in self.missing(run.ctx, n):
                files[f"{STAGE}/{rec['file'].rsplit('/', 1)[1]}"] = (
                    (folder / rec["file"]).read_bytes(), 0o600)
            if files:
                todo[n.name] = files
                run._step(n.name, self.title, f"push {len(files)} image archive(s)")
        errors = run._put(todo)
        if errors:
            from ..actions import PhaseFailed
            raise PhaseFailed(f"phase {self.title}: " + "; ".join(
                f"{h}: {e}" for h, e in sorted(errors.items())))
        run.converge(self, nodes)


PHASE = Images()
