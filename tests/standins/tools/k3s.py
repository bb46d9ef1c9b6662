"""TEST-ONLY stand-in for k3s: `server` / `agent` check their config and sleep; `kubectl` is the
kubectl stand-in. It runs no Kubernetes component.

`server` and `agent` read /etc/rancher/k3s/config.yaml (and config.yaml.d/*.yaml), check every
key and command-line flag against the flags that role really has (tests/data/upstream/
k3s-flags.yaml) with its type, check that a joining server or an agent has a server URL and a
token, record the call in /var/log/standin/k3s.jsonl (token values as sha256), write the files
k3s writes so that the provisioner's guards see them (no secret in them), tell systemd it is
ready (the unit is Type=notify) and sleep until stopped.

They go through k3s' start-up steps in order (steps_for), keeping them and whether the node
registered in /var/lib/rancher/k3s/standin/k3s-state.json. A line `k3s server STEP` or
`k3s agent STEP` in /etc/standin/faults makes that step fail once: the process exits 1 (before
telling systemd it is ready) and systemd's Restart= starts it again, as with real k3s.
`k3s kubectl` answers from that state, about this node only (see kubectl.py).

`etcd-snapshot save [--dir D] [--name N]` (TEST-ONLY, for cluster.backup) needs a running
server with the embedded etcd, and writes `D/N-<node>-<unix time>` as real k3s names it: a small
file that says it is a stand-in and holds the node's recorded k3s state, 0600; the call is
recorded. It is not an etcd snapshot.

The embedded etcd's data is a small record in /var/lib/rancher/k3s/server/db/etcd/ (ETCD_RECORD:
which cluster it belongs to, whether it came from a snapshot). `server --cluster-reset
[--cluster-reset-restore-path=P]` (cluster.restore) does what k3s does, then exits: it refuses
a restore path without --cluster-reset ("invalid flag use"), a path that does not exist or is
not a (stand-in) snapshot, a server whose k3s unit still runs, and a second reset while
db/reset-flag from an earlier one is there; it moves the old data to db/etcd-old-<unix time>,
writes the snapshot's data (or, without a path, the old data as a one-member cluster) as a new
cluster, writes db/reset-flag and says to restart without the flag. A later start records
whether its etcd data was restored, kept, or made fresh (a joining server whose db dir was
removed gets fresh data from the cluster it joins).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time

from . import Failed, Tool, data_text, kubectl, state
from .kubelet import sleep_until_stopped, stop_on_sigterm

CONFIG = "/etc/rancher/k3s/config.yaml"
NODE_TOKEN = "/var/lib/rancher/k3s/server/node-token"
AGENT_KUBECONFIG = "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"
ADMIN_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
ENV = {"K3S_TOKEN": "token", "K3S_TOKEN_FILE": "token-file", "K3S_URL": "server",
       "K3S_AGENT_TOKEN": "agent-token", "K3S_CONFIG_FILE": "config"}
MARK = "stand-in k3s: TEST-ONLY file, no Kubernetes component reads or serves it"


def main(tool: Tool, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        tool.say("usage: k3s server|agent|kubectl ... (a test-only stand-in)")
        return 0
    if argv[0] in ("--version", "-v", "version"):
        print(tool.version_line())
        return 0
    if argv[0] == "kubectl":
        args = argv[1:]
        if not any(a.split("=")[0] == "--kubeconfig" for a in args):
            args = ["--kubeconfig", ADMIN_KUBECONFIG] + args
        return kubectl.main(tool, args, log="kubectl")
    if argv[0] == "etcd-snapshot":
        return etcd_snapshot(tool, argv)
    if argv[0] not in ("server", "agent"):
        raise Failed(f"unknown command {argv[0]!r} (the k3s stand-in implements server, agent, "
                     "kubectl, etcd-snapshot save)")
    role = argv[0]
    config = None
    stop_on_sigterm()
    try:
        config = settings(tool, role, argv[1:])
        check(tool, role, config)
        if role == "server" and config.get("cluster-reset"):
            cluster_reset(tool, config)
            tool.record(argv, "reset", role=role, config=config)
            return 0
        run_steps(tool, role, config)
    except Failed as e:
        tool.record(argv, "error: " + str(e).splitlines()[0], role=role, config=config)
        raise
    tool.record(argv, "running", role=role, config=config, images=airgap_images(tool),
                etcd_data=state.load(tool, ETCD_RECORD).get("origin"))
    tool.say(f"{role}: config is valid; sleeping (stand-in: no Kubernetes is running)")
    unit = UNITS[role]
    state.mark_unit(tool, unit, True)
    try:
        notify_ready()
        sleep_until_stopped()
    finally:
        state.mark_unit(tool, unit, False)
    return 0


UNITS = {"server": "k3s", "agent": "k3s-agent"}
SNAPSHOT_DIR = "/var/lib/rancher/k3s/server/db/snapshots"


def etcd_snapshot(tool: Tool, argv: list[str]) -> int:
    """`k3s etcd-snapshot [save] [--dir D] [--name N]` (see the module docstring)."""
    args = argv[1:]
    if args[:1] == ["save"]:
        args = args[1:]
    elif args and not args[0].startswith("-"):
        raise Failed(f"etcd-snapshot {args[0]!r}: the stand-in implements only save")
    opts = parse_cli(args, {"dir": "string", "name": "string", "etcd-snapshot-dir": "string",
                            "etcd-snapshot-name": "string", "data-dir": "string",
                            "config": "string"})
    s = state.load(tool, state.K3S_STATE)
    if not (s.get("etcd") and state.unit_active(tool, "k3s")):
        tool.record(argv, "error: etcd not running")
        raise Failed('level=fatal msg="etcd datastore is not running on this node (start the '
                     'k3s server with its embedded etcd first)"')
    directory = str(opts.get("dir") or opts.get("etcd-snapshot-dir") or SNAPSHOT_DIR)
    name = str(opts.get("name") or opts.get("etcd-snapshot-name") or "on-demand")
    path = f"{directory}/{name}-{s.get('node') or state.hostname()}-{int(time.time())}"
    data = {**s, "etcd_data": state.load(tool, ETCD_RECORD)}
    tool.write(path, f"# {MARK}\n{SNAPSHOT_MARK}: not etcd data; only the stand-in's "
               "cluster-reset reads it\n" + json.dumps(data, sort_keys=True) + "\n", 0o600)
    tool.record(argv, "saved", snapshot=path)
    tool.say(f"etcd-snapshot: saved {path} (stand-in)", err=True)
    return 0
LB_FILE = "/var/lib/rancher/k3s/agent/etc/k3s-agent-load-balancer.json"
IMAGES_DIR = "/var/lib/rancher/k3s/agent/images"


def airgap_images(tool: Tool) -> list[str]:
    """The image tarballs k3s would import at this start: "NAME sha256:HEX" for every file in
    the agent images folder (k3s imports the tarballs it finds there when it starts)."""
    import hashlib

    folder = tool.path(IMAGES_DIR)
    return sorted(f"{p.name} sha256:{hashlib.sha256(p.read_bytes()).hexdigest()}"
                  for p in (folder.iterdir() if folder.is_dir() else ()) if p.is_file())


DB = "/var/lib/rancher/k3s/server/db"
ETCD_RECORD = f"{DB}/etcd/standin-etcd.json"
RESET_FLAG = f"{DB}/reset-flag"
SNAPSHOT_MARK = "# stand-in k3s etcd snapshot (TEST-ONLY)"


def etcd_data(tool: Tool, c: dict, name: str) -> None:
    """The embedded etcd's data at a server's etcd step: kept when there is some (a restart,
    or the data a reset restored); else a new cluster (cluster-init) or the cluster joined."""
    if state.load(tool, ETCD_RECORD):
        return
    origin = {"origin": "joined", "server": str(c["server"])} if c.get("server") else \
        {"origin": "cluster-init"}
    state.save(tool, ETCD_RECORD, {**origin, "member": name, "cluster": os.urandom(8).hex()})


def cluster_reset(tool: Tool, c: dict) -> None:
    """`k3s server --cluster-reset [--cluster-reset-restore-path P]` (module docstring)."""
    path = c.get("cluster-reset-restore-path")
    if state.unit_active(tool, "k3s"):
        raise Failed('level=fatal msg="starting kubernetes: preparing server: start managed '
                     'database: etcd: the k3s service still runs on this node (listen tcp '
                     '127.0.0.1:2380: bind: address already in use): stop it first"')
    if tool.path(RESET_FLAG).exists():
        raise Failed('level=fatal msg="Managed etcd cluster membership was previously reset, '
                     'please remove the cluster-reset flag and start k3s normally. If you need '
                     'to perform another cluster reset, you must first manually delete the file '
                     f'at {RESET_FLAG}"')
    restored = None
    if path:
        p = tool.path(str(path))
        if not p.is_file():
            raise Failed(f'level=fatal msg="starting kubernetes: preparing server: start managed '
                         f'database: etcd: snapshot path does not exist: {path}"')
        text = p.read_text(errors="replace")
        if SNAPSHOT_MARK not in text:
            raise Failed(f'level=fatal msg="snapshot restore: {path} is not an etcd snapshot '
                         '(stand-in: not written by the stand-in k3s etcd-snapshot save)"')
        import hashlib

        try:
            taken = json.loads(text.splitlines()[-1]).get("etcd_data") or {}
        except (ValueError, IndexError, AttributeError):
            raise Failed(f'level=fatal msg="snapshot restore: {path}: damaged snapshot"') from None
        restored = {"origin": "snapshot", "snapshot_of": taken.get("cluster"),
                    "snapshot_sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    old = state.load(tool, ETCD_RECORD)
    if not (old or restored):
        raise Failed('level=fatal msg="etcd: no etcd data on this server to reset (and no '
                     '--cluster-reset-restore-path)"')
    etcd_dir = tool.path(f"{DB}/etcd")
    if etcd_dir.exists():
        etcd_dir.rename(tool.path(f"{DB}/etcd-old-{int(time.time())}"))
    name = str(c.get("node-name") or state.hostname())
    state.save(tool, ETCD_RECORD, {**(restored or {"origin": "reset", "from": old.get("cluster")}),
                                   "member": name, "cluster": os.urandom(8).hex()})
    tool.write(RESET_FLAG, f"# {MARK}\n", 0o600)
    tool.say('level=info msg="Managed etcd cluster membership has been reset, restart without '
             '--cluster-reset flag now. Backup and delete ${datadir}/server/db on each peer etcd '
             'server and rejoin the nodes" (stand-in)', err=True)


def steps_for(role: str, c: dict) -> list[str]:
    """What k3s does in order when it starts (a restart does it all again). A server writes its
    token files early, starts (cluster-init) or joins (server: URL) the embedded etcd, writes
    its admin kubeconfig once its API is up, then starts its own agent: kubelet, registration.
    An agent starts its client load balancer and the websocket tunnel to the server, then the
    kubelet, which registers the node."""
    if role == "agent":
        return ["load-balancer", "tunnel", "kubelet", "node-registration"]
    etcd = ["etcd-join"] if c.get("server") else ["etcd"] if c.get("cluster-init") else []
    return ["node-token", *etcd, "kubeconfig", "kubelet", "node-registration"]


def run_steps(tool: Tool, role: str, c: dict) -> None:
    name = str(c.get("node-name") or state.hostname())
    old = state.load(tool, state.K3S_STATE)
    same = old.get("node") == name and old.get("role") == role
    s = {"tool": "stand-in k3s (TEST-ONLY)", "node": name, "role": role,
         "version": tool.version,  # what this node reports (kubectl get node) until a restart
         "etcd": role == "server" and bool(c.get("server") or c.get("cluster-init")),
         "steps": [], "registered": bool(same and old.get("registered"))}
    port = c.get("https-listen-port", 6443)
    actions = {
        "etcd": lambda: etcd_data(tool, c, name),
        "etcd-join": lambda: etcd_data(tool, c, name),
        "node-token": lambda: put(tool, NODE_TOKEN, f"# {MARK}\n# k3s keeps the join token "
                                  "here; the stand-in does not.\n"),
        "kubeconfig": lambda: put(tool, str(c.get("write-kubeconfig") or ADMIN_KUBECONFIG),
                                  kubeconfig(f"https://127.0.0.1:{port}", "default")),
        "load-balancer": lambda: put(tool, LB_FILE, json.dumps(
            {"ServerURL": str(c.get("server")), "ServerAddresses": [],
             "stand-in": MARK}, indent=1) + "\n"),
        # the kubelet talks to the API through the local client load balancer (6444)
        "kubelet": lambda: put(tool, AGENT_KUBECONFIG, kubeconfig("https://127.0.0.1:6444",
                                                                  "system:node")),
        "node-registration": lambda: s.update(registered=True),
    }
    for step in steps_for(role, c):
        line = state.take_fault(tool, f"k3s {role}", (step,))
        if line:
            s["failed"] = step
            state.save(tool, state.K3S_STATE, s)
            raise Failed(f'level=fatal msg="{step}: planned failure (stand-in fault switch: line '
                         f'{line!r} removed from {state.FAULTS}; systemd restarts k3s)"')
        actions.get(step, lambda: None)()
        s["steps"].append(step)
        state.save(tool, state.K3S_STATE, s)


def put(tool: Tool, path: str, text: str) -> None:
    p = tool.path(path)
    if not p.exists() or p.read_text() != text:
        tool.write(path, text, 0o600)


def flags_for(role: str) -> dict[str, str]:
    import yaml

    return yaml.safe_load(data_text("k3s-flags.yaml"))[role]


def settings(tool: Tool, role: str, args: list[str]) -> dict:
    """Environment, then config file(s), then command line, each key checked for the role."""
    import yaml

    flags = flags_for(role)
    out: dict = {}
    for var, key in ENV.items():
        if os.environ.get(var):
            out[key] = os.environ[var]
    cli = parse_cli(args, flags)
    path = cli.get("config") or out.get("config") or CONFIG
    files = [path] + sorted(str(p).removeprefix(tool.root) for p in
                            tool.path(path + ".d").glob("*.yaml"))
    for f in files:
        p = tool.path(f)
        if not p.exists():
            if f == path and f != CONFIG:
                raise Failed(f"level=fatal msg=\"open {f}: no such file or directory\"")
            continue
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise Failed(f"{f}: {e}") from None
        if not isinstance(data, dict):
            raise Failed(f"{f}: want a mapping of flag names to values")
        for key, value in data.items():
            name = str(key).rstrip("+")
            check_flag(name, value, flags, f"{f}: {key}", role)
            if str(key).endswith("+") and name in out:
                out[name] = as_list(out[name]) + as_list(value)
            else:
                out[name] = value
    out.update(cli)
    return out


def parse_cli(args: list[str], flags: dict) -> dict:
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        if not a.startswith("-"):
            raise Failed(f"unexpected argument {a!r}")
        name, eq, value = a.lstrip("-").partition("=")
        name = {"c": "config", "t": "token", "s": "server"}.get(name, name)
        if name not in flags:
            raise Failed(f"flag provided but not defined: -{name}")
        if flags[name] == "bool" and not eq:
            value = True
        elif not eq:
            i += 1
            if i >= len(args):
                raise Failed(f"flag needs an argument: -{name}")
            value = args[i]
        if flags[name] == "list":
            out[name] = as_list(out.get(name, [])) + [value]
        else:
            out[name] = value
        i += 1
    return out


def check_flag(name: str, value, flags: dict, where: str, role: str) -> None:
    if name not in flags:
        other = "server" if role == "agent" else "agent"
        hint = f" (a {other} flag)" if name in flags_for(other) else ""
        raise Failed(f"{where}: flag provided but not defined: -{name}{hint}")
    kind = flags[name]
    ok = {"bool": lambda v: isinstance(v, bool),
          "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "string": lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
          "list": lambda v: isinstance(v, (str, int)) and not isinstance(v, bool) or (
              isinstance(v, list) and all(isinstance(x, (str, int)) for x in v))}[kind]
    if not ok(value):
        raise Failed(f"{where}: want a {kind} for -{name}, got {type(value).__name__}")


def as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def check(tool: Tool, role: str, c: dict) -> None:
    joining = role == "agent" or bool(c.get("server"))
    if c.get("server") and not re.fullmatch(r"https://[^\s/:]+(:\d+)?/?", str(c["server"])):
        raise Failed(f"level=fatal msg=\"server {c['server']!r} is not an https://HOST:PORT URL\"")
    if role == "agent" and not c.get("server"):
        raise Failed('level=fatal msg="--server is required"')
    if c.get("token-file") and not tool.path(str(c["token-file"])).is_file():
        raise Failed(f"level=fatal msg=\"open {c['token-file']}: no such file or directory\"")
    if joining and not (c.get("token") or c.get("token-file")):
        raise Failed('level=fatal msg="--token is required"' + (
            "" if role == "agent" else " (a server joining with --server needs the cluster "
            "token)"))
    if c.get("cluster-reset-restore-path") and not c.get("cluster-reset"):
        raise Failed('level=fatal msg="invalid flag use; --cluster-reset required with '
                     '--cluster-reset-restore-path"')
    if role == "server" and c.get("server") and c.get("cluster-init"):
        raise Failed("level=fatal msg=\"--cluster-init and --server: the stand-in expects only "
                     "the first server to run cluster-init\"")


def kubeconfig(server: str, user: str) -> str:
    return (f"# {MARK}\napiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n"
            f"    server: {server}\ncontexts:\n- name: default\n  context:\n    cluster: default\n"
            f"    user: {user}-stand-in\ncurrent-context: default\nusers:\n"
            f"- name: {user}-stand-in\n  user: {{}}\n")


def notify_ready() -> None:
    """sd_notify(READY=1) when started by systemd with Type=notify."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(b"READY=1\nSTATUS=stand-in k3s: config valid, nothing running")
