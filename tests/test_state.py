"""The state folder: beside the inventory from any folder, made under the lock, damaged files named,
and the package working when installed from a wheel."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from provisioner import actions, inventory
from provisioner.errors import UserError
from provisioner.state import State, read_secrets

REPO = Path(__file__).resolve().parents[1]


def copy_inventory(tmp_path, name="single", **extra) -> Path:
    data = yaml.safe_load((REPO / "inventories" / f"{name}.yml").read_text())
    data["all"]["vars"].update(extra)
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_task(cwd, *args, env=None, python=sys.executable, pythonpath=None):
    env = dict(env or os.environ)
    env.pop("PROVISIONER_STATE_DIR", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([python, "-c", "import sys; from provisioner.cli import main; "
                           "sys.argv[0] = 'provisioner'; main()", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_state_folder_is_beside_the_inventory_from_any_folder(tmp_path):
    inv = copy_inventory(tmp_path)
    cas = []
    for cwd in (tmp_path, tmp_path / "site", Path("/")):
        r = run_task(cwd, "cluster.render", "-i", str(inv), "-o", str(tmp_path / "out"))
        assert r.returncode == 0, r.stderr
        cas.append((tmp_path / "site/state/single/pki/ca.crt").read_bytes())
    assert cas[0] == cas[1] == cas[2]
    assert not (tmp_path / "state").exists()
    assert oct((tmp_path / "site/state/single").stat().st_mode & 0o777) == "0o700"


class SilentSSH:
    """A loopback port that accepts connections and never speaks: an SSH handshake hangs on it
    until the connect timeout, so the first action holds the lock for a while."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


