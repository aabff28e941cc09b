"""Real Airflow (2.11.2, or 3.3.2 with --airflow 3) under two candidates on PostgreSQL: time
from the fault to the new scheduler's first `job` row (its start_date = first heartbeat), DB
clock on both ends.

    python bench/airflow_takeover.py [--runs 5] [--prewarm off,on] [--airflow 3]
                                      (needs scripts/test's Airflow venvs)

On Airflow 3 the candidates run the group (scheduler + dag-processor) and an
`airflow api-server --apps execution` runs outside them (one shared JWT secret).

Scenarios: kill9 (leader daemon SIGKILLed), graceful (leader daemon SIGTERMed),
hang (leader's scheduler SIGSTOPped; health threshold 6 s, heartbeat every 1 s).
With prewarm on ([airflow] prewarm), each run waits until the standby's scheduler is
pre-warmed before the fault.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2

from tests.e2e.conftest import AIRFLOW_VERSIONS, DAEMON_SETTINGS, AirflowDb, api_server, migrated_db
from tests.harness import Cluster, keeper_trees, wait_until, warm_processes
from tests.servers import PostgresServer


def db_now(dsn: str) -> Any:
    return query(dsn, "SELECT now()")[0][0]


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def newest_job(dsn: str) -> tuple[int, str, Any] | None:
    rows = query(
        dsn,
        "SELECT id, hostname, start_date FROM job WHERE job_type = 'SchedulerJob' "
        "AND state = 'running' ORDER BY id DESC LIMIT 1",
    )
    return rows[0] if rows else None


def one_run(c: Cluster, db: AirflowDb, scenario: str, prewarm: bool) -> float:
    before = wait_until(lambda: newest_job(db.dsn), 120, "a running scheduler", 0.2)
    leader = before[1]
    if prewarm:
        wait_until(
            lambda: set(warm_processes(c.cluster).values()) - {leader},
            120,
            "a pre-warmed standby",
            0.1,
        )
    if scenario == "hang":
        (keeper,) = [k for k, (node, _) in keeper_trees(c.cluster).items() if node == leader]
        with open(f"/proc/{keeper}/task/{keeper}/children") as f:
            target = min(int(p) for p in f.read().split())
        os.kill(target, signal.SIGSTOP)
    else:
        c.signal(leader, signal.SIGKILL if scenario == "kill9" else signal.SIGTERM)
    fault_at = db_now(db.dsn)
    new = wait_until(
        lambda: (j := newest_job(db.dsn)) and j[0] > before[0] and j, 120, "a new scheduler", 0.05
    )
    took = (new[2] - fault_at).total_seconds()
    if scenario != "hang":
        c.procs[leader].wait(timeout=60)
        c.start(leader)
    return took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scenarios", default="kill9,graceful,hang")
    p.add_argument("--prewarm", default="off", help="off, on, or off,on: [airflow] prewarm")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "airflow.md"))
    p.add_argument("--airflow", type=int, choices=(2, 3), default=2, help="major: 2.11.2, 3.3.2")
    args = p.parse_args()
    server = PostgresServer()
    server.start()
    lines = [
        f"Real Airflow {AIRFLOW_VERSIONS[args.airflow][0]}, fault -> new scheduler's first "
        "job row, seconds "
        f"({os.cpu_count()} cores, lease 5 s, {time.strftime('%Y-%m-%d')})",
        "",
        "| scenario | prewarm | runs | min | median | max |",
        "|---|---|---|---|---|---|",
    ]
    try:
        for prewarm in args.prewarm.split(","):
            for scenario in args.scenarios.split(","):
                values = bench(server, scenario, args.runs, prewarm == "on", args.airflow)
                lines.append(
                    f"| {scenario} | {prewarm} | {len(values)} | {min(values):.2f} | "
                    f"{statistics.median(values):.2f} | {max(values):.2f} |"
                )
                print(lines[-1], flush=True)
    finally:
        server.close()
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print("\n" + text)
    return 0


def bench(
    server: PostgresServer, scenario: str, runs: int, prewarm: bool, major: int = 2
) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="bench-af-") as tmp, contextlib.ExitStack() as stack:
        db = migrated_db(server, Path(tmp), major)
        scheduler = [db.binary, "scheduler", "--skip-serve-logs"]
        group = {}
        if major == 3:
            stack.enter_context(api_server(db, Path(tmp)))
            group = {"scheduler": scheduler, "dag-processor": [db.binary, "dag-processor"]}
        c = Cluster(
            Path(tmp) / "daemons",
            nodes=("m1", "m2"),
            cluster=f"b{uuid.uuid4().hex[:6]}",
            settings={
                **DAEMON_SETTINGS,
                "backend": "postgres",
                "max_fast_failures": "10",
                "airflow.prewarm": "true" if prewarm else "false",
            },
            command=() if group else tuple(scheduler),
            components=group,
            env=db.env(),
        )
        try:
            c.start_all()
            values = []
            for _ in range(runs):
                try:
                    values.append(one_run(c, db, scenario, prewarm))
                except AssertionError:
                    print(c.dump_logs(), file=sys.stderr)
                    raise
                time.sleep(1.0)
            return values
        finally:
            c.stop_all(timeout=40)


if __name__ == "__main__":
    sys.exit(main())
