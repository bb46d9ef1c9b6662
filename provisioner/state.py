"""The controller's folder for one cluster: secrets, PKI, known_hosts, kubeconfig, run logs, lock.

    state/<cluster_name>/
      known_hosts        host keys of every node (verified on every connection)
      secrets.yaml       join token, certificate key, k3s token            0600
      pki/               cluster and etcd certificate authorities, certs    keys 0600
      kubeconfig         admin kubeconfig pointing at the API endpoint      0600
      runs/              ansible-runner data dirs, newest 20 kept
      lock               held while an action changes the cluster

The folder is `state_dir` from the inventory (default `state`), or $PROVISIONER_STATE_DIR.
It is git-ignored: nothing in it is ever committed.
"""

from __future__ import annotations

import fcntl
import os
import secrets as random
import string
from contextlib import contextmanager
from pathlib import Path

import yaml

from .errors import UserError
from .model import Cluster


class State:
    def __init__(self, cluster: Cluster):
        base = os.environ.get("PROVISIONER_STATE_DIR") or cluster.state_dir
        self.dir = Path(base) / cluster.cluster_name
        self.cluster = cluster

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def runs(self) -> Path:
        return self.dir / "runs"

    def secrets(self) -> dict[str, str]:
        """Join token, certificate key and k3s token: made once, then read back, so every run
        renders the same bytes and a rerun changes nothing."""
        path = self.dir / "secrets.yaml"
        if path.exists():
            return yaml.safe_load(path.read_text())
        alphabet = string.ascii_lowercase + string.digits
        made = {
            "bootstrap_token": "".join(random.choice(alphabet) for _ in range(6)) + "."
            + "".join(random.choice(alphabet) for _ in range(16)),
            "certificate_key": random.token_hex(32),
            "k3s_token": random.token_hex(32),
            "vrrp_password": random.token_hex(4),
        }
        write_secret(path, yaml.safe_dump(made).encode())
        return made

    @contextmanager
    def lock(self):
        """Refuse a second action on the same cluster while one is running."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode().strip() or "another process"
                raise UserError(
                    f"{self.dir}/lock: another action is running on cluster "
                    f"'{self.cluster.cluster_name}' (pid {holder}); wait for it to finish"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)


def write_secret(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
