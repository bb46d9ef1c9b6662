"""Generated mutations of the five example inventories, as a hostile or careless user makes them.

Seeded (MUTATION_SEED, default 14), a few hundred cases, bounded time (well under 60 s; a case
taking more than CASE_SECONDS counts as a hang). Each mutation of inventories/*.yml (dropped,
duplicated or retyped keys, odd scalars, odd addresses and networks, unicode, deep nesting,
broken bytes, ...) must either

  - be refused: `InvalidInventory` whose every line is `FILE:LINE: key: message`, or
  - be accepted, render (provisioner.render.render with fake secrets) and pass the conformance
    checks of tests/test_render.py (kubeadm documents against the upstream field trees, k3s
    flags of the node's role, etcd config keys, containerd TOML, YAML that parses, secrets
    0600) plus the invariants below.

Never a traceback, never a hang. Counts are printed (run with -s to see them):

    PYTHONPATH=$PWD pytest -q -s tests/test_mutations.py
"""

from __future__ import annotations

import copy
import ipaddress
import os
import random
import re
import signal
import time
import tomllib
import traceback
from collections import Counter
from pathlib import Path

import pytest
import yaml

from provisioner import inventory, render
from provisioner.errors import InvalidInventory
from tests import test_render as tr

ROOT = Path(__file__).resolve().parent.parent
INVENTORIES = sorted((ROOT / "inventories").glob("*.yml"))
SEED = int(os.environ.get("MUTATION_SEED", "14"))
CASES = int(os.environ.get("MUTATION_CASES", "400"))
CASE_SECONDS = 5
LINE = re.compile(r"^[^:]+:\d+: \S+: .+")

ODD_SCALARS = [
    "", " ", "yes", "no", "on", "off", "~", "null", "0x1F", "1e3", ".nan", ".inf", "-1", "0",
    "65536", "99999999999999999999", "00123", "1_000", "2001-01-01", "true", "'quoted'",
    "\u00e9" * 300, "a\nb", "tab\there", "{{ lookup('env', 'HOME') }}", "../../etc/passwd",
    "$(id)", "`id`", "a: b", "- x", "#x", "&anchor", "*alias", "!tag", "\u200b", "\u202ecp1",
    "\U0001f600", "cp1", "CP1", "c" * 70, "x.y.z", "-lead", "trail-", "\\", "%", "@",
]
ODD_VALUES = [None, True, False, 0, -1, 1, 22, 6443, 65535, 65536, 2 ** 63, 1.5, float("inf"),
              [], {}, ["a"], {"a": 1}, [[[]]], [None], {None: None}]
ODD_ADDRESSES = [
    "0.0.0.0", "255.255.255.255", "127.0.0.1", "127.0.0.2", "169.254.1.1", "224.0.0.1",
    "240.0.0.1", "10.0.0.256", "::1", "fe80::1", "fd00::1", "::ffff:10.0.0.1", "10.0.0.1/24",
    "01.02.03.04", " 10.0.0.1", "10.0.0.1 ", "10.0.0", "1.2.3.4.5", "10.244.0.1", "10.96.0.1",
    "100.64.0.1", "192.168.56.0", "192.168.56.255", "10.90.0.100", "8.8.8.8", "localhost",
    "cp1", "0x0a000001", "167772161", "10.0.0.1%eth0",
]
ODD_NETWORKS = [
    "0.0.0.0/0", "10.0.0.0/33", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
    "240.0.0.0/4", "0.0.0.0/8", "fd00::/64", "fd00::/112", "10.96.0.0/12", "10.244.0.0/16",
    "10.244.0.0/30", "10.244.0.1/16", "10.244.0.0", "10.244.0.0/016", "192.168.56.0/24",
    "192.168.0.0/16", "10.90.0.0/16", "100.64.0.0/10", "10.0.0.0/31", "10.0.0.0/28",
    "172.16.0.0/12", "10.96.0.0/11",
]
ODD_URLS = [
    "https://m.example.com", "http://m.example.com:5000", "https://m.example.com:99999",
    "https://m.example.com/v2?x=1", "https://u:p@m.example.com", "https://m.example.com\n[x]",
    "ftp://m.example.com", "m.example.com", "https://", "https://[::1]:5000", "https://m#frag",
    "https://m.example.com/ path", "https://m.example.com:0", "https://m.example.com/\"x",
]
ODD_VERSIONS = ["v1.35.04", "v1.36.4", "1.36.4", "v1.36", "v1.34.9", "v1.39.0", "v1.36.4+k3s1",
                "v1.36.4+k3s0", "v01.32.4", "v1.36.4-rc.1", "latest", "v1.37.1", "v1.38.0"]
