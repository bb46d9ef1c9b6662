"""TEST-ONLY stand-in for kubectl: `version --client`, `apply -f FILE` (checked and recorded, not
applied: there is no API server), a few `get` forms answered from the local node's stand-in
state, and `label` / `taint` (checked like kubectl and recorded locally).

There is no API server anywhere. Each node answers about itself only, from what the kubeadm or
k3s stand-in recorded on it (state.py):

- `get --raw /readyz` (also /livez, /healthz; with or without `--server URL`): `ok` iff this
  node is a control plane whose own API would answer (state.kubeadm_view / k3s_view), else the
  connection-refused error kubectl prints for an unreachable server.
- `get node NAME -o name` / `-o jsonpath={.metadata.labels}`: NAME must be this node and
  registered; the labels are the kubelet's, the control-plane ones once mark-control-plane ran,
  and those recorded by `kubectl label`.
- `-n kube-public get configmap cluster-info -o name` (after bootstrap-token),
  `-n kube-system get daemonset/kube-proxy deployment/coredns -o name` (after addon),
  `-n kube-system get pod etcd-NAME -o name` (a stacked etcd member on this node).
- with a test's scenario file (/etc/standin/kube-scenario.json, tools/scenario.py): lists of
  nodes, pods, DaemonSets and events as JSON, `logs` and `describe pod`, replayed from it.
- `label node NAME k=v k- [--overwrite]`, `taint node NAME k=v:Effect k:Effect- [--overwrite]`:
  any NAME (the stand-in cannot know the cluster's other nodes), recorded per node name.

- `cordon`, `uncordon`, `drain`, `delete node` of any node, and `get node OTHER` on a control
  plane: see nodes.py (remove-node).

Every other `get` (and wait, rollout, describe, cluster-info) fails: "stand-in: no API server".
"""

from __future__ import annotations

import json
import re
import sys

from . import Failed, Tool, load_yaml_docs
from . import state

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
    if args[0] in ("get", "logs", "describe"):
        from . import scenario

        def up() -> None:
            check_kubeconfig(tool, opts)
            if not state.node_view(tool)["api_up"]:
                refused(tool, opts, not_reachable_reason(tool))

        try:
            replayed = scenario.answer(tool, opts, args, up)
        except Failed as e:
            tool.record(argv, "error: " + str(e).splitlines()[0], log=log)
            raise
        if replayed:
            tool.record(argv, "replayed " + scenario.SCENARIO, log=log)
            return 0
    if args[0] in ("get", "label", "taint", "drain", "cordon", "uncordon", "delete"):
        from . import nodes

        verbs = {"get": nodes.get if nodes.answers(args) else get, "label": label,
                 "taint": taint, "drain": nodes.drain, "cordon": nodes.cordon,
                 "uncordon": nodes.uncordon, "delete": nodes.delete}
        try:
            rc = verbs[args[0]](tool, opts, args[1:])
        except Failed as e:
            tool.record(argv, "error: " + str(e).splitlines()[0], log=log)
            raise
        tool.record(argv, "ok", log=log)
        return rc
    if args[0] in ("wait", "rollout", "describe", "cluster-info"):
        no_api_server(args[0])
    raise Failed(f'unknown command "{args[0]}" for the kubectl stand-in (it implements version, '
                 "apply, get, label, taint, cordon, uncordon, drain, delete)")


def no_api_server(what: str):
    raise Failed(f"stand-in: no API server (the stand-in cannot answer `kubectl {what}`)")


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


# ---------------------------------------------------------------------------------------------
# get / label / taint, answered from the local node's stand-in state
# ---------------------------------------------------------------------------------------------

KINDS = {  # alias -> (plural resource, group, -o name prefix, namespaced)
    **{a: ("nodes", "", "node", False) for a in ("node", "nodes", "no")},
    **{a: ("pods", "", "pod", True) for a in ("pod", "pods", "po")},
    **{a: ("configmaps", "", "configmap", True) for a in ("configmap", "configmaps", "cm")},
    **{a: ("daemonsets", "apps", "daemonset.apps", True)
       for a in ("daemonset", "daemonsets", "ds", "daemonsets.apps")},
    **{a: ("deployments", "apps", "deployment.apps", True)
       for a in ("deployment", "deployments", "deploy", "deployments.apps")},
}
HEALTH = ("/readyz", "/livez", "/healthz")


