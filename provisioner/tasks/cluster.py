"""`invoke cluster.*`: validate, render, plan, preflight, up, and day-2 actions."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import task

from .. import inventory as inv
from .. import actions
from ..errors import InvalidInventory, UserError
from ..model import ROLE_GROUPS
from . import DEFAULT_INVENTORY, recorded, user_errors

HELP = {
    "inventory": "inventory file (default: the built-in lab, inventories/lab.yml)",
    "bundle": "offline bundle folder with the Kubernetes binaries (see bundle.fetch)",
    "from_": "resume at this phase (phases: " + ", ".join(p.title for p in actions.UP) + ")",
    "trust_new_hosts": "record the SSH host keys of hosts not yet in known_hosts",
    "yes": "do not ask for confirmation",
    "files": "also list every managed file per host (new, changed, unchanged) and its services",
    "plan": "only say what would be done (probes the hosts, changes nothing)",
    "ask_become_pass": "ask for the sudo password of the nodes' SSH user (nodes without "
                       "ansible_become_password_file)",
    "snapshot": "a backup made by cluster.backup: <state>/<cluster>/backups/<UTC time>.db "
                "(its .json must be beside it)",
}


def helps(*names: str) -> dict:
    return {n: HELP[n] for n in names}


def load(inventory: str, ask_become_pass: bool = False):
    """The checked inventory; what is allowed but unwise is said on stderr first. With
    ask_become_pass, the sudo password is asked once (never echoed)."""
    cluster = inv.load(inventory)
    for line in cluster.warnings:
        print(f"warning: {line}", file=sys.stderr)
    users = sorted({n.ssh_user for n in cluster.nodes if n.become and not n.become_password_file})
    if ask_become_pass and users:
        from .. import become

        become.ask(f"sudo password of {', '.join(users)} on the nodes: ")
    return cluster


@task(help={"inventory": "inventory file (default: the built-in lab)"})
@user_errors
def validate(c, inventory=DEFAULT_INVENTORY):
    """Check an inventory; print every problem as FILE:LINE: key: message (fix)."""
    try:
        cluster = load(inventory)
    except InvalidInventory as e:
        n = len(e.problems)
        raise UserError(f"{e}\n{n} problem{'s' if n != 1 else ''} in {inventory}") from None
    roles = ", ".join(f"{len(cluster.with_role(r))} {r}" for r in ROLE_GROUPS
                      if cluster.with_role(r))
    print(f"{inventory}: valid: {len(cluster.nodes)} host(s) ({roles}), {cluster.distribution} "
          f"{cluster.kubernetes_version}, ha_mode {cluster.ha_mode}, API {cluster.api_endpoint}")


def summarize(changes: list[str], keep: int = 3) -> list[str]:
    """Long runs of file writes shrink to the first few and a count."""
    writes = [c for c in changes if c.startswith("write ")]
    if len(writes) <= keep + 1:
        return changes
    rest = [c for c in changes if not c.startswith("write ")]
    return writes[:keep] + [f"and {len(writes) - keep} more files"] + rest


def print_plan(plan, verb="would") -> int:
    """One block per phase: the hosts with work and what changes there. Returns #changes."""
    total = 0
    for phase, work in plan:
        if not work:
            print(f"{phase.title:<20} nothing to do")
            continue
        print(f"{phase.title:<20} {len(work)} host(s) {verb} change")
        for host, changes in sorted(work.items()):
            total += len(changes)
            print(f"  {host}: " + "; ".join(summarize(changes)))
    return total


