"""TEST-ONLY: a real OCI registry for the image tests — Debian's `docker-registry` (the CNCF
distribution registry, 2.8) serving plain HTTP on one address only, with its storage in a
folder of the test — and pushing the tiny stand-in images into it with skopeo.

A crashed run leaves a registry behind: `start` first stops the one recorded in the pid file
of the same name (only when that process is a docker-registry serving our config file) and
removes its storage.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests import skip_outside_ci

RUN_DIR = Path("/run/provisioner-test-registry")


def unavailable() -> str | None:
    missing = [t for t in ("docker-registry", "skopeo") if not shutil.which(t)]
    if missing or not Path("/bin/busybox").is_file():
        return (f"missing {', '.join(missing) or 'busybox-static'}: apt-get install "
                "docker-registry skopeo busybox-static (./bootstrap.sh installs them)")
    return None


class Registry:
    def __init__(self, name: str, address: str, port: int):
        self.name, self.address, self.port = name, address, port
        self.dir = RUN_DIR / name
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _stop_leftover(self) -> None:
        pidfile = self.dir / "pid"
        try:
            pid = int(pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            cmdline = []
        if cmdline and cmdline[0].endswith(b"docker-registry") and \
                str(self.dir / "config.yml").encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self) -> "Registry":
        reason = unavailable()
        if reason:
            skip_outside_ci(reason)
        self._stop_leftover()
        (self.dir / "data").mkdir(parents=True)
        (self.dir / "config.yml").write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.dir / 'data'}}}}}\n"
            f"http: {{addr: '{self.host}'}}\n")
        log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.dir / "config.yml")],
                                     stdout=log, stderr=log, start_new_session=True)
        (self.dir / "pid").write_text(str(self.proc.pid))
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"docker-registry exited: {(self.dir / 'log').read_text()}")
                time.sleep(0.1)
        raise RuntimeError(f"docker-registry does not answer on {self.url}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def push(self, archive: bytes, ref: str, as_name: str) -> None:
        """Push an OCI archive (image named `ref` inside) as <registry>/<as_name>."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image.tar"
            path.write_bytes(archive)
            subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet",
                            "--dest-tls-verify=false", f"oci-archive:{path}:{ref}",
                            f"docker://{self.host}/{as_name}"], check=True, timeout=120,
                           capture_output=True)

    def blob(self, digest: str) -> Path:
        """The file in the registry's storage holding a blob."""
        hexa = digest.split(":", 1)[1]
        return (self.dir / "data/docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data")
