"""The change matrix on booted lab nodes: from a converged cluster, one inventory edit at a time.
For each edit `cluster.plan` names exactly that change, `cluster.up` applies it, the running
units that read the changed file restart exactly once and no other unit restarts, and the next
rerun is a no-op. Then drift (a key made 0644, a config chowned) is named by plan and fixed.

Real here: containerd, etcd (mutual TLS), haproxy + keepalived, the files, owners and restarts.
The kube binaries are the test-only stand-ins: for node labels and taints these tests prove
which kubectl calls the provisioner makes, not that a real API server stored them.
"""

from __future__ import annotations

import copy
import json
import time

import pytest
import yaml

from provisioner import actions
from provisioner.state import State
from tests.conftest import LAB_INVENTORY, lab_cluster

pytestmark = pytest.mark.lab

UNITS = ("containerd", "etcd", "haproxy", "keepalived", "kubelet")
KUBE_NODES = ("cp1", "cp2", "cp3", "w1")


def starts(lab) -> dict[tuple[str, str], int]:
    """(node, unit) -> how many times the unit started since boot (journal), for running units."""
    out = {}
    script = ("for u in " + " ".join(UNITS) + "; do "
              "if systemctl is-active -q $u; then "
              "echo $u $(systemctl show -p InvocationID --value $u); fi; done")
    for n in lab.cluster.nodes:
        rc, text, err = lab.run(n.name, script)
        assert rc == 0, err
        for line in text.splitlines():
            unit, invocation = line.split()
            out[(n.name, unit)] = invocation
    return out


def restarted(before, after) -> set[tuple[str, str]]:
    return {k for k, v in after.items() if before.get(k) not in (None, v)}


def work(result) -> dict:
    return {p.title: w for p, w in result if w}


class Edits:
    """The lab inventory as data; each edit writes a new file and loads it with this session's
    state folder (the cluster stays the same: same name, same state)."""

    def __init__(self, lab, folder):
        self.lab, self.folder, self.n = lab, folder, 0
        self.data = yaml.safe_load(LAB_INVENTORY.read_text())

    @property
    def vars(self):
        return self.data["all"]["vars"]["cluster"]

    def host(self, name):
        for group in self.data["all"]["children"].values():
            hosts = group.get("hosts") or {}
            if name in hosts and hosts[name]:
                return hosts[name]
        raise KeyError(name)

    def cluster(self):
        self.n += 1
        data = copy.deepcopy(self.data)
        key = self.lab.cluster.nodes[0].ssh_key
        data["all"]["vars"]["ansible_ssh_private_key_file"] = key
        path = self.folder / f"edit{self.n}.yml"
        path.write_text(yaml.safe_dump(data))
        return lab_cluster(path, self.lab.state_dir)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, lab):
    from tests.standins import make_standin_bundle

    return make_standin_bundle(tmp_path_factory.mktemp("bundle"), lab.cluster)


@pytest.fixture(scope="module")
def edits(lab, bundle, tmp_path_factory):
    """A converged cluster built without cp3 as a control plane (cp3 runs only its etcd member):
    adding it later is the load balancer backend edit."""
    lab.reset()
    e = Edits(lab, tmp_path_factory.mktemp("edits"))
    cp3 = e.data["all"]["children"]["control_plane"]["hosts"].pop("cp3")
    e.data["all"]["children"]["etcd"]["hosts"]["cp3"] = cp3
    actions.up(e.cluster(), bundle_dir=str(bundle))
    return e


def apply(lab, edits, bundle, unplanned=None):
    """plan, then up, then rerun: (planned work, restarted (node, unit) pairs). `unplanned`:
    {phase: work} the run does beyond the plan because of a stand-in's known gap (said where)."""
    cluster = edits.cluster()
    planned = work(actions.up(cluster, bundle_dir=str(bundle), dry_run=True))
    before = starts(lab)
    did = work(actions.up(cluster, bundle_dir=str(bundle)))
    for phase, extra in (unplanned or {}).items():
        assert did.pop(phase) == extra
    assert did == planned
    time.sleep(1)
    after = starts(lab)
    assert work(actions.up(cluster, bundle_dir=str(bundle))) == {}, "the rerun is not a no-op"
    assert starts(lab) == after, "the no-op rerun restarted something"
    return planned, restarted(before, after)


def on(hosts, *changes):
    return {h: list(changes) for h in hosts}


def test_registry_mirror(lab, edits, bundle):
    edits.vars["registry_mirrors"] = {"docker.io": ["http://10.90.0.1:5000"]}
    hosts_toml = "/etc/containerd/certs.d/docker.io/hosts.toml"
    planned, restarts = apply(lab, edits, bundle)
    kube = ("cp1", "cp2", "w1")  # cp3 is no kube node yet
    assert planned == {"runtime": on(kube, f"write {hosts_toml} (new)")}
    assert restarts == set()  # containerd reads certs.d at each pull
    assert "10.90.0.1:5000" in lab.run("w1", f"cat {hosts_toml}")[1]


def test_sandbox_image(lab, edits, bundle):
    from tests.standins import make_standin_bundle

    edits.vars["sandbox_image"] = "registry.k8s.io/pause:3.9"
    make_standin_bundle(bundle, edits.cluster())  # the bundle must carry the new sandbox image
    planned, restarts = apply(lab, edits, bundle)
    kube = ("cp1", "cp2", "w1")
    assert planned == {"runtime": on(kube, "write /etc/containerd/config.toml (changed)"),
                       "images": on(kube, "import image registry.k8s.io/pause:3.9")}
    assert restarts == {(h, "containerd") for h in kube}


