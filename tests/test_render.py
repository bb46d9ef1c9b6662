"""Rendered node files, checked against the upstream APIs they feed (tests/data/upstream/*), not
against our own templates: kubeadm v1beta4 / kubelet / kube-proxy field trees, k3s flags, etcd
config keys, Kubernetes OpenAPI schemas (kubernetes-validate), the Calico operator CRD.

Every example inventory x every host x every file it gets is a test case.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import jinja2
import kubernetes_validate
import pytest
import yaml

from provisioner import inventory, phases, pki, render
from provisioner.model import LOCAL_PROXY_PORT
from provisioner.state import State

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = REPO / "tests" / "data" / "upstream"
INVENTORIES = sorted((REPO / "inventories").glob("*.yml"))
SECRETS = {
    "bootstrap_token": "a1b2c3.0123456789abcdef",
    "certificate_key": "f" * 64,
    "k3s_token": "K10e4c1fe1d5a3b6a0c4b4a5c1b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f",
    "vrrp_password": "3f8a1c2d",
    "ca_cert_hash": "sha256:" + "0123456789abcdef" * 4,
}


def _variants() -> dict:
    """The example inventories, plus variants of them for what no example shows: the `local`
    load balancing mode, k3s with mirrors, a control plane that is also a worker,
    node labels and taints."""
    out = {p.stem: inventory.load(p) for p in INVENTORIES}
    lab, k3s, single = out["lab"], out["k3s-ha"], out["single"]
    out["lab-local"] = dataclasses.replace(lab, ha_mode="local", api_vip=None)
    out["k3s-mirrors"] = dataclasses.replace(k3s, ha_mode="none", api_vip=None,
                                            registry_mirrors={"docker.io": ["https://m1.test"],
                                                              "registry.k8s.io": "https://m2.test"})
    cp1, w1 = single.nodes
    out["single-labels"] = dataclasses.replace(single, nodes=(
        dataclasses.replace(cp1, roles=("control_plane", "workers")),
        dataclasses.replace(w1, labels={"tier": "db", "zone": "a"},
                            taints=("dedicated=db:NoSchedule", "gpu:NoExecute"))),
        registry_mirrors={"quay.io": ["https://q1.test", "https://q2.test"]})
    # containerd from the OS package (config version 2), and cgroup v1 acknowledged
    out["single-os-containerd"] = dataclasses.replace(single, containerd_source="os",
                                                      allow_cgroup_v1=True)
    return out


CLUSTERS = _variants()


def cluster(name: str):
    return CLUSTERS[name]


@cache
def rendered(name: str):
    return render.render(cluster(name), SECRETS)


def cases(select=lambda inv, host, path: True):
    """(cluster, host, path) for every rendered file that `select` accepts."""
    out = []
    for name in CLUSTERS:
        for host, files in rendered(name).items():
            out.extend(pytest.param(name, host, p, id=f"{name}-{host}-{p}")
                       for p in files if select(name, host, p))
    return out


def text(inv, host, path) -> str:
    return rendered(inv)[host][path].content.decode()


def docs(inv, host, path) -> list[dict]:
    return [d for d in yaml.safe_load_all(text(inv, host, path)) if d is not None]


def upstream(name: str):
    return yaml.safe_load((UPSTREAM / name).read_text())


# ---------------------------------------------------------------------------------------------
# A walker for the upstream field trees (kubeadm-v1beta4.yaml and friends)
# ---------------------------------------------------------------------------------------------

DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
SCALARS = {
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "duration": lambda v: isinstance(v, str) and bool(DURATION.match(v)),
    "time": lambda v: isinstance(v, str),
}


def walk(value, typ: str, types: dict, at: str) -> list[str]:
    """Problems of `value` against the type expression `typ`; [] when it fits."""
    if typ == "any":
        return []
    if typ.startswith("["):
        if not isinstance(value, list):
            return [f"{at}: must be a list ({typ})"]
        return [p for i, v in enumerate(value) for p in walk(v, typ[1:-1], types, f"{at}[{i}]")]
    if typ.startswith("{"):
        if not isinstance(value, dict):
            return [f"{at}: must be a map ({typ})"]
        return [p for k, v in value.items() for p in walk(v, typ[1:-1], types, f"{at}.{k}")]
    if typ in SCALARS:
        return [] if SCALARS[typ](value) else [f"{at}: {value!r} is not a {typ}"]
    fields = types[typ]
    if not isinstance(value, dict):
        return [f"{at}: must be a {typ} mapping"]
    out = []
    for key, v in value.items():
        if key not in fields:
            out.append(f"{at}.{key}: no such field in upstream {typ}")
        else:
            out.extend(walk(v, fields[key], types, f"{at}.{key}"))
    return out


TREES = {t["apiVersion"]: t for t in map(upstream, (
    "kubeadm-v1beta4.yaml", "kubelet-v1beta1.yaml", "kubeproxy-v1alpha1.yaml"))}


def check_component_doc(doc: dict) -> list[str]:
    tree = TREES.get(doc.get("apiVersion"))
    if tree is None:
        return [f"apiVersion {doc.get('apiVersion')!r} is not one of {sorted(TREES)}"]
    if doc.get("kind") not in tree["kinds"]:
        return [f"kind {doc.get('kind')!r} is not in {doc['apiVersion']}"]
    return walk(doc, doc["kind"], tree["types"], doc["kind"])


def is_kubeadm(inv, host, path):
    return path.startswith("/etc/kubernetes/kubeadm-")


@pytest.mark.parametrize("inv,host,path", cases(is_kubeadm))
def test_kubeadm_documents_match_upstream_field_trees(inv, host, path):
    problems = [p for d in docs(inv, host, path) for p in check_component_doc(d)]
    assert problems == []


def test_field_tree_walker_names_unknown_fields_and_wrong_types():
    doc = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration",
           "discovery": {"bootstrapToken": {"token": "x", "caCertHash": ["sha256:0"]}},
           "nodeRegistration": {"kubeletExtraArgs": {"node-ip": "10.0.0.1"}},
           "controlPlane": {"localAPIEndpoint": {"bindPort": "6443"}}}
    assert sorted(check_component_doc(doc)) == [
        "JoinConfiguration.controlPlane.localAPIEndpoint.bindPort: '6443' is not a int",
        "JoinConfiguration.discovery.bootstrapToken.caCertHash: no such field in upstream "
        "BootstrapTokenDiscovery",
        "JoinConfiguration.nodeRegistration.kubeletExtraArgs: must be a list ([Arg])",
    ]
    assert check_component_doc({"apiVersion": "kubeadm.k8s.io/v1beta3",
                                "kind": "InitConfiguration"})


# ---------------------------------------------------------------------------------------------
# kubeadm semantics the phases rely on
# ---------------------------------------------------------------------------------------------

KUBEADM = [name for name, c in CLUSTERS.items() if not c.is_k3s]


def by_kind(inv, host, path) -> dict[str, dict]:
    return {d["kind"]: d for d in docs(inv, host, path)}


@pytest.mark.parametrize("inv", KUBEADM)
def test_kubeadm_init_semantics(inv):
    c = cluster(inv)
    first = c.first_control_plane
    init = by_kind(inv, first.name, "/etc/kubernetes/kubeadm-init.yaml")
    assert set(init) == {"InitConfiguration", "ClusterConfiguration", "KubeletConfiguration",
                         "KubeProxyConfiguration"}
    i, cc = init["InitConfiguration"], init["ClusterConfiguration"]
    assert i["bootstrapTokens"][0]["token"] == SECRETS["bootstrap_token"]
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", i["bootstrapTokens"][0]["token"])
    assert i["certificateKey"] == SECRETS["certificate_key"]
    assert i["localAPIEndpoint"]["advertiseAddress"] == first.address
    assert i["nodeRegistration"]["name"] == first.name
    assert {"name": "node-ip", "value": first.address} in i["nodeRegistration"]["kubeletExtraArgs"]
    # a control plane that is also a worker registers without the control-plane taint
    assert ("taints" in i["nodeRegistration"]) == first.has("workers")
    # controlPlaneEndpoint set iff the cluster is HA, and then it is the API endpoint
    assert ("controlPlaneEndpoint" in cc) == c.is_ha
    if c.is_ha:
        assert cc["controlPlaneEndpoint"] == c.api_endpoint
    assert cc["kubernetesVersion"] == c.kubernetes_version
    assert cc["clusterName"] == c.cluster_name
    assert cc["apiServer"]["certSANs"] == c.cert_sans
    assert cc["networking"] == {"podSubnet": c.pod_cidr, "serviceSubnet": c.service_cidr,
                                "dnsDomain": c.cluster_domain}
    # external etcd files iff external etcd
    assert ("external" in cc["etcd"]) == c.external_etcd
    assert ("local" in cc["etcd"]) != c.external_etcd
    if c.external_etcd:
        assert cc["etcd"]["external"]["endpoints"] == c.etcd_endpoints
    kubelet, proxy = init["KubeletConfiguration"], init["KubeProxyConfiguration"]
    assert kubelet["cgroupDriver"] == "systemd"
    assert kubelet["clusterDNS"] == [c.dns_service_ip]
    assert kubelet["clusterDomain"] == c.cluster_domain
    assert kubelet["containerRuntimeEndpoint"] == i["nodeRegistration"]["criSocket"]
    assert proxy["clusterCIDR"] == c.pod_cidr and proxy["mode"] == "iptables"


@pytest.mark.parametrize("inv", KUBEADM)
def test_kubeadm_join_semantics(inv):
    c = cluster(inv)
    joiners = list(c.control_planes[1:]) + [n for n in c.workers if not n.has("control_plane")]
    assert joiners
    for n in joiners:
        files = rendered(inv)[n.name]
        assert "/etc/kubernetes/kubeadm-init.yaml" not in files
        (join,) = docs(inv, n.name, "/etc/kubernetes/kubeadm-join.yaml")
        assert join["kind"] == "JoinConfiguration"
        bt = join["discovery"]["bootstrapToken"]
        assert bt["token"] == SECRETS["bootstrap_token"]
        assert bt["caCertHashes"] == [SECRETS["ca_cert_hash"]]
        assert not bt.get("unsafeSkipCAVerification", False)
        assert join["nodeRegistration"]["name"] == n.name
        if n.has("control_plane"):  # certificateKey only for control planes
            assert join["controlPlane"]["certificateKey"] == SECRETS["certificate_key"]
            assert join["controlPlane"]["localAPIEndpoint"]["advertiseAddress"] == n.address
            assert files["/etc/kubernetes/kubeadm-join.yaml"].phase == "join-control-plane"
        else:
            assert "controlPlane" not in join
            assert SECRETS["certificate_key"] not in text(inv, n.name,
                                                          "/etc/kubernetes/kubeadm-join.yaml")
            assert files["/etc/kubernetes/kubeadm-join.yaml"].phase == "join-workers"
        assert bt["apiServerEndpoint"] == c.api_endpoint
        if c.ha_mode == "local":  # its own proxy answers there, forwarding to serving ones
            assert c.api_endpoint == f"127.0.0.1:{LOCAL_PROXY_PORT}" and n in c.lb_nodes
            assert f"bind 127.0.0.1:{LOCAL_PROXY_PORT}" in text(inv, n.name,
                                                                  "/etc/haproxy/haproxy.cfg")


@pytest.mark.parametrize("inv", KUBEADM)
def test_join_files_wait_for_the_ca_pin(inv):
    """Without `ca_cert_hash` the joins are left out (never rendered with a placeholder)."""
    out = render.render(cluster(inv), {k: v for k, v in SECRETS.items() if k != "ca_cert_hash"})
    assert not any("/etc/kubernetes/kubeadm-join.yaml" in f for f in out.values())
    assert "/etc/kubernetes/kubeadm-init.yaml" in out[cluster(inv).first_control_plane.name]


@pytest.mark.parametrize("inv", KUBEADM)
def test_files_kubeadm_and_etcd_name_are_the_ones_pki_places(inv, tmp_path, monkeypatch):
    """Certificate paths in kubeadm and etcd configs exist among the files phase pki pushes."""
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path))
    c = cluster(inv)
    placed = pki.ensure(c, State(c))
    checked = 0
    for host, files in rendered(inv).items():
        for path in files:
            if path in ("/etc/kubernetes/kubeadm-init.yaml", "/etc/etcd/etcd.conf.yml"):
                named = re.findall(r"(/etc/(?:kubernetes/pki|etcd/pki)/\S+\.(?:crt|key))",
                                   text(inv, host, path))
                for f in named:
                    assert f in placed[host], f"{host}: {path} names {f}, which pki does not place"
                    checked += 1
    # init names the 3 etcd client files; each etcd config 6 (cert, key, CA for 2 ports)
    assert checked == (3 + 6 * len(c.etcd_nodes) if c.external_etcd else 0)


def test_node_labels_and_taints_reach_kubeadm_and_nothing_else_changes():
    (join,) = docs("single-labels", "w1", "/etc/kubernetes/kubeadm-join.yaml")
    reg = join["nodeRegistration"]
    assert reg["taints"] == [{"key": "dedicated", "value": "db", "effect": "NoSchedule"},
                             {"key": "gpu", "effect": "NoExecute"}]
    assert {"name": "node-labels", "value": "tier=db,zone=a"} in reg["kubeletExtraArgs"]
    # workers get the CA from the join itself: none of kubeadm's checks is skipped there
    assert not reg.get("ignorePreflightErrors")
    init = by_kind("single-labels", "cp1", "/etc/kubernetes/kubeadm-init.yaml")
    assert init["InitConfiguration"]["nodeRegistration"]["taints"] == []
    assert "/etc/kubernetes/kubeadm-join.yaml" not in rendered("single-labels")["cp1"]


def test_kube_vip_first_control_plane_uses_super_admin_conf():
    c = cluster("ha-kubevip")
    paths = {n.name: docs("ha-kubevip", n.name, "/etc/kubernetes/manifests/kube-vip.yaml")[0]
             ["spec"]["volumes"][0]["hostPath"]["path"] for n in c.control_planes}
    assert paths == {"cp1": "/etc/kubernetes/super-admin.conf",
                     "cp2": "/etc/kubernetes/admin.conf", "cp3": "/etc/kubernetes/admin.conf"}
    join = docs("ha-kubevip", "cp2", "/etc/kubernetes/kubeadm-join.yaml")[0]
    # the manifest is there before `kubeadm join`, whose preflight wants manifests/ empty
    assert "DirAvailable--etc-kubernetes-manifests" in join["nodeRegistration"][
        "ignorePreflightErrors"]


# ---------------------------------------------------------------------------------------------
# k3s: every key is a real flag for the node's role
# ---------------------------------------------------------------------------------------------

K3S_FLAGS = upstream("k3s-flags.yaml")
FLAG_TYPES = {"bool": lambda v: isinstance(v, bool), "int": SCALARS["int"],
              "string": lambda v: isinstance(v, str),
              "list": lambda v: isinstance(v, str) or (isinstance(v, list) and all(
                  isinstance(x, str) for x in v))}


@pytest.mark.parametrize("inv,host,path", cases(lambda i, h, p: p == "/etc/rancher/k3s/config.yaml"))
def test_k3s_config_keys_are_flags_of_the_node_role(inv, host, path):
    role = "server" if cluster(inv).node(host).has("control_plane") else "agent"
    config = docs(inv, host, path)[0]
    flags = K3S_FLAGS[role]
    unknown = [k for k in config if k not in flags]
    assert unknown == [], f"not `k3s {role}` flags: {unknown}"
    wrong = [k for k, v in config.items() if not FLAG_TYPES[flags[k]](v)]
    assert wrong == []
    assert config["token"] == SECRETS["k3s_token"] and config["node-name"] == host
    first = host == cluster(inv).first_control_plane.name
    assert config.get("cluster-init", False) == first
    assert ("server" in config) != first


def test_k3s_flag_lists_tell_agents_from_servers():
    """The data is what makes the agent check bite: server-only flags are not agent flags."""
    assert {"cluster-init", "tls-san", "disable", "cluster-cidr"} <= set(K3S_FLAGS["server"])
    assert not {"cluster-init", "tls-san", "disable", "cluster-cidr"} & set(K3S_FLAGS["agent"])
    assert set(K3S_FLAGS["agent"]) - {"disable-apiserver-lb"} <= set(K3S_FLAGS["server"])


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests against the API server's own OpenAPI schemas
# ---------------------------------------------------------------------------------------------


def validate_version(c) -> str:
    """kubernetes-validate ships schemas per minor (1.25 .. 1.37): pick the cluster's."""
    minor = c.version_minor
    assert minor in {kubernetes_validate.utils.major_minor(v)
                     for v in kubernetes_validate.utils.all_versions()}
    return minor + ".0"


