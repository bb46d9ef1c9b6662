"""TEST-ONLY stand-in pieces for upgrades: `kubeadm upgrade plan|apply|node`, the running
kubelet's version, and the version skew rules (`kubectl drain|cordon|uncordon`: nodes.py).

There is no API server. What a cluster would know is split like this:
- the control plane version of a node (its static pods) is `version` in its kubeadm step state
  (/var/lib/standin/kubeadm-state.json): init/join write the kubeadm version that made them,
  `upgrade apply` / `upgrade node` write the new one, and the static pod manifests carry it as
  their image tag;
- the running kubelet's version is /var/lib/standin/kubelet-status.json, written by the kubelet
  stand-in when it starts (what the real kubelet reports in .status.nodeInfo.kubeletVersion);
- the cordon state of a node is kept on the control plane where kubectl drain/cordon/uncordon
  ran (nodes.py: the kubectl records, per node name, like labels and taints).

Checked like the real tools (rules from the Kubernetes version skew policy and kubeadm's upgrade
policy, written here from their documentation):
- `upgrade apply vX`: needs --yes (no terminal to ask), a control plane whose API answers, a
  version kubeadm can deploy (this kubeadm's minor, not newer than this kubeadm), not a
  downgrade, at most one minor above the cluster's control plane, and the local kubelet not
  more than 3 minors older than vX;
- `upgrade node`: the node must have joined; a control plane moves its static pods to this
  kubeadm's version under the same rules; a worker gets its kubelet config rewritten;
- `upgrade plan [vX]`: the same checks as apply, changes nothing;
- the kubelet on a control plane refuses to start when it is newer than the local API server.
"""

from __future__ import annotations

import json
import re
import time

from . import Failed, Tool
from . import state

KUBELET_STATUS = "/var/lib/standin/kubelet-status.json"
VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)(?:\+k3s\d+)?")
KUBELET_MAX_OLDER = 3  # minors a kubelet may lag behind the API server (since 1.28)


def parse(v: str) -> tuple[int, int, int]:
    m = VERSION.fullmatch(str(v).strip())
    if not m:
        raise Failed(f'unable to parse version "{v}" (want vMAJOR.MINOR.PATCH)')
    return tuple(int(x) for x in m.groups())


def minor_of(v: str) -> str:
    major, minor, _ = parse(v)
    return f"v{major}.{minor}"


def policy(kubeadm: str, current: str, target: str) -> list[str]:
    """Why kubeadm `kubeadm` may not move a control plane at `current` to `target` ([] = ok)."""
    k, c, t = parse(kubeadm), parse(current), parse(target)
    out = []
    if t[:2] != k[:2]:
        out.append(f"kubeadm version {kubeadm} can only be used to upgrade to Kubernetes version"
                   f" {minor_of(kubeadm)}")
    elif t > k:
        out.append(f'specified version to upgrade to "{target}" is higher than the kubeadm '
                   f'version "{kubeadm}": upgrade kubeadm first')
    if t < c:
        out.append(f'specified version "{target}" is lower than the cluster version '
                   f'"{current}": the stand-in refuses downgrades')
    if t[0] != c[0] or t[1] > c[1] + 1:
        out.append(f'specified version to upgrade to "{target}" is too high; kubeadm can '
                   f'upgrade only 1 minor version at a time (cluster at "{current}")')
    return out


# -- kubeadm upgrade ----------------------------------------------------------------------------


def kubeadm_upgrade(tool: Tool, argv: list[str], rest: list[str]) -> int:
    try:
        sub, args = (rest[0], rest[1:]) if rest else ("", [])
        if sub not in ("plan", "apply", "node"):
            raise Failed(f'unknown command "{sub}" for "kubeadm upgrade" (the stand-in '
                         "implements plan, apply, node)")
        flags = {a for a in args if a.startswith("-")}
        words = [a for a in args if not a.startswith("-")]
        allowed = {"plan": set(), "apply": {"--yes", "-y"}, "node": set()}[sub]
        unknown = flags - allowed
        if unknown:
            raise Failed(f"unknown flag: {sorted(unknown)[0]}")
        if sub == "node":
            if words:
                raise Failed("kubeadm upgrade node takes no arguments")
            upgrade_node(tool)
        else:
            if sub == "apply" and not words:
                raise Failed("missing one or more required arguments: [version]")
            if len(words) > 1:
                raise Failed(f"unexpected arguments: {words[1:]}")
            target = words[0] if words else tool.version
            if sub == "apply" and not flags & {"--yes", "-y"}:
                raise Failed("the stand-in cannot ask for confirmation: pass --yes")
            apply_or_plan(tool, target, apply=sub == "apply")
    except Failed as e:
        tool.record(argv, "error: " + str(e).splitlines()[0])
        raise
    tool.record(argv, "ok")
    return 0


def local_control_plane(tool: Tool) -> dict:
    s = state.load(tool, state.KUBEADM_STATE)
    if not s:
        raise Failed("couldn't create a Kubernetes client from file "
                     "\"/etc/kubernetes/admin.conf\": this node never ran kubeadm init/join "
                     f"(stand-in: no {state.KUBEADM_STATE})")
    return s


def control_plane_version(s: dict, tool: Tool) -> str:
    return str(s.get("version") or tool.version)


