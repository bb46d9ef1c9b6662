"""`invoke cluster.status` and `invoke cluster.doctor`: what the cluster is, and why it is broken.

    read    one facts probe per host (provisioner/probe.py, the phases' own probes plus what
            `extras` asks: etcdctl status/alarms/members, haproxy's stats socket, disks, sysctls,
            process states, kubelet journal; doctor also journals and on-node configs), then
            ONE kubectl batch (KUBE_SCRIPT, a python3 program) on the first control plane whose
            API answers: nodes, pods, DaemonSets, events, logs (and describe) of failing pods
    rules   RULES: one row per rule (id, severity, component, what it reads, when it fires,
            message, likely cause, fix), each with a small function that yields its hits
    report  status: one screen; doctor: findings ranked error > warning > info, and a tarball
            (`bundle`) with every secret value redacted

Everything here only reads: the shared lock, no change on any host.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import json
import re
import shlex
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from . import actions, certs, etcd, paths, phases as ph
from .model import Cluster, Node
from .phases import kube
from .render import keepalived_priority
from .runner import REDACTED, Redactor

ERROR, WARNING, INFO = "error", "warning", "info"
RANK = {ERROR: 0, WARNING: 1, INFO: 2}
# what the probe reads for: every phase's end state, and the certificate table's sources
PHASES = ph.ALL + (ph.REISSUE_ETCD_CERTS, ph.CERTS)

# probe command names (facts.commands)
ETCD_STATUS, ETCD_ALARMS, ETCD_MEMBERS = "doctor-etcd-status", "doctor-etcd-alarms", "doctor-etcd-members"
KUBELET_LOG, SANDBOX = "doctor-kubelet-log", "doctor-sandbox-image"
JOURNAL = "journal-"   # + unit: the last hour (doctor only)
SYSCTLS = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables")
DISKS = ("/", "/var/lib", "/var/lib/containerd", "/var/lib/etcd", "/var/log")
PROCESSES = ("etcd", "haproxy", "keepalived", "containerd", "kubelet")
HAPROXY_BACKEND = "kube-apiserver"
SYSTEM_NAMESPACES = ("kube-system", "kube-flannel", "calico-system", "tigera-operator")
CNI_DAEMONSETS = ("kube-flannel-ds", "calico-node")
DISK_LIMIT, SKEW_LIMIT, CERT_DAYS = 90.0, 2.0, certs.WARN_DAYS
ETCD_DB_WARN = 1.6 * (1 << 30)   # 80 % of etcd's default 2 GiB quota
JOURNAL_LIMIT = 512 * 1024       # characters of one unit's journal kept (the newest)


# -- what to read ------------------------------------------------------------------------------

def units_for(c: Cluster, node: Node) -> list[str]:
    """The systemd units this host's roles run (kubelet / k3s only once the node is built:
    see `expected_units`)."""
    out = []
    if node in c.runtime_nodes:
        out.append("containerd")
    if node in c.etcd_members and etcd.kind(c) == etcd.EXTERNAL:
        out.append("etcd")
    if node in c.lb_nodes:
        out += [u for u in c.lb_units]
    if node in c.kube_nodes:
        out.append(("k3s" if node.has("control_plane") else "k3s-agent") if c.is_k3s else "kubelet")
    return out


def etcd_read(c: Cluster) -> bool:
    return etcd.kind(c) != etcd.K3S


def extras(c: Cluster, node: Node, deep: bool = False, config_paths: Iterable[str] = ()) -> dict:
    """What the probe reads on `node` for status (and, with deep, for doctor's tarball)."""
    cmds: dict = {}
    more: dict = {"disks": list(DISKS), "sysctls": list(SYSCTLS), "texts": ["/etc/resolv.conf"],
                  "processes": list(PROCESSES)}
    if node in etcd.members(c) and etcd_read(c):
        cmds[ETCD_STATUS] = {**etcd.read(c, node, "endpoint", "status", "-w", "json"),
                             "stderr": "stdout"}   # its error says why a member is down
        cmds[ETCD_ALARMS] = etcd.read(c, node, "alarm", "list")
        cmds[ETCD_MEMBERS] = etcd.read(c, node, "member", "list", "-w", "json")
    if node in c.lb_nodes and "haproxy" in c.lb_units:
        more["sockets"] = {"haproxy": {"path": paths.HAPROXY_STATS_SOCKET, "send": "show stat\n"}}
    if node in c.kube_nodes:
        unit = units_for(c, node)[-1]
        cmds[KUBELET_LOG] = {"argv": ["journalctl", "-u", unit, "-n", "200", "--no-pager", "-o",
                                      "cat"], "limit": 32000, "tail": True}
    if node in c.runtime_nodes:
        cmds[SANDBOX] = ["ctr", "-n", "k8s.io", "images", "ls", "-q", f"name=={c.sandbox_image}"]
    if deep:
        for unit in units_for(c, node) + ["chrony"]:
            cmds[JOURNAL + unit] = {"argv": ["journalctl", "-u", unit, "--since", "-1h",
                                             "--no-pager", "-o", "short-iso"],
                                    "limit": JOURNAL_LIMIT, "tail": True, "timeout": 20}
        more["texts"] = more["texts"] + sorted(config_paths)
    return {"commands": cmds, **more}


def config_items(ctx: ph.Context, node: Node) -> list[ph.Item]:
    """Managed files worth a diff: small text configs, never a key or a certificate."""
    out = []
    for phase in ph.ALL:
        if node not in phase.hosts(ctx.cluster):
            continue
        for i in ctx.files(phase, node):
            if (i.path.endswith((".key", ".crt", ".pem")) or b"PRIVATE KEY" in i.data
                    or len(i.data) > 64 * 1024 or b"\0" in i.data):
                continue
            out.append(i)
    return out


# -- the kube side: one batch of kubectl calls on one control plane ----------------------------

# Runs on the control plane as `python3 - KUBECTL_ARGV_JSON DEEP`: the lists, then for each
# failing pod of a system namespace its logs (the previous run when it restarted) and, with
# DEEP, `describe`. Prints one JSON document {name: {rc, out, err}}. Standard library only.
KUBE_SCRIPT = r'''
import json, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
KUBECTL, DEEP, SYSTEM = json.loads(sys.argv[1]), sys.argv[2] == "1", json.loads(sys.argv[3])
def run(args, timeout=30):
    try:
        p = subprocess.run(KUBECTL + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=timeout)
        return {"rc": p.returncode, "out": p.stdout.decode("utf-8", "replace"),
                "err": p.stderr.decode("utf-8", "replace")[-2000:]}
    except subprocess.TimeoutExpired:
        return {"rc": None, "out": "", "err": "timed out after %d s" % timeout}
    except OSError as e:
        return {"rc": 127, "out": "", "err": str(e)}
LISTS = {"nodes": ["get", "nodes", "-o", "json"], "pods": ["get", "pods", "-A", "-o", "json"],
         "daemonsets": ["get", "daemonsets", "-A", "-o", "json"],
         "events": ["get", "events", "-A", "-o", "json"]}
with ThreadPoolExecutor(4) as pool:
    out = dict(zip(LISTS, pool.map(run, LISTS.values())))
    try:
        pods = json.loads(out["pods"]["out"])["items"]
    except (ValueError, KeyError, TypeError):
        pods = []
    todo = {}
    for p in pods:
        ns, name = p["metadata"].get("namespace", ""), p["metadata"]["name"]
        st = p.get("status") or {}
        statuses = st.get("containerStatuses") or []
        if ns not in SYSTEM or (st.get("phase") in ("Running", "Succeeded")
                                and all(c.get("ready") for c in statuses)):
            continue
        for c in statuses:
            if not c.get("ready"):
                prev = ["--previous"] if c.get("restartCount") and "running" not in (c.get("state") or {}) else []
                todo["logs/%s/%s/%s" % (ns, name, c["name"])] = ["logs", "-n", ns, name, "-c", c["name"], "--tail", "50"] + prev
        if DEEP:
            todo["describe/%s/%s" % (ns, name)] = ["describe", "pod", "-n", ns, name]
    out.update(zip(todo, pool.map(run, todo.values())))
print(json.dumps(out))
'''.strip()


@dataclass
class Kube:
    """The kube side as read through kubectl, parsed from upstream JSON lists."""

    nodes: list = field(default_factory=list)       # {name, ready, version, reason, message, pressure}
    pods: list = field(default_factory=list)        # {ns, name, node, phase, ready, restarts, reason, message, owner, containers}
    daemonsets: list = field(default_factory=list)  # {ns, name, desired, ready}
    events: list = field(default_factory=list)      # {ns, kind, name, type, reason, message, count}
    logs: dict = field(default_factory=dict)        # "ns/pod/container" -> text
    describe: dict = field(default_factory=dict)    # "ns/pod" -> text
    errors: dict = field(default_factory=dict)      # list or call -> why it could not be read
    raw: dict = field(default_factory=dict)         # list name -> kubectl's JSON text


def _items(batch: dict, name: str, errors: dict) -> list:
    r = batch.get(name) or {}
    if r.get("rc") != 0:
        errors[name] = (r.get("err") or r.get("out") or f"exit {r.get('rc')}").strip()[-300:]
        return []
    try:
        return json.loads(r["out"]).get("items") or []
    except (ValueError, AttributeError, TypeError) as e:
        errors[name] = f"not JSON: {e}"
        return []


def pod_state(p: dict) -> dict:
    meta, st = p.get("metadata") or {}, p.get("status") or {}
    statuses = st.get("containerStatuses") or []
    reason, message = "", ""
    for c in statuses:
        for key in ("waiting", "terminated"):
            s = (c.get("state") or {}).get(key)
            if s and not c.get("ready"):
                reason, message = s.get("reason", ""), s.get("message", "")
                break
        if reason:
            break
    if not reason and st.get("phase") == "Pending":
        sched = [c for c in st.get("conditions") or [] if c.get("type") == "PodScheduled"
                 and c.get("status") == "False"]
        reason = sched[0].get("reason", "Pending") if sched else "Pending"
        message = sched[0].get("message", "") if sched else ""
    owner = (meta.get("ownerReferences") or [{}])[0]
    ready = st.get("phase") in ("Running", "Succeeded") and bool(statuses) and all(
        c.get("ready") for c in statuses)
    return {"ns": meta.get("namespace", ""), "name": meta.get("name", ""),
            "node": (p.get("spec") or {}).get("nodeName") or "", "phase": st.get("phase", ""),
            "ready": ready, "restarts": sum(int(c.get("restartCount") or 0) for c in statuses),
            "reason": reason, "message": message,
            "owner": f"{owner.get('kind', '')}/{owner.get('name', '')}",
            "containers": [c.get("name", "") for c in statuses]}


def node_state(n: dict) -> dict:
    conds = {c.get("type"): c for c in (n.get("status") or {}).get("conditions") or []}
    ready = conds.get("Ready", {})
    return {"name": (n.get("metadata") or {}).get("name", ""),
            "ready": ready.get("status") == "True",
            "version": ((n.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", ""),
            "reason": ready.get("reason", "no Ready condition"), "message": ready.get("message", ""),
            "pressure": sorted(t for t, c in conds.items() if t != "Ready" and c.get("status") == "True")}


def parse_kube(batch: dict) -> Kube:
    """A Kube from KUBE_SCRIPT's output ({name: {rc, out, err}})."""
    k = Kube()
    k.nodes = [node_state(n) for n in _items(batch, "nodes", k.errors)]
    k.pods = [pod_state(p) for p in _items(batch, "pods", k.errors)]
    for d in _items(batch, "daemonsets", k.errors):
        st = d.get("status") or {}
        k.daemonsets.append({"ns": d["metadata"].get("namespace", ""), "name": d["metadata"]["name"],
                             "desired": int(st.get("desiredNumberScheduled") or 0),
                             "ready": int(st.get("numberReady") or 0)})
    for e in _items(batch, "events", k.errors):
        obj = e.get("involvedObject") or {}
        k.events.append({"ns": obj.get("namespace", ""), "kind": obj.get("kind", ""),
                         "name": obj.get("name", ""), "type": e.get("type", ""),
                         "reason": e.get("reason", ""), "message": e.get("message", ""),
                         "count": e.get("count") or 1})
    for key, r in batch.items():
        kind, _, rest = key.partition("/")
        if kind in ("logs", "describe"):
            if r.get("rc") == 0:
                getattr(k, kind)[rest] = r.get("out", "")
            else:
                k.errors[key] = (r.get("err") or "").strip()[-300:]
    k.raw = {n: (batch.get(n) or {}).get("out", "") for n in ("nodes", "pods", "daemonsets", "events")}
    return k


def kube_source(ctx: ph.Context) -> tuple[Node | None, str]:
    """The first control plane whose API answers, or (None, why none)."""
    c = ctx.cluster
    why = []
    for n in c.control_planes:
        f = ctx.facts.get(n.name)
        if f is None or not f.reachable:
            why.append(f"{n.name} unreachable")
            continue
        name = kube.NODE if c.is_k3s else kube.API
        if ctx.ok(n, name):
            return n, ""
        out = (ctx.command(n, name).get("out") or "no answer").strip().splitlines()
        why.append(f"{n.name}: {out[-1][:160] if out else 'no answer'}")
    return None, "no control plane's API answers (" + "; ".join(why) + ")"


def read_kube(run: actions.Run, deep: bool) -> tuple[Kube | None, str, str]:
    """(Kube, host it was read on, why not) through one kubectl batch."""
    node, why = kube_source(run.ctx)
    if node is None:
        return None, "", why
    argv = ph.kubectl(run.cluster)
    cmd = "python3 - " + " ".join(shlex.quote(a) for a in (
        json.dumps(argv), "1" if deep else "0", json.dumps(SYSTEM_NAMESPACES)))
    r = run.pool.run(cmd, hosts=[node.name], stdin=KUBE_SCRIPT, timeout=120)[node.name]
    if r.rc != 0:
        return None, node.name, f"{node.name}: kubectl batch failed: {(r.error or r.stderr or '').strip()[-300:]}"
    try:
        batch = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        return None, node.name, f"{node.name}: kubectl batch printed no JSON ({e})"
    return parse_kube(batch), node.name, ""


# -- the view the rules read ---------------------------------------------------------------------

@dataclass
class View:
    cluster: Cluster
    ctx: ph.Context
    kube: Kube | None = None
    kube_host: str = ""
    kube_why: str = ""          # why the kube side could not be read
    cert_rows: list = field(default_factory=list)
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    @property
    def facts(self) -> dict:
        return self.ctx.facts

    def up(self, node: Node) -> bool:
        f = self.facts.get(node.name)
        return f is not None and f.reachable

    def built(self, node: Node) -> bool:
        """The node finished its kube phase once (its kubelet / k3s is expected to run)."""
        return any(p.completed_once(self.ctx, node) for p in
                   (ph.CONTROL_PLANE, ph.JOIN_CONTROL_PLANE, ph.JOIN_WORKERS)
                   if node in p.hosts(self.cluster))

    def expected_units(self, node: Node) -> list[str]:
        kube_units = ("kubelet", "k3s", "k3s-agent")
        return [u for u in units_for(self.cluster, node)
                if u not in kube_units or self.built(node)]

    def unit(self, node: Node, unit: str) -> str:
        return self.facts[node.name].services.get(unit, {}).get("active", "unknown")

    def cmd(self, node: Node, name: str) -> dict:
        return self.ctx.command(node, name)

    def etcd_status(self, node: Node) -> dict | None:
        r = self.cmd(node, ETCD_STATUS)
        if r.get("rc") != 0:
            return None
        try:
            s = json.loads(r["out"][r["out"].index("["):])[0]["Status"]
            return {"member_id": int(s["header"]["member_id"]), "leader": int(s.get("leader") or 0),
                    "db_size": int(s.get("dbSize") or 0), "version": s.get("version", ""),
                    "errors": s.get("errors") or []}
        except (ValueError, LookupError, TypeError):
            return None

    def alarms(self, node: Node) -> list[str]:
        r = self.cmd(node, ETCD_ALARMS)
        return re.findall(r"alarm:(\w+)", r.get("out") or "") if r.get("rc") == 0 else []

    def vip_holders(self) -> list[str]:
        vip = self.cluster.api_vip
        return [n.name for n in self.cluster.lb_nodes + self.cluster.control_planes
                if vip and self.up(n) and vip in self.facts[n.name].addresses] if vip else []

    def haproxy(self, node: Node) -> list[dict] | None:
        text = (self.facts[node.name].sockets or {}).get("haproxy")
        return parse_haproxy_stat(text) if text else None


def parse_haproxy_stat(text: str) -> list[dict]:
    """Servers of the kube-apiserver backend from `show stat` (CSV with a '# ' header)."""
    lines = text.lstrip("# ").splitlines()
    out = []
    for row in csv.DictReader(lines):
        if row.get("pxname") == HAPROXY_BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND"):
            out.append({"server": row["svname"], "status": row.get("status", ""),
                        "check": row.get("check_status", ""), "desc": row.get("last_chk", "")})
    return out


def last_error(text: str) -> str:
    """The last line of a journal that looks like an error (klog E..., level=error, failed)."""
    for line in reversed((text or "").splitlines()):
        if re.match(r"^E\d{4} ", line) or re.search(r"level=(error|fatal)|\berror\b|\bfailed\b",
                                                     line, re.I):
            return line.strip()[:300]
    return ""


def loopback_resolvers(view: View) -> list[str]:
    out = []
    for n in view.cluster.kube_nodes:
        text = (view.facts[n.name].texts or {}).get("/etc/resolv.conf") if view.up(n) else None
        servers = re.findall(r"^\s*nameserver\s+(\S+)", text or "", re.M)
        local = [s for s in servers if s.startswith("127.") or s == "::1"]
        if local:
            out.append(f"{n.name} ({', '.join(local)})")
    return out


# -- the rules: one row each ---------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    component: str
    reads: str          # what it looks at
    when: str           # when it fires
    message: str        # format fields: host and whatever `fires` yields
    cause: str
    fix: str
    fires: Callable[[View], Iterable[dict]]


@dataclass
class Finding:
    severity: str
    rule: str
    host: str
    component: str
    message: str
    evidence: str
    cause: str
    fix: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def reachable(view: View) -> Iterable[dict]:
    for n in view.cluster.nodes:
        if not view.up(n):
            yield {"host": n.name, "evidence": view.facts[n.name].error or "no answer"}


def unit_down(unit: str) -> Callable[[View], Iterable[dict]]:
    def fires(view: View) -> Iterable[dict]:
        for n in view.cluster.nodes:
            if view.up(n) and unit in view.expected_units(n) and view.unit(n, unit) != "active":
                journal = view.cmd(n, KUBELET_LOG).get("out", "") if unit in ("kubelet", "k3s", "k3s-agent") else ""
                why = last_error(journal)
                yield {"host": n.name, "unit": unit, "state": view.unit(n, unit),
                       "evidence": f"systemd: {unit} {view.unit(n, unit)}"
                       + (f"; last journal error: {why}" if why else "")}
    return fires


def stopped_processes(view: View) -> Iterable[dict]:
    for n in view.cluster.nodes:
        if not view.up(n):
            continue
        for unit in view.expected_units(n):
            states = (view.facts[n.name].processes or {}).get(unit) or []
            if view.unit(n, unit) == "active" and "T" in states:
                yield {"host": n.name, "unit": unit,
                       "evidence": f"systemd: {unit} active; /proc: process state(s) {''.join(states)} (T = stopped)"}


def etcd_down(view: View) -> Iterable[dict]:
    if not etcd_read(view.cluster):
        return
    for n in etcd.members(view.cluster):
        if not view.up(n):
            continue
        r = view.cmd(n, ETCD_STATUS)
        if r.get("rc") != 0 or view.etcd_status(n) is None:
            out = (r.get("out") or "no answer").strip().splitlines()
            unit = (f"systemd: etcd {view.unit(n, 'etcd')}; "
                    if etcd.kind(view.cluster) == etcd.EXTERNAL else "")
            yield {"host": n.name, "evidence": f"{unit}etcdctl endpoint status: "
                   f"{out[-1][:200] if out else 'timed out'}"}


def etcd_healthy(view: View) -> list[Node]:
    return [n for n in etcd.members(view.cluster) if view.up(n) and view.etcd_status(n)]


def etcd_no_leader(view: View) -> Iterable[dict]:
    healthy = etcd_healthy(view)
    leaders = {view.etcd_status(n)["leader"] for n in healthy}
    if healthy and (leaders == {0} or len(leaders) > 1):
        yield {"host": ",".join(n.name for n in healthy),
               "evidence": "leaders reported: " + ", ".join(
                   f"{n.name}: {view.etcd_status(n)['leader']:x}" for n in healthy)}


def etcd_nospace(view: View) -> Iterable[dict]:
    for n in etcd_healthy(view):
        if "NOSPACE" in view.alarms(n):
            yield {"host": n.name, "evidence": "etcdctl alarm list: " + " ".join(view.alarms(n)),
                   "address": n.address}


def etcd_quorum(lost: bool) -> Callable[[View], Iterable[dict]]:
    def fires(view: View) -> Iterable[dict]:
        if not etcd_read(view.cluster):
            return
        members = etcd.members(view.cluster)
        healthy = etcd_healthy(view)
        quorum = len(members) // 2 + 1
        if (len(healthy) < quorum) if lost else (len(members) > 1 and len(healthy) == quorum
                                                 and len(healthy) < len(members)):
            yield {"host": "-", "healthy": len(healthy), "members": len(members), "quorum": quorum,
                   "evidence": "healthy: " + (", ".join(n.name for n in healthy) or "none")}
    return fires


def etcd_db_large(view: View) -> Iterable[dict]:
    for n in etcd_healthy(view):
        size = view.etcd_status(n)["db_size"]
        if size > ETCD_DB_WARN:
            yield {"host": n.name, "evidence": f"dbSize {size / (1 << 20):.0f} MiB",
                   "address": n.address}


def vip_none(view: View) -> Iterable[dict]:
    c = view.cluster
    if c.ha_mode in ("haproxy", "kube-vip") and c.api_vip and not view.vip_holders():
        yield {"host": "-", "vip": c.api_vip, "evidence": "no reachable host has " + c.api_vip}


def vip_two(view: View) -> Iterable[dict]:
    holders = view.vip_holders()
    if len(holders) > 1:
        yield {"host": ",".join(holders), "vip": view.cluster.api_vip,
               "evidence": f"{view.cluster.api_vip} is on {', '.join(holders)}"}


def vip_moved(view: View) -> Iterable[dict]:
    c = view.cluster
    holders = view.vip_holders()
    if c.ha_mode != "haproxy" or len(holders) != 1:
        return
    best = max(c.loadbalancers, key=lambda n: keepalived_priority(c, n))
    if holders[0] != best.name:
        yield {"host": best.name, "holder": holders[0], "vip": c.api_vip,
               "evidence": f"{c.api_vip} on {holders[0]} (priority "
               f"{keepalived_priority(c, c.node(holders[0]))}), not on {best.name} (priority "
               f"{keepalived_priority(c, best)}); {best.name}: haproxy "
               f"{view.unit(best, 'haproxy') if view.up(best) else 'unreachable'}, keepalived "
               f"{view.unit(best, 'keepalived') if view.up(best) else 'unreachable'}"}


def backend_down(view: View) -> Iterable[dict]:
    for n in view.cluster.nodes:
        if not view.up(n) or view.unit(n, "haproxy") != "active":
            continue
        servers = view.haproxy(n) or []
        for s in servers:
            if not s["status"].startswith("UP") and s["status"] != "no check":
                yield {"host": n.name, "server": s["server"],
                       "address": view.cluster.node(s["server"]).address
                       if s["server"] in {x.name for x in view.cluster.nodes} else s["server"],
                       "evidence": f"haproxy stats: {s['server']} {s['status']} "
                       f"(check {s['check'] or '-'} {s['desc']})".strip()}


def cert_rows(expired: bool) -> Callable[[View], Iterable[dict]]:
    def fires(view: View) -> Iterable[dict]:
        for r in view.cert_rows:
            days = r.days_left(view.now)
            if days is None or (days > 0) == expired or (not expired and days >= CERT_DAYS):
                continue
            yield {"host": r.where, "name": r.name, "days": f"{days:.0f}",
                   "evidence": f"{r.name}: not after {r.expires_text} ({days:.1f} days)"
                   + (" (a CA: rotation is out of scope)" if r.ca else "")}
    return fires


def clock_skew(view: View) -> Iterable[dict]:
    for n in view.cluster.nodes:
        if view.up(n) and abs(view.facts[n.name].skew) > SKEW_LIMIT:
            yield {"host": n.name, "skew": f"{view.facts[n.name].skew:+.1f}",
                   "evidence": f"host clock {view.facts[n.name].skew:+.1f} s from the controller's; "
                   f"chrony {view.unit(n, 'chrony')}"}


def sandbox_missing(view: View) -> Iterable[dict]:
    for n in view.cluster.runtime_nodes:
        if view.up(n) and view.unit(n, "containerd") == "active":
            r = view.cmd(n, SANDBOX)
            if r.get("rc") == 0 and not (r.get("out") or "").strip():
                yield {"host": n.name, "image": view.cluster.sandbox_image,
                       "evidence": f"ctr -n k8s.io images ls: no {view.cluster.sandbox_image}"}


def api_down(view: View) -> Iterable[dict]:
    c = view.cluster
    for n in c.control_planes:
        if c.is_k3s or not view.up(n) or not view.built(n) or view.ctx.ok(n, kube.API):
            continue
        out = (view.cmd(n, kube.API).get("out") or "no answer").strip().splitlines()
        yield {"host": n.name, "evidence": f"kubectl get --raw /readyz: {out[-1][:200]}"}


def kube_unread(view: View) -> Iterable[dict]:
    if view.kube is None and any(view.built(n) for n in view.cluster.control_planes):
        yield {"host": view.kube_host or "-", "evidence": view.kube_why}
    elif view.kube is not None and view.kube.errors:
        yield {"host": view.kube_host, "evidence": "; ".join(
            f"{k}: {v.splitlines()[-1] if v else '?'}" for k, v in sorted(view.kube.errors.items()))}


def nodes_not_ready(view: View) -> Iterable[dict]:
    for n in (view.kube.nodes if view.kube else []):
        if not n["ready"]:
            yield {"host": n["name"], "evidence": f"Ready: {n['reason']}: {n['message']}"
                   + (f"; also {', '.join(n['pressure'])}" if n["pressure"] else "")}


def is_coredns(p: dict) -> bool:
    return p["ns"] == "kube-system" and p["name"].startswith("coredns-")


def is_cni(p: dict) -> bool:
    return p["owner"].split("/")[-1] in CNI_DAEMONSETS


def pod_log(view: View, p: dict) -> str:
    return "\n".join(t for k, t in view.kube.logs.items() if k.startswith(f"{p['ns']}/{p['name']}/"))


LOOP = re.compile(r"plugin/loop: Loop \(.*?\) detected[^\n]*")


def coredns_loop(view: View) -> Iterable[dict]:
    for p in (view.kube.pods if view.kube else []):
        if is_coredns(p) and p["reason"] == "CrashLoopBackOff" and LOOP.search(pod_log(view, p)):
            local = loopback_resolvers(view)
            yield {"host": p["node"], "pod": p["name"],
                   "evidence": f"{p['name']} CrashLoopBackOff ({p['restarts']} restarts); log: "
                   f"{LOOP.search(pod_log(view, p)).group(0)[:200]}"
                   + (f"; /etc/resolv.conf with a loopback nameserver on {', '.join(local)}"
                      if local else "")}


def coredns_pending(view: View) -> Iterable[dict]:
    k = view.kube
    if not k:
        return
    cni = [d for d in k.daemonsets if d["name"] in CNI_DAEMONSETS]
    for p in k.pods:
        if is_coredns(p) and p["phase"] == "Pending":
            no_net = [n["name"] for n in k.nodes if "NetworkPluginNotReady" in n["message"]
                      or "cni plugin not initialized" in n["message"]]
            yield {"host": "-", "pod": p["name"],
                   "evidence": f"{p['name']} Pending: {p['reason']}: {p['message'][:160]}; "
                   + (f"CNI DaemonSets: {', '.join(d['name'] + ' ' + str(d['ready']) + '/' + str(d['desired']) for d in cni)}"
                      if cni else "no CNI DaemonSet")
                   + (f"; network not ready on {', '.join(no_net)}" if no_net else "")}


def cni_not_ready(view: View) -> Iterable[dict]:
    k = view.kube
    for d in (k.daemonsets if k else []):
        if d["name"] in CNI_DAEMONSETS and d["ready"] < d["desired"]:
            bad = [p for p in k.pods if p["owner"].endswith("/" + d["name"]) and not p["ready"]]
            detail = "; ".join(f"{p['name']} on {p['node']}: {p['reason'] or p['phase']}"
                               + (f" ({last_error(pod_log(view, p))[:160]})"
                                  if last_error(pod_log(view, p)) else "") for p in bad)
            yield {"host": ",".join(p["node"] for p in bad) or "-", "ds": f"{d['ns']}/{d['name']}",
                   "ready": d["ready"], "desired": d["desired"],
                   "evidence": f"{d['ns']}/{d['name']} {d['ready']}/{d['desired']} ready"
                   + (f"; {detail}" if detail else "")}


def daemonset_not_ready(view: View) -> Iterable[dict]:
    k = view.kube
    for d in (k.daemonsets if k else []):
        if d["name"] not in CNI_DAEMONSETS and d["ready"] < d["desired"]:
            yield {"host": "-", "ds": f"{d['ns']}/{d['name']}",
                   "evidence": f"{d['ns']}/{d['name']} {d['ready']}/{d['desired']} ready"}


def pods_failing(view: View) -> Iterable[dict]:
    """Failing system pods no more specific rule names (CNI pods, CoreDNS loop / Pending)."""
    k = view.kube
    for p in (k.pods if k else []):
        if p["ns"] not in SYSTEM_NAMESPACES or p["ready"] or p["phase"] == "Succeeded" or is_cni(p):
            continue
        if is_coredns(p) and (p["phase"] == "Pending" or LOOP.search(pod_log(view, p))):
            continue
        why = last_error(pod_log(view, p))
        yield {"host": p["node"] or "-", "pod": f"{p['ns']}/{p['name']}", "ns": p["ns"],
               "name": p["name"],
               "evidence": f"{p['ns']}/{p['name']}: {p['phase']} {p['reason']} "
               f"{p['message'][:120]} ({p['restarts']} restarts)".replace("  ", " ")
               + (f"; log: {why}" if why else "")}


def disk_full(view: View) -> Iterable[dict]:
    for n in view.cluster.nodes:
        if not view.up(n):
            continue
        seen = set()
        for path, d in sorted((view.facts[n.name].disks or {}).items()):
            if d and d["used_pct"] > DISK_LIMIT and (d["total_mb"], d["used_pct"]) not in seen:
                seen.add((d["total_mb"], d["used_pct"]))
                yield {"host": n.name, "path": path,
                       "evidence": f"{path}: {d['used_pct']:.0f} % used of {d['total_mb']} MiB"}


def swap_on(view: View) -> Iterable[dict]:
    for n in view.cluster.kube_nodes:
        if view.up(n) and view.facts[n.name].swap_mb > 0:
            yield {"host": n.name, "evidence": f"/proc/swaps: {view.facts[n.name].swap_mb} MiB"}


def sysctl_off(name: str, feature: str = "") -> Callable[[View], Iterable[dict]]:
    def fires(view: View) -> Iterable[dict]:
        for n in view.cluster.kube_nodes:
            if not view.up(n):
                continue
            f = view.facts[n.name]
            value = (f.sysctls or {}).get(name)
            missing = feature and (f.kernel_features or {}).get(feature) is False
            if missing or value not in ("1", None) or (value is None and name in (f.sysctls or {})):
                yield {"host": n.name, "evidence": f"{name} = {value if value is not None else 'absent'}"
                       + (f"; {feature} not loaded" if missing else "")}
    return fires


def foreign_leftovers(view: View) -> Iterable[dict]:
    for n in view.cluster.nodes:
        if not view.up(n):
            continue
        f = view.facts[n.name]
        present = [p for p, there in (f.leftovers or {}).items() if there]
        marker = f.marker or {}
        other = marker.get("cluster_name") not in (None, view.cluster.cluster_name)
        if present and (not marker or other):
            yield {"host": n.name, "evidence": ", ".join(present) + (
                f"; marker says cluster {marker.get('cluster_name')}" if other else
                f"; no {paths.MARKER}")}


def config_drift(view: View) -> Iterable[dict]:
    for n in view.cluster.nodes:
        if not view.up(n):
            continue
        for phase in ph.ALL:
            if n not in phase.hosts(view.cluster) or not phase.completed_once(view.ctx, n):
                continue
            for i in phase.changed(view.ctx, n):
                yield {"host": n.name, "path": i.path, "phase": phase.title,
                       "evidence": f"{i.path}: content differs from what phase {phase.title} renders"}
            for i, how in phase.drifted(view.ctx, n):
                yield {"host": n.name, "path": i.path, "phase": phase.title,
                       "evidence": f"{i.path}: {how}"}


def not_built(view: View) -> Iterable[dict]:
    for n in view.cluster.kube_nodes:
        if view.up(n) and not view.built(n):
            yield {"host": n.name, "evidence": "no stamp of the control-plane / join phases"}


SSH = "ssh {user}@{address}"
RULES: tuple[Rule, ...] = (
    Rule("host-unreachable", ERROR, "ssh", "the SSH connection and facts probe",
         "the host does not answer", "{host} cannot be reached",
         "the host is down, sshd is down, or the address / key / host key is wrong",
         "ssh {user}@{address} true  # then `invoke cluster.trust` if its key changed", reachable),
    Rule("etcd-member-down", ERROR, "etcd", "etcdctl endpoint status on each member (mutual TLS)",
         "a member does not answer", "etcd member {host} is down",
         "etcd stopped or crashed, its certificates do not match, or its data dir is damaged",
         SSH + " 'systemctl restart etcd; journalctl -u etcd -n 50 --no-pager'", etcd_down),
    Rule("etcd-quorum-lost", ERROR, "etcd", "how many members answer",
         "fewer than a majority answer",
         "etcd has lost quorum: {healthy} of {members} members healthy, {quorum} needed; the "
         "API cannot write", "more than one member down at once",
         "bring members back one by one (see etcd-member-down); if their data is gone: "
         "invoke cluster.restore --snapshot PATH", etcd_quorum(lost=True)),
    Rule("etcd-quorum-at-risk", WARNING, "etcd", "how many members answer",
         "exactly a majority answers", "etcd quorum at risk: {healthy} of {members} members "
         "healthy; one more loss stops the cluster", "a member is down",
         "fix the member that is down (etcd-member-down) before any maintenance",
         etcd_quorum(lost=False)),
    Rule("etcd-no-leader", ERROR, "etcd", "the leader each member reports",
         "no leader, or members disagree", "etcd has no leader",
         "a network partition between members, or clocks / disks too slow for elections",
         "check peer traffic on port 2380 between members and `etcdctl endpoint status -w table`",
         etcd_no_leader),
    Rule("etcd-nospace", ERROR, "etcd", "etcdctl alarm list", "a NOSPACE alarm is raised",
         "etcd on {host} raised NOSPACE: it refuses writes",
         "the database reached its quota (history not compacted / defragmented)",
         SSH + " 'etcdctl ... compact REV; etcdctl ... defrag; etcdctl ... alarm disarm'",
         etcd_nospace),
    Rule("etcd-db-large", WARNING, "etcd", "dbSize of endpoint status",
         "the database passes 80 % of the 2 GiB quota", "etcd database on {host} is large",
         "history not compacted, or many objects",
         "etcdctl defrag on each member, one at a time", etcd_db_large),
    Rule("vip-on-no-host", ERROR, "keepalived", "addresses of every load balancer",
         "no host holds the API VIP", "the API VIP {vip} is on no host",
         "keepalived is down (or its health script fails) on every load balancer",
         "systemctl restart keepalived on the load balancers; journalctl -u keepalived",
         vip_none),
    Rule("vip-on-two-hosts", ERROR, "keepalived", "addresses of every load balancer",
         "the VIP is on more than one host", "the API VIP {vip} is on several hosts: {host}",
         "VRRP adverts do not reach the peer (a keepalived process stopped, a firewall, a "
         "split network), so both claim the VIP",
         "see process-stopped / keepalived-down below; restart keepalived on the host that "
         "should not hold it", vip_two),
    Rule("vip-not-on-preferred", WARNING, "keepalived", "VIP holder and keepalived priorities",
         "the VIP sits on a lower-priority load balancer",
         "the API VIP {vip} moved to {holder}: load balancer {host} is degraded",
         "haproxy or keepalived on {host} is down or stopped (VRRP failed over)",
         SSH + " 'systemctl status haproxy keepalived'", vip_moved),
    Rule("haproxy-down", ERROR, "haproxy", "systemctl state", "haproxy is not active",
         "haproxy is {state} on {host}", "it failed (config, port taken) or was stopped",
         SSH + " 'haproxy -c -f /etc/haproxy/haproxy.cfg; systemctl restart haproxy'",
         unit_down("haproxy")),
    Rule("keepalived-down", ERROR, "keepalived", "systemctl state", "keepalived is not active",
         "keepalived is {state} on {host}", "it failed or was stopped",
         SSH + " 'systemctl restart keepalived; journalctl -u keepalived -n 50'",
         unit_down("keepalived")),
    Rule("process-stopped", ERROR, "{unit}", "/proc/PID/stat of the unit's processes",
         "systemd says active but the process is stopped (state T)",
         "{unit} on {host} is stopped (SIGSTOP): it answers nothing",
         "someone sent SIGSTOP (a debugger, a test, a hung container runtime)",
         SSH + " 'systemctl restart {unit}'  # or: pkill -CONT -x {unit}", stopped_processes),
    Rule("haproxy-backend-down", ERROR, "haproxy", "haproxy stats socket (show stat)",
         "a kube-apiserver backend server is not UP", "haproxy on {host} sees API server "
         "{server} DOWN", "the API server on {server} is down or not ready (/readyz)",
         "ssh {server}: crictl ps -a | grep kube-apiserver; curl -k https://{address}:6443/readyz",
         backend_down),
    Rule("cert-expired", ERROR, "certificates", "the certificate table (cluster.certs)",
         "a certificate is past its end", "{name} on {host} has expired",
         "certificates were not renewed in time", "invoke cluster.certs --renew -i {inventory}",
         cert_rows(expired=True)),
    Rule("cert-expiring", WARNING, "certificates", "the certificate table (cluster.certs)",
         f"a certificate ends within {CERT_DAYS} days",
         "{name} on {host} expires in {days} days", "certificates age; renewal is due",
         "invoke cluster.certs --renew -i {inventory}", cert_rows(expired=False)),
    Rule("clock-skew", WARNING, "time", "the host's clock vs the controller's",
         f"more than {SKEW_LIMIT:.0f} s apart", "clock of {host} is off by {skew} s",
         "chrony not running or not reaching its servers; TLS and etcd leases need "
         "agreeing clocks", SSH + " 'systemctl enable --now chrony; chronyc tracking'",
         clock_skew),
    Rule("containerd-down", ERROR, "containerd", "systemctl state", "containerd is not active",
         "containerd is {state} on {host}: no pod can run there",
         "its config does not parse, or it crashed",
         SSH + " 'containerd config dump >/dev/null; journalctl -u containerd -n 30'; then "
         "invoke cluster.up -i {inventory} (puts the rendered config back)",
         unit_down("containerd")),
    Rule("sandbox-image-missing", WARNING, "containerd", "ctr -n k8s.io images ls",
         "containerd runs without the sandbox (pause) image",
         "the sandbox image {image} is missing on {host}",
         "no registry / mirror reachable and not in the offline bundle",
         SSH + " 'ctr -n k8s.io images import pause.tar'  # or set registry_mirrors",
         sandbox_missing),
    Rule("kubelet-down", ERROR, "kubelet", "systemctl state and the kubelet journal",
         "a built node's kubelet is not active", "kubelet is {state} on {host}",
         "see its last journal error (config, certificates, swap, container runtime)",
         SSH + " 'journalctl -u kubelet -n 50 --no-pager; systemctl restart kubelet'",
         unit_down("kubelet")),
    Rule("k3s-down", ERROR, "k3s", "systemctl state and the journal", "k3s is not active",
         "{unit} is {state} on {host}", "see its last journal error",
         SSH + " 'journalctl -u {unit} -n 50 --no-pager; systemctl restart {unit}'",
         lambda v: [*unit_down("k3s")(v), *unit_down("k3s-agent")(v)]),
    Rule("apiserver-down", ERROR, "kube-apiserver", "kubectl get --raw /readyz on each control plane",
         "a built control plane's API does not answer", "the API server on {host} does not answer",
         "kube-apiserver not running (etcd unreachable, certificates, manifest)",
         SSH + " 'crictl ps -a --name kube-apiserver; crictl logs $(crictl ps -aq --name "
         "kube-apiserver | head -1)'", api_down),
    Rule("kube-unreadable", WARNING, "kubectl", "the kubectl batch on the first healthy control plane",
         "the kube side could not be read", "the cluster's kube side could not be read",
         "no control plane's API answers, or kubectl failed there",
         "see apiserver-down; ssh to a control plane and run kubectl get nodes", kube_unread),
    Rule("node-not-ready", ERROR, "kubelet", "kubectl get nodes: the Ready condition",
         "a node is not Ready", "node {host} is NotReady",
         "the kubelet stopped posting status, or the network plugin is not ready",
         "ssh {host}: journalctl -u kubelet -n 50; kubectl describe node {host}", nodes_not_ready),
    Rule("coredns-loop", ERROR, "coredns", "CoreDNS pods and their logs",
         "CrashLoopBackOff with 'plugin/loop: Loop ... detected'",
         "CoreDNS {pod} is crash-looping: forwarding loop detected",
         "the node's /etc/resolv.conf points at a local stub (127.0.0.53, systemd-resolved), "
         "so CoreDNS forwards to itself",
         "set the kubelet's resolvConf to a file with real upstreams (e.g. "
         "/run/systemd/resolve/resolv.conf), restart kubelet, then kubectl -n kube-system "
         "rollout restart deployment coredns", coredns_loop),
    Rule("coredns-pending", ERROR, "coredns", "CoreDNS pods, nodes, CNI DaemonSets",
         "CoreDNS is Pending", "CoreDNS {pod} is Pending: no pod network",
         "no CNI is installed or ready, so every node keeps the not-ready taint",
         "invoke cluster.up -i {inventory}  # phase cni; then see cni-not-ready",
         coredns_pending),
    Rule("cni-not-ready", ERROR, "cni", "CNI DaemonSets (kube-flannel-ds, calico-node) and pods",
         "fewer pods ready than desired", "CNI {ds}: {ready} of {desired} pods ready",
         "the CNI pod fails on those nodes (see its log): pod CIDR, interface, or kernel modules",
         "kubectl -n {ds_ns} logs POD; kubectl -n {ds_ns} describe pod POD", cni_not_ready),
    Rule("daemonset-not-ready", WARNING, "kube-system", "DaemonSets desired vs ready",
         "a DaemonSet has fewer pods ready than desired", "DaemonSet {ds} not fully ready",
         "its pods fail or cannot be scheduled on some nodes",
         "kubectl -n kube-system describe daemonset; see its failing pods", daemonset_not_ready),
    Rule("system-pod-failing", ERROR, "kube-system", "system pods not Running / Ready",
         "a system pod fails", "pod {pod} is not running", "see its state and log",
         "kubectl -n {ns} describe pod {name}; kubectl -n {ns} logs {name} --previous",
         pods_failing),
    Rule("disk-full", ERROR, "disk", "statvfs of /, /var/lib, /var/lib/containerd, /var/lib/etcd, /var/log", f"more than {DISK_LIMIT:.0f} % used",
         "disk of {host} almost full ({path})",
         "logs, images or etcd data filled it; the kubelet evicts pods past 90 %, etcd stops",
         SSH + " 'du -xh {path} | sort -h | tail; crictl rmi --prune; journalctl --vacuum-size=200M'",
         disk_full),
    Rule("swap-on", ERROR, "kubelet", "/proc/swaps", "swap is on on a kube node",
         "swap is on on {host}", "the kubelet refuses to start with swap (failSwapOn)",
         SSH + " 'swapoff -a' and remove it from /etc/fstab", swap_on),
    Rule("br-netfilter-off", ERROR, "kernel", "br_netfilter, net.bridge.bridge-nf-call-iptables",
         "bridged traffic bypasses iptables", "bridge netfilter is off on {host}",
         "br_netfilter not loaded (Services do not work across the bridge)",
         SSH + " 'modprobe br_netfilter; sysctl --system'  # or rerun cluster.up",
         sysctl_off("net.bridge.bridge-nf-call-iptables", "br_netfilter")),
    Rule("ip-forward-off", ERROR, "kernel", "net.ipv4.ip_forward", "it is not 1",
         "IP forwarding is off on {host}", "pod traffic cannot leave the node",
         SSH + " 'sysctl -w net.ipv4.ip_forward=1'  # and rerun cluster.up",
         sysctl_off("net.ipv4.ip_forward")),
    Rule("foreign-leftover", WARNING, "host", f"the marker {paths.MARKER} and leftovers "
         "(/etc/kubernetes/manifests, /var/lib/etcd/member, ...)",
         "leftovers of an install that is not this cluster's",
         "{host} holds leftovers of a foreign install",
         "another tool or cluster installed Kubernetes / etcd here",
         "invoke cluster.reset -i {inventory} (or clean the host) before building",
         foreign_leftovers),
    Rule("config-drift", WARNING, "config", "checksums of every managed file",
         "a file differs from what cluster.up renders", "{path} on {host} differs from the rendered one",
         "edited by hand (or by another tool) after cluster.up",
         "invoke cluster.plan --files -i {inventory}; invoke cluster.up -i {inventory} puts it back",
         config_drift),
    Rule("not-built", INFO, "cluster", "the kube phases' stamps", "a kube node was never built",
         "{host} is not built yet", "cluster.up has not finished there",
         "invoke cluster.up -i {inventory}", not_built),
)


class Fields(dict):
    def __missing__(self, key):
        return "{" + key + "}"


def findings(view: View, inventory: str = "FILE") -> list[Finding]:
    """Every rule's hits, ranked: errors, warnings, infos; by rule order within."""
    out = []
    for rule in RULES:
        try:
            hits = list(rule.fires(view))
        except Exception as e:   # a rule that cannot read its evidence says so, it never hides the rest
            hits = []
            out.append(Finding(WARNING, rule.id, "-", rule.component, f"rule {rule.id} could not "
                               f"run: {type(e).__name__}: {e}", "", "a bug: please report it", ""))
        for hit in hits:
            host = hit.get("host", "-")
            node = view.cluster.node(host) if host in {n.name for n in view.cluster.nodes} else None
            f = Fields({"inventory": inventory, "user": node.ssh_user if node else "root",
                        "address": node.address if node else host, **hit})
            if "ds" in hit:
                f["ds_ns"] = hit["ds"].split("/")[0]
            out.append(Finding(rule.severity, rule.id, host, rule.component.format_map(f),
                               rule.message.format_map(f), hit.get("evidence", ""),
                               rule.cause.format_map(f), rule.fix.format_map(f)))
    return sorted(out, key=lambda x: RANK[x.severity])


def exit_code(found: list[Finding]) -> int:
    sev = {f.severity for f in found}
    return 2 if ERROR in sev else 1 if WARNING in sev else 0


# -- reading everything: one probe per host + one kubectl batch ----------------------------------

def read(cluster: Cluster, deep: bool = False, trust_new: bool = False) -> tuple[View, dict]:
    """The view of the cluster and, for the tarball, what was read (rendered configs, timings).
    Read-only: the shared lock."""
    t0 = time.monotonic()
    with actions.session(cluster, shared=True, trust_new=trust_new, survey=False,
                         phases=PHASES) as run:
        configs = {n.name: config_items(run.ctx, n) for n in cluster.nodes} if deep else {}
        more = {n.name: extras(cluster, n, deep, [i.path for i in configs.get(n.name, [])])
                for n in cluster.nodes}
        run.probe(more=more, timeout=90 if deep else 60)
        t_probe = time.monotonic() - t0
        view = View(cluster, run.ctx)
        view.kube, view.kube_host, view.kube_why = read_kube(run, deep)
        try:
            view.cert_rows = certs.rows(run)
        except Exception as e:   # a damaged file must not hide the rest of the report
            view.cert_rows = [certs.Row("controller", "certificate table", note=f"unreadable: {e}")]
        secrets = {**run.state.secrets(), **run.ctx.secrets}
        extra = {"configs": configs, "secrets": secrets, "pki": run.state.pki,
                 "kubeconfig": run.state.kubeconfig, "seconds": {
                     "probe": round(t_probe, 2), "total": round(time.monotonic() - t0, 2)}}
    return view, extra


# -- status: one screen --------------------------------------------------------------------------

def status_lines(view: View) -> list[str]:
    c = view.cluster
    out = [f"cluster {c.cluster_name}: {c.distribution} {c.kubernetes_version}, ha_mode "
           f"{c.ha_mode}, API {c.api_endpoint}"]
    units = [u for u in paths.SERVICES if any(u in units_for(c, n) for n in c.nodes)] + ["chrony"]
    rows = [("HOST", "ADDRESS", "ROLES", *units)]
    for n in c.nodes:
        if not view.up(n):
            rows.append((n.name, n.address, ",".join(n.roles), "UNREACHABLE: "
                         + (view.facts[n.name].error or "")[:60]))
            continue
        cells = []
        for u in units:
            state = view.unit(n, u) if u in units_for(c, n) or u == "chrony" else "-"
            if "T" in (view.facts[n.name].processes or {}).get(u, []) and state == "active":
                state = "STOPPED(T)"
            cells.append(state)
        rows.append((n.name, n.address, ",".join(n.roles), *cells))
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(rows[0]))]
    out += ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    if c.api_vip and c.ha_mode in ("haproxy", "kube-vip"):
        holders = view.vip_holders()
        out.append(f"VIP {c.api_vip}: " + (f"on {holders[0]}" if len(holders) == 1 else
                   "ERROR on no host" if not holders else f"ERROR on {len(holders)} hosts: "
                   + ", ".join(holders)))
    for n in c.nodes:
        if "haproxy" in units_for(c, n) and view.up(n):
            servers = view.haproxy(n)
            why = (view.facts[n.name].probe_errors or {}).get("sockets[haproxy]", "")
            out.append(f"haproxy {n.name}: " + (", ".join(f"{s['server']} {s['status']}"
                                                           for s in servers) if servers is not None
                                                 else f"stats socket unreadable ({why or 'no answer'})"))
    if etcd_read(c) and etcd.members(c):
        parts, leaders = [], set()
        for n in etcd.members(c):
            s = view.etcd_status(n) if view.up(n) else None
            if s is None:
                parts.append(f"{n.name} DOWN")
                continue
            leaders.add(s["leader"])
            alarms = view.alarms(n)
            parts.append(f"{n.name} {'leader' if s['leader'] == s['member_id'] else 'follower'} "
                         f"v{s['version']} db {size_text(s['db_size'])}"
                         + (f" ALARM {','.join(alarms)}" if alarms else ""))
        healthy = len(etcd_healthy(view))
        out.append(f"etcd {healthy}/{len(etcd.members(c))} healthy"
                   + ("" if len(leaders) == 1 and 0 not in leaders else ", NO LEADER"
                      if healthy else "") + ": " + "; ".join(parts))
    dated = [r for r in view.cert_rows if r.not_after is not None]
    if dated:
        r = min(dated, key=lambda r: r.not_after)
        out.append(f"certificates: nearest expiry {r.where}: {r.name} in "
                   f"{r.days_left(view.now):.0f} days ({r.expires_text})")
    k = view.kube
    if k is None:
        out.append(f"kube: not read: {view.kube_why}")
    else:
        out.append(f"kube (kubectl on {view.kube_host}): nodes " + (", ".join(
            f"{n['name']} {'Ready' if n['ready'] else 'NotReady'} {n['version']}" for n in k.nodes)
            or "none"))
        bad = [p for p in k.pods if p["ns"] in SYSTEM_NAMESPACES and not p["ready"]
               and p["phase"] != "Succeeded"]
        out.append("  system pods not Running/Ready: " + ("; ".join(
            f"{p['ns']}/{p['name']} {p['reason'] or p['phase']} restarts {p['restarts']}"
            for p in bad) or "none"))
        out.append("  DaemonSets (ready/desired): " + (", ".join(
            f"{d['ns']}/{d['name']} {d['ready']}/{d['desired']}" for d in k.daemonsets) or "none"))
        for name, why in sorted(k.errors.items()):
            out.append(f"  could not read {name}: {why.splitlines()[-1] if why else '?'}")
    unread = [f"{n.name}: {key}: {why}" for n in c.nodes if view.up(n)
              for key, why in sorted((view.facts[n.name].probe_errors or {}).items())]
    unread += [f"{n.name}: {line}" for n in c.nodes if view.up(n)
               for line in view.facts[n.name].unanswered()]
    if unread:
        out.append("could not read: " + "; ".join(unread))
    return out


def size_text(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n // 1024} KiB"


def render_findings(found: list[Finding]) -> str:
    if not found:
        return "no findings: the cluster looks healthy"
    lines = []
    for f in found:
        lines.append(f"{f.severity.upper():<8}{f.rule}  {f.host} / {f.component}: {f.message}")
        if f.evidence:
            lines.append(f"        evidence: {f.evidence}")
        lines.append(f"        likely cause: {f.cause}")
        if f.fix:
            lines.append(f"        fix: {f.fix}")
    counts = {s: sum(1 for f in found if f.severity == s) for s in (ERROR, WARNING, INFO)}
    lines.append(", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items()))
    return "\n".join(lines)


# -- the bug-report tarball -----------------------------------------------------------------------

SECRET_PATTERNS = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
     REDACTED),
    (re.compile(r"(?im)^(\s*-?\s*(?:token|certificateKey|client-key-data|auth_pass|password|"
                r"tlsBootstrapToken|agent-token|k3s_token|bootstrap_token|certificate_key)"
                r"\s*[:= ]\s*)\S.*$"), r"\1" + REDACTED),
    (re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b"), REDACTED),   # kubeadm bootstrap tokens
)


def redactor(extra: dict) -> Redactor:
    """Every secret value we know: secrets.yaml, every private key under pki/ (whole, its body
    and each line), the admin kubeconfig's credentials."""
    values = [str(v) for v in extra["secrets"].values() if v]
    for key in sorted(Path(extra["pki"]).rglob("*.key")):
        text = key.read_text()
        body = [line for line in text.splitlines() if line and not line.startswith("-----")]
        values += [text.strip(), "".join(body), *[line for line in body if len(line) >= 16]]
    kc = Path(extra["kubeconfig"])
    if kc.exists():
        values += re.findall(r"(?:client-key-data|token):\s*(\S+)", kc.read_text())
    return Redactor(values)


def scrub(text: str, red: Redactor) -> str:
    text = red.text(text)
    for pattern, repl in SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def bundle(view: View, found: list[Finding], extra: dict, out_dir: Path, status: list[str]) -> Path:
    """The bug-report tarball (0600): findings, status, per host facts, journals and config
    diffs; the kube lists, describe and logs of failing pods; versions, disk, memory, clocks."""
    c, red = view.cluster, redactor(extra)
    stamp = view.now.strftime("%Y%m%dT%H%M%SZ")
    top = f"doctor-{c.cluster_name}-{stamp}"
    files: dict[str, str] = {
        "findings.txt": render_findings(found) + "\n",
        "findings.json": json.dumps([f.as_dict() for f in found], indent=1) + "\n",
        "status.txt": "\n".join(status) + "\n",
        "timings.json": json.dumps(extra["seconds"]) + "\n",
    }
    versions, disks, memory, clocks = [], [], [], []
    for n in c.nodes:
        f = view.facts[n.name]
        base = f"hosts/{n.name}"
        if not f.reachable:
            files[f"{base}/unreachable.txt"] = (f.error or "") + "\n"
            continue
        keep = {k: getattr(f, k) for k in ("hostname", "os_pretty", "kernel", "arch", "cpus",
                                           "mem_mb", "mem_available_mb", "swap_mb", "services",
                                           "versions", "disks", "sysctls", "processes",
                                           "kernel_features", "leftovers", "marker",
                                           "probe_errors", "listeners", "interfaces")}
        keep["clock_offset_s"] = round(f.skew, 3)
        keep["commands"] = {k: v for k, v in f.commands.items() if not k.startswith(JOURNAL)}
        files[f"{base}/facts.json"] = json.dumps(keep, indent=1, sort_keys=True, default=str) + "\n"
        for name, r in f.commands.items():
            if name.startswith(JOURNAL):
                files[f"{base}/{name}.log"] = (r.get("out") or "") + "\n"
        diffs = []
        for item in extra["configs"].get(n.name, []):
            have = (f.texts or {}).get(item.path)
            if f.files.get(item.path) == item.sha256:
                continue
            want = scrub(item.data.decode("utf-8", "replace"), red)
            theirs = scrub(have, red) if have is not None else ""
            diffs += difflib.unified_diff(want.splitlines(True), theirs.splitlines(True),
                                          f"rendered{item.path}", f"{n.name}{item.path}"
                                          + ("" if have is not None else " (missing)"))
        if diffs:
            files[f"{base}/config.diff"] = "".join(diffs)
        versions.append(f"{n.name}: " + "; ".join(f"{b} {v}" for b, v in sorted(f.versions.items()) if v))
        disks.append(f"{n.name}: " + "; ".join(f"{p} {d['used_pct']:.0f}% of {d['total_mb']} MiB"
                                               for p, d in sorted((f.disks or {}).items()) if d))
        memory.append(f"{n.name}: {f.mem_available_mb} MiB available of {f.mem_mb} MiB, swap {f.swap_mb} MiB")
        clocks.append(f"{n.name}: {f.skew:+.3f} s")
    files["versions.txt"] = "\n".join(versions) + "\n"
    files["disk.txt"] = "\n".join(disks) + "\n"
    files["memory.txt"] = "\n".join(memory) + "\n"
    files["clocks.txt"] = ("offset of each host's clock from the controller's, at least (0: within "
                           "the time its answer took)\n" + "\n".join(clocks) + "\n")
    k = view.kube
    if k is None:
        files["kube/unread.txt"] = view.kube_why + "\n"
    else:
        for name, text in k.raw.items():
            files[f"kube/{name}.json"] = text
        for key, text in k.describe.items():
            files[f"kube/describe/{key.replace('/', '_')}.txt"] = text
        for key, text in k.logs.items():
            files[f"kube/logs/{key.replace('/', '_')}.log"] = text
        failing = {f"{p['ns']}/{p['name']}" for p in k.pods if p["ns"] in SYSTEM_NAMESPACES
                   and not p["ready"] and p["phase"] != "Succeeded"}
        events = [e for e in k.events if e["type"] != "Normal" or f"{e['ns']}/{e['name']}" in failing
                  or e["kind"] == "Node"]
        files["kube/events-warning-and-failing.txt"] = "".join(
            f"{e['ns']}/{e['kind']}/{e['name']}: {e['type']} {e['reason']} x{e['count']}: "
            f"{e['message']}\n" for e in events)
        if k.errors:
            files["kube/errors.txt"] = "".join(f"{a}: {b}\n" for a, b in sorted(k.errors.items()))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{top}.tar.gz"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".doctor-") as tmp:
        root = Path(tmp) / top
        for rel, text in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(scrub(text, red))
        red.scrub_tree(root)   # the safety net over every file
        part = Path(tmp) / "part.tar.gz"
        part.touch(mode=0o600)
        with tarfile.open(part, "w:gz") as tar:
            tar.add(root, arcname=top, filter=_tar_filter)
        part.chmod(0o600)
        part.replace(target)
    return target


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o700 if info.isdir() else 0o600
    return info


def tar_text(path: Path) -> str:
    """Every member of a tarball as one text (tests grep it for secrets)."""
    with tarfile.open(path) as tar:
        return "".join(tar.extractfile(m).read().decode("utf-8", "replace")
                       for m in tar.getmembers() if m.isfile())