def is_manifest(inv, host, path):
    return path.startswith(("/etc/kubernetes/manifests/", "/etc/kubernetes/addons/",
                            "/var/lib/rancher/k3s/agent/pod-manifests/"))


@pytest.mark.parametrize("inv,host,path", cases(is_manifest))
def test_manifests_pass_kubernetes_validate(inv, host, path):
    version = validate_version(cluster(inv))
    objs = docs(inv, host, path)
    assert objs
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)


def test_kubernetes_validate_is_strict_enough_to_catch_a_typo():
    obj = docs("ha-kubevip", "cp1", "/etc/kubernetes/manifests/kube-vip.yaml")[0]
    obj["spec"]["containers"][0]["volumeMount"] = obj["spec"]["containers"][0].pop("volumeMounts")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, "1.36.0", strict=True)


@pytest.mark.parametrize("inv", list(CLUSTERS))
def test_cni_and_addons_follow_the_cluster(inv):
    c = cluster(inv)
    files = rendered(inv)[c.first_control_plane.name]
    assert ("/etc/kubernetes/addons/flannel.yaml" in files) == (c.cni == "flannel"
                                                               and not c.is_k3s)
    assert not [f for f in files if "calico" in f]  # Calico is refused by validation
    if "/etc/kubernetes/addons/flannel.yaml" in files:
        cm = next(d for d in docs(inv, c.first_control_plane.name,
                                  "/etc/kubernetes/addons/flannel.yaml")
                  if d["kind"] == "ConfigMap")
        net = json.loads(cm["data"]["net-conf.json"])
        assert net["Network"] == c.pod_cidr and net["Backend"]["Type"] == "vxlan"
    if not c.is_k3s:
        (cm,) = docs(inv, c.first_control_plane.name, "/etc/kubernetes/addons/coredns.yaml")
        assert (cm["metadata"]["name"], cm["metadata"]["namespace"]) == ("coredns", "kube-system")
        corefile = cm["data"]["Corefile"]
        assert f"kubernetes {c.cluster_domain} in-addr.arpa ip6.arpa" in corefile
        assert "forward . /etc/resolv.conf" in corefile and "reload" in corefile
    for host, fs in rendered(inv).items():  # addons live on the first control plane only
        if host != c.first_control_plane.name:
            assert not any(p.startswith("/etc/kubernetes/addons/") for p in fs)


