"""The Vagrantfile reads every shipped inventory and defines one valid VM per host."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner import inventory as inv

REPO = Path(__file__).resolve().parents[1]
INVENTORIES = sorted((REPO / "inventories").glob("*.yml"))


@pytest.fixture(scope="module")
def vagrant():
    path = shutil.which("vagrant")
    if not path:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must validate the Vagrantfile: vagrant is missing (./bootstrap.sh)")
        pytest.skip("vagrant is not installed (./bootstrap.sh installs it)")
    return path


def validate(vagrant: str, inventory: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    # --ignore-provider: no VirtualBox or libvirt needed to check the configuration.
    env = dict(os.environ, INVENTORY=str(inventory), VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_DISABLE_VERSION_CHECK="1")
    return subprocess.run([vagrant, "validate", "--ignore-provider", "--machine-readable"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("inventory", INVENTORIES, ids=lambda p: p.name)
def test_vagrantfile_validates_with_one_vm_per_host(vagrant, inventory, tmp_path):
    done = validate(vagrant, inventory, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Vagrantfile validated successfully" in done.stdout
    machines = {line.split(",")[1] for line in done.stdout.splitlines()
                if ",metadata,provider," in line}
    assert machines == {n.name for n in inv.load(inventory).nodes}


def test_vagrantfile_refuses_a_host_without_address(vagrant, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("all:\n  children:\n    workers:\n      hosts:\n        x1: {}\n")
    done = validate(vagrant, bad, tmp_path)
    assert done.returncode != 0
    assert f"{bad}: x1: no ansible_host" in done.stdout + done.stderr


def test_vagrantfile_validates_with_the_lab_settings(vagrant, tmp_path):
    """What `lab.up --provider vagrant` hands the Vagrantfile ($PROVISIONER_LAB) is accepted."""
    from provisioner.lab.vagrant import VagrantLab

    inventory = tmp_path / "single.yml"
    inventory.write_text((REPO / "inventories/single.yml").read_text().replace(
        "192.168.56.", "10.90.12.").replace("../state/", f"{tmp_path}/"))
    (tmp_path / "lab/ssh").mkdir(parents=True)
    (tmp_path / "lab/ssh/id_ed25519").write_text("")  # Vagrant only checks that it exists
    env = VagrantLab(inv.load(inventory), log=lambda m: None).env("tcg")
    env["VAGRANT_DOTFILE_PATH"] = str(tmp_path / "dot")
    done = subprocess.run([vagrant, "validate", "--ignore-provider", "--machine-readable"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Vagrantfile validated successfully" in done.stdout
