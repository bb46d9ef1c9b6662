"""TEST-ONLY kubectl stand-in verbs on other nodes: `cordon`, `uncordon`, `drain`, `delete node`
(remove-node, upgrade). There is no API server: the node objects are what a control plane's stand-in
records about them (records_path, per node name), and the pods on a node come from a test
fixture, /etc/standin/pods.json on the node kubectl runs on:

    {"w1": [{"namespace": "default", "name": "web-1", "controller": "ReplicaSet",
             "emptyDir": false, "pdbBlocks": false}, ...]}

`controller` is the owner kind (DaemonSet, ReplicaSet, ...; null: a bare pod); `pdbBlocks`: a
PodDisruptionBudget allows no disruption of this pod, so every eviction is refused (429). Once
kubeadm's addons are installed (the kube-proxy DaemonSet) every node also runs a kube-proxy
DaemonSet pod.

What they check, as kubectl does (kubectl drain's pod filters and eviction loop):
- drain cordons first; DaemonSet pods need --ignore-daemonsets (then they stay), pods with
  emptyDir need --delete-emptydir-data, bare pods need --force; each refusal names the pods
  and nothing is evicted;
- an eviction a PodDisruptionBudget refuses is retried every 5 s (here every 1 s, said so)
  until --timeout, then the drain fails ("global timeout reached"); --disable-eviction deletes
  the pods instead (past any budget); --timeout=0 waits forever, as in kubectl;
- `get node OTHER -o jsonpath={.spec.unschedulable}` answers from the records (kubectl.get asks
  `unschedulable`; NotFound once deleted), and `get pods -A --field-selector spec.nodeName=NAME -o jsonpath=...` prints one line per pod of the
  fixture, `NAMESPACE/NAME=OWNER KIND` (the drain phase's end state; only that jsonpath);
- `cordon` / `drain` take any node name (the stand-in cannot know the cluster's other nodes);
  `get node OTHER` on a control plane finds a node this stand-in has recorded (labelled,
  tainted, cordoned, drained) until `delete node` recorded it gone.
"""

from __future__ import annotations

import re
import time

from . import Failed, Tool
from . import state

PODS = "/etc/standin/pods.json"
RETRY = 1.0  # kubectl retries every 5 s


def records(tool: Tool) -> dict:
    return state.load(tool, state.records_path(tool))


def deleted(tool: Tool, name: str) -> bool:
    return bool((records(tool).get(name) or {}).get("deleted"))


def require_api(tool: Tool, opts: dict) -> dict:
    from .kubectl import check_kubeconfig, not_reachable_reason, refused

    check_kubeconfig(tool, opts)
    view = state.node_view(tool)
    if not view["api_up"]:
        refused(tool, opts, not_reachable_reason(tool))
    return view


def node_name(verb: str, args: list[str], flags: tuple = ()) -> tuple[str, list[str]]:
    words = [a for a in args if not a.startswith("-")]
    extra = [a for a in args if a.startswith("-")]
    if words[:1] in (["node"], ["nodes"], ["no"]) and verb == "delete":
        words = words[1:]
    elif words and "/" in words[0] and verb == "delete":
        kind, _, name = words[0].partition("/")
        if kind not in ("node", "nodes", "no"):
            raise Failed(f"stand-in: no API server (the stand-in deletes nodes only, not {kind})")
        words = [name]
    if len(words) != 1:
        raise Failed(f"error: {verb} takes exactly one node name (stand-in)")
    for f in extra:
        if f.split("=")[0] not in flags:
            raise Failed(f"error: unknown flag: {f.split('=')[0]} (the {verb} stand-in takes "
                         f"{', '.join(flags) or 'no flags'})")
    return words[0], extra


def known(tool: Tool, name: str) -> bool:
    entry = records(tool).get(name)
    return entry is not None and not entry.get("deleted")


def must_exist(tool: Tool, name: str) -> None:
    if deleted(tool, name):
        raise Failed(f'Error from server (NotFound): nodes "{name}" not found')


def set_record(tool: Tool, name: str, **values) -> None:
    data = records(tool)
    data.setdefault(name, {}).update(values)
    state.save(tool, state.records_path(tool), data)


def unschedulable(tool: Tool, name: str) -> str:
    must_exist(tool, name)
    return "true" if (records(tool).get(name) or {}).get("unschedulable") else ""


def uncordon(tool: Tool, opts: dict, args: list[str]) -> int:
    return cordon(tool, opts, args, on=False)


def cordon(tool: Tool, opts: dict, args: list[str], on: bool = True) -> int:
    require_api(tool, opts)
    name, _ = node_name("cordon" if on else "uncordon", args)
    must_exist(tool, name)
    was = bool((records(tool).get(name) or {}).get("unschedulable"))
    set_record(tool, name, unschedulable=on)
    word = "cordoned" if on else "uncordoned"
    print(f"node/{name} {'already ' if was == on else ''}{word}")
    return 0


DRAIN_FLAGS = ("--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout",
               "--disable-eviction", "--grace-period", "--pod-selector")


