"""What a stand-in node remembers about itself: step state, the fault switch, unit activity.

TEST-ONLY. There is no API server anywhere: kubectl answers from these files, about the local
node only.

- /var/lib/standin/kubeadm-state.json: written by kubeadm init/join (node name, role, external
  or stacked etcd, the steps done per command, the step a command last failed at). kubeadm
  reset removes it.
- /var/lib/rancher/k3s/standin/k3s-state.json: written by k3s server/agent (node name, role,
  steps of the current run, whether the node ever registered). It lives under k3s' data dir, so
  removing /var/lib/rancher (the provisioner's reset) forgets it like the node itself.
- /var/lib/standin/kubectl-records.json (kubeadm nodes) and
  /var/lib/rancher/k3s/standin/kubectl-records.json (k3s nodes): labels and taints recorded by
  `kubectl label` / `kubectl taint`, per node name.
- /etc/standin/faults: the fault switch, one planned failure a line (`kubeadm init STEP`,
  `kubeadm join STEP`, `k3s server STEP`, `k3s agent STEP`). A tool reaching that step removes
  the line (the fault fires once) and fails there.
- Units: `systemctl is-active --quiet UNIT` on a node; with STANDIN_ROOT (local tests) the file
  $STANDIN_ROOT/run/standin/active/UNIT stands for an active unit. There the stand-ins create and
  remove it where systemd would start and stop the unit, and tests may toggle it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from . import Tool

KUBEADM_STATE = "/var/lib/standin/kubeadm-state.json"
K3S_DIR = "/var/lib/rancher/k3s/standin"
K3S_STATE = f"{K3S_DIR}/k3s-state.json"
FAULTS = "/etc/standin/faults"
APISERVER_MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
ACTIVE = "/run/standin/active"


def load(tool: Tool, path: str) -> dict:
    p = tool.path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(tool: Tool, path: str, data: dict) -> None:
    tool.write(path, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o600)


def records_path(tool: Tool) -> str:
    return f"{K3S_DIR}/kubectl-records.json" if tool.name == "k3s" else \
        "/var/lib/standin/kubectl-records.json"


# -- the fault switch ----------------------------------------------------------------------------


def take_fault(tool: Tool, command: str, names: tuple[str, ...]) -> str | None:
    """If /etc/standin/faults plans a failure of `command` (e.g. "kubeadm init") at one of
    `names`, remove that line (only the first match: the fault fires once) and return it."""
    p = tool.path(FAULTS)
    try:
        lines = p.read_text().splitlines()
    except OSError:
        return None
    wanted = {f"{command} {n}" for n in names}
    for i, line in enumerate(lines):
        if " ".join(line.split()) in wanted:
            rest = lines[:i] + lines[i + 1:]
            mode = p.stat().st_mode & 0o777
            tool.write(FAULTS, "".join(f"{x}\n" for x in rest), mode)
            return " ".join(line.split())
    return None


# -- units ---------------------------------------------------------------------------------------


def unit_active(tool: Tool, unit: str) -> bool:
    if tool.root:
        return tool.path(f"{ACTIVE}/{unit}").exists()
    if not shutil.which("systemctl"):
        return False
    return subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode == 0


def mark_unit(tool: Tool, unit: str, active: bool) -> None:
    """Under STANDIN_ROOT only: what systemd would show after starting/stopping the unit."""
    if not tool.root:
        return
    p = tool.path(f"{ACTIVE}/{unit}")
    if active:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("active (stand-in: no systemd here)\n")
    else:
        p.unlink(missing_ok=True)


# -- what the local node looks like from its API -------------------------------------------------


def kubeadm_view(tool: Tool) -> dict:
    """The local node as kubectl would see it, from kubeadm's step state and the kubelet unit.

    - api_up: this node's own API server answers. init: wait-control-plane passed. A
      control-plane join: its static pods run once kubelet-start has started the kubelet (and,
      with stacked etcd, etcd-join has added the local member), unless the join failed while
      waiting for them (wait-control-plane). In both cases the kubelet unit must be active,
      and the kube-apiserver static pod manifest must be in /etc/kubernetes/manifests (moved
      away, e.g. by cluster.restore, the kubelet stops the pod).
    - reachable: an API answers the kubeconfigs of this node. The init node: its own API. A
      joined node: the cluster it joined (assumed up: the stand-in knows only this node).
    - registered: init: kubelet-start done and the API up; join: kubelet-start done (the
      kubelet's TLS bootstrap happens inside kubelet-start in v1.32).
    """
    s = load(tool, KUBEADM_STATE)
    steps = s.get("steps") or {}
    init, join = set(steps.get("init", [])), set(steps.get("join", []))
    phases = set(steps.get("init phase", []))
    done = init | join | phases
    kubelet = unit_active(tool, "kubelet")
    pod = tool.path(APISERVER_MANIFEST).exists()
    stacked = s.get("etcd") == "stacked"
    control_plane = s.get("role") == "control-plane"
    if "init" in steps:
        api_up = "wait-control-plane" in init and kubelet and pod
        reachable = api_up
        registered = "kubelet-start" in init and api_up
        etcd_member = stacked and "etcd" in init
    elif "join" in steps:
        api_up = (control_plane and kubelet and pod and "kubelet-start" in join
                  and ("etcd-join" in join or not stacked)
                  and (s.get("failed") or {}).get("join") != "wait-control-plane")
        reachable = True
        registered = "kubelet-start" in join
        etcd_member = stacked and "etcd-join" in join
    else:
        api_up = reachable = registered = etcd_member = False
    if control_plane and not tool.path("/etc/kubernetes/manifests/kube-apiserver.yaml").exists():
        api_up = False  # its static pod manifest moved aside: the kubelet stopped the API server
    marked = control_plane and ("mark-control-plane" in done or "control-plane-join" in join)
    # nodeRegistration.taints: a control plane gets them from mark-control-plane, a worker's
    # kubelet registers with them
    taints = (s.get("taints") or []) if (marked or (registered and not control_plane)) else []
    # cluster-wide objects: a node's join discovery read cluster-info, and the provisioner joins
    # only a cluster whose init finished (addons in place), so a joined node sees both too
    joined = "preflight" in join
    return {"node": s.get("node"), "control_plane": control_plane, "api_up": api_up,
            "reachable": reachable, "registered": registered, "etcd_member": etcd_member,
            "marked": marked, "cluster_info": "bootstrap-token" in done or joined,
            "addons": "addon" in done or joined, "labels": s.get("labels") or {},
            "taints": taints}


def k3s_view(tool: Tool) -> dict:
    """The local k3s node: its unit (k3s for a server, k3s-agent for an agent) must be active
    for anything to answer (the server's API, or the agent's local load balancer)."""
    s = load(tool, K3S_STATE)
    role = s.get("role")
    unit = {"server": "k3s", "agent": "k3s-agent"}.get(role)
    active = bool(unit) and unit_active(tool, unit)
    labels = {"node-role.kubernetes.io/control-plane": "true",
              "node-role.kubernetes.io/master": "true"} if role == "server" else {}
    if role == "server" and s.get("etcd"):
        labels["node-role.kubernetes.io/etcd"] = "true"
    return {"node": s.get("node"), "control_plane": role == "server",
            "api_up": role == "server" and active, "reachable": active,
            "registered": bool(s.get("registered")), "etcd_member": False, "marked": False,
            "cluster_info": False, "addons": False, "labels": labels, "taints": []}


def node_view(tool: Tool) -> dict:
    return k3s_view(tool) if tool.name == "k3s" else kubeadm_view(tool)


def hostname() -> str:
    return os.uname().nodename.split(".")[0].lower()
