"""TEST-ONLY stand-in for `kubeadm certs check-expiration` and `kubeadm certs renew`.

The kubeadm stand-in writes no certificate of its own (it has no crypto library), so the
expiry of each kubeadm-managed certificate is kept in /var/lib/standin/kubeadm-certs.json:
before any renewal it is the time the stand-in wrote the node's kubeconfigs (the mtime of
admin.conf, i.e. when init/join ran) plus kubeadm's default validity of one year. The CA rows
are real: the not-after of the CA certificates in /etc/kubernetes/pki (placed there by the
provisioner), read with a small DER reader. A test-only switch, /etc/standin/cert-dates
(`NAME YYYY-MM-DDTHH:MM` UTC, one a line), pins a row's expiry; a renewal of that row removes
its line.

check-expiration prints upstream's table layout (two tab-aligned tables, `Jan 02, 2006 15:04
UTC` dates, ShortHumanDuration residual times, `<invalid>` once expired). renew checks what
kubeadm checks: a known certificate name, a control plane holding kubeadm's PKI, the signing
CA's key on disk (without it kubeadm is in external CA mode and cannot sign); it records the
call, moves the expiry to now + 1 year and rewrites the kubeconfig files it renews (their bytes
change, as a real renewal's embedded certificate would).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re

from . import Failed, Tool, state

RECORD = "/var/lib/standin/kubeadm-certs.json"
PINS = "/etc/standin/cert-dates"
PKI = "/etc/kubernetes/pki"
VALIDITY = dt.timedelta(days=365)
# upstream's rows: name -> (what the renewal message says, file, signing CA, stacked etcd only)
CERTS = {
    "admin.conf": ("certificate embedded in the kubeconfig file for the admin to use and for "
                   "kubeadm itself", "/etc/kubernetes/admin.conf", "ca", False),
    "apiserver": ("certificate for serving the Kubernetes API", f"{PKI}/apiserver.crt", "ca",
                  False),
    "apiserver-etcd-client": ("certificate the apiserver uses to access etcd",
                              f"{PKI}/apiserver-etcd-client.crt", "etcd-ca", True),
    "apiserver-kubelet-client": ("certificate for the API server to connect to kubelet",
                                 f"{PKI}/apiserver-kubelet-client.crt", "ca", False),
    "controller-manager.conf": ("certificate embedded in the kubeconfig file for the "
                                "controller manager to use",
                                "/etc/kubernetes/controller-manager.conf", "ca", False),
    "etcd-healthcheck-client": ("certificate for liveness probes to healthcheck etcd",
                                f"{PKI}/etcd/healthcheck-client.crt", "etcd-ca", True),
    "etcd-peer": ("certificate for etcd nodes to communicate with each other",
                  f"{PKI}/etcd/peer.crt", "etcd-ca", True),
    "etcd-server": ("certificate for serving etcd", f"{PKI}/etcd/server.crt", "etcd-ca", True),
    "front-proxy-client": ("certificate for the front proxy client",
                           f"{PKI}/front-proxy-client.crt", "front-proxy-ca", False),
    "scheduler.conf": ("certificate embedded in the kubeconfig file for the scheduler manager "
                       "to use", "/etc/kubernetes/scheduler.conf", "ca", False),
    "super-admin.conf": ("certificate embedded in the kubeconfig file for the super-admin",
                         "/etc/kubernetes/super-admin.conf", "ca", False),
}
CAS = {"ca": f"{PKI}/ca", "front-proxy-ca": f"{PKI}/front-proxy-ca", "etcd-ca": f"{PKI}/etcd/ca"}
DATE = "%b %d, %Y %H:%M UTC"


def main(tool: Tool, args: list[str]) -> None:
    try:
        command(tool, args)
    except Failed as e:
        tool.record(["certs"] + args, "error: " + str(e).splitlines()[0], log="kubeadm")
        raise


def command(tool: Tool, args: list[str]) -> None:
    if not args:
        raise Failed('kubeadm certs: the stand-in implements "check-expiration" and "renew"')
    cmd, rest = args[0], args[1:]
    opts = flags(rest)
    if cmd == "check-expiration":
        if opts["args"]:
            raise Failed(f'unknown command "{opts["args"][0]}" for "kubeadm certs '
                         'check-expiration"')
        check_expiration(tool, now())
    elif cmd == "renew":
        if len(opts["args"]) != 1:
            raise Failed('kubeadm certs renew: name one certificate or "all" (see `kubeadm '
                         'certs renew --help` upstream)')
        renew(tool, opts["args"][0], now())
    else:
        raise Failed(f'unknown command "{cmd}" for "kubeadm certs" (the stand-in implements '
                     "check-expiration and renew)")


def flags(args: list[str]) -> dict:
    out = {"args": []}
    i = 0
    while i < len(args):
        flag, eq, _ = args[i].partition("=")
        if flag in ("--config", "--kubeconfig", "--cert-dir"):
            if not eq:
                i += 1
                if i >= len(args):
                    raise Failed(f"flag needs an argument: {flag}")
        elif flag.startswith("-"):
            raise Failed(f"unknown flag: {flag}")
        else:
            out["args"].append(args[i])
        i += 1
    return out


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# -- what this node has --------------------------------------------------------------------------


def managed(tool: Tool) -> list[str]:
    """The rows kubeadm manages on this node: a control plane's PKI and kubeconfigs (no etcd
    rows with external etcd: kubeadm tracks nothing signed by an external etcd's CA)."""
    s = state.load(tool, state.KUBEADM_STATE)
    if s.get("role") != "control-plane":
        return []
    stacked = s.get("etcd") == "stacked"
    out = []
    for name, (_, path, _, etcd_only) in CERTS.items():
        if etcd_only and not stacked:
            continue
        if path.endswith(".conf") and not tool.path(path).exists():
            continue  # super-admin.conf exists on the init node only
        out.append(name)
    return out


