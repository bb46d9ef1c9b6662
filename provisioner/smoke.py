"""`cluster.smoke`: prove a real cluster works end to end, from its first control plane.

A pod on every schedulable node (a DaemonSet of busybox httpd serving its own name), a
Service in front of them, a DNS lookup of that Service through CoreDNS, and traffic from every
pod to every other pod, across nodes. Everything lives in one namespace, deleted at the end.
"""

from __future__ import annotations

import json
import shlex

from . import images, versions
from .errors import UserError
from .model import Cluster

NAMESPACE = "provisioner-smoke"
# the bundle's smoke image (images.needed lists it for every node; imported by phase images)
IMAGE = versions.SMOKE

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: smoke, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: smoke}}}}
  template:
    metadata: {{labels: {{app: smoke}}}}
    spec:
      containers:
      - name: httpd
        image: {image}
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: smoke, namespace: {ns}}}
spec:
  selector: {{app: smoke}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def manifest(cluster: Cluster) -> str:
    """The smoke workload, its image named as the cluster names it (image_repository)."""
    return MANIFEST.format(ns=NAMESPACE, image=images.rename(cluster, IMAGE))


def kubectl(cluster: Cluster) -> str:
    if cluster.is_k3s:
        return "k3s kubectl"
    return "kubectl --kubeconfig /etc/kubernetes/admin.conf"


def run(cluster: Cluster, pool, say=print) -> None:
    """Raise UserError naming the first check that fails; print one line per check passed."""
    host = cluster.first_control_plane.name
    k = kubectl(cluster)

    def sh(cmd: str, what: str, stdin: bytes | None = None) -> str:
        r = pool.run(cmd, hosts=[host], stdin=stdin)[host]
        if r.rc != 0:
            raise UserError(f"smoke: {what} failed on {host}: {(r.stderr or r.stdout).strip()[-400:]}")
        return r.stdout

    # the node list first: only a real API server can answer it (the test-only stand-ins
    # answer a readiness probe about their own node, never this)
    nodes = json.loads(sh(f"{k} get nodes -o json", "listing nodes"))["items"]
    sh(f"{k} get --raw /readyz", "the API server readiness check")
    say("ok  API server ready")
    not_ready = [n["metadata"]["name"] for n in nodes if not any(
        c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])]
    if not_ready or len(nodes) < len(cluster.kube_nodes):
        raise UserError(f"smoke: nodes not ready or missing: {not_ready or 'some nodes absent'}")
    say(f"ok  {len(nodes)} nodes Ready")
    try:
        sh(f"{k} apply -f -", "creating the smoke workload", stdin=manifest(cluster).encode())
        sh(f"{k} -n {NAMESPACE} rollout status ds/smoke --timeout 300s", "the smoke DaemonSet")
        pods = json.loads(sh(f"{k} -n {NAMESPACE} get pods -o json", "listing pods"))["items"]
        say(f"ok  a pod on each of {len({p['spec']['nodeName'] for p in pods})} nodes")
        svc = f"smoke.{NAMESPACE}.svc.{cluster.cluster_domain}"
        for p in pods:
            name = p["metadata"]["name"]
            sh(f"{k} -n {NAMESPACE} exec {name} -- nslookup {svc}", f"DNS lookup from {name}")
            sh(f"{k} -n {NAMESPACE} exec {name} -- wget -qO- -T 5 http://{svc}/",
               f"Service traffic from {name}")
            for q in pods:
                if q is not p:
                    ip = shlex.quote(q["status"]["podIP"])
                    sh(f"{k} -n {NAMESPACE} exec {name} -- wget -qO- -T 5 http://{ip}:8080/",
                       f"pod traffic {name} -> {q['metadata']['name']} ({q['spec']['nodeName']})")
        say("ok  DNS through CoreDNS, Service and pod-to-pod traffic across nodes")
    finally:
        pool.run(f"{k} delete namespace {NAMESPACE} --wait=false", hosts=[host])
