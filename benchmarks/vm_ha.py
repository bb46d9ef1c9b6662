"""inventories/ha-external-etcd.yml as VMs: boot time and memory of 9 VMs, `cluster.up` on them,
its no-op rerun, then the keepalived VIP failing over between the two load balancer VMs and back.

    sudo .venv/bin/python benchmarks/vm_ha.py

The inventory as it is, moved to the VM lab's subnet (10.90.12.0/24, bridge k8slab12; its own
state folder under /tmp). `lab.up --provider vagrant` boots one VM per host (lb1, lb2, etcd1-3,
cp1, cp2, w1, w2), then every phase of `cluster.up` runs as `vagrant` through sudo: packages
from the lab's package source, containerd, runc and etcd real, kubeadm, the kubelet and kubectl
the TEST-ONLY stand-ins of tests/standins (so this is no Kubernetes cluster: there is no API
server behind haproxy; the port answers, the backends do not). `--phases loadbalancer` runs
that phase only. Then keepalived stops on lb1 (priority 150): the time until lb2 holds the VIP
and haproxy answers on VIP:6443; keepalived starts on lb1 again: the time until lb1 takes it
back. Prints each figure and the load average; always takes the VMs down.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provisioner import actions, inventory as inv, phases as ph  # noqa: E402
from provisioner.errors import UserError  # noqa: E402
from provisioner.lab import vagrant  # noqa: E402
from provisioner.progress import Progress  # noqa: E402
from tests.test_vagrant_lab import vm_inventory  # noqa: E402

VIP = "10.90.12.100"


def until(check, timeout: float = 120) -> str:
    """How long until check() held ("not within N s" when it did not)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return f"{time.monotonic() - started:.1f} s"
        time.sleep(0.5)
    return f"not within {timeout:.0f} s"


def up(lab, bundle, phases) -> list[str]:
    """cluster.up; the phases with work. Its summary prints the seconds of each phase."""
    with Progress(live=False) as progress:
        return [p.title for p, w in actions.up(lab.cluster, bundle_dir=bundle, phases=phases,
                                               progress=progress) if w]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", choices=("all", "loadbalancer"), default="all")
    phases = actions.UP if parser.parse_args().phases == "all" else (ph.LOADBALANCER,)
    folder = Path(tempfile.mkdtemp(prefix="vm-ha-"))
    lab = vagrant.VagrantLab(inv.load(vm_inventory("ha-external-etcd.yml", folder)),
                             log=lambda msg: print(msg, flush=True))
    try:
        started = time.monotonic()
        results = lab.up()
        print(f"lab.up of {len(results)} VMs: {time.monotonic() - started:.0f} s; each SSH-ready "
              "at " + ", ".join(f"{r.name} {r.seconds or 0:.0f} s ({r.state})" for r in results))
        rss = subprocess.run(["ps", "-o", "rss=", "-C", "qemu-system-x86_64"],
                             capture_output=True, text=True).stdout.split()
        print("QEMU RSS per VM: " + ", ".join(f"{int(k) / 1024:.0f} MiB" for k in rss))
        bundle = None
        if phases != (ph.LOADBALANCER,):
            from tests.standins import make_standin_bundle

            bundle = str(make_standin_bundle(folder / "bundle", lab.cluster))
        for attempt in ("cluster.up", "rerun"):
            lab.set_clocks()
            started = time.monotonic()
            try:
                done = up(lab, bundle, phases)
            except UserError as e:  # said; the rerun should finish the job, then the failover
                print(f"{attempt} failed after {time.monotonic() - started:.0f} s: {e}")
                continue
            print(f"{attempt} ({', '.join(p.title for p in phases)}) on {len(results)} VMs: "
                  f"{time.monotonic() - started:.0f} s; phases with work: {done or 'none'}")

        def holds(name: str) -> bool:
            return f"{VIP}/" in lab.run(name, "ip -4 -o addr")[1]

        print(f"VIP on lb1: {holds('lb1')}, on lb2: {holds('lb2')}")
        lab.run("lb1", "sudo -n systemctl stop keepalived")
        took = until(lambda: holds("lb2"))
        port = lab.run("lb2", f"timeout 5 bash -c '</dev/tcp/{VIP}/6443' && echo open")[1]
        print(f"keepalived stopped on lb1 -> VIP on lb2 after {took}; "
              f"haproxy on VIP:6443 {port.strip() or 'closed'}")
        lab.run("lb1", "sudo -n systemctl start keepalived")
        took = until(lambda: holds("lb1") and not holds("lb2"))
        print(f"keepalived started on lb1 -> VIP back on lb1 after {took}")
    finally:
        if (log := lab.runtime / "vagrant-up.log").exists():  # lab.down removes it
            shutil.copy(log, folder)
            print(f"vagrant up's log: {folder / log.name}")
        started = time.monotonic()
        lab.down()
        print(f"lab.down: {time.monotonic() - started:.0f} s; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
