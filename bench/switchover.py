"""Scheduler time lost when a switchover's target fails at that moment; prints a Markdown
table and writes it to bench/results/switchover.md.

    python bench/switchover.py [--runs 5] [--backends local,postgres,zookeeper]
                               [--faults sigstop,kill9]

Three daemons (loop 1 s, lease 5 s, as bench/takeover.py), probe child. Each run: the target
(a standby) is frozen (SIGSTOP) or killed (SIGKILL), then `failover switchover --to TARGET`
is asked at once (the leader still sees a fresh heartbeat and accepts). The figure is the
gap from the old child's SIGTERM to the exec of the next child on another member.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from takeover import LEASE, SETTINGS, exec_time, start_servers, write_report

from tests.harness import Cluster, read_records, wait_until

TARGET = f"<= lease + 1 s = {LEASE + 1:g} s"


def client(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "failover", *args, *cluster.client_args()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def standby_ready(cluster: Cluster, node: str) -> bool:
    import json

    done = client(cluster, "status", "--json")
    members = json.loads(done.stdout)["members"] if done.stdout.strip() else []
    return any(
        m["node"] == node and m["role"] == "standby" and m["heartbeat_age"] < 1.5 for m in members
    )


def one_run(cluster: Cluster, fault: str) -> tuple[float, str]:
    leader, epoch = cluster.leader_child(timeout=60)
    target = next(n for n in cluster.nodes if n != leader)
    wait_until(lambda: standby_ready(cluster, target), 60, f"{target} to be a ready standby")
    cluster.signal(target, signal.SIGSTOP if fault == "sigstop" else signal.SIGKILL)
    done = client(cluster, "switchover", "--to", target, "--wait", "60")

    def next_start() -> dict[str, str] | None:
        for r in read_records(cluster.records):
            if r["word"] == "start" and int(r["epoch"]) > int(epoch) and r["node"] != target:
                return r
        return None

    new: dict[str, str] = wait_until(next_start, 60, "a child on another member")
    term = min(
        float(r["t"])
        for r in read_records(cluster.records)
        if r["word"] == "term" and r["epoch"] == epoch
    )
    gap = exec_time(int(new["pid"])) - term
    if fault == "sigstop":
        cluster.signal(target, signal.SIGCONT)
    else:
        cluster.procs[target].wait(timeout=30)
        cluster.start(target)
    return gap, (done.stderr or done.stdout).strip()


def bench(backend: str, fault: str, runs: int, dsn: str | None, zk: str | None) -> list[float]:
    settings = dict(SETTINGS, backend=backend)
    if dsn is not None:
        settings["postgres.dsn"] = dsn
    if zk is not None:
        settings["zookeeper.hosts"] = f"{zk}/switchover-{fault}-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        cluster = Cluster(Path(tmp), settings=settings)
        try:
            cluster.start_all()
            values = []
            for _ in range(runs):
                gap, said = one_run(cluster, fault)
                print(f"  {backend} {fault}: {gap:.2f} s  ({said})", flush=True)
                values.append(gap)
            return values
        finally:
            cluster.stop_all()


def row(backend: str, fault: str, values: list[float]) -> str:
    values = sorted(values)
    return (
        f"| {backend} | {fault} | {len(values)} | {values[0]:.2f} | "
        f"{statistics.median(values):.2f} | {values[-1]:.2f} | {TARGET} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--backends", default="local,postgres,zookeeper")
    p.add_argument("--faults", default="sigstop,kill9")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "switchover.md"))
    args = p.parse_args()
    backends = args.backends.split(",")
    pg, zk = start_servers(backends)
    lines = [
        f"Switchover to a target that fails at that moment: seconds without a child "
        f"({platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"lease {LEASE:g} s, loop 1 s, {time.strftime('%Y-%m-%d')})",
        "",
        "| backend | target fault | runs | min | median | max | target |",
        "|---|---|---|---|---|---|---|",
    ]
    try:
        counter = itertools.count()
        for backend in backends:
            for fault in args.faults.split(","):
                dsn = pg.create_database(f"sw_{next(counter)}") if pg is not None else None
                hosts = zk.hosts if zk is not None and backend == "zookeeper" else None
                values = bench(
                    backend, fault, args.runs, dsn if backend == "postgres" else None, hosts
                )
                lines.append(row(backend, fault, values))
                print(lines[-1], flush=True)
    finally:
        if pg is not None:
            pg.close()
        if zk is not None:
            zk.close()
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
