"""Several clusters from one controller: what each state folder holds (`invoke cluster.list`)
and the admin kubeconfig of one cluster, alone or merged into kubectl's config
(`invoke cluster.kubeconfig`).

Every action run from the command line records, at its end, one small file in the cluster's
state folder — `last-action.json`: the action, its result (ok, failed with the first line of
the error, interrupted), the UTC time, the inventory's absolute path, the Kubernetes version
and the hosts per role. Nothing secret is in it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .model import ROLE_GROUPS, Cluster
from .state import State, state_base, write_atomic, write_secret

RECORD = "last-action.json"
KINDS = ("clusters", "users", "contexts")  # kubeconfig lists whose entries have a `name`


def record(cluster: Cluster, action: str, result: str, message: str = "") -> None:
    """Write last-action.json, if the cluster has a state folder (never makes one)."""
    state = State(cluster)
    if not state.dir.is_dir():
        return
    data = {
        "cluster": cluster.cluster_name,
        "action": action,
        "result": result,
        "message": message.strip().splitlines()[0][:200] if message.strip() else "",
        "time": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "inventory": str(Path(cluster.source).resolve()),
        "distribution": cluster.distribution,
        "version": cluster.kubernetes_version,
        "nodes": {r: len(cluster.with_role(r)) for r in ROLE_GROUPS if cluster.with_role(r)},
        "hosts": len(cluster.nodes),
    }
    try:
        write_atomic(state.dir / RECORD, (json.dumps(data, indent=1) + "\n").encode(), 0o600)
    except OSError:
        pass  # the action's own result matters more than its record


def state_folders(bases: list[Path]) -> list[Path]:
    """Every cluster folder under the given state folders (one that has PKI, secrets, a
    kubeconfig or a record), each once."""
    seen: dict[Path, None] = {}
    for base in bases:
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if d.is_dir() and not d.is_symlink() and any(
                    (d / f).exists() for f in (RECORD, "pki", "secrets.yaml", "kubeconfig")):
                seen.setdefault(d.resolve(), None)
    return list(seen)


def describe(folder: Path) -> dict[str, Any]:
    """One row of cluster.list; '-' for what was never recorded or cannot be read."""
    row = {"cluster": folder.name, "inventory": "-", "version": "-", "nodes": "-",
           "action": "-", "result": "-", "time": "-", "state": str(folder)}
    try:
        data = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        return row
    except (OSError, ValueError):
        row["result"] = f"{RECORD} unreadable"
        return row
    if not isinstance(data, dict):
        row["result"] = f"{RECORD} unreadable"
        return row
    nodes = data.get("nodes") or {}
    row.update({
        "cluster": str(data.get("cluster", folder.name)),
        "inventory": str(data.get("inventory", "-")),
        "version": f"{data.get('distribution', '')} {data.get('version', '-')}".strip(),
        "nodes": f"{data.get('hosts', '?')} (" + ", ".join(f"{v} {k}" for k, v in nodes.items())
                 + ")" if isinstance(nodes, dict) and nodes else str(data.get("hosts", "-")),
        "action": str(data.get("action", "-")),
        "result": str(data.get("result", "-")) + (f": {data['message']}"
                                                  if data.get("message") else ""),
        "time": str(data.get("time", "-")),
    })
    return row


def table(rows: list[dict[str, Any]]) -> str:
    cols = ("cluster", "inventory", "version", "nodes", "action", "result", "time")
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return "\n".join(lines)


# -- kubeconfig -----------------------------------------------------------------------------


def admin_kubeconfig(cluster: Cluster) -> dict:
    """The state folder's admin kubeconfig with its cluster, user and context all named after
    the cluster."""
    path = State(cluster).kubeconfig
    if not path.exists():
        raise UserError(f"{path}: cluster {cluster.cluster_name} has no admin kubeconfig yet "
                        "(`invoke cluster.up` copies it once the control plane is up)")
    config = _read(path, "restore it from a backup, or run `invoke cluster.up` to copy it "
                         "again from the first control plane")
    entries = {k: config.get(k) for k in KINDS}
    if any(not isinstance(v, list) or len(v) != 1 or not isinstance(v[0], dict)
           for v in entries.values()):
        raise UserError(f"{path}: expected one cluster, one user and one context; run "
                        "`invoke cluster.up` to copy it again")
    name = cluster.cluster_name
    context = dict(entries["contexts"][0].get("context") or {})
    context.update(cluster=name, user=name)
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": name, "cluster": entries["clusters"][0].get("cluster")}],
        "users": [{"name": name, "user": entries["users"][0].get("user")}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
        "preferences": {},
    }


def _read(path: Path, fix: str) -> dict:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot be read as a kubeconfig ({type(e).__name__}); "
                        f"{fix}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a kubeconfig (the top level is not a mapping); {fix}")
    return config


def merge(existing: dict, new: dict) -> dict:
    """kubectl's merge for one new cluster: an entry of the same name is replaced in place,
    others are kept as they are, new ones appended; current-context is set only if none is."""
    out = dict(existing)
    out.setdefault("apiVersion", "v1")
    out.setdefault("kind", "Config")
    for kind in KINDS:
        entries = list(out.get(kind) or [])
        for entry in new[kind]:
            names = [e.get("name") if isinstance(e, dict) else None for e in entries]
            if entry["name"] in names:
                entries[names.index(entry["name"])] = entry
            else:
                entries.append(entry)
        out[kind] = entries
    if not out.get("current-context"):
        out["current-context"] = new["current-context"]
    return out


def default_target() -> Path:
    """kubectl's file: the first of $KUBECONFIG, else ~/.kube/config."""
    env = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return Path(env[0]).expanduser() if env else Path("~/.kube/config").expanduser()


