"""`invoke cluster.*`: validate, render, plan, preflight, up, and day-2 actions."""

from __future__ import annotations

from invoke import task

from .. import inventory as inv
from .. import phases as ph
from . import DEFAULT_INVENTORY, user_errors

HELP = {
    "inventory": "inventory file (default: the built-in lab, inventories/lab.yml)",
    "bundle": "offline bundle folder with the Kubernetes binaries (see bundle.fetch)",
    "from_": "resume at this phase (phases: " + ", ".join(p.name for p in ph.UP) + ")",
    "trust_new_hosts": "record the SSH host keys of hosts not yet in known_hosts",
    "yes": "do not ask for confirmation",
}


def helps(*names: str) -> dict:
    return {n: HELP[n] for n in names}


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


@task(help=helps("inventory", "bundle", "from_", "trust_new_hosts"))
@user_errors
def plan(c, inventory=DEFAULT_INVENTORY, bundle=None, from_=None, trust_new_hosts=False):
    """Dry run: probe the hosts and print, per phase and host, what cluster.up would change."""
    from .. import actions

    cluster = inv.load(inventory)
    result = actions.up(cluster, bundle_dir=bundle, start=from_, dry_run=True,
                        trust_new=trust_new_hosts)
    n = print_plan(result)
    print(f"{n} change(s) pending" if n else "cluster is converged: nothing to do")


@task(help=helps("inventory", "bundle", "from_", "trust_new_hosts"))
@user_errors
def up(c, inventory=DEFAULT_INVENTORY, bundle=None, from_=None, trust_new_hosts=False):
    """Build or converge the cluster: validate, preflight, then every phase that has work."""
    from .. import actions

    cluster = inv.load(inventory)
    result = actions.up(cluster, bundle_dir=bundle, start=from_, trust_new=trust_new_hosts)
    n = print_plan(result, verb="did")
    print(f"cluster {cluster.cluster_name} converged ({n} change(s))")


@task(help=helps("inventory"))
@user_errors
def status(c, inventory=DEFAULT_INVENTORY):
    """Per host: reachable, roles, and the state of every cluster service."""
    from rich.console import Console
    from rich.table import Table

    from .. import actions

    cluster = inv.load(inventory)
    facts = actions.status(cluster)
    table = Table(title=f"cluster {cluster.cluster_name}")
    for col in ("host", "address", "roles") + ph.SERVICES:
        table.add_column(col)
    for n in cluster.nodes:
        services = facts[n.name].services
        table.add_row(n.name, n.address, ",".join(n.roles),
                      *(services.get(u, {}).get("active", "-") for u in ph.SERVICES))
    Console().print(table)


@task(help=helps("inventory"))
@user_errors
def smoke(c, inventory=DEFAULT_INVENTORY):
    """On a real cluster: a pod per node, a Service, DNS through CoreDNS, pod-to-pod traffic."""
    from .. import actions

    actions.smoke(inv.load(inventory))


@task(help=helps("inventory", "yes"))
@user_errors
def reset(c, inventory=DEFAULT_INVENTORY, yes=False):
    """Remove Kubernetes, etcd and load balancers from every host (PKI and secrets are kept)."""
    from .. import actions

    cluster = inv.load(inventory)
    if not yes and input(f"reset cluster {cluster.cluster_name} on {len(cluster.nodes)} "
                         "hosts? type the cluster name: ").strip() != cluster.cluster_name:
        print("not confirmed; nothing changed")
        return
    actions.reset(cluster)
    print(f"cluster {cluster.cluster_name} removed from its hosts")