SETTING_VALUES = {
    "ansible_host": ODD_ADDRESSES, "api_vip": ODD_ADDRESSES, "pod_cidr": ODD_NETWORKS,
    "service_cidr": ODD_NETWORKS, "kubernetes_version": ODD_VERSIONS,
    "download_mirror": ODD_URLS, "github_mirror": ODD_URLS,
    "api_port": [22, 80, 443, 2379, 6443, 8443, 10248, 10249, 10250, 10256, 0, 65535, 65536],
    "ansible_port": [22, 2222, 0, 65536, 6443],
    "keepalived_priority": [0, 1, 254, 255, -5, 100],
    "ha_mode": ["none", "kube-vip", "haproxy", "local", "HAProxy", ""],
    "cni": ["flannel", "calico", "cilium"], "distribution": ["kubeadm", "k3s", "rke2"],
    "sandbox_image": ["", "registry.k8s.io/pause:3.10", "pause", "Pause:3", "a b",
                      "registry.k8s.io:99999/pause:3.10", "r.io/p@sha256:" + "a" * 64, "x:"],
    "cluster_name": ["a", "A", "a_b", "a.b", "x" * 64, "-a", "k8s", "\u00e9"],
    "cluster_domain": ["cluster.local", "Cluster.Local", "a..b", "local.", "x" * 70],
    "vip_interface": ["eth0", "eth0.100", "a" * 16, "eth 0", "bond0"],
    "node_taints": [["a=b:NoSchedule", "a=c:NoSchedule"], ["a:NoExecute"], ["x"], [None], []],
    "node_labels": [{"a": None}, {"a": 1}, {"kubernetes.io/role": "x"}, {"a/b/c": "d"}, {}],
    "registry_mirrors": [{"docker.io": [u]} for u in ODD_URLS[:8]] + [
        {"docker.io:99999": ["https://m.example.com"]}, {"docker.io": "https://m"}, {}],
}


# --- mutation operators on the parsed inventory ----------------------------------------------


def paths(value, at=()):
    """Every (path, value) in a nested structure, the root included."""
    out = [(at, value)]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, at + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, at + (i,))
    return out


def get(data, at):
    for p in at:
        data = data[p]
    return data


def put(data, at, value):
    get(data, at[:-1])[at[-1]] = value


def parent_maps(data):
    return [(at, v) for at, v in paths(data) if isinstance(v, dict) and v]


def op_drop(rng, data):
    at, m = rng.choice(parent_maps(data))
    del m[rng.choice(list(m))]


def op_retype(rng, data):
    at, _ = rng.choice(paths(data)[1:])
    put(data, at, copy.deepcopy(rng.choice(ODD_VALUES + ODD_SCALARS)))


def op_odd_scalar(rng, data):
    leaves = [(at, v) for at, v in paths(data)[1:] if not isinstance(v, (dict, list))]
    at, _ = rng.choice(leaves)
    put(data, at, rng.choice(ODD_SCALARS))


def op_setting(rng, data):
    """A known key somewhere it belongs (or not) with a value from its odd list."""
    key = rng.choice(list(SETTING_VALUES))
    maps = [(at, m) for at, m in parent_maps(data) if key in m]
    if not maps or rng.random() < 0.2:
        settings = [(at, m) for at, m in parent_maps(data) if at in (
            ("all", "vars"), ("all", "vars", "cluster"))]
        maps = settings if settings and rng.random() < 0.8 else parent_maps(data)
    at, m = rng.choice(maps)
    m[key] = copy.deepcopy(rng.choice(SETTING_VALUES[key]))


