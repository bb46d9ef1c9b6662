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
            raise Exit("interrupted", code=130) from None

    return wrapper
