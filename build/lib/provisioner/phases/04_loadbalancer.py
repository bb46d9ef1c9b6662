"""Phase loadbalancer ↔ playbooks/04-loadbalancer.yml: the API behind one endpoint. haproxy +
keepalived on the load balancer pair (ha_mode haproxy), a 127.0.0.1 haproxy on each kube worker
(local), or kube-vip's static pod on the control planes (kube-vip)."""

from __future__ import annotations

from .. import paths
from ..render import template
from .base import Item, Phase, service_running

KUBE_VIP = "etc/kubernetes/manifests/kube-vip.yaml.j2"


class LoadBalancer(Phase):
    title = "loadbalancer"
    playbook = "04-loadbalancer.yml"

    def hosts(self, c):
        return c.lb_nodes

    def files(self, ctx, node):
        c, s = ctx.cluster, ctx.secrets
        if "haproxy" in c.lb_units:
            yield Item("/etc/haproxy/haproxy.cfg", template("etc/haproxy/haproxy.cfg.j2", c, node, s),
                       units=("haproxy",))
        if "keepalived" in c.lb_units:
            yield Item("/etc/keepalived/keepalived.conf",
                       template("etc/keepalived/keepalived.conf.j2", c, node, s), 0o600,
                       units=("keepalived",))
        if c.ha_mode == "kube-vip":
            where = ("/var/lib/rancher/k3s/agent/pod-manifests" if c.is_k3s else paths.MANIFESTS)
            yield Item(f"{where}/kube-vip.yaml", template(KUBE_VIP, c, node, s))

    def checks(self, ctx, node):
        return service_running(ctx, node, *ctx.cluster.lb_units)

    def hostvars(self, ctx, node):
        return {"units": list(ctx.cluster.lb_units)}


PHASE = LoadBalancer()
