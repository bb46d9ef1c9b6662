"""The cluster's etcd as backup and restore see it: which hosts are members, how to talk to them,
and what a member's end state is. Shared by phases 94 (backup) and 95-97 (restore).

    external  members: the `etcd` group, under systemd; etcdctl certificates /etc/etcd/pki;
              data /var/lib/etcd; stopped with systemctl
    stacked   members: the kubeadm control planes; certificates /etc/kubernetes/pki/etcd;
              data /var/lib/etcd; stopped by moving its static pod manifest aside
    k3s       members: the k3s servers (embedded etcd); snapshots by `k3s etcd-snapshot`;
              data /var/lib/rancher/k3s/server/db; stopped with k3s; restored the k3s way
              (`k3s server --cluster-reset --cluster-reset-restore-path` on the first server,
              the others rejoin with their db dir moved aside): k3s picks the new IDs itself,
              so where a k3s member stands is read from what the restore left there
              (`k3s_marker`), not from IDs

A restore gives the cluster a NEW cluster token. etcd derives every member ID from its peer
URLs and that token, and the cluster ID from the member IDs (`member_id`, `cluster_id`, as
etcd's membership package does), so the controller knows the IDs of the restored cluster before
any member runs, and reads, from each member's end state, which cluster its data dir belongs to:
the first record of etcd's write-ahead log names the member and cluster (`WAL_SCRIPT`), and a
running member reports both in `endpoint status`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Iterable

from . import paths
from .model import Cluster, Node

EXTERNAL, STACKED, K3S = "external", "stacked", "k3s"
STACKED_PKI = f"{paths.KUBE_PKI}/etcd"
K3S_DB = "/var/lib/rancher/k3s/server/db"
STACKED_MANIFEST = f"{paths.MANIFESTS}/etcd.yaml"
APISERVER_MANIFEST = f"{paths.MANIFESTS}/kube-apiserver.yaml"
# Static pod manifests put aside while a restore runs (outside the folder the kubelet watches).
ASIDE_DIR = "/etc/kubernetes/provisioner-restore"
WORK_DIR = "/var/lib/provisioner/etcd"  # snapshots in transit on a member (0700)
RESTORE_SNAPSHOT = f"{WORK_DIR}/restore.db"

# probe command names (facts.commands)
STATUS, HEALTHY, WAL, TOOLS = "etcd-status", "etcd-healthy", "etcd-wal", "etcd-tools"
K3S_RESTORED = "k3s-restored"  # the k3s restore markers on a server (k3s_marker)


def kind(c: Cluster) -> str:
    if c.is_k3s:
        return K3S
    return EXTERNAL if c.external_etcd else STACKED


def members(c: Cluster) -> tuple[Node, ...]:
    """Every etcd member: the external group, the kubeadm control planes (stacked), or the k3s
    servers (embedded etcd: the first server always starts it with cluster-init)."""
    return c.etcd_members if kind(c) == EXTERNAL else c.control_planes


def pki_dir(c: Cluster) -> str:
    return paths.ETCD_PKI if kind(c) == EXTERNAL else STACKED_PKI


def client_url(node: Node) -> str:
    return f"https://{node.address}:{paths.ETCD_CLIENT_PORT}"


def peer_url(node: Node) -> str:
    return f"https://{node.address}:{paths.ETCD_PEER_PORT}"


def initial_cluster(c: Cluster) -> str:
    return ",".join(f"{n.name}={peer_url(n)}" for n in members(c))


def etcdctl(c: Cluster, node: Node, *args: str, timeout: str | None = "3s") -> list[str]:
    """argv of etcdctl on `node`, talking to its own member over mutual TLS with the
    healthcheck-client certificate (external: the provisioner's; stacked: kubeadm's)."""
    pki = pki_dir(c)
    deadlines = ["--dial-timeout", timeout, "--command-timeout", timeout] if timeout else []
    return ["etcdctl", "--endpoints", client_url(node), "--cacert", f"{pki}/ca.crt",
            "--cert", f"{pki}/healthcheck-client.crt", "--key", f"{pki}/healthcheck-client.key",
            *deadlines, *args]


def read(c: Cluster, node: Node, *args: str) -> dict:
    """A facts probe command reading etcd on `node`. etcdctl's own deadline (3 s) says a member
    that cannot commit a read is unhealthy; on a busy member that is no answer yet: the probe
    asks again with patience, giving etcdctl 4 times as long, and what it says then stands.
    etcdctl 3.4 waits out the command deadline on a refused connection too (measured: 3.01 s),
    so a member that is not running costs its host's facts that patient second asking."""
    return {"argv": etcdctl(c, node, *args, timeout=None),
            "own_deadline": {"--dial-timeout={:.0f}s": 2, "--command-timeout={:.0f}s": 3}}