# ---------------------------------------------------------------------------------------------
# etcd, containerd, haproxy, keepalived, host files
# ---------------------------------------------------------------------------------------------

ETCD = upstream("etcd-config.yaml")


@pytest.mark.parametrize("inv,host,path", cases(lambda i, h, p: p == "/etc/etcd/etcd.conf.yml"))
def test_etcd_config_keys_are_read_by_etcd_34_and_35(inv, host, path):
    c, node = cluster(inv), cluster(inv).node(host)
    conf = docs(inv, host, path)[0]
    types = {"string": str, "bool": bool, "int": int}
    for key, value in conf.items():
        assert key in ETCD["keys"], f"{key}: not an etcd 3.4/3.5 config file key"
        if ETCD["keys"][key] == "security":
            for k, v in value.items():
                assert k in ETCD["security"], f"{key}.{k}: not a transport security key"
                assert isinstance(v, types[ETCD["security"][k]])
        else:
            assert isinstance(value, types[ETCD["keys"][key]]), key
    assert conf["name"] == host
    assert conf["initial-cluster"] == ",".join(f"{n.name}=https://{n.address}:2380"
                                               for n in c.etcd_nodes)
    assert conf["initial-cluster-state"] == "new"
    assert conf["initial-cluster-token"] == c.cluster_name
    for sec in ("client-transport-security", "peer-transport-security"):
        assert conf[sec]["client-cert-auth"] is True
        assert all(conf[sec][k].startswith("/etc/etcd/pki/")
                   for k in ("cert-file", "key-file", "trusted-ca-file"))
    for url in conf["listen-client-urls"].split(",") + [conf["advertise-client-urls"]]:
        assert url.startswith("https://")
    assert node.address in conf["advertise-client-urls"]
    unit = text(inv, host, "/etc/systemd/system/etcd.service")
    assert "ExecStart=/usr/bin/etcd --config-file /etc/etcd/etcd.conf.yml" in unit
    assert "Type=notify" in unit and "User=etcd" in unit


