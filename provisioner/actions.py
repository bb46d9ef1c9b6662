"""Actions: ordered lists of phases, run as validate -> connect -> probe -> preflight -> phases.

    UP = [prepare, runtime, etcd, loadbalancer, binaries, control-plane, join-control-plane,
          join-workers, cni, addons, node-meta, kubeconfig]

`plan` stops after asking every phase what it would change on every host (the dry run). `up`
applies the phases in order: each one pushes its files over the one SSH connection per host
(only those whose checksum differs), runs its playbook on just the hosts with work (a changed
file restarts exactly the running units that read it), then those hosts are probed again and
the phase must report nothing left to do. Nothing is chosen by a phase's name.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from . import bundle as bundles
from . import facts as host_facts
from . import paths, phases as ph, pki, preflight, runner
from .errors import UserError
from .model import Cluster, Node
from .state import State, write_atomic, write_secret

UP: tuple[ph.Phase, ...] = ph.ALL

# Certificate authorities a host may already carry: (node path, file in the state's pki/).
CAS = ((f"{paths.KUBE_PKI}/ca.crt", "ca.crt"), (f"{paths.ETCD_PKI}/ca.crt", "etcd/ca.crt"))
VERSION = re.compile(r"v\d+\.\d+\.\d+(?:\+k3s\d+)?")


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
    phases: tuple = UP  # the action's phases: what the probe reads for
    rerun: str = ""  # how to resume after a failed phase, when not `rerun cluster.up`
    warnings: list = field(default_factory=list)  # preflight problems of level "warning"

    # -- building the context (call with the state lock held) --------------------------------
    @classmethod
    def prepare(cls, cluster: Cluster, bundle_dir: str | None = None, progress=None) -> "Run":
        """Secrets and PKI are made here when missing: call with the exclusive lock held."""
        state = State(cluster)
        secrets = dict(state.secrets(create=True))
        placed = pki.ensure(cluster, state)
        if (h := pki.join_hash(state)) is not None:
            secrets["ca_cert_hash"] = h
        found = bundles.locate(cluster, Path(bundle_dir) if bundle_dir else None)
        ctx = ph.Context(cluster, secrets, placed, bundle=found)
        source = state.dir / "kubeconfig.source"
        if state.kubeconfig.exists() and source.exists():
            ctx.local["kubeconfig_source"] = source.read_text().strip()
        return cls(cluster, state, ctx, progress=progress)

    # -- talking to hosts ----------------------------------------------------------------------
    def connect(self, trust_new: bool = False) -> None:
        from .ssh import Pool

        self.state.make_dir()
        self.pool = Pool(self.cluster.nodes, self.state.known_hosts, trust_new=trust_new)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def probe(self, names=None, more=None, timeout: float = 60) -> list[str]:
        """Read the facts of `names` (default all); returns one line per unreachable host.
        more: {host: {"commands": {...}, and facts.EXTRA_PARAMS}} read in the same round trip."""
        more = more or {}
        names = names or [n.name for n in self.cluster.nodes]
        wanted, commands, certs = {}, {}, {}
        for name in names:
            node = self.cluster.node(name)
            files, cmds, cert_paths = set(), {}, set()
            for phase in dict.fromkeys(UP + tuple(self.phases)):
                if node not in phase.hosts(self.cluster):
                    continue
                files.update(i.path for i in self.ctx.files(phase, node))
                files.add(phase.stamp_path)
                extra = phase.probes(self.cluster, node)
                files.update(extra.get("paths", ()))
                cmds.update(extra.get("commands", {}))
                cert_paths.update(extra.get("certs", ()))
            packages = sorted({p for phase in self.phases if node in phase.hosts(self.cluster)
                               for p in phase.package_minimums(self.cluster)})
            if packages:
                cmds[preflight.POLICY] = ["apt-cache", "policy", *packages]
            cmds.update((more.get(name) or {}).get("commands", {}))
            wanted[name] = sorted(files)
            commands[name] = cmds
            certs[name] = [path for path, _ in CAS] + sorted(cert_paths - {p for p, _ in CAS})
        found = host_facts.probe(self.pool, wanted, services=paths.SERVICES, hosts=names,
                                 commands_by_host=commands, certs_by_host=certs, timeout=timeout,
                                 extra_by_host={h: {k: v for k, v in e.items() if k != "commands"}
                                                for h, e in more.items()})
        self.ctx.facts.update(found)
        return [f"{h}: {f.error}" for h, f in found.items() if not f.reachable]

    def survey(self, trust_new: bool = False) -> None:
        """Connect, read every host's facts, and stop before any change if preflight fails."""
        self.connect(trust_new)
        self.probe()
        self.preflight()

    def file_states(self, host: str) -> list[tuple[str, str, str]]:
        """(phase, node path, new | changed | drifted | unchanged) of every file on `host`."""
        node = self.cluster.node(host)
        out = []
        for phase in UP:
            if node not in phase.hosts(self.cluster):
                continue
            changed = {i.path for i in phase.changed(self.ctx, node)}
            drifted = {i.path for i, _ in phase.drifted(self.ctx, node)}
            have = self.ctx.facts[host].files
            for i in self.ctx.files(phase, node):
                state = ("drifted" if i.path in drifted else "unchanged" if i.path not in changed
                         else "new" if have.get(i.path) is None else "changed")
                out.append((phase.title, i.path, state))
        return out

    def problems(self) -> list[preflight.HostProblem]:
        """Preflight of every host, with the package versions the action's phases need."""
        problems = preflight.check(self.cluster, self.ctx.facts)
        for node in self.cluster.nodes:
            f = self.ctx.facts.get(node.name)
            minimum = {p: v for phase in self.phases if node in phase.hosts(self.cluster)
                       for p, v in phase.package_minimums(self.cluster).items()}
            if f is not None and f.reachable and minimum:
                problems += preflight.package_problems(node, f, minimum)
        return problems

    def preflight(self) -> None:
        problems = self.problems()
        # allowed but said on every run (e.g. cgroup v1 acknowledged with allow_cgroup_v1)
        self.warnings = [p for p in problems if p.level == "warning"]
        for p in self.warnings:
            if self.progress is not None:
                self.progress.warn(f"preflight: {p}")
        if preflight.has_errors(problems):
            raise UserError("preflight found problems; nothing was changed on any host\n"
                            + preflight.report(problems))
        refusals = (self.foreign_cas() + self.version_changes() + self.fixed_changes()
                    + [r for p in self.phases if p in UP for r in p.refusals(self.ctx)])
        if refusals:
            raise UserError("refused before any change:\n" + "\n".join(refusals))

    def foreign_cas(self) -> list[str]:
        """Hosts that carry a cluster or etcd CA other than this state folder's: pushing ours
        would split a live cluster (e.g. a state folder made anew, or another cluster's hosts)."""
        out = []
        for node in self.cluster.nodes:
            certs = getattr(self.ctx.facts[node.name], "certs", None) or {}
            for path, ours in CAS:
                theirs, mine = certs.get(path), self.state.pki / ours
                if not theirs or not mine.exists():
                    continue
                a, b = fingerprint(theirs.encode()), fingerprint(mine.read_bytes())
                if a != b:
                    out.append(f"{node.name}: {path} is another CA (SHA256 {a}) than this "
                               f"cluster's {mine} (SHA256 {b}): is this the right state folder "
                               f"({self.state.dir}) and inventory? If the host belongs to "
                               "another cluster, reset it first (cluster.reset)")
        return out

    def version_changes(self) -> list[str]:
        """A built node running another Kubernetes version than the inventory's: changing
        versions is an upgrade (drain, kubeadm upgrade), never a plain binary swap."""
        want = self.cluster.kubernetes_version
        out, running = [], set()
        for node in self.cluster.kube_nodes:
            built = any(phase.completed_once(self.ctx, node) for phase in
                        (ph.CONTROL_PLANE, ph.JOIN_CONTROL_PLANE, ph.JOIN_WORKERS)
                        if node in phase.hosts(self.cluster))
            tool = "k3s" if self.cluster.is_k3s else "kubelet"
            line = self.ctx.facts[node.name].versions.get(tool) or ""
            have = VERSION.search(line)
            if built and have and have.group(0) != want:
                out.append(f"{node.name}: runs {tool} {have.group(0)}, the inventory says {want};"
                           f" a version change is an upgrade: run `invoke cluster.upgrade --to "
                           f"{want}`, or set kubernetes_version back to {have.group(0)}")
                running.add(have.group(0))
        running.discard(want)
        if len(running) == 1 and len(out) == len(self.cluster.kube_nodes):
            # every node runs one other version: an upgrade finished, the file was not edited
            v = running.pop()
            return [f"every node runs {v}, the inventory says {want}: after `cluster.upgrade "
                    f"--to {v}` set kubernetes_version: {v} in "
                    f"{self.cluster.source or 'the inventory'} (or upgrade to {want})"]
        return out

    def fixed_changes(self) -> list[str]:
        """Settings a built cluster cannot change in place (pod and service networks, DNS
        domain), compared with what the hosts' markers say it was built with."""
        if not any(ph.CONTROL_PLANE.completed_once(self.ctx, n)
                   for n in ph.CONTROL_PLANE.hosts(self.cluster)):
            return []
        out = []
        for key in ph.PREPARE.fixed:
            built = {str(m[key]) for n in self.cluster.nodes
                     if (m := getattr(self.ctx.facts[n.name], "marker", None) or {}).get(key)}
            want = str(getattr(self.cluster, key))
            if built and built != {want}:
                out.append(f"{key}: the cluster was built with {', '.join(sorted(built))}; it "
                           f"cannot change to {want} in place (set it back; a different one "
                           "needs a new cluster)")
        return out

    # -- plan and apply --------------------------------------------------------------------------
    def plan(self, phases=UP) -> list[tuple[ph.Phase, dict[str, list[str]]]]:
        return [(p, p.work(self.ctx)) for p in phases]

    def apply(self, phase: ph.Phase, work: dict[str, list[str]]) -> None:
        """Do `phase` on the hosts in `work`, then require it to have nothing left there."""
        if phase.requires_bundle(self.cluster) and self.ctx.bundle is None:
            raise BundleMissing(bundles.missing_message(self.cluster))
        phase.run(self, [self.cluster.node(h) for h in work])
        left = {h: p for h, p in phase.work(self.ctx).items() if h in work}
        if left:
            raise PhaseFailed(f"phase {phase.title} did not converge: " + "; ".join(
                f"{h}: {', '.join(p)}" for h, p in left.items()))

    def apply_all(self, phases, progress=None) -> list[tuple[ph.Phase, dict[str, list[str]]]]:
        """Each phase in order on the hosts it has work on; what each did. Without a bundle,
        the phases that need one are passed over (containerd from the bundle comes before
        etcd and the load balancers, which need none), then the run stops saying how to
        supply it."""
        done, skipped = [], []
        for phase in phases:
            work = phase.work(self.ctx)  # fresh: earlier phases changed the facts
            if work and phase.requires_bundle(self.cluster) and self.ctx.bundle is None:
                skipped.append(phase.title)
                done.append((phase, {}))
                continue
            if progress:
                progress.phase(phase.title, sorted(work))
            if work:
                self.apply(phase, work)
            done.append((phase, work))
        if skipped:
            raise BundleMissing(bundles.missing_message(self.cluster)
                                + f"\n(not done without it: {', '.join(skipped)})")
        return done

    def converge(self, phase: ph.Phase, nodes: list[Node], serial: bool | None = None) -> None:
        """The usual run of a phase: push its changed files, run its playbook on `nodes` (one
        at a time when serial), probe again, and stamp the hosts whose end state is reached. A
        host that fails or is lost is dropped and the others finish the phase; then the phase
        fails naming that host, so a rerun (after the host is back) picks up what is left."""
        serial = phase.serial if serial is None else serial
        changed = {n.name: phase.changed(self.ctx, n) for n in nodes}
        hostvars = {n.name: self._hostvars(phase, n, changed[n.name]) for n in nodes}
        errors = self._push(phase, changed)
        nodes = [n for n in nodes if n.name not in errors]
        log = None
        done = []
        if phase.playbook and nodes:
            for batch in ([n] for n in nodes) if serial else [nodes]:
                result = runner.run_playbook(
                    self.cluster, phase.playbook, batch, extravars=playbook_vars(self.cluster),
                    hostvars={n.name: hostvars[n.name] for n in batch},
                    state_dir=self.state.dir, known_hosts=self.state.known_hosts,
                    secrets=self.ctx.secrets, progress=self.progress, phase=phase.title)
                for host, task, msg in result.failures:  # the last says most (a rescue's why)
                    errors[host] = f"{task}: {msg}"
                done += [n for n in batch if n.name not in errors]
                if not result.ok:
                    log = result.log_path
                    if serial:  # the next host goes only after this one succeeded
                        break
        if nodes:
            for line in self.probe([n.name for n in nodes]):
                host, _, why = line.partition(": ")
                errors.setdefault(host, "lost contact: " + why)
            for n in nodes:
                if unanswered := self.ctx.facts[n.name].unanswered():
                    errors.setdefault(n.name, "cannot tell whether it is done: "
                                      + "; ".join(unanswered) + " (asked twice)")
        self._stamp(phase, [n for n in done if n.name not in errors], errors)
        if errors:
            raise PhaseFailed(
                f"phase {phase.title} failed on {', '.join(sorted(errors))}:\n"
                + "\n".join(f"  {h}: {e}" for h, e in sorted(errors.items()))
                + (f"\nfull log: {log}" if log else "")
                + "\nthe other hosts finished this phase; fix the cause (or bring the host back)"
                + (f" and {self.rerun}" if self.rerun else
                   f" and rerun cluster.up (or `--from {phase.title}`)"))

    def _stamp(self, phase: ph.Phase, nodes: list[Node], errors: dict) -> None:
        """Record that the phase finished, only on hosts whose end state is reached now."""
        stamps = {n.name: {phase.stamp_path: (phase.stamp(self.ctx, n), 0o644)}
                  for n in nodes if phase.stamped(self.ctx, n)
                  and not list(phase.checks(self.ctx, n))}
        errors.update(self._put(stamps))
        for host, files in stamps.items():
            if host not in errors:
                data = files[phase.stamp_path][0]
                self.ctx.facts[host].files[phase.stamp_path] = hashlib.sha256(data).hexdigest()

    def renew_join_secrets(self, upload_certs: bool) -> None:
        """Before kubeadm joins: the bootstrap token lives 24 h and the uploaded control plane
        certificates 2 h, so the first control plane makes both again from its config file
        (kubeadm's bootstrap-token and upload-certs steps; no secret in any command line)."""
        first = self.cluster.first_control_plane.name
        config = f"--config {paths.KUBEADM_INIT}"
        script = f"set -e\nkubeadm init phase bootstrap-token {config} >/dev/null\n"
        if upload_certs:
            script += f"kubeadm init phase upload-certs --upload-certs {config} >/dev/null\n"
        result = self.pool.run("sh -s", hosts=[first], stdin=script.encode())[first]
        if result.rc != 0:
            raise PhaseFailed(f"{first}: could not renew the join token / uploaded certificates"
                              f" for the nodes joining now: {(result.error or result.stderr).strip()[-300:]}")

    def fetch_kubeconfig(self, src: str) -> None:
        first = self.cluster.first_control_plane.name
        result = self.pool.run(f"cat {src}", hosts=[first])[first]
        if result.rc != 0:
            raise PhaseFailed(f"{first}: cannot read {src}: {(result.error or result.stderr).strip()[:200]}")
        config = yaml.safe_load(result.stdout)
        for entry in config.get("clusters", []):
            entry["cluster"]["server"] = self.cluster.kubeconfig_server
        write_secret(self.state.kubeconfig, yaml.safe_dump(config).encode())
        digest = hashlib.sha256(result.stdout.encode()).hexdigest()
        write_atomic(self.state.dir / "kubeconfig.source", digest.encode() + b"\n")
        self.ctx.local["kubeconfig_source"] = digest

    # -- pieces ------------------------------------------------------------------------------------
    def _hostvars(self, phase: ph.Phase, node: Node, changed: list[ph.Item]) -> dict:
        items = self.ctx.files(phase, node)
        drifted = {i.path for i, _ in phase.drifted(self.ctx, node)}
        return {"changed_files": sorted(i.path for i in changed),
                "phase_files": sorted(i.path for i in items),
                "restart_units": phase.restart_units(self.ctx, node, changed),
                "file_meta": [i.meta for i in items if i.path in drifted
                              or (i.owner, i.group) != ("root", "root")],
                **phase.hostvars(self.ctx, node)}

    def _push(self, phase: ph.Phase, changed: dict[str, list[ph.Item]]) -> dict[str, str]:
        """Place the changed files; {host: error} for hosts that failed."""
        todo = {h: {i.path: (i.data, i.mode) for i in items} for h, items in changed.items()
                if items}
        for h, files in todo.items():
            self._step(h, phase.title, f"push {len(files)} file(s)")
        errors = self._put(todo)
        for h in todo:
            if self.progress is not None:
                self.progress.done(h, changed=h not in errors, failed=errors.get(h))
        return errors

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


