"""The built-in lab: booted Debian nodes, their network, trust, package source and teardown."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import paramiko
import pytest

from provisioner.errors import UserError
from provisioner.lab import base
from provisioner.lab import nspawn as lab_nspawn
from tests.conftest import LAB_INVENTORY, REPO, lab_cluster, require_lab

SSH = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes"]


# -- without booting anything ------------------------------------------------------------------

def test_host_mirror_read_from_apt_sources(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(textwrap.dedent("""\
        Types: deb
        URIs: http://security.example/debian-security
        Suites: bookworm-security
        Components: main

        Types: deb deb-src
        URIs: http://mirror.example/debian
        Suites: bookworm bookworm-updates
        Components: main
        """))
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    assert base.host_mirror((deb822, one_line)) == "http://mirror.example/debian"
    assert base.host_mirror((tmp_path / "missing", one_line)) == "http://other.example/debian"
    with pytest.raises(UserError, match="no Debian mirror"):
        base.host_mirror((tmp_path / "missing",))


def test_node_files_give_no_way_out(tmp_path):
    cluster = lab_cluster(LAB_INVENTORY, tmp_path)
    lab = lab_nspawn.Lab(cluster)
    lab.key_file = tmp_path / "id"
    Path(f"{lab.key_file}.pub").write_text("ssh-ed25519 AAAAtest lab\n")
    files = {path: text for path, text, _ in lab.node_files(cluster.node("cp2"))}
    network = files["/etc/systemd/network/80-container-host0.network"]
    assert "Address=10.90.0.12/24" in network and "Gateway" not in network
    assert files["/etc/apt/sources.list.d/lab.list"] == \
        "deb [trusted=yes] http://10.90.0.1:8090 ./\n"
    assert [ln for ln in files["/etc/resolv.conf"].splitlines() if ln.startswith("nameserver")] \
        == ["nameserver 127.0.0.1"]
    assert files["/etc/hostname"] == "cp2\n"


@pytest.mark.parametrize("inventory, bridge, address", [
    ("inventories/lab.yml", "k8slab0", "10.90.0.1/24"),          # set: used as it is
    ("inventories/single.yml", "lab192168056", "192.168.56.1/24"),  # derived from the /24
    ("inventories/ha-kubevip.yml", "lab192168056", "192.168.56.1/24"),
    ("tests/data/good/minimal.yml", "lab192168001", "192.168.1.1/24"),
])
def test_lab_network_is_the_inventorys_or_derived_from_its_subnet(inventory, bridge, address):
    from provisioner import inventory as inv

    assert lab_nspawn.lab_network(inv.load(REPO / inventory)) == (bridge, address)


def test_lab_network_is_not_guessed_across_subnets(tmp_path):
    from provisioner import inventory as inv

    path = tmp_path / "two.yml"
    path.write_text("all:\n  vars: {cluster_name: two}\n  children:\n    control_plane:\n"
                    "      hosts: {cp1: {ansible_host: 10.1.0.11}}\n    workers:\n"
                    "      hosts: {w1: {ansible_host: 10.2.0.21}}\n")
    cluster = inv.load(path)
    assert lab_nspawn.lab_network(cluster) == ("", "")
    with pytest.raises(UserError, match="lab_bridge: not set, and the hosts are not all in one /24"):
        lab_nspawn.Lab(cluster).check()


def test_check_says_what_to_install(tmp_path, monkeypatch):
    lab = lab_nspawn.Lab(lab_cluster(LAB_INVENTORY, tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="needs root"):
        lab.check()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(lab_nspawn.shutil, "which",
                        lambda tool: None if tool == "systemd-nspawn" else "/usr/bin/" + tool)
    with pytest.raises(UserError, match=r"systemd-nspawn.*bootstrap\.sh.*systemd-container"):
        lab.check()


# -- on the session lab ------------------------------------------------------------------------

def ssh_cmd(lab, node: str, known_hosts: Path, key: Path | None = None) -> list[str]:
    return SSH + ["-i", str(key or lab.key_file), "-o", f"UserKnownHostsFile={known_hosts}",
                  "-o", "StrictHostKeyChecking=yes", f"root@{lab.node(node).address}"]


@pytest.mark.lab
def test_each_node_has_its_hostname_and_a_booted_systemd(lab):
    for n in lab.nodes:
        rc, out, _ = lab.run(n.name, "hostname; systemctl is-system-running")
        hostname, state = out.split()[:2]
        assert hostname == n.name
        assert state in ("running", "degraded"), (n.name, out)


@pytest.mark.lab
def test_ssh_trusts_only_the_keys_lab_up_recorded(lab, tmp_path):
    cp1 = lab.node("cp1")
    ok = subprocess.run(ssh_cmd(lab, "cp1", lab.known_hosts) + ["hostname"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "cp1", ok.stderr

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    refused = subprocess.run(ssh_cmd(lab, "cp1", empty) + ["true"], capture_output=True, text=True)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr

    # Another node's key recorded for cp1's address: a changed host key is refused.
    other = next(ln for ln in lab.known_hosts.read_text().splitlines()
                 if ln.startswith(lab.node("cp2").address + " "))
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(other.replace(lab.node("cp2").address, cp1.address, 1) + "\n")
    changed = subprocess.run(ssh_cmd(lab, "cp1", wrong) + ["true"], capture_output=True, text=True)
    assert changed.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in changed.stderr

    client = paramiko.SSHClient()
    client.load_host_keys(str(wrong))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(cp1.address, username="root", key_filename=str(lab.key_file),
                       look_for_keys=False, allow_agent=False, timeout=5)
    client.close()

    # A client key the lab did not authorize is refused too.
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    denied = subprocess.run(ssh_cmd(lab, "cp1", lab.known_hosts, stranger) + ["true"],
                            capture_output=True, text=True)
    assert denied.returncode == 255 and "Permission denied" in denied.stderr


@pytest.mark.lab
def test_nodes_reach_each_other_by_name_and_nothing_else(lab):
    names = [n.name for n in lab.nodes]
    probe = "; ".join(
        f"echo {m} $(timeout 3 bash -c 'exec 3<>/dev/tcp/{m}/22; head -c 7 <&3')" for m in names)
    rc, out, err = lab.run("lb1", probe)
    banners = dict(line.split(maxsplit=1) for line in out.splitlines() if len(line.split()) == 2)
    assert banners == {m: "SSH-2.0" for m in names}, out + err

    rc, out, _ = lab.run("lb1", "ip route show default; ip -6 route show default")
    assert rc == 0 and out.strip() == ""
    # 192.0.2.1 is TEST-NET-1: with no route the kernel refuses at once, no packet leaves.
    rc, _, err = lab.run("lb1", "timeout 3 bash -c 'exec 3<>/dev/tcp/192.0.2.1/80'")
    assert rc != 0 and "unreachable" in err.lower()
    rc, out, _ = lab.run("lb1", "cat /etc/hosts; grep ^nameserver /etc/resolv.conf")
    listed = {(ln.split()[0], ln.split()[1]) for ln in out.splitlines()
              if ln and not ln.startswith(("#", "nameserver"))}
    assert {(n.address, n.name) for n in lab.nodes} | {("127.0.0.1", "localhost")} <= listed
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("nameserver")] \
        == ["127.0.0.1"]


@pytest.mark.lab
def test_packages_come_only_from_the_host_and_reset_makes_a_node_fresh(lab):
    source = f"http://{lab.lab.host_ip}:8090"
    rc, out, err = lab.run("w1", "grep -rh '^deb' /etc/apt/sources.list /etc/apt/sources.list.d/;"
                           " apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive "
                           "apt-get install -y -q ipset >/dev/null && ipset version && "
                           "apt-cache policy ipset")
    assert rc == 0, err
    assert out.splitlines()[0] == f"deb [trusted=yes] {source} ./"
    assert len([ln for ln in out.splitlines() if ln.startswith("deb ")]) == 1
    assert "ipset v7" in out and f"500 {source} ./ Packages" in out
    assert "deb.debian.org" not in out

    lab.reset(["w1"])
    rc, out, _ = lab.run("w1", "hostname; command -v ipset || echo no-ipset")
    assert out.split() == ["w1", "no-ipset"]


@pytest.mark.lab
def test_a_second_holder_of_the_lab_is_refused(lab):
    other = lab_nspawn.Lab(lab.cluster)
    with pytest.raises(UserError, match="in use by pid"):
        with other.locked():
            pass


# -- a throwaway lab: up after a crash, down leaves nothing ------------------------------------

TMP_INVENTORY = """\
all:
  vars:
    cluster_name: labtmp
    lab_bridge: k8slab9
    lab_bridge_address: 10.90.9.1/24
    # lab nodes sit on this machine's cgroup v1 hierarchy: kubelets >= 1.35 refuse it unless told
    allow_cgroup_v1: true
    ansible_user: root
    ansible_ssh_private_key_file: {key}
  children:
    control_plane:
      hosts:
        tmp1: {{ansible_host: 10.90.9.11}}
    workers:
      hosts:
        tmp2: {{ansible_host: 10.90.9.21}}