@task(help=helps("inventory", "bundle", "from_", "trust_new_hosts", "files", "ask_become_pass"))
@user_errors
@recorded
def plan(c, inventory=DEFAULT_INVENTORY, bundle=None, from_=None, trust_new_hosts=False,
         files=False, ask_become_pass=False):
    """Dry run: probe the hosts and print, per phase and host, what cluster.up would change."""

    cluster = load(inventory, ask_become_pass)
    run, result = actions.plan(cluster, bundle_dir=bundle, start=from_, trust_new=trust_new_hosts)
    if files:
        for n in cluster.nodes:
            services = run.ctx.facts[n.name].services
            print(f"{n.name}: " + ", ".join(f"{u} {s.get('active', '?')}"
                                             for u, s in sorted(services.items())))
            for phase, path, state in run.file_states(n.name):
                print(f"  {state:<9} {path}  ({phase})")
    for p in run.warnings:
        print(f"warning: preflight: {p}")
    n = print_plan(result)
    print(f"{n} change(s) pending" if n else "cluster is converged: nothing to do")
    for phase, _work in result:
        for line in phase.notes(run.ctx):
            print(f"note: {line}")
    from ..removal import strays

    for line in strays(cluster):
        print(f"WARNING: {line}")


@task(help=helps("inventory", "bundle", "from_", "trust_new_hosts", "ask_become_pass"))
@user_errors
@recorded
def up(c, inventory=DEFAULT_INVENTORY, bundle=None, from_=None, trust_new_hosts=False,
       ask_become_pass=False):
    """Build or converge the cluster: validate, preflight, then every phase that has work."""
    from ..progress import Progress

    cluster = load(inventory, ask_become_pass)
    with Progress() as progress:
        result = actions.up(cluster, bundle_dir=bundle, start=from_, trust_new=trust_new_hosts,
                            progress=progress)
    n = print_plan(result, verb="did")
    print(f"cluster {cluster.cluster_name} converged ({n} change(s))")


@task(help=helps("inventory", "trust_new_hosts"))
@user_errors
@recorded
def status(c, inventory=DEFAULT_INVENTORY, trust_new_hosts=False):
    """One screen: per host reachable, roles, units; VIP holder, haproxy backends, etcd
    members, nearest certificate expiry, and nodes, failing system pods, DaemonSets (kubectl)."""
    from .. import doctor

    view, _ = doctor.read(load(inventory), trust_new=trust_new_hosts)
    print("\n".join(doctor.status_lines(view)))


@task(help={**helps("inventory", "trust_new_hosts"),
            "out": "folder for the bug-report tarball (default: the cluster's state folder, "
                   "state/<cluster>/doctor)"})
@user_errors
@recorded
def doctor(c, inventory=DEFAULT_INVENTORY, out=None, trust_new_hosts=False):
    """Every check: findings ranked error / warning / info with evidence, likely cause and fix,
    and a bug-report tarball (secrets redacted). Exit 0 healthy, 1 warnings, 2 errors."""
    import time

    from invoke import Exit

    from .. import doctor as doc
    from ..state import State

    start = time.monotonic()
    cluster = load(inventory)
    view, extra = doc.read(cluster, deep=True, trust_new=trust_new_hosts)
    found = doc.findings(view, inventory=str(inventory))
    status = doc.status_lines(view)
    target = doc.bundle(view, found, extra, Path(out) if out else State(cluster).dir / "doctor",
                        status)
    print("\n".join(status))
    print()
    print(doc.render_findings(found))
    print(f"bug report: {target} ({target.stat().st_size // 1024} KiB, secrets redacted); "
          f"{time.monotonic() - start:.1f} s")
    code = doc.exit_code(found)
    if code:
        raise Exit(code=code)


@task(help=helps("inventory"))
@user_errors
@recorded
def smoke(c, inventory=DEFAULT_INVENTORY):
    """On a real cluster: a pod per node, a Service, DNS through CoreDNS, pod-to-pod traffic."""

    actions.smoke(load(inventory))