def expiry(tool: Tool, name: str) -> dt.datetime:
    pins = read_pins(tool)
    if name in pins:
        return pins[name]
    record = state.load(tool, RECORD)
    if name in record:
        return dt.datetime.fromtimestamp(record[name], dt.timezone.utc)
    written = tool.path("/etc/kubernetes/admin.conf").stat().st_mtime
    return dt.datetime.fromtimestamp(written, dt.timezone.utc) + VALIDITY


def read_pins(tool: Tool) -> dict[str, dt.datetime]:
    try:
        lines = tool.path(PINS).read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2:
            when = dt.datetime.strptime(parts[1], "%Y-%m-%dT%H:%M")
            out[parts[0]] = when.replace(tzinfo=dt.timezone.utc)
    return out


def ca_not_after(tool: Tool, base: str) -> dt.datetime | None:
    try:
        return not_after(tool.path(base + ".crt").read_text())
    except (OSError, ValueError):
        return None


def not_after(pem: str) -> dt.datetime:
    """notAfter of the first certificate of a PEM text (DER walk, no crypto library)."""
    from .kubeadm import der_tlv

    m = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    if not m:
        raise ValueError("no PEM certificate")
    der = base64.b64decode("".join(m.group(1).split()))
    _, cert, _ = der_tlv(der, 0)
    _, tbs, _ = der_tlv(cert, 0)
    pos, items = 0, []
    while pos < len(tbs) and len(items) < 5:
        tag, content, pos = der_tlv(tbs, pos)
        items.append((tag, content))
    if items[0][0] == 0xA0:
        items = items[1:]
    validity = items[3][1]
    _, _, after = der_tlv(validity, 0)
    tag, text, _ = der_tlv(validity, after)
    fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"
    return dt.datetime.strptime(text.decode(), fmt).replace(tzinfo=dt.timezone.utc)


# -- check-expiration ----------------------------------------------------------------------------


