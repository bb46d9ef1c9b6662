"""provisioner/probe.py, the program that runs on the nodes, tested here by importing it.

Parsing is tested on data; the fallbacks (no `ip`, no or an old `systemctl`, unreadable files,
a hanging --version) by pointing its functions at directories of stand-in executables.
"""

from __future__ import annotations

import ast
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from provisioner import probe

PROBE_PY = Path(probe.__file__)


def executable(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


# -- the module itself -------------------------------------------------------------------------

def test_probe_py_is_python39_and_standard_library_only():
    tree = ast.parse(PROBE_PY.read_text(), feature_version=(3, 9))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported
    # typing only under TYPE_CHECKING: it costs start-up time on every node
    assert "import typing" not in PROBE_PY.read_text() and "\nfrom typing" not in PROBE_PY.read_text()


def test_run_as_a_script_prints_one_json_document():
    r = subprocess.run([sys.executable, "-", json.dumps({"paths": ["/etc/hostname"]})], input=PROBE_PY.read_text(),
                       capture_output=True, text=True, timeout=60, check=True)
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["hostname"] == socket.gethostname() and set(data["files"]) == {"/etc/hostname"}
    # without parameters it does nothing: facts.py may append its own call of main()
    r = subprocess.run([sys.executable, "-"], input=PROBE_PY.read_text(), capture_output=True, text=True,
                       timeout=60, check=True)
    assert r.stdout == ""


def test_a_failing_fact_is_an_error_not_a_crash(tmp_path):
    out = probe.probe({"marker": str(tmp_path)})   # a directory: reading it fails
    assert "marker" not in out and out["probe_errors"]["marker"].startswith("IsADirectoryError")
    assert out["hostname"] == socket.gethostname() and out["kernel"] == os.uname().release


# -- systemctl show ----------------------------------------------------------------------------

SHOW = """Id=kubelet.service
LoadState=loaded
ActiveState=active
UnitFileState=enabled
ActiveEnterTimestamp=Tue 2023-11-14 22:13:20.123456 UTC

Id=etcd.service
LoadState=not-found
ActiveState=inactive
UnitFileState=
ActiveEnterTimestamp=

Id=containerd.service
LoadState=loaded
ActiveState=failed
UnitFileState=disabled
ActiveEnterTimestamp=@1700000000
"""


def test_parse_systemctl_show():
    services, started = probe.parse_systemctl_show(SHOW)
    assert services == {"kubelet": {"active": "active", "enabled": "enabled"},
                        "etcd": {"active": "inactive", "enabled": "not-found"},
                        "containerd": {"active": "failed", "enabled": "disabled"}}
    assert started == {"kubelet": 1700000000123456, "etcd": 0, "containerd": 1700000000000000}


@pytest.mark.parametrize("text, usec", [
    ("@1700000000", 1700000000000000),
    ("@1700000000.25", 1700000000250000),
    ("Tue 2023-11-14 22:13:20 UTC", 1700000000000000),
    ("Tue 2023-11-14 22:13:20.5 UTC", 1700000000500000),
    ("Tue 2023-11-14 22:13:20.000001 UTC", 1700000000000001),
    ("Thu 1970-01-01 00:00:00 UTC", 0),
    ("", 0),
    ("n/a", 0),
    ("Tue 2023-11-14 23:13:20 CET", 0),   # not UTC: systemctl runs with TZ=UTC, so never seen
])
def test_parse_timestamp(text, usec):
    assert probe.parse_timestamp(text) == usec


def test_services_with_a_current_systemctl_is_one_call(tmp_path):
    log = tmp_path / "calls"
    executable(tmp_path, "systemctl", f"""echo "$@" >> {log}
case "$*" in *--timestamp=us+utc*) ts="Tue 2023-11-14 22:13:20.000042 $TZ";; *) ts="Tue 2023-11-14 22:13:20 $TZ";; esac
printf 'Id=kubelet.service\\nLoadState=loaded\\nActiveState=active\\nUnitFileState=enabled\\nActiveEnterTimestamp=%s\\n' "$ts"
""")
    services, started = probe.services(["kubelet"], path=str(tmp_path))
    assert services == {"kubelet": {"active": "active", "enabled": "enabled"}}
    assert started == {"kubelet": 1700000000000042}
    calls = log.read_text().splitlines()
    assert calls == [("show --timestamp=us+utc -p Id,LoadState,ActiveState,UnitFileState,ActiveEnterTimestamp "
                      "kubelet.service")]


def test_services_with_an_old_systemctl_parses_the_default_format(tmp_path):
    """systemd < 247 has no --timestamp: asked again without it, under TZ=UTC."""
    log = tmp_path / "calls"
    executable(tmp_path, "systemctl", f"""echo "$@" >> {log}
case "$*" in *--timestamp*) echo "systemctl: unrecognized option '--timestamp=us+utc'" >&2; exit 1;; esac
printf 'Id=kubelet.service\\nLoadState=loaded\\nActiveState=active\\nUnitFileState=enabled\\nActiveEnterTimestamp=Tue 2023-11-14 22:13:20 %s\\n' "$TZ"
""")
    services, started = probe.services(["kubelet"], path=str(tmp_path))
    assert services == {"kubelet": {"active": "active", "enabled": "enabled"}}
    assert started == {"kubelet": 1700000000000000}
    assert len(log.read_text().splitlines()) == 2


def test_services_without_systemd(tmp_path):
    log = tmp_path / "calls"
    executable(tmp_path, "systemctl", f"""echo "$@" >> {log}
echo "System has not been booted with systemd as init system (PID 1). Can't operate." >&2; exit 1""")
    assert probe.services(["kubelet"], path=str(tmp_path)) == (None, None)
    assert len(log.read_text().splitlines()) == 1   # no second try: the option was not the problem
    empty = tmp_path / "empty"
    empty.mkdir()
    assert probe.services(["kubelet"], path=str(empty)) == (None, None)   # no systemctl at all
    assert probe.services([], path=str(empty)) == ({}, {})


# -- /proc/net/tcp and listeners ---------------------------------------------------------------

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 00000000:1A0B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0016 0100007F:D2F0 01 00000000:00000000 02:0000ED86 00000000     0        0 3333 2 0000000000000000 20 4 30 10 -1
   3: 0B00007F:08AE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6666 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7777 1 0000000000000000 100 0 0 10 0
"""


def test_parse_proc_net_tcp():
    assert probe.parse_proc_net_tcp(TCP, socket.AF_INET) == {
        "1111": {"address": "127.0.0.1", "port": 22, "process": None},
        "2222": {"address": "0.0.0.0", "port": 6667, "process": None},
        # 3333 is an established connection, not a listener
        "4444": {"address": "127.0.0.11", "port": 2222, "process": None},
    }
    assert probe.parse_proc_net_tcp(TCP6, socket.AF_INET6) == {
        "5555": {"address": "::1", "port": 8080, "process": None},
        "6666": {"address": "::", "port": 22, "process": None},
        "7777": {"address": "::ffff:127.0.0.1", "port": 9090, "process": None},
    }
    assert probe.parse_proc_net_tcp(TCP.splitlines()[0], socket.AF_INET) == {}


def test_listeners_finds_our_socket_and_its_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        comm = Path("/proc/self/comm").read_text().strip()
        assert {"address": "127.0.0.1", "port": port, "process": comm} in probe.listeners()


def test_listeners_without_proc_net(tmp_path):
    (tmp_path / "net").mkdir()
    assert probe.listeners(str(tmp_path)) == []


# -- interfaces: ip -j, else /sys + ioctl + /proc ----------------------------------------------

def test_interfaces_without_ip_fall_back_to_sys_and_ioctl(tmp_path):
    with_ip = probe.interfaces()
    without = probe.interfaces(path=str(tmp_path))   # an empty PATH: no `ip`
    assert without == probe.sys_interfaces()
    assert "127.0.0.1/8" in without["lo"]["addresses"]
    assert {n: i["mac"] for n, i in without.items()} == {n: i["mac"] for n, i in with_ip.items()}
    for name, i in with_ip.items():   # the fallback sees the primary IPv4 and every IPv6 address
        v4 = [a for a in i["addresses"] if ":" not in a]
        assert set(without[name]["addresses"]) >= set(v4[:1]) | {a for a in i["addresses"] if ":" in a}


def test_interfaces_with_an_ip_that_prints_garbage(tmp_path):
    executable(tmp_path, "ip", "echo 'Usage: ip [ OPTIONS ] OBJECT'")   # an old iproute2 without -j
    assert probe.interfaces(path=str(tmp_path)) == probe.sys_interfaces()


def test_parse_ip_json():
    text = json.dumps([{"ifname": "lo", "address": "00:00:00:00:00:00",
                        "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}, {"local": "::1", "prefixlen": 128}]},
                       {"ifname": "eth0", "address": "52:54:00:12:34:56", "addr_info": []}])
    assert probe.parse_ip_json(text) == {"lo": {"mac": "00:00:00:00:00:00", "addresses": ["127.0.0.1/8", "::1/128"]},
                                         "eth0": {"mac": "52:54:00:12:34:56", "addresses": []}}


# -- files: sha256 and stats -------------------------------------------------------------------

def test_stats_of_odd_modes_and_owners(tmp_path):
    import hashlib

    def make(name, mode, uid=0, gid=0, data=b"x\n"):
        p = tmp_path / name
        p.write_bytes(data)
        os.chown(p, uid, gid)
        os.chmod(p, mode)   # after chown, which clears setuid bits
        return str(p)

    nobody = pwd.getpwnam("nobody")
    secret = make("secret", 0o600)
    suid = make("suid", 0o4755)
    none = make("none", 0o000)
    foreign = make("foreign", 0o640, 12345, 23456)          # ids without names
    nob = make("nob", 0o644, nobody.pw_uid, nobody.pw_gid)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    link = tmp_path / "link"
    link.symlink_to(secret)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fifo.chmod(0o620)
    missing = str(tmp_path / "missing")
    paths = [secret, suid, none, foreign, nob, str(sticky), str(link), str(fifo), missing,
             str(tmp_path / "secret/below-a-file")]

    start = time.monotonic()
    files, stats, errors = probe.file_facts(paths)
    assert time.monotonic() - start < 5   # the FIFO was not opened for reading (it would block)
    assert errors == {}
    assert stats[secret] == {"mode": 0o600, "uid": 0, "gid": 0, "owner": "root", "group": "root"}
    assert stats[suid]["mode"] == 0o4755
    assert stats[none]["mode"] == 0 and files[none] == hashlib.sha256(b"x\n").hexdigest()  # root reads it
    assert stats[foreign] == {"mode": 0o640, "uid": 12345, "gid": 23456, "owner": "12345", "group": "23456"}
    import grp
    assert stats[nob] == {"mode": 0o644, "uid": nobody.pw_uid, "gid": nobody.pw_gid, "owner": "nobody",
                          "group": grp.getgrgid(nobody.pw_gid).gr_name}
    assert stats[str(sticky)]["mode"] == 0o1777 and files[str(sticky)] is None
    assert stats[str(link)] == stats[secret] and files[str(link)] == files[secret]   # followed
    assert stats[str(fifo)]["mode"] == 0o620 and files[str(fifo)] is None
    assert stats[missing] is None and files[missing] is None
    assert stats[paths[-1]] is None and files[paths[-1]] is None   # a path through a file
    assert list(files) == paths and list(stats) == paths


@pytest.fixture
def world_dir():
    """A directory that user nobody can enter (pytest's tmp_path is 0700 root)."""
    d = tempfile.mkdtemp(prefix="probe-test-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    subprocess.run(["rm", "-rf", d], check=True)


def test_unreadable_files_run_as_nobody(world_dir):
    """As a user that cannot read them: the facts say so instead of failing the whole probe."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the probe as nobody")
    secret = world_dir / "secret.conf"
    secret.write_text("s\n")
    secret.chmod(0o600)
    cert = world_dir / "ca.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    cert.chmod(0o600)
    closed = world_dir / "closed"
    closed.mkdir(mode=0o700)
    inner = closed / "inner.conf"
    inner.write_text("i\n")
    params = {"paths": [str(secret), str(inner)], "certs": [str(cert)]}
    nobody = pwd.getpwnam("nobody")
    python3 = shutil.which("python3", path="/usr/bin:/bin")   # the system's, as on a node
    if python3 is None:
        pytest.skip("no system python3")
    r = subprocess.run([python3, "-", json.dumps(params)], input=PROBE_PY.read_text(), capture_output=True,
                       text=True, timeout=60, check=True, user=nobody.pw_uid, group=nobody.pw_gid,
                       extra_groups=[], cwd="/")
    data = json.loads(r.stdout)
    assert data["files"] == {str(secret): None, str(inner): None}
    assert data["stats"][str(secret)] == {"mode": 0o600, "uid": 0, "gid": 0, "owner": "root", "group": "root"}
    assert data["stats"][str(inner)] is None   # cannot even stat it
    assert data["certs"] == {str(cert): None}
    errors = data["probe_errors"]
    assert errors[f"files[{secret}]"].startswith("PermissionError")
    assert errors[f"files[{inner}]"].startswith("PermissionError")
    assert errors[f"certs[{cert}]"].startswith("PermissionError")
    assert data["hostname"] == socket.gethostname()   # the rest of the probe went on


# -- certificates ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt"),
                        "-subj", f"/CN={name}", "-days", "1"], check=True, capture_output=True)
    return d


def test_certs(pems, tmp_path):
    a, b = (pems / "a.crt").read_text(), (pems / "b.crt").read_text()
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("subject=CN = a\n" + a + "\n# a comment\n" + b)
    rsa = tmp_path / "rsa.pem"
    rsa.write_text(a + "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n")
    combined = tmp_path / "combined.pem"
    combined.write_text(a + (pems / "a.key").read_text())
    none = tmp_path / "empty.pem"
    none.write_text("no certificate here\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    key, missing = str(pems / "a.key"), str(tmp_path / "missing.crt")
    paths = [str(pems / "a.crt"), str(bundle), key, str(combined), str(rsa), str(none), missing, str(tmp_path),
             str(fifo)]

    certs, errors = probe.cert_facts(paths)
    assert certs[str(pems / "a.crt")] == a
    assert certs[str(bundle)] == a + b             # only the CERTIFICATE blocks, in order
    assert certs[str(none)] == ""
    for refused in (key, str(combined), str(rsa)):  # a probe never carries a secret
        assert certs[refused] is None
        assert "PRIVATE KEY" in errors[f"certs[{refused}]"]
    assert certs[missing] is None and f"certs[{missing}]" not in errors
    assert certs[str(tmp_path)] is None and f"certs[{tmp_path}]" in errors
    assert certs[str(fifo)] is None and f"certs[{fifo}]" in errors
    assert "PRIVATE" not in json.dumps(certs)
    assert subprocess.run(["openssl", "x509", "-noout", "-subject"], input=certs[str(bundle)], text=True,
                          capture_output=True, check=True).stdout.strip() == "subject=CN = a"


# -- versions and commands ---------------------------------------------------------------------

def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_versions_a_hanging_binary_is_killed_with_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    executable(tmp_path, "kubectl", f"sleep 30 & echo $! > {pidfile}; wait")
    executable(tmp_path, "containerd", "echo; echo 'containerd github.com/containerd/containerd v1.7.24'")
    executable(tmp_path, "etcd", "echo 'etcd Version: 3.5.16' >&2")   # on stderr: kept
    start = time.monotonic()
    res = probe.versions(["kubectl", "containerd", "etcd", "runc"], path=str(tmp_path), timeout=1)
    assert time.monotonic() - start < 5
    assert res == {"kubectl": "", "containerd": "containerd github.com/containerd/containerd v1.7.24",
                   "etcd": "etcd Version: 3.5.16", "runc": None}
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid), "the hanging binary's child outlived the probe"


def test_commands(tmp_path):
    executable(tmp_path, "big", "yes abcdefghij | head -c 100000")
    spec = {
        "ok": ["sh", "-c", "echo '  hello  '; echo on-stderr >&2"],
        "fails": ["sh", "-c", "echo partial; exit 3"],
        "missing": ["no-such-command-anywhere", "--flag"],
        "missing-path": [str(tmp_path / "nope")],
        "not-executable": [str(tmp_path)],
        "slow": {"argv": ["sleep", "30"], "timeout": 0.5},
        "env": ["sh", "-c", 'echo "$LC_ALL $PATH"'],
        "stdin": ["cat"],
        "big": [str(tmp_path / "big")],
        "p1": ["sleep", "1"], "p2": ["sleep", "1"], "p3": ["sleep", "1"],
    }
    start = time.monotonic()
    res = probe.commands(spec)
    took = time.monotonic() - start
    assert took < 2.5, took   # in parallel: three 1 s sleeps and a 0.5 s timeout, not 3.5 s
    assert res["ok"] == {"rc": 0, "out": "hello"}           # stdout only, stripped
    assert res["fails"] == {"rc": 3, "out": "partial"}
    assert res["missing"] == {"rc": 127, "out": ""}
    assert res["missing-path"] == {"rc": 127, "out": ""}
    assert res["not-executable"]["rc"] == 126
    assert res["slow"]["rc"] is None
    lc_all, path = res["env"]["out"].split(" ")
    assert lc_all == "C" and "/usr/local/bin" in path.split(":")
    assert res["stdin"] == {"rc": 0, "out": ""}              # /dev/null, not the probe's stdin
    assert res["big"]["rc"] == 0 and len(res["big"]["out"]) == probe.OUT_LIMIT
    assert all(res[p] == {"rc": 0, "out": ""} for p in ("p1", "p2", "p3"))


def test_command_whose_child_keeps_the_pipe_open():
    """The command exits but leaves a child holding stdout: its rc counts, the probe does not wait."""
    start = time.monotonic()
    res = probe.commands({"bg": {"argv": ["sh", "-c", "sleep 30 & echo started"], "timeout": 1}})
    assert time.monotonic() - start < 5
    assert res["bg"] == {"rc": 0, "out": "started"}


def test_output_of_a_command_that_ended_in_time_is_read_after_its_deadline():
    """On a slow node the probe may still be reading files when a command's deadline passes:
    a command that had ended by then has answered, and what it wrote is its answer."""
    jobs = probe.command_jobs({"said": {"argv": ["echo", "yes"], "timeout": 0.2},
                               "bg": {"argv": ["sh", "-c", "sleep 30 & echo started"], "timeout": 0.2}})
    time.sleep(0.6)   # the probe hashing big files meanwhile
    probe.finish(list(jobs.values()))
    assert probe.commands_from(jobs) == {"said": {"rc": 0, "out": "yes"}, "bg": {"rc": 0, "out": "started"}}
    assert not any(j.timed_out for j in jobs.values())


def test_a_tool_that_gives_up_at_its_own_deadline_is_asked_again_with_patience():
    """etcdctl's own --command-timeout ends a quorum read on a busy member with "unhealthy":
    asked without patience, that is no answer yet; asked with patience, it is the answer."""
    gives_up = 'sleep "${1%s}"; echo "context deadline exceeded" >&2; exit 1'  # like etcdctl
    commands = {"health": {"argv": ["sh", "-c", gives_up, "etcdctl"], "timeout": 5,
                           "own_deadline": {"{:.1f}s": 0.3}},
                "refused": {"argv": ["sh", "-c", "exit 1", "etcdctl"],  # a quick "no" stands
                            "own_deadline": {"--dial-timeout={:.1f}s": 0.1, "{:.1f}s": 0.3}}}
    first = probe.probe({"commands": commands})
    assert first["commands"]["health"]["rc"] == 1
    assert first["commands"]["refused"]["rc"] == 1
    assert first["timed_out"] == {"command health": {
        "argv": ["sh", "-c", gives_up, "etcdctl", "0.3s"], "seconds": 0.3}}
    patient = probe.probe({"commands": commands, "patience": 4})
    assert patient["commands"]["health"]["rc"] == 1 and patient["timed_out"] == {}
    assert patient["commands"]["refused"]["rc"] == 1


def test_probe_runs_commands_and_versions_with_the_rest():
    out = probe.probe({"commands": {"uname": ["uname", "-s"], "false": ["false"]}, "binaries": ["sh-missing-x"],
                       "services": [], "paths": ["/etc/hostname"], "certs": []})
    assert out["commands"] == {"uname": {"rc": 0, "out": "Linux"}, "false": {"rc": 1, "out": ""}}
    assert out["versions"] == {"sh-missing-x": None}
    assert out["services"] == {} and out["started"] == {}
    assert out["stats"]["/etc/hostname"]["owner"] == "root" and out["certs"] == {}
    assert stat.S_IMODE(os.stat("/etc/hostname").st_mode) == out["stats"]["/etc/hostname"]["mode"]