def op_many_loadbalancers(rng, data):
    """A long loadbalancers group (keepalived's default priorities run out after 15)."""
    groups = data["all"]["children"]
    groups["loadbalancers"] = {"hosts": {
        f"lb{i}": {"ansible_host": f"10.90.0.{150 + i}"} for i in range(rng.choice([3, 15, 16, 20]))}}
    data["all"]["vars"]["ha_mode"] = "haproxy"


def op_rename_key(rng, data):
    at, m = rng.choice(parent_maps(data))
    old = rng.choice(list(m))
    new = rng.choice([str(old).upper(), f"{old}\u200b", f"{old} ", 1, True, None,
                      str(old).replace("_", "-"), "c\u0440" + str(old)[2:], "localhost"])
    if new not in m:
        m[new] = m.pop(old)


def op_duplicate_host(rng, data):
    groups = (data.get("all") or {}).get("children") or {}
    hosts = [(g, h, v) for g, body in groups.items() if isinstance(body, dict)
             for h, v in ((body.get("hosts") or {}).items() if isinstance(body.get("hosts"), dict)
                          else [])]
    if not hosts:
        return op_drop(rng, data)
    g, h, v = rng.choice(hosts)
    target = rng.choice(list(groups) + ["control_plane", "workers", "etcd", "loadbalancers"])
    body = groups.setdefault(target, {}) if isinstance(groups, dict) else {}
    if not isinstance(body, dict):
        return
    hs = body.setdefault("hosts", {})
    if isinstance(hs, dict):
        hs[rng.choice([h, h + "x", h.upper()])] = copy.deepcopy(v)


def op_deep(rng, data):
    at, v = rng.choice(paths(data)[1:])
    for _ in range(rng.choice([3, 30, 60])):
        v = [v] if rng.random() < 0.5 else {"k": v}
    put(data, at, v)


def op_unknown_key(rng, data):
    at, m = rng.choice(parent_maps(data))
    m[rng.choice(["pod_cdir", "hosts", "vars", "children", "cluster", "x", "\u00fc", "<<"])] = \
        rng.choice(ODD_VALUES + ODD_SCALARS)


STRUCT_OPS = [op_drop, op_retype, op_odd_scalar, op_setting, op_setting, op_setting,
              op_setting, op_rename_key, op_duplicate_host, op_deep, op_unknown_key,
              op_many_loadbalancers]


def text_mutation(rng, text: str) -> bytes:
    """Byte-level damage to the original file (comments and layout kept)."""
    lines = text.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    kind = rng.randrange(9)
    if kind == 0:
        lines.insert(i, lines[i])                        # a duplicated line (key twice)
    elif kind == 1:
        lines[i] = "\t" + lines[i]                       # a tab
    elif kind == 2:
        lines[i] = "  " + lines[i]                       # shifted indentation
    elif kind == 3:
        del lines[i]
    elif kind == 4:
        return text.encode()[: rng.randrange(len(text))]  # truncated
    elif kind == 5:
        data = bytearray(text.encode())
        data.insert(rng.randrange(len(data)), rng.choice([0, 0xFF, 0xC3, 0x80]))
        return bytes(data)                               # NUL or broken UTF-8
    elif kind == 6:
        return rng.choice([text.encode("utf-16"), text.encode("utf-16-le"),
                           b"\xef\xbb\xbf" + text.encode()])
    elif kind == 7:
        lines[i] = lines[i].replace(":", rng.choice([" :", "::", ": &a", ": *a", ": !vault"]), 1)
    else:
        lines[i] = lines[i].rstrip("\n") + rng.choice([" #\u00e9", " \u200b", "'", "\"", "{"]) \
            + "\n"
    return "".join(lines).encode()


