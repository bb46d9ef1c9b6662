"""Wall time of 4 trivial operations on N hosts through each way of reaching them (figures, not a test).

    .venv/bin/python benchmarks/ops.py                 # N = 10 and 50
    .venv/bin/python benchmarks/ops.py --hosts 10 50 100 --no-pyinfra

The operations (as in ../shared/anchors.md, beside this repository): create a user, touch a file, put a file, echo.
Columns:
  paramiko   provisioner.ssh.Pool: one connection per host, the 4 ops as one shell command,
             all hosts in parallel (timed from opening the connections)
  ansible/5  provisioner.runner.run_playbook(benchmarks/ops.yml), forks 5
  ansible/N  the same with forks N
  pyinfra    pyinfra (outside reference), `--parallel N`; installed into the venv on first use
             unless --no-pyinfra (it is not a project dependency)

Hosts are real sshd servers on 127.0.0.11.. (tests/sshd.py), all on this one machine, sharing
its CPU with the controller. They also share /etc/passwd: the benchmark user is created once
before timing (concurrent useradd of one name on one machine would race), so "create a user"
is the existence check every tool makes on a converged host. Each host's files are removed
before each column, so touch and put really write. A column counts only if every host ends
with the right files.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provisioner import runner  # noqa: E402
from provisioner.model import Node  # noqa: E402
from provisioner.ssh import Pool  # noqa: E402
from tests.sshd import start_sshd_hosts  # noqa: E402

USER = "pvbench"
CONTENT = "put by the provisioner benchmark\n"
PLAYBOOK = ROOT / "benchmarks" / "ops.yml"


def clean() -> None:
    for p in glob.glob("/tmp/pv-bench-h*-*"):
        if os.path.isfile(p):
            os.unlink(p)


def verify(nodes) -> str | None:
    for n in nodes:
        put = Path(f"/tmp/pv-bench-{n.name}-put")
        if not Path(f"/tmp/pv-bench-{n.name}-touched").exists():
            return f"{n.name}: file not touched"
        if not put.exists() or put.read_text() != CONTENT:
            return f"{n.name}: file not put"
    return None


def with_paramiko(nodes, known_hosts: Path, work: Path) -> float:
    script = (f"id -u {USER} >/dev/null 2>&1 || useradd -M {USER}; "
              "touch /tmp/pv-bench-{h}-touched && cat > /tmp/pv-bench-{h}-put && echo hello")
    start = time.monotonic()
    with Pool(nodes, known_hosts, max_parallel=len(nodes)) as pool:
        results = pool.run({n.name: script.format(h=n.name) for n in nodes}, stdin=CONTENT)
    seconds = time.monotonic() - start
    bad = [f"{h}: {r.error or r.stderr.strip()}" for h, r in results.items()
           if r.rc != 0 or r.stdout.strip() != "hello"]
    if bad:
        raise RuntimeError("; ".join(bad[:3]))
    return seconds


def with_ansible(nodes, known_hosts: Path, work: Path, forks: int) -> float:
    state = Path(tempfile.mkdtemp(prefix=f"f{forks}-", dir=work))
    start = time.monotonic()
    result = runner.run_playbook(None, str(PLAYBOOK), nodes,
                                 {"bench_user": USER, "bench_content": CONTENT}, None,
                                 state, known_hosts, phase="bench", forks=forks, timeout=60)
    seconds = time.monotonic() - start
    if not result.ok:
        raise RuntimeError("; ".join(f"{h}: {t}: {m}" for h, t, m in result.failures[:3]))
    return seconds


def pyinfra_bin() -> str | None:
    exe = Path(sys.executable).parent / "pyinfra"
    if exe.exists():
        return str(exe)
    print("benchmark: installing pyinfra into the venv for the reference column "
          "(not a project dependency; use --no-pyinfra to skip)", flush=True)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyinfra"],
                       capture_output=True, text=True)
    if r.returncode != 0 or not exe.exists():
        print(f"benchmark: pyinfra unavailable, skipping that column: {r.stderr.strip()[-300:]}")
        return None
    return str(exe)


def with_pyinfra(nodes, known_hosts: Path, work: Path, exe: str) -> float:
    d = Path(tempfile.mkdtemp(prefix="pyinfra-", dir=work))
    hosts = ",\n".join(
        f"    ({n.name!r}, {{'ssh_hostname': {n.address!r}, 'ssh_port': {n.ssh_port}, "
        f"'ssh_user': 'root', 'ssh_key': {n.ssh_key!r}, "
        f"'ssh_known_hosts_file': {str(known_hosts)!r}, 'ssh_strict_host_key_checking': 'yes'}})"
        for n in nodes)
    (d / "inventory.py").write_text(f"hosts = [\n{hosts},\n]\n")
    (d / "deploy.py").write_text(
        "from io import StringIO\n"
        "from pyinfra import host\n"
        "from pyinfra.operations import files, server\n"
        f"server.user(name='create a user', user={USER!r}, create_home=False)\n"
        "files.file(name='touch a file', path=f'/tmp/pv-bench-{host.name}-touched', touch=True)\n"
        f"files.put(name='put a file', src=StringIO({CONTENT!r}), "
        "dest=f'/tmp/pv-bench-{host.name}-put', mode='644')\n"
        "server.shell(name='echo', commands=['echo hello'])\n")
    start = time.monotonic()
    r = subprocess.run([exe, "-y", "--parallel", str(len(nodes)), "inventory.py", "deploy.py"],
                       cwd=d, capture_output=True, text=True)
    seconds = time.monotonic() - start
    (d / "output.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"pyinfra exited {r.returncode}; see {d}/output.log")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--no-pyinfra", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="runs per column; the fastest counts")
    args = ap.parse_args()

    exe = None if args.no_pyinfra else pyinfra_bin()
    work = Path(tempfile.mkdtemp(prefix="pvb-work-"))
    created_user = subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0
    if created_user:
        subprocess.run(["useradd", "-M", USER], check=True)
    print(f"benchmark: starting {max(args.hosts)} sshd hosts (work dir {work})", flush=True)
    sshd = start_sshd_hosts(max(args.hosts), work)
    rows = []
    try:
        known = Path(sshd.write_known_hosts(work / "known_hosts"))
        all_nodes = [Node(h.name, h.address, ("workers",), "root", h.port, h.key_file) for h in sshd]
        for n in args.hosts:
            nodes = all_nodes[:n]
            columns = [("paramiko", lambda: with_paramiko(nodes, known, work)),
                       ("ansible/5", lambda: with_ansible(nodes, known, work, 5)),
                       (f"ansible/{n}", lambda: with_ansible(nodes, known, work, n))]
            if exe:
                columns.append(("pyinfra", lambda: with_pyinfra(nodes, known, work, exe)))
            row = {}
            for name, fn in columns:
                for _ in range(args.repeat):
                    clean()
                    try:
                        seconds = fn()
                        problem = verify(nodes)
                        got = seconds if problem is None else f"wrong: {problem}"
                    except Exception as e:  # noqa: BLE001 - a failed column is a figure too
                        got = f"failed: {str(e)[:200]}"
                    print(f"  N={n:<4} {name:<12} {fmt(got):<10} (load {os.getloadavg()[0]:.1f})",
                          flush=True)
                    if isinstance(got, float):
                        row[name] = min(got, row.get(name, got))
                    else:
                        row.setdefault(name, got)
            rows.append((n, row))
    finally:
        sshd.stop()
        clean()
        if created_user:
            subprocess.run(["userdel", USER], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.1f}; "
          f"fastest of {args.repeat} run(s) per column; ratios vs paramiko")
    print(table(rows))


def fmt(v) -> str:
    return f"{v:.2f} s" if isinstance(v, float) else str(v)


def table(rows) -> str:
    names = ["paramiko", "ansible/5", "ansible/N", "pyinfra"]
    out = ["| hosts | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for n, row in rows:
        row = {("ansible/N" if k == f"ansible/{n}" else k): v for k, v in row.items()}
        base = row.get("paramiko")
        cells = []
        for name in names:
            v = row.get(name, "skipped")
            if isinstance(v, float) and isinstance(base, float) and name != "paramiko":
                cells.append(f"{v:.2f} s ({v / base:.0f}x)")
            else:
                cells.append(fmt(v))
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
