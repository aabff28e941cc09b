"""CeleryExecutor failover with work in flight: redis-server, one `airflow celery worker` and
two candidates, each in a network namespace (tests/e2e/celery_site.py), Airflow 2.11.2.

    python bench/celery.py [--runs 5] [--scenarios kill9,switchover,partition]
                            [--broker redis|rabbitmq] [--out FILE]
                            (needs scripts/test's Airflow venv with the Celery provider)

kill9_norelease: kill9 with `[airflow] release_orphans = false` (Airflow's own timing).
Each run triggers the `slow` DAG (4 tasks of 20 s, worker concurrency 2), waits until two
run on the worker and two wait in the broker, applies the fault to the leader, and counts:
fault -> the new scheduler's first heartbeat; the in-flight tasks finished once / re-run /
lost, and adopted by the new scheduler; the queued tasks executed; fault -> the first task
queued after it (the `beat` DAG, every 5 s). DB clock on both ends.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.takeover import write_report
from tests.e2e.celery_flow import Figures, failover_with_work_in_flight, kill9, switchover
from tests.e2e.celery_site import CelerySite, celery_site, wait_worker_ready
from tests.harness import wait_until
from tests.servers import PostgresServer

HEADER = (
    "| scenario | run | fault -> heartbeat (s) | in flight | finished once | re-run | lost "
    "| adopted | ended first | queued | executed | queued adopted | fault -> next queued (s) "
    "| beat 2nd tries | load 1 min |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def fault_for(site: CelerySite, scenario: str) -> Callable[[str], None]:
    if scenario in ("kill9", "kill9_norelease"):
        return kill9(site)
    if scenario == "partition":
        return lambda leader: site.hosts[leader].cut()
    assert scenario == "switchover", scenario
    return switchover(site)


def recover(site: CelerySite, scenario: str, f: Figures) -> None:
    """Bring the old leader back as a standby for the next run."""
    c = site.cluster
    assert c is not None
    if scenario == "partition":
        site.hosts[f.leader].heal()
    elif scenario.startswith("kill9"):
        c.procs[f.leader].wait(timeout=60)
        site.restart(f.leader)
    wait_until(
        lambda: any(s.startswith("no action: following") for s in c.sentences(f.leader)[-3:]),
        120,
        f"{f.leader} to follow again",
        0.5,
    )


def row(scenario: str, run: int, f: Figures) -> str:
    return (
        f"| {scenario} | {run} | {f.heartbeat:.2f} | {f.in_flight} | {f.finished} | {f.rerun} "
        f"| {f.lost} | {f.adopted} | {f.ended_before} | {f.queued} | {f.queued_done} "
        f"| {f.queued_adopted} | {f.next_queued:.2f} "
        f"| {f.beat_retried} | {os.getloadavg()[0]:.1f} |"
    )


def summary(scenario: str, figures: list[Figures]) -> str:
    def spread(values: list[float]) -> str:
        return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"

    return (
        f"| **{scenario}** | {len(figures)} runs | {spread([f.heartbeat for f in figures])} "
        f"| {sum(f.in_flight for f in figures)} | {sum(f.finished for f in figures)} "
        f"| {sum(f.rerun for f in figures)} | {sum(f.lost for f in figures)} "
        f"| {sum(f.adopted for f in figures)} | {sum(f.ended_before for f in figures)} "
        f"| {sum(f.queued for f in figures)} | {sum(f.queued_done for f in figures)} "
        f"| {sum(f.queued_adopted for f in figures)} | {spread([f.next_queued for f in figures])} "
        f"| {sum(f.beat_retried for f in figures)} | |"
    )


def bench(server: PostgresServer, scenario: str, runs: int, lines: list[str], broker: str) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp,
        celery_site(server, Path(tmp), broker) as site,
    ):
        release = "false" if scenario == "kill9_norelease" else "true"
        site.make_cluster({"max_fast_failures": "10", "airflow.release_orphans": release})
        site.start_nodes()
        wait_worker_ready(site)
        figures = []
        for run in range(1, runs + 1):
            try:
                f = failover_with_work_in_flight(
                    site, f"{scenario}{run}", fault_for(site, scenario)
                )
                recover(site, scenario, f)
            except AssertionError:
                assert site.cluster is not None
                print(site.cluster.dump_logs(), file=sys.stderr)
                raise
            figures.append(f)
            lines.append(row(scenario, run, f))
            print(lines[-1], flush=True)
        lines.append(summary(scenario, figures))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scenarios", default="kill9")
    p.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "celery.md"))
    args = p.parse_args()
    load = os.getloadavg()
    lines = [
        f"CeleryExecutor (Airflow 2.11.2, {args.broker}-server broker, one worker of concurrency 2, two "
        f"candidates on PostgreSQL; each in a network namespace; {os.cpu_count()} cores, "
        f"lease 5 s, {time.strftime('%Y-%m-%d')}; load average at start "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}: a shared machine). Times from the "
        "fault, DB clock; summary rows: min / median / max and totals.",
        "",
        HEADER,
    ]
    server = PostgresServer()
    server.start()
    try:
        for scenario in args.scenarios.split(","):
            bench(server, scenario, args.runs, lines, args.broker)
    finally:
        server.close()
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
