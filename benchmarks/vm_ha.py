"""inventories/ha-external-etcd.yml as VMs: boot time and memory of 9 VMs, then the keepalived VIP
failing over between the two load balancer VMs and back.

    sudo .venv/bin/python benchmarks/vm_ha.py

The inventory as it is, moved to the VM lab's subnet (10.90.12.0/24, bridge k8slab12; its own
state folder under /tmp). `lab.up --provider vagrant` boots one VM per host (lb1, lb2, etcd1-3,
cp1, cp2, w1, w2), then only phase loadbalancer runs (haproxy + keepalived from the lab's package
source, as `vagrant` through sudo). Then keepalived stops on lb1 (priority 150): the time until
lb2 holds the VIP and haproxy answers on VIP:6443; keepalived starts on lb1 again: the time
until lb1 takes it back. Prints each figure and the load average; always takes the VMs down.
No kube phase runs: there is nothing behind haproxy (the port answers, the backends do not).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provisioner import actions, inventory as inv, phases as ph  # noqa: E402
from provisioner.lab import vagrant  # noqa: E402
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


def main() -> None:
    lab = vagrant.VagrantLab(inv.load(vm_inventory("ha-external-etcd.yml",
                                                          Path(tempfile.mkdtemp(prefix="vm-ha-")))),
                             log=lambda msg: print(msg, flush=True))
    try:
        started = time.monotonic()
        results = lab.up()
        print(f"lab.up of {len(results)} VMs: {time.monotonic() - started:.0f} s; each SSH-ready "
              "at " + ", ".join(f"{r.name} {r.seconds or 0:.0f} s ({r.state})" for r in results))
        rss = subprocess.run(["ps", "-o", "rss=", "-C", "qemu-system-x86_64"],
                             capture_output=True, text=True).stdout.split()
        print("QEMU RSS per VM: " + ", ".join(f"{int(k) / 1024:.0f} MiB" for k in rss))
        for n in lab.cluster.nodes:  # emulated clocks drift; preflight refuses over 2 s
            lab.set_clock(n.name)
        started = time.monotonic()
        done = [p.title for p, w in actions.up(lab.cluster, phases=(ph.LOADBALANCER,)) if w]
        print(f"phase loadbalancer on lb1 + lb2: {time.monotonic() - started:.0f} s ({done})")

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
        started = time.monotonic()
        lab.down()
        print(f"lab.down: {time.monotonic() - started:.0f} s; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
