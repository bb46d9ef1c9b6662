"""Shared fixtures. `lab`: the built-in lab (inventories/lab.yml) booted once per test session.

    @pytest.mark.lab
    def test_something(lab):
        rc, out, err = lab.run("cp1", "hostname")
        lab.reset(["cp1"])               # cp1 back to a fresh node (stopped, wiped, rebooted)
        cluster = lab.cluster            # model with state_dir = this session's state folder
        subprocess.run([...], env=lab.env)   # PROVISIONER_STATE_DIR for child processes

The session gets its own state folder (known_hosts of the lab nodes, and whatever the code under
test writes), so a developer's real `state/` is left alone; $PROVISIONER_STATE_DIR wins when
set. The lab SSH key is the inventory's (state/lab/ssh/id_ed25519 under the repo). Leftovers of
a crashed earlier session are removed before booting; everything is removed at session end,
failures included. A second test session waits for the first one's lab (lock). Without root or
systemd-nspawn the fixture skips, except under CI=true where it fails: lab tests must run in CI.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import skip_outside_ci

REPO = Path(__file__).resolve().parents[1]
LAB_INVENTORY = REPO / "inventories" / "lab.yml"


def lab_unavailable() -> str | None:
    """Why lab nodes cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "lab tests need root (they mount overlays and boot systemd-nspawn containers)"
    missing = [t for t in ("systemd-nspawn", "debootstrap", "dpkg-scanpackages")
               if not shutil.which(t)]
    if missing:
        return f"missing {', '.join(missing)}: run ./bootstrap.sh"
    return None


def require_lab() -> None:
    """Skip (or, with CI=true, fail) when the lab cannot run on this machine."""
    reason = lab_unavailable()
    if reason:
        skip_outside_ci(reason)


def lab_cluster(inventory: Path, state_dir: Path):
    """The inventory's model with this test session's state folder and an absolute key path."""
    from provisioner import inventory as inv

    cluster = inv.load(inventory)
    nodes = tuple(dataclasses.replace(n, ssh_key=str(REPO / n.ssh_key)) if n.ssh_key
                  and not os.path.isabs(n.ssh_key) else n for n in cluster.nodes)
    state = os.environ.get("PROVISIONER_STATE_DIR") or str(state_dir)
    return dataclasses.replace(cluster, nodes=nodes, state_dir=state)


@dataclass
class LabHandle:
    """What lab tests get: the booted lab and ways to use and renew its nodes."""

    inventory: Path
    cluster: object  # provisioner.model.Cluster
    lab: object  # provisioner.lab.nspawn.Lab

    @property
    def key_file(self) -> Path:
        return self.lab.key_file

    @property
    def known_hosts(self) -> Path:
        return self.lab.known_hosts

    @property
    def state_dir(self) -> Path:
        return Path(self.cluster.state_dir)

    @property
    def env(self) -> dict:
        """Environment for child processes (e.g. `invoke cluster.up -i inventories/lab.yml`)
        so they use this session's state folder."""
        return dict(os.environ, PROVISIONER_STATE_DIR=str(self.cluster.state_dir))

    @property
    def nodes(self):
        return self.cluster.nodes

    def node(self, name: str):
        return self.cluster.node(name)

    def run(self, node: str, command: str, timeout: float = 300) -> tuple[int, str, str]:
        """Run a shell command on a node over SSH (strict host keys): (rc, stdout, stderr)."""
        return self.lab.run(node, command, timeout=timeout)

    def connect(self, node: str):
        """A paramiko SSHClient to the node; close it when done."""
        return self.lab.connect(node)

    def reset(self, names=None) -> None:
        """Make nodes (all when None) fresh again, as right after boot; same host keys."""
        check_up(self.lab.reset(names))


@contextmanager
def booted_lab(inventory: Path, state_dir: Path, wait: float = 900):
    """A lab of its own (the inventory's bridge and nodes) for a test module: booted, then
    always taken down. Several such labs run side by side; one of them waits for its holder."""
    require_lab()
    from provisioner.lab.nspawn import Lab

    lab = Lab(lab_cluster(inventory, state_dir), log=lambda msg: None)
    with lab.locked(wait=wait):
        try:
            check_up(lab.up())
            yield lab
        finally:
            lab.down()


def check_up(results) -> None:
    bad = [f"{r.name}: {r.state}" for r in results if r.state not in ("running", "degraded")]
    if bad:
        pytest.fail("lab nodes did not come up:\n" + "\n".join(bad))


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    require_lab()
    from provisioner.lab.nspawn import Lab

    cluster = lab_cluster(LAB_INVENTORY, tmp_path_factory.mktemp("lab-state"))
    the_lab = Lab(cluster, log=lambda msg: print(msg, flush=True))
    with the_lab.locked(wait=1800):
        try:
            check_up(the_lab.up())
            yield LabHandle(LAB_INVENTORY, cluster, the_lab)
        finally:
            the_lab.down()