def apply_or_plan(tool: Tool, target: str, apply: bool) -> None:
    s = local_control_plane(tool)
    view = state.kubeadm_view(tool)
    if s.get("role") != "control-plane" or not view["api_up"]:
        raise Failed("[upgrade/init config] FATAL: the API server of this node does not answer "
                     "(stand-in: upgrade apply/plan runs on a working control plane)")
    current = control_plane_version(s, tool)
    problems = policy(tool.version, current, target)
    kubelet = running_kubelet(tool)
    if kubelet and parse(target)[1] - parse(kubelet)[1] > KUBELET_MAX_OLDER:
        problems.append(f"there are kubelets in this cluster that are too old: {kubelet}")
    if problems:
        raise Failed("[upgrade/version] FATAL: " + "; ".join(problems))
    if not apply:
        tool.say(f"Upgrade to the latest version in the {minor_of(target)} series:\n"
                 f"COMPONENT           NODE      CURRENT   TARGET\n"
                 f"kube-apiserver      {s.get('node')}  {current}  {target}\n"
                 f"You can now apply the upgrade by executing: kubeadm upgrade apply {target}")
        return
    move_control_plane(tool, s, target)
    tool.say(f'[upgrade] SUCCESS! A control plane of version "{target}" is in place (stand-in: '
             "manifests rewritten, nothing runs). Now upgrade your kubelets.")


def move_control_plane(tool: Tool, s: dict, target: str) -> None:
    from . import kubeadm

    names = kubeadm.control_plane_manifests(s.get("etcd") == "stacked")
    kubeadm.write_files(tool, kubeadm.manifest_files(names, target, etcd_servers(tool)))
    kubelet_config(tool)
    s["version"] = target
    s.setdefault("upgrades", []).append({"to": target, "time": time.time()})
    state.save(tool, state.KUBEADM_STATE, s)


def etcd_servers(tool: Tool) -> list[str] | None:
    """The API server's --etcd-servers as its manifest has it (real kubeadm takes them from the
    cluster's ClusterConfiguration, which remove-node keeps equal to the manifest)."""
    import yaml

    from .kubeadm import MANIFESTS

    p = tool.path(f"{MANIFESTS}/kube-apiserver.yaml")
    if not p.is_file():
        return None
    pod = yaml.safe_load(p.read_text()) or {}
    for c in pod.get("spec", {}).get("containers", []):
        for arg in c.get("command") or []:
            if arg.startswith("--etcd-servers="):
                return arg.split("=", 1)[1].split(",")
    return None


def kubelet_config(tool: Tool) -> None:
    """kubeadm upgrade rewrites /var/lib/kubelet/config.yaml from the cluster's kubelet-config
    (the stand-in keeps the node's own document and notes the kubeadm that wrote it)."""
    p = tool.path("/var/lib/kubelet/config.yaml")
    if not p.exists():
        raise Failed("[upgrade/kubelet-config] open /var/lib/kubelet/config.yaml: no such file")
    lines = [ln for ln in p.read_text().splitlines() if not ln.startswith("# upgraded by")]
    lines.insert(1, f"# upgraded by stand-in kubeadm {tool.version}")
    tool.write("/var/lib/kubelet/config.yaml", "\n".join(lines) + "\n", 0o644)


def upgrade_node(tool: Tool) -> None:
    s = local_control_plane(tool)
    if s.get("role") == "control-plane":
        current = control_plane_version(s, tool)
        problems = policy(tool.version, current, tool.version)
        if problems:
            raise Failed("[upgrade/version] FATAL: " + "; ".join(problems))
        if current != tool.version:
            move_control_plane(tool, s, tool.version)
        else:
            kubelet_config(tool)
        tool.say(f"[upgrade] control plane of this node at {tool.version} (stand-in)")
    else:
        kubelet_config(tool)
        s.setdefault("upgrades", []).append({"to": tool.version, "time": time.time()})
        state.save(tool, state.KUBEADM_STATE, s)
        tool.say("[upgrade] the configuration for this node was successfully upgraded "
                 "(stand-in)")


# -- the running kubelet --------------------------------------------------------------------------


def running_kubelet(tool: Tool) -> str | None:
    return state.load(tool, KUBELET_STATUS).get("version")


def kubelet_started(tool: Tool) -> None:
    """The kubelet stand-in calls this when it starts: check the skew against the local API
    server (control planes), then say which version runs."""
    s = state.load(tool, state.KUBEADM_STATE)
    if s.get("role") == "control-plane" and s.get("version"):
        api = s["version"]
        if parse(tool.version)[:2] > parse(api)[:2]:
            raise Failed(f"version skew: kubelet {tool.version} must not be newer than "
                         f"kube-apiserver {api} (stand-in check of the skew policy)")
    state.save(tool, KUBELET_STATUS, {"version": tool.version, "started": time.time(),
                                      "tool": "stand-in kubelet (TEST-ONLY)"})


def node_kubelet_version(tool: Tool, view: dict, name: str) -> str:
    """.status.nodeInfo.kubeletVersion of the local node."""
    if name != view["node"] or not view["registered"]:
        raise Failed(f'Error from server (NotFound): nodes "{name}" not found')
    if tool.name == "k3s":  # the k3s that last started here, not the binary on disk
        return str(state.load(tool, state.K3S_STATE).get("version") or "")
    return running_kubelet(tool) or ""


def raw_version(tool: Tool) -> str:
    """`get --raw /version` of this node's API server."""
    if tool.name == "k3s":  # the API server of the k3s that runs here
        v = str(state.load(tool, state.K3S_STATE).get("version") or tool.version)
    else:
        v = control_plane_version(state.load(tool, state.KUBEADM_STATE), tool)
    major, minor, _ = parse(v)
    return json.dumps({"major": str(major), "minor": str(minor), "gitVersion": v,
                       "platform": "linux/amd64", "standIn": "TEST-ONLY"})
