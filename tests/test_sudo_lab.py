"""`cluster.up` as a non-root SSH user with sudo on booted lab nodes (tests/data/lab-sudo.yml).

The lab gives its nodes what a Debian cloud or Vagrant image has: the user `deploy` with the
lab key and password-less sudo. The kube phases run against the test-only stand-ins (no real
Kubernetes binaries can be had here): this proves that every command, push, probe and playbook
acts as root through sudo, with owners and modes right and an idempotent rerun - not a working
Kubernetes cluster.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from provisioner import actions
from provisioner.errors import UserError
from provisioner.lab import nspawn
from tests.conftest import REPO, booted_lab

pytestmark = pytest.mark.lab
NODES = ("scp1", "sw1")


@pytest.fixture(scope="module")
def sudo_lab(tmp_path_factory):
    with booted_lab(REPO / "tests/data/lab-sudo.yml", tmp_path_factory.mktemp("sudo-state")) as lab:
        yield lab


@pytest.fixture(scope="module")
def bundle(sudo_lab, tmp_path_factory):
    from tests.standins import make_standin_bundle

    return make_standin_bundle(tmp_path_factory.mktemp("sudo-bundle"), sudo_lab.cluster)


def as_root(lab, node: str, command: str) -> tuple[int, str]:
    rc, out, err = lab.run(node, f"sudo -n sh -c '{command}'")
    return rc, out + err


def as_user(cluster, user: str):
    return dataclasses.replace(cluster, nodes=tuple(dataclasses.replace(n, ssh_user=user)
                                                    for n in cluster.nodes))


def test_the_lab_user_is_not_root_and_has_sudo(sudo_lab):
    for name in NODES:
        rc, out, _ = sudo_lab.run(name, "id -un; sudo -n id -un")
        assert (rc, out.split()) == (0, ["deploy", "root"])


def test_a_user_without_sudo_is_refused_before_any_change(sudo_lab, bundle):
    for name in NODES:  # `nosudo`: the lab key, no sudo rule
        rc, out = as_root(sudo_lab, name, "useradd -m -s /bin/bash -p \"*\" nosudo && "
                          "mkdir -m 700 ~nosudo/.ssh && cp ~deploy/.ssh/authorized_keys "
                          "~nosudo/.ssh/ && chown -R nosudo: ~nosudo/.ssh")
        assert rc == 0, out
    before = {n: as_root(sudo_lab, n, "ls -a /etc /var/lib | sha256sum") for n in NODES}
    started = time.monotonic()
    with pytest.raises(UserError) as e:
        actions.up(as_user(sudo_lab.cluster, "nosudo"), bundle_dir=str(bundle))
    assert time.monotonic() - started < 60  # no sudo prompt waiting for a terminal
    text = str(e.value)
    assert "nothing was changed on any host" in text
    for name in NODES:
        assert (f"error: {name}: sudo: nosudo cannot run sudo without a password or a terminal"
                in text), text
    assert "`nosudo ALL=(ALL) NOPASSWD:ALL` to /etc/sudoers.d/nosudo" in text
    for name in NODES:
        assert as_root(sudo_lab, name, "ls -a /etc /var/lib | sha256sum") == before[name]
        assert as_root(sudo_lab, name, "test -e /etc/provisioner || test -e /var/lib/provisioner"
                       )[0] == 1


def test_up_as_deploy_converges_with_owners_and_modes_right(sudo_lab, bundle):
    done = {p.title: sorted(w) for p, w in actions.up(sudo_lab.cluster, bundle_dir=str(bundle))
            if w}
    assert {"prepare", "runtime", "binaries", "control-plane", "join-workers"} <= set(done), done
    rc, out = as_root(sudo_lab, "scp1", "stat -c \"%a %U %G\" /etc/kubernetes/pki/ca.key "
                      "/etc/kubernetes/pki/ca.crt /etc/provisioner/cluster.json")
    assert (rc, out.splitlines()) == (0, ["600 root root", "644 root root", "644 root root"])
    for name in NODES:  # no temp file of a push left anywhere we wrote
        rc, out = as_root(sudo_lab, name, "find /etc /var/lib/provisioner /usr/local/bin "
                          "-name \".*.????????\" -newer /etc/hostname")
        assert (rc, out) == (0, "")
        # everything went through deploy's SSH sessions, never a root login
        # (sshd's own lines only: sudo logs this very command line in the ssh unit too)
        rc, out = as_root(sudo_lab, name, "journalctl --no-pager _COMM=sshd")
        assert rc == 0 and "Accepted publickey for deploy" in out
        assert "Accepted publickey for root" not in out
    rc, out = as_root(sudo_lab, "scp1", "journalctl --no-pager _COMM=sudo | grep -c "
                      "\"USER=root ; COMMAND=/usr/bin/bash -c\"")
    assert int(out) > 10, out  # the provisioner's commands, as root through sudo


def test_rerun_is_a_no_op_and_as_fast_as_root(sudo_lab, bundle):
    seconds = {}
    for user in ("deploy", "root", "deploy"):
        started = time.monotonic()
        work = {p.title: w for p, w in actions.up(as_user(sudo_lab.cluster, user),
                                                  bundle_dir=str(bundle)) if w}
        seconds[user] = time.monotonic() - started
        assert work == {}, (user, work)
    print(f"\nno-op rerun on 2 nodes: as deploy through sudo {seconds['deploy']:.2f} s, "
          f"as root {seconds['root']:.2f} s")
    assert seconds["deploy"] < 5


def test_down_returns_when_every_node_process_is_gone(sudo_lab):
    lab = sudo_lab
    lab.down()
    roots = [str(lab.node_dir(n) / "root") for n in NODES]
    assert nspawn._nspawn_pids(roots) == []
    assert nspawn._container_inits([lab.node_dir(n) for n in NODES]) == []
