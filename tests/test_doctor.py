"""cluster.status / cluster.doctor decide from facts and kubectl output alone: data cases.

A healthy view of tests/data/lab-doctor.yml (every fact as a converged cluster reports it, and
tests/data/doctor/healthy.json as the kube side) gives no finding; each case changes one thing
(a fact as the probe reports it, or a kubectl scenario in upstream format from
tests/data/doctor/) and must give exactly the named findings, on the named host.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from provisioner import doctor, inventory as inv, phases as ph
from provisioner.facts import Facts
from provisioner.phases import kube
from provisioner.runner import REDACTED

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "doctor"
CLUSTER = inv.load(str(ROOT / "tests" / "data" / "lab-doctor.yml"))
SECRETS = {"bootstrap_token": "abcdef.0123456789abcdef", "certificate_key": "c" * 64,
           "k3s_token": "k" * 48, "vrrp_password": "5ecr3t42"}
MEMBER_IDS = {"dcp1": 0x1111, "de2": 0x2222, "de3": 0x3333}
STAT_HEADER = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
               "wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,"
               "iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,"
               "check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,"
               "hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,"
               "comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,")


def stat_row(px, sv, status, check="", desc=""):
    cells = [px, sv] + [""] * 15 + [status] + [""] * 18 + [check] + [""] * 19 + [desc] + [""] * 5
    return ",".join(cells) + ","


def haproxy_stat(states: dict[str, str]) -> str:
    rows = [STAT_HEADER, stat_row("kube-apiserver", "FRONTEND", "OPEN")]
    for server, status in states.items():
        check = "L7OK" if status == "UP" else "L4CON"
        desc = "HTTP status check returned code <200>" if status == "UP" else "Connection refused"
        rows.append(stat_row("kube-apiserver", server, status, check, desc))
    rows.append(stat_row("kube-apiserver", "BACKEND", "UP" if "UP" in states.values() else "DOWN"))
    return "\n".join(rows) + "\n\n"


def etcd_status(name: str, leader: int = MEMBER_IDS["dcp1"], db: int = 20480) -> dict:
    return {"rc": 0, "out": json.dumps([{"Endpoint": f"https://{CLUSTER.node(name).address}:2379",
                                         "Status": {"header": {"cluster_id": 99, "member_id": MEMBER_IDS[name],
                                                               "revision": 42, "raft_term": 3},
                                                    "version": "3.4.23", "dbSize": db, "leader": leader,
                                                    "raftIndex": 77, "raftTerm": 3}}])}


def batch_of(scenario: dict) -> dict:
    """What KUBE_SCRIPT prints for a scenario (the same file the kubectl stand-in replays)."""
    out = {k: {"rc": 0, "out": json.dumps(scenario[k]), "err": ""}
           for k in ("nodes", "pods", "daemonsets", "events")}
    for key, text in scenario.get("logs", {}).items():
        out[f"logs/{key}"] = {"rc": 0, "out": text, "err": ""}
    for key, text in scenario.get("describe", {}).items():
        out[f"describe/{key}"] = {"rc": 0, "out": text, "err": ""}
    return out


def scenario(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def healthy_view(kube_side: str | None = "healthy") -> doctor.View:
    ctx = ph.Context(CLUSTER, dict(SECRETS), {})
    for n in CLUSTER.nodes:
        units = doctor.units_for(CLUSTER, n)
        files = {}
        for phase in ph.ALL:
            if n in phase.hosts(CLUSTER):
                files.update({i.path: i.sha256 for i in ctx.files(phase, n)})
                files[phase.stamp_path] = "0" * 64
        cmds = {}
        if n in CLUSTER.etcd_members:
            cmds[doctor.ETCD_STATUS] = etcd_status(n.name)
            cmds[doctor.ETCD_ALARMS] = {"rc": 0, "out": ""}
        if n in CLUSTER.control_planes:
            cmds[kube.API] = {"rc": 0, "out": "ok"}
        if n in CLUSTER.kube_nodes:
            cmds[doctor.KUBELET_LOG] = {"rc": 0, "out": "I0602 09:00:00.000000 1 server.go:1] started"}
            cmds[doctor.SANDBOX] = {"rc": 0, "out": CLUSTER.sandbox_image}
        addresses = [f"{n.address}/24"] + ([f"{CLUSTER.api_vip}/24"] if n.name == "dlb1" else [])
        ctx.facts[n.name] = Facts(
            n.name, hostname=n.name, init="systemd", clock=1000.0, controller_clock=1000.2,
            interfaces={"host0": {"mac": "", "addresses": addresses}},
            services={u: {"active": "active", "enabled": "enabled"} for u in units + ["chrony"]},
            files=files, commands=cmds, kernel_features={"br_netfilter": True, "overlay": True},
            marker={"cluster_name": CLUSTER.cluster_name}, leftovers={"/var/lib/etcd/member": True},
            disks={"/": {"total_mb": 10000, "used_pct": 41.0}, "/var/lib": {"total_mb": 10000, "used_pct": 41.0}},
            sysctls={"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"},
            texts={"/etc/resolv.conf": "nameserver 10.90.5.1\n"},
            processes={u: ["S"] for u in units},
            sockets={"haproxy": haproxy_stat({"dcp1": "UP"})} if n in CLUSTER.loadbalancers else {})
    view = doctor.View(CLUSTER, ctx)
    if kube_side:
        view.kube, view.kube_host = doctor.parse_kube(batch_of(scenario(kube_side))), "dcp1"
    return view


def with_facts(view: doctor.View, host: str, **changes) -> doctor.View:
    f = view.ctx.facts[host]
    merged = {}
    for key, value in changes.items():
        old = getattr(f, key)
        merged[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    view.ctx.facts[host] = dataclasses.replace(f, **merged)
    return view


def hits(view: doctor.View) -> set[tuple[str, str, str]]:
    return {(f.severity, f.rule, f.host) for f in doctor.findings(view)}


def test_the_healthy_view_has_no_finding_and_status_says_so():
    view = healthy_view()
    assert doctor.findings(view) == []
    assert doctor.exit_code([]) == 0
    text = "\n".join(doctor.status_lines(view))
    assert "VIP 10.90.5.100: on dlb1" in text
    assert "haproxy dlb1: dcp1 UP" in text and "haproxy dlb2: dcp1 UP" in text
    assert "etcd 3/3 healthy: dcp1 leader v3.4.23" in text and "de2 follower" in text
    assert "nodes cp1 Ready v1.36.4, cp2 Ready v1.36.4, w1 Ready v1.36.4" in text
    assert "system pods not Running/Ready: none" in text
    assert "kube-flannel/kube-flannel-ds 3/3" in text and "kube-system/kube-proxy 3/3" in text


def stopped(unit):
    return {"services": {unit: {"active": "inactive", "enabled": "enabled"}}}


def failed(unit):
    return {"services": {unit: {"active": "failed", "enabled": "enabled"}}}


# (case, host, fact changes, expected {(severity, rule, host)})
HOST_CASES = [
    ("etcd stopped on a member", "de2",
     {**stopped("etcd"), "commands": {doctor.ETCD_STATUS: {"rc": 1, "out": "context deadline exceeded"}}},
     {("error", "etcd-member-down", "de2"), ("warning", "etcd-quorum-at-risk", "-")}),
    ("NOSPACE alarm", "de3",
     {"commands": {doctor.ETCD_ALARMS: {"rc": 0, "out": "memberID:13107 alarm:NOSPACE"}}},
     {("error", "etcd-nospace", "de3")}),
    ("a large etcd database", "de3",
     {"commands": {doctor.ETCD_STATUS: etcd_status("de3", db=1800 << 20)}},
     {("warning", "etcd-db-large", "de3")}),
    ("haproxy stopped on one LB", "dlb2", stopped("haproxy"), {("error", "haproxy-down", "dlb2")}),
    ("keepalived failed", "dlb2", failed("keepalived"), {("error", "keepalived-down", "dlb2")}),
    ("keepalived SIGSTOPped on the VIP holder", "dlb1", {"processes": {"keepalived": ["T"]}},
     {("error", "process-stopped", "dlb1")}),
    ("an API server backend down", "dlb1",
     {"sockets": {"haproxy": haproxy_stat({"dcp1": "DOWN"})}},
     {("error", "haproxy-backend-down", "dlb1")}),
    ("clock 5 s ahead", "de2", {"clock": 1005.5}, {("warning", "clock-skew", "de2")}),
    ("containerd failed (broken config)", "dw1", failed("containerd"),
     {("error", "containerd-down", "dw1")}),
    ("sandbox image missing", "dw1", {"commands": {doctor.SANDBOX: {"rc": 0, "out": ""}}},
     {("warning", "sandbox-image-missing", "dw1")}),
    ("kubelet down", "dw1", failed("kubelet"), {("error", "kubelet-down", "dw1")}),
    ("API server of a built control plane down", "dcp1",
     {"commands": {kube.API: {"rc": 1, "out": "The connection to the server 10.90.5.11:6443 was refused"}}},
     {("error", "apiserver-down", "dcp1")}),
    ("disk 93 % full", "dw1", {"disks": {"/var/lib": {"total_mb": 100, "used_pct": 93.0}}},
     {("error", "disk-full", "dw1")}),
    ("swap on", "dw1", {"swap_mb": 1024}, {("error", "swap-on", "dw1")}),
    ("br_netfilter missing", "dw1",
     {"kernel_features": {"br_netfilter": False}, "sysctls": {"net.bridge.bridge-nf-call-iptables": None}},
     {("error", "br-netfilter-off", "dw1")}),
    ("ip_forward 0", "dcp1", {"sysctls": {"net.ipv4.ip_forward": "0"}},
     {("error", "ip-forward-off", "dcp1")}),
    ("leftover of a foreign install", "dw1",
     {"marker": None, "leftovers": {"/etc/kubernetes/manifests": True}},
     {("warning", "foreign-leftover", "dw1")}),
    ("another cluster's marker", "de3", {"marker": {"cluster_name": "prod"}},
     {("warning", "foreign-leftover", "de3")}),
    ("a config edited by hand", "dw1", {"files": {"/etc/containerd/config.toml": "f" * 64}},
     {("warning", "config-drift", "dw1")}),
    ("unreachable host", "de3", {"reachable": False, "error": "de3: connection timed out"},
     {("error", "host-unreachable", "de3"), ("warning", "etcd-quorum-at-risk", "-")}),
    ("a kube node never built", "dw1",
     {"files": {ph.JOIN_WORKERS.stamp_path: None}, **failed("kubelet")},
     {("info", "not-built", "dw1")}),   # and no kubelet-down: it is not expected to run yet
]


@pytest.mark.parametrize("case,host,changes,expected", HOST_CASES, ids=[c[0] for c in HOST_CASES])
def test_host_side_cases(case, host, changes, expected):
    assert hits(with_facts(healthy_view(), host, **changes)) == expected


def test_vip_on_two_hosts_and_on_none_and_moved():
    view = with_facts(healthy_view(), "dlb2", interfaces={"host0": {"mac": "", "addresses": [
        "10.90.5.6/24", "10.90.5.100/24"]}})
    assert hits(view) == {("error", "vip-on-two-hosts", "dlb1,dlb2")}
    view = with_facts(healthy_view(), "dlb1", interfaces={"host0": {"mac": "", "addresses": ["10.90.5.5/24"]}})
    assert hits(view) == {("error", "vip-on-no-host", "-")}
    view = with_facts(view, "dlb2", interfaces={"host0": {"mac": "", "addresses": [
        "10.90.5.6/24", "10.90.5.100/24"]}})
    found = doctor.findings(view)
    assert [(f.rule, f.host) for f in found] == [("vip-not-on-preferred", "dlb1")]
    assert "moved to dlb2" in found[0].message and "priority 150" in found[0].evidence


def test_quorum_lost_and_no_leader():
    view = healthy_view()
    for h in ("de2", "de3"):
        with_facts(view, h, commands={doctor.ETCD_STATUS: {"rc": 1, "out": "deadline exceeded"}})
    assert ("error", "etcd-quorum-lost", "-") in hits(view)
    view = healthy_view()
    for h in MEMBER_IDS:
        with_facts(view, h, commands={doctor.ETCD_STATUS: etcd_status(h, leader=0)})
    assert hits(view) == {("error", "etcd-no-leader", "dcp1,de2,de3")}


def test_certificates_expiring_and_expired():
    import datetime as dt

    from provisioner.certs import Row

    view = healthy_view()
    now = view.now
    view.cert_rows = [Row("de2", "etcd server (/etc/etcd/pki/server.crt)", not_after=now + dt.timedelta(days=10)),
                      Row("controller", "etcd CA", not_after=now + dt.timedelta(days=3650), ca=True),
                      Row("dcp1", "kubeadm apiserver", not_after=now - dt.timedelta(days=1))]
    found = doctor.findings(view)
    assert [(f.severity, f.rule, f.host) for f in found] == [
        ("error", "cert-expired", "dcp1"), ("warning", "cert-expiring", "de2")]
    assert "expires in 10 days" in found[1].message and "cluster.certs --renew" in found[1].fix
    assert "nearest expiry dcp1: kubeadm apiserver in -1 days" in "\n".join(doctor.status_lines(view))


# kube side: kubectl outputs in upstream formats (tests/data/doctor/*.json)
KUBE_CASES = [
    ("coredns-loop", {("error", "coredns-loop", "cp1"), ("error", "coredns-loop", "cp2")}),
    ("flannel-1-of-3", {("error", "cni-not-ready", "cp2,w1")}),
    ("node-notready", {("error", "node-not-ready", "w1")}),
    ("coredns-pending", {("error", "coredns-pending", "-"), ("error", "node-not-ready", "cp1"),
                         ("error", "node-not-ready", "cp2"), ("error", "node-not-ready", "w1")}),
]


@pytest.mark.parametrize("name,expected", KUBE_CASES, ids=[c[0] for c in KUBE_CASES])
def test_kube_side_cases(name, expected):
    assert hits(healthy_view(name)) == expected


def test_coredns_loop_names_the_local_stub_resolver():
    view = with_facts(healthy_view("coredns-loop"), "dw1",
                      texts={"/etc/resolv.conf": "nameserver 127.0.0.53\noptions edns0\n"})
    f = [f for f in doctor.findings(view) if f.rule == "coredns-loop"][0]
    assert 'plugin/loop: Loop (127.0.0.1:43873 -> :53) detected for zone "."' in f.evidence
    assert "loopback nameserver on dw1 (127.0.0.53)" in f.evidence
    assert "resolvConf" in f.fix and "local stub" in f.cause


def test_flannel_evidence_names_the_pods_and_their_log_error():
    f = doctor.findings(healthy_view("flannel-1-of-3"))[0]
    assert f.message == "CNI kube-flannel/kube-flannel-ds: 1 of 3 pods ready"
    assert "kube-flannel-ds-9zq7c on cp2: CrashLoopBackOff" in f.evidence
    assert "pod cidr not assigned" in f.evidence and "kubectl -n kube-flannel logs" in f.fix


def test_node_notready_evidence_is_its_condition():
    f = doctor.findings(healthy_view("node-notready"))[0]
    assert f.evidence.startswith("Ready: KubeletNotReady: container runtime network not ready")


def test_kube_side_unreadable_is_said_with_why():
    view = healthy_view(None)
    view.kube_why = "no control plane's API answers (dcp1: refused)"
    assert hits(view) == {("warning", "kube-unreadable", "-")}
    assert "kube: not read: no control plane's API answers" in "\n".join(doctor.status_lines(view))
    broken = batch_of(scenario("healthy"))
    broken["events"] = {"rc": 1, "out": "", "err": "Error from server (Forbidden): events is forbidden"}
    k = doctor.parse_kube(broken)
    assert k.errors == {"events": "Error from server (Forbidden): events is forbidden"} and k.nodes


def test_the_probe_reads_every_certificate_the_table_shows():
    """(found in the lab: without the etcd certificates' probe, a 10-day etcd cert was missed)"""
    for n in CLUSTER.etcd_members:
        wanted = {c for p in doctor.PHASES if n in p.hosts(CLUSTER)
                  for c in p.probes(CLUSTER, n).get("certs", [])}
        assert {"/etc/etcd/pki/server.crt", "/etc/etcd/pki/peer.crt"} <= wanted


def test_every_rule_is_one_row_with_text_for_each_column():
    ids = [r.id for r in doctor.RULES]
    assert len(ids) == len(set(ids))
    for r in doctor.RULES:
        assert r.severity in doctor.RANK and r.reads and r.when and r.message and r.cause and r.fix


def test_findings_are_ranked_and_the_exit_code_follows():
    view = with_facts(healthy_view(), "dw1", swap_mb=1, clock=1010.0)
    view = with_facts(view, "dw1", files={ph.JOIN_WORKERS.stamp_path: None})
    found = doctor.findings(view)
    assert [f.severity for f in found] == sorted((f.severity for f in found), key=doctor.RANK.get)
    assert doctor.exit_code(found) == 2
    assert doctor.exit_code([f for f in found if f.severity != "error"]) == 1


def test_haproxy_stat_parse():
    servers = doctor.parse_haproxy_stat(haproxy_stat({"cp1": "UP", "cp2": "DOWN 1/2", "cp3": "MAINT"}))
    assert [(s["server"], s["status"]) for s in servers] == [("cp1", "UP"), ("cp2", "DOWN 1/2"), ("cp3", "MAINT")]


def test_last_error_of_a_kubelet_journal():
    text = ("I0602 09:00:00.1 1 server.go:1] Starting\n"
            "E0602 09:00:01.2 1 run.go:72] \"command failed\" err=\"failed to run Kubelet: running "
            "with swap on is not supported\"\nI0602 09:00:02.3 1 x.go:1] bye\n")
    assert doctor.last_error(text).startswith("E0602 09:00:01.2") and "swap on" in doctor.last_error(text)


# -- the tarball -----------------------------------------------------------------------------------

def test_bundle_redacts_every_secret(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pki = tmp_path / "pki"
    (pki / "etcd").mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    (pki / "etcd" / "peer.key").write_text(key)
    body = "".join(line for line in key.splitlines() if not line.startswith("-----"))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("users:\n- name: admin\n  user:\n    client-key-data: QUJDREVGR0hJSktMTU5PUA==\n")
    view = healthy_view("coredns-loop")
    # secrets where a careless bundle would copy them: a journal, a config diff, a pod log
    keepalived = [i for i in ph.LOADBALANCER.files(view.ctx, CLUSTER.node("dlb1"))
                  if i.path.endswith("keepalived.conf")][0]
    with_facts(view, "dlb1", files={keepalived.path: "e" * 64},
               texts={keepalived.path: keepalived.data.decode().replace("priority 150", "priority 10")},
               commands={doctor.JOURNAL + "keepalived": {"rc": 0, "out": f"auth {SECRETS['vrrp_password']}\n{key}"}})
    view.kube.logs["kube-system/coredns-668d6bf9bc-2xwqv/coredns"] += f"token {SECRETS['bootstrap_token']}\n{key.splitlines()[2]}\n"
    extra = {"configs": {"dlb1": [keepalived]}, "secrets": SECRETS, "pki": pki,
             "kubeconfig": kubeconfig, "seconds": {"total": 1.0}}
    found = doctor.findings(view)
    target = doctor.bundle(view, found, extra, tmp_path / "out", doctor.status_lines(view))
    assert target.stat().st_mode & 0o777 == 0o600
    text = doctor.tar_text(target)
    for secret in [*SECRETS.values(), key.strip(), body, "QUJDREVGR0hJSktMTU5PUA==", "PRIVATE KEY"]:
        assert secret not in text
    for line in key.splitlines():
        if not line.startswith("-----"):
            assert line not in text
    assert REDACTED in text
    with tarfile.open(target) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    assert {"findings.txt", "status.txt", "hosts/dlb1/config.diff", "hosts/dlb1/journal-keepalived.log",
            "kube/pods.json", "kube/describe/kube-system_coredns-668d6bf9bc-2xwqv.txt",
            "kube/logs/kube-system_coredns-668d6bf9bc-2xwqv_coredns.log", "versions.txt", "disk.txt",
            "memory.txt", "clocks.txt"} <= names
    diff = doctor.tar_text(target).split("rendered/etc/keepalived/keepalived.conf")[1]
    assert "-    priority 150" in diff and "+    priority 10" in diff


# -- the kube batch script and the stand-in replaying a scenario ------------------------------------

def test_kube_script_against_the_kubectl_stand_in(tmp_path):
    """KUBE_SCRIPT run for real, with the kubectl stand-in replaying coredns-loop.json."""
    from tests.standins import make_standin_bundle
    from provisioner import bundle as bundles

    folder = make_standin_bundle(tmp_path / "b", CLUSTER, runtime=False) / bundles.folder_name(CLUSTER)
    root = tmp_path / "root"
    (root / "etc/standin").mkdir(parents=True)
    (root / "etc/standin/kube-scenario.json").write_text((DATA / "coredns-loop.json").read_text())
    (root / "etc/kubernetes").mkdir(parents=True)
    (root / "etc/kubernetes/admin.conf").write_text("clusters: [{cluster: {server: 'https://10.90.5.100:6443'}}]\n")
    env = {"STANDIN_ROOT": str(root), "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, str(folder / "kubectl"), "--kubeconfig", "/etc/kubernetes/admin.conf"]
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-", json.dumps(argv), "1", json.dumps(doctor.SYSTEM_NAMESPACES)],
        input=doctor.KUBE_SCRIPT, capture_output=True, text=True, env=env, timeout=120)
    # no API on this node (the kubeadm stand-in never ran): refused, like kubectl
    r = run()
    batch = json.loads(r.stdout)
    assert batch["nodes"]["rc"] == 1 and "was refused" in batch["nodes"]["err"]
    # the kubeadm stand-in's record says the API answers here
    (root / "var/lib/standin").mkdir(parents=True)
    (root / "var/lib/standin/kubeadm-state.json").write_text(json.dumps(
        {"node": "cp1", "role": "control-plane", "steps": {"init": ["preflight", "certs", "kubeconfig",
         "etcd", "control-plane", "kubelet-start", "wait-control-plane"]}}))
    (root / "etc/kubernetes/manifests").mkdir(parents=True)
    (root / "etc/kubernetes/manifests/kube-apiserver.yaml").write_text("kind: Pod\n")
    (root / "run/standin/active").mkdir(parents=True)
    (root / "run/standin/active/kubelet").write_text("")
    r = run()
    batch = json.loads(r.stdout)
    assert batch["nodes"]["rc"] == 0, batch["nodes"]
    k = doctor.parse_kube(batch)
    assert not k.errors and len(k.nodes) == 3
    assert set(k.logs) == {"kube-system/coredns-668d6bf9bc-2xwqv/coredns",
                           "kube-system/coredns-668d6bf9bc-r7hzn/coredns"}
    assert "Loop (127.0.0.1:43873 -> :53) detected" in k.logs["kube-system/coredns-668d6bf9bc-2xwqv/coredns"]
    assert "CrashLoopBackOff" in k.describe["kube-system/coredns-668d6bf9bc-2xwqv"]
