"""Wall time of `cluster.backup` and `cluster.restore` on 3 etcd members (lab nodes).

    sudo .venv/bin/python benchmarks/backup.py [ROUNDS]        # default: 3

The lab of tests/data/lab-backup.yml (bridge k8slab8): 3 kubeadm control planes that are the
external etcd members (Debian's etcd 3.4, mutual TLS), the kube side on the test-only stand-ins.
1000 keys are written once; each round times `invoke cluster.backup` and, after stopping etcd
and emptying its data dir on every member, `invoke cluster.restore --yes` (whole commands, with
Python start-up), then `cluster.restore --plan` (checks, probe and plan only). Prints every
round, the medians and the load average (this 2-core machine is shared with other labs). Tears
the lab down.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provisioner import actions  # noqa: E402
from provisioner.lab import nspawn  # noqa: E402
from tests.conftest import lab_cluster  # noqa: E402
from tests.standins import make_standin_bundle  # noqa: E402
from tests.test_backup_lab import INVENTORY, MEMBERS, WRITE_KEYS  # noqa: E402

INVOKE = str(Path(sys.executable).parent / "invoke")


def main(rounds: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    cluster = lab_cluster(INVENTORY, state)
    lab = nspawn.Lab(cluster, log=lambda m: None)
    env = dict(os.environ, PROVISIONER_STATE_DIR=str(cluster.state_dir))

    def invoke(*args) -> tuple[float, str]:
        start = time.monotonic()
        r = subprocess.run([INVOKE, *args, "-i", str(INVENTORY)], cwd=REPO, env=env, text=True,
                           capture_output=True, stdin=subprocess.DEVNULL)
        if r.returncode:
            raise SystemExit(f"{args[0]} failed:\n{r.stdout}{r.stderr}")
        return time.monotonic() - start, r.stdout

    def run(node, cmd):
        rc, out, err = lab.run(node, cmd)
        if rc:
            raise SystemExit(f"{node}: {cmd[:80]}: {err}")

    with lab.locked(wait=900):
        try:
            lab.up()
            bundle = make_standin_bundle(state / "bundle", cluster)
            actions.up(cluster, bundle_dir=str(bundle))
            run("bk1", WRITE_KEYS)
            times = {"backup": [], "restore": [], "restore --plan": []}
            for i in range(rounds):
                seconds, out = invoke("cluster.backup")
                times["backup"].append(seconds)
                snapshot = out.strip().splitlines()[-1]
                for n in MEMBERS:
                    run(n, "systemctl stop etcd && rm -rf /var/lib/etcd/*")
                seconds, out = invoke("cluster.restore", "--snapshot", snapshot, "--yes")
                times["restore"].append(seconds)
                print("  " + out.strip().splitlines()[-1].split(";")[0], flush=True)
                times["restore --plan"].append(
                    invoke("cluster.restore", "--snapshot", snapshot, "--plan")[0])
                print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s"
                                                     for k, v in times.items()), flush=True)
            print("medians (3 members, 1000 keys): " + ", ".join(
                f"{k} {statistics.median(v):.1f} s" for k, v in times.items()))
            print("load average: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
        finally:
            lab.down()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