def write_kubeconfig(cluster: Cluster, out: str | None = None, merge_into: bool = False
                     ) -> tuple[Path, str]:
    """Write (or merge) the admin kubeconfig; returns (path, what was done). Mode 0600."""
    new = admin_kubeconfig(cluster)
    fix = "fix or move the file, or write this cluster's config elsewhere with -o"
    if merge_into:
        target = Path(out).expanduser() if out else default_target()
        target = Path(os.path.realpath(target))  # a symlinked ~/.kube/config stays a symlink
        existing = _read(target, fix) if target.exists() else {}
        for kind in KINDS:
            if existing.get(kind) is not None and not isinstance(existing.get(kind), list):
                raise UserError(f"{target}: `{kind}` is not a list; {fix}")
        had = any(isinstance(e, dict) and e.get("name") == cluster.cluster_name
                  for e in existing.get("contexts") or [])
        config = merge(existing, new)
        done = ("replaced" if had else "added") + f" context {cluster.cluster_name}"
        if config.get("current-context") == cluster.cluster_name:
            done += " (the current context)"
    else:
        target = Path(out or f"{cluster.cluster_name}.kubeconfig").expanduser()
        if target.exists():
            other = [e.get("name") for e in _read(target, fix).get("contexts") or []
                     if isinstance(e, dict) and e.get("name") != cluster.cluster_name]
            if other:
                raise UserError(f"{target}: holds other contexts ({', '.join(map(str, other))}); "
                                "add this cluster with --merge, or choose another -o")
        config = new
        done = f"wrote context {cluster.cluster_name}"
    try:
        write_secret(target, yaml.safe_dump(config, sort_keys=False).encode())
    except OSError as e:
        raise UserError(f"{target}: cannot write: {e.strerror} (choose another -o)") from None
    return target, done


def default_bases(inventories: list[str], states: list[str]) -> list[Path]:
    """The state folders cluster.list looks in."""
    from . import inventory as inv

    bases = [Path(s).expanduser().absolute() for s in states]
    for path in inventories:
        bases.append(state_base(inv.load(path)).resolve())
    env = os.environ.get("PROVISIONER_STATE_DIR")
    if env:
        bases.append(Path(env).expanduser().absolute())
    return bases
