"""The phases, one module each beside its numbered playbook (provisioner/playbooks/NN-*.yml).

    01 prepare → 02 runtime → 03 etcd → 04 loadbalancer → 05 binaries → 06 control-plane
    → 07 join-control-plane → 08 join-workers → 09 cni → 10 addons → 11 node-meta
    → 12 kubeconfig
    day 2: 96 reissue-etcd-certs, 96 certs (`cluster.certs --renew`)

Actions (provisioner/actions.py) are ordered lists of these objects.
"""

from __future__ import annotations

from importlib import import_module

from .base import Context, Item, Phase, kubectl, service_running


def _phase(module: str) -> Phase:
    return import_module(f"{__name__}.{module}").PHASE


PREPARE = _phase("01_prepare")
RUNTIME = _phase("02_runtime")
ETCD = _phase("03_etcd")
LOADBALANCER = _phase("04_loadbalancer")
BINARIES = _phase("05_binaries")
CONTROL_PLANE = _phase("06_control_plane")
JOIN_CONTROL_PLANE = _phase("07_join_control_plane")
JOIN_WORKERS = _phase("08_join_workers")
CNI = _phase("09_cni")
ADDONS = _phase("10_addons")
NODE_META = _phase("11_node_meta")
KUBECONFIG = _phase("12_kubeconfig")
# day 2 (not in ALL): `invoke cluster.certs --renew` (provisioner/certs.py)
REISSUE_ETCD_CERTS = _phase("96_etcd_certs")
CERTS = _phase("96_certs")

# Day 2, not in ALL: the phases of `cluster.upgrade` (provisioner/upgrade.py)
UPGRADE_CONTROL_PLANE = _phase("93_upgrade_control_plane")
UPGRADE_NODES = _phase("93_upgrade_nodes")

ALL: tuple[Phase, ...] = (PREPARE, RUNTIME, ETCD, LOADBALANCER, BINARIES, CONTROL_PLANE,
                          JOIN_CONTROL_PLANE, JOIN_WORKERS, CNI, ADDONS, NODE_META, KUBECONFIG)

__all__ = ["ALL", "Context", "Item", "Phase", "kubectl", "service_running"] + [
    "PREPARE", "RUNTIME", "ETCD", "LOADBALANCER", "BINARIES", "CONTROL_PLANE",
    "JOIN_CONTROL_PLANE", "JOIN_WORKERS", "CNI", "ADDONS", "NODE_META", "KUBECONFIG",
    "UPGRADE_CONTROL_PLANE", "UPGRADE_NODES", "REISSUE_ETCD_CERTS", "CERTS"]
