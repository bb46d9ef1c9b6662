"""Phase runtime (kubeadm nodes; k3s brings its own) ↔ playbooks/02-runtime.yml: containerd
and runc, the config in the format that containerd reads, registry mirrors, crictl's config.

`containerd_source: bundle` (default): the upstream containerd and runc from the checked bundle
(provisioner/runtime.py names the files), our containerd.service and config version 3 — the
phase then needs the bundle. `containerd_source: os`: the OS packages through apt, whose
version preflight checks against the minor's `containerd_min`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .. import runtime
from ..render import registries, template
from .base import Item, Phase, service_running


@lru_cache(maxsize=16)
def _read(path: str, sha256: str) -> bytes:
    """A bundle file's bytes, read once and shared by every node's Item (80 MB of binaries)."""
    return Path(path).read_bytes()


class Runtime(Phase):
    title = "runtime"
    playbook = "02-runtime.yml"

    def hosts(self, c):
        return c.runtime_nodes

    def requires_bundle(self, c):
        return runtime.from_bundle(c)

    def package_minimums(self, c):
        return {} if runtime.from_bundle(c) else runtime.os_minimum(c)

    def files(self, ctx, node):
        c, s = ctx.cluster, ctx.secrets
        if runtime.from_bundle(c):
            have = ctx.bundle.files if ctx.bundle is not None else {}
            for name, (dest, units) in runtime.BUNDLE_FILES.items():
                if name in have:
                    yield Item(dest, _read(str(have[name][0]), have[name][1]), 0o755,
                               units=units)
            yield Item(runtime.UNIT_FILE,
                       template("etc/systemd/system/containerd.service.j2", c, node, s),
                       units=(runtime.UNIT,))
        yield Item("/etc/containerd/config.toml",
                   template("etc/containerd/config.toml.j2", c, node, s), units=(runtime.UNIT,))
        for registry in registries(c):  # read at each pull: no restart
            yield Item(f"/etc/containerd/certs.d/{registry}/hosts.toml",
                       template("etc/containerd/certs.d/hosts.toml.j2", c, node, s, registry))
        yield Item("/etc/crictl.yaml", template("etc/crictl.yaml.j2", c, node, s))

    def refusals(self, ctx):
        """A bundle fetched before containerd came from it lacks the runtime's files."""
        if runtime.from_bundle(ctx.cluster) and ctx.bundle is not None:
            lost = [n for n in runtime.BUNDLE_FILES if n not in ctx.bundle.files]
            if lost:
                yield (f"the bundle {ctx.bundle.dir} has no {', '.join(lost)}: fetch it again "
                       "(`invoke bundle.fetch`), or set containerd_source: os")

    def interrupted(self, ctx, node):
        """Without the bundle the binaries' checksums are unknown, so the stamp (which holds
        them) cannot be compared: only the files and the unit say what is left."""
        if runtime.from_bundle(ctx.cluster) and ctx.bundle is None:
            return False
        return super().interrupted(ctx, node)

    def checks(self, ctx, node):
        c = ctx.cluster
        if runtime.from_bundle(c) and ctx.bundle is None:
            if not ctx.facts[node.name].binaries.get("containerd"):
                yield "install containerd and runc from the bundle"
        yield from service_running(ctx, node, runtime.UNIT)

    def hostvars(self, ctx, node):
        """With containerd_source os, what a bundle install left (an earlier run with bundle)
        is removed first: its unit would shadow the package's."""
        return {"containerd_source": "bundle" if runtime.from_bundle(ctx.cluster) else "os",
                "bundle_runtime_paths": [dest for dest, _ in runtime.BUNDLE_FILES.values()]
                + [runtime.UNIT_FILE]}


PHASE = Runtime()
