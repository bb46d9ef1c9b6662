"""`invoke bundle.*`: list what a cluster needs, fetch it for an offline install, verify a copied
bundle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from invoke import task

from .. import bundle as bundles
from .. import inventory as inv
from .. import validate
from ..errors import UserError
from . import DEFAULT_INVENTORY, user_errors

HELP = {
    "inventory": "inventory file: its distribution and kubernetes_version decide what is fetched",
    "dest": "bundle folder to fetch into (default: the inventory's bundle_dir, else ./bundle)",
    "bundle": "bundle folder to check (default: the inventory's bundle_dir, else ./bundle)",
    "mirror": "base URL instead of download_mirror (dl.k8s.io layout; k3s: its release layout)",
    "github_mirror": "base URL instead of https://github.com (crictl, CNI plugins, containerd, runc, k3s)",
    "arch": "CPU architecture of the nodes (amd64, arm64)",
    "json": "print the rows as JSON instead of a table",
}


@task(name="list", help={k: HELP[k] for k in ("inventory", "mirror", "github_mirror", "arch",
                                              "json")})
@user_errors
def list_(c, inventory=DEFAULT_INVENTORY, mirror=None, github_mirror=None, arch="amd64",
          json_=False):
    """Every artifact the cluster needs (kind, name, version, source URL, checksum source);
    downloads nothing."""
    cluster = inv.load(inventory, check=validate.check_for_fetch)
    rows = bundles.rows(cluster, mirror=mirror, github_mirror=github_mirror, arch=arch)
    if json_:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{bundles.folder_name(cluster, arch)}: {len(rows)} artifacts "
                        "(nothing downloaded)")
    for head in ("kind", "name", "version", "source", "checksum"):
        table.add_column(head, overflow="fold")
    for r in rows:
        table.add_row(r.kind, r.name, r.version, r.source, r.checksum)
    Console(width=max(Console().width, 160)).print(table)


@task(help={k: HELP[k] for k in ("inventory", "dest", "mirror", "github_mirror", "arch")})
@user_errors
def fetch(c, inventory=DEFAULT_INVENTORY, dest=None, mirror=None, github_mirror=None,
          arch="amd64"):
    """Download the cluster's Kubernetes binaries, checking every published sha256."""
    cluster = inv.load(inventory, check=validate.check_for_fetch)
    where = bundles.default_dir(cluster, dest)
    folder = bundles.fetch(cluster, where, mirror=mirror, github_mirror=github_mirror, arch=arch)
    found = bundles.locate(cluster, where, arch=arch)
    total = sum(p.stat().st_size for p, _ in found.files.values()) if found else 0
    print(f"{folder}: {len(found.files) if found else 0} files, {total / 1e6:.0f} MB, verified")
    print(f"copy {where}/ to the machine that runs cluster.up and pass --bundle DIR "
          f"(or set bundle_dir: DIR in the inventory)")


@task(help={k: HELP[k] for k in ("inventory", "bundle", "arch")})
@user_errors
def verify(c, inventory=DEFAULT_INVENTORY, bundle=None, arch="amd64"):
    """Check a bundle folder against its SHA256SUMS (e.g. after copying it to an offline site)."""
    cluster = inv.load(inventory)
    found = bundles.locate(cluster, Path(bundle) if bundle else None, arch=arch)
    if found is None:
        raise UserError(bundles.missing_message(cluster, bundle))
    for name, (path, sha) in sorted(found.files.items()):
        print(f"{sha}  {name}")
    print(f"{found.dir}: all {len(found.files)} files match {bundles.SUMS}")
