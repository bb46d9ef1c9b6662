"""Phase backup (action cluster.backup) ↔ playbooks/94-backup.yml: an etcd snapshot from the
first healthy member, copied to the controller.

External etcd: `etcdctl snapshot save` runs on the member over mutual TLS with the
healthcheck-client certificate (stacked: kubeadm's under /etc/kubernetes/pki/etcd; the playbook
installs etcdctl from Debian's etcd-client first when a control plane has none); k3s:
`k3s etcd-snapshot save`. The file comes back over the run's SSH connection into
`<state>/<cluster>/backups/<UTC time>.db` (0600) with its metadata beside it, then the member's
copy is removed and only the newest `backup_keep` backups are kept (provisioner/snapshots.py).
Done means the run recorded the new backup (ctx.local["backup"]["path"])."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from .. import etcd, snapshots
from ..errors import UserError
from .base import Phase

SAVE_TIMEOUT = "600s"


def has_etcdctl(ctx, node) -> bool:
    return any(t.endswith("/etcdctl") for t in etcd.tools(ctx, node))


def source(ctx):
    """The member to take the snapshot from: the first healthy one in inventory order. Stacked
    etcd, where no control plane has etcdctl yet to ask: the first whose kubelet runs (its
    health is checked once the playbook installed etcdctl)."""
    c = ctx.cluster
    members = [n for n in etcd.members(c) if ctx.facts.get(n.name) and ctx.facts[n.name].reachable]
    for n in members:
        if etcd.kind(c) == etcd.K3S:
            if ctx.facts[n.name].active("k3s"):
                return n
        elif etcd.healthy(ctx, n):
            return n
    if etcd.kind(c) == etcd.STACKED:
        for n in members:
            if not has_etcdctl(ctx, n) and ctx.facts[n.name].active("kubelet"):
                return n
    return None


def save_script(c, node, remote: str) -> str:
    """Shell run on the member: snapshot to `remote` (0600), then one JSON line with its
    sha256, size and what the member says about itself."""
    q = shlex.quote
    if etcd.kind(c) == etcd.K3S:
        d = remote + ".d"
        return (f"set -eu\numask 077\nrm -rf {q(d)}\nmkdir -p {q(d)}\n"
                f"trap 'rm -rf {q(d)}' EXIT\n"
                f"k3s etcd-snapshot save --etcd-snapshot-dir {q(d)} --name provisioner >&2\n"
                f"f=$(ls -t {q(d)}/provisioner* | head -n 1)\n"
                f"mv \"$f\" {q(remote)}\n"
                f"printf '{{\"sha256\": \"%s\", \"size\": %s, \"version\": \"%s\"}}\\n' "
                f"\"$(sha256sum < {q(remote)} | cut -d' ' -f1)\" \"$(stat -c %s {q(remote)})\" "
                f"\"$(k3s --version | head -n 1)\"\n")
    ctl = " ".join(q(a) for a in etcd.etcdctl(c, node, timeout=SAVE_TIMEOUT))
    return (f"set -eu\numask 077\nexport ETCDCTL_API=3\nmkdir -p {q(etcd.WORK_DIR)}\n"
            f"chmod 0700 {q(etcd.WORK_DIR)}\nrm -f {q(remote)} {q(remote)}.part\n"
            f"trap 'rm -f {q(remote)}.part' EXIT\n"
            f"{ctl} snapshot save {q(remote)} >&2\n"
            # etcdutl has `snapshot status` since 3.5 (etcdctl's is deprecated there)
            f"if command -v etcdutl >/dev/null; then tool=etcdutl; else tool=etcdctl; fi\n"
            f"snap=$($tool snapshot status {q(remote)} -w json 2>/dev/null)\n"
            f"st=$({ctl} endpoint status -w json)\n"
            f"ml=$({ctl} member list -w json)\n"
            f"printf '{{\"sha256\": \"%s\", \"size\": %s, \"snapshot\": %s, \"status\": %s, "
            f"\"members\": %s}}\\n' \"$(sha256sum < {q(remote)} | cut -d' ' -f1)\" "
            f"\"$(stat -c %s {q(remote)})\" \"$snap\" \"$st\" \"$ml\"\n")


def metadata(c, node, name: str, said: dict) -> dict:
    """The metadata of a backup from what the member printed (see snapshots.py)."""
    meta = {"format": snapshots.FORMAT, "file": f"{name}.db", "created": snapshots.iso(name),
            "cluster_name": c.cluster_name, "distribution": c.distribution,
            "etcd": etcd.kind(c), "sha256": said["sha256"], "size": int(said["size"]),
            "member": {"name": node.name, "address": node.address, "id": None},
            "etcd_version": None, "revision": None, "cluster_id": None,
            "members": [{"name": n.name, "id": None, "peer_urls": [etcd.peer_url(n)],
                         "client_urls": [etcd.client_url(n)]} for n in etcd.members(c)]}
    if etcd.kind(c) == etcd.K3S:
        meta["etcd_version"] = said.get("version") or None  # the k3s that embeds it
        return meta
    status = said["status"][0]["Status"]
    meta["etcd_version"] = status.get("version")
    meta["revision"] = int(said["snapshot"]["revision"])
    meta["cluster_id"] = f"{int(status['header']['cluster_id']):x}"
    meta["member"]["id"] = f"{int(status['header']['member_id']):x}"
    meta["members"] = [{"name": m.get("name", ""), "id": f"{int(m['ID']):x}",
                        "peer_urls": m.get("peerURLs", []),
                        "client_urls": m.get("clientURLs", [])}
                       for m in said["members"]["members"]]
    return meta


class Backup(Phase):
    title = "backup"
    playbook = "94-backup.yml"  # only where etcdctl is missing (stacked control planes)

    def hosts(self, c):
        return etcd.members(c)

    def probes(self, c, node):
        return etcd.probes(c, node)

    def needs_etcdctl(self, ctx, node) -> bool:
        return etcd.kind(ctx.cluster) != etcd.K3S and not has_etcdctl(ctx, node)

    def refusals(self, ctx):
        if source(ctx) is None:
            names = ", ".join(n.name for n in etcd.members(ctx.cluster))
            how = ("k3s is not running on any server" if etcd.kind(ctx.cluster) == etcd.K3S
                   else "none answers `etcdctl endpoint health` over TLS")
            yield (f"no etcd member is healthy ({names}: {how}); nothing to back up from "
                   "(invoke cluster.status shows the services)")

    def checks(self, ctx, node):
        want = ctx.local.get("backup")
        src = source(ctx)
        if not want or want.get("path") or src is None or src.name != node.name:
            return
        if self.needs_etcdctl(ctx, node):
            yield "install etcdctl (Debian package etcd-client)"
        how = ("k3s etcd-snapshot save" if etcd.kind(ctx.cluster) == etcd.K3S
               else "etcdctl snapshot save")
        yield f"{how} on {node.name}, copied to {want['folder']}/"

    def run(self, run, nodes):
        node = nodes[0]
        if self.needs_etcdctl(run.ctx, node):
            run.converge(self, [node])  # installs etcdctl, probes again
            if not etcd.healthy(run.ctx, node):
                raise UserError(f"{node.name}: etcdctl is installed now, but the etcd member "
                                "does not answer `endpoint health` over TLS; nothing to back "
                                "up from (invoke cluster.status)")
        take(run, node)


def take(run, node) -> Path:
    """Snapshot on `node`, fetched, checked, recorded; the member's copy removed; rotation."""
    c, want = run.cluster, run.ctx.local["backup"]
    directory = snapshots.make_folder(c)
    name = snapshots.new_name(directory)
    remote = f"{etcd.WORK_DIR}/backup-{name}.db"
    started = time.monotonic()
    part = directory / f".{name}.db.part"
    try:
        result = run.pool.run_one(node.name, save_script(c, node, remote), timeout=900)
        if result.rc != 0:
            why = (result.error or result.stderr).strip()[-600:]
            raise UserError(f"{node.name}: the snapshot failed: {why}")
        try:
            said = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise UserError(f"{node.name}: unexpected answer after the snapshot: "
                            f"{result.stdout.strip()[-300:]!r}") from None
        part.unlink(missing_ok=True)
        got = run.pool.fetch(node.name, remote, part)
        if got != said["sha256"]:
            raise UserError(f"{node.name}: the copy of {remote} has sha256 {got}, the member "
                            f"computed {said['sha256']}: the transfer was damaged; try again")
        meta = metadata(c, node, name, said)
        part.rename(directory / f"{name}.db")
        snapshots.write_metadata(directory / f"{name}.json", meta)
    finally:
        part.unlink(missing_ok=True)
        run.pool.run_one(node.name, f"rm -f {shlex.quote(remote)}", timeout=60)
    removed = snapshots.rotate(directory, c.backup_keep)
    want.update(path=str(directory / f"{name}.db"), metadata=meta, removed=removed,
                seconds=time.monotonic() - started)
    return directory / f"{name}.db"


PHASE = Backup()