@pytest.mark.parametrize("inv,host,path", cases(lambda i, h, p: p.endswith("/containerd.service")))
def test_containerd_unit_runs_the_bundle_binary_as_upstream_runs_it(inv, host, path):
    """The semantics of containerd's own unit: delegated cgroup, only the daemon killed on
    stop (containers keep running), spared by the OOM killer, no file limit, overlay loaded."""
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(text(inv, host, path))
    assert cluster(inv).containerd_source == "bundle"
    assert set(unit["Unit"]["After"].split()) == {"network.target", "local-fs.target"}
    svc = unit["Service"]
    assert svc["ExecStart"] == "/usr/local/bin/containerd"
    assert svc["ExecStartPre"] == "-/sbin/modprobe overlay"
    assert (svc["Delegate"], svc["KillMode"], svc["Type"]) == ("yes", "process", "notify")
    assert int(svc["OOMScoreAdjust"]) < 0 and svc["LimitNOFILE"] == "infinity"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_allow_cgroup_v1_sets_the_kubelets_fail_cgroup_v1_off():
    """KubeletConfiguration failCgroupV1 (kubelet v1beta1) only when the inventory says so;
    k3s gets the same as a kubelet flag."""
    def kubelet(inv):
        return [d for d in docs(inv, "cp1", "/etc/kubernetes/kubeadm-init.yaml")
                if d["kind"] == "KubeletConfiguration"][0]

    assert kubelet("single-os-containerd")["failCgroupV1"] is False
    assert "failCgroupV1" not in kubelet("single")
    assert "failCgroupV1" in upstream("kubelet-v1beta1.yaml")["types"]["KubeletConfiguration"]
    k3s = cluster("k3s-ha")
    allowed = dataclasses.replace(k3s, allow_cgroup_v1=True)
    server = k3s.control_planes[0]
    conf = yaml.safe_load(render.template("etc/rancher/k3s/config.yaml.j2", allowed, server,
                                          SECRETS))
    assert conf["kubelet-arg"] == ["fail-cgroupv1=false"]
    assert "kubelet-arg" not in yaml.safe_load(render.template(
        "etc/rancher/k3s/config.yaml.j2", k3s, server, SECRETS))


