"""Phase stop-api (action cluster.restore, before the etcd members are restored): no API server
may write to etcd, or serve from its cache, while etcd's data is replaced. kubeadm: the
kube-apiserver static pod manifest is moved aside (out of the folder the kubelet watches, to
/etc/kubernetes/provisioner-restore/) and the kubelet stops the pod; k3s: k3s stops (its
embedded etcd member with it). Only while some member is not yet healthy in the restored
cluster; phase start-api puts things back. Over the run's SSH connections, no playbook."""

from __future__ import annotations

from .. import etcd
from ..errors import UserError
from .base import Phase

WAIT = 90  # seconds for the kubelet to stop the pod

STOP_KUBEADM = f"""set -eu
mkdir -p {etcd.ASIDE_DIR} && chmod 0700 {etcd.ASIDE_DIR}
if [ -f {etcd.APISERVER_MANIFEST} ]; then
  mv {etcd.APISERVER_MANIFEST} {etcd.ASIDE_DIR}/kube-apiserver.yaml
fi
# wait until the kubelet stopped the pod, where crictl can tell (a runtime answers)
if crictl ps -q --name '^kube-apiserver$' >/dev/null 2>&1; then
  for _ in $(seq 1 {WAIT}); do
    [ -z "$(crictl ps -q --name '^kube-apiserver$')" ] && exit 0
    sleep 1
  done
  echo "the kube-apiserver container still runs {WAIT} s after its manifest was moved aside" >&2
  exit 1
fi
"""


class StopApi(Phase):
    title = "stop-api"

    def hosts(self, c):
        return c.control_planes

    def probes(self, c, node):
        return {"paths": [etcd.APISERVER_MANIFEST]}

    def checks(self, ctx, node):
        if not etcd.restore_pending(ctx):
            return
        if ctx.cluster.is_k3s:
            if ctx.facts[node.name].services.get("k3s", {}).get("active") in (
                    "active", "activating"):
                yield "stop k3s (its API server and embedded etcd member)"
        elif ctx.has_file(node, etcd.APISERVER_MANIFEST):
            yield (f"move {etcd.APISERVER_MANIFEST} aside to {etcd.ASIDE_DIR}/ (the kubelet "
                   "stops the API server)")

    def run(self, run, nodes):
        script = "systemctl stop k3s" if run.cluster.is_k3s else STOP_KUBEADM
        for n in nodes:
            run._step(n.name, self.title, "stop the API server")
        results = run.pool.run(script, hosts=[n.name for n in nodes], timeout=WAIT + 60)
        bad = {h: (r.error or r.stderr.strip())[-300:] for h, r in results.items() if r.rc != 0}
        run.probe([n.name for n in nodes])
        if bad:
            raise UserError("could not stop the API servers (nothing was restored yet; fix "
                            "and rerun cluster.restore):\n" + "\n".join(
                                f"  {h}: {why}" for h, why in sorted(bad.items())))


PHASE = StopApi()
