"""Several clusters: `cluster.list` reads what each action records in its state folder;
`cluster.kubeconfig` writes the admin kubeconfig named after the cluster, or merges it into
kubectl's config by kubectl's rules, 0600, never printing a secret."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provisioner import clusters
from provisioner.errors import UserError
from provisioner.tasks import recorded

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECRET = "c2VjcmV0LWNsaWVudC1rZXktZGF0YQ"  # stands for the admin client key


def make_cluster(tmp: Path, name: str) -> Path:
    """An inventory with its state folder beside it, holding an admin kubeconfig as
    kubeadm's admin.conf looks (already pointed at the API endpoint by the kubeconfig phase)."""
    inv = tmp / f"{name}.yml"
    inv.write_text(f"""all:
  vars:
    cluster_name: {name}
    state_dir: state
  children:
    control_plane:
      hosts:
        cp1: {{ansible_host: 192.168.56.11}}
    workers:
      hosts:
        w1: {{ansible_host: 192.168.56.21}}
""")
    folder = tmp / "state" / name
    folder.mkdir(parents=True, mode=0o700)
    admin = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "kubernetes", "cluster": {
            "certificate-authority-data": "Q0EtZGF0YQ", "server": "https://192.168.56.11:6443"}}],
        "users": [{"name": "kubernetes-admin", "user": {
            "client-certificate-data": "Y2VydA", "client-key-data": SECRET}}],
        "contexts": [{"name": "kubernetes-admin@kubernetes", "context": {
            "cluster": "kubernetes", "user": "kubernetes-admin"}}],
        "current-context": "kubernetes-admin@kubernetes",
    }
    (folder / "kubeconfig").write_text(yaml.safe_dump(admin))
    os.chmod(folder / "kubeconfig", 0o600)
    return inv


def invoke(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "invoke"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, **(env or {})))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- what actions record, and cluster.list ----------------------------------------------------


