"""`cluster.certs` without a lab: parsing `kubeadm certs check-expiration` (data cases in
tests/data/certs/), the 30-day warning and the expired exit code, re-issuing a certificate with
the same SANs, the plan's phases, and the TEST-ONLY kubeadm stand-in's `certs` commands run
against a temporary STANDIN_ROOT."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509

from provisioner import certs, pki
from provisioner import phases as ph

DATA = Path(__file__).resolve().parent / "data" / "certs"
UTC = dt.timezone.utc


def test_parse_external_etcd_table():
    rows = certs.parse_check_expiration((DATA / "external-etcd.txt").read_text())
    names = [r.name for r in rows if not r.authority]
    assert names == ["admin.conf", "apiserver", "apiserver-kubelet-client",
                     "controller-manager.conf", "front-proxy-client", "scheduler.conf",
                     "super-admin.conf"]
    admin = rows[0]
    assert admin.not_after == dt.datetime(2027, 3, 3, 10, 41, tzinfo=UTC)
    assert (admin.residual, admin.ca, admin.external) == ("364d", "ca", False)
    assert rows[4].ca == "front-proxy-ca"
    cas = [r for r in rows if r.authority]
    assert [(r.name, r.residual) for r in cas] == [("ca", "9y"), ("front-proxy-ca", "9y")]
    assert cas[0].not_after == dt.datetime(2036, 2, 28, 10, 36, tzinfo=UTC)


def test_parse_expired_missing_and_external_ca():
    rows = certs.parse_check_expiration((DATA / "stacked-expired-missing.txt").read_text())
    by = {r.name: r for r in rows if not r.authority}
    assert by["etcd-server"].ca == "etcd-ca" and by["etcd-server"].residual == "<invalid>"
    assert by["scheduler.conf"].not_after is None  # !MISSING!
    assert [r.external for r in rows if r.authority] == [True, False, False]


def test_parse_refuses_output_without_a_table():
    with pytest.raises(ValueError, match="no certificate table"):
        certs.parse_check_expiration((DATA / "no-table.txt").read_text())


def test_thirty_day_warning_and_expired():
    now = dt.datetime(2026, 1, 1, tzinfo=UTC)
    rows = [certs.Row("cp1", "kubeadm apiserver", not_after=now + dt.timedelta(days=29)),
            certs.Row("cp1", "kubeadm admin.conf", not_after=now + dt.timedelta(days=31)),
            certs.Row("cp2", "kubeadm scheduler.conf", not_after=now - dt.timedelta(hours=1)),
            certs.Row("controller", "etcd CA", not_after=now + dt.timedelta(days=3), ca=True)]
    assert [r.status(now) for r in rows] == ["WARN", "ok", "EXPIRED", "WARN"]
    warnings, expired = certs.summary(rows, now)
    assert len(warnings) == 2 and "cp1: kubeadm apiserver expires in 29 days" in warnings[0]
    assert "rotation is out of scope" in warnings[1]
    assert expired == ["EXPIRED: cp2: kubeadm scheduler.conf since 2025-12-31 23:00 UTC"]
    text = certs.render(rows, now)
    assert "EXPIRED" in text and "WARN" in text and text.splitlines()[0].startswith("WHERE")


def issue(tmp_path, days=None):
    ca = pki.ensure_ca(tmp_path, "ca", "etcd-ca")
    pki.ensure_cert(tmp_path, "m1-server", ca, "m1", ["m1", "10.0.0.1", "localhost"],
                    server=True, client=True)
    if days is not None:
        pki.renew_cert(tmp_path, "m1-server", ca, days=days)
    return ca


def test_certificate_with_ten_days_of_life_is_warned_about(tmp_path):
    issue(tmp_path, days=10)
    row = certs.cert_row("m1", "etcd server", (tmp_path / "m1-server.crt").read_bytes())
    now = dt.datetime.now(UTC)
    assert row.status(now) == "WARN" and 9 <= row.days_left(now) <= 10
    assert (row.subject, row.issuer) == ("CN=m1", "CN=etcd-ca")
    warnings, expired = certs.summary([row], now)
    assert len(warnings) == 1 and expired == []


def test_renew_keeps_subject_sans_usages_and_key(tmp_path):
    ca = issue(tmp_path)
    before = (tmp_path / "m1-server.crt").read_bytes()
    key = (tmp_path / "m1-server.key").read_bytes()
    pki.renew_cert(tmp_path, "m1-server", ca)
    old = x509.load_pem_x509_certificate(before)
    new = x509.load_pem_x509_certificate((tmp_path / "m1-server.crt").read_bytes())
    assert new.serial_number != old.serial_number
    assert (tmp_path / "m1-server.key").read_bytes() == key
    assert new.subject == old.subject and new.public_key() == old.public_key()
    for ext in (x509.SubjectAlternativeName, x509.ExtendedKeyUsage, x509.KeyUsage):
        assert new.extensions.get_extension_for_class(ext).value == \
            old.extensions.get_extension_for_class(ext).value
    new.verify_directly_issued_by(ca[0])
    assert (tmp_path / "m1-server.key").stat().st_mode & 0o777 == 0o600
    # ensure() reads it back unchanged: same SANs, nothing issued again
    pki.ensure_cert(tmp_path, "m1-server", ca, "m1", ["m1", "10.0.0.1", "localhost"], True, True)
    assert x509.load_pem_x509_certificate(
        (tmp_path / "m1-server.crt").read_bytes()).serial_number == new.serial_number


def test_renew_phases_are_day_two_and_numbered():
    assert ph.CERTS not in ph.ALL and ph.REISSUE_ETCD_CERTS not in ph.ALL
    assert [p.title for p in certs.RENEW] == ["reissue-etcd-certs", "etcd", "certs",
                                               "kubeconfig"]
    assert ph.CERTS.playbook == "98-certs.yml" and ph.CERTS.serial
    assert not certs.REFRESH_KUBECONFIG.needs_bundle and ph.KUBECONFIG.needs_bundle


def test_expired_certificate_exits_one(monkeypatch, capsys):
    from invoke import Context, Exit

    from provisioner.tasks import cluster as tasks

    now = dt.datetime.now(UTC)
    rows = [certs.Row("cp1", "kubeadm apiserver", not_after=now - dt.timedelta(days=1))]
    monkeypatch.setattr(certs, "show", lambda cluster, trust_new=False: rows)
    with pytest.raises(Exit) as e:
        tasks.certs.body(Context(), inventory="inventories/lab.yml")
    assert e.value.code == 1
    assert "EXPIRED: cp1: kubeadm apiserver" in capsys.readouterr().out
    rows[0].not_after = now + dt.timedelta(days=100)
    tasks.certs.body(Context(), inventory="inventories/lab.yml")  # no exit: all fine
    assert "CA rotation is out of scope" in capsys.readouterr().out


# -- the TEST-ONLY kubeadm stand-in: `certs check-expiration` and `certs renew` ---------------

@pytest.fixture
def node(tmp_path, monkeypatch):
    """A control plane as the kubeadm stand-in leaves it (external etcd), under STANDIN_ROOT."""
    root = tmp_path / "node"
    monkeypatch.setenv("STANDIN_ROOT", str(root))
    k = root / "etc/kubernetes"
    (k / "pki").mkdir(parents=True)
    pki.ensure_ca(k / "pki", "ca", "kubernetes")
    pki.ensure_ca(k / "pki", "front-proxy-ca", "front-proxy-ca")
    for conf in ("admin", "super-admin", "controller-manager", "scheduler"):
        (k / f"{conf}.conf").write_text("# stand-in kubeconfig\n")
    state = root / "var/lib/standin"
    state.mkdir(parents=True)
    (state / "kubeadm-state.json").write_text(json.dumps(
        {"role": "control-plane", "etcd": "external", "node": "cp1", "steps": {}}))
    return root


def kubeadm(capsys, *argv):
    from tests.standins.tools import Tool, kubeadm as tool, run

    rc = run(Tool("kubeadm", "v1.36.4"), tool.main, list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_standin_check_expiration_prints_upstream_layout(node, capsys):
    rc, out, _ = kubeadm(capsys, "certs", "check-expiration")
    assert rc == 0
    rows = certs.parse_check_expiration(out)
    names = [r.name for r in rows if not r.authority]
    assert "apiserver" in names and "super-admin.conf" in names
    assert not any(n.startswith("etcd-") or n == "apiserver-etcd-client" for n in names)
    now = dt.datetime.now(UTC)
    assert all(363 <= (r.not_after - now).days <= 365 for r in rows if not r.authority)
    ca = x509.load_pem_x509_certificate((node / "etc/kubernetes/pki/ca.crt").read_bytes())
    assert rows[-2].name == "ca" and rows[-2].not_after == ca.not_valid_after_utc.replace(
        second=0)
    header = next(line for line in out.splitlines() if line.startswith("CERTIFICATE "))
    assert header.split("   ")[0] == "CERTIFICATE" and "RESIDUAL TIME" in header


def test_standin_pinned_date_renew_and_refusals(node, capsys):
    soon = (dt.datetime.now(UTC) + dt.timedelta(days=10)).strftime("%Y-%m-%dT%H:%M")
    (node / "etc/standin").mkdir(parents=True)
    (node / "etc/standin/cert-dates").write_text(f"apiserver {soon}\n")
    rows = certs.parse_check_expiration(kubeadm(capsys, "certs", "check-expiration")[1])
    apiserver = next(r for r in rows if r.name == "apiserver")
    assert apiserver.residual in ("9d", "10d")

    assert kubeadm(capsys, "certs", "renew", "bogus")[0] == 1
    assert kubeadm(capsys, "certs", "renew")[0] == 1
    before = (node / "etc/kubernetes/admin.conf").read_text()
    rc, out, _ = kubeadm(capsys, "certs", "renew", "all")
    assert rc == 0 and "You must restart the kube-apiserver" in out
    assert (node / "etc/kubernetes/admin.conf").read_text() != before
    assert (node / "etc/standin/cert-dates").read_text() == ""  # the pin is gone
    rows = certs.parse_check_expiration(kubeadm(capsys, "certs", "check-expiration")[1])
    since = dt.datetime.now(UTC) - dt.timedelta(minutes=1)
    assert all(r.not_after >= since + dt.timedelta(days=365) - dt.timedelta(minutes=1)
               for r in rows if not r.authority)

    (node / "etc/kubernetes/pki/ca.key").unlink()  # external CA mode: kubeadm cannot sign
    rc, _, err = kubeadm(capsys, "certs", "renew", "all")
    assert rc == 1 and "external CA mode" in err
    log = [json.loads(x) for x in (node / "var/log/standin/kubeadm.jsonl").read_text().splitlines()]
    assert [e["result"] == "ok" for e in log if e["argv"][:2] == ["certs", "renew"]] == [
        False, False, True, False]


def test_standin_renew_refused_on_a_node_without_a_control_plane(node, capsys):
    (node / "var/lib/standin/kubeadm-state.json").write_text(json.dumps({"role": "worker"}))
    rc, _, err = kubeadm(capsys, "certs", "renew", "all")
    assert rc == 1 and "no kubeadm control plane PKI" in err
