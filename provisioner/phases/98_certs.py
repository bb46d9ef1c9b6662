"""Phase certs (day 2, `invoke cluster.certs --renew`) ↔ playbooks/98-certs.yml, on each kubeadm
control plane, one at a time (the others keep serving the API): the API servers' etcd client
certificate re-issued by the controller is pushed; the control plane's static pods are stopped
by moving their manifests aside (what the kubeadm docs recommend: the kubelet stops a static pod
whose manifest is gone), `kubeadm certs renew all` runs, the manifests move back and the node's
API server must answer again before the next control plane.

Read from the end state: `kubeadm certs check-expiration` (its table, parsed by
provisioner.certs) says whether every kubeadm certificate was renewed since the renewal began
(not-after at least that time plus kubeadm's one-year validity), and the manifests-aside folder
says whether a run stopped with the components down. Because the components are stopped before
the renewal, renewed certificates with the manifests in place mean they started with the new
certificates. k3s servers renew their own certificates at start (within 90 days of expiry):
nothing here for them; their certificates are only read (server/tls)."""

from __future__ import annotations

import datetime as dt

from .. import paths
from .base import Item, Phase, kubectl

CHECK = "kubeadm-certs"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
VALIDITY = dt.timedelta(days=365)  # kubeadm's default certificateValidityPeriod (8760h)
K3S_CERTS = tuple(f"{paths.K3S_TLS}/{n}.crt" for n in (
    "client-ca", "server-ca", "request-header-ca", "serving-kube-apiserver", "client-admin",
    "client-auth-proxy", "client-controller", "client-k3s-cloud-controller",
    "client-k3s-controller", "client-kube-apiserver", "client-kube-proxy", "client-scheduler",
    "client-supervisor", "etcd/server-ca", "etcd/peer-ca", "etcd/client",
    "etcd/server-client", "etcd/peer-server-client"))
ETCD_CLIENT = f"{paths.KUBE_PKI}/apiserver-etcd-client.crt"


def aside(name: str) -> str:
    return f"{paths.MANIFESTS_ASIDE}/{name}.yaml"


def renewed_by(since: dt.datetime) -> dt.datetime:
    """The smallest not-after of a certificate kubeadm renewed after `since` (its table shows
    minutes)."""
    return since.replace(second=0, microsecond=0) + VALIDITY


class Certs(Phase):
    title = "certs"
    playbook = "98-certs.yml"
    serial = True

    def hosts(self, c):
        return c.control_planes

    def files(self, ctx, node):
        if ctx.cluster.is_k3s or not ctx.cluster.external_etcd:
            return
        data, mode = ctx.pki.get(node.name, {}).get(ETCD_CLIENT, (None, None))
        if data is not None:
            yield Item(ETCD_CLIENT, data, mode)

    def stamped(self, ctx, node):
        return False  # the end state is read from kubeadm's table and the manifests folder

    def probes(self, c, node):
        if c.is_k3s:
            return {"certs": list(K3S_CERTS)}
        return {"paths": [aside(n) for n in COMPONENTS],
                "certs": [ETCD_CLIENT] if c.external_etcd else [],
                "commands": {CHECK: {"argv": ["kubeadm", "certs", "check-expiration"],
                                     "timeout": 30}}}

    def table(self, ctx, node):
        """(rows, error) of this node's `kubeadm certs check-expiration`."""
        from ..certs import parse_check_expiration

        result = ctx.command(node, CHECK)
        if result.get("rc") != 0:
            return None, (result.get("out") or "").strip()[-300:] or f"exit {result.get('rc')}"
        try:
            return parse_check_expiration(result.get("out") or ""), None
        except ValueError as e:
            return None, str(e)

    def stale(self, ctx, node) -> list:
        """Rows of kubeadm's table not renewed since the renewal began ([] when none began)."""
        renewal = ctx.local.get(RENEWAL)
        rows, error = self.table(ctx, node)
        if not renewal or rows is None:
            return []
        since = dt.datetime.fromisoformat(renewal["since"])
        return [r for r in rows if r.not_after is None or r.not_after < renewed_by(since)]

    def checks(self, ctx, node):
        if ctx.cluster.is_k3s:
            return
        moved = [n for n in COMPONENTS if ctx.has_file(node, aside(n))]
        if ctx.local.get(RENEWAL):
            rows, error = self.table(ctx, node)
            if rows is None:
                yield f"refused: kubeadm certs check-expiration failed here: {error}"
                return
            stale = self.stale(ctx, node)
            if stale:
                yield (f"stop {', '.join(COMPONENTS)} (manifests aside), kubeadm certs renew all"
                       f" ({len(stale)} certificates, e.g. {stale[0].name} expiring "
                       f"{stale[0].expires_text}), start them again")
                return
        if moved:
            yield (f"move {', '.join(moved)} back to {paths.MANIFESTS} (an earlier renewal "
                   "stopped with them aside)")

    def hostvars(self, ctx, node):
        return {"renew_certs": bool(self.stale(ctx, node)), "components": list(COMPONENTS),
                "api_server": f"https://{node.address}:{ctx.cluster.api_port}",
                "readyz": kubectl(ctx.cluster, "--server",
                                  f"https://{node.address}:{ctx.cluster.api_port}",
                                  "get", "--raw", "/readyz")}

    def run(self, run, nodes):
        from ..errors import UserError

        for n in nodes:
            rows, error = self.table(run.ctx, n)
            if run.ctx.local.get(RENEWAL) and rows is None:
                raise UserError(f"{n.name}: kubeadm certs check-expiration failed: {error}; "
                                "nothing renewed on the control planes (is the cluster built?)")
        before = {n.name: dict(run.ctx.facts[n.name].files) for n in nodes}
        run.converge(self, nodes)
        self.restamp_kube_phases(run, nodes, before)

    def restamp_kube_phases(self, run, nodes, before):
        """The control-plane / join-control-plane stamps list the API server's etcd client
        certificate: this phase applied the new one (the components restarted with it), so
        their stamps are renewed, only where they matched the old certificate exactly."""
        import hashlib

        from .. import phases as ph

        fresh = {}
        for n in nodes:
            old, new = before[n.name].get(ETCD_CLIENT), run.ctx.facts[n.name].files.get(
                ETCD_CLIENT)
            if not old or old == new:
                continue
            for phase in (ph.CONTROL_PLANE, ph.JOIN_CONTROL_PLANE):
                if n not in phase.hosts(run.cluster):
                    continue
                text = phase.stamp(run.ctx, n)
                was = text.replace(f"{new}  {ETCD_CLIENT}".encode(), f"{old}  {ETCD_CLIENT}".encode())
                recorded = before[n.name].get(phase.stamp_path)
                if recorded == hashlib.sha256(was).hexdigest() != hashlib.sha256(text).hexdigest():
                    fresh.setdefault(n.name, {})[phase.stamp_path] = (text, 0o644)
        if fresh:
            errors = run._put(fresh)
            if errors:
                from ..actions import PhaseFailed

                raise PhaseFailed("could not renew the kube phases' stamps: " + "; ".join(
                    f"{h}: {e}" for h, e in errors.items()))
            run.probe(list(fresh))


RENEWAL = "certs_renewal"  # ctx.local key set by provisioner.certs (see 98_etcd_certs.py)
PHASE = Certs()