def mutate(rng: random.Random, source: Path) -> bytes:
    text = source.read_text()
    if rng.random() < 0.3:
        return text_mutation(rng, text)
    data = yaml.safe_load(text)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        try:
            rng.choice(STRUCT_OPS)(rng, data)
        except (IndexError, KeyError, TypeError, AttributeError):
            pass  # the structure no longer has what the operator wanted
    return yaml.safe_dump(data, allow_unicode=rng.random() < 0.5, sort_keys=False).encode()


# --- conformance of what an accepted mutation renders ----------------------------------------

K3S_ROLE = {True: "server", False: "agent"}


def conformance(cluster, files) -> list[str]:
    """Problems with the rendered files: tests/test_render.py's checks plus invariants."""
    out = []
    for host, by_path in files.items():
        node = cluster.node(host)
        for path, f in by_path.items():
            text = f.content.decode()
            where = f"{host}:{path}"
            leaked = [k for k, v in tr.SECRETS.items() if v in text]
            if leaked and f.mode != 0o600:
                out.append(f"{where}: holds {leaked} but is {oct(f.mode)}")
            if path.endswith((".yaml", ".yml")):
                try:
                    docs = [d for d in yaml.safe_load_all(text) if d is not None]
                except yaml.YAMLError as e:
                    out.append(f"{where}: YAML does not parse: {e}")
                    continue
                if "{{" in text or "{%" in text:
                    out.append(f"{where}: template leftovers")
                if path.startswith("/etc/kubernetes/kubeadm-"):
                    out += [f"{where}: {p}" for d in docs for p in tr.check_component_doc(d)]
                    out += kubeadm_invariants(cluster, node, path, docs, where)
                if path == "/etc/rancher/k3s/config.yaml":
                    role = K3S_ROLE[node.has("control_plane")]
                    flags = tr.K3S_FLAGS[role]
                    out += [f"{where}: {k} is not a `k3s {role}` flag" for k in docs[0]
                            if k not in flags]
                    out += [f"{where}: {k}={v!r} has the wrong type" for k, v in docs[0].items()
                            if k in flags and not tr.FLAG_TYPES[flags[k]](v)]
                if path == "/etc/etcd/etcd.conf.yml":
                    out += etcd_invariants(cluster, node, docs[0], where)
            if path.startswith("/etc/containerd/"):
                try:
                    doc = tomllib.loads(text)
                except tomllib.TOMLDecodeError as e:
                    out.append(f"{where}: TOML does not parse: {e}")
                    continue
                if path.endswith("config.toml") and doc.get("version") == 3:  # containerd 2.x
                    images = doc["plugins"]["io.containerd.cri.v1.images"]
                    if images["pinned_images"]["sandbox"] != cluster.sandbox_image:
                        out.append(f"{where}: sandbox is {images['pinned_images']['sandbox']!r}")
                elif path.endswith("config.toml"):
                    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
                    if cri["sandbox_image"] != cluster.sandbox_image:
                        out.append(f"{where}: sandbox_image is {cri['sandbox_image']!r}")
                elif list(doc.get("host", {})) != render.mirror_urls(cluster, path.split("/")[-2]):
                    out.append(f"{where}: mirror hosts differ from the inventory")
    for n in cluster.nodes:
        ip = ipaddress.ip_address(n.address)  # accepted: must be an IPv4 unicast address
        if ip.version != 4 or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
            out.append(f"{n.name}: accepted address {n.address}")
    for key in ("pod_cidr", "service_cidr"):
        net = ipaddress.ip_network(getattr(cluster, key))
        if net.version != 4 or net.is_loopback or net.is_link_local or net.is_multicast:
            out.append(f"accepted {key} {net}")
    if cluster.ha_mode == "haproxy":
        prios = [render.keepalived_priority(cluster, n) for n in cluster.loadbalancers]
        out += [f"keepalived priority {p}" for p in prios if not 1 <= p <= 254]
    return out


