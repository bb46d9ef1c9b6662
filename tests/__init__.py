"""Test package. Shared rule for tests that need this machine's abilities (root, sshd, nspawn)."""

import os

import pytest


def skip_outside_ci(reason: str) -> None:
    """Skip with the reason; under CI=true fail instead: CI must run every test."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but {reason}")
    pytest.skip(reason)