def server_of(tool: Tool, opts: dict) -> str:
    """host:port kubectl would talk to (for its connection error)."""
    import yaml

    url = opts.get("server")
    if not url and opts.get("kubeconfig"):
        try:
            doc = yaml.safe_load(tool.path(opts["kubeconfig"]).read_text()) or {}
            url = doc["clusters"][0]["cluster"]["server"]
        except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
            url = None
    return re.sub(r"^https?://", "", str(url or "localhost:8080")).rstrip("/")


def check_kubeconfig(tool: Tool, opts: dict) -> None:
    k = opts.get("kubeconfig")
    if k and not tool.path(k).is_file():
        raise Failed(f"error: stat {k}: no such file or directory")


def refused(tool: Tool, opts: dict, why: str):
    raise Failed(f"The connection to the server {server_of(tool, opts)} was refused - did you "
                 f"specify the right host or port?\n(stand-in: no API server; {why})")


def not_reachable_reason(tool: Tool) -> str:
    if tool.name == "k3s":
        return "the stand-in state says the k3s unit of this node is not active"
    return ("the stand-in state of this node says no API answers here "
            f"({state.KUBEADM_STATE}, kubelet unit)")


def get(tool: Tool, opts: dict, args: list[str]) -> int:
    check_kubeconfig(tool, opts)
    if args[:1] == ["--raw"] or (args and args[0].startswith("--raw=")):
        path = args[0].split("=", 1)[1] if "=" in args[0] else (args[1] if len(args) > 1 else "")
        if path == "/version" and len(args) == (1 if "=" in args[0] else 2):
            from .upgrade import raw_version

            if not state.node_view(tool)["api_up"]:
                refused(tool, opts, not_reachable_reason(tool))
            print(raw_version(tool))
            return 0
        if path.split("?")[0] not in HEALTH or len(args) > (1 if "=" in args[0] else 2):
            no_api_server("get --raw " + path)
        if not state.node_view(tool)["api_up"]:
            refused(tool, opts, not_reachable_reason(tool))
        print("ok")
        return 0
    output, ignore, words, i = None, False, [], 0
    while i < len(args):
        a = args[i]
        if a in ("-o", "--output"):
            i += 1
            output = args[i] if i < len(args) else ""
        elif a.startswith(("-o=", "--output=")):
            output = a.split("=", 1)[1]
        elif a.startswith("-o") and not a.startswith("--"):
            output = a[2:]
        elif a == "--ignore-not-found" or a == "--ignore-not-found=true":
            ignore = True
        elif a.startswith("-"):
            no_api_server(f"get ... {a}")
        else:
            words.append(a)
        i += 1
    wanted = resources(words)
    field = (output or "").removeprefix("jsonpath=").strip("'")
    if field in ("{.spec.unschedulable}", "{.status.nodeInfo.kubeletVersion}") \
            and [k for k, _ in wanted] == ["nodes"]:
        from . import nodes, upgrade

        view = state.node_view(tool)
        if not view["reachable"]:
            refused(tool, opts, not_reachable_reason(tool))
        for _, name in wanted:
            if field == "{.spec.unschedulable}":  # any name: kept where drain/cordon ran
                if not view["api_up"]:
                    no_api_server("get node -o jsonpath={.spec.unschedulable} (answered on a "
                                  "control plane only)")
                print(nodes.unschedulable(tool, name), end="")
            else:
                print(upgrade.node_kubelet_version(tool, view, name), end="")
        return 0
    labels = output in ("jsonpath={.metadata.labels}", "jsonpath='{.metadata.labels}'")
    if output != "name" and not (labels and [k for k, _ in wanted] == ["nodes"]):
        no_api_server(f"get {' '.join(words)} -o {output}" if output else f"get {' '.join(words)}"
                      " (the stand-in answers -o name, and -o jsonpath={.metadata.labels} for "
                      "a node)")
    view = state.node_view(tool)
    if not view["reachable"]:
        refused(tool, opts, not_reachable_reason(tool))
    ns = opts.get("namespace") or opts.get("n") or "default"
    have = existing(view)
    if view["control_plane"] and view["api_up"]:  # other nodes the stand-in has touched
        from . import nodes

        have |= {("nodes", "", n) for p, n in wanted
                 if p == "nodes" and n != view["node"] and nodes.known(tool, n)}
    missing = []
    for plural, name in wanted:
        kind = next(v for v in KINDS.values() if v[0] == plural)
        key = (plural, "" if not kind[3] else ns, name)
        if key not in have:
            group = f".{kind[1]}" if kind[1] else ""
            missing.append(f'Error from server (NotFound): {plural}{group} "{name}" not found')
        elif labels:
            print(json.dumps(node_labels(tool, view, name), sort_keys=True,
                             separators=(",", ":")))
        else:
            print(f"{kind[2]}/{name}")
    if missing and not ignore:
        raise Failed("\n".join(missing))
    return 0


