"""TEST-ONLY stand-in for kubeadm: init, join, init phase, reset, token, version. It runs no
control plane.

It decodes --config strictly against the upstream kubeadm.k8s.io/v1beta4 field tree, validates
what the provisioner must supply (bootstrap token, certificate key, discovery), runs a few of
kubeadm's own preflight checks, refuses to init or join twice like kubeadm does, and goes
through kubeadm's phases in upstream order (v1.32), each writing the files the real phase writes
(kubeconfigs, static pod manifests, kubelet config) marked as stand-in. The steps done are kept
in /var/lib/standin/kubeadm-state.json (see state.py), which is what the kubectl stand-in
answers from, about this node only. /etc/standin/faults makes a step fail once, leaving the
files of the earlier steps, like a real failure. `init phase NAME --config F` finishes the
steps after wait-control-plane (or renews join secrets) when this node's API answers. Every
call is recorded in /var/log/standin/kubeadm.jsonl with secrets replaced by their sha256.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess

from . import Failed, Tool, data_text, hashed, load_yaml_docs
from . import schema, state

GROUP = "kubeadm.k8s.io"
API = f"{GROUP}/v1beta4"
COMPONENT_APIS = {"KubeletConfiguration": "kubelet.config.k8s.io/v1beta1",
                  "KubeProxyConfiguration": "kubeproxy.config.k8s.io/v1alpha1"}
KUBEADM_KINDS = ("InitConfiguration", "ClusterConfiguration", "JoinConfiguration",
                 "ResetConfiguration", "UpgradeConfiguration")
TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
CERT_KEY = re.compile(r"[0-9a-f]{64}")
CA_HASH = re.compile(r"sha256:[0-9a-f]{64}")
CA_CERT = "/etc/kubernetes/pki/ca.crt"
DEFAULT_CRI = "unix:///var/run/containerd/containerd.sock"
MARK = "stand-in kubeadm: TEST-ONLY file, no Kubernetes component reads or serves it"
WRITTEN = "/var/lib/standin/kubeadm-written.json"
MANIFESTS = "/etc/kubernetes/manifests"


def main(tool: Tool, argv: list[str]) -> int:
    args = [a for a in argv if not re.fullmatch(r"-v(=?\d+)?|--v=\d+", a)]
    if not args or args[0] in ("-h", "--help", "help"):
        tool.say("usage: kubeadm init|join|reset|certs|version (a test-only stand-in)")
        return 0
    cmd, rest = args[0], args[1:]
    if cmd in ("version", "--version"):
        print(tool.version_line())
        return 0
    if cmd == "certs":  # check-expiration, renew: kubeadm_certs.py
        from . import kubeadm_certs

        kubeadm_certs.main(tool, rest)
        return 0
    if cmd == "token" or (cmd == "init" and rest[:1] == ["phase"]):
        try:
            (token if cmd == "token" else init_phase)(tool, rest)
        except Failed as e:
            tool.record(hide_positional(argv), "error: " + str(e).splitlines()[0])
            raise
        tool.record(hide_positional(argv), "ok")
        return 0
    if cmd == "upgrade":
        from . import upgrade

        return upgrade.kubeadm_upgrade(tool, argv, rest)
    if cmd not in ("init", "join", "reset"):
        raise Failed(f'unknown command "{cmd}" for "kubeadm" (the stand-in implements init, '
                     "join, reset, version)")
    docs = None
    try:
        if cmd == "reset":
            reset(tool, rest)
        else:
            opts = parse_flags(rest, cmd)
            docs = load_yaml_docs(tool, opts["config"])
            configs = decode(docs, cmd)
            (init if cmd == "init" else join)(tool, configs, opts)
    except Failed as e:
        tool.record(argv, "error: " + str(e).splitlines()[0], config=docs)
        raise
    tool.record(argv, "ok", config=docs)
    return 0


# ---------------------------------------------------------------------------------------------
# Day-2 helpers a later join needs: a fresh bootstrap token, the control plane certs uploaded
# again (kubeadm gives them 24 h and 2 h). Both need the cluster: admin.conf must exist.
# ---------------------------------------------------------------------------------------------

ADMIN = "/etc/kubernetes/admin.conf"


def hide_positional(argv: list[str]) -> list[str]:
    """`token create TOKEN` carries the secret as a positional argument: log its hash."""
    return [hashed(a) if TOKEN.fullmatch(a) else a for a in argv]


def need_cluster(tool: Tool) -> None:
    if not tool.path(ADMIN).exists():
        raise Failed(f"failed to load admin kubeconfig: open {ADMIN}: no such file or directory")


def token(tool: Tool, args: list[str]) -> None:
    """`token delete ID` and `token create TOKEN [--ttl D]` (with optional --kubeconfig)."""
    args = [a for i, a in enumerate(args) if not a.startswith("--kubeconfig")
            and (i == 0 or args[i - 1] != "--kubeconfig")]
    if args[:1] == ["delete"] and len(args) == 2:
        need_cluster(tool)
        return
    if args[:1] == ["create"] and len(args) >= 2 and TOKEN.fullmatch(args[1]):
        rest = args[2:]
        if rest and not (rest[0] == "--ttl" and len(rest) == 2 or rest[0].startswith("--ttl=")):
            raise Failed(f"unknown flag: {rest[0]} (the stand-in takes --ttl and --kubeconfig)")
        need_cluster(tool)
        return
    raise Failed("the stand-in implements `token delete ID` and `token create TOKEN [--ttl D]`"
                 " with a token matching [a-z0-9]{6}.[a-z0-9]{16}")


def upload_certs(tool: Tool, args: list[str]) -> None:
    """`init phase upload-certs --upload-certs --certificate-key KEY [--config F]`."""
    if args[:2] != ["phase", "upload-certs"] or "--upload-certs" not in args:
        raise Failed("the stand-in implements only `init phase upload-certs --upload-certs`")
    key = next((a.split("=", 1)[1] for a in args if a.startswith("--certificate-key=")), None)
    if key is None and "--certificate-key" in args:
        i = args.index("--certificate-key")
        key = args[i + 1] if i + 1 < len(args) else None
    if not key or not CERT_KEY.fullmatch(key):
        raise Failed("--certificate-key: must be 64 hexadecimal characters")
    need_cluster(tool)


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------

BOOL_FLAGS = {"init": {"--upload-certs", "--dry-run", "--skip-token-print",
                       "--skip-certificate-key-print"},
              "join": {"--control-plane", "--dry-run"}}
VALUE_FLAGS = {"--config", "--skip-phases", "--ignore-preflight-errors"}


def parse_flags(args: list[str], cmd: str) -> dict:
    opts = {"config": None, "skip": set(), "ignore": set(), "flags": set()}
    i = 0
    while i < len(args):
        a = args[i]
        flag, _, value = a.partition("=")
        if flag in VALUE_FLAGS:
            if not value:
                i += 1
                if i >= len(args):
                    raise Failed(f"flag needs an argument: {flag}")
                value = args[i]
            if flag == "--config":
                opts["config"] = value
            elif flag == "--skip-phases":
                opts["skip"] |= set(value.split(","))
            else:
                opts["ignore"] |= {v.lower() for v in value.split(",")}
        elif flag in BOOL_FLAGS[cmd]:
            opts["flags"].add(flag)
        elif a.startswith("-"):
            raise Failed(f"unknown flag: {flag} (the stand-in takes --config and "
                         f"{', '.join(sorted(BOOL_FLAGS[cmd] | VALUE_FLAGS - {'--config'}))})")
        else:
            raise Failed(f"the stand-in takes no positional arguments with --config: {a!r}")
        i += 1
    if not opts["config"]:
        raise Failed(f"kubeadm {cmd}: the stand-in needs --config FILE (the provisioner always "
                     "passes one)")
    return opts


# ---------------------------------------------------------------------------------------------
# Strict decoding
# ---------------------------------------------------------------------------------------------


TREES = ("kubeadm-v1beta4.yaml", "kubelet-v1beta1.yaml", "kubeproxy-v1alpha1.yaml")


def upstream_types() -> dict[str, tuple]:
    """kind -> normalised type, from the upstream field trees (tests/data/upstream/)."""
    import yaml

    kinds = {}
    for name in TREES:
        tree = yaml.safe_load(data_text(name))
        types = schema.types_from_tree(tree)
        kinds.update({k: types[k] for k in tree["kinds"]})
    return kinds


def gvk(doc: dict) -> str:
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    return (f'schema.GroupVersionKind{{Group:"{group}", Version:"{version}", '
            f'Kind:"{doc.get("kind", "")}"}}')


def decode(docs: list, cmd: str) -> dict[str, dict]:
    """kind -> document, after checking apiVersion, kind and every field strictly."""
    if not docs:
        raise Failed("the config file has no documents")
    types = upstream_types()
    out: dict[str, dict] = {}
    problems: list[str] = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise Failed(f"a config document is a {schema.json_kind(doc)}, not an object")
        kind, api = doc.get("kind"), doc.get("apiVersion")
        if not kind:
            raise Failed(f"Object 'Kind' is missing in '{json.dumps(doc)[:200]}'")
        if not api:
            raise Failed(f"Object 'apiVersion' is missing in '{json.dumps(doc)[:200]}'")
        if kind in KUBEADM_KINDS:
            if api != API:
                raise Failed(f'no kind "{kind}" is registered for version "{api}" in scheme '
                             f'(the stand-in accepts {API} only)')
        elif kind in COMPONENT_APIS:
            if api != COMPONENT_APIS[kind]:
                raise Failed(f'no kind "{kind}" is registered for version "{api}" in scheme')
        else:
            raise Failed(f"unknown configuration {gvk(doc)} (the stand-in accepts "
                         f"{', '.join(KUBEADM_KINDS)} in {API} and the kubelet and kube-proxy "
                         "component configs)")
        if kind in out:
            raise Failed(f"found more than one {kind} document")
        if kind in types:
            errors: list[str] = []
            schema.check(doc, types[kind], "", kind, errors)
            if errors:
                problems.append(f"error unmarshaling configuration {gvk(doc)}: strict decoding "
                                "error: " + ", ".join(errors))
        elif kind in KUBEADM_KINDS:
            raise Failed(f"the upstream field tree has no {kind}: cannot check it")
        out[kind] = doc
    if problems:
        raise Failed("\n".join(problems))
    wanted = "InitConfiguration" if cmd == "init" else "JoinConfiguration"
    if wanted not in out:
        raise Failed(f"kubeadm {cmd}: the config has no {wanted} (the stand-in needs one)")
    return out


# ---------------------------------------------------------------------------------------------
# Validation of what the provisioner must supply
# ---------------------------------------------------------------------------------------------


def invalid(path: str, value, why: str, secret: bool = False) -> str:
    shown = "<redacted>" if secret else json.dumps(value)
    return f"{path}: Invalid value: {shown}: {why}"


def validate_init(configs: dict, upload_certs: bool, version: str) -> list[str]:
    init, cluster = configs["InitConfiguration"], configs.get("ClusterConfiguration", {})
    errs = []
    tokens = init.get("bootstrapTokens") or []
    if not tokens:
        errs.append("bootstrapTokens: Required value: the stand-in expects the provisioner to "
                    "choose the bootstrap token (workers join with it)")
    for i, t in enumerate(tokens):
        if not TOKEN.fullmatch(str((t or {}).get("token", ""))):
            errs.append(invalid(f"bootstrapTokens[{i}].token", None,
                                r"the bootstrap token is invalid (want [a-z0-9]{6}.[a-z0-9]{16})",
                                secret=True))
    key = init.get("certificateKey")
    if upload_certs and key is None:
        errs.append("certificateKey: Required value: --upload-certs without a certificateKey: "
                    "the provisioner must choose it (control planes join with it)")
    elif key is not None and not CERT_KEY.fullmatch(str(key)):
        errs.append(invalid("certificateKey", None, "must be 64 hexadecimal characters (a "
                            "32-byte AES key)", secret=True))
    endpoint = init.get("localAPIEndpoint") or {}
    if "advertiseAddress" in endpoint and not is_ip(endpoint["advertiseAddress"]):
        errs.append(invalid("localAPIEndpoint.advertiseAddress", endpoint["advertiseAddress"],
                            "must be a valid IP address"))
    errs += validate_port("localAPIEndpoint.bindPort", endpoint.get("bindPort"))
    net = cluster.get("networking") or {}
    for key in ("podSubnet", "serviceSubnet"):
        if key in net:
            for cidr in str(net[key]).split(","):
                try:
                    ipaddress.ip_network(cidr.strip(), strict=True)
                except ValueError as e:
                    errs.append(invalid(f"networking.{key}", net[key], f"couldn't parse subnet: {e}"))
    cpe = cluster.get("controlPlaneEndpoint")
    if cpe and not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", str(cpe)):
        errs.append(invalid("controlPlaneEndpoint", cpe, "must be host or host:port"))
    want = cluster.get("kubernetesVersion")
    if want and minor(want) != minor(version):
        errs.append(invalid("kubernetesVersion", want, f"this kubeadm (stand-in for {version}) "
                            f"deploys {minor(version)}.x only"))
    external = (cluster.get("etcd") or {}).get("external")
    if external is not None:
        eps = external.get("endpoints") or []
        if not eps:
            errs.append("etcd.external.endpoints: Required value: at least one endpoint")
        if any(str(e).startswith("https://") for e in eps):
            for f in ("caFile", "certFile", "keyFile"):
                if not external.get(f):
                    errs.append(f"etcd.external.{f}: Required value: needed for https endpoints")
    return errs


def validate_join(join: dict) -> list[str]:
    errs = []
    disc = join.get("discovery") or {}
    bt, file = disc.get("bootstrapToken"), disc.get("file")
    if bt is None and file is None:
        errs.append("discovery: Invalid value: one of bootstrapToken or file must be set")
    if bt is not None:
        if not TOKEN.fullmatch(str(bt.get("token", ""))):
            errs.append(invalid("discovery.bootstrapToken.token", None,
                                "the bootstrap token is invalid", secret=True))
        ep = str(bt.get("apiServerEndpoint", ""))
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d+", ep):
            errs.append(invalid("discovery.bootstrapToken.apiServerEndpoint", ep,
                                "must be host:port of the API server"))
        hashes = bt.get("caCertHashes") or []
        if not hashes and not bt.get("unsafeSkipCAVerification"):
            errs.append("discovery.bootstrapToken.caCertHashes: Invalid value: []: using "
                        "token-based discovery without caCertHashes can be unsafe. Set "
                        "unsafeSkipCAVerification as true in your kubeadm config file")
        for i, h in enumerate(hashes):
            if not CA_HASH.fullmatch(str(h)):
                errs.append(invalid(f"discovery.bootstrapToken.caCertHashes[{i}]", h,
                                    "must be sha256:<64 hex characters>"))
    tls = disc.get("tlsBootstrapToken")
    if tls is not None and not TOKEN.fullmatch(str(tls)):
        errs.append(invalid("discovery.tlsBootstrapToken", None, "the bootstrap token is "
                            "invalid", secret=True))
    cp = join.get("controlPlane")
    if cp is not None:
        key = cp.get("certificateKey")
        if not key:
            errs.append("controlPlane.certificateKey: Required value: a control-plane join "
                        "downloads the certificates uploaded by init --upload-certs")
        elif not CERT_KEY.fullmatch(str(key)):
            errs.append(invalid("controlPlane.certificateKey", None, "must be 64 hexadecimal "
                                "characters", secret=True))
        ep = cp.get("localAPIEndpoint") or {}
        if "advertiseAddress" in ep and not is_ip(ep["advertiseAddress"]):
            errs.append(invalid("controlPlane.localAPIEndpoint.advertiseAddress",
                                ep["advertiseAddress"], "must be a valid IP address"))
        errs += validate_port("controlPlane.localAPIEndpoint.bindPort", ep.get("bindPort"))
    return errs


def validate_port(path: str, port) -> list[str]:
    if port is not None and not (isinstance(port, int) and 0 < port < 65536):
        return [invalid(path, port, "must be between 1 and 65535, inclusive")]
    return []


def is_ip(value) -> bool:
    try:
        ipaddress.ip_address(str(value))
        return True
    except ValueError:
        return False


def minor(version: str) -> str:
    return ".".join(str(version).lstrip("v").split(".")[:2])


def check_ca_pin(tool: Tool, join_cfg: dict) -> str | None:
    """The real join fetches the cluster CA and refuses it unless its public key is pinned in
    caCertHashes. The stand-in has no cluster to ask: when the node already holds the cluster
    CA (the provisioner places it), it checks the pins against that certificate."""
    bt = (join_cfg.get("discovery") or {}).get("bootstrapToken") or {}
    pins = bt.get("caCertHashes") or []
    ca = tool.path(join_cfg.get("caCertPath") or CA_CERT)
    if not pins or not ca.is_file():
        return None
    try:
        pin = "sha256:" + hashlib.sha256(spki_of_pem(ca.read_text())).hexdigest()
    except ValueError as e:
        return f"{CA_CERT}: cannot read the CA certificate: {e}"
    if pin not in pins:
        return (f'cluster CA found in cluster-info ConfigMap is invalid: none of the public keys '
                f'"{pin}" are pinned (stand-in: compared with {CA_CERT} on this node)')
    return None


def spki_of_pem(pem: str) -> bytes:
    """DER SubjectPublicKeyInfo of the first certificate in a PEM text (no crypto library)."""
    m = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    if not m:
        raise ValueError("no PEM certificate")
    der = base64.b64decode("".join(m.group(1).split()))
    _, cert, _ = der_tlv(der, 0)            # Certificate
    _, tbs, _ = der_tlv(cert, 0)            # TBSCertificate
    items, pos = [], 0
    while pos < len(tbs) and len(items) < 7:
        start = pos
        tag, _, pos = der_tlv(tbs, pos)
        items.append((tag, tbs[start:pos]))
    if items and items[0][0] == 0xA0:       # [0] version is optional
        items = items[1:]
    if len(items) < 6 or items[5][0] != 0x30:
        raise ValueError("not an X.509 certificate")
    return items[5][1]                      # serial, sigalg, issuer, validity, subject, SPKI


def der_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, content, position after) of the DER element at pos."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos:pos + length], pos + length


# ---------------------------------------------------------------------------------------------
# Preflight: a few of kubeadm's own checks
# ---------------------------------------------------------------------------------------------


def preflight(tool: Tool, opts: dict, node_reg: dict, checks: list[tuple[str, str | None]]):
    """checks: (name, error or None). Fails like kubeadm unless skipped or ignored (by flag or
    nodeRegistration.ignorePreflightErrors)."""
    if "preflight" in opts["skip"]:
        return
    ignore = opts["ignore"] | {str(n).lower() for n in node_reg.get("ignorePreflightErrors") or []}
    errors = [(n, e) for n, e in checks if e and n.lower() not in ignore and "all" not in ignore]
    for n, e in checks:
        if e and (n.lower() in ignore or "all" in ignore):
            tool.say(f"[preflight] WARNING {n}: {e} (ignored)")
    if errors:
        lines = ["error execution phase preflight: [preflight] Some fatal errors occurred:"]
        lines += [f"\t[ERROR {n}]: {e}" for n, e in errors]
        lines.append("[preflight] If you know what you are doing, you can make a check non-fatal "
                     "with `--ignore-preflight-errors=...`")
        raise Failed("\n".join(lines))


def file_available(tool: Tool, path: str) -> tuple[str, str | None]:
    name = "FileAvailable-" + path.replace("/", "-")
    return name, (f"{path} already exists" if tool.path(path).exists() else None)


def cri_check(tool: Tool, node_reg: dict) -> tuple[str, str | None]:
    endpoint = node_reg.get("criSocket") or DEFAULT_CRI
    path = endpoint.removeprefix("unix://")
    try:
        ok = stat.S_ISSOCK(tool.path(path).stat().st_mode)
    except OSError:
        ok = False
    return "CRI", (None if ok else f"container runtime is not running: no socket at {endpoint}")


def ip_forward(tool: Tool) -> tuple[str, str | None]:
    p = "/proc/sys/net/ipv4/ip_forward"
    try:
        ok = tool.path(p).read_text().strip() == "1"
    except OSError:
        ok = False
    return "FileContent--proc-sys-net-ipv4-ip_forward", (
        None if ok else f"{p} contents are not set to 1")


def kubelet_present(tool: Tool) -> tuple[str, str | None]:
    dirs = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":")
    found = any(shutil.which("kubelet", path=str(tool.path(d))) for d in dirs if d)
    return "KubeletVersion", (None if found else
                              'couldn\'t get kubelet version: exec: "kubelet": executable file '
                              "not found in $PATH")


def external_etcd_files(tool: Tool, cluster: dict) -> list[tuple[str, str | None]]:
    external = (cluster.get("etcd") or {}).get("external") or {}
    out = []
    for f in ("caFile", "certFile", "keyFile"):
        if external.get(f):
            missing = not tool.path(external[f]).is_file()
            out.append(("ExternalEtcdClientCertificates",
                        f"{external[f]} doesn't exist" if missing else None))
    return out


# ---------------------------------------------------------------------------------------------
# init / join: kubeadm's phases in upstream order (v1.32), one step at a time
# ---------------------------------------------------------------------------------------------

INIT_STEPS = ("preflight", "certs", "kubeconfig", "etcd", "control-plane", "kubelet-start",
              "wait-control-plane", "upload-config", "upload-certs", "mark-control-plane",
              "bootstrap-token", "kubelet-finalize", "addon", "show-join-command")
# kubelet-wait-bootstrap is hidden upstream and only waits when the ControlPlaneKubeletLocalMode
# gate is on; without it, kubelet-start itself waits for the TLS bootstrap (kubelet.conf).
JOIN_STEPS = ("preflight", "control-plane-prepare", "kubelet-start", "etcd-join",
              "kubelet-wait-bootstrap", "control-plane-join", "wait-control-plane")
# what kubeadm prints for a phase whose work is done by a sub-phase
SHOWN = {("join", "control-plane-join"): "control-plane-join/mark-control-plane"}
# names a fault line may use for a step besides its own
ALIASES = {("join", "control-plane-join"): ("mark-control-plane",
                                            "control-plane-join/mark-control-plane")}
KUBELET_CLIENT = "/var/lib/kubelet/pki/kubelet-client-current.pem"
ETCD_MEMBER = "/var/lib/etcd/member/standin-member"


def wait_for_kubelet(tool: Tool, seconds: float = 120) -> None:
    """kubeadm waits here until the kubelet runs the control plane and the API answers; the
    stand-in API "answers" while the kubelet unit is active, so it waits for that."""
    import time

    deadline = time.monotonic() + seconds
    while not state.unit_active(tool, "kubelet"):
        if time.monotonic() > deadline:
            raise Failed("error execution phase wait-control-plane: the kubelet did not start "
                         f"within {seconds:.0f} s (stand-in)")
        time.sleep(0.5)
    tool.say("[wait-control-plane] stand-in: the kubelet unit is active (no control plane runs)")


def control_plane_manifests(local_etcd: bool) -> list[str]:
    names = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    return names + (["etcd"] if local_etcd else [])


def node_name(node_reg: dict) -> str:
    return str(node_reg.get("name") or state.hostname())


CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "value": "",
                       "effect": "NoSchedule"}


def registration(node_reg: dict, control_plane: bool) -> dict:
    """The labels (kubelet --node-labels) and taints the node registers with / is marked with."""
    labels = {}
    for a in node_reg.get("kubeletExtraArgs") or []:
        if isinstance(a, dict) and a.get("name") == "node-labels":
            for pair in str(a.get("value", "")).split(","):
                k, _, v = pair.partition("=")
                if k:
                    labels[k] = v
    if "taints" in node_reg:
        taints = [{"key": t.get("key"), "value": t.get("value", ""), "effect": t.get("effect")}
                  for t in node_reg.get("taints") or [] if isinstance(t, dict)]
    else:
        taints = [CONTROL_PLANE_TAINT] if control_plane else []
    return {"labels": labels, "taints": taints}


def run_steps(tool: Tool, cmd: str, steps: list[tuple[str, object]], opts: dict,
              fresh: dict) -> None:
    """Run (name, action) in order, honouring --skip-phases and the fault switch. The state
    file is written anew once preflight passed (a refused init/join leaves the last one)."""
    s: dict | None = None
    for name, action in steps:
        shown = SHOWN.get((cmd, name), name)
        if name in opts["skip"] or shown in opts["skip"]:
            tool.say(f"[{name}] skipped (--skip-phases)")
            continue
        line = state.take_fault(tool, f"kubeadm {cmd}", (name,) + ALIASES.get((cmd, name), ()))
        if line:
            if s is not None:
                s.setdefault("failed", {})[cmd] = name
                state.save(tool, state.KUBEADM_STATE, s)
            raise Failed(f"error execution phase {shown}: planned failure (stand-in fault "
                         f"switch: line {line!r} removed from {state.FAULTS}; files of the "
                         "earlier phases stay in place)")
        action()
        if s is None:
            s = fresh
        s["steps"].setdefault(cmd, []).append(name)
        state.save(tool, state.KUBEADM_STATE, s)


def init(tool: Tool, configs: dict, opts: dict) -> None:
    upload = "--upload-certs" in opts["flags"]
    errs = validate_init(configs, upload, tool.version)
    if errs:
        raise Failed("\n".join(errs))
    init_cfg, cluster = configs["InitConfiguration"], configs.get("ClusterConfiguration", {})
    local_etcd = "external" not in (cluster.get("etcd") or {})
    node_reg = init_cfg.get("nodeRegistration") or {}
    ep = init_cfg.get("localAPIEndpoint") or {}
    port = ep.get("bindPort", 6443)
    server = endpoint_url(cluster.get("controlPlaneEndpoint"), port) or \
        f"https://{ep.get('advertiseAddress', '127.0.0.1')}:{port}"
    cname = cluster.get("clusterName", "kubernetes")
    name = node_name(node_reg)

    def do_preflight():
        checks = [file_available(tool, f"{MANIFESTS}/{m}.yaml")
                  for m in control_plane_manifests(local_etcd)]
        if local_etcd:
            checks.append(dir_available(tool, "/var/lib/etcd"))
        checks += [cri_check(tool, node_reg), ip_forward(tool), kubelet_present(tool)]
        checks += external_etcd_files(tool, cluster)
        preflight(tool, opts, node_reg, checks)

    if "--dry-run" in opts["flags"]:
        do_preflight()
        tool.say("dry run: nothing written")
        return
    fresh = {"tool": "stand-in kubeadm (TEST-ONLY)", "node": name, "role": "control-plane",
             "etcd": "stacked" if local_etcd else "external", "steps": {},
             "version": tool.version, **registration(node_reg, True)}
    steps = [
        ("preflight", do_preflight),
        ("certs", lambda: tool.say("[certs] stand-in: no certificate generated (the CA the "
                                   "provisioner placed is used as it is)")),
        ("kubeconfig", lambda: write_files(tool, kubeconfig_files(
            tool, server, cname, init=True, name=name))),
        ("etcd", lambda: write_files(tool, manifest_files(["etcd"] if local_etcd else [],
                                                          tool.version))),
        ("control-plane", lambda: write_files(tool, manifest_files(
            control_plane_manifests(False), tool.version,
            ((cluster.get("etcd") or {}).get("external") or {}).get("endpoints")))),
        ("kubelet-start", lambda: kubelet_start(tool, configs, node_reg, None, local_etcd)),
        ("wait-control-plane", lambda: wait_for_kubelet(tool)),
        ("upload-config", lambda: None),
        ("upload-certs", (lambda: None) if upload else None),
        ("mark-control-plane", lambda: None),
        ("bootstrap-token", lambda: fresh.update(tokens=token_ids(init_cfg))),
        ("kubelet-finalize", lambda: kubelet_finalize(tool)),
        ("addon", lambda: None),
        ("show-join-command", lambda: tool.say(
            "join with the bootstrap token and certificate key from the config (not printed)")),
    ]
    if not upload:
        tool.say("[upload-certs] Skipping phase. Please see --upload-certs")
    run_steps(tool, "init", [(n, a) for n, a in steps if a is not None], opts, fresh)
    tool.say("init done: files written where kubeadm writes them (stand-in: NO control plane "
             "is running; this is not a working cluster)")


def join(tool: Tool, configs: dict, opts: dict) -> None:
    join_cfg = configs["JoinConfiguration"]
    control_plane = "controlPlane" in join_cfg or "--control-plane" in opts["flags"]
    if "--control-plane" in opts["flags"] and "controlPlane" not in join_cfg:
        join_cfg = {**join_cfg, "controlPlane": {}}
    errs = validate_join(join_cfg)
    if errs:
        raise Failed("\n".join(errs))
    pin_problem = check_ca_pin(tool, join_cfg)
    if pin_problem:
        raise Failed(pin_problem)
    node_reg = join_cfg.get("nodeRegistration") or {}
    name = node_name(node_reg)
    # The real join reads external/stacked etcd from the cluster's ClusterConfiguration. The
    # stand-in has no cluster: the provisioner places the external etcd client certificate on
    # every control plane before it joins, so its presence means external etcd.
    local_etcd = control_plane and not tool.path(
        "/etc/kubernetes/pki/apiserver-etcd-client.key").exists()
    bt = (join_cfg.get("discovery") or {}).get("bootstrapToken") or {}
    server = endpoint_url(bt.get("apiServerEndpoint"), 6443) or "https://127.0.0.1:6443"

    def do_preflight():
        checks = [file_available(tool, "/etc/kubernetes/kubelet.conf"),
                  file_available(tool, "/etc/kubernetes/bootstrap-kubelet.conf")]
        if not control_plane:  # a control plane may have its CA placed before it joins
            checks.append(file_available(tool, join_cfg.get("caCertPath") or CA_CERT))
        else:
            checks += [file_available(tool, f"{MANIFESTS}/{m}.yaml")
                       for m in control_plane_manifests(local_etcd)]
            if local_etcd:
                checks.append(dir_available(tool, "/var/lib/etcd"))
        checks += [cri_check(tool, node_reg), ip_forward(tool), kubelet_present(tool)]
        disc_file = ((join_cfg.get("discovery") or {}).get("file") or {}).get("kubeConfigPath")
        if disc_file and not disc_file.startswith("http") and not tool.path(disc_file).is_file():
            checks.append(("DiscoveryFile", f"{disc_file} doesn't exist"))
        preflight(tool, opts, node_reg, checks)

    if "--dry-run" in opts["flags"]:
        do_preflight()
        tool.say("dry run: nothing written")
        return

    def prepare():
        write_files(tool, kubeconfig_files(tool, server, "kubernetes", init=False, name=name))
        # without --etcd-servers: real kubeadm takes them from the cluster's ClusterConfiguration,
        # and there is no API server here to read it from (phase etcd-servers sets them)
        write_files(tool, manifest_files(control_plane_manifests(False), tool.version))

    fresh = {"tool": "stand-in kubeadm (TEST-ONLY)", "node": name,
             "role": "control-plane" if control_plane else "worker",
             "etcd": ("stacked" if local_etcd else "external") if control_plane else None,
             "steps": {}, "version": tool.version, **registration(node_reg, control_plane)}
    steps = [("preflight", do_preflight)]
    if control_plane:
        steps.append(("control-plane-prepare", prepare))
    steps.append(("kubelet-start", lambda: kubelet_start(tool, configs, node_reg, (server, name),
                                                         False)))
    if local_etcd:
        steps.append(("etcd-join", lambda: (write_files(tool, manifest_files(["etcd"],
                                                                             tool.version)),
                                            etcd_data(tool))))
    steps.append(("kubelet-wait-bootstrap", lambda: None))
    if control_plane:
        steps += [("control-plane-join", lambda: None), ("wait-control-plane", lambda: None)]
    run_steps(tool, "join", steps, opts, fresh)
    role = "control-plane node" if control_plane else "node"
    tool.say(f"join done as a {role}: files written where kubeadm writes them (stand-in: "
             "nothing joined any cluster)")


def token_ids(init_cfg: dict) -> list[str]:
    """The public halves of the bootstrap tokens (the secret halves are never kept)."""
    return sorted({str((t or {}).get("token", "")).split(".")[0]
                   for t in init_cfg.get("bootstrapTokens") or []})


def dir_available(tool: Tool, path: str) -> tuple[str, str | None]:
    name = "DirAvailable-" + path.replace("/", "-")
    p = tool.path(path)
    busy = p.is_dir() and any(p.iterdir())
    return name, (f"{path} is not empty" if busy else None)


def write_files(tool: Tool, files: dict[str, tuple[str, int]]) -> None:
    for path, (text, mode) in files.items():
        tool.write(path, text, mode)
    remember(tool, list(files))


def kubeconfig_files(tool: Tool, server: str, cname: str, init: bool,
                     name: str) -> dict[str, tuple[str, int]]:
    """What the kubeconfig phase writes: init writes kubelet.conf and super-admin.conf too; a
    joining control plane gets kubelet.conf from the TLS bootstrap (kubelet-start)."""
    files = {"/etc/kubernetes/admin.conf": (
        kubeconfig(tool, server, cname, "kubernetes-admin-stand-in"), 0o600)}
    if init:
        files["/etc/kubernetes/super-admin.conf"] = (
            kubeconfig(tool, server, cname, "kubernetes-super-admin-stand-in"), 0o600)
        files["/etc/kubernetes/kubelet.conf"] = (
            kubeconfig(tool, server, cname, f"system:node:{name}"), 0o600)
    for conf in ("controller-manager", "scheduler"):
        files[f"/etc/kubernetes/{conf}.conf"] = (
            kubeconfig(tool, server, cname, f"system:kube-{conf}-stand-in"), 0o600)
    return files


def manifest_files(names: list[str], version: str = "", etcd_servers: list[str] | None = None
                   ) -> dict[str, tuple[str, int]]:
    """Placeholder static pods, their images tagged with `version`. The API server's command
    carries --etcd-servers as kubeadm writes it from ClusterConfiguration.etcd.external.endpoints
    (init only: a joining control plane would read them from the cluster, which the stand-in
    does not have)."""
    import yaml

    files = {}
    for m in names:
        container = {"name": m, "image": "stand-in.invalid/" + m
                     + (f":{version}" if version else "")}
        if m == "kube-apiserver":
            container = {"command": [m] + ([f"--etcd-servers={','.join(etcd_servers)}"]
                                           if etcd_servers else []), **container}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": m, "namespace": "kube-system",
                            "annotations": {"stand-in": "not Kubernetes: placeholder written "
                                                        "by the kubeadm stand-in"}},
               "spec": {"containers": [container]}}
        files[f"{MANIFESTS}/{m}.yaml"] = (f"# {MARK}\n" + yaml.safe_dump(pod), 0o600)
    return files


def kubelet_start(tool: Tool, configs: dict, node_reg: dict, bootstrap: tuple | None,
                  local_etcd: bool) -> None:
    """Write the kubelet config and flags, (re)start the kubelet. A join (bootstrap = (server,
    node name)) then has kubelet.conf from the TLS bootstrap. On init the kubelet runs the
    static pods: with stacked etcd, etcd creates its data dir."""
    import yaml

    kubelet = dict(configs.get("KubeletConfiguration") or
                   {"apiVersion": COMPONENT_APIS["KubeletConfiguration"],
                    "kind": "KubeletConfiguration"})
    kubelet.setdefault("cgroupDriver", "systemd")
    cri = node_reg.get("criSocket") or DEFAULT_CRI
    extra = " ".join(f"--{a['name']}={a['value']}" for a in node_reg.get("kubeletExtraArgs") or []
                     if isinstance(a, dict) and "name" in a)
    args = f"--container-runtime-endpoint={cri}" + (f" {extra}" if extra else "")
    write_files(tool, {
        "/var/lib/kubelet/config.yaml": (f"# {MARK}\n" + yaml.safe_dump(kubelet), 0o644),
        "/var/lib/kubelet/kubeadm-flags.env": (f'KUBELET_KUBEADM_ARGS="{args}"\n', 0o644)})
    kubelet_service(tool, "restart")
    if bootstrap:
        server, name = bootstrap
        write_files(tool, {"/etc/kubernetes/kubelet.conf": (
            kubeconfig(tool, server, "kubernetes", f"system:node:{name}", client_cert=True),
            0o600)})
    if local_etcd:
        etcd_data(tool)


def etcd_data(tool: Tool) -> None:
    write_files(tool, {ETCD_MEMBER: (f"# {MARK}\n# stands for the etcd member's data\n", 0o600)})


def kubelet_finalize(tool: Tool) -> None:
    """enable-client-cert-rotation: kubelet.conf now points at the rotated client cert."""
    conf = "/etc/kubernetes/kubelet.conf"
    p = tool.path(conf)
    if not p.exists():
        raise Failed(f"error execution phase kubelet-finalize/enable-client-cert-rotation: "
                     f"open {conf}: no such file or directory")
    import yaml

    text = p.read_text()
    doc = yaml.safe_load(text)
    for u in doc.get("users") or []:
        u["user"] = {"client-certificate": KUBELET_CLIENT, "client-key": KUBELET_CLIENT}
    new = f"# {MARK}\n" + yaml.safe_dump(doc, sort_keys=False)
    if new != text:
        write_files(tool, {conf: (new, 0o600)})


# ---------------------------------------------------------------------------------------------
# `kubeadm init phase NAME ...`: finishing an init whose API answers, renewing join secrets
# ---------------------------------------------------------------------------------------------

PHASE_SUBS = {"upload-config": ("all",), "upload-certs": (), "mark-control-plane": (),
              "bootstrap-token": (), "kubelet-finalize": ("all", "enable-client-cert-rotation"),
              "addon": ("all",)}
UNIMPLEMENTED = set(INIT_STEPS) - set(PHASE_SUBS)


def init_phase(tool: Tool, args: list[str]) -> None:
    """`init phase NAME [SUB] --config F [--kubeconfig K] [--upload-certs]`; the legacy form
    `init phase upload-certs --upload-certs --certificate-key KEY` (no --config) stays."""
    if len(args) < 2:
        raise Failed('kubeadm init phase: the stand-in needs a phase name (see `kubeadm init '
                     'phase --help` upstream)')
    phase, rest = args[1], args[2:]
    if phase not in INIT_STEPS:
        raise Failed(f'unknown command "{phase}" for "kubeadm init phase"')
    if phase in UNIMPLEMENTED:
        raise Failed(f"the stand-in does not implement `kubeadm init phase {phase}` (it "
                     f"implements {', '.join(sorted(PHASE_SUBS))})")
    subs = PHASE_SUBS[phase]
    sub = None
    if rest and not rest[0].startswith("-"):
        sub, rest = rest[0], rest[1:]
        if sub not in subs:
            raise Failed(f'unknown command "{sub}" for "kubeadm init phase {phase}"')
    elif subs:
        raise Failed(f"kubeadm init phase {phase}: the stand-in needs a sub-phase "
                     f"({', '.join(subs)})")
    opts = {"config": None, "kubeconfig": ADMIN, "flags": set(), "key": None}
    i = 0
    while i < len(rest):
        flag, eq, value = rest[i].partition("=")
        if flag in ("--config", "--kubeconfig", "--certificate-key"):
            if not eq:
                i += 1
                if i >= len(rest):
                    raise Failed(f"flag needs an argument: {flag}")
                value = rest[i]
            opts[{"--certificate-key": "key"}.get(flag, flag[2:])] = value
        elif flag in ("--upload-certs", "--skip-certificate-key-print", "--dry-run"):
            opts["flags"].add(flag)
        else:
            raise Failed(f"unknown flag: {flag}")
        i += 1
    if phase == "upload-certs" and opts["config"] is None and opts["key"] is not None:
        return upload_certs(tool, args)  # legacy form
    if not opts["config"]:
        raise Failed(f"kubeadm init phase {phase}: the stand-in needs --config FILE")
    configs = decode(load_yaml_docs(tool, opts["config"]), "init")
    init_cfg = configs["InitConfiguration"]
    if not tool.path(opts["kubeconfig"]).exists():
        raise Failed(f"failed to load admin kubeconfig: open {opts['kubeconfig']}: no such file "
                     "or directory")
    view = state.kubeadm_view(tool)
    if not (view["api_up"] or (view["reachable"] and view["control_plane"])):
        raise Failed(f"error execution phase {phase}: couldn't reach the API server: connection "
                     "refused (stand-in: no API server answers for this node, see "
                     f"{state.KUBEADM_STATE})")
    if phase == "upload-certs":
        if "--upload-certs" not in opts["flags"]:
            tool.say("[upload-certs] Skipping phase. Please see --upload-certs")
            return
        key = opts["key"] if opts["key"] is not None else init_cfg.get("certificateKey")
        if not key:
            raise Failed("error execution phase upload-certs: certificateKey: Required value: "
                         "the stand-in expects the provisioner to choose the certificate key "
                         "(InitConfiguration.certificateKey)")
        if not CERT_KEY.fullmatch(str(key)):
            raise Failed("error execution phase upload-certs: certificateKey: Invalid value: "
                         "<redacted>: must be 64 hexadecimal characters (a 32-byte AES key)")
    if phase == "bootstrap-token":
        errs = [e for e in validate_init(configs, False, tool.version) if "bootstrapTokens" in e]
        if errs:
            raise Failed("\n".join(errs))
    line = state.take_fault(tool, "kubeadm init", (phase,))
    if line:
        raise Failed(f"error execution phase {phase}: planned failure (stand-in fault switch: "
                     f"line {line!r} removed from {state.FAULTS})")
    if phase == "kubelet-finalize":
        kubelet_finalize(tool)
    s = state.load(tool, state.KUBEADM_STATE)
    if s:
        steps = s.setdefault("steps", {})
        cmd = "init" if "init" in steps else "init phase"
        if phase not in steps.setdefault(cmd, []):
            steps[cmd].append(phase)
        if (s.get("failed") or {}).get("init") == phase:
            del s["failed"]["init"]
            if not s["failed"]:
                del s["failed"]
        if phase == "bootstrap-token":
            s["tokens"] = sorted(set(token_ids(init_cfg)) | set(s.get("tokens") or []))
        state.save(tool, state.KUBEADM_STATE, s)
    what = {"upload-config": "kubeadm-config and kubelet-config ConfigMaps",
            "upload-certs": "kubeadm-certs Secret", "mark-control-plane": "node labels and taints",
            "bootstrap-token": "bootstrap tokens and the cluster-info ConfigMap",
            "kubelet-finalize": "kubelet.conf client certificate rotation",
            "addon": "CoreDNS and kube-proxy"}[phase]
    tool.say(f"[{phase}] done: {what} (stand-in: recorded in {state.KUBEADM_STATE}, no API "
             "server was changed)")


def reset(tool: Tool, args: list[str]) -> None:
    if not any(a in ("-f", "--force") for a in args):
        raise Failed("reset needs -f/--force (the stand-in cannot ask for confirmation)")
    for a in args:
        if a not in ("-f", "--force") and not a.startswith(("--cri-socket", "--cleanup-tmp-dir")):
            raise Failed(f"unknown flag: {a}")
    kubelet_service(tool, "stop")
    listed = tool.path(WRITTEN)
    paths = json.loads(listed.read_text()) if listed.exists() else []
    stacked = f"{MANIFESTS}/etcd.yaml" in paths
    for p in paths:
        tool.path(p).unlink(missing_ok=True)
    if stacked:  # kubeadm reset empties the local etcd data dir
        data = tool.path("/var/lib/etcd")
        for child in (data.iterdir() if data.is_dir() else ()):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    listed.unlink(missing_ok=True)
    tool.path(state.KUBEADM_STATE).unlink(missing_ok=True)
    tool.path(state.records_path(tool)).unlink(missing_ok=True)
    tool.say(f"reset: removed {len(paths)} file(s) the stand-in had written and its step state")


def kubelet_service(tool: Tool, verb: str) -> None:
    """kubeadm's kubelet-start phase restarts the kubelet unit (reset stops it). Under
    STANDIN_ROOT (tests on the controller) only the unit's stand-in marker changes."""
    if tool.root or not shutil.which("systemctl"):
        state.mark_unit(tool, "kubelet", verb != "stop")
        tool.say(f"[kubelet-start] not touching the kubelet service here ({verb} skipped; "
                 "under STANDIN_ROOT the stand-in's unit marker follows it)")
        return
    tool.say(f"[kubelet-start] systemctl {verb} kubelet")
    r = subprocess.run(["systemctl", verb, "kubelet"], capture_output=True, text=True)
    if r.returncode != 0:
        tool.say(f"[WARNING] systemctl {verb} kubelet: {r.stderr.strip()[:200]}")


