"""Cluster actions: render -> connect -> probe -> preflight -> plan -> apply, phase by phase.

`plan` stops after deciding per phase which hosts have work (the dry run). `up` applies those
phases in order: files are pushed over the one SSH connection per host (only those whose
checksum differs), then the phase's playbook runs on just the hosts with work, then those hosts
are probed again and the phase must report nothing left to do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import bundle as bundles
from . import facts as host_facts
from . import phases as ph
from . import pki, preflight, render, runner
from .errors import UserError
from .model import Cluster
from .state import State, write_secret

BINARY_PATHS = {"kubeadm": "/usr/local/bin/kubeadm", "kubelet": "/usr/local/bin/kubelet",
                "kubectl": "/usr/local/bin/kubectl", "crictl": "/usr/local/bin/crictl",
                "k3s": "/usr/local/bin/k3s"}


class PhaseFailed(UserError):
    pass


class BundleMissing(UserError):
    pass


@dataclass
class Run:
    """One action on one cluster: the state folder, the SSH pool and the phase context."""

    cluster: Cluster
    state: State
    ctx: ph.Context
    pool: object = None
    progress: object = None

    # -- building the context ------------------------------------------------------------------
    @classmethod
    def prepare(cls, cluster: Cluster, bundle_dir: str | None = None, progress=None) -> "Run":
        state = State(cluster)
        secrets = dict(state.secrets())
        placed = pki.ensure(cluster, state)
        if (h := pki.join_hash(state)) is not None:
            secrets["ca_cert_hash"] = h
        items: dict[str, dict[str, list[ph.Item]]] = {n.name: {} for n in cluster.nodes}
        for host, files in render.render(cluster, secrets).items():
            for path, f in files.items():
                items[host].setdefault(f.phase, []).append(
                    ph.Item(path, f.content, f.mode, tuple(f.restart)))
        for host, files in placed.items():
            for path, (data, mode) in files.items():
                restart = ("etcd",) if path.startswith("/etc/etcd/") else ()
                items[host].setdefault("pki", []).append(ph.Item(path, data, mode, restart))
        marker = json.dumps({"cluster_name": cluster.cluster_name,
                             "distribution": cluster.distribution}, sort_keys=True).encode()
        for n in cluster.nodes:
            items[n.name].setdefault("prepare", []).append(ph.Item(host_facts.MARKER, marker + b"\n"))
        found = bundles.locate(cluster, Path(bundle_dir) if bundle_dir else None)
        if found is not None:
            binaries = _binary_items(found)
            for node in ph.kube_nodes(cluster):
                items[node.name].setdefault("binaries", []).extend(binaries)
        ctx = ph.Context(cluster, items, facts={}, bundle=found)
        source = state.dir / "kubeconfig.source"
        if state.kubeconfig.exists() and source.exists():
            ctx.local["kubeconfig_source"] = source.read_text().strip()
        return cls(cluster, state, ctx, progress=progress)

    # -- talking to hosts ----------------------------------------------------------------------
    def connect(self, trust_new: bool = False) -> None:
        from .ssh import Pool

        self.state.dir.mkdir(parents=True, exist_ok=True)
        self.pool = Pool(self.cluster.nodes, self.state.known_hosts, trust_new=trust_new)

    def probe(self, names=None) -> list[str]:
        """Read the facts of `names` (default all); returns one line per unreachable host."""
        names = names or [n.name for n in self.cluster.nodes]
        paths = {}
        for name in names:
            wanted = [i.path for items in self.ctx.items[name].values() for i in items]
            wanted += [m for p in ph.UP for m in p.markers] + [p.stamp_path for p in ph.UP]
            paths[name] = sorted(set(wanted))
        found = host_facts.probe(self.pool, paths, services=ph.SERVICES, hosts=names)
        self.ctx.facts.update(found)
        return [f"{h}: {f.error}" for h, f in found.items() if not f.reachable]

    def survey(self, trust_new: bool = False) -> None:
        """Connect, read every host's facts, and stop before any change if preflight fails."""
        self.connect(trust_new)
        self.probe()
        self.preflight()

    def file_states(self, host: str) -> list[tuple[str, str, str]]:
        """(phase, node path, new | changed | unchanged) of every file managed on `host`."""
        have = self.ctx.facts[host].files
        return [(phase, i.path, "unchanged" if have.get(i.path) == i.sha256
                 else "new" if have.get(i.path) is None else "changed")
                for phase, items in self.ctx.items[host].items() for i in items]

    def preflight(self) -> None:
        problems = preflight.check(self.cluster, self.ctx.facts)
        if preflight.has_errors(problems):
            raise UserError("preflight found problems; nothing was changed on any host\n"
                            + preflight.report(problems))

    # -- plan and apply --------------------------------------------------------------------------
    def plan(self, phases=ph.UP) -> list[tuple[ph.Phase, dict[str, list[str]]]]:
        return [(p, p.work(self.ctx)) for p in phases]

    def apply(self, phase: ph.Phase, work: dict[str, list[str]]) -> None:
        """Do `phase` on the hosts in `work`. A host that fails or is lost is dropped and the
        others finish the phase; then the phase fails naming that host, so a rerun (after the
        host is back) picks up exactly what is left."""
        if phase.needs_bundle and self.ctx.bundle is None:
            raise BundleMissing(bundles.missing_message(self.cluster))
        nodes = [self.cluster.node(h) for h in work]
        pushed, errors = self._push(phase, nodes)
        nodes = [n for n in nodes if n.name not in errors]
        log = None
        if phase.name == "kubeconfig":
            self._fetch_kubeconfig()
        elif phase.playbook and nodes:
            ran = []
            for batch in ([n] for n in nodes) if phase.serial else [nodes]:
                ran += batch
                result = runner.run_playbook(
                    self.cluster, phase.playbook, batch,
                    extravars=playbook_vars(self.cluster),
                    hostvars={n.name: self._hostvars(phase, n, pushed.get(n.name, {}))
                              for n in batch},
                    state_dir=self.state.dir, known_hosts=self.state.known_hosts,
                    progress=self.progress, phase=phase.name)
                for host, task, msg in result.failures:
                    errors.setdefault(host, f"{task}: {msg}")
                if not result.ok:
                    log = result.log_path
                    if phase.serial:  # the next control plane joins only after this one
                        break
            stamps = {n.name: {phase.stamp_path: (phase.stamp(self.ctx, n), 0o644)}
                      for n in ran if n.name not in errors and phase.stamped(self.ctx, n)}
            errors.update(self._put(stamps))
        if nodes:
            for line in self.probe([n.name for n in nodes]):
                host, _, why = line.partition(": ")
                errors.setdefault(host, "lost contact: " + why)
        if errors:
            raise PhaseFailed(
                f"phase {phase.name} failed on {', '.join(sorted(errors))}:\n"
                + "\n".join(f"  {h}: {e}" for h, e in sorted(errors.items()))
                + (f"\nfull log: {log}" if log else "")
                + "\nthe other hosts finished this phase; fix the cause (or bring the host back)"
                f" and rerun cluster.up (or `--from {phase.name}`)")
        left = {h: p for h, p in phase.work(self.ctx).items() if h in work}
        if left:
            raise PhaseFailed(f"phase {phase.name} did not converge: " + "; ".join(
                f"{h}: {', '.join(p)}" for h, p in left.items()))

    def refresh_join_secrets(self, control_plane: bool) -> None:
        """Before a join into a cluster built in an earlier run: kubeadm's bootstrap token
        lives 24 h and the uploaded control plane certificates 2 h, so make both again on the
        first control plane. The secrets travel on stdin, never in a log."""
        first = self.cluster.first_control_plane.name
        s = self.state.secrets()
        kubeconfig = f"--kubeconfig {ph.ADMIN_CONF}"
        script = (f"set -e\nkubeadm token delete {s['bootstrap_token'].split('.')[0]} "
                  f"{kubeconfig} >/dev/null 2>&1 || true\n"
                  f"kubeadm token create {s['bootstrap_token']} --ttl 24h {kubeconfig} >/dev/null\n")
        if control_plane:
            script += ("kubeadm init phase upload-certs --upload-certs --certificate-key "
                       f"{s['certificate_key']} --config /etc/kubernetes/kubeadm-init.yaml "
                       ">/dev/null\n")
        result = self.pool.run("sh -s", hosts=[first], stdin=script.encode())[first]
        if result.rc != 0:
            raise PhaseFailed(f"{first}: could not renew the join token / uploaded certificates"
                              f" for the nodes joining now: {result.stderr.strip()[-300:]}")

    def _hostvars(self, phase: ph.Phase, node, pushed: dict) -> dict:
        return {"changed_files": sorted(pushed),
                "phase_files": sorted(i.path for i in self.ctx.files(node, phase.name)),
                "restart_units": self._restart_units(phase, node, pushed)}

    def _restart_units(self, phase: ph.Phase, node, pushed: dict) -> list[str]:
        """Units whose files changed now; after a run that stopped between pushing and
        restarting (stamp differs, nothing to push), every unit of the phase on that host."""
        if pushed:
            items = pushed.values()
        elif phase.interrupted(self.ctx, node):
            items = self.ctx.files(node, phase.name)
        else:
            items = []
        return sorted({u for i in items for u in i.restart})

    def _push(self, phase: ph.Phase, nodes) -> tuple[dict[str, dict[str, ph.Item]], dict]:
        """Place the phase's files whose checksum differs; ({host: pushed}, {host: error})."""
        todo: dict[str, dict[str, ph.Item]] = {}
        for n in nodes:
            have = self.ctx.facts[n.name].files
            items = {i.path: i for i in self.ctx.files(n, phase.name)
                     if have.get(i.path) != i.sha256}
            if items:
                todo[n.name] = items
        for h, items in todo.items():
            self._step(h, phase.name, f"push {len(items)} file(s)")
        errors = self._put({h: {p: (i.data, i.mode) for p, i in items.items()}
                            for h, items in todo.items()})
        for h in todo:
            if self.progress is not None:
                self.progress.done(h, changed=h not in errors, failed=errors.get(h))
        return todo, errors

    def _step(self, host: str, phase: str, text: str) -> None:
        if self.progress is not None:
            self.progress.step(host, phase, text)

    def _put(self, files) -> dict[str, str]:
        """Push {host: {path: (bytes, mode)}}; returns {host: error} for hosts that failed."""
        if not files:
            return {}
        hashes = {h: self.ctx.facts[h].files for h in files}
        return {h: "could not place files: " + r.error
                for h, r in self.pool.put_many(files, hashes).items() if r.error}

    def _fetch_kubeconfig(self) -> None:
        first = self.cluster.first_control_plane.name
        src = ph.admin_config(self.cluster)
        result = self.pool.run(f"cat {src}", hosts=[first])[first]
        if result.rc != 0:
            raise PhaseFailed(f"{first}: cannot read {src}: {result.stderr.strip()[:200]}")
        config = yaml.safe_load(result.stdout)
        for entry in config.get("clusters", []):
            entry["cluster"]["server"] = self.cluster.kubeconfig_server
        write_secret(self.state.kubeconfig, yaml.safe_dump(config).encode())
        digest = hashlib.sha256(result.stdout.encode()).hexdigest()
        (self.state.dir / "kubeconfig.source").write_text(digest + "\n")
        self.ctx.local["kubeconfig_source"] = digest