"""


def invoke(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def leftovers(name: str, bridge: str, address: str) -> list[str]:
    data = f"/var/lib/provisioner-lab/{name}"
    found = []
    for pid in os.listdir("/proc"):
        cmd = lab_nspawn.procs.cmdline(int(pid)) if pid.isdigit() else ""
        if data in cmd or f"--bind {address} " in cmd:
            found.append(f"process {pid}: {cmd}")
    found += [f"container init {p}" for p in
              lab_nspawn._container_inits([Path(data, "tmp1"), Path(data, "tmp2")])]
    found += [f"mount {m}" for m in lab_nspawn._mounts_under(Path(data))]
    if Path(f"/sys/class/net/{bridge}").exists():
        found.append(f"bridge {bridge}")
    found += [f"folder {p}" for p in (data, f"/run/provisioner-lab/{name}") if Path(p).exists()]
    return found


@pytest.mark.lab
def test_up_cleans_a_crashed_lab_and_down_leaves_nothing(tmp_path):
    require_lab()
    inventory = tmp_path / "labtmp.yml"
    inventory.write_text(TMP_INVENTORY.format(key=tmp_path / "ssh" / "id_ed25519"))
    env = dict(os.environ, PROVISIONER_STATE_DIR=str(tmp_path / "state"))
    try:
        first = invoke("lab.up", "-i", str(inventory), env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "tmp1" in first.stdout and "running" in first.stdout
        known = (tmp_path / "state/labtmp/known_hosts").read_text().split()
        assert known[0] == "10.90.9.11" and known[1] == "ssh-ed25519"

        # Crash: nspawn of tmp1 killed outright, its container and mount left behind.
        pid = int(Path("/run/provisioner-lab/labtmp/tmp1.pid").read_text())
        os.kill(pid, 9)
        again = invoke("lab.up", "-i", str(inventory), env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        shell = invoke("lab.ssh", "tmp2", "-i", str(inventory), "-c", "getent hosts tmp1",
                       env=env)
        assert shell.returncode == 0 and shell.stdout.split() == ["10.90.9.11", "tmp1"]
        assert "running" in invoke("lab.status", "-i", str(inventory), env=env).stdout
    finally:
        down = invoke("lab.down", "-i", str(inventory), env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert leftovers("labtmp", "k8slab9", "10.90.9.1") == []
    assert invoke("lab.down", "-i", str(inventory), env=env).returncode == 0  # idempotent
    assert lab_nspawn.base.BASE_DIR.is_dir() and (lab_nspawn.packages.DEBS_DIR / "Packages").exists()
