"""Node paths, units and ports that both Python and the playbooks need, defined once.

Playbooks never spell these: every run passes `PLAYBOOK_VARS` as the extra variable `paths`
(`{{ paths.admin_conf }}`), so a path changes here and nowhere else.
"""

from __future__ import annotations

# kubeadm
KUBERNETES_DIR = "/etc/kubernetes"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"  # written by kubeadm's kubelet-start step
KUBEADM_INIT = "/etc/kubernetes/kubeadm-init.yaml"
KUBEADM_JOIN = "/etc/kubernetes/kubeadm-join.yaml"
KUBE_PKI = "/etc/kubernetes/pki"
MANIFESTS = "/etc/kubernetes/manifests"
MANIFESTS_ASIDE = "/etc/kubernetes/manifests-aside"  # static pods stopped for a restart (98-certs)
ADDONS = "/etc/kubernetes/addons"
NODE_META = "/etc/kubernetes/provisioner/node-meta.json"
KUBEADM_LOG = "/var/log/provisioner/kubeadm.log"
KUBEADM_LOG_MARK = "--- provisioner:"  # starts each attempt's lines in KUBEADM_LOG

# k3s
K3S_DIR = "/etc/rancher/k3s"
K3S_CONFIG = "/etc/rancher/k3s/config.yaml"
K3S_ADMIN_CONF = "/etc/rancher/k3s/k3s.yaml"
K3S_NODE_TOKEN = "/var/lib/rancher/k3s/server/node-token"
K3S_AGENT_CONF = "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"
K3S_TLS = "/var/lib/rancher/k3s/server/tls"
K3S_IMAGES = "/var/lib/rancher/k3s/agent/images"  # k3s imports the tarballs here when it starts

# etcd (external members)
ETCD_PKI = "/etc/etcd/pki"
ETCD_DATA = "/var/lib/etcd"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380

# haproxy: read-only stats (`show stat`), read by cluster.status / cluster.doctor
HAPROXY_STATS_SOCKET = "/run/haproxy-stats.sock"

# the provisioner's own
BIN_DIR = "/usr/local/bin"
CNI_BIN_DIR = "/opt/cni/bin"
STAMP_DIR = "/var/lib/provisioner/phases"
MARKER = "/etc/provisioner/cluster.json"

# what a host of the cluster runs and keeps: `cluster.reset` (99-reset.yml) and remove-node
# (34-reset-node.yml, which imports it) stop and remove exactly these; remove-node's end-state
# probe reads them too
ETCD_CONF = "/etc/etcd/etcd.conf.yml"
KUBE_APISERVER_MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
# containerd after the kubelet: containerd 2's CRI plugin recreates /etc/cni/net.d while it runs
RESET_UNITS = ("k3s", "k3s-agent", "kubelet", "containerd", "etcd", "keepalived", "haproxy")
RESET_PATHS = ("/etc/kubernetes", "/var/lib/kubelet", "/var/lib/etcd/member", "/etc/etcd",
               "/etc/systemd/system/etcd.service", "/etc/rancher", "/var/lib/rancher",
               "/etc/cni/net.d", "/var/lib/provisioner", "/etc/haproxy/haproxy.cfg",
               "/etc/keepalived/keepalived.conf", "/var/log/standin", "/var/log/provisioner",
               "/etc/provisioner")

SERVICES = ("containerd", "etcd", "haproxy", "keepalived", "kubelet", "k3s", "k3s-agent",
            "chrony")

PLAYBOOK_VARS = {
    "admin_conf": ADMIN_CONF,
    "kubelet_conf": KUBELET_CONF,
    "kubeadm_init": KUBEADM_INIT,
    "kubeadm_join": KUBEADM_JOIN,
    "manifests": MANIFESTS,
    "manifests_aside": MANIFESTS_ASIDE,
    "addons": ADDONS,
    "node_meta": NODE_META,
    "kubeadm_log": KUBEADM_LOG,
    "kubeadm_log_mark": KUBEADM_LOG_MARK,
    "k3s_admin_conf": K3S_ADMIN_CONF,
    "k3s_agent_conf": K3S_AGENT_CONF,
    "k3s_node_token": K3S_NODE_TOKEN,
    "etcd_pki": ETCD_PKI,
    "etcd_data": ETCD_DATA,
    "etcd_client_port": ETCD_CLIENT_PORT,
    "stamp_dir": STAMP_DIR,
    "etcd_conf": ETCD_CONF,
    "kube_apiserver_manifest": KUBE_APISERVER_MANIFEST,
    "reset_units": list(RESET_UNITS),
    "reset_paths": list(RESET_PATHS),
}
