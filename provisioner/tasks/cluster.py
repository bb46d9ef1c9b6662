"""`invoke cluster.*`: validate, render, plan, preflight, up, and day-2 actions."""

from __future__ import annotations

from invoke import task

from .. import inventory as inv
from . import DEFAULT_INVENTORY, user_errors


@task(help={"inventory": "inventory file (default: the built-in lab)"})
@user_errors
def validate(c, inventory=DEFAULT_INVENTORY):
    """Check an inventory; print every problem as FILE:LINE: key: message (fix)."""
    cluster = inv.load(inventory)
    print(f"{inventory}: valid ({len(cluster.nodes)} hosts, {cluster.distribution}, "
          f"{cluster.kubernetes_version}, ha_mode {cluster.ha_mode})")
