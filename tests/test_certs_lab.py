"""`cluster.certs` and `cluster.certs --renew` on booted lab nodes (tests/data/lab-certs.yml: 3
kubeadm control planes that also run the external 3-member etcd, kube-vip).

Real here: etcd (mutual TLS), the certificates the provisioner issues and re-issues, their push
and the member restarts one at a time, the health of the members while that happens. kubeadm
and kubectl are the test-only stand-ins: `kubeadm certs check-expiration` / `renew all` keep
the kubeadm certificates' dates in a record (tests/standins/tools/kubeadm_certs.py), and the
API server "stops" when its manifest is moved aside; that proves the order and the guards, not
a real renewal by kubeadm.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest
from cryptography import x509

from provisioner import actions, certs
from provisioner.state import State
from tests.conftest import REPO, booted_lab

pytestmark = pytest.mark.lab
MEMBERS = ("cert1", "cert2", "cert3")
ETCD_FILES = ("server.crt", "peer.crt", "healthcheck-client.crt")


@pytest.fixture(scope="module")
def certs_lab(tmp_path_factory):
    with booted_lab(REPO / "tests/data/lab-certs.yml", tmp_path_factory.mktemp("certs")) as lab:
        yield lab


@pytest.fixture(scope="module")
def built(certs_lab, tmp_path_factory):
    from tests.standins import make_standin_bundle

    bundle = make_standin_bundle(tmp_path_factory.mktemp("bundle"), certs_lab.cluster)
    actions.up(certs_lab.cluster, bundle_dir=str(bundle))
    return bundle


def node_serials(lab) -> dict[tuple[str, str], int]:
    out = {}
    for n in MEMBERS:
        for f in ETCD_FILES:
            rc, pem, err = lab.run(n, f"cat /etc/etcd/pki/{f}")
            assert rc == 0, err
            out[(n, f)] = x509.load_pem_x509_certificate(pem.encode()).serial_number
    for n in MEMBERS:
        rc, pem, _ = lab.run(n, "cat /etc/kubernetes/pki/apiserver-etcd-client.crt")
        assert rc == 0
        out[(n, "apiserver-etcd-client.crt")] = x509.load_pem_x509_certificate(
            pem.encode()).serial_number
    return out


class HealthProbe(threading.Thread):
    """etcdctl endpoint health against every member, from cert1, every 200 ms (one SSH
    connection); records how many members answered healthy each time."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.client = lab.connect("cert1")
        eps = ",".join(f"https://{lab.cluster.node(n).address}:2379" for n in MEMBERS)
        pki = "/etc/etcd/pki"
        self.command = (f"ETCDCTL_API=3 etcdctl --endpoints {eps} --cacert {pki}/ca.crt --cert "
                        f"{pki}/healthcheck-client.crt --key {pki}/healthcheck-client.key "
                        "--dial-timeout 1s --command-timeout 2s endpoint health -w json")
        self.samples: list[tuple[float, int, str]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            _, out, _ = self.client.exec_command(self.command, timeout=10)
            text = out.read().decode()
            try:
                healthy = sum(1 for e in json.loads(text) if e.get("health"))
            except ValueError:
                healthy = -1  # unparseable: counted as a failure below
            self.samples.append((t, healthy, text[-300:]))
            self.stop.wait(max(0.0, 0.2 - (time.monotonic() - t)))

    def finish(self):
        self.stop.set()
        self.join(30)
        self.client.close()


def by_name(table):
    return {(r.where, r.name): r for r in table}


def test_table_then_renew_keeps_quorum_and_changes_every_serial(certs_lab, built):
    cluster = certs_lab.cluster
    t0 = time.monotonic()
    before = certs.show(cluster)
    show_seconds = time.monotonic() - t0
    rows = by_name(before)
    now = dt.datetime.now(dt.timezone.utc)
    for n in MEMBERS:
        for kind in ("server", "peer"):
            r = rows[(n, f"etcd {kind} (/etc/etcd/pki/{kind}.crt)")]
            assert r.note == "same as the controller's copy" and r.status(now) == "ok"
            assert r.issuer == "CN=etcd-ca" and r.subject == f"CN={n}"
        assert (n, "kubeadm apiserver") in rows and (n, "kubeadm admin.conf") in rows
        assert (n, "kubeadm apiserver-etcd-client") not in rows  # external etcd: not kubeadm's
    assert ("cert1", "kubeadm super-admin.conf") in rows  # the init node only
    assert rows[("controller", "etcd CA (pki/etcd/ca.crt)")].ca
    warnings, expired = certs.summary(before, now)
    assert warnings == [] and expired == []

    # certificates as a cluster has them months later (the stand-in's pinned dates; kubeadm's
    # table shows minutes, so ones issued in the minute a renewal starts count as renewed):
    # cert2's apiserver certificate has 10 days left and is warned about
    for name, line in (("cert1", "admin.conf 200"), ("cert2", "apiserver 10"),
                       ("cert3", "scheduler.conf 200")):
        row, days = line.split()
        when = (now + dt.timedelta(days=int(days))).strftime("%Y-%m-%dT%H:%M")
        assert certs_lab.run(name, f"mkdir -p /etc/standin && echo '{row} {when}' "
                                   "> /etc/standin/cert-dates")[0] == 0
    warnings, expired = certs.summary(certs.show(cluster), now)
    assert len(warnings) == 1 and "cert2: kubeadm apiserver expires in 10 days" in warnings[0]

    # the plan names every renewal and changes nothing
    old = node_serials(certs_lab)
    planned = {p.title: w for p, w in certs.renew(cluster, dry_run=True) if w}
    assert set(planned) == {"reissue-etcd-certs", "certs"}
    assert set(planned["reissue-etcd-certs"]) == set(MEMBERS) == set(planned["certs"])
    assert node_serials(certs_lab) == old
    assert not (State(cluster).dir / "certs-renew.json").exists()

    probe = HealthProbe(certs_lab)
    probe.start()
    time.sleep(1)
    t0 = time.monotonic()
    try:
        done = {p.title: w for p, w in certs.renew(cluster) if w}
        renew_seconds = time.monotonic() - t0
        time.sleep(1)
    finally:
        probe.finish()
    assert set(done) == {"reissue-etcd-certs", "etcd", "certs", "kubeconfig"}
    counts = [h for _, h, _ in probe.samples]
    assert len(counts) >= 10, "the health probe did not run"
    worst = min(probe.samples, key=lambda s: s[1])
    assert worst[1] >= 2, f"fewer than 2 healthy members during the renewal: {worst}"

    new = node_serials(certs_lab)
    assert all(new[k] != old[k] for k in old), "a certificate kept its serial"
    after = by_name(certs.show(cluster))
    now = dt.datetime.now(dt.timezone.utc)
    for n in MEMBERS:
        r = after[(n, "etcd server (/etc/etcd/pki/server.crt)")]
        assert r.not_after > rows[(n, "etcd server (/etc/etcd/pki/server.crt)")].not_after
        k = after[(n, "kubeadm apiserver")]
        assert k.not_after >= now + dt.timedelta(days=364)
    assert certs.summary(list(after.values()), now) == ([], [])
    for n in MEMBERS:  # kubeadm renewed once per control plane, components back in place
        rc, out, _ = certs_lab.run(n, "grep -c '\"renew\", \"all\"' /var/log/standin/kubeadm.jsonl;"
                                      " ls /etc/kubernetes/manifests")
        assert out.split()[0] == "1" and "kube-apiserver.yaml" in out
    assert not (State(cluster).dir / "certs-renew.json").exists()
    # nothing left: a plan of a new renewal would start over, but cluster.up has nothing to do
    assert {p.title: w for p, w in actions.up(cluster, bundle_dir=str(built), dry_run=True)
            if w} == {}
    print(f"\nFIGURES cluster.certs table {show_seconds:.1f} s; --renew {renew_seconds:.1f} s; "
          f"health samples {len(counts)}, min healthy {min(counts)}")