# -- IDs, as etcd computes them (server/etcdserver/api/membership: computeMemberId, genID) ---

def member_id(peer_urls: Iterable[str], token: str) -> int:
    """sha1(sorted peer URLs joined + cluster token), first 8 bytes big-endian."""
    data = "".join(sorted(peer_urls)).encode() + token.encode()
    return struct.unpack(">Q", hashlib.sha1(data).digest()[:8])[0]


def cluster_id(ids: Iterable[int]) -> int:
    """sha1 of the sorted member IDs (8 bytes big-endian each), first 8 bytes big-endian."""
    data = b"".join(struct.pack(">Q", i) for i in sorted(ids))
    return struct.unpack(">Q", hashlib.sha1(data).digest()[:8])[0]


def restored_ids(c: Cluster, token: str) -> tuple[str, dict[str, str]]:
    """(cluster ID, {member name: member ID}) in hex of the cluster a restore with `token`
    makes from this inventory's members."""
    ids = {n.name: member_id([peer_url(n)], token) for n in members(c)}
    return f"{cluster_id(ids.values()):x}", {k: f"{v:x}" for k, v in ids.items()}


# -- the node side: which cluster a data dir belongs to ------------------------------------------

# Runs on a member (python3 -c SCRIPT DATA_DIR): prints {"member_id", "cluster_id"} (hex) from
# the metadata record at the start of the write-ahead log, or null when there is no WAL. WAL
# frames: an 8-byte little-endian length (top byte: padding flag and size), then a walpb.Record
# protobuf {1 type, 2 crc, 3 data}; type 1 (metadata) holds etcdserverpb.Metadata {1 NodeID,
# 2 ClusterID}. Read-only; standard library only.
WAL_SCRIPT = r'''
import glob, json, os, struct, sys
def varint(b, i):
    shift = n = 0
    while True:
        c = b[i]; i += 1
        n |= (c & 0x7f) << shift; shift += 7
        if c < 0x80:
            return n, i
def fields(b):
    i, out = 0, {}
    while i < len(b):
        key, i = varint(b, i)
        kind = key & 7
        if kind == 0:
            v, i = varint(b, i)
        elif kind == 2:
            n, i = varint(b, i); v = b[i:i + n]; i += n
        elif kind in (1, 5):
            v = b[i:i + (8 if kind == 1 else 4)]; i += 8 if kind == 1 else 4
        else:
            raise ValueError("protobuf wire type %d" % kind)
        out[key >> 3] = v
    return out
def meta(d):
    wals = sorted(glob.glob(os.path.join(d, "member", "wal", "*.wal")))
    if not wals:
        return None
    with open(wals[0], "rb") as f:
        data = f.read(1 << 16)
    i = 0
    while i + 8 <= len(data):
        (lf,) = struct.unpack_from("<Q", data, i); i += 8
        n = lf & ~(0xff << 56)
        pad = (lf >> 56) & 7 if lf >> 63 else 0
        rec = fields(data[i:i + n]); i += n + pad
        if rec.get(1) == 1:
            m = fields(rec.get(3, b""))
            return {"member_id": "%x" % m.get(1, 0), "cluster_id": "%x" % m.get(2, 0)}
    raise ValueError("no metadata record in " + wals[0])
print(json.dumps(meta(sys.argv[1])))
'''.strip()