@task(help=helps("inventory", "yes", "ask_become_pass"))
@user_errors
@recorded
def reset(c, inventory=DEFAULT_INVENTORY, yes=False, ask_become_pass=False):
    """Remove Kubernetes, etcd and load balancers from every host (PKI and secrets are kept)."""

    cluster = load(inventory, ask_become_pass)
    if not yes and input(f"reset cluster {cluster.cluster_name} on {len(cluster.nodes)} "
                         "hosts? type the cluster name: ").strip() != cluster.cluster_name:
        print("not confirmed; nothing changed")
        return
    actions.reset(cluster)
    print(f"cluster {cluster.cluster_name} removed from its hosts")


# -- etcd backup and restore (provisioner/backup.py; phases 94-97) ----------------------------

@task(help=helps("inventory", "plan"))
@user_errors
@recorded
def backup(c, inventory=DEFAULT_INVENTORY, plan=False):
    """Snapshot etcd from a healthy member into <state>/<cluster>/backups/; print its path."""
    from .. import backup as actions_backup

    cluster = load(inventory)
    result = actions_backup.backup(cluster, plan=plan)
    if plan:
        print_plan(result["plan"])
        return
    meta = result["metadata"]
    rev = f", revision {meta['revision']}" if meta.get("revision") else ""
    print(f"backup of {cluster.cluster_name} from {meta['member']['name']}{rev}, "
          f"{meta['size']} bytes, sha256 {meta['sha256'][:16]}... in "
          f"{result['total_seconds']:.1f} s")
    for stem in result["removed"]:
        print(f"removed the old backup {stem} (backup_keep: {cluster.backup_keep})")
    print(result["path"])


@task(help=helps("inventory", "snapshot", "plan", "yes"))
@user_errors
@recorded
def restore(c, snapshot, inventory=DEFAULT_INVENTORY, plan=False, yes=False):
    """Restore etcd on every member from a backup; the API servers stop meanwhile. Data
    written after the snapshot is lost. Resumable: rerun after a failure."""
    from .. import backup as actions_backup

    cluster = load(inventory)

    def confirm(message: str) -> bool:
        if yes:
            return True
        print(message)
        return input("type the cluster name to restore: ").strip() == cluster.cluster_name

    result = actions_backup.restore(cluster, snapshot, plan=plan, confirm=confirm)
    if result is None:
        print("not confirmed; nothing changed")
        return
    if plan:
        n = print_plan(result["plan"])
        print(f"{n} change(s) would be made" + (" (resuming an unfinished restore)"
                                                 if result["resumed"] else ""))
        return
    print_plan(result["done"], verb="did")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in result["phase_seconds"].items())
    print(f"cluster {cluster.cluster_name} restored from {result['meta']['path']} in "
          f"{result['seconds']:.1f} s ({phases}); the old etcd data dirs are kept beside the "
          "new ones (/var/lib/etcd.before-restore-*)")


# -- preflight and host-key trust (SSH layer: provisioner/ssh.py, facts.py, preflight.py) -------

@task(help=helps("inventory", "trust_new_hosts", "ask_become_pass"))
@user_errors
@recorded
def preflight(c, inventory=DEFAULT_INVENTORY, trust_new_hosts=False, ask_become_pass=False):
    """Probe every host (one round trip each) and list what would stop the install; exit 2 if any."""
    from invoke import Exit

    from .. import preflight as pf

    problems, facts = actions.check(load(inventory, ask_become_pass), trust_new=trust_new_hosts)
    pf.render(problems, facts)
    if pf.has_errors(problems):
        raise Exit(code=2)


