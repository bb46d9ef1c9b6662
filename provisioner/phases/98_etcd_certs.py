"""Phase reissue-etcd-certs (day 2, `invoke cluster.certs --renew`; on the controller, no
playbook): the etcd certificates we issue are signed again by the controller's etcd CA, with
new serials and validity but the same subject, SANs, usages and key (provisioner.pki.renew_cert).
Phase 03 etcd then pushes them and restarts the members one at a time, each healthy over TLS
before the next; 98 certs pushes the API servers' etcd client certificate.

Done means: the controller's certificate no longer has the serial it had when the renewal
started (recorded in state/<cluster>/certs-renew.json, so a rerun after a failure re-issues
nothing twice). The shared client certificates (healthcheck-client, apiserver-etcd-client) are
this phase's work on the first member."""

from __future__ import annotations

from .. import paths, pki
from .base import Phase

RENEWAL = "certs_renewal"  # ctx.local key: {"since": ISO time, "serials": {name: hex serial}}


def serial(state_pki, name: str) -> str | None:
    from cryptography import x509

    crt = state_pki / "etcd" / f"{name}.crt"
    if not crt.exists():
        return None
    return format(x509.load_pem_x509_certificate(crt.read_bytes()).serial_number, "x")


class ReissueEtcdCerts(Phase):
    title = "reissue-etcd-certs"

    def hosts(self, c):
        return c.etcd_members

    def probes(self, c, node):
        """The member's certificates as the node has them (public parts only), for the table."""
        return {"certs": [f"{paths.ETCD_PKI}/{f}.crt" for f in ("server", "peer",
                                                                  "healthcheck-client")]}

    def names(self, c, node) -> list[str]:
        own = [f"{node.name}-server", f"{node.name}-peer"]
        shared = ["healthcheck-client", "apiserver-etcd-client"]
        return own + (shared if c.etcd_members and node == c.etcd_members[0] else [])

    def due(self, ctx, node) -> list[str]:
        renewal = ctx.local.get(RENEWAL)
        if not renewal:
            return []
        state_pki = ctx.local["state_pki"]
        return [n for n in self.names(ctx.cluster, node)
                if serial(state_pki, n) == renewal["serials"].get(n)]

    def checks(self, ctx, node):
        for name in self.due(ctx, node):
            short = name.removeprefix(f"{node.name}-")
            yield (f"re-issue {short}.crt (serial {renewal_serial(ctx, name)}) from the etcd CA: "
                   "new serial, same SANs and key")

    def run(self, run, nodes):
        ca = pki.load_ca(run.state.pki / "etcd")
        for node in nodes:
            for name in self.due(run.ctx, node):
                run._step(node.name, self.title, f"re-issue {name}.crt")
                pki.renew_cert(run.state.pki / "etcd", name, ca)
        run.ctx.pki = pki.ensure(run.cluster, run.state)
        run.ctx._files.clear()  # every phase's files are read again from the new PKI


def renewal_serial(ctx, name: str) -> str:
    s = ctx.local[RENEWAL]["serials"].get(name) or "?"
    return s[:8] + "..."


PHASE = ReissueEtcdCerts()
