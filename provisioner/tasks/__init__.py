"""Thin invoke task modules: parse arguments, call an action, turn `UserError` into an exit."""

from __future__ import annotations

import functools
import sys

from invoke import Exit

from ..errors import UserError

DEFAULT_INVENTORY = "inventories/lab.yml"


def user_errors(fn):
    """Print a `UserError` as plain text and exit non-zero, never with a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(str(e), file=sys.stderr)
            raise Exit(code=2) from None
        except KeyboardInterrupt:
            # the SSH pool has stopped its remote commands on the way out (ssh.Pool.close)
            print("interrupted", file=sys.stderr, flush=True)
            raise Exit(code=130) from None

    return wrapper
