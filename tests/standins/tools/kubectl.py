"""TEST-ONLY stand-in for kubectl: `version --client`, `apply -f FILE` (checked and recorded, not
applied: there is no API server), and `get` (always fails: "stand-in: no API server")."""

from __future__ import annotations

import sys

from . import Failed, Tool, load_yaml_docs

GLOBAL_VALUE_FLAGS = {"--kubeconfig", "-n", "--namespace", "--context", "--server", "-s"}


def main(tool: Tool, argv: list[str], log: str = "kubectl") -> int:
    opts, args = split_globals(argv)
    if not args or args[0] in ("-h", "--help"):
        tool.say("usage: kubectl version --client | apply -f FILE | get ... (a test-only "
                 "stand-in)")
        return 0
    if args[0] == "version" or "--version" in args:
        print(tool.version_line())
        if "--client" not in args and args[0] == "version":
            tool.say("no server version: stand-in: no API server", err=True)
            return 1
        return 0
    if args[0] == "apply":
        return apply(tool, argv, opts, args[1:], log)
    if args[0] in ("get", "wait", "rollout", "describe", "cluster-info"):
        tool.record(argv, "error: no API server", log=log)
        raise Failed("stand-in: no API server (the stand-in cannot answer "
                     f"`kubectl {args[0]}`)")
    raise Failed(f'unknown command "{args[0]}" for the kubectl stand-in (it implements version, '
                 "apply, get)")


def split_globals(argv: list[str]) -> tuple[dict, list[str]]:
    opts, args, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        flag, eq, value = a.partition("=")
        if flag in GLOBAL_VALUE_FLAGS:
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            opts[flag.lstrip("-")] = value
        else:
            args.append(a)
        i += 1
    return opts, args


def apply(tool: Tool, argv: list[str], opts: dict, args: list[str], log: str) -> int:
    files, i = [], 0
    while i < len(args):
        a = args[i]
        if a in ("-f", "--filename"):
            i += 1
            files.append(args[i] if i < len(args) else "")
        elif a.startswith("--filename="):
            files.append(a.split("=", 1)[1])
        elif a.startswith("--server-side") or a.startswith("--force-conflicts"):
            pass
        else:
            raise Failed(f"unknown flag for apply in the stand-in: {a}")
        i += 1
    if not files or "" in files:
        raise Failed("error: must specify one of -f and -k")
    try:
        kubeconfig = opts.get("kubeconfig")
        if kubeconfig and not tool.path(kubeconfig).is_file():
            raise Failed(f"error: stat {kubeconfig}: no such file or directory")
        objects = []
        for f in files:
            docs = load_yaml_docs(tool, f) if f != "-" else _stdin_docs()
            for n, doc in enumerate(docs):
                objects.append(check_object(f, n, doc))
    except Failed as e:
        tool.record(argv, "error: " + str(e).splitlines()[0].removeprefix("error: "), log=log)
        raise
    tool.record(argv, "ok", log=log, objects=objects)
    for o in objects:
        tool.say(f"{o['kind'].lower()}/{o['name']} recorded (stand-in: not sent to any "
                 "API server)")
    return 0


def _stdin_docs() -> list:
    import yaml

    return [d for d in yaml.safe_load_all(sys.stdin.read()) if d is not None]


def check_object(path: str, n: int, doc) -> dict:
    where = f"{path} (document {n + 1})"
    if not isinstance(doc, dict):
        raise Failed(f"error: {where}: not an object")
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise Failed(f"error: {where}: Object '{key}' is missing")
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise Failed(f"error: {where}: {doc['kind']}: metadata.name is required")
    return {"apiVersion": doc["apiVersion"], "kind": doc["kind"], "name": meta["name"],
            "namespace": meta.get("namespace")}
