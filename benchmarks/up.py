"""Wall time of `cluster.up` on lab nodes, per phase, of the no-op rerun, and of
`cluster.doctor` (with its bug-report tarball's size) on the converged cluster.

    sudo .venv/bin/python benchmarks/up.py [COUNTS...]        # default: 3 6 12 30

Each size is a generated inventory on its own bridge (k8slab10, 10.90.10.0/24): 3 control planes
that also run the external etcd, then (from 6 nodes on) a haproxy + keepalived pair and workers.
The kube phases run against the test-only stand-ins (tests/standins): their times measure the
provisioner's own path (push, ordering, guards), not a real kubeadm. For the comparison with
kubeasz's 01.prepare + 02.etcd, "prepare+etcd" adds the phases prepare and etcd (which places
etcd's certificates).
Fresh nodes for every size; everything is torn down after each.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner import actions, doctor, inventory  # noqa: E402
from provisioner.lab import nspawn  # noqa: E402
from tests.standins import make_standin_bundle  # noqa: E402


def write_inventory(folder: Path, count: int) -> Path:
    cps = [f"        c{i}: {{ansible_host: 10.90.10.{10 + i}}}" for i in (1, 2, 3)]
    etcd = [f"        c{i}:" for i in (1, 2, 3)]
    lbs = workers = []
    if count >= 6:
        lbs = [f"        l{i}: {{ansible_host: 10.90.10.{i + 1}, keepalived_priority: {200 - i}}}"
               for i in (1, 2)]
        workers = [f"        w{i:02d}: {{ansible_host: 10.90.10.{100 + i}}}"
                   for i in range(1, count - 4)]
    # several kubeadm control planes need a VIP: the haproxy pair from 6 nodes on, else kube-vip
    ha = ("haproxy" if lbs else "kube-vip") + "\n    api_vip: 10.90.10.250\n    vip_interface: host0"
    groups = {"control_plane": cps, "etcd": etcd, "loadbalancers": lbs, "workers": workers}
    children = "".join(f"    {g}:\n      hosts:\n" + "\n".join(h) + "\n"
                       for g, h in groups.items() if h)
    path = folder / f"up{count}.yml"
    path.write_text(f"""all:
  vars:
    cluster_name: up{count}
    ha_mode: {ha}
    lab_bridge: k8slab10
    lab_bridge_address: 10.90.10.1/24
    # lab nodes sit on this machine's cgroup v1 hierarchy: kubelets >= 1.35 refuse it unless told
    allow_cgroup_v1: true
    ansible_user: root
    ansible_ssh_private_key_file: {folder}/id_ed25519
  children:
{children}""")
    return path


class PhaseClock:
    """Progress hook that notes when each phase starts."""

    def __init__(self):
        self.marks: list[tuple[str, float]] = []

    def phase(self, name, hosts=()):
        if not self.marks or self.marks[-1][0] != name:
            self.marks.append((name, time.monotonic()))

    def __getattr__(self, _name):
        return lambda *a, **k: None

    def durations(self, end: float) -> dict[str, float]:
        times = [t for _, t in self.marks] + [end]
        return {name: times[i + 1] - t for i, (name, t) in enumerate(self.marks)}


def measure(count: int, folder: Path) -> dict:
    cluster = inventory.load(write_inventory(folder, count))
    lab = nspawn.Lab(cluster, log=lambda *_: None)
    try:
        lab.up()
        bundle = make_standin_bundle(folder / f"bundle{count}", cluster)
        clock = PhaseClock()
        start = time.monotonic()
        actions.up(cluster, bundle_dir=str(bundle), progress=clock)
        end = time.monotonic()
        phases = clock.durations(end)
        rerun_start = time.monotonic()
        again = actions.up(cluster, bundle_dir=str(bundle))
        rerun = time.monotonic() - rerun_start
        assert not any(w for _, w in again), "the rerun changed something"
        doctor_start = time.monotonic()
        view, extra = doctor.read(cluster, deep=True)
        found = doctor.findings(view, inventory=cluster.source)
        tarball = doctor.bundle(view, found, extra, folder / f"doctor{count}",
                                doctor.status_lines(view))
        return {"nodes": count, "up": end - start, "rerun": rerun,
                "doctor": time.monotonic() - doctor_start, "tarball": tarball.stat().st_size,
                "prepare+etcd": sum(phases.get(p, 0) for p in ("prepare", "etcd")),
                "phases": phases}
    finally:
        lab.down()


def main(counts: list[int]) -> None:
    if os.geteuid() != 0:
        sys.exit("run as root (the lab boots containers)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-up-") as tmp:
        os.environ["PROVISIONER_STATE_DIR"] = tmp + "/state"
        for count in counts:
            row = measure(count, Path(tmp))
            rows.append(row)
            slow = sorted(row["phases"].items(), key=lambda kv: -kv[1])[:4]
            print(f"{count:>3} nodes: up {row['up']:6.1f} s  no-op rerun {row['rerun']:5.1f} s  "
                  f"prepare+etcd {row['prepare+etcd']:6.1f} s  doctor {row['doctor']:5.1f} s "
                  f"({row['tarball'] // 1024} KiB)  slowest: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in slow), flush=True)
    print("\nnodes | cluster.up (s) | no-op rerun (s) | prepare+etcd (s) | doctor (s) | tarball")
    for r in rows:
        print(f"{r['nodes']:>5} | {r['up']:14.1f} | {r['rerun']:15.1f} | {r['prepare+etcd']:16.1f}"
              f" | {r['doctor']:10.1f} | {r['tarball'] // 1024} KiB")
    print("(kube phases against test-only stand-ins; kubeasz 3.7 01.prepare+02.etcd on the same "
          "kind of nodes: 113 s for 3, 240 s for 9, rerun 68 s)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [3, 6, 12, 30])
