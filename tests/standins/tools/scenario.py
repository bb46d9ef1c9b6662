"""TEST-ONLY: the kubectl stand-in replays a cluster scenario written by a test.

There is no API server in the lab, so nothing can tell the stand-in which pods run or crash. A
test that needs the kube side of a cluster (cluster.status, cluster.doctor) writes
/etc/standin/kube-scenario.json on a control plane:

    {"nodes": <kubectl get nodes -o json>, "pods": <get pods -A -o json>,
     "daemonsets": <get ds -A -o json>, "events": <get events -A -o json>,
     "logs": {"NAMESPACE/POD/CONTAINER": "text", ...}, "describe": {"NAMESPACE/POD": "text"}}

(the lists in upstream format, as in tests/data/doctor/), and kubectl answers from it:

    get nodes|pods|daemonsets|events [-A | -n NS] -o json
    logs POD -n NS [-c CONTAINER] [--tail N] [--previous]
    describe pod POD -n NS

only while this node's API answers (the kubeadm stand-in's state), like the real one. Without the
file these stay "stand-in: no API server".
"""

from __future__ import annotations

import json

from . import Failed, Tool

SCENARIO = "/etc/standin/kube-scenario.json"
LISTS = {**{a: "nodes" for a in ("node", "nodes", "no")},
         **{a: "pods" for a in ("pod", "pods", "po")},
         **{a: "daemonsets" for a in ("daemonset", "daemonsets", "ds", "daemonsets.apps")},
         **{a: "events" for a in ("event", "events", "ev")}}


def load(tool: Tool) -> dict | None:
    p = tool.path(SCENARIO)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise Failed(f"stand-in: {SCENARIO} is not JSON: {e}") from None
    return data if isinstance(data, dict) else None


def flags(args: list[str], with_value: tuple[str, ...]) -> tuple[dict, list[str]]:
    out, words, i = {}, [], 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if name in with_value:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            out[name] = value
        elif a.startswith("-"):
            out[a] = True
        else:
            words.append(a)
        i += 1
    return out, words


def answer(tool: Tool, opts: dict, args: list[str], up) -> bool:
    """Print the scenario's answer to `kubectl ARGS` and return True, or return False when the
    scenario does not cover this call (no file, or another form). `up()` raises when this
    node's API does not answer."""
    data = load(tool)
    if data is None:
        return False
    verb, rest = args[0], args[1:]
    ns = opts.get("namespace") or opts.get("n")
    if verb == "get":
        f, words = flags(rest, ("-o", "--output"))
        output = f.get("-o") or f.get("--output")
        all_ns = bool(f.get("-A") or f.get("--all-namespaces"))
        if len(words) != 1 or words[0] not in LISTS or output != "json":
            return False
        up()
        kind = LISTS[words[0]]
        doc = data.get(kind) or {"apiVersion": "v1", "kind": "List", "items": []}
        items = doc.get("items") or []
        if kind != "nodes" and not all_ns:
            items = [i for i in items if i.get("metadata", {}).get("namespace") == (ns or "default")]
        print(json.dumps({**doc, "items": items}, indent=4))
        return True
    if verb == "logs":
        f, words = flags(rest, ("-c", "--container", "--tail"))
        if len(words) != 1:
            return False
        up()
        pod = words[0].removeprefix("pod/")
        key = f"{ns or 'default'}/{pod}/"
        logs = data.get("logs") or {}
        container = f.get("-c") or f.get("--container")
        found = [k for k in logs if k.startswith(key) and (not container or k == key + container)]
        if not found:
            raise Failed(f'Error from server (NotFound): pods "{pod}" not found')
        text = logs[found[0]]
        tail = int(f.get("--tail") or -1)
        lines = text.splitlines()
        print("\n".join(lines[-tail:] if tail >= 0 else lines))
        return True
    if verb == "describe":
        f, words = flags(rest, ())
        if len(words) == 2 and words[0] in ("pod", "pods", "po"):
            name = words[1]
        elif len(words) == 1 and words[0].startswith("pod/"):
            name = words[0][4:]
        else:
            return False
        up()
        text = (data.get("describe") or {}).get(f"{ns or 'default'}/{name}")
        if text is None:
            raise Failed(f'Error from server (NotFound): pods "{name}" not found')
        print(text)
        return True
    return False