def resources(words: list[str]) -> list[tuple[str, str]]:
    """`TYPE NAME...` or `TYPE/NAME...` -> [(plural, name)]; any other kind: no API server."""
    if not words:
        raise Failed("error: You must specify the type of resource to get.")
    out = []
    if "/" in words[0]:
        for w in words:
            kind, _, name = w.partition("/")
            if kind not in KINDS or not name:
                no_api_server(f"get {w}")
            out.append((KINDS[kind][0], name))
        return out
    if words[0] not in KINDS:
        no_api_server(f"get {words[0]}")
    if len(words) < 2:
        no_api_server(f"get {words[0]} (a list: the stand-in answers for named objects only)")
    return [(KINDS[words[0]][0], n) for n in words[1:]]


def existing(view: dict) -> set[tuple[str, str, str]]:
    node = view["node"]
    have = set()
    if node and view["registered"]:
        have.add(("nodes", "", node))
    if node and view["etcd_member"] and view["registered"]:
        have.add(("pods", "kube-system", f"etcd-{node}"))
    if view["cluster_info"]:
        have.add(("configmaps", "kube-public", "cluster-info"))
    if view["addons"]:
        have |= {("daemonsets", "kube-system", "kube-proxy"),
                 ("deployments", "kube-system", "coredns")}
    return have