def kubeadm_invariants(cluster, node, path, docs, where) -> list[str]:
    out = []
    kinds = {d.get("kind"): d for d in docs}
    init, cc = kinds.get("InitConfiguration"), kinds.get("ClusterConfiguration")
    if init is not None:
        if init["localAPIEndpoint"]["advertiseAddress"] != node.address:
            out.append(f"{where}: advertiseAddress is not {node.address}")
        if init["localAPIEndpoint"].get("bindPort", cluster.api_port) not in (
                cluster.api_port, render.apiserver_port(cluster)):
            out.append(f"{where}: bindPort differs")
    if cc is not None:
        want = {"podSubnet": cluster.pod_cidr, "serviceSubnet": cluster.service_cidr,
                "dnsDomain": cluster.cluster_domain}
        if cc["networking"] != want:
            out.append(f"{where}: networking {cc['networking']} != {want}")
        if cc["kubernetesVersion"] != cluster.kubernetes_version:
            out.append(f"{where}: kubernetesVersion differs")
    join = kinds.get("JoinConfiguration")
    if join is not None and join["nodeRegistration"]["name"] != node.name:
        out.append(f"{where}: node name differs")
    return out


def etcd_invariants(cluster, node, conf, where) -> list[str]:
    types = {"string": str, "bool": bool, "int": int}
    out = []
    for key, value in conf.items():
        kind = tr.ETCD["keys"].get(key)
        if kind is None:
            out.append(f"{where}: {key} is not an etcd config key")
        elif kind != "security" and not isinstance(value, types[kind]):
            out.append(f"{where}: {key} has the wrong type")
    want = ",".join(f"{n.name}=https://{n.address}:2380" for n in cluster.etcd_nodes)
    if cluster.etcd_nodes and conf.get("initial-cluster") != want:
        out.append(f"{where}: initial-cluster {conf.get('initial-cluster')!r} != {want!r}")
    return out


# --- the run ----------------------------------------------------------------------------------


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def classify(path: Path) -> tuple[str, str]:
    """('clear' | 'accepted-correct' | 'accepted-wrong' | 'unclear' | 'traceback' | 'hang', why)"""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        try:
            cluster = inventory.load(path)
        except InvalidInventory as e:
            lines = [str(p) for p in e.problems]
            bad = [ln for ln in lines if not LINE.match(ln) or not ln.startswith(f"{path}:")]
            return ("unclear", "\n".join(bad)) if bad or not lines else ("clear", lines[0])
        files = render.render(cluster, tr.SECRETS)
        problems = conformance(cluster, files)
        return ("accepted-wrong", "\n".join(problems[:5])) if problems else (
            "accepted-correct", "")
    except Hang:
        return "hang", f"more than {CASE_SECONDS} s"
    except Exception:  # noqa: BLE001 - that is what is being counted
        return "traceback", traceback.format_exc(limit=-3)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_mutations(tmp: Path, seed: int = SEED, cases: int = CASES):
    rng = random.Random(seed)
    counts: Counter = Counter()
    examples: dict[str, list] = {}
    for i in range(cases):
        source = INVENTORIES[i % len(INVENTORIES)]
        path = tmp / f"m{i:04d}-{source.stem}.yml"
        path.write_bytes(mutate(rng, source))
        outcome, why = classify(path)
        counts[outcome] += 1
        examples.setdefault(outcome, []).append((path.name, why))
    return counts, examples


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # bundle_dir and state_dir in the inventories are repo-relative
    monkeypatch.delenv("PROVISIONER_STATE_DIR", raising=False)


def test_mutations_never_crash_hang_or_render_wrong(tmp_path, in_repo):
    start = time.monotonic()
    counts, examples = run_mutations(tmp_path)
    elapsed = time.monotonic() - start
    print(f"\nmutations (seed {SEED}): {CASES} cases in {elapsed:.1f} s: "
          + ", ".join(f"{k} {counts[k]}" for k in ("clear", "accepted-correct",
                                                    "accepted-wrong", "unclear", "traceback",
                                                    "hang")))
    bad = {k: examples[k][:3] for k in ("accepted-wrong", "unclear", "traceback", "hang")
           if counts[k]}
    assert not bad, "\n".join(f"{k}: {name}\n{why}" for k, v in bad.items() for name, why in v)
    assert counts["clear"] > CASES // 4 and counts["accepted-correct"] > CASES // 20
    assert elapsed < 60
