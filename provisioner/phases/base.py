"""What every phase is: a small object that names its hosts and files, says what it would change
on a host (from probed facts only), and knows how to run.

    class Etcd(Phase):
        title = "etcd"; playbook = "03-etcd.yml"
        def hosts(self, c): ...            # from the model's one role vocabulary
        def files(self, ctx, node): ...    # Item(path, data, mode, owner, group, units)
        def checks(self, ctx, node): ...   # end state beyond files: "start etcd", "kubeadm join"
        def run(self, run, nodes): ...     # default: push + playbook + stamp

`pending(ctx, node)` is the dry run: [] means the host is converged for this phase. A phase
never knows which action it is in; an action never asks a phase for its name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

from .. import paths
from ..model import Cluster, Node


@dataclass(frozen=True)
class Item:
    """One file a phase places on a host, and the units that read it."""

    path: str
    data: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    units: tuple[str, ...] = ()  # restarted (when running) after this file changed

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def meta(self) -> dict:
        return {"path": self.path, "mode": f"{self.mode:04o}", "owner": self.owner,
                "group": self.group}


@dataclass
class Context:
    """Everything a phase decides from: the model, secrets and PKI, the bundle, the facts."""

    cluster: Cluster
    secrets: dict
    pki: dict  # {host: {node path: (bytes, mode)}} made by provisioner.pki
    facts: dict = field(default_factory=dict)  # host -> facts.Facts
    bundle: object | None = None  # bundle.Bundle, when one was found
    local: dict = field(default_factory=dict)  # controller-side facts (kubeconfig_source)
    _files: dict = field(default_factory=dict, repr=False)

    def files(self, phase: "Phase", node: Node) -> list[Item]:
        key = (phase.title, node.name)
        if key not in self._files:
            items = list(phase.files(self, node))
            if phase.files_read_facts and node.name not in self.facts:
                return items  # rendered again once the host's facts are in
            self._files[key] = items
        return self._files[key]

    def command(self, node: Node, name: str) -> dict:
        """The result of an end-state probe command: {"rc": int | None, "out": str}."""
        return self.facts[node.name].commands.get(name) or {"rc": None, "out": ""}

    def ok(self, node: Node, name: str) -> bool:
        return self.command(node, name).get("rc") == 0

    def has_file(self, node: Node, path: str) -> bool:
        return self.facts[node.name].files.get(path) is not None


class Phase:
    title: str = ""
    playbook: str | None = None
    serial = False  # one host at a time (joining control planes)
    needs_bundle = False  # runs Kubernetes binaries: stops here without a bundle
    files_read_facts = False  # files() depends on the probed facts (etcd: joining members)
    packages: dict[str, str] = {}  # OS packages the playbook installs -> oldest version that works

    def hosts(self, c: Cluster) -> Iterable[Node]:
        return ()

    def requires_bundle(self, c: Cluster) -> bool:
        """Whether this phase needs the bundle for this cluster (runtime: only when containerd
        comes from it)."""
        return self.needs_bundle

    def package_minimums(self, c: Cluster) -> dict[str, str]:
        """OS packages the playbook installs for this cluster -> oldest version that works."""
        return dict(self.packages)

    def files(self, ctx: Context, node: Node) -> Iterable[Item]:
        return ()

    def checks(self, ctx: Context, node: Node) -> Iterable[str]:
        """End state beyond the files: what this phase would still do on the host."""
        return ()

    def notes(self, ctx: Context) -> list[str]:
        """Lines for the plan that are no work on a host (e.g. what the bundle lacks)."""
        return []

    def probes(self, c: Cluster, node: Node) -> dict:
        """What the facts probe must read for the checks: {"paths": [...], "commands":
        {name: argv}, "certs": [...]}."""
        return {}

    def refusals(self, ctx: Context) -> Iterable[str]:
        """Why this phase cannot run at all (e.g. no healthy etcd member to back up from): an
        action asks every phase of its list before it changes anything."""
        return ()

    def hostvars(self, ctx: Context, node: Node) -> dict:
        """Extra variables this phase's playbook reads for a host."""
        return {}

    # -- derived: the same for every phase ---------------------------------------------------
    def __repr__(self) -> str:
        return f"<phase {self.title}>"

    @property
    def stamp_path(self) -> str:
        return f"{paths.STAMP_DIR}/{self.title}"

    def stamp(self, ctx: Context, node: Node) -> bytes:
        """What the host records once this phase has finished there: its files' checksums."""
        items = sorted(ctx.files(self, node), key=lambda i: i.path)
        return "".join(f"{i.sha256}  {i.path}\n" for i in items).encode()

    def stamped(self, ctx: Context, node: Node) -> bool:
        """Phases whose playbook acts on their files (restart, apply) record when they finished."""
        return bool(self.playbook) and bool(ctx.files(self, node))

    def completed_once(self, ctx: Context, node: Node) -> bool:
        """The phase finished on this host in some earlier run (its stamp exists)."""
        return ctx.has_file(node, self.stamp_path)

    def interrupted(self, ctx: Context, node: Node) -> bool:
        """The files are in place but the phase never finished with them."""
        recorded = ctx.facts[node.name].files.get(self.stamp_path)
        expected = hashlib.sha256(self.stamp(ctx, node)).hexdigest()
        return self.stamped(ctx, node) and recorded != expected

    def changed(self, ctx: Context, node: Node) -> list[Item]:
        """Files whose content differs on the host (missing ones included)."""
        have = ctx.facts[node.name].files
        return [i for i in ctx.files(self, node) if have.get(i.path) != i.sha256]

    def drifted(self, ctx: Context, node: Node) -> list[tuple[Item, str]]:
        """Files with the right content but the wrong mode, owner or group: (item, how)."""
        f = ctx.facts[node.name]
        out = []
        for i in ctx.files(self, node):
            st = (getattr(f, "stats", None) or {}).get(i.path)
            if f.files.get(i.path) != i.sha256 or not st:
                continue
            wrong = []
            if st.get("mode") != i.mode:
                wrong.append(f"mode {st.get('mode', 0):04o} -> {i.mode:04o}")
            if (st.get("owner"), st.get("group")) != (i.owner, i.group):
                wrong.append(f"owner {st.get('owner')}:{st.get('group')} -> {i.owner}:{i.group}")
            if wrong:
                out.append((i, ", ".join(wrong)))
        return out

    def restart_units(self, ctx: Context, node: Node, changed: Iterable[Item]) -> list[str]:
        """Units that read a changed file and are running now (a stopped one reads the new
        file when it starts). After an interrupted run: every unit of the phase's files."""
        items = list(changed) or (ctx.files(self, node) if self.interrupted(ctx, node) else [])
        services = ctx.facts[node.name].services
        return sorted({u for i in items for u in i.units
                       if services.get(u, {}).get("active") in ("active", "activating",
                                                                  "reloading")})

    def pending(self, ctx: Context, node: Node) -> list[str]:
        """What this phase would change on `node`; [] when there is nothing to do."""
        have = ctx.facts[node.name].files
        out = [f"write {i.path} ({'new' if have.get(i.path) is None else 'changed'})"
               for i in self.changed(ctx, node)]
        out += [f"fix {i.path}: {how}" for i, how in self.drifted(ctx, node)]
        checks = list(self.checks(ctx, node))
        if not out and not checks and self.interrupted(ctx, node):
            out.append("finish applying the files in place (an earlier run stopped here)")
        return out + checks

    def work(self, ctx: Context) -> dict[str, list[str]]:
        """{host name: pending changes} for every host of this phase that has work."""
        return {n.name: p for n in self.hosts(ctx.cluster) if (p := self.pending(ctx, n))}

    def run(self, run, nodes: list[Node]) -> None:
        """Push the files, run the playbook on `nodes` (one at a time when serial), stamp."""
        run.converge(self, nodes)


# -- small readers of facts shared by several phases -------------------------------------------

def service_running(ctx: Context, node: Node, *units: str) -> Iterable[str]:
    services = ctx.facts[node.name].services
    for unit in units:
        if services.get(unit, {}).get("active") != "active":
            yield f"start {unit}"
        elif services.get(unit, {}).get("enabled") != "enabled":
            yield f"enable {unit}"


def kubectl(c: Cluster, *args: str, kubeconfig: str | None = None) -> list[str]:
    """argv of kubectl on a node of this cluster (k3s ships it as `k3s kubectl`)."""
    if c.is_k3s:
        head = ["k3s", "kubectl"] + (["--kubeconfig", kubeconfig] if kubeconfig else [])
    else:
        head = ["kubectl", "--kubeconfig", kubeconfig or paths.ADMIN_CONF]
    return head + list(args)
