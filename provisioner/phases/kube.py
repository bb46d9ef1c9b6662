"""What the kube phases (06 control-plane, 07 join-control-plane, 08 join-workers) share: where a
node's Kubernetes stands, read from the end state through kubectl on the node itself, never from
a file kubeadm writes on the way.

    new        nothing of an install on the node: init / join
    partial    leftovers of an install that never finished (no stamp): reset, then init / join
    finish     kubeadm init whose API answers but whose later steps are missing: run them
    broken     built before (stamp) but not answering: refused, never reset
    done       registered (and, for control planes, its API server answers)
"""

from __future__ import annotations

import json

from .. import paths
from ..errors import UserError
from ..render import template
from .base import Context, Item, Phase, kubectl

API, LABELS, NODE, CLUSTER_INFO, ADDONS, ETCD = ("api", "labels", "node", "cluster-info",
                                                "addons", "stacked-etcd")
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
LEFTOVERS = (paths.ADMIN_CONF, paths.KUBELET_CONF, f"{paths.MANIFESTS}/kube-apiserver.yaml")


def pki_files(ctx: Context, node):
    """The cluster CA (and, with external etcd, the API server's etcd client) for a control
    plane: kubeadm finds them in /etc/kubernetes/pki and signs the rest itself."""
    for path, (data, mode) in sorted(ctx.pki.get(node.name, {}).items()):
        if path.startswith(paths.KUBE_PKI + "/"):
            yield Item(path, data, mode)


def probes(c, node, first: bool) -> dict:
    """End-state commands each kube node answers about itself."""
    name = node.name
    if c.is_k3s:
        conf = None if node.has("control_plane") else paths.K3S_AGENT_CONF
        return {"commands": {NODE: kubectl(c, "get", "node", name, "-o", "name",
                                           kubeconfig=conf)}}
    if not node.has("control_plane"):
        return {"paths": list(LEFTOVERS), "commands": {
            NODE: kubectl(c, "get", "node", name, "-o", "name", kubeconfig=paths.KUBELET_CONF)}}
    server = [] if first else ["--server", f"https://{node.address}:{c.api_port}"]
    cmds = {API: kubectl(c, *server, "get", "--raw", "/readyz"),
            LABELS: kubectl(c, "get", "node", name, "-o", "jsonpath={.metadata.labels}")}
    if first:
        cmds[CLUSTER_INFO] = kubectl(c, "-n", "kube-public", "get", "configmap", "cluster-info",
                                     "-o", "name")
        cmds[ADDONS] = kubectl(c, "-n", "kube-system", "get", "daemonset/kube-proxy",
                               "deployment/coredns", "-o", "name")
    elif not c.external_etcd:
        cmds[ETCD] = kubectl(c, "-n", "kube-system", "get", "pod", f"etcd-{name}", "-o", "name")
    return {"paths": list(LEFTOVERS), "commands": cmds}


def missing(ctx: Context, node, first: bool) -> list[str]:
    """kubeadm steps whose result is not in the cluster yet (empty: done)."""
    c = ctx.cluster
    if c.is_k3s or not node.has("control_plane"):
        return [] if ctx.ok(node, NODE) else ["registration"]
    if not ctx.ok(node, API):
        return ["api"]
    out = []
    labels = ctx.command(node, LABELS)
    try:
        have = json.loads(labels.get("out") or "{}") if labels.get("rc") == 0 else None
    except ValueError:
        have = None
    if have is None:
        out.append("registration")
    elif CONTROL_PLANE_LABEL not in have:
        out.append("mark-control-plane")
    if first:
        if not ctx.ok(node, CLUSTER_INFO):
            out.append("bootstrap-token")
        if not ctx.ok(node, ADDONS):
            out.append("addon")
    elif not c.external_etcd and not ctx.ok(node, ETCD):
        out.append("etcd-join")
    return out


def state(phase: Phase, ctx: Context, node, first: bool) -> tuple[str, list[str]]:
    gaps = missing(ctx, node, first)
    if not gaps:
        return "done", []
    if ctx.cluster.is_k3s:
        return "new", gaps
    if first and "api" not in gaps:
        return "finish", gaps
    if phase.completed_once(ctx, node):
        return "broken", gaps
    if any(ctx.has_file(node, p) for p in LEFTOVERS):
        return "partial", gaps
    return "new", gaps


def describe(c, verb: str, state_: str, gaps: list[str]) -> str:
    """The plan's words for a kube phase's work on a node in `state_`."""
    if c.is_k3s:
        return f"start {verb} and wait until the node is registered"
    if state_ == "broken":
        what = "its API server does not answer" if "api" in gaps else "is not registered"
        return (f"refused: this node was built before but {what} ({', '.join(gaps)} missing); "
                f"not running kubeadm {verb} again on it (look at its kubelet: cluster.status; "
                "or take it out with cluster.reset)")
    return {"new": f"kubeadm {verb}",
            "partial": f"kubeadm reset, then kubeadm {verb} again (an earlier {verb} stopped "
                       "before it finished)",
            "finish": f"finish kubeadm {verb}: {', '.join(gaps)}"}[state_]


class Join(Phase):
    """A node joins the cluster the first control plane started (kubeadm join, or k3s server /
    agent with the cluster token). Done means the node is registered (control planes: also
    their API server answers and, stacked, their etcd member runs)."""

    needs_bundle = True

    def files(self, ctx, node):
        c, s = ctx.cluster, ctx.secrets
        if c.is_k3s:
            unit = "k3s" if node.has("control_plane") else "k3s-agent"
            yield Item(paths.K3S_CONFIG, template("etc/rancher/k3s/config.yaml.j2", c, node, s),
                       0o600, units=(unit,))
            return
        if s.get("ca_cert_hash"):  # joins pin the cluster CA; without it there is no join file
            yield Item(paths.KUBEADM_JOIN,
                       template("etc/kubernetes/kubeadm-join.yaml.j2", c, node, s), 0o600)
        if node.has("control_plane"):
            yield from pki_files(ctx, node)

    def probes(self, c, node):
        return probes(c, node, first=False)

    def state(self, ctx, node):
        return state(self, ctx, node, first=False)

    def checks(self, ctx, node):
        st, gaps = self.state(ctx, node)
        if st != "done":
            role = "server" if node.has("control_plane") else "agent"
            yield describe(ctx.cluster, f"k3s {role}" if ctx.cluster.is_k3s else "join", st,
                           gaps)

    def hostvars(self, ctx, node):
        return {"kube_state": self.state(ctx, node)[0]}

    def run(self, run, nodes):
        joining = []
        for n in nodes:
            st, gaps = self.state(run.ctx, n)
            if st == "broken":
                raise UserError(f"{n.name}: " + describe(run.cluster, "join", st, gaps))
            if st != "done":
                joining.append(n)
        if joining and not run.cluster.is_k3s:
            run.renew_join_secrets(upload_certs=any(n.has("control_plane") for n in joining))
        run.converge(self, nodes)
