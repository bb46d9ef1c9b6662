"""`invoke bundle.*`: list what a cluster needs, fetch it for an offline install, verify a copied
bundle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from invoke import task

from .. import bundle as bundles
from .. import images as image_list
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
    "image_mirror": "registry holding every image under <mirror>/<full image name> "
                    "(http:// for a plain-HTTP registry); default: each image's own registry",
    "images": "also fetch the container images (kubeadm; --no-images: binaries only)",
}


@task(name="list", help={k: HELP[k] for k in ("inventory", "mirror", "github_mirror", "arch",
                                              "image_mirror", "json")})
@user_errors
def list_(c, inventory=DEFAULT_INVENTORY, mirror=None, github_mirror=None, arch="amd64",
          image_mirror=None, json_=False):
    """Every artifact the cluster needs (kind, name, version, source URL, checksum source),
    images included; downloads nothing."""
    cluster = inv.load(inventory, check=validate.check_for_fetch)
    rows = bundles.rows(cluster, mirror=mirror, github_mirror=github_mirror, arch=arch)
    rows += [bundles.Row(r["kind"], r["name"], r["version"], r["source"], r["checksum"])
             for r in image_list.rows(cluster, image_mirror)]
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


@task(help={k: HELP[k] for k in ("inventory", "dest", "mirror", "github_mirror", "arch",
                                 "image_mirror", "images")})
@user_errors
def fetch(c, inventory=DEFAULT_INVENTORY, dest=None, mirror=None, github_mirror=None,
          arch="amd64", image_mirror=None, images=True):
    """Download the cluster's Kubernetes binaries (checking every published sha256) and its
    container images (skopeo; every blob checked against its digest)."""
    cluster = inv.load(inventory, check=validate.check_for_fetch)
    if image_mirror and (why := validate.url_problem(image_mirror)):
        raise UserError(f"--image-mirror: {why[0]} ({why[1]})")
    where = bundles.default_dir(cluster, dest)
    folder = bundles.fetch(cluster, where, mirror=mirror, github_mirror=github_mirror, arch=arch)
    if images and image_list.needed(cluster):
        if arch != image_list.ARCH:
            raise UserError(f"images are fetched for linux/{image_list.ARCH} only; pass "
                            "--no-images for another --arch")
        image_list.fetch(cluster, folder, mirror=image_mirror)
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
    found = bundles.locate(cluster, Path(bundle) if bundle else None, arch=arch, deep=True)
    if found is None:
        raise UserError(bundles.missing_message(cluster, bundle))
    for name, (path, sha) in sorted(found.files.items()):
        print(f"{sha}  {name}")
    print(f"{found.dir}: all {len(found.files)} files match {bundles.SUMS}")
    if found.images is not None:
        for ref, rec in sorted(found.images.items()):
            print(f"{rec['digest']}  {ref}")
        print(f"{found.dir}: all {len(found.images)} images: every blob matches its digest")
