"""`cluster.up` with distribution k3s on booted lab nodes (tests/data/lab-k3s.yml).

k3s cannot be downloaded here: the k3s phases run against the test-only stand-in, which checks
every config key against the real k3s flags for the node's role and records how it was started.
This proves order, token passing, units and idempotency, not a working k3s cluster.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from provisioner import actions
from provisioner import bundle as bundles
from provisioner.state import State
from tests.conftest import REPO, booted_lab, lab_cluster

pytestmark = pytest.mark.lab
IMAGES = "/var/lib/rancher/k3s/agent/images"


@pytest.fixture(scope="module")
def k3s_lab(tmp_path_factory):
    with booted_lab(REPO / "tests/data/lab-k3s.yml", tmp_path_factory.mktemp("k3s-state")) as lab:
        yield lab


def records(lab, node):
    rc, out, _ = lab.run(node, "cat /var/log/standin/k3s.jsonl 2>/dev/null")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_k3s_cluster_up_with_stand_ins_then_rerun_changes_nothing(k3s_lab, tmp_path):
    from tests.standins import make_standin_bundle

    cluster = k3s_lab.cluster
    with pytest.raises(actions.BundleMissing):
        actions.up(cluster)
    # before any binary: hosts prepared, kube-vip's static pod in k3s's manifest folder
    for name in ("s1", "s2", "s3"):
        rc, out, _ = k3s_lab.run(name, "cat /var/lib/rancher/k3s/agent/pod-manifests/kube-vip.yaml")
        assert rc == 0 and "10.90.6.100" in out
    rc, _, _ = k3s_lab.run("a1", "test -e /var/lib/rancher/k3s/agent/pod-manifests/kube-vip.yaml")
    assert rc != 0

    bundle = make_standin_bundle(tmp_path / "bundle", cluster)
    done = {p.title: w for p, w in actions.up(cluster, bundle_dir=str(bundle)) if w}
    assert {"binaries", "control-plane", "join-control-plane", "join-workers"} <= set(done)
    assert "runtime" not in done and "etcd" not in done  # k3s brings both

    token = hashlib.sha256(State(cluster).secrets()["k3s_token"].encode()).hexdigest()
    first, = records(k3s_lab, "s1")
    assert first["role"] == "server" and first["config"].get("cluster-init") is True
    for name, role in (("s2", "server"), ("s3", "server"), ("a1", "agent")):
        entry, = records(k3s_lab, name)
        assert entry["role"] == role and entry["result"] == "running"
        assert entry["config"]["server"].startswith("https://")
        assert token in json.dumps(entry["config"])
    assert first["time"] < records(k3s_lab, "s2")[0]["time"] < records(k3s_lab, "s3")[0]["time"]
    for name, unit in (("s1", "k3s"), ("s3", "k3s"), ("a1", "k3s-agent")):
        assert k3s_lab.run(name, f"systemctl is-active {unit}")[1].strip() == "active"

    # the bundle's image tarball is on every node before k3s first started (k3s imports it)
    tarball = "k3s-airgap-images-amd64.tar.zst"
    folder = bundle / bundles.folder_name(cluster)
    want = hashlib.sha256((folder / tarball).read_bytes()).hexdigest()
    for name in ("s1", "s2", "s3", "a1"):
        rc, out, _ = k3s_lab.run(name, f"sha256sum {IMAGES}/{tarball}; ls {IMAGES}")
        assert rc == 0 and out.split() == [want, f"{IMAGES}/{tarball}", tarball], name
        assert records(k3s_lab, name)[0]["images"] == [f"{tarball} sha256:{want}"], name
    mtimes = {n: k3s_lab.run(n, f"stat -c %Y.%i {IMAGES}/{tarball}")[1] for n in ("s1", "a1")}

    again = {p.title: w for p, w in actions.up(cluster, bundle_dir=str(bundle)) if w}
    assert again == {}
    assert all(len(records(k3s_lab, n)) == 1 for n in ("s1", "s2", "s3", "a1"))
    assert {n: k3s_lab.run(n, f"stat -c %Y.%i {IMAGES}/{tarball}")[1] for n in mtimes} == mtimes


def invocations(lab) -> dict[tuple[str, str], str]:
    """(node, unit) -> systemd InvocationID of the running k3s units (a restart changes it)."""
    out = {}
    for n in lab.cluster.nodes:
        rc, text, _ = lab.run(n.name, "for u in k3s k3s-agent; do systemctl is-active -q $u && "
                              "echo $u $(systemctl show -p InvocationID --value $u); done; true")
        for line in text.splitlines():
            unit, invocation = line.split()
            out[(n.name, unit)] = invocation
    return out


K3S_EDITS = [
    # (what, edit of the inventory data, expected plan, units that restart)
    ("registry mirror",
     lambda d: d["all"]["vars"]["cluster"].update(
         registry_mirrors={"docker.io": ["http://10.90.6.1:5000"]}),
     {"prepare": {n: ["write /etc/rancher/k3s/registries.yaml (changed)"]
                  for n in ("s1", "s2", "s3", "a1")}},
     {("s1", "k3s"), ("s2", "k3s"), ("s3", "k3s"), ("a1", "k3s-agent")}),
    ("node label",
     lambda d: d["all"]["children"]["workers"]["hosts"]["a1"].update(node_labels={"tier": "web"}),
     {"join-workers": {"a1": ["write /etc/rancher/k3s/config.yaml (changed)"]},
      "node-meta": {"s1": ["write /etc/kubernetes/provisioner/node-meta.json (changed)"]}},
     {("a1", "k3s-agent")}),
    ("sandbox image",
     lambda d: d["all"]["vars"]["cluster"].update(sandbox_image="registry.k8s.io/pause:3.9"),
     {"control-plane": {"s1": ["write /etc/rancher/k3s/config.yaml (changed)"]},
      "join-control-plane": {n: ["write /etc/rancher/k3s/config.yaml (changed)"]
                             for n in ("s2", "s3")},
      "join-workers": {"a1": ["write /etc/rancher/k3s/config.yaml (changed)"]}},
     {("s1", "k3s"), ("s2", "k3s"), ("s3", "k3s"), ("a1", "k3s-agent")}),
]


def test_k3s_change_matrix(k3s_lab, tmp_path):
    """One edit at a time on the converged k3s cluster: the plan names exactly it, up restarts
    exactly the k3s units that read the changed file, the rerun is a no-op."""
    import yaml

    from tests.standins import make_standin_bundle

    bundle = make_standin_bundle(tmp_path / "bundle", k3s_lab.cluster)
    actions.up(k3s_lab.cluster, bundle_dir=str(bundle))
    data = yaml.safe_load((REPO / "tests/data/lab-k3s.yml").read_text())
    data["all"]["vars"]["ansible_ssh_private_key_file"] = k3s_lab.cluster.nodes[0].ssh_key
    for i, (what, edit, plan, restarts) in enumerate(K3S_EDITS):
        edit(data)
        path = tmp_path / f"edit{i}.yml"
        path.write_text(yaml.safe_dump(data))
        cluster = lab_cluster(path, k3s_lab.cluster.state_dir)
        planned = {p.title: w for p, w in actions.up(cluster, bundle_dir=str(bundle),
                                                     dry_run=True) if w}
        assert planned == plan, what
        before = invocations(k3s_lab)
        actions.up(cluster, bundle_dir=str(bundle))
        after = invocations(k3s_lab)
        assert {k for k, v in after.items() if before.get(k) != v} == restarts, what
        assert not [w for _, w in actions.up(cluster, bundle_dir=str(bundle)) if w], what
        assert invocations(k3s_lab) == after, what


def test_remove_the_first_k3s_server(k3s_lab, tmp_path):
    """s1 started the embedded etcd with cluster-init; once it is gone s2 takes its part: kubectl
    (drain, delete node) runs there, it gets the first server's config (cluster-init, no server
    URL: it keeps its etcd data), the admin kubeconfig comes from it; the edited inventory has
    no work. Destructive: the module's last test."""
    import yaml

    from provisioner import removal
    from tests.standins import make_standin_bundle

    cluster = k3s_lab.cluster
    bundle = str(make_standin_bundle(tmp_path / "bundle", cluster))
    actions.up(cluster, bundle_dir=bundle)  # back from the change matrix's edits
    did = {p.title: w for p, w in removal.remove_node(cluster, "s1", bundle_dir=bundle) if w}
    assert list(did["drain"]) == list(did["delete-node"]) == ["s2"]
    assert did["control-plane (without s1)"] == {
        "s2": ["write /etc/rancher/k3s/config.yaml (changed)"]}
    assert k3s_lab.run("s1", "systemctl is-active k3s")[1].strip() == "inactive"
    assert k3s_lab.run("s1", "test -e /var/lib/rancher/k3s")[0] != 0
    last = records(k3s_lab, "s2")[-1]
    assert last["result"] == "running" and last["config"].get("cluster-init") is True
    assert "server" not in last["config"] and last["etcd_data"] == "joined"  # its own data
    rc, out, _ = k3s_lab.run("s2", "cat /var/lib/rancher/k3s/standin/kubectl-records.json")
    assert json.loads(out)["s1"]["deleted"] is True
    for name, unit in (("s2", "k3s"), ("s3", "k3s"), ("a1", "k3s-agent")):
        assert k3s_lab.run(name, f"systemctl is-active {unit}")[1].strip() == "active"
    data = yaml.safe_load((REPO / "tests/data/lab-k3s.yml").read_text())
    data["all"]["vars"]["ansible_ssh_private_key_file"] = cluster.nodes[0].ssh_key
    del data["all"]["children"]["control_plane"]["hosts"]["s1"]
    path = tmp_path / "without-s1.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    edited = lab_cluster(path, cluster.state_dir)
    assert not [w for _, w in actions.up(edited, bundle_dir=bundle, dry_run=True) if w]
