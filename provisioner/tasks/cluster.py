"""`invoke cluster.*`: validate, render, plan, preflight, up, and day-2 actions."""

from __future__ import annotations

from invoke import task

from .. import inventory as inv
from .. import phases as ph
from . import DEFAULT_INVENTORY, user_errors

HELP = {
    "inventory": "inventory file (default: the built-in lab, inventories/lab.yml)",
    "bundle": "offline bundle folder with the Kubernetes binaries (see bundle.fetch)",
    "from_phase": "resume at this phase (phases: " + ", ".join(p.name for p in ph.UP) + ")",
    "trust_new_hosts": "record the SSH host keys of hosts not yet in known_hosts",
}


@task(help={"inventory": "inventory file (default: the built-in lab)"})
@user_errors
def validate(c, inventory=DEFAULT_INVENTORY):
    """Check an inventory; print every problem as FILE:LINE: key: message (fix)."""
    cluster = inv.load(inventory)
    print(f"{inventory}: valid ({len(cluster.nodes)} hosts, {cluster.distribution}, "
          f"{cluster.kubernetes_version}, ha_mode {cluster.ha_mode})")


def print_plan(plan, verb="would") -> int:
    """One block per phase: the hosts with work and what changes there. Returns #changes."""
    total = 0
    for phase, work in plan:
        if not work:
            print(f"{phase.name:<20} nothing to do")
            continue
        print(f"{phase.name:<20} {len(work)} host(s) {verb} change")
        for host, changes in sorted(work.items()):
            total += len(changes)
            print(f"  {host}: " + "; ".join(changes))
    return total


@task(help=HELP)
@user_errors
def plan(c, inventory=DEFAULT_INVENTORY, bundle=None, from_phase=None, trust_new_hosts=False):
    """Dry run: probe the hosts and print, per phase and host, what cluster.up would change."""
    from .. import actions

    cluster = inv.load(inventory)
    result = actions.up(cluster, bundle_dir=bundle, start=from_phase, dry_run=True,
                        trust_new=trust_new_hosts)
    n = print_plan(result)
    print(f"{n} change(s) pending" if n else "cluster is converged: nothing to do")


@task(help=HELP)
@user_errors
def up(c, inventory=DEFAULT_INVENTORY, bundle=None, from_phase=None, trust_new_hosts=False):
    """Build or converge the cluster: validate, preflight, then every phase that has work."""
    from .. import actions

    cluster = inv.load(inventory)
    result = actions.up(cluster, bundle_dir=bundle, start=from_phase, trust_new=trust_new_hosts)
    n = print_plan(result, verb="did")
    print(f"cluster {cluster.cluster_name} converged ({n} change(s))")