def test_actions_record_their_end_and_list_shows_it(tmp_path):
    a, b = make_cluster(tmp_path, "alpha"), make_cluster(tmp_path, "beta")

    @recorded
    def up(c, inventory="x", bundle=None):
        return "done"

    @recorded
    def upgrade(c, to, inventory="x", plan=False):
        raise UserError("w1: drain failed\nsecond line")

    assert up(None, inventory=str(a), bundle="/srv/bundle") == "done"
    with pytest.raises(UserError):
        upgrade(None, "v1.37.1", inventory=str(b))
    ra = json.loads((tmp_path / "state/alpha/last-action.json").read_text())
    assert (ra["action"], ra["result"], ra["version"], ra["hosts"]) == ("up", "ok", "v1.36.4", 2)
    assert ra["inventory"] == str(a) and ra["nodes"] == {"control_plane": 1, "workers": 1}
    rb = json.loads((tmp_path / "state/beta/last-action.json").read_text())
    assert (rb["action"], rb["result"], rb["message"]) == ("upgrade --to v1.37.1", "failed",
                                                           "w1: drain failed")
    assert mode(tmp_path / "state/beta/last-action.json") == 0o600

    (tmp_path / "state/gamma/pki").mkdir(parents=True)  # built before records existed
    (tmp_path / "state/notacluster").mkdir()
    r = invoke("cluster.list", "-s", str(tmp_path / "state"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["CLUSTER", "INVENTORY", "VERSION", "NODES", "ACTION", "RESULT",
                                "TIME"]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert sorted(rows) == ["alpha", "beta", "gamma"]
    assert str(a) in rows["alpha"] and "kubeadm v1.36.4" in rows["alpha"]
    assert "2 (1 control_plane, 1 workers)" in rows["alpha"] and ra["time"] in rows["alpha"]
    assert "upgrade --to v1.37.1  failed: w1: drain failed" in rows["beta"]
    assert rows["gamma"].split()[1:] == ["-"] * 6
    r = invoke("cluster.list", "-i", str(a))  # an inventory names its state folder
    assert r.returncode == 0 and "beta" in r.stdout, r.stderr


def test_no_record_without_a_state_folder(tmp_path):
    inv = make_cluster(tmp_path, "alpha")
    (tmp_path / "state/alpha/kubeconfig").unlink()
    (tmp_path / "state/alpha").rmdir()

    @recorded
    def status(c, inventory="x"):
        return None

    status(None, inventory=str(inv))
    assert not (tmp_path / "state/alpha").exists()  # recording never makes the folder


# --- cluster.kubeconfig -----------------------------------------------------------------------


def test_kubeconfig_named_after_the_cluster(tmp_path):
    inv = make_cluster(tmp_path, "alpha")
    out = tmp_path / "alpha.conf"
    r = invoke("cluster.kubeconfig", "-i", str(inv), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    assert mode(out) == 0o600
    config = yaml.safe_load(out.read_text())
    assert [e["name"] for e in config["clusters"] + config["users"] + config["contexts"]] == [
        "alpha"] * 3
    assert config["contexts"][0]["context"] == {"cluster": "alpha", "user": "alpha"}
    assert config["current-context"] == "alpha"
    assert config["users"][0]["user"]["client-key-data"] == SECRET
    assert config["clusters"][0]["cluster"]["server"] == "https://192.168.56.11:6443"


EXISTING = """\
# my kubectl config
apiVersion: v1
kind: Config
current-context: work
preferences:
  colors: true
clusters:
- name: work
  cluster:
    server: https://work.example.com:6443
    insecure-skip-tls-verify: true
    extensions:
    - name: client.authentication.k8s.io/exec
      extension: {audience: work}
users:
- name: work-user
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: aws
      args: [eks, get-token, --cluster-name, work]
contexts:
- name: work
  context: {cluster: work, user: work-user, namespace: apps}
"""


def test_merge_keeps_other_contexts(tmp_path):
    alpha, beta = make_cluster(tmp_path, "alpha"), make_cluster(tmp_path, "beta")
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    target = home / ".kube/config"
    target.write_text(EXISTING)
    os.chmod(target, 0o644)
    before = yaml.safe_load(EXISTING)
    env = {"HOME": str(home), "KUBECONFIG": ""}
    for inv in (alpha, beta, alpha):  # alpha twice: replaced in place, not duplicated
        r = invoke("cluster.kubeconfig", "-i", str(inv), "--merge", env=env)
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout + r.stderr
        assert str(target) in r.stdout
    assert "replaced context alpha" in r.stdout
    assert mode(target) == 0o600
    after = yaml.safe_load(target.read_text())
    for kind in ("clusters", "users", "contexts"):
        assert after[kind][0] == before[kind][0]  # the unrelated entry, unchanged
        assert [e["name"] for e in after[kind][1:]] == ["alpha", "beta"]
    assert after["current-context"] == "work"  # set only when there is none
    assert after["preferences"] == before["preferences"]
    assert after["contexts"][1]["context"] == {"cluster": "alpha", "user": "alpha"}


def test_merge_target_from_kubeconfig_env_and_current_context(tmp_path):
    inv = make_cluster(tmp_path, "alpha")
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    env = {"KUBECONFIG": f"{first}{os.pathsep}{second}", "HOME": str(tmp_path / "home")}
    r = invoke("cluster.kubeconfig", "-i", str(inv), "--merge", env=env)
    assert r.returncode == 0, r.stderr
    assert not second.exists() and mode(first) == 0o600
    assert yaml.safe_load(first.read_text())["current-context"] == "alpha"  # there was none
    assert "(the current context)" in r.stdout


def test_kubeconfig_refusals(tmp_path):
    inv = make_cluster(tmp_path, "alpha")
    other = tmp_path / "other.yaml"
    other.write_text(EXISTING)
    r = invoke("cluster.kubeconfig", "-i", str(inv), "-o", str(other))  # would drop `work`
    assert r.returncode == 2 and "holds other contexts (work)" in r.stderr
    assert other.read_text() == EXISTING
    broken = tmp_path / "broken.yaml"
    broken.write_text("clusters: {a: 1}\n")
    r = invoke("cluster.kubeconfig", "-i", str(inv), "--merge", "-o", str(broken))
    assert r.returncode == 2 and "`clusters` is not a list" in r.stderr
    assert broken.read_text() == "clusters: {a: 1}\n"
    (tmp_path / "state/alpha/kubeconfig").unlink()
    r = invoke("cluster.kubeconfig", "-i", str(inv), "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "has no admin kubeconfig yet" in r.stderr
    assert "Traceback" not in r.stderr


def test_merge_rules_as_data():
    new = {"clusters": [{"name": "a", "cluster": {"server": "new"}}],
           "users": [{"name": "a", "user": {}}], "contexts": [{"name": "a", "context": {}}],
           "current-context": "a"}
    old = {"clusters": [{"name": "x", "cluster": {}}, {"name": "a", "cluster": {"server": "old"}},
                        {"name": "y", "cluster": {}}], "current-context": "", "extra": [1]}
    out = clusters.merge(old, new)
    assert [c["name"] for c in out["clusters"]] == ["x", "a", "y"]  # replaced in place
    assert out["clusters"][1]["cluster"] == {"server": "new"}
    assert out["current-context"] == "a" and out["extra"] == [1]
    assert old["clusters"][1]["cluster"] == {"server": "old"}  # the input is not changed