@task(help=helps("inventory", "yes"))
@user_errors
def trust(c, inventory=DEFAULT_INVENTORY, yes=False):
    """Show each host's SSH key fingerprint and record the new ones in the cluster's known_hosts."""
    from rich.console import Console
    from rich.table import Table

    from ..errors import UserError
    from ..ssh import known_hosts_path, record_host_keys, scan_hosts

    cluster = load(inventory)
    path = known_hosts_path(cluster)
    scanned = scan_hosts(cluster.nodes, path)
    table = Table(title=f"host keys of cluster {cluster.cluster_name} ({path})", title_justify="left")
    for col in ("host", "address", "key", "fingerprint", "status"):
        table.add_column(col)
    style = {"known": "green", "unknown": "yellow", "changed": "red", "error": "red"}
    label = {"known": "trusted", "unknown": "new", "changed": "CHANGED", "error": "unreachable"}
    for s in scanned:
        table.add_row(s.name, s.entry, s.key.get_name() if s.key else "-", s.fingerprint or (s.error or ""),
                      f"[{style[s.status]}]{label[s.status]}[/{style[s.status]}]")
    Console().print(table)
    new = [s for s in scanned if s.status == "unknown"]
    if new and (yes or input(f"record {len(new)} new host key(s) in {path}? [y/N] ").strip().lower() in ("y", "yes")):
        record_host_keys(path, [(s.entry, s.key) for s in new])
        print(f"recorded {len(new)} host key(s) in {path}")
    elif new:
        print("not confirmed; nothing recorded")
    else:
        print("no new host keys")
    changed = [s for s in scanned if s.status == "changed"]
    failed = [s for s in scanned if s.status == "error"]
    if changed or failed:
        lines = [f"{s.name}: host key CHANGED ({s.fingerprint}); if the host was reinstalled: "
                 f"ssh-keygen -f {path} -R '{s.entry}', then run cluster.trust again" for s in changed]
        lines += [s.error for s in failed]
        raise UserError("\n".join(lines))


# -- render (templates -> files per host: provisioner/render.py) -------------------------------

@task(help={"inventory": HELP["inventory"],
            "out": "folder to write <host>/<node path> into (default: the cluster's state "
                   "folder, state/<cluster>/rendered, which is never committed)"})
@user_errors
def render(c, inventory=DEFAULT_INVENTORY, out=None):
    """Write every config file each host would get, with the cluster's real secrets (0600)."""
    from .. import render as renderer
    from ..state import State

    cluster = load(inventory)
    state = State(cluster)
    with state.lock(wait=10):
        run = actions.Run.prepare(cluster)
    secrets = run.ctx.secrets
    files = renderer.render(cluster, secrets, pki=run.ctx.pki)
    target = out or str(state.dir / "rendered")
    try:
        written = renderer.write_tree(files, target)
    except OSError as e:
        from ..errors import UserError

        raise UserError(f"{e.filename or target}: cannot write: {e.strerror} "
                        "(choose another folder with -o)") from None
    print(f"wrote {len(written)} files for {len(files)} hosts to {target}/<host>/ "
          "(files holding secrets are 0600)")


# -- upgrade (provisioner/upgrade.py: phases 93 upgrade-control-plane, upgrade-nodes) -----------

@task(help={"to": "the Kubernetes version to upgrade to (one minor at a time, e.g. v1.37.1)",
            "inventory": HELP["inventory"],
            "bundle": "offline bundle folder holding the target version (see bundle.fetch)",
            "max_unavailable": "workers drained and upgraded at once (default 1)",
            "plan": "dry run: print what the upgrade would do, change nothing",
            "trust_new_hosts": HELP["trust_new_hosts"]})
@user_errors
@recorded
def upgrade(c, to, inventory=DEFAULT_INVENTORY, bundle=None, max_unavailable=1, plan=False,
            trust_new_hosts=False):
    """Upgrade every node to --to: control planes (kubeadm upgrade), then each node drained,
    upgraded, restarted and uncordoned. Resumable: rerun after a failure."""
    from .. import upgrade as upgrades
    from ..progress import Progress

    cluster = load(inventory)
    if plan:
        result = upgrades.upgrade(cluster, to, bundle_dir=bundle,
                                  max_unavailable=max_unavailable, dry_run=True,
                                  trust_new=trust_new_hosts)
        n = print_plan(result.done)
        print(f"{n} change(s) pending for the upgrade to {to}" if n
              else f"every node runs {to}: nothing to do")
        return
    with Progress() as progress:
        result = upgrades.upgrade(cluster, to, bundle_dir=bundle,
                                  max_unavailable=max_unavailable, trust_new=trust_new_hosts,
                                  progress=progress)
    print_plan(result.done, verb="did")
    print(upgrades.summary(cluster, result))


