"""`invoke lab.*`: boot, inspect, enter and remove the built-in lab of Debian 12 nodes."""

from __future__ import annotations

import subprocess

from invoke import Exit, task

from .. import inventory as inv
from . import DEFAULT_INVENTORY, user_errors

INVENTORY_HELP = "inventory describing the lab (default: inventories/lab.yml)"


PROVIDER_HELP = "nspawn (default: containers on this host) or vagrant (libvirt VMs)"


def _lab(inventory: str, provider: str = "nspawn"):
    from ..errors import UserError

    if provider == "vagrant":
        from ..lab.vagrant import VagrantLab

        return VagrantLab(inv.load(inventory))
    if provider != "nspawn":
        raise UserError(f"--provider {provider}: unknown (use nspawn or vagrant)")
    from ..lab.nspawn import Lab

    return Lab(inv.load(inventory))


@task(help={"inventory": "inventory whose SSH key the box authorizes for `vagrant` "
                         "(default: inventories/lab.yml)"})
@user_errors
def box(c, inventory=DEFAULT_INVENTORY):
    """Build the VM lab's libvirt box offline from the lab base and add it to Vagrant."""
    from ..lab import box as boxes

    lab = _lab(inventory, "vagrant")
    lab.check()
    lab.ensure_key()
    path, built = boxes.ensure_box(lab.public_key())
    lab.add_box(path, built)
    print(f"box {boxes.BOX_NAME}: {'built' if built else 'up to date'} ({path})")


@task(help={"inventory": INVENTORY_HELP, "provider": PROVIDER_HELP})
@user_errors
def up(c, inventory=DEFAULT_INVENTORY, provider="nspawn"):
    """Boot one Debian 12 node per inventory host and wait until all answer SSH."""
    from ..errors import UserError
    from ..lab.nspawn import format_table

    lab = _lab(inventory, provider)
    with lab.locked():
        results = lab.up()
    print(format_table(
        [[r.name, r.address, r.state if len(r.state) < 60 else r.state[:57] + "...",
          f"{r.seconds:.1f}" if r.seconds is not None else "-"] for r in results],
        ["node", "address", "state", "boot s"]))
    for r in results:
        if r.failed_units:
            print(f"{r.name}: degraded, failed units: {', '.join(r.failed_units)}")
    bad = [r for r in results if r.state not in ("running", "degraded")]
    if bad:
        raise UserError(f"{len(bad)} node(s) did not come up; console logs are in "
                        f"{lab.runtime}/; `invoke lab.down` removes the lab"
                        f"{' (--provider vagrant)' if provider == 'vagrant' else ''}")
    print(f"lab {lab.name}: {len(results)} nodes up; host keys trusted in {lab.known_hosts}; "
          f"`invoke lab.ssh NODE` to log in")


@task(help={"inventory": INVENTORY_HELP, "provider": PROVIDER_HELP})
@user_errors
def down(c, inventory=DEFAULT_INVENTORY, provider="nspawn"):
    """Stop every node and remove overlays or VMs, bridge or networks and package source
    (keeps the cache)."""
    lab = _lab(inventory, provider)
    lab.check()
    with lab.locked():
        lab.down()
    print(f"lab {lab.name}: down (cached base and packages kept in /var/cache/provisioner-lab)")


@task(help={"inventory": INVENTORY_HELP, "provider": PROVIDER_HELP})
@user_errors
def status(c, inventory=DEFAULT_INVENTORY, provider="nspawn"):
    """Table of lab nodes: running?, address, SSH and systemd state."""
    from ..lab.nspawn import format_table

    rows = _lab(inventory, provider).status()
    print(format_table([[r["node"], r["address"], "yes" if r["running"] else "no", r["ssh"]]
                        for r in rows], ["node", "address", "running", "ssh / systemd"]))


@task(help={"node": "node name from the inventory", "inventory": INVENTORY_HELP,
            "command": "run this command instead of an interactive shell",
            "provider": PROVIDER_HELP})
@user_errors
def ssh(c, node, inventory=DEFAULT_INVENTORY, command=None, provider="nspawn"):
    """Log in to a lab node (strict host key checking against the lab's known_hosts)."""
    from ..errors import UserError

    lab = _lab(inventory, provider)
    try:
        n = lab.cluster.node(node)
    except KeyError:
        raise UserError(f"{inventory}: no host {node!r} (hosts: "
                        f"{', '.join(m.name for m in lab.cluster.nodes)})") from None
    if not lab.is_running(n.name):
        raise UserError(f"lab node {node} is not running: run `invoke lab.up -i {inventory}"
                        f"{' --provider vagrant' if provider == 'vagrant' else ''}`")
    cmd = ["ssh", "-i", str(lab.key_file), "-o", f"UserKnownHostsFile={lab.known_hosts}",
           "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-p", str(n.ssh_port),
           f"{n.ssh_user}@{n.address}"]
    if command:
        cmd.append(command)
    rc = subprocess.run(cmd).returncode
    if rc:
        raise Exit(code=rc)