def probes(c: Cluster, node: Node) -> dict:
    """What the facts probe reads on a member for backup and restore."""
    if kind(c) == K3S:
        return {"paths": [f"{K3S_DB}/etcd/member/snap/db", RESTORE_SNAPSHOT],
                "commands": {K3S_RESTORED: [
                    "sh", "-c", f"ls -1d {WORK_DIR}/k3s-reset-* {K3S_DB}.before-restore-* "
                    "2>/dev/null; true"]}}
    return {"paths": [APISERVER_MANIFEST, f"{ASIDE_DIR}/kube-apiserver.yaml", STACKED_MANIFEST,
                      f"{ASIDE_DIR}/etcd.yaml", RESTORE_SNAPSHOT],
            "commands": {
                STATUS: read(c, node, "endpoint", "status", "-w", "json"),
                HEALTHY: read(c, node, "endpoint", "health"),
                WAL: ["python3", "-c", WAL_SCRIPT, paths.ETCD_DATA],
                TOOLS: ["sh", "-c", "for t in etcdutl etcdctl; do command -v $t; done; true"]}}


def status(ctx, node: Node) -> dict | None:
    """The member's `endpoint status` as {cluster_id, member_id (hex), revision, version}, or
    None when it does not answer."""
    result = ctx.command(node, STATUS)
    if result.get("rc") != 0:
        return None
    try:
        s = json.loads(result["out"])[0]["Status"]
        h = s["header"]
        return {"cluster_id": f"{int(h['cluster_id']):x}", "member_id": f"{int(h['member_id']):x}",
                "revision": int(h.get("revision", 0)), "version": s.get("version", "")}
    except (ValueError, LookupError, TypeError):
        return None


def healthy(ctx, node: Node) -> bool:
    return ctx.ok(node, HEALTHY) and status(ctx, node) is not None


def wal_ids(ctx, node: Node) -> dict | None:
    """{member_id, cluster_id} of the data dir in place, None when there is none (or unreadable)."""
    result = ctx.command(node, WAL)
    if result.get("rc") != 0:
        return None
    try:
        return json.loads(result["out"] or "null")
    except ValueError:
        return None


def tools(ctx, node: Node) -> list[str]:
    """etcdutl / etcdctl found on the member (full paths)."""
    return [line for line in ctx.command(node, TOOLS).get("out", "").splitlines()
            if line.startswith("/")]


# -- where a restore stands on a member (from its end state only) -------------------------------

DONE, IN_PLACE, TODO = "done", "in-place", "todo"


def member_state(ctx, node: Node) -> str | None:
    """For the restore in ctx.local["restore"] ({cluster_id, members: {name: member ID}}):
    done      the member answers healthy as its member of the restored cluster
    in-place  its data dir is the restored one (WAL names the restored member and cluster), it
              only needs to (re)start
    todo      anything else: stop, keep the data dir aside, restore into a fresh one
    k3s: done when the server's part is done (k3s_marker; start-api then starts k3s), else todo.
    None when no restore is being planned."""
    want = ctx.local.get("restore")
    if not want:
        return None
    if kind(ctx.cluster) == K3S:
        marker = k3s_marker(ctx.cluster, node, want["stamp"])
        return DONE if marker in ctx.command(node, K3S_RESTORED).get("out", "").split() else TODO
    ids = {"cluster_id": want["cluster_id"], "member_id": want["members"].get(node.name)}
    st = status(ctx, node)
    if st and ctx.ok(node, HEALTHY) and all(st[k] == v for k, v in ids.items()):
        return DONE
    wal = wal_ids(ctx, node)
    if wal and all(wal.get(k) == v for k, v in ids.items()):
        return IN_PLACE
    return TODO


def k3s_marker(c: Cluster, node: Node, stamp: str) -> str:
    """What the k3s restore `stamp` leaves on a server once its part is done: on the first
    server a file written after `k3s server --cluster-reset` succeeded, on the others their
    old db dir moved aside (they rejoin the restored cluster with none)."""
    if node == c.first_control_plane:
        return f"{WORK_DIR}/k3s-reset-{stamp}"
    return f"{K3S_DB}.before-restore-{stamp}"


def restore_pending(ctx) -> bool:
    """A restore is planned and some member is not yet healthy in the restored cluster."""
    c = ctx.cluster
    return bool(ctx.local.get("restore")) and any(
        member_state(ctx, n) != DONE for n in members(c))