# -- certificates (day 2: provisioner/certs.py) --------------------------------------------------

@task(help={"inventory": HELP["inventory"],
            "renew": "re-issue the etcd certificates (one member at a time), run `kubeadm certs "
                     "renew all` and restart the control plane per control plane, refresh the "
                     "admin kubeconfig",
            "plan": "with --renew: only show what would be renewed",
            "trust_new_hosts": HELP["trust_new_hosts"]})
@user_errors
@recorded
def certs(c, inventory=DEFAULT_INVENTORY, renew=False, plan=False, trust_new_hosts=False):
    """Every certificate of the cluster (subject, issuer, not-after, days left); exit 1 if one
    has expired. --renew renews them (quorum kept); --plan shows what would be renewed."""
    import datetime as dt
    import time

    from invoke import Exit

    from .. import certs as certs_
    from ..progress import Progress

    cluster = load(inventory)
    if plan and not renew:
        raise UserError("--plan goes with --renew (cluster.certs alone changes nothing)")
    if renew and plan:
        n = print_plan(certs_.renew(cluster, dry_run=True, trust_new=trust_new_hosts))
        print(f"{n} renewal step(s) pending" if n else "nothing to renew")
        return
    if renew:
        start = time.monotonic()
        with Progress() as progress:
            result = certs_.renew(cluster, trust_new=trust_new_hosts, progress=progress)
        n = print_plan(result, verb="did")
        print(f"certificates of cluster {cluster.cluster_name} renewed ({n} step(s), "
              f"{time.monotonic() - start:.1f} s)")
    table = certs_.show(cluster, trust_new=trust_new_hosts)
    now = dt.datetime.now(dt.timezone.utc)
    print(certs_.render(table, now))
    warnings, expired = certs_.summary(table, now)
    for line in warnings + expired:
        print(line)
    print("CA rotation is out of scope: the CA rows say how long each CA has.")
    if expired:
        raise Exit(code=1)


# -- day 2: remove a node (provisioner/removal.py) -----------------------------------------------

@task(help={**helps("inventory", "bundle", "trust_new_hosts"),
            "name": "the host to take out of the cluster (still in the inventory)",
            "force": "drain past PodDisruptionBudgets and pods without a controller (deletes "
                     "them); never past an etcd quorum or last-control-plane refusal",
            "plan": "dry run: print what would be done, change nothing",
            "drain_timeout": "seconds the drain may take (default 120)"})
@user_errors
@recorded
def remove_node(c, name, inventory=DEFAULT_INVENTORY, force=False, plan=False, bundle=None,
                drain_timeout=120, trust_new_hosts=False):
    """Take NAME out of the cluster: drain, etcd member out, reset, Node deleted, backends updated."""
    import time

    from .. import removal
    from ..progress import Progress

    cluster = load(inventory)
    if plan:
        result = removal.remove_node(cluster, name, bundle_dir=bundle, force=force, dry_run=True,
                                     timeout=int(drain_timeout), trust_new=trust_new_hosts)
        n = print_plan(result)
        print(f"remove-node {name}: {n} change(s) would be made" if n else
              f"{name} has left already: nothing to do; delete it from {inventory}")
        return
    start = time.monotonic()
    with Progress() as progress:
        result = removal.remove_node(cluster, name, bundle_dir=bundle, force=force,
                                     timeout=int(drain_timeout), trust_new=trust_new_hosts,
                                     progress=progress)
    print_plan(result, verb="did")
    left = [n for n in cluster.etcd_nodes if n.name != name]
    if name in {n.name for n in cluster.etcd_nodes} and left and len(left) % 2 == 0:
        print(f"note: without {name} the inventory has {len(left)} etcd members: an even "
              "count tolerates no more failures than one member less; add a replacement "
              "member when you can (cluster.up joins it as a new member)")
    print(f"{name} has left cluster {cluster.cluster_name} ({time.monotonic() - start:.1f} s). "
          f"Now delete {name} from {inventory}; `invoke cluster.plan -i {inventory}` will then "
          "show nothing to do.")


