"""The failure matrix on booted lab nodes: kubeadm init, a control plane join and a worker join
each fail once at a named step (the stand-ins' test-only fault switch, /etc/standin/faults),
after the files kubeadm writes early are in place. Every failing run names the host and the
step; the rerun finishes the job; the end state equals a clean run's.

The kube binaries are the test-only stand-ins: these tests prove how the provisioner reads the
end state and resumes (reset and redo, or finish with `kubeadm init phase ...`), not a working
Kubernetes cluster.
"""

from __future__ import annotations

import json
from itertools import zip_longest

import pytest

from provisioner import actions
from provisioner.state import State

pytestmark = pytest.mark.lab

# kubeadm's steps after the first files it writes (admin.conf, kubelet.conf); with the lab's
# external etcd there is no local etcd step
INIT = ("kubeconfig", "control-plane", "kubelet-start", "wait-control-plane", "upload-config",
        "upload-certs", "mark-control-plane", "bootstrap-token", "kubelet-finalize", "addon")
JOIN_CONTROL_PLANE = ("control-plane-prepare", "kubelet-start", "kubelet-wait-bootstrap",
                      "control-plane-join", "wait-control-plane")
JOIN_WORKER = ("kubelet-start", "kubelet-wait-bootstrap")
CYCLES = list(zip_longest(INIT, JOIN_CONTROL_PLANE, JOIN_WORKER))
KUBE = ("cp1", "cp2", "cp3", "w1")
KUBE_PHASES = ("control-plane", "join-control-plane", "join-workers", "cni", "addons",
               "node-meta")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, lab):
    from tests.standins import make_standin_bundle

    return make_standin_bundle(tmp_path_factory.mktemp("bundle"), lab.cluster)


def kube_reset(lab):
    """Take only Kubernetes off the kube nodes (kubeadm reset, the phases' stamps); hosts,
    containerd, etcd and the load balancers stay converged, so each case is quick."""
    stamps = " ".join(f"/var/lib/provisioner/phases/{p}" for p in KUBE_PHASES)
    for n in KUBE:
        rc, _, err = lab.run(n, f"kubeadm reset -f >/dev/null 2>&1; rm -rf {stamps} "
                             "/etc/kubernetes/provisioner /var/log/standin /etc/standin")
        assert rc == 0, err
    state = State(lab.cluster)
    state.kubeconfig.unlink(missing_ok=True)
    (state.dir / "kubeconfig.source").unlink(missing_ok=True)


def end_state(lab) -> dict:
    """What the stand-ins recorded as done per node: role, etcd and every kubeadm step done,
    whether by `kubeadm init` itself or by the `kubeadm init phase` commands that finished it.
    Left out: show-join-command (it only prints) and kubelet-wait-bootstrap (without the
    ControlPlaneKubeletLocalMode gate it waits for nothing: kubelet-start already did, so a
    node that failed there is registered, which is the end state)."""
    out = {}
    for n in KUBE:
        rc, text, _ = lab.run(n, "cat /var/lib/standin/kubeadm-state.json")
        assert rc == 0, f"{n}: no stand-in state"
        state = json.loads(text)
        done = {step for steps in state["steps"].values() for step in steps}
        out[n] = {"role": state["role"], "etcd": state.get("etcd"),
                  "done": sorted(done - {"show-join-command", "kubelet-wait-bootstrap"})}
    return out


@pytest.fixture(scope="module")
def clean(lab, bundle):
    """A clean build: what every faulty one must end up equal to."""
    lab.reset()
    actions.up(lab.cluster, bundle_dir=str(bundle))
    return end_state(lab)


@pytest.mark.parametrize("init, join_cp, join_worker", CYCLES,
                         ids=[f"init-{a}/join-{b}/worker-{c}" for a, b, c in CYCLES])
def test_a_failed_step_is_named_and_the_rerun_finishes(lab, bundle, clean, init, join_cp,
                                                       join_worker):
    kube_reset(lab)
    faults = {"cp1": init and f"kubeadm init {init}", "cp2": join_cp and f"kubeadm join {join_cp}",
              "w1": join_worker and f"kubeadm join {join_worker}"}
    for node, line in faults.items():
        if line:
            assert lab.run(node, f"mkdir -p /etc/standin && echo '{line}' >> /etc/standin/faults"
                           )[0] == 0
    expected = [(node, line.split()[-1]) for node, line in faults.items() if line]
    failed = []
    for _ in range(len(expected) + 1):
        try:
            actions.up(lab.cluster, bundle_dir=str(bundle))
            break
        except actions.PhaseFailed as e:
            failed.append(str(e))
    else:
        pytest.fail("still failing after every fault was used:\n" + "\n".join(failed))
    assert len(failed) == len(expected), failed
    for message, (node, step) in zip(failed, expected):
        assert node in message and step in message, message
    for node in faults:
        assert lab.run(node, "cat /etc/standin/faults 2>/dev/null")[1].strip() == ""
    assert end_state(lab) == clean
    assert {p.title: w for p, w in actions.up(lab.cluster, bundle_dir=str(bundle),
                                                dry_run=True) if w} == {}