@pytest.mark.parametrize("inv,host,path", cases(lambda i, h, p: p.startswith("/etc/containerd/")))
def test_containerd_config_parses_with_the_cri_keys_we_rely_on(inv, host, path):
    c = cluster(inv)
    doc = tomllib.loads(text(inv, host, path))
    if path.endswith("config.toml") and c.containerd_source == "bundle":
        # containerd 2.x (docs/cri/config.md): config version 3, the CRI plugin split in two
        assert doc["version"] == 3
        assert set(doc["plugins"]) == {"io.containerd.cri.v1.images",
                                       "io.containerd.cri.v1.runtime"}
        images = doc["plugins"]["io.containerd.cri.v1.images"]
        assert images["pinned_images"] == {"sandbox": c.sandbox_image}
        assert images["registry"] == {"config_path": "/etc/containerd/certs.d"}
        cri = doc["plugins"]["io.containerd.cri.v1.runtime"]
        runc = cri["containerd"]["runtimes"]["runc"]
        assert runc["runtime_type"] == "io.containerd.runc.v2"
        assert runc["options"] == {"SystemdCgroup": True}
        assert cri["containerd"]["default_runtime_name"] == "runc"
        # containerd 2.1+ (every pinned release) reads a list; bin_dir is deprecated there
        assert cri["cni"] == {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"}
    elif path.endswith("config.toml"):  # the OS package (1.7): version 2
        assert doc["version"] == 2
        cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
        assert cri["sandbox_image"] == c.sandbox_image
        runc = cri["containerd"]["runtimes"]["runc"]
        assert runc["runtime_type"] == "io.containerd.runc.v2"
        assert runc["options"]["SystemdCgroup"] is True
        assert cri["containerd"]["default_runtime_name"] == "runc"
        assert cri["registry"]["config_path"] == "/etc/containerd/certs.d"
    else:
        registry = path.split("/")[-2]
        assert registry in c.registry_mirrors
        assert doc["server"].startswith("https://")
        assert list(doc["host"]) == render.mirror_urls(c, registry)
        assert all(h["capabilities"] == ["pull", "resolve"] for h in doc["host"].values())


def haproxy_sections(cfg: str) -> dict[str, list[str]]:
    sections, current = {}, None
    for line in cfg.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            current = line.strip()
            sections[current] = []
        else:
            assert current, f"directive outside a section: {line!r}"
            sections[current].append(line.strip())
    return sections


@pytest.mark.parametrize("inv,host,path", cases(lambda i, h, p: p == "/etc/haproxy/haproxy.cfg"))
def test_haproxy_balances_the_api_over_every_control_plane(inv, host, path):
    c = cluster(inv)
    s = haproxy_sections(text(inv, host, path))
    assert set(s) == {"global", "defaults", "frontend kube-apiserver", "backend kube-apiserver"}
    assert "mode tcp" in s["defaults"]
    bind = "127.0.0.1" if c.ha_mode == "local" else "*"
    assert s["frontend kube-apiserver"] == [f"bind {bind}:{c.endpoint_port}",
                                           "default_backend kube-apiserver"]
    servers = [line.split() for line in s["backend kube-apiserver"] if line.startswith("server ")]
    assert servers == [["server", n.name, f"{n.address}:{c.api_port}"] for n in c.control_planes]
    assert any(line.startswith("option httpchk") for line in s["backend kube-apiserver"])
    assert any(" check " in f" {line} " for line in s["backend kube-apiserver"]
               if line.startswith("default-server"))


def keepalived_blocks(cfg: str) -> dict:
    """keepalived.conf as nested dicts: `name {` opens a block, a bare line is a value."""
    tokens = [line.strip() for line in cfg.splitlines()
              if line.strip() and not line.strip().startswith("#")]
    stack = [{}]
    for t in tokens:
        if t.endswith("{"):
            block = {}
            stack[-1][t[:-1].strip()] = block
            stack.append(block)
        elif t == "}":
            stack.pop()
        else:
            key, _, value = t.partition(" ")
            stack[-1][key] = value
    assert len(stack) == 1, "unbalanced braces"
    return stack[0]


@pytest.mark.parametrize("inv,host,path",
                         cases(lambda i, h, p: p == "/etc/keepalived/keepalived.conf"))
def test_keepalived_holds_the_vip_and_tracks_haproxy(inv, host, path):
    c, node = cluster(inv), cluster(inv).node(host)
    conf = keepalived_blocks(text(inv, host, path))
    (name,) = [k for k in conf if k.startswith("vrrp_instance ")]
    vrrp = conf[name]
    assert vrrp["interface"] == c.vip_interface
    assert vrrp["unicast_src_ip"] == node.address
    assert set(vrrp["unicast_peer"]) == {n.address for n in c.loadbalancers if n != node}
    (vip,) = vrrp["virtual_ipaddress"]
    assert vip.startswith(f"{c.api_vip}/")
    assert vrrp["authentication"]["auth_type"] == "PASS"
    assert 1 <= len(vrrp["authentication"]["auth_pass"]) <= 8
    assert "chk_haproxy" in vrrp["track_script"]
    assert "haproxy" in conf["vrrp_script chk_haproxy"]["script"]
    priorities = {n.name: int(keepalived_blocks(text(inv, n.name, path))[name]["priority"])
                  for n in c.loadbalancers}
    assert len(set(priorities.values())) == len(priorities), "equal priorities"
    assert node.keepalived_priority in (None, priorities[host])


@pytest.mark.parametrize("inv", list(CLUSTERS))
def test_prepare_files_on_every_host(inv):
    c = cluster(inv)
    for n in c.nodes:
        files = rendered(inv)[n.name]
        assert {p for p, f in files.items() if f.phase == "prepare"} >= {
            "/etc/hosts", "/etc/sysctl.d/90-kubernetes.conf", "/etc/modules-load.d/kubernetes.conf"}
        hosts = [line.split() for line in text(inv, n.name, "/etc/hosts").splitlines()
                 if line and not line.startswith("#")]
        assert ["127.0.0.1", "localhost"] in hosts
        for other in c.nodes:
            assert [other.address, other.name] in hosts
        sysctl = dict(line.replace(" ", "").split("=", 1)
                      for line in text(inv, n.name, "/etc/sysctl.d/90-kubernetes.conf").splitlines()
                      if line and not line.startswith("#"))
        assert sysctl["net.bridge.bridge-nf-call-iptables"] == "1"
        assert sysctl["net.bridge.bridge-nf-call-ip6tables"] == "1"
        assert sysctl["net.ipv4.ip_forward"] == "1"
        modules = [m for m in text(inv, n.name, "/etc/modules-load.d/kubernetes.conf").split()
                   if not m.startswith("#")][-2:]
        assert modules == ["overlay", "br_netfilter"]


# ---------------------------------------------------------------------------------------------
# The table itself, secrets, determinism, writing, the invoke task
# ---------------------------------------------------------------------------------------------


def test_phases_use_every_template():
    """Every template under templates/ is placed by some phase (for some example topology)."""
    import re

    used = set()
    for module in (REPO / "provisioner" / "phases").glob("*.py"):
        used |= set(re.findall(r'"(etc/[^"]+\.j2)"', module.read_text()))
    on_disk = {str(p.relative_to(render.TEMPLATES)) for p in render.TEMPLATES.rglob("*.j2")
               if not p.name.startswith("_")}
    assert used == on_disk


@pytest.mark.parametrize("inv,host,path", cases())
def test_files_holding_a_secret_are_0600(inv, host, path):
    f = rendered(inv)[host][path]
    leaked = [k for k, v in SECRETS.items() if v in f.content.decode()]
    if leaked:
        assert f.mode == 0o600, f"{path} holds {leaked} but is {oct(f.mode)}"
    assert f.phase in {p.title for p in phases.ALL} and path.startswith("/")


@pytest.mark.parametrize("inv,host,path", cases(lambda i, h, p: p.endswith((".yaml", ".yml"))))
def test_yaml_files_parse_and_hold_no_template_leftovers(inv, host, path):
    assert docs(inv, host, path)
    assert "{{" not in text(inv, host, path) and "{%" not in text(inv, host, path)


def test_a_missing_secret_is_an_error_not_an_empty_string():
    with pytest.raises(jinja2.UndefinedError):
        render.render(cluster("single"), {"k3s_token": "x", "ca_cert_hash": "sha256:0"})


def test_rendering_is_deterministic():
    for inv in INVENTORIES:
        a = render.render(cluster(inv.stem), SECRETS)
        b = render.render(inventory.load(inv), dict(reversed(list(SECRETS.items()))))
        assert a == b
        assert list(a) == [n.name for n in cluster(inv.stem).nodes]


def test_write_tree_lays_out_hosts_and_keeps_secrets_private(tmp_path):
    written = render.write_tree(rendered("lab"), tmp_path)
    assert len(written) == sum(len(f) for f in rendered("lab").values())
    init = tmp_path / "cp1/etc/kubernetes/kubeadm-init.yaml"
    assert init in written
    assert stat.S_IMODE(init.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "lb1/etc/haproxy/haproxy.cfg").stat().st_mode) == 0o644
    assert (tmp_path / "cp1/etc/kubernetes/kubeadm-init.yaml").read_bytes() == \
        rendered("lab")["cp1"]["/etc/kubernetes/kubeadm-init.yaml"].content
    assert not list(tmp_path.rglob(".*.tmp"))


def test_invoke_cluster_render_writes_the_tree(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PROVISIONER_STATE_DIR=str(tmp_path / "state"))
    run = subprocess.run([str(Path(sys.executable).parent / "invoke"), "cluster.render",
                          "-i", "inventories/lab.yml", "-o", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    init = out / "cp1/etc/kubernetes/kubeadm-init.yaml"
    assert stat.S_IMODE(init.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "lb1/etc/keepalived/keepalived.conf").stat().st_mode) == 0o600
    assert (out / "w1/etc/kubernetes/kubeadm-join.yaml").exists()  # the CA pin was known
    saved = yaml.safe_load((tmp_path / "state/lab/secrets.yaml").read_text())
    assert saved["bootstrap_token"] in init.read_text()
    for secret in saved.values():  # never printed
        assert secret not in run.stdout + run.stderr
    again = subprocess.run([str(Path(sys.executable).parent / "invoke"), "cluster.render",
                            "-i", "inventories/lab.yml", "-o", str(tmp_path / "again")],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again/cp1/etc/kubernetes/kubeadm-init.yaml").read_bytes() == \
        init.read_bytes()