def endpoint_url(endpoint, port: int) -> str | None:
    if not endpoint:
        return None
    endpoint = str(endpoint)
    has_port = re.search(r":\d+$", endpoint) and not (endpoint.count(":") > 1
                                                       and not endpoint.startswith("["))
    return f"https://{endpoint}" if has_port else f"https://{endpoint}:{port}"


def remember(tool: Tool, written: list[str]) -> None:
    listed = tool.path(WRITTEN)
    old = json.loads(listed.read_text()) if listed.exists() else []
    tool.write(WRITTEN, json.dumps(sorted(set(old) | set(written)), indent=1) + "\n", 0o600)


def kubeconfig(tool: Tool, server: str, cluster_name: str, user: str,
               client_cert: bool = False) -> str:
    import yaml

    ca = tool.path(CA_CERT)
    entry = {"server": server}
    if ca.is_file():
        entry["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    # no credential: nothing would accept one (a bootstrapped kubelet names its cert file)
    cred = {"client-certificate": KUBELET_CLIENT, "client-key": KUBELET_CLIENT} \
        if client_cert else {}
    doc = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": cluster_name, "cluster": entry}],
           "contexts": [{"name": f"{user}@{cluster_name}",
                         "context": {"cluster": cluster_name, "user": user}}],
           "current-context": f"{user}@{cluster_name}",
           "users": [{"name": user, "user": cred}],
           "preferences": {}}
    return f"# {MARK}\n" + yaml.safe_dump(doc, sort_keys=False)