def playbook_vars(cluster: Cluster) -> dict:
    """The settings the playbooks read (never secrets: those travel in files or on stdin)."""
    return {"distribution": cluster.distribution, "ha_mode": cluster.ha_mode}


def _binary_items(found) -> list[ph.Item]:
    items = []
    for name, (path, _sha) in sorted(found.files.items()):
        if name in BINARY_PATHS:
            items.append(ph.Item(BINARY_PATHS[name], Path(path).read_bytes(), 0o755))
        elif name.startswith("cni-plugins/") and not name.endswith((".md", ".txt")):
            items.append(ph.Item("/opt/cni/bin/" + name.split("/", 1)[1],
                                 Path(path).read_bytes(), 0o755))
    return items


def phases_from(start: str | None, phases=ph.UP) -> list[ph.Phase]:
    if start is None:
        return list(phases)
    names = [p.name for p in phases]
    if start not in names:
        raise UserError(f"--from {start}: no such phase; phases are: {', '.join(names)}")
    return list(phases[names.index(start):])


def plan(cluster: Cluster, bundle_dir=None, start=None, trust_new=False) -> tuple[Run, list]:
    """The dry run: what each phase would change on each host, and the run that found it."""
    phases = phases_from(start)
    run = Run.prepare(cluster, bundle_dir)
    with run.state.lock():
        run.survey(trust_new)
    return run, run.plan(phases)