def base_labels(view: dict, name: str) -> dict[str, str]:
    if name != view["node"] or not view["registered"]:
        return {}
    out = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
           "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
           "kubernetes.io/os": "linux", **view["labels"]}
    if view["marked"]:
        out["node-role.kubernetes.io/control-plane"] = ""
        out["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    return out


def node_labels(tool: Tool, view: dict, name: str) -> dict[str, str]:
    labels = base_labels(view, name)
    for k, v in (load_records(tool).get(name) or {}).get("labels", {}).items():
        if v is None:
            labels.pop(k, None)
        else:
            labels[k] = v
    return labels


def load_records(tool: Tool) -> dict:
    return state.load(tool, state.records_path(tool))


# -- syntax, as kubectl checks it ----------------------------------------------------------------

NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not DNS1123.fullmatch(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not NAME.fullmatch(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character (at most 63 characters)")
    return None


def value_problem(value: str) -> str | None:
    if value and (len(value) > 63 or not NAME.fullmatch(value)):
        return ("a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character (at "
                "most 63 characters)")
    return None


def node_target(verb: str, args: list[str]) -> tuple[str, list[str], bool]:
    """(node name, change specs, --overwrite) from `node NAME specs...` or `node/NAME specs...`."""
    flags = [a for a in args if a.startswith("--")]
    for f in flags:
        if f not in ("--overwrite", "--overwrite=true", "--overwrite=false"):
            raise Failed(f"error: unknown flag: {f} (the {verb} stand-in takes --overwrite)")
    overwrite = any(f in ("--overwrite", "--overwrite=true") for f in flags)
    words = [a for a in args if not a.startswith("--")]
    if not words:
        raise Failed("error: resource(s) were provided, but no name was specified")
    if "/" in words[0]:
        kind, _, name = words[0].partition("/")
        rest = words[1:]
    elif len(words) >= 2:
        kind, name, rest = words[0], words[1], words[2:]
    else:
        raise Failed("error: resource(s) were provided, but no name was specified")
    if kind not in ("node", "nodes", "no"):
        no_api_server(f"{verb} {kind}")
    return name, rest, overwrite


def label(tool: Tool, opts: dict, args: list[str]) -> int:
    check_kubeconfig(tool, opts)
    name, specs, overwrite = node_target("label", args)
    if not specs:
        raise Failed("error: at least one label update is required")
    sets, removes = {}, []
    for spec in specs:
        if spec.endswith("-") and "=" not in spec:
            key = spec[:-1]
            if key_problem(key):
                raise Failed(f"error: invalid label spec: {spec}: {key_problem(key)}")
            removes.append(key)
        elif "=" in spec:
            key, _, value = spec.partition("=")
            problem = key_problem(key) or value_problem(value)
            if problem:
                raise Failed(f"error: invalid label spec: {spec}: {problem}")
            sets[key] = value
        else:
            raise Failed(f"error: all resources must be specified before label changes: {spec}")
    view = state.node_view(tool)
    if not view["reachable"]:
        refused(tool, opts, not_reachable_reason(tool))
    current = node_labels(tool, view, name)
    for k, v in sets.items():
        if k in current and current[k] != v and not overwrite:
            raise Failed(f"error: '{k}' already has a value ({current[k]}), and --overwrite is "
                         "false")
    records = load_records(tool)
    mine = records.setdefault(name, {}).setdefault("labels", {})
    changed = False
    for k in removes:
        if k not in current:
            tool.say(f'label "{k}" not found.', err=True)
            continue
        if k in base_labels(view, name):
            mine[k] = None
        else:
            mine.pop(k, None)
        changed = True
    for k, v in sets.items():
        if current.get(k) != v:
            changed = True
        mine[k] = v
    state.save(tool, state.records_path(tool), records)
    tool.say(f"node/{name} {'labeled' if changed else 'not labeled'} (recorded by the stand-in "
             f"in {state.records_path(tool)}; no API server was changed)")
    return 0


def parse_taint(spec: str) -> tuple[str, str, str, bool]:
    """(key, value, effect, remove) like kubectl's ParseTaints."""
    remove = spec.endswith("-")
    body = spec[:-1] if remove else spec
    key_value, colon, effect = body.partition(":")
    key, eq, value = key_value.partition("=")
    if remove:
        if eq:
            raise Failed(f"error: invalid taint spec: {spec}, a taint to remove is key[:effect]-")
    elif not colon or not effect:
        raise Failed(f"error: invalid taint spec: {spec}, unknown taint spec (want "
                     "key[=value]:effect)")
    if effect and effect not in EFFECTS:
        raise Failed(f"error: invalid taint effect: {effect}, unsupported taint effect (want "
                     f"{', '.join(EFFECTS)})")
    problem = key_problem(key) or value_problem(value)
    if problem:
        raise Failed(f"error: invalid taint spec: {spec}, {problem}")
    return key, value, effect, remove


def taint(tool: Tool, opts: dict, args: list[str]) -> int:
    check_kubeconfig(tool, opts)
    name, specs, overwrite = node_target("taint", args)
    if not specs:
        raise Failed("error: at least one taint update is required")
    parsed = [parse_taint(s) for s in specs]
    view = state.node_view(tool)
    if not view["reachable"]:
        refused(tool, opts, not_reachable_reason(tool))
    records = load_records(tool)
    mine = records.setdefault(name, {})
    taints = mine.get("taints")
    if taints is None:
        taints = list(view.get("taints") or []) if name == view["node"] else []
    added = removed = False
    for key, value, effect, remove in parsed:
        if remove:
            keep = [t for t in taints if not (t["key"] == key and effect in ("", t["effect"]))]
            if len(keep) == len(taints):
                raise Failed(f'error: taint "{key}{":" + effect if effect else ""}" not found')
            taints, removed = keep, True
        else:
            same = [t for t in taints if t["key"] == key and t["effect"] == effect]
            if same and not overwrite:
                raise Failed(f"error: node {name} already has {key} taint(s) with same "
                             "effect(s) and --overwrite is false")
            taints = [t for t in taints if t not in same] + [
                {"key": key, "value": value, "effect": effect}]
            added = True
    mine["taints"] = taints
    state.save(tool, state.records_path(tool), records)
    outcome = "modified" if added and removed else "tainted" if added else "untainted"
    tool.say(f"node/{name} {outcome} (recorded by the stand-in in {state.records_path(tool)}; "
             "no API server was changed)")
    return 0
