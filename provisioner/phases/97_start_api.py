"""Phase start-api (action cluster.restore, after every etcd member is healthy in the restored
cluster): the API servers start again. kubeadm: the kube-apiserver manifest that phase stop-api
put aside goes back into /etc/kubernetes/manifests (then, where the kubelet runs, wait until
the API answers on this node); k3s: k3s starts, the first server first, then the others one at
a time. From the end state only: a manifest aside and none in place, or k3s not running. Over
SSH, no playbook."""

from __future__ import annotations

from .. import etcd, paths
from ..errors import UserError
from .base import Phase, kubectl

WAIT = 180  # seconds for an API server to answer after its pod (or k3s) started
ASIDE = f"{etcd.ASIDE_DIR}/kube-apiserver.yaml"


def start_script(c, node) -> str:
    if c.is_k3s:  # the unit restarts k3s on its own (Restart=always, RestartSec=5s)
        return f"""systemctl start k3s && exit 0
for _ in $(seq 1 {WAIT // 2}); do systemctl is-active -q k3s && exit 0; sleep 2; done
echo "k3s is not running {WAIT} s after its start failed; its journal ends:" >&2
journalctl -u k3s -n 8 --no-pager -o cat >&2
exit 1
"""
    ready = " ".join(kubectl(c, "--server", f"https://{node.address}:{c.api_port}",
                             "get", "--raw", "/readyz"))
    return f"""set -eu
if [ -f {ASIDE} ] && [ ! -f {etcd.APISERVER_MANIFEST} ]; then
  mv {ASIDE} {etcd.APISERVER_MANIFEST}
fi
# the kubelet starts the pod; where it runs, wait until this API server answers
if systemctl is-active -q kubelet && [ -f {paths.ADMIN_CONF} ]; then
  for _ in $(seq 1 {WAIT // 2}); do
    {ready} >/dev/null 2>&1 && exit 0
    sleep 2
  done
  echo "the API server does not answer {WAIT} s after its manifest was put back" >&2
  exit 1
fi
"""


class StartApi(Phase):
    title = "start-api"

    def hosts(self, c):
        return c.control_planes

    def probes(self, c, node):
        return {"paths": [etcd.APISERVER_MANIFEST, ASIDE]}

    def checks(self, ctx, node):
        if ctx.cluster.is_k3s:
            if ctx.local.get("restore") and not ctx.facts[node.name].active("k3s"):
                yield "start k3s"
        elif ctx.has_file(node, ASIDE) and not ctx.has_file(node, etcd.APISERVER_MANIFEST):
            yield f"move kube-apiserver.yaml back into {paths.MANIFESTS} (the API server starts)"

    def run(self, run, nodes):
        c = run.cluster
        first = [n for n in nodes if n == c.first_control_plane]
        rest = [n for n in nodes if n not in first]
        # k3s: the first server (restored) first, then the others rejoin it one at a time
        batches = [first] + ([[n] for n in rest] if c.is_k3s else [rest])
        bad = {}
        for batch in batches:
            if not batch:
                continue
            for n in batch:
                run._step(n.name, self.title, "start the API server")
            results = run.pool.run({n.name: start_script(c, n) for n in batch},
                                   hosts=[n.name for n in batch], timeout=WAIT + 60)
            bad.update({h: (r.error or r.stderr.strip())[-300:] for h, r in results.items()
                        if r.rc != 0})
        run.probe([n.name for n in nodes])
        if bad:
            raise UserError("etcd is restored, but API servers did not start again (rerun "
                            "cluster.restore to retry):\n" + "\n".join(
                                f"  {h}: {why}" for h, why in sorted(bad.items())))


PHASE = StartApi()
