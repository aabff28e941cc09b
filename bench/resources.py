"""Controller footprint when idle: RSS and CPU of the leader's and a standby's daemon (and
their keepers) over N minutes, local backend, default timings.

    python bench/resources.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scalestats import children_of, cpu_seconds
from failover.keeper import proctree
from tests.harness import Cluster


def cpu_and_rss(pid: int) -> tuple[float, int]:
    """CPU seconds of the process itself and its RSS in KiB."""
    return cpu_seconds(pid), proctree.rss_bytes(pid) // 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--backend", choices=("local", "postgres"), default="local")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    out = args.out or str(ROOT / "bench" / "results" / f"resources-{args.backend}.md")
    settings = {
        "lease_seconds": "10",
        "loop_seconds": "1",
        "backend_timeout_seconds": "2",
        "self_fence_margin_seconds": "1",
        "backend": args.backend,
    }
    server = None
    if args.backend == "postgres":
        from tests.servers import PostgresServer

        server = PostgresServer()
        server.start()
        settings["postgres.dsn"] = server.create_database("resources")
    with tempfile.TemporaryDirectory(prefix="bench-res-") as tmp:
        c = Cluster(Path(tmp), nodes=("leader", "standby"), settings=settings)
        try:
            c.start("leader")
            c.leader_child()
            c.start("standby")
            time.sleep(5)
            pids = {n: c.procs[n].pid for n in c.nodes}
            start = {n: cpu_and_rss(pid)[0] for n, pid in pids.items()}
            t0 = time.monotonic()
            peak = {n: 0 for n in c.nodes}
            while time.monotonic() - t0 < args.minutes * 60:
                time.sleep(5)
                for n, pid in pids.items():
                    peak[n] = max(peak[n], cpu_and_rss(pid)[1])
            wall = time.monotonic() - t0
            rows = []
            for n, pid in pids.items():
                cpu, rss = cpu_and_rss(pid)
                keeper_rss = sum(cpu_and_rss(k)[1] for k in children_of(pid))
                rows.append(
                    f"| {n} | {wall / 60:.1f} | {rss / 1024:.1f} | {peak[n] / 1024:.1f} | "
                    f"{100 * (cpu - start[n]) / wall:.2f} | {keeper_rss / 1024:.1f} |"
                )
        finally:
            c.stop_all()
            if server is not None:
                server.close()
    text = (
        "\n".join(
            [
                f"Idle footprint of the daemon ({args.backend} backend, loop 1 s; {time.strftime('%Y-%m-%d')}; "
                "targets: RSS <= 60 MB, CPU <= 0.5 % of a core)",
                "",
                "| role | minutes | RSS MB (end) | RSS MB (peak) | CPU % of a core | keeper RSS MB |",
                "|---|---|---|---|---|---|",
                *rows,
            ]
        )
        + "\n"
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
