"""SSH fan-out benchmark: N real sshd hosts on loopback; connect all, run one command, probe facts.

    .venv/bin/python benchmarks/ssh_fanout.py 10 50            # one sshd per host
    .venv/bin/python benchmarks/ssh_fanout.py --one-server 30   # N connections to a single sshd

Needs root and /usr/sbin/sshd (tests/sshd.py starts the servers). Each sshd keeps its default
MaxStartups 10:30:100 (beyond 10 unauthenticated connections it starts dropping new ones);
the pool keeps at most `--handshakes` (default 8) handshakes in flight and retries drops, which
`--one-server` exercises: every connection then hits the same sshd.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner import facts as fx  # noqa: E402
from provisioner.model import Node  # noqa: E402
from provisioner.ssh import MAX_HANDSHAKES, Pool  # noqa: E402
from tests.sshd import start_sshd_hosts  # noqa: E402


def bench(n: int, one_server: bool, handshakes: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ssh-fanout-") as tmp:
        servers = start_sshd_hosts(1 if one_server else n, tmp)
        try:
            nodes = [Node(f"n{i + 1}", s.address, ("workers",), ssh_port=s.port, ssh_key=s.key_file)
                     for i, s in enumerate(servers * n if one_server else servers)][:n]
            known = servers.write_known_hosts(Path(tmp) / "known_hosts")
            figures: dict = {"connect": [], "run": [], "probe": []}
            for _ in range(rounds):
                t = time.monotonic()
                with Pool(nodes, known, max_handshakes=handshakes) as pool:
                    figures["connect"].append(time.monotonic() - t)
                    assert not pool.errors, pool.errors
                    t1 = time.monotonic()
                    results = pool.run("uname -n")
                    figures["run"].append(time.monotonic() - t1)
                    assert all(r.rc == 0 for r in results.values())
                    t2 = time.monotonic()
                    facts = fx.probe(pool)
                    figures["probe"].append(time.monotonic() - t2)
                    assert all(f.reachable for f in facts.values())
            return {k: statistics.median(v) for k, v in figures.items()}
        finally:
            servers.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("counts", nargs="*", type=int, default=[10, 50])
    ap.add_argument("--one-server", action="store_true", help="all connections to one sshd")
    ap.add_argument("--handshakes", type=int, default=MAX_HANDSHAKES, help="handshakes in flight")
    ap.add_argument("--rounds", type=int, default=3, help="repeat and report the median")
    args = ap.parse_args()
    print(f"{'hosts':>5} {'servers':>7} {'handshakes':>10} {'connect s':>9} {'run s':>7} "
          f"{'probe s':>7} {'total s':>7}")
    for n in args.counts:
        f = bench(n, args.one_server, args.handshakes, args.rounds)
        print(f"{n:>5} {1 if args.one_server else n:>7} {args.handshakes:>10} {f['connect']:>9.2f} "
              f"{f['run']:>7.2f} {f['probe']:>7.2f} {f['connect'] + f['run']:>7.2f}")


if __name__ == "__main__":
    main()
