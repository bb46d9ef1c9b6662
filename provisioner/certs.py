"""`invoke cluster.certs [--renew] [--plan]`: every certificate the cluster uses, and their renewal.

    table:  controller CAs (state pki/) · per etcd member its server and peer certificate (read
            on the node by the facts probe, compared with the controller's copy) · the etcd
            client certificates (apiserver-etcd-client, healthcheck-client) · kubeadm's, from
            `kubeadm certs check-expiration` on each control plane · the admin kubeconfig's
            client certificate · k3s's (server/tls on each server)
    renew:  RENEW = [reissue-etcd-certs (controller), etcd (03: push, one member at a time,
            healthy over TLS before the next), certs (96: kubeadm certs renew all + static pods
            restarted, one control plane at a time), kubeconfig (admin kubeconfig copied again)]

A renewal records when it began and the serials it replaces in state/<cluster>/certs-renew.json
(removed when it finished), so a rerun after a failure finishes the job and re-issues nothing
twice; each phase reads what is left from the end state. CA rotation is out of scope: the CA
rows say how long each CA has.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from copy import copy
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509

from . import actions, paths, phases as ph, pki
from .errors import UserError
from .model import Cluster
from .state import write_atomic

WARN_DAYS = 30
REISSUE_ETCD_CERTS = ph.REISSUE_ETCD_CERTS
CERTS = ph.CERTS
REFRESH_KUBECONFIG = copy(ph.KUBECONFIG)
REFRESH_KUBECONFIG.needs_bundle = False  # copying admin.conf again needs no Kubernetes binary
RENEW: tuple = (REISSUE_ETCD_CERTS, ph.ETCD, CERTS, REFRESH_KUBECONFIG)
RENEWAL = "certs_renewal"
CA_NOTE = "CA: rotation is out of scope (a new CA means rebuilding trust on every node)"


@dataclass
class Row:
    where: str  # "controller" or a host name
    name: str
    subject: str = "-"
    issuer: str = "-"
    not_after: dt.datetime | None = None
    note: str = ""
    ca: bool = False

    def days_left(self, now: dt.datetime) -> float | None:
        if self.not_after is None:
            return None
        return (self.not_after - now).total_seconds() / 86400

    def status(self, now: dt.datetime) -> str:
        days = self.days_left(now)
        if days is None:
            return "missing"
        if days <= 0:
            return "EXPIRED"
        return "WARN" if days < WARN_DAYS else "ok"

    @property
    def expires_text(self) -> str:
        return self.not_after.strftime("%Y-%m-%d %H:%M UTC") if self.not_after else "-"


# -- kubeadm certs check-expiration ----------------------------------------------------------

KUBEADM_DATE = "%b %d, %Y %H:%M UTC"


@dataclass
class KubeadmRow:
    name: str
    not_after: dt.datetime | None
    residual: str
    ca: str
    external: bool
    authority: bool = False  # a row of the CERTIFICATE AUTHORITY table

    @property
    def expires_text(self) -> str:
        return self.not_after.strftime("%Y-%m-%d %H:%M UTC") if self.not_after else "missing"


def _columns(header: str, names: list[str]) -> list[int]:
    starts = []
    for n in names:
        i = header.find(n)
        if i < 0:
            raise ValueError(f"kubeadm check-expiration: no {n!r} column in {header.strip()!r}")
        starts.append(i)
    return starts


def _cells(line: str, starts: list[int]) -> list[str]:
    ends = starts[1:] + [None]
    return [line[a:b].strip() for a, b in zip(starts, ends)]


def parse_check_expiration(text: str) -> list[KubeadmRow]:
    """Both tables of `kubeadm certs check-expiration` (text output): the certificates, then
    the certificate authorities. Dates are `Jan 02, 2006 15:04 UTC`; a missing file is shown as
    `!MISSING! NAME` with empty cells. Anything before the first header (kubeadm's log lines)
    is skipped; a table without its header raises ValueError."""
    rows: list[KubeadmRow] = []
    starts, authority, seen = None, False, False
    for line in text.splitlines():
        if line.startswith("CERTIFICATE AUTHORITY") and "EXPIRES" in line:
            starts = _columns(line, ["CERTIFICATE AUTHORITY", "EXPIRES", "RESIDUAL TIME",
                                     "EXTERNALLY MANAGED"])
            authority = seen = True
            continue
        if line.startswith("CERTIFICATE ") and "EXPIRES" in line:
            starts = _columns(line, ["CERTIFICATE", "EXPIRES", "RESIDUAL TIME",
                                     "CERTIFICATE AUTHORITY", "EXTERNALLY MANAGED"])
            authority, seen = False, True
            continue
        if not line.strip():
            starts = None
            continue
        if starts is None:
            continue
        cells = _cells(line, starts)
        name = cells[0]
        missing = name.startswith("!MISSING!")
        if missing:
            name = name.removeprefix("!MISSING!").strip()
        when = None
        if not missing:
            try:
                when = dt.datetime.strptime(cells[1], KUBEADM_DATE).replace(
                    tzinfo=dt.timezone.utc)
            except ValueError:
                raise ValueError(f"kubeadm check-expiration: unreadable date {cells[1]!r} "
                                 f"for {name}") from None
        if authority:
            rows.append(KubeadmRow(name, when, cells[2], name, cells[3] == "yes", True))
        else:
            rows.append(KubeadmRow(name, when, cells[2], cells[3], cells[4] == "yes"))
    if not seen:
        raise ValueError("kubeadm check-expiration: no certificate table in its output")
    return [r for r in rows if not r.authority] + [r for r in rows if r.authority]


# -- reading certificates ----------------------------------------------------------------------

def _name(n: x509.Name) -> str:
    return n.rfc4514_string() or "-"


def cert_row(where: str, name: str, pem: bytes, note: str = "", ca: bool = False) -> Row:
    cert = x509.load_pem_x509_certificate(pem)
    return Row(where, name, _name(cert.subject), _name(cert.issuer), cert.not_valid_after_utc,
               note, ca)


def serial_of(pem: bytes | str) -> str:
    data = pem.encode() if isinstance(pem, str) else pem
    return format(x509.load_pem_x509_certificate(data).serial_number, "x")


def kubeconfig_row(kubeconfig: Path) -> Row:
    name = "admin kubeconfig (client cert)"
    if not kubeconfig.exists():
        return Row("controller", name, note=f"{kubeconfig}: none yet (cluster.up makes it)")
    try:
        doc = yaml.safe_load(kubeconfig.read_text()) or {}
        users = doc.get("users") or []
        data = (users[0].get("user") or {}).get("client-certificate-data") if users else None
    except (yaml.YAMLError, AttributeError, TypeError) as e:
        return Row("controller", name, note=f"{kubeconfig}: unreadable ({e})")
    if not data:
        return Row("controller", name, note="no client certificate in it (the test-only "
                   "stand-in writes none; a real kubeadm admin.conf has one)")
    return cert_row("controller", name, base64.b64decode(data), note=str(kubeconfig))


def rows(run: actions.Run) -> list[Row]:
    """Every certificate of the cluster, from the state folder and the probed facts."""
    c, state, ctx = run.cluster, run.state, run.ctx
    out: list[Row] = []
    for rel, label in (("ca.crt", "cluster CA"), ("front-proxy-ca.crt", "front-proxy CA"),
                       ("etcd/ca.crt", "etcd CA")):
        path = state.pki / rel
        if path.exists():
            out.append(cert_row("controller", f"{label} (pki/{rel})", path.read_bytes(),
                                CA_NOTE, ca=True))
    etcd_pki = state.pki / "etcd"
    for node in c.etcd_members:
        certs = getattr(ctx.facts[node.name], "certs", None) or {}
        for kind in ("server", "peer"):
            node_path = f"{paths.ETCD_PKI}/{kind}.crt"
            mine = etcd_pki / f"{node.name}-{kind}.crt"
            theirs = certs.get(node_path)
            if not theirs:
                why = "unreachable" if not ctx.facts[node.name].reachable else "not on the node"
                out.append(Row(node.name, f"etcd {kind} ({node_path})", note=why))
                continue
            same = mine.exists() and serial_of(theirs) == serial_of(mine.read_bytes())
            note = "same as the controller's copy" if same else (
                "DIFFERS from the controller's copy: run cluster.up (or certs --renew)")
            out.append(cert_row(node.name, f"etcd {kind} ({node_path})", theirs.encode(), note))
    for name, where in (("apiserver-etcd-client", c.control_planes),
                        ("healthcheck-client", c.etcd_members)):
        mine = etcd_pki / f"{name}.crt"
        if not c.external_etcd or not mine.exists():
            continue
        node_path = (f"{paths.KUBE_PKI}/{name}.crt" if name.startswith("apiserver")
                     else f"{paths.ETCD_PKI}/{name}.crt")
        differ = [n.name for n in where
                  if (p := (getattr(ctx.facts[n.name], "certs", None) or {}).get(node_path))
                  and serial_of(p) != serial_of(mine.read_bytes())]
        note = (f"on {', '.join(differ)}: an older copy" if differ
                else f"controller copy; as on {', '.join(n.name for n in where)}")
        out.append(cert_row("controller", f"etcd client {name}", mine.read_bytes(), note))
    if not c.is_k3s:
        for node in c.control_planes:
            table, error = CERTS.table(ctx, node)
            if table is None:
                out.append(Row(node.name, "kubeadm certificates",
                               note=f"kubeadm certs check-expiration failed: {error}"))
                continue
            for r in table:
                if r.authority:
                    continue  # the controller's CA rows say it once
                out.append(Row(node.name, f"kubeadm {r.name}", "-", r.ca, r.not_after,
                               "externally managed" if r.external else "kubeadm"))
    else:
        for node in c.control_planes:
            certs = getattr(ctx.facts[node.name], "certs", None) or {}
            for path in sorted(p for p in certs if p.startswith(paths.K3S_TLS + "/")):
                if certs[path]:
                    out.append(cert_row(node.name, f"k3s {path.removeprefix(paths.K3S_TLS + '/')}",
                                        certs[path].encode(), "k3s renews it at start "
                                        "within 90 days of expiry"))
    out.append(kubeconfig_row(state.kubeconfig))
    return out


def render(table: list[Row], now: dt.datetime) -> str:
    head = ("WHERE", "CERTIFICATE", "SUBJECT", "ISSUER", "NOT AFTER", "DAYS LEFT", "STATUS",
            "NOTE")
    lines = [head]
    for r in table:
        days = r.days_left(now)
        left = "-" if days is None else f"{int(days)}"
        lines.append((r.where, r.name, r.subject, r.issuer, r.expires_text, left,
                      r.status(now) if r.not_after or not r.note else "-", r.note))
    widths = [min(max(len(x[i]) for x in lines), 48) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c[:w].ljust(w) for c, w in zip(x, widths)) + "  " + x[-1]
                     for x in lines)


def summary(table: list[Row], now: dt.datetime) -> tuple[list[str], list[str]]:
    """(warnings, expired): one line per certificate under WARN_DAYS days / past its end."""
    warn = [f"WARNING: {r.where}: {r.name} expires in {r.days_left(now):.0f} days "
            f"({r.expires_text}); renew: invoke cluster.certs --renew"
            + (" (a CA: rotation is out of scope here)" if r.ca else "")
            for r in table if r.status(now) == "WARN"]
    expired = [f"EXPIRED: {r.where}: {r.name} since {r.expires_text}" for r in table
               if r.status(now) == "EXPIRED"]
    return warn, expired


# -- the actions -------------------------------------------------------------------------------

def show(cluster: Cluster, trust_new=False) -> list[Row]:
    """The certificate table (read-only: the shared lock, one probe round trip per host)."""
    with actions.session(cluster, shared=True, trust_new=trust_new, survey=False,
                         phases=RENEW) as run:
        unreachable = run.probe()
        table = rows(run)
        for line in unreachable:
            host = line.split(":", 1)[0]
            table.append(Row(host, "(host)", note="unreachable: " + line.split(": ", 1)[-1]))
        return table


def renewal_file(run) -> Path:
    return run.state.dir / "certs-renew.json"


def begin(run, write: bool) -> dict:
    """The renewal under way (resumed), or a new one: when it began and the etcd serials it
    replaces. Written only for a real run, never by --plan."""
    f = renewal_file(run)
    if f.exists():
        data = json.loads(f.read_text())
    else:
        serials = {}
        for name in pki.etcd_issued(run.cluster):
            crt = run.state.pki / "etcd" / f"{name}.crt"
            if crt.exists():
                serials[name] = serial_of(crt.read_bytes())
        data = {"since": dt.datetime.now(dt.timezone.utc).isoformat(), "serials": serials}
        if write:
            write_atomic(f, (json.dumps(data, indent=1) + "\n").encode(), 0o600)
    run.ctx.local[RENEWAL] = data
    run.ctx.local["state_pki"] = run.state.pki
    return data


def unhealthy_members(run) -> list[str]:
    out = []
    for n in run.cluster.etcd_members:
        f = run.ctx.facts[n.name]
        if not f.reachable:
            out.append(f"{n.name}: unreachable")
        elif not run.ctx.ok(n, "etcd-health"):
            out.append(f"{n.name}: not healthy over TLS "
                       f"({(run.ctx.command(n, 'etcd-health').get('out') or '').strip()[:120]})")
    return out


def renew(cluster: Cluster, dry_run=False, trust_new=False, progress=None) -> list:
    """Renew what we issue and what kubeadm issues; returns [(phase, work)] done (or, with
    dry_run, what would be done). Refused while an etcd member is unhealthy (quorum)."""
    if dry_run:
        with actions.session(cluster, shared=True, trust_new=trust_new, phases=RENEW) as run:
            begin(run, write=False)
            return run.plan(RENEW)
    with actions.session(cluster, progress=progress, trust_new=trust_new, phases=RENEW) as run:
        sick = unhealthy_members(run)
        if sick:
            raise UserError("refused before any change: every etcd member must be healthy "
                            "before its certificates are renewed one member at a time "
                            "(a restart would otherwise lose quorum):\n  " + "\n  ".join(sick))
        begin(run, write=True)
        done = run.apply_all(RENEW, progress)
        renewal_file(run).unlink(missing_ok=True)
        return done
