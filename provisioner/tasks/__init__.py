"""Thin invoke task modules: parse arguments, call an action, turn `UserError` into an exit."""

from __future__ import annotations

import functools
import inspect
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


# Arguments that say how, not what: left out of the recorded action's name.
QUIET_ARGS = ("c", "inventory", "bundle", "yes", "trust_new_hosts", "max_unavailable")


def recorded(fn):
    """Record the action's end (name, result, time) in the cluster's state folder, for
    `invoke cluster.list` (provisioner/clusters.py). Goes under `user_errors`."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        label = fn.__name__.rstrip("_")
        for k, v in bound.arguments.items():
            if k not in QUIET_ARGS and v not in (None, False) and v != sig.parameters[k].default:
                label += f" --{k.rstrip('_').replace('_', '-')}" + ("" if v is True else f" {v}")
        result, message = "ok", ""
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            result, message = "failed", str(e)
            raise
        except KeyboardInterrupt:
            result = "interrupted"
            raise
        except Exit as e:
            result = "ok" if not e.code else f"exit {e.code}"
            raise
        except Exception as e:
            result, message = "failed", type(e).__name__
            raise
        finally:
            _record(bound.arguments.get("inventory"), label, result, message)

    return wrapper


def _record(inventory, label: str, result: str, message: str) -> None:
    from .. import clusters
    from .. import inventory as inv
    from ..errors import InvalidInventory

    if not inventory:
        return
    try:
        cluster = inv.load(inventory)
    except InvalidInventory:
        return  # nothing ran: the inventory did not validate
    clusters.record(cluster, label, result, message)
