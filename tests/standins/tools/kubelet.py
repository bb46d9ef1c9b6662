"""TEST-ONLY stand-in for the kubelet: checks its config and sleeps. It runs no pods.

Like the real kubelet under kubeadm's drop-in, it exits non-zero (systemd restarts it) while
/var/lib/kubelet/config.yaml is missing, i.e. until kubeadm init/join wrote it; then it checks
the file strictly against the upstream KubeletConfiguration field tree and sleeps until stopped.
"""

from __future__ import annotations

import signal
import stat

from . import Failed, Tool, data_text
from . import schema

API = "kubelet.config.k8s.io/v1beta1"


def main(tool: Tool, argv: list[str]) -> int:
    if "--version" in argv or argv[:1] == ["version"]:
        print(tool.version_line())
        return 0
    flags = parse(argv)
    stop_on_sigterm()
    try:
        config = check(tool, flags)
        from .upgrade import kubelet_started

        kubelet_started(tool)
    except Failed as e:
        tool.record(argv, "error: " + str(e).splitlines()[0])
        raise
    tool.record(argv, "running", config=config)
    tool.say(f"config {flags['config']} is valid; sleeping (stand-in: no pods are run, "
             "no node is registered)")
    sleep_until_stopped()
    return 0


def stop_on_sigterm() -> None:
    """systemctl stop sends SIGTERM: exit 0 like a clean shutdown (set before saying ready)."""

    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


def sleep_until_stopped() -> None:
    while True:
        signal.pause()


def parse(argv: list[str]) -> dict[str, str]:
    """--flag=value and --flag value pairs (values never start with --)."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise Failed(f"unknown command {a!r}: the kubelet takes flags only")
        name, eq, value = a[2:].partition("=")
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 1
        flags[name] = value if (eq or value) else "true"
        i += 1
    return flags


CGROUP2_SUPER_MAGIC = 0x63677270  # statfs(2) f_type of a cgroup2 mount
FAIL_CGROUP_V1_FROM = (1, 35)  # kubelets from this minor default failCgroupV1 to true


def cgroup_v2(tool: Tool) -> bool:
    """What the kubelet asks (libcontainer's IsCgroup2UnifiedMode): is /sys/fs/cgroup a cgroup2
    mount? statfs(2) through libc; a failed call counts as not v2, as there."""
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(128)  # struct statfs: f_type is its first field (long)
    if libc.statfs(str(tool.path("/sys/fs/cgroup")).encode(), buf) != 0:
        return False
    return struct.unpack_from("l", buf.raw)[0] == CGROUP2_SUPER_MAGIC


def minor(version: str) -> tuple[int, int]:
    major, minor_ = version.lstrip("v").split("+")[0].split(".")[:2]
    return int(major), int(minor_)


def check_cgroup(tool: Tool, flags: dict[str, str], config: dict) -> None:
    """Like the kubelet's config validation: from 1.35 failCgroupV1 defaults to true and a
    cgroup v1 host is refused unless the config (or --fail-cgroupv1=false) says otherwise."""
    if minor(tool.version) < FAIL_CGROUP_V1_FROM or cgroup_v2(tool):
        return
    fail = config.get("failCgroupV1", True)
    if "fail-cgroupv1" in flags:
        fail = flags["fail-cgroupv1"] not in ("false", "False", "0")
    if fail:
        raise Failed("failed to validate kubelet configuration, error: kubelet is configured "
                     "to not run on a host using cgroup v1. cgroup v1 support is unsupported "
                     "and will be removed in a future release")


def check(tool: Tool, flags: dict[str, str]) -> dict:
    import yaml

    path = flags.get("config")
    if not path:
        raise Failed("the stand-in needs --config (kubeadm's drop-in passes "
                     "--config=/var/lib/kubelet/config.yaml)")
    try:
        config = yaml.safe_load(tool.path(path).read_text())
    except OSError as e:
        raise Failed(f"failed to load kubelet config file, path: {path}, error: {e.strerror} "
                     "(kubeadm init/join writes it)") from None
    except yaml.YAMLError as e:
        raise Failed(f"failed to load kubelet config file, path: {path}, error: {e}") from None
    if not isinstance(config, dict) or config.get("kind") != "KubeletConfiguration" \
            or config.get("apiVersion") != API:
        raise Failed(f"{path}: want kind KubeletConfiguration, apiVersion {API}")
    tree = yaml.safe_load(data_text("kubelet-v1beta1.yaml"))
    errors: list[str] = []
    schema.check(config, schema.types_from_tree(tree)["KubeletConfiguration"], "",
                 "KubeletConfiguration", errors)
    if errors:
        raise Failed(f"failed to load kubelet config file, path: {path}: strict decoding "
                     "error: " + ", ".join(errors))
    check_cgroup(tool, flags, config)
    endpoint = flags.get("container-runtime-endpoint") or config.get("containerRuntimeEndpoint")
    if endpoint:
        sock = endpoint.removeprefix("unix://")
        try:
            ok = stat.S_ISSOCK(tool.path(sock).stat().st_mode)
        except OSError:
            ok = False
        if not ok:
            raise Failed(f"validate CRI v1 runtime API for endpoint {endpoint!r}: no socket")
    return config