# -- moving from kubeasz (provisioner/kubeasz.py) ----------------------------------------------

@task(name="import", help={
    "kubeasz": "kubeasz's hosts file (INI), e.g. /etc/kubeasz/clusters/NAME/hosts",
    "output": "the YAML inventory to write (never replaces a file unless --force)",
    "force": "replace the output file if it exists",
    "cluster_name": "the cluster's name (default: NAME from clusters/NAME/hosts, else k8s)"})
@user_errors
def import_(c, kubeasz, output, force=False, cluster_name=None):
    """Convert a kubeasz hosts file into a YAML inventory; what has no equivalent here is kept
    in it as a comment. The result is validated like cluster.validate does."""
    from .. import kubeasz as converter

    result = converter.write(kubeasz, output, force=force, name=cluster_name)
    roles = ", ".join(f"{len(v)} {k}" for k, v in result.nodes.items())
    print(f"wrote {output}: {roles}; {result.comments} kubeasz setting(s) without an "
          "equivalent kept as comments in it")
    try:
        cluster = inv.load(output)
    except InvalidInventory as e:
        raise UserError(f"{e}\n{output} was written but does not validate yet: edit it as the "
                        "lines above say, then run `invoke cluster.validate -i "
                        f"{output}`") from None
    print(f"{output}: valid: {len(cluster.nodes)} host(s), {cluster.distribution} "
          f"{cluster.kubernetes_version}, ha_mode {cluster.ha_mode}, API {cluster.api_endpoint}")


# -- several clusters (provisioner/clusters.py) -------------------------------------------------

@task(name="list", iterable=["state", "inventory"], help={
    "state": "a state folder to look in (repeatable); default: the state folder of the default "
             "inventory and $PROVISIONER_STATE_DIR",
    "inventory": "look in this inventory's state folder (repeatable)"})
@user_errors
def list_(c, state=None, inventory=None):
    """Every cluster in the state folder(s): name, inventory, version, nodes, last action, its
    result and time."""
    import os

    from .. import clusters

    states, inventories = list(state or []), list(inventory or [])
    if not states and not inventories and os.path.exists(DEFAULT_INVENTORY):
        inventories = [DEFAULT_INVENTORY]
    bases = clusters.default_bases(inventories, states)
    rows = [clusters.describe(d) for d in clusters.state_folders(bases)]
    if not rows:
        where = ", ".join(str(b) for b in bases) or "(none given: use --state DIR or -i FILE)"
        print(f"no clusters in {where}")
        return
    print(clusters.table(rows))


@task(help={"inventory": HELP["inventory"],
            "merge": "merge into kubectl's config (-o, else the first file of $KUBECONFIG, "
                     "else ~/.kube/config), keeping every other context",
            "output": "file to write (default: <cluster>.kubeconfig here; with --merge see "
                      "above)"})
@user_errors
def kubeconfig(c, inventory=DEFAULT_INVENTORY, merge=False, output=None):
    """The cluster's admin kubeconfig (0600), with its context, cluster and user named after
    the cluster; never printed."""
    from .. import clusters

    cluster = inv.load(inventory)
    path, done = clusters.write_kubeconfig(cluster, output, merge_into=merge)
    print(f"{done} in {path} (mode 0600); try: kubectl --kubeconfig {path} --context "
          f"{cluster.cluster_name} get nodes")
