"""The playbooks pass ansible-lint's production profile; every YAML file we write passes
yamllint (.yamllint)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_playbooks_pass_ansible_lint_production():
    r = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--nocolor",
                        "-f", "pep8", "--offline", "."], cwd=REPO / "provisioner" / "playbooks",
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_yaml_passes_yamllint():
    r = subprocess.run([str(BIN / "yamllint"), "-f", "parsable", "--strict", "."], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
