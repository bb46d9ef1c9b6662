"""Boot 3, 12 and 30 lab nodes (warm base) and print time to all-SSH-ready and memory per node.

    sudo .venv/bin/python benchmarks/lab_boot.py [COUNTS...]     # default: 3 12 30

Each size is a generated inventory on its own bridge (k8slab8, 10.90.8.0/24, nodes b01...),
so a running session lab is not disturbed. Memory per node is the sum over the container's
processes of PSS (shared pages split between sharers) and of RSS (shared pages counted in
every process, so an upper bound), taken once all nodes are up; it includes the node's
systemd-nspawn process on the host. Everything is torn down after each size.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner import inventory  # noqa: E402
from provisioner.lab import base, nspawn  # noqa: E402


def write_inventory(folder: Path, count: int) -> Path:
    hosts = "\n".join(f"        b{i:02d}: {{ansible_host: 10.90.8.{10 + i}}}"
                      for i in range(2, count + 1))
    path = folder / f"bench{count}.yml"
    path.write_text(f"""all:
  vars:
    cluster_name: bench{count}
    lab_bridge: k8slab8
    lab_bridge_address: 10.90.8.1/24
    # lab nodes sit on this machine's cgroup v1 hierarchy: kubelets >= 1.35 refuse it unless told
    allow_cgroup_v1: true
    ansible_user: root
    ansible_ssh_private_key_file: {folder}/id_ed25519
  children:
    control_plane:
      hosts:
        b01: {{ansible_host: 10.90.8.11}}
    workers:
      hosts:
{hosts}
""")
    return path


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB of one process, 0 if it is gone."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def node_memory(lab: nspawn.Lab) -> tuple[float, float]:
    """Mean (PSS, RSS) in MiB per node: every process in each node's pid namespace + nspawn."""
    inits = nspawn._container_inits([lab.node_dir(n.name) for n in lab.cluster.nodes])
    namespaces = {os.readlink(f"/proc/{pid}/ns/pid") for pid in inits}
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    members = []
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") in namespaces:
                members.append(pid)
        except OSError:
            pass
    members += [p for n in lab.cluster.nodes
                if (p := nspawn.procs.read_pid(lab.runtime / f"{n.name}.pid", nspawn.NSPAWN))]
    totals = [sum(col) for col in zip(*(memory_kib(p) for p in members))] or [0, 0]
    count = len(lab.cluster.nodes)
    return totals[0] / 1024 / count, totals[1] / 1024 / count


def main(counts: list[int]) -> None:
    base.ensure_base()
    print(f"{'nodes':>5}  {'all SSH-ready s':>15}  {'slowest node s':>14}  "
          f"{'PSS MiB/node':>12}  {'RSS MiB/node':>12}  {'down s':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PROVISIONER_STATE_DIR"] = f"{tmp}/state"
        for count in counts:
            lab = nspawn.Lab(inventory.load(write_inventory(Path(tmp), count)), log=lambda m: None)
            lab.check()
            try:
                with lab.locked():
                    started = time.monotonic()
                    results = lab.up()
                    ready = time.monotonic() - started
                    bad = [r for r in results if r.state not in ("running", "degraded")]
                    if bad:
                        raise SystemExit(f"{len(bad)} of {count} nodes failed: {bad[0]}")
                    time.sleep(2)  # let boot-time jobs finish before measuring memory
                    pss, rss = node_memory(lab)
                    slowest = max(r.seconds or 0 for r in results)
                    t = time.monotonic()
                    lab.down()
                    down = time.monotonic() - t
            finally:
                lab.down()
            print(f"{count:>5}  {ready:>15.1f}  {slowest:>14.1f}  {pss:>12.1f}  {rss:>12.1f}  "
                  f"{down:>6.1f}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [3, 12, 30])