def fingerprint(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return cert.fingerprint(hashes.SHA256()).hex(":")[:47] + "..."


def playbook_vars(cluster: Cluster) -> dict:
    """The settings and node paths the playbooks read (never secrets: those travel in files
    or on stdin)."""
    return {"distribution": cluster.distribution, "ha_mode": cluster.ha_mode,
            "paths": paths.PLAYBOOK_VARS}


def phases_from(start: str | None, phases=UP) -> list[ph.Phase]:
    if start is None:
        return list(phases)
    titles = [p.title for p in phases]
    if start not in titles:
        raise UserError(f"--from {start}: no such phase; phases are: {', '.join(titles)}")
    return list(phases[titles.index(start):])


@contextmanager
def session(cluster: Cluster, bundle_dir=None, progress=None, shared=False, trust_new=False,
            survey=True, phases=UP):
    """A Run with the cluster lock held (shared for read-only actions), connected and, with
    `survey`, probed and preflighted. Secrets and PKI are made (or read) under the exclusive
    lock, held just for that by read-only actions."""
    state = State(cluster)
    if shared:
        with state.lock(wait=10):
            run = Run.prepare(cluster, bundle_dir, progress=progress)
        held = state.lock(shared=True)
    else:
        held = state.lock()
    with held:
        if not shared:
            run = Run.prepare(cluster, bundle_dir, progress=progress)
        run.phases = tuple(phases)
        try:
            if survey:
                run.survey(trust_new)
            else:
                run.connect(trust_new)
            yield run
        finally:
            run.close()


def plan(cluster: Cluster, bundle_dir=None, start=None, trust_new=False, phases=UP
         ) -> tuple[Run, list]:
    """The dry run: what each phase would change on each host, and the run that found it."""
    todo = phases_from(start, phases)
    with session(cluster, bundle_dir, shared=True, trust_new=trust_new, phases=phases) as run:
        return run, run.plan(todo)


def up(cluster: Cluster, bundle_dir=None, start=None, dry_run=False, trust_new=False,
       progress=None, phases=UP) -> list[tuple[ph.Phase, dict[str, list[str]]]]:
    """Converge the cluster. Returns what each phase did (or, with dry_run, would do)."""
    if dry_run:
        return plan(cluster, bundle_dir, start, trust_new, phases)[1]
    todo = phases_from(start, phases)
    with session(cluster, bundle_dir, progress=progress, trust_new=trust_new,
                 phases=phases) as run:
        done = run.apply_all(todo, progress)
        if list(todo) == list(UP):  # a whole successful run: remember the cluster's hosts
            from .removal import record_hosts

            record_hosts(run.state, cluster)
        return done


def check(cluster: Cluster, trust_new=False) -> tuple[list, dict]:
    """`cluster.preflight`: every host probed once; (problems, facts)."""
    with session(cluster, shared=True, trust_new=trust_new, survey=False) as run:
        run.probe()
        return run.problems(), run.ctx.facts


def status(cluster: Cluster, trust_new=False) -> dict:
    """Facts of every host (services, binaries, reachability), read in one round trip each."""
    with session(cluster, shared=True, trust_new=trust_new, survey=False) as run:
        run.probe()
        return run.ctx.facts


def smoke(cluster: Cluster, say=print) -> None:
    from . import smoke as checks

    with session(cluster, shared=True, survey=False) as run:
        checks.run(cluster, run.pool, say=say)


def reset(cluster: Cluster, progress=None) -> None:
    """Remove the cluster from its hosts (playbooks/99-reset.yml); keeps PKI and secrets."""
    with session(cluster, progress=progress, survey=False) as run:
        result = runner.run_playbook(cluster, "99-reset.yml", list(cluster.nodes),
                                     extravars=playbook_vars(cluster), hostvars=None,
                                     state_dir=run.state.dir, known_hosts=run.state.known_hosts,
                                     secrets=run.ctx.secrets, progress=progress, phase="reset")
        if not result.ok:
            raise PhaseFailed("reset failed:\n" + "\n".join(
                f"  {h}: {t}: {m}" for h, t, m in result.failures) + f"\nlog: {result.log_path}")
        run.state.kubeconfig.unlink(missing_ok=True)
        (run.state.dir / "kubeconfig.source").unlink(missing_ok=True)
