"""The phases decide from facts alone: which hosts have work, and what it is (data cases)."""

from __future__ import annotations

import hashlib
from importlib import import_module
from pathlib import Path
from types import SimpleNamespace

import pytest

from provisioner import actions, inventory, paths, runtime
from provisioner import phases as ph
from provisioner.phases import kube

ETCD_SERVERS = import_module("provisioner.phases.32_etcd_servers").SERVERS
LAB = inventory.load("inventories/lab.yml")
K3S = inventory.load("inventories/k3s-ha.yml")
SECRETS = {"bootstrap_token": "abcdef.0123456789abcdef", "certificate_key": "0" * 64,
           "k3s_token": "k" * 64, "vrrp_password": "12345678", "ca_cert_hash": "sha256:" + "0" * 64}
PKI = {n.name: {"/etc/etcd/pki/server.key": (b"KEY", 0o600), "/etc/etcd/pki/ca.crt": (b"CA", 0o644)}
       for n in LAB.etcd_members}


def _runtime_bundle():
    """A bundle holding only the runtime's files (small fakes: the phases only hash them)."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="phases-bundle-"))
    atexit.register(shutil.rmtree, folder, True)
    files = {}
    for name in runtime.BUNDLE_FILES:
        path = folder / name.replace("/", "_")
        path.write_bytes(f"fake {name}\n".encode())
        files[name] = (path, hashlib.sha256(path.read_bytes()).hexdigest())
    return SimpleNamespace(dir=folder, files=files)


BUNDLE = _runtime_bundle()


def context(cluster, bundle=BUNDLE):
    ctx = ph.Context(cluster, dict(SECRETS), PKI if cluster is LAB else {}, bundle=bundle)
    ctx.local["kubeconfig_source"] = "0" * 64  # taken from the admin config the node has
    return ctx


def converged(cluster, bundle=BUNDLE):
    """A context whose hosts have finished every phase: files, modes, stamps, end states."""
    ctx = context(cluster, bundle)
    for n in cluster.nodes:
        files, stats, commands = {}, {}, {}
        for p in actions.UP:
            if n not in p.hosts(cluster):
                continue
            for i in ctx.files(p, n):
                files[i.path] = i.sha256
                stats[i.path] = {"mode": i.mode, "owner": i.owner, "group": i.group}
            files[p.stamp_path] = hashlib.sha256(p.stamp(ctx, n)).hexdigest()
            probes = p.probes(cluster, n)
            for path in probes.get("paths", ()):
                files.setdefault(path, "0" * 64)
            for name in probes.get("commands", {}):
                out = ('{"%s": ""}' % kube.CONTROL_PLANE_LABEL if name == kube.LABELS
                       else ",".join(cluster.etcd_endpoints) if name == ETCD_SERVERS
                       else "ok")
                commands[name] = {"rc": 0, "out": out}
        ctx.facts[n.name] = SimpleNamespace(
            hostname=n.name, swap_mb=0, files=files, stats=stats, commands=commands, certs={},
            services={u: {"active": "active", "enabled": "enabled"} for u in paths.SERVICES},
            binaries={b: "v1" for b in ("kubeadm", "kubelet", "kubectl", "k3s", "containerd")})
    return ctx


def work(ctx):
    return {p.title: w for p in actions.UP if (w := p.work(ctx))}


def test_the_phase_modules_are_the_documented_spine():
    assert [p.title for p in actions.UP] == [
        "prepare", "runtime", "etcd", "loadbalancer", "binaries", "images", "control-plane",
        "join-control-plane", "etcd-servers", "join-workers", "cni", "addons", "node-meta",
        "kubeconfig"]
    # 0x-1x: cluster.up; 3x: remove-node; 9x: the other day-2 actions (kubeasz's numbering).
    # remove-node's 32 etcd-servers also runs in cluster.up (without a leaving host)
    spine = [p for p in actions.UP if p is not ph.API_ETCD_SERVERS]
    modules = sorted(p.name for p in (Path(ph.__file__).parent).glob("[0-2][0-9]_*.py"))
    assert len(modules) == len(spine)
    for module, phase in zip(modules, spine):
        number = module[:2]
        assert module == f"{number}_{phase.title.replace('-', '_')}.py"
        if phase.playbook:  # beside its numbered playbook
            assert phase.playbook == f"{number}-{phase.title}.yml"
            assert (Path(ph.__file__).parents[1] / "playbooks" / phase.playbook).is_file()
    for module in Path(ph.__file__).parent.glob("[0-9][0-9]_*.py"):  # day 2 too
        phase = import_module(f"{ph.__name__}.{module.stem}").PHASE
        if phase.playbook:
            assert phase.playbook.startswith(module.name[:2]), module.name
            assert (Path(ph.__file__).parents[1] / "playbooks" / phase.playbook).is_file()


@pytest.mark.parametrize("cluster", [LAB, K3S], ids=["kubeadm", "k3s"])
def test_converged_hosts_have_no_work(cluster):
    assert work(converged(cluster)) == {}


ETCD_KEY = "/etc/etcd/pki/server.key"
CONTAINERD = "/etc/containerd/config.toml"


def _set(attr, key, value):
    return lambda f: getattr(f, attr).__setitem__(key, value)


CASES = [
    # (name, host, what differs on it, expected work {phase: {host: [...]}})
    ("file changed", "cp2", _set("files", CONTAINERD, "f" * 64),
     {"runtime": {"cp2": [f"write {CONTAINERD} (changed)"]}}),
    ("file missing", "cp2", _set("files", CONTAINERD, None),
     {"runtime": {"cp2": [f"write {CONTAINERD} (new)"]}}),
    ("key made 0644", "cp2", _set("stats", ETCD_KEY, {"mode": 0o644, "owner": "etcd", "group": "etcd"}),
     {"etcd": {"cp2": [f"fix {ETCD_KEY}: mode 0644 -> 0600"]}}),
    ("key chowned", "cp2", _set("stats", ETCD_KEY, {"mode": 0o600, "owner": "root", "group": "etcd"}),
     {"etcd": {"cp2": [f"fix {ETCD_KEY}: owner root:etcd -> etcd:etcd"]}}),
    ("service stopped", "cp2", _set("services", "containerd", {"active": "failed"}),
     {"runtime": {"cp2": ["start containerd"]}}),
    ("service disabled", "cp2", _set("services", "containerd", {"active": "active", "enabled": "disabled"}),
     {"runtime": {"cp2": ["enable containerd"]}}),
    ("stamp missing", "cp2", _set("files", "/var/lib/provisioner/phases/runtime", None),
     {"runtime": {"cp2": ["finish applying the files in place (an earlier run stopped here)"]}}),
    ("hostname", "cp2", lambda f: setattr(f, "hostname", "localhost"),
     {"prepare": {"cp2": ["set hostname cp2"]}}),
    ("swap", "cp2", lambda f: setattr(f, "swap_mb", 1024), {"prepare": {"cp2": ["turn swap off"]}}),
    ("etcd down", "cp2", _set("services", "etcd", {"active": "inactive"}),
     {"etcd": {"cp2": ["start etcd"]}}),
    ("etcd unhealthy", "cp2", _set("commands", "etcd-health", {"rc": 1, "out": ""}),
     {"etcd": {"cp2": ["wait until this member is healthy over TLS"]}}),
    ("admin config renewed", "cp1", _set("files", paths.ADMIN_CONF, "a" * 64),
     {"kubeconfig": {"cp1": ["copy the admin kubeconfig to the controller (0600)"]}}),
]


@pytest.mark.parametrize("name, host, change, expected", CASES, ids=[c[0] for c in CASES])
def test_one_difference_gives_exactly_that_work(name, host, change, expected):
    ctx = converged(LAB)
    change(ctx.facts[host])
    assert work(ctx) == expected


def _never_built(f, phase):
    f.files[phase.stamp_path] = None


KUBE_CASES = [
    # (name, host, changes, phase, expected)  -- the end state, never a file written on the way
    ("init never ran", "cp1",
     {"files": {kube.LEFTOVERS[0]: None, kube.LEFTOVERS[1]: None, kube.LEFTOVERS[2]: None},
      "commands": {kube.API: 127}, "stamp": None}, "control-plane", ["kubeadm init"]),
    ("init stopped before its API answered", "cp1", {"commands": {kube.API: 1}, "stamp": None},
     "control-plane", ["kubeadm reset, then kubeadm init again (an earlier init stopped before "
                       "it finished)"]),
    ("init stopped after upload-certs", "cp1",
     {"commands": {kube.CLUSTER_INFO: 1, kube.ADDONS: 1}, "stamp": None},
     "control-plane", ["finish kubeadm init: bootstrap-token, addon"]),
    ("init stopped before mark-control-plane", "cp1", {"labels": "{}", "stamp": None},
     "control-plane", ["finish kubeadm init: mark-control-plane"]),
    ("built cluster whose API is down", "cp1", {"commands": {kube.API: 1}},
     "control-plane", ["refused: this node was built before but its API server does not answer "
                       "(api missing); not running kubeadm init again on it (look at its "
                       "kubelet: cluster.status; or take it out with cluster.reset)"]),
    ("join stopped after kubelet-start", "cp2", {"commands": {kube.API: 1}, "stamp": None},
     "join-control-plane", ["kubeadm reset, then kubeadm join again (an earlier join stopped "
                            "before it finished)"]),
    ("worker never joined", "w1",
     {"files": {kube.LEFTOVERS[0]: None, kube.LEFTOVERS[1]: None, kube.LEFTOVERS[2]: None},
      "commands": {kube.NODE: 127}, "stamp": None}, "join-workers", ["kubeadm join"]),
    ("worker join stopped after its kubelet.conf", "w1", {"commands": {kube.NODE: 1}, "stamp": None},
     "join-workers", ["kubeadm reset, then kubeadm join again (an earlier join stopped before "
                      "it finished)"]),
]


@pytest.mark.parametrize("name, host, changes, title, expected", KUBE_CASES,
                         ids=[c[0] for c in KUBE_CASES])
def test_kube_phases_read_the_end_state(name, host, changes, title, expected):
    ctx = converged(LAB)
    f = ctx.facts[host]
    phase = next(p for p in actions.UP if p.title == title)
    for path, sha in changes.get("files", {}).items():
        f.files[path] = sha
    for cmd, rc in changes.get("commands", {}).items():
        f.commands[cmd] = {"rc": rc, "out": ""}
    if "labels" in changes:
        f.commands[kube.LABELS] = {"rc": 0, "out": changes["labels"]}
    if "stamp" in changes:
        f.files[phase.stamp_path] = None
    got = work(ctx)
    assert got[title] == {host: expected}


def test_k3s_nodes_are_done_when_registered():
    ctx = converged(K3S)
    ctx.facts["a1"].commands[kube.NODE] = {"rc": 1, "out": ""}
    assert work(ctx) == {"join-workers": {"a1": [
        "start k3s agent and wait until the node is registered"]}}


def airgap_bundle(tmp_path, with_images=True):
    files = {}
    for name, text in (("k3s", "#!/bin/sh\n"), ("k3s-airgap-images-amd64.tar.zst", "images")):
        if name == "k3s" or with_images:
            (tmp_path / name).write_text(text)
            files[name] = (tmp_path / name, hashlib.sha256(text.encode()).hexdigest())
    return SimpleNamespace(dir=tmp_path, files=files)


def test_k3s_airgap_images_from_the_bundle_go_to_every_k3s_node_and_restart_nothing(tmp_path):
    bundle = airgap_bundle(tmp_path)
    ctx = converged(K3S, bundle)
    path = "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst"
    for n in K3S.kube_nodes:
        (item,) = [i for i in ctx.files(ph.BINARIES, n) if i.path == path]
        assert item.data == b"images" and item.units == () and item.mode == 0o644
    assert work(ctx) == {} and ph.BINARIES.notes(ctx) == []
    ctx.facts["a1"].files[path] = None  # the tarball missing on one node: only that is work
    assert work(ctx) == {"binaries": {"a1": [f"write {path} (new)"]}}


def test_a_k3s_bundle_without_airgap_images_is_no_error_and_the_plan_says_nodes_pull(tmp_path):
    ctx = converged(K3S, airgap_bundle(tmp_path, with_images=False))
    assert work(ctx) == {}
    (note,) = ph.BINARIES.notes(ctx)
    assert "no k3s-airgap-images-amd64.tar.zst" in note and "will pull" in note
    assert ph.BINARIES.notes(converged(LAB, airgap_bundle(tmp_path, False))) == []


def test_without_a_bundle_missing_binaries_are_work_and_present_ones_are_not():
    ctx = converged(LAB, bundle=None)
    ctx.facts["w1"].binaries["kubelet"] = None
    assert ph.BINARIES.work(ctx) == {"w1": ["install kubelet from the bundle"]}


def test_hosts_per_phase_follow_the_one_role_vocabulary():
    names = lambda p, c: [n.name for n in p.hosts(c)]  # noqa: E731
    assert names(ph.ETCD, LAB) == ["cp1", "cp2", "cp3"]
    assert names(ph.LOADBALANCER, LAB) == ["lb1", "lb2"]
    assert names(ph.JOIN_CONTROL_PLANE, LAB) == ["cp2", "cp3"]
    assert names(ph.RUNTIME, K3S) == []  # k3s brings its own containerd
    assert names(ph.ETCD, K3S) == []  # embedded etcd
    assert names(ph.LOADBALANCER, K3S) == ["s1", "s2", "s3"]  # kube-vip on the servers
    assert ph.JOIN_CONTROL_PLANE.serial and not ph.JOIN_WORKERS.serial


def test_a_control_plane_listed_as_worker_too_is_a_control_plane_only():
    import dataclasses

    cp2 = LAB.node("cp2")
    both = dataclasses.replace(cp2, roles=cp2.roles + ("workers",))
    c = dataclasses.replace(LAB, nodes=tuple(both if n.name == "cp2" else n for n in LAB.nodes))
    assert [n.name for n in c.kube_workers] == ["w1"]
    assert [n.name for n in c.kube_nodes] == ["cp1", "cp2", "cp3", "w1"]
    assert "cp2" not in [n.name for n in ph.JOIN_WORKERS.hosts(c)]


# -- restarts: every (file, unit) pair a phase declares, as a table -------------------------------

def unit_pairs():
    """(phase, host, path, unit) for every file of the example topologies that a unit reads."""
    out = []
    for cluster in (LAB, K3S):
        ctx = converged(cluster)
        for p in actions.UP:
            for n in p.hosts(cluster):
                for i in ctx.files(p, n):
                    out += [(cluster, p, n, i, u) for u in i.units]
    return out


PAIRS = unit_pairs()


@pytest.mark.parametrize("cluster, phase, node, item, unit", PAIRS,
                         ids=[f"{c.cluster_name}-{n.name}-{i.path}-{u}" for c, p, n, i, u in PAIRS])
def test_a_changed_file_restarts_exactly_the_running_units_that_read_it(cluster, phase, node, item,
                                                                        unit):
    ctx = converged(cluster)
    ctx.facts[node.name].files[item.path] = "f" * 64
    changed = phase.changed(ctx, node)
    assert changed == [item]
    assert phase.restart_units(ctx, node, changed) == sorted(set(item.units))
    ctx.facts[node.name].services[unit] = {"active": "inactive"}  # not running: started later
    assert unit not in phase.restart_units(ctx, node, changed)


def test_the_unit_pairs_cover_every_restarting_file_kind():
    paths_ = {i.path for _, _, _, i, _ in PAIRS}
    assert {"/etc/containerd/config.toml", "/etc/systemd/system/containerd.service",
            "/usr/local/bin/containerd", "/usr/local/bin/containerd-shim-runc-v2",
            "/usr/local/sbin/runc", "/etc/etcd/etcd.conf.yml", ETCD_KEY,
            "/etc/haproxy/haproxy.cfg", "/etc/keepalived/keepalived.conf",
            "/etc/rancher/k3s/config.yaml", "/etc/rancher/k3s/registries.yaml",
            "/etc/systemd/system/kubelet.service"} <= paths_


def test_a_changed_mirror_or_client_restarts_nothing():
    """certs.d is read at each pull and ctr is a client: containerd keeps running."""
    import dataclasses

    c = dataclasses.replace(LAB, registry_mirrors={"docker.io": ["https://m1.test"]})
    ctx = converged(c)
    node = c.node("w1")
    for path in ("/etc/containerd/certs.d/docker.io/hosts.toml", "/usr/local/bin/ctr"):
        ctx.facts["w1"].files[path] = "f" * 64
        changed = ph.RUNTIME.changed(ctx, node)
        assert [i.path for i in changed] == [path]
        assert ph.RUNTIME.restart_units(ctx, node, changed) == []
        ctx.facts["w1"].files[path] = changed[0].sha256


def test_containerd_from_the_os_has_no_bundle_files_and_a_minimum_version():
    import dataclasses

    os_ = dataclasses.replace(LAB, containerd_source="os")
    ctx = context(os_)
    paths_ = [i.path for i in ctx.files(ph.RUNTIME, os_.node("w1"))]
    assert paths_ == ["/etc/containerd/config.toml", "/etc/crictl.yaml"]
    assert not ph.RUNTIME.requires_bundle(os_) and ph.RUNTIME.requires_bundle(LAB)
    assert ph.RUNTIME.package_minimums(os_) == {
        "containerd": runtime.pins(os_).containerd_min, "runc": "1.1"}
    assert ph.RUNTIME.package_minimums(LAB) == {}  # nothing from apt
    assert not ph.RUNTIME.requires_bundle(K3S) and ph.RUNTIME.hosts(K3S) == ()


def test_without_a_bundle_the_runtime_installs_nothing_and_says_so():
    ctx = converged(LAB, bundle=None)
    ctx.facts["w1"].binaries["containerd"] = None
    ctx.facts["w1"].services["containerd"] = {"active": "inactive"}
    assert ph.RUNTIME.work(ctx) == {"w1": ["install containerd and runc from the bundle",
                                           "start containerd"]}


def test_a_bundle_without_the_runtime_is_refused_naming_what_is_missing():
    old = SimpleNamespace(dir=Path("/srv/bundle/kubeadm-v1.36.4-linux-amd64"), files={})
    refusals = list(ph.RUNTIME.refusals(context(LAB, old)))
    assert len(refusals) == 1 and "containerd/containerd, containerd/containerd-shim-runc-v2, " \
        "containerd/ctr, runc" in refusals[0] and "containerd_source: os" in refusals[0]
    assert list(ph.RUNTIME.refusals(context(LAB))) == []


def test_a_built_control_plane_that_stopped_answering_is_refused_before_any_change():
    ctx = converged(LAB)
    ctx.facts["cp2"].commands[kube.API] = {"rc": 1, "out": ""}
    calls = []
    run = SimpleNamespace(ctx=ctx, cluster=LAB, converge=lambda *a, **k: calls.append(a),
                          renew_join_secrets=lambda **k: calls.append(k))
    with pytest.raises(actions.UserError, match="cp2: refused: this node was built before"):
        ph.JOIN_CONTROL_PLANE.run(run, [LAB.node("cp2")])
    assert calls == []


def test_a_joined_node_whose_kubelet_stopped_gets_it_started():
    ctx = converged(LAB)
    ctx.facts["w1"].services["kubelet"] = {"active": "inactive", "enabled": "enabled"}
    assert work(ctx) == {"binaries": {"w1": ["start kubelet"]}}


def test_without_a_bundle_up_does_every_phase_that_needs_none_then_stops():
    """containerd from the bundle comes before etcd and the load balancers: those still
    converge, the phases that need the bundle are passed over and named in the stop."""
    ctx = converged(LAB, bundle=None)
    ctx.facts["w1"].binaries["containerd"] = None
    ctx.facts["cp2"].services["etcd"] = {"active": "inactive"}
    ran = []
    run = actions.Run(LAB, state=None, ctx=ctx)
    run.apply = lambda phase, work: ran.append((phase.title, sorted(work)))
    with pytest.raises(actions.BundleMissing, match=r"not done without it: runtime\)"):
        run.apply_all(actions.UP)
    assert ran == [("etcd", ["cp2"])]


def test_an_added_etcd_member_goes_into_the_api_servers_list_one_at_a_time():
    """cluster.up after the etcd phase added a member: exactly the control planes whose
    --etcd-servers lacks it change (serially); one without the manifest yet has nothing."""
    ctx = converged(LAB)
    old = ",".join(LAB.etcd_endpoints[:2])
    ctx.facts["cp1"].commands[ETCD_SERVERS] = {"rc": 0, "out": old + "\n"}
    ctx.facts["cp3"].commands[ETCD_SERVERS] = {"rc": 2, "out": ""}  # no manifest yet
    want = ",".join(LAB.etcd_endpoints)
    assert work(ctx) == {"etcd-servers": {"cp1": [f"set kube-apiserver --etcd-servers={want}"]}}
    assert ph.API_ETCD_SERVERS.serial
    assert ph.API_ETCD_SERVERS.hostvars(ctx, LAB.node("cp1"))["etcd_servers"] == want
    assert list(ph.API_ETCD_SERVERS.hosts(K3S)) == []
    assert list(ph.API_ETCD_SERVERS.hosts(inventory.load("inventories/ha-kubevip.yml"))) == []
