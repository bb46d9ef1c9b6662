"""The controller's folder for one cluster: secrets, PKI, known_hosts, kubeconfig, run logs, lock.

    <state_dir>/<cluster_name>/          0700
      known_hosts        host keys of every node (verified on every connection)
      secrets.yaml       join token, certificate key, k3s token            0600
      pki/               cluster and etcd certificate authorities, certs    keys 0600
      kubeconfig         admin kubeconfig pointing at the API endpoint      0600
      runs/              ansible-runner data dirs, newest 20 kept
      lock               held while an action runs (shared by read-only ones)

The folder is `state_dir` from the inventory (default `state`), taken relative to the
inventory file, never the current folder; $PROVISIONER_STATE_DIR wins when set. Secrets and
PKI are made only while the lock is held exclusively, and every file is written atomically.
It is git-ignored: nothing in it is ever committed.
"""

from __future__ import annotations

import fcntl
import os
import secrets as random
import string
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from .errors import UserError
from .model import Cluster

SECRET_KEYS = ("bootstrap_token", "certificate_key", "k3s_token", "vrrp_password")


def state_base(cluster: Cluster) -> Path:
    """The state folder: $PROVISIONER_STATE_DIR, else `state_dir` beside the inventory."""
    env = os.environ.get("PROVISIONER_STATE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    base = Path(cluster.state_dir).expanduser()
    return base if base.is_absolute() else Path(cluster.source).resolve().parent / base


class State:
    def __init__(self, cluster: Cluster):
        self.dir = state_base(cluster) / cluster.cluster_name
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

    @property
    def secrets_file(self) -> Path:
        return self.dir / "secrets.yaml"

    def make_dir(self) -> None:
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"{self.dir}: the cluster's state folder is a file (move it away, or "
                            "set state_dir to a folder)")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def secrets(self, create: bool = False) -> dict[str, str]:
        """Join token, certificate key and k3s token: made once (only with `create`, under the
        exclusive lock), then read back, so every run renders the same bytes."""
        path = self.secrets_file
        if path.exists():
            return read_secrets(path)
        if not create:
            return {}
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
    def lock(self, shared: bool = False, wait: float = 0):
        """Refuse a second action on the same cluster while one changes it. Read-only actions
        (plan, status, render, smoke) share the lock with each other. `wait`: seconds to wait
        for it before refusing."""
        self.make_dir()
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() < deadline:
                        time.sleep(0.1)
                        continue
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                    raise UserError(
                        f"{self.dir}/lock: another action is running on cluster "
                        f"'{self.cluster.cluster_name}' (pid {holder}); wait for it to finish"
                    ) from None
            if not shared:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)


def read_secrets(path: Path) -> dict[str, str]:
    """secrets.yaml, or a clear error naming the file when it is damaged."""
    how = (f"restore {path} from a backup; if the cluster was never built, delete it and run "
           "again (new secrets are made)")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot be read ({type(e).__name__}); {how}") from None
    if not isinstance(data, dict) or any(not isinstance(data.get(k), str) or not data.get(k)
                                         for k in SECRET_KEYS[:3]):
        raise UserError(f"{path}: damaged (it must hold {', '.join(SECRET_KEYS[:3])}); {how}")
    return data


def write_secret(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte on."""
    write_atomic(path, data, 0o600)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temp file beside `path` (mode set before any byte), fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
