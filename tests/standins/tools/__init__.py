"""Shared pieces of the stand-ins: paths under STANDIN_ROOT, output, the JSON-lines log, secrets.

TEST-ONLY. These stand-ins replace kubeadm, kubelet, kubectl, crictl and k3s on lab nodes, where
the real binaries cannot be downloaded. They check their input strictly and record how they were
called; they never run a Kubernetes component and never claim to.

Every line they print starts with `[stand-in TOOL]`, except the version line, which says
`stand-in (not Kubernetes)` itself. STANDIN_ROOT (tests on the controller only) prefixes every
absolute path they read or write, so they can run without touching /etc or /var.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

SECRET_KEYS = {"token", "certificateKey", "tlsBootstrapToken", "agent-token", "vpn-auth",
               "datastore-endpoint"}  # (a datastore URL may hold a password)
SECRET_FLAGS = {"--token", "--certificate-key", "--discovery-token", "--tls-bootstrap-token",
                "--agent-token", "-t"}


class Failed(Exception):
    """Print the message (prefixed) on stderr and exit with `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class Tool:
    def __init__(self, name: str, version: str):
        self.name = name
        self.version = version
        self.root = os.environ.get("STANDIN_ROOT", "")

    # -- paths -----------------------------------------------------------------------------------
    def path(self, p: str) -> Path:
        return Path(self.root + p) if self.root and p.startswith("/") else Path(p)

    def write(self, p: str, text: str, mode: int = 0o644) -> None:
        target = self.path(p)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".standin-part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(part, mode)
        os.replace(part, target)

    # -- output ----------------------------------------------------------------------------------
    def say(self, message: str, err: bool = False) -> None:
        stream = sys.stderr if err else sys.stdout
        for line in str(message).splitlines() or [""]:
            print(f"[stand-in {self.name}] {line}", file=stream, flush=True)

    def version_line(self) -> str:
        return f"{self.name} version: stand-in (not Kubernetes) for {self.version}"

    # -- the log ---------------------------------------------------------------------------------
    def record(self, argv: list[str], result: str, log: str | None = None, **extra) -> None:
        """One JSON line per invocation in /var/log/standin/<tool>.jsonl; secrets as hashes."""
        entry = {"tool": f"stand-in {self.name}", "version": self.version, "argv": redact_argv(argv),
                 "time": time.time(), "result": result}
        entry.update({k: redact(v) for k, v in extra.items()})
        target = self.path(f"/var/log/standin/{log or self.name}.jsonl")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")


def hashed(secret) -> str:
    return "redacted-sha256:" + hashlib.sha256(str(secret).encode()).hexdigest()


def redact(value):
    """A copy of a config tree with every secret-named value replaced by its sha256."""
    if isinstance(value, dict):
        return {k: (hashed(v) if k in SECRET_KEYS and isinstance(v, (str, int)) else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def redact_argv(argv: list[str]) -> list[str]:
    out, hide = [], False
    for a in argv:
        if hide:
            out.append(hashed(a))
            hide = False
        elif "=" in a and a.split("=", 1)[0] in SECRET_FLAGS:
            flag, value = a.split("=", 1)
            out.append(f"{flag}={hashed(value)}")
        else:
            out.append(a)
            hide = a in SECRET_FLAGS
    return out


def data_text(name: str) -> str:
    """An upstream data file: packed next to the code in the stand-in binary, or, when run from
    the source tree, tests/data/upstream/NAME."""
    try:
        from importlib.resources import files

        return (files(__package__) / "data" / name).read_text()
    except (FileNotFoundError, NotADirectoryError, OSError):
        return (Path(__file__).resolve().parents[2] / "data" / "upstream" / name).read_text()


def run(tool: Tool, main, argv: list[str]) -> int:
    """Call main(tool, argv); a `Failed` becomes its prefixed message and exit code."""
    try:
        return main(tool, argv) or 0
    except Failed as e:
        tool.say(str(e), err=True)
        return e.code
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug in the stand-in: still say who is talking
        import traceback

        tool.say("internal error of the stand-in:\n" + traceback.format_exc(), err=True)
        return 3


def load_yaml_docs(tool: Tool, path: str) -> list:
    import yaml

    p = tool.path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise Failed(f"unable to read config from {path!r}: {e.strerror}") from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise Failed(f"error converting YAML to JSON: {path}: {e}") from None