def up(cluster: Cluster, bundle_dir=None, start=None, dry_run=False, trust_new=False,
       progress=None) -> list[tuple[ph.Phase, dict[str, list[str]]]]:
    """Converge the cluster. Returns what each phase did (or, with dry_run, would do)."""
    if dry_run:
        return plan(cluster, bundle_dir, start, trust_new)[1]
    phases = phases_from(start)
    run = Run.prepare(cluster, bundle_dir, progress=progress)
    with run.state.lock():
        run.survey(trust_new)
        done = []
        for phase in phases:
            work = phase.work(run.ctx)  # fresh: earlier phases changed the facts
            if progress:
                progress.phase(phase.name, sorted(work))
            if work and phase.name.startswith("join-") and not cluster.is_k3s \
                    and not any(p.name == "control-plane" and w for p, w in done):
                run.refresh_join_secrets(control_plane=phase.name == "join-control-plane")
            if work:
                run.apply(phase, work)
            done.append((phase, work))
        return done


def status(cluster: Cluster, trust_new=False) -> dict:
    """Facts of every host (services, binaries, reachability), read in one round trip each."""
    run = Run.prepare(cluster)
    run.connect(trust_new)
    run.probe()
    return run.ctx.facts


def smoke(cluster: Cluster, say=print) -> None:
    from . import smoke as checks

    run = Run.prepare(cluster)
    run.connect()
    checks.run(cluster, run.pool, say=say)


def reset(cluster: Cluster, progress=None) -> None:
    """Remove the cluster from its hosts (playbooks/99-reset.yml); keeps PKI and secrets."""
    run = Run.prepare(cluster, progress=progress)
    with run.state.lock():
        run.connect()
        result = runner.run_playbook(cluster, "99-reset.yml", list(cluster.nodes),
                                     extravars=playbook_vars(cluster), hostvars=None,
                                     state_dir=run.state.dir, known_hosts=run.state.known_hosts,
                                     progress=progress, phase="reset")
        if not result.ok:
            raise PhaseFailed("reset failed:\n" + "\n".join(
                f"  {h}: {t}: {m}" for h, t, m in result.failures) + f"\nlog: {result.log_path}")
        run.state.kubeconfig.unlink(missing_ok=True)
        (run.state.dir / "kubeconfig.source").unlink(missing_ok=True)
