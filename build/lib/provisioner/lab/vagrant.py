"""`lab.up --provider vagrant`: the same inventory as VirtualBox or libvirt VMs (see Vagrantfile)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..errors import UserError

REPO = Path(__file__).resolve().parents[2]


def up(inventory: str) -> None:
    """Run `vagrant up` next to the Vagrantfile with INVENTORY pointing at `inventory`."""
    if not shutil.which("vagrant"):
        raise UserError("vagrant is not installed (run ./bootstrap.sh, or apt-get install "
                        "vagrant; plus virtualbox or vagrant-libvirt for a provider)")
    env = dict(os.environ, INVENTORY=str(Path(inventory).resolve()))
    done = subprocess.run(["vagrant", "up"], cwd=REPO, env=env)
    if done.returncode != 0:
        raise UserError(
            f"vagrant up failed (exit {done.returncode}). Vagrant needs the box "
            "debian/bookworm64 (downloaded from app.vagrantup.com on first use, or added "
            "offline with `vagrant box add debian/bookworm64 FILE.box`) and a provider: "
            "VirtualBox, or libvirt with vagrant-libvirt (set VAGRANT_DEFAULT_PROVIDER=libvirt). "
            "Without them, use the default lab: `invoke lab.up`.")