def test_three_concurrent_first_runs_make_one_ca_and_refuse_the_others(tmp_path):
    silent = SilentSSH()
    try:
        inv = copy_inventory(tmp_path)
        # the nodes are the silent port (validation refuses loopback node addresses: the model
        # is changed after loading, as a test may)
        code = ("import dataclasses, sys; from provisioner import actions, inventory\n"
                "from provisioner.errors import UserError\n"
                "c = inventory.load(sys.argv[1])\n"
                "c = dataclasses.replace(c, nodes=tuple(dataclasses.replace(n, address="
                f"'127.0.0.1', ssh_port={silent.port}) for n in c.nodes))\n"
                "try:\n    actions.up(c, trust_new=True)\n"
                "except UserError as e:\n    print(str(e).splitlines()[0])\n")
        env = {k: v for k, v in os.environ.items() if k != "PROVISIONER_STATE_DIR"}
        procs = [subprocess.Popen([sys.executable, "-c", code, str(inv)], env=env,
                                  stdout=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        silent.close()
    refused = [o for o in outs if "another action is running" in o]
    assert len(refused) == 2, outs
    pki = tmp_path / "site/state/single/pki"
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert not list(pki.glob(".*tmp*"))


@pytest.mark.parametrize("content, message", [
    ("", "damaged"),
    ("bootstrap_token: [", "cannot be read"),
    ("bootstrap_token: x\n", "damaged"),
    ("\xff\xfe", "cannot be read"),
])
def test_a_damaged_secrets_file_is_named_with_the_way_out(tmp_path, content, message):
    path = tmp_path / "secrets.yaml"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(UserError, match=message) as e:
        read_secrets(path)
    assert str(path) in str(e.value) and "backup" in str(e.value)


def test_a_truncated_ca_is_named(tmp_path):
    inv = copy_inventory(tmp_path)
    cluster = inventory.load(inv)
    state = State(cluster)
    with state.lock():
        actions.Run.prepare(cluster)
    crt = state.pki / "ca.crt"
    crt.write_bytes(crt.read_bytes()[:100])
    with state.lock(), pytest.raises(UserError, match=f"{crt}: not a readable certificate"):
        actions.Run.prepare(cluster)


def test_a_state_folder_that_is_a_file_is_refused(tmp_path):
    inv = copy_inventory(tmp_path)
    (tmp_path / "site/state").mkdir()
    (tmp_path / "site/state/single").write_text("oops")
    with pytest.raises(UserError, match="state folder is a file"):
        with State(inventory.load(inv)).lock():
            pass


def test_the_installed_wheel_renders_from_another_folder(tmp_path):
    """Not editable: built as a wheel, installed into a folder of its own, run from elsewhere."""
    wheels, src = tmp_path / "wheels", tmp_path / "src"  # built from a copy: no build/ here
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copytree(REPO / "provisioner", src / "provisioner",
                    ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("provisioner-*.whl")
    target = tmp_path / "site-packages"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                              "--target", str(target), str(wheel)], capture_output=True,
                             text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    assert (target / "provisioner/playbooks/03-etcd.yml").is_file()
    assert (target / "provisioner/playbooks/tasks/restart.yml").is_file()
    assert (target / "provisioner/templates/etc/kubernetes/kubeadm-init.yaml.j2").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    inv = copy_inventory(tmp_path)
    where = subprocess.run([sys.executable, "-c", "import provisioner; print(provisioner.__file__)"],
                           cwd=elsewhere, env=dict(os.environ, PYTHONPATH=str(target)),
                           capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(target)), where
    r = run_task(elsewhere, "cluster.render", "-i", str(inv), "-o", str(elsewhere / "out"),
                 pythonpath=str(target))
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "out/cp1/etc/kubernetes/kubeadm-init.yaml").is_file()
    shutil.rmtree(target)


def test_a_host_with_another_ca_is_refused_naming_both_fingerprints(tmp_path):
    """A state folder made anew (or another cluster's host): pushing our CA would split a live
    cluster, so the run stops before any change."""
    from types import SimpleNamespace

    from provisioner import pki

    cluster = inventory.load(copy_inventory(tmp_path))
    state = State(cluster)
    with state.lock():
        run = actions.Run.prepare(cluster)
    other = pki.ensure_ca(tmp_path / "other", "ca", "kubernetes")[0]
    from cryptography.hazmat.primitives import serialization

    theirs = other.public_bytes(serialization.Encoding.PEM).decode()
    ours = (state.pki / "ca.crt").read_text()
    for n in cluster.nodes:
        run.ctx.facts[n.name] = SimpleNamespace(certs={"/etc/kubernetes/pki/ca.crt": ours})
    assert run.foreign_cas() == []
    run.ctx.facts["w1"].certs["/etc/kubernetes/pki/ca.crt"] = theirs
    (refusal,) = run.foreign_cas()
    assert refusal.startswith("w1: /etc/kubernetes/pki/ca.crt is another CA")
    assert actions.fingerprint(theirs.encode()) in refusal
    assert actions.fingerprint(ours.encode()) in refusal


def test_a_fixed_setting_changed_after_the_build_is_refused(tmp_path):
    import dataclasses
    from types import SimpleNamespace

    from provisioner import phases as ph

    cluster = inventory.load(copy_inventory(tmp_path))
    with State(cluster).lock():
        run = actions.Run.prepare(cluster)
    built = {"cluster_name": "single", "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12",
             "cluster_domain": "cluster.local"}
    stamp = ph.CONTROL_PLANE.stamp_path
    for n in cluster.nodes:
        run.ctx.facts[n.name] = SimpleNamespace(marker=built, files={stamp: "0" * 64})
    assert run.fixed_changes() == []
    run.cluster = dataclasses.replace(cluster, pod_cidr="10.32.0.0/16")
    run.ctx.cluster = run.cluster
    assert run.fixed_changes() == [
        "pod_cidr: the cluster was built with 10.244.0.0/16; it cannot change to 10.32.0.0/16 "
        "in place (set it back; a different one needs a new cluster)"]
    for n in cluster.nodes:  # never built: anything goes
        run.ctx.facts[n.name].files = {}
    assert run.fixed_changes() == []
