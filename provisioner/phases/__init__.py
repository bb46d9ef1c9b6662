"""The phases, one module each beside its numbered playbook (provisioner/playbooks/NN-*.yml).

    01 prepare → 02 runtime → 03 etcd → 04 loadbalancer → 05 binaries → 05 images
    → 06 control-plane → 07 join-control-plane → 32 etcd-servers (every API server's
    --etcd-servers: a member added) → 08 join-workers → 09 cni → 10 addons → 11 node-meta
    → 12 kubeconfig
    upgrade: 93 upgrade-control-plane → 93 upgrade-nodes
    backup:  94 backup
    restore: 95 stop-api → 96 restore → 97 start-api
    certs:   98 reissue-etcd-certs → 03 etcd → 98 certs → 12 kubeconfig (`cluster.certs --renew`)
    remove-node: 31 drain → 32 etcd-servers → 33 etcd-leave → 34 reset-node → 35 delete-node
             (each bound to the leaving host with `.on(node)`), then cluster.up's phases on
             the model without it

Actions (provisioner/actions.py, backup.py, removal.py, upgrade.py, certs.py) are ordered
lists of these objects.
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
IMAGES = _phase("05_images")
CONTROL_PLANE = _phase("06_control_plane")
JOIN_CONTROL_PLANE = _phase("07_join_control_plane")
JOIN_WORKERS = _phase("08_join_workers")
CNI = _phase("09_cni")
ADDONS = _phase("10_addons")
NODE_META = _phase("11_node_meta")
KUBECONFIG = _phase("12_kubeconfig")
# day 2, not in ALL: cluster.upgrade (provisioner/upgrade.py), cluster.backup and
# cluster.restore (provisioner/backup.py), cluster.certs --renew (provisioner/certs.py)
UPGRADE_CONTROL_PLANE = _phase("93_upgrade_control_plane")
UPGRADE_NODES = _phase("93_upgrade_nodes")
BACKUP = _phase("94_backup")
STOP_API = _phase("95_stop_api")
RESTORE = _phase("96_restore")
START_API = _phase("97_start_api")
REISSUE_ETCD_CERTS = _phase("98_etcd_certs")
CERTS = _phase("98_certs")
# cluster.remove-node (provisioner/removal.py)
DRAIN = _phase("31_drain")
ETCD_SERVERS = _phase("32_etcd_servers")
API_ETCD_SERVERS = import_module(f"{__name__}.32_etcd_servers").UP_PHASE
ETCD_LEAVE = _phase("33_etcd_leave")
RESET_NODE = _phase("34_reset_node")
DELETE_NODE = _phase("35_delete_node")

ALL: tuple[Phase, ...] = (PREPARE, RUNTIME, ETCD, LOADBALANCER, BINARIES, IMAGES,
                          CONTROL_PLANE, JOIN_CONTROL_PLANE, API_ETCD_SERVERS, JOIN_WORKERS,
                          CNI, ADDONS,
                          NODE_META, KUBECONFIG)

__all__ = ["ALL", "Context", "Item", "Phase", "kubectl", "service_running"] + [
    "PREPARE", "RUNTIME", "ETCD", "LOADBALANCER", "BINARIES", "IMAGES", "CONTROL_PLANE",
    "JOIN_CONTROL_PLANE", "JOIN_WORKERS", "CNI", "ADDONS", "NODE_META", "KUBECONFIG",
    "UPGRADE_CONTROL_PLANE", "UPGRADE_NODES", "BACKUP", "STOP_API", "RESTORE", "START_API",
    "REISSUE_ETCD_CERTS", "CERTS", "DRAIN", "ETCD_SERVERS", "ETCD_LEAVE", "RESET_NODE",
    "DELETE_NODE"]