def short_duration(d: dt.timedelta) -> str:
    """apimachinery's ShortHumanDuration, as kubeadm's RESIDUAL TIME column."""
    seconds = int(d.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    hours = seconds // 3600
    if hours < 24:
        return f"{hours}h"
    if hours < 24 * 365:
        return f"{hours // 24}d"
    return f"{hours // (24 * 365)}y"


def table(rows: list[list[str]]) -> str:
    """Go's tabwriter as kubeadm uses it: each cell padded to its column's width + 3."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("".join(c.ljust(w + 3) for c, w in zip(r, widths)) + "\n" for r in rows)


def check_expiration(tool: Tool, at: dt.datetime) -> None:
    names = managed(tool)
    tool.say("[check-expiration] Reading configuration from the cluster...")
    tool.say("[check-expiration] FYI: You can look at this config file with 'kubectl -n "
             "kube-system get cm kubeadm-config -o yaml'")
    external = {ca: not tool.path(base + ".key").exists() for ca, base in CAS.items()}
    rows = [["CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "CERTIFICATE AUTHORITY",
             "EXTERNALLY MANAGED"]]
    for name in names:
        when = expiry(tool, name)
        ca = CERTS[name][2]
        rows.append([name, when.strftime(DATE), short_duration(when - at), ca,
                     "yes" if external[ca] else "no"])
    print()
    print(table(rows), end="")
    ca_rows = [["CERTIFICATE AUTHORITY", "EXPIRES", "RESIDUAL TIME", "EXTERNALLY MANAGED"]]
    used = {CERTS[n][2] for n in names} or {"ca", "front-proxy-ca"}
    for ca in ("ca", "front-proxy-ca", "etcd-ca"):
        if ca not in used:
            continue
        when = ca_not_after(tool, CAS[ca])
        if when is None:
            ca_rows.append([f"!MISSING! {ca}", "", "", ""])
        else:
            ca_rows.append([ca, when.strftime(DATE), short_duration(when - at),
                            "yes" if external[ca] else "no"])
    print()
    print(table(ca_rows), end="")
    tool.record(["certs", "check-expiration"], "ok", log="kubeadm")


# -- renew ---------------------------------------------------------------------------------------


def renew(tool: Tool, which: str, at: dt.datetime) -> None:
    argv = ["certs", "renew", which]
    names = managed(tool)
    if which != "all" and which not in CERTS:
        raise Failed(f'unknown command "{which}" for "kubeadm certs renew"')
    if not names:
        raise Failed(f"[renew] unable to load {PKI}/ca.crt: this node holds no kubeadm "
                     "control plane PKI (stand-in: no control plane init/join recorded in "
                     f"{state.KUBEADM_STATE})")
    todo = names if which == "all" else [which]
    if which not in ("all",) and which not in names:
        raise Failed(f"[renew] {which}: not managed by kubeadm on this node")
    for name in todo:
        ca = CERTS[name][2]
        if not tool.path(CAS[ca] + ".key").exists():
            raise Failed(f"{name}: the {ca} key ({CAS[ca]}.key) is not on this node: "
                         "external CA mode, kubeadm cannot renew certificates it signs")
    tool.say("[renew] Reading configuration from the cluster...")
    record = state.load(tool, RECORD)
    for name in todo:
        record[name] = (at + VALIDITY).timestamp()
        path = CERTS[name][1]
        if path.endswith(".conf"):
            restamp(tool, path, at)
        tool.say(f"{CERTS[name][0]} renewed")
    state.save(tool, RECORD, record)
    unpin(tool, todo)
    tool.record(argv, "ok", log="kubeadm", renewed=todo)
    tool.say("Done renewing certificates. You must restart the kube-apiserver, "
             "kube-controller-manager, kube-scheduler and etcd, so that they can use the new "
             "certificates.")


def restamp(tool: Tool, path: str, at: dt.datetime) -> None:
    p = tool.path(path)
    lines = [x for x in p.read_text().splitlines(True)
             if not x.startswith("# stand-in renewed ")]
    tool.write(path, f"# stand-in renewed {at.isoformat()}\n" + "".join(lines), 0o600)


def unpin(tool: Tool, names: list[str]) -> None:
    p = tool.path(PINS)
    try:
        lines = p.read_text().splitlines()
    except OSError:
        return
    keep = [x for x in lines if (x.split() or [""])[0] not in names]
    if keep != lines:
        tool.write(PINS, "".join(f"{x}\n" for x in keep), p.stat().st_mode & 0o777)


def dump(tool: Tool) -> str:  # debugging aid for tests
    return json.dumps({n: expiry(tool, n).isoformat() for n in managed(tool)})