def duration(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m|h)?", text)
    if not m:
        raise Failed(f'error: invalid argument "{text}" for "--timeout" flag: time: invalid '
                     "duration")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def drain(tool: Tool, opts: dict, args: list[str]) -> int:
    import json

    view = require_api(tool, opts)
    name, flags = node_name("drain", args, DRAIN_FLAGS)
    values = {f.split("=", 1)[0]: (f.split("=", 1)[1] if "=" in f else "true") for f in flags}
    timeout = duration(values.get("--timeout", "0s"))
    on = lambda f: values.get(f, "false") == "true"  # noqa: E731
    must_exist(tool, name)
    set_record(tool, name, unschedulable=True)
    print(f"node/{name} cordoned")
    path = tool.path(PODS)
    all_pods = json.loads(path.read_text()) if path.is_file() else {}
    pods = list(all_pods.get(name) or [])

    def ref(p):
        return f"{p['namespace']}/{p['name']}"
    fatal = []
    ds = [p for p in pods if p.get("controller") == "DaemonSet"]
    if view["addons"]:
        ds.append({"namespace": "kube-system", "name": f"kube-proxy-{name}",
                   "controller": "DaemonSet"})
    if ds and not on("--ignore-daemonsets"):
        fatal.append("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): "
                     + ", ".join(map(ref, ds)))
    local = [p for p in pods if p.get("emptyDir") and p.get("controller") != "DaemonSet"]
    if local and not on("--delete-emptydir-data"):
        fatal.append("cannot delete Pods with local storage (use --delete-emptydir-data to "
                     "override): " + ", ".join(map(ref, local)))
    bare = [p for p in pods if not p.get("controller")]
    if bare and not on("--force"):
        fatal.append("cannot delete Pods declare no controller (use --force to override): "
                     + ", ".join(map(ref, bare)))
    if fatal:
        raise Failed(f'error: unable to drain node "{name}" due to error: '
                     + ", ".join(fatal) + ", continuing command...\nThere are pending nodes to "
                     f"be drained:\n {name}")
    if ds:
        tool.say("Warning: ignoring DaemonSet-managed Pods: " + ", ".join(map(ref, ds)), err=True)
    todo = [p for p in pods if p.get("controller") != "DaemonSet"]
    deadline = time.monotonic() + timeout if timeout else None
    evict = not on("--disable-eviction")
    while todo:
        left = []
        for p in todo:
            if evict and p.get("pdbBlocks"):
                tool.say(f'error when evicting pods/"{p["name"]}" -n "{p["namespace"]}" (will '
                         f"retry after 5s; the stand-in retries after {RETRY:g}s): Cannot evict "
                         "pod as it would violate the pod's disruption budget.", err=True)
                left.append(p)
            else:
                print(f"pod/{p['name']} {'evicted' if evict else 'deleted'}")
        gone = [p for p in todo if p not in left]
        all_pods[name] = [p for p in all_pods.get(name, []) if p not in gone]
        if gone:
            tool.write(PODS, json.dumps(all_pods, indent=1) + "\n", 0o644)
        todo = left
        if todo:
            if deadline is not None and time.monotonic() + RETRY > deadline:
                p = todo[0]
                raise Failed(f'There are pending pods in node "{name}" when an error occurred: '
                             f'error when evicting pods/"{p["name"]}" -n "{p["namespace"]}": '
                             f"global timeout reached: {timeout:g}s\nerror: unable to drain node"
                             f' "{name}" due to error: error when evicting pods/"{p["name"]}" -n'
                             f' "{p["namespace"]}": global timeout reached: {timeout:g}s, '
                             f"continuing command...\nThere are pending nodes to be drained:\n "
                             f"{name}")
            time.sleep(RETRY)
    print(f"node/{name} drained")
    return 0


def delete(tool: Tool, opts: dict, args: list[str]) -> int:
    require_api(tool, opts)
    name, flags = node_name("delete", args, ("--ignore-not-found",))
    if deleted(tool, name):
        if "--ignore-not-found" in flags or "--ignore-not-found=true" in flags:
            return 0
        raise Failed(f'Error from server (NotFound): nodes "{name}" not found')
    set_record(tool, name, deleted=True)
    print(f'node "{name}" deleted')
    return 0


OWNERS = ('jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}='
          '{.metadata.ownerReferences[*].kind}{"\\n"}{end}')


def answers(args: list[str]) -> bool:
    """The `get` form of the drain phase's probe that kubectl.get does not serve."""
    return args[:2] in (["get", "pods"], ["get", "pod"]) and "--field-selector" in args


def get(tool: Tool, opts: dict, args: list[str]) -> int:
    import json

    require_api(tool, opts)
    rest = args[1:]
    selector = rest[rest.index("--field-selector") + 1]
    output = rest[rest.index("-o") + 1] if "-o" in rest else None
    if not selector.startswith("spec.nodeName=") or output != OWNERS or \
            set(rest) - {"-A", "--all-namespaces", "--field-selector", selector, "-o", output}:
        raise Failed("stand-in: no API server (the stand-in answers `get pods -A "
                     "--field-selector spec.nodeName=NAME -o` with the drain phase's jsonpath)")
    path = tool.path(PODS)
    pods = (json.loads(path.read_text()) if path.is_file() else {}).get(
        selector.split("=", 1)[1]) or []
    for p in pods:
        print(f"{p['namespace']}/{p['name']}={p.get('controller') or ''}")
    return 0
