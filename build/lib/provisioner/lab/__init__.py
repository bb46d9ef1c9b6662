"""The built-in lab: Debian 12 nodes booted with systemd-nspawn on a host bridge.

    base.py      the shared, read-only Debian root file system (debootstrap, cached)
    packages.py  the flat apt repository the host serves to nodes (and to offline bundles)
    nspawn.py    per-node overlays, boot, wait for SSH, status, teardown

Everything a running lab holds on the host is found from its runtime folder
(`RUNTIME_ROOT/<cluster>/`: pid files, logs, node overlays), so `lab.down` and the next
`lab.up` can clean up after a crashed run.
"""

from pathlib import Path

CACHE_DIR = Path("/var/cache/provisioner-lab")
RUNTIME_ROOT = Path("/run/provisioner-lab")