def kubectl_calls(lab, verb):
    rc, out, _ = lab.run("cp1", "cat /var/log/standin/kubectl.jsonl 2>/dev/null")
    return [e["argv"] for e in map(json.loads, out.splitlines()) if verb in e["argv"]]


def test_node_label(lab, edits, bundle):
    edits.host("w1")["node_labels"] = {"tier": "web"}
    planned, restarts = apply(lab, edits, bundle)
    assert planned == {
        "join-workers": {"w1": ["write /etc/kubernetes/kubeadm-join.yaml (changed)"]},
        "node-meta": {"cp1": ["write /etc/kubernetes/provisioner/node-meta.json (changed)"]}}
    assert restarts == set()
    assert any(a[-1:] == ["tier=web"] and "w1" in a for a in kubectl_calls(lab, "label"))
    del edits.host("w1")["node_labels"]
    planned, restarts = apply(lab, edits, bundle)
    assert set(planned) == {"join-workers", "node-meta"} and restarts == set()
    assert any(a[-1:] == ["tier-"] and "w1" in a for a in kubectl_calls(lab, "label"))


def test_node_taint(lab, edits, bundle):
    edits.host("w1")["node_taints"] = ["dedicated=db:NoSchedule"]
    planned, restarts = apply(lab, edits, bundle)
    assert planned == {
        "join-workers": {"w1": ["write /etc/kubernetes/kubeadm-join.yaml (changed)"]},
        "node-meta": {"cp1": ["write /etc/kubernetes/provisioner/node-meta.json (changed)"]}}
    assert restarts == set()
    assert any(a[-1:] == ["dedicated=db:NoSchedule"] for a in kubectl_calls(lab, "taint"))


def test_etcd_certificate_reissued(lab, edits, bundle):
    """A re-issued member certificate reaches only that member, owned by etcd, and restarts only
    its etcd (the others keep quorum)."""
    pki = State(edits.cluster()).pki / "etcd"
    (pki / "cp2-server.crt").unlink()  # the controller issues it again
    planned, restarts = apply(lab, edits, bundle)
    assert planned == {"etcd": on(["cp2"], "write /etc/etcd/pki/server.crt (changed)",
                                  "write /etc/etcd/pki/server.key (changed)")}
    assert restarts == {("cp2", "etcd")}
    rc, out, _ = lab.run("cp2", "stat -c '%U:%G %a' /etc/etcd/pki/server.key /etc/etcd/pki/server.crt")
    assert out.split("\n")[:2] == ["etcd:etcd 600", "etcd:etcd 644"]


def test_control_plane_added_updates_every_haproxy_backend(lab, edits, bundle):
    cp3 = edits.data["all"]["children"]["etcd"]["hosts"].pop("cp3")
    edits.data["all"]["children"]["etcd"]["hosts"]["cp3"] = None
    edits.data["all"]["children"]["control_plane"]["hosts"]["cp3"] = cp3
    # Real kubeadm join writes the API server's --etcd-servers from the cluster's
    # ClusterConfiguration; the stand-in join has no API server to read it from and leaves the
    # flag out, so phase etcd-servers (cluster.up's) sets it, beyond the plan. Only there.
    servers = ",".join(f"https://10.90.0.1{i}:2379" for i in (1, 2, 3))
    planned, restarts = apply(lab, edits, bundle, unplanned={
        "etcd-servers": {"cp3": [f"set kube-apiserver --etcd-servers={servers}"]}})
    assert lab.run("cp3", "grep -c -- '- --etcd-servers=" + servers + "$' "
                   "/etc/kubernetes/manifests/kube-apiserver.yaml")[1].strip() == "1"
    assert planned["loadbalancer"] == on(["lb1", "lb2"], "write /etc/haproxy/haproxy.cfg (changed)")
    assert list(planned["join-control-plane"]) == ["cp3"]  # its join file, the CA, then:
    assert planned["join-control-plane"]["cp3"][-1] == "kubeadm join"
    assert "cp3" in planned["runtime"] and "cp3" in planned["binaries"]
    assert set(planned["control-plane"]["cp1"]) == {
        "write /etc/kubernetes/kubeadm-init.yaml (changed)"}  # the new SAN, uploaded
    assert restarts == {("lb1", "haproxy"), ("lb2", "haproxy")}
    for lb in ("lb1", "lb2"):
        cfg = lab.run(lb, "cat /etc/haproxy/haproxy.cfg")[1]
        assert "server cp3 10.90.0.13:6443" in cfg


def test_drift_is_named_and_fixed_without_restarts(lab, edits, bundle):
    ok = lab.run("cp1", "chmod 0644 /etc/etcd/pki/peer.key && "
                 "chown nobody /etc/containerd/config.toml")[0]
    assert ok == 0
    cluster = edits.cluster()
    planned = work(actions.up(cluster, bundle_dir=str(bundle), dry_run=True))
    assert planned == {
        "runtime": {"cp1": ["fix /etc/containerd/config.toml: owner nobody:root -> root:root"]},
        "etcd": {"cp1": ["fix /etc/etcd/pki/peer.key: mode 0644 -> 0600"]}}
    before = starts(lab)
    actions.up(cluster, bundle_dir=str(bundle))
    assert restarted(before, starts(lab)) == set()
    out = lab.run("cp1", "stat -c '%U:%G %a' /etc/etcd/pki/peer.key /etc/containerd/config.toml")[1]
    assert out.split("\n")[:2] == ["etcd:etcd 600", "root:root 644"]
    assert work(actions.up(cluster, bundle_dir=str(bundle))) == {}
