"""Real Airflow (2.11.2, or 3.3.2 with --airflow 3) under two candidates on PostgreSQL: time
from the fault to the new scheduler's first `job` row (its start_date = first heartbeat), DB
clock on both ends.

    python bench/airflow_takeover.py [--runs 5] [--prewarm off,on] [--airflow 3] [--append]
                                      (needs scripts/test's Airflow venvs)

On Airflow 3 the candidates run the group (scheduler + dag-processor) and an
`airflow api-server --apps execution` runs outside them (one shared JWT secret).

Scenarios: kill9 (leader daemon SIGKILLed), graceful (leader daemon SIGTERMed),
switchover (`failover switchover --to` the standby), hang (leader's scheduler SIGSTOPped;
health threshold 6 s, heartbeat every 1 s). graceful and switchover are also split in two:
the old scheduler's own shutdown (its stop sent -> its exit, seen by pidfd) and the gap
from its exit to the new scheduler's first job row (same host: one clock).
With prewarm on ([airflow] prewarm), each run waits until the standby's scheduler is
pre-warmed before the fault.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2

from bench.takeover import write_report
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


def main_scheduler(c: Cluster, node: str) -> int:
    """The pid of `node`'s `airflow scheduler` main process (not its executor's forks)."""
    for _, (owner, members) in keeper_trees(c.cluster).items():
        found = [p for p in members if owner == node and b"scheduler" in cmdline(p)]
        tops = [p for p in found if parent(p) not in found]
        if tops:
            return min(tops)
    raise AssertionError(f"no scheduler of {node}")


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def stop_sent_at(c: Cluster, node: str, after: float) -> float:
    """Wall time of `node`'s tick that began stepping down (switchover) after `after`."""

    def found() -> float | None:
        for line in (c.root / f"{node}.log").read_text(errors="replace").splitlines():
            if '"stepping down from epoch' not in line or "(switchover)" not in line:
                continue
            at = datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
            if at >= after:
                return at
        return None

    at: float = wait_until(found, 30, "the leader stepping down", 0.1)
    return at


def switchover(c: Cluster, to: str) -> str:
    """`failover switchover --to`; its error ("" when it handed over)."""
    cmd = [sys.executable, "-m", "failover", "switchover", "--to", to, *c.client_args()]
    done = subprocess.run(
        cmd, env={**os.environ, **c.env}, capture_output=True, text=True, timeout=120, check=False
    )
    return "" if done.returncode == 0 else (done.stdout + done.stderr).strip()


def one_run(c: Cluster, db: AirflowDb, scenario: str, prewarm: bool) -> tuple[float, ...]:
    """Seconds from the fault to the new scheduler's first job row; for graceful and
    switchover also (the old scheduler's shutdown, the gap after its exit)."""
    before = wait_until(lambda: newest_job(db.dsn), 120, "a running scheduler", 0.2)
    leader = before[1]
    if prewarm:
        wait_until(
            lambda: set(warm_processes(c.cluster).values()) - {leader},
            120,
            "a pre-warmed standby",
            0.1,
        )
    old = main_scheduler(c, leader) if scenario in ("graceful", "switchover") else 0
    watcher = threading.Thread(target=watch_exit, args=(old,), daemon=True)
    if old:
        watcher.start()
    fault_at, fault_wall = db_now(db.dsn), time.time()
    if scenario == "hang":
        (keeper,) = [k for k, (node, _) in keeper_trees(c.cluster).items() if node == leader]
        with open(f"/proc/{keeper}/task/{keeper}/children") as f:
            target = min(int(p) for p in f.read().split())
        os.kill(target, signal.SIGSTOP)
    elif scenario == "switchover":
        failed = switchover(c, next(n for n in c.nodes if n != leader))
        if failed:  # e.g. abandoned: the old group's shutdown outlasted the request
            print(f"switchover run not counted: {failed}", flush=True)
            watcher.join(timeout=60)
            exit_seen.pop(old, None)
            return ()
    else:
        c.signal(leader, signal.SIGKILL if scenario == "kill9" else signal.SIGTERM)
    new = wait_until(
        lambda: (j := newest_job(db.dsn)) and j[0] > before[0] and j, 120, "a new scheduler", 0.05
    )
    took = (new[2] - fault_at).total_seconds()
    if scenario in ("kill9", "graceful"):
        c.procs[leader].wait(timeout=60)
        c.start(leader)
    if not old:
        return (took,)
    watcher.join(timeout=60)
    exited = exit_seen.pop(old)
    stop_at = fault_wall if scenario == "graceful" else stop_sent_at(c, leader, fault_wall)
    return took, exited - stop_at, new[2].timestamp() - exited


exit_seen: dict[int, float] = {}


def watch_exit(pid: int) -> None:
    """Note the wall time at which `pid` exits (a thread blocked on its pidfd)."""
    fd = os.pidfd_open(pid)
    try:
        select.select([fd], [], [], 120)
        exit_seen[pid] = time.time()
    finally:
        os.close(fd)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scenarios", default="kill9,graceful,hang")
    p.add_argument("--prewarm", default="off", help="off, on, or off,on: [airflow] prewarm")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "airflow.md"))
    p.add_argument("--append", action="store_true", help="add the tables to --out")
    p.add_argument("--airflow", type=int, choices=(2, 3), default=2, help="major: 2.11.2, 3.3.2")
    p.add_argument(
        "--sides", default="dag-processor", help="Airflow 3: the group beside the scheduler"
    )
    p.add_argument("--keep-logs", default="", help="copy the daemons' logs into this directory")
    args = p.parse_args()
    server = PostgresServer()
    server.start()
    head = f"({os.cpu_count()} cores, lease 5 s, {time.strftime('%Y-%m-%d')})"
    version = AIRFLOW_VERSIONS[args.airflow][0]
    lines = [
        f"Real Airflow {version}, fault -> new scheduler's first job row, seconds {head}",
        "",
        "| scenario | prewarm | runs | min | median | max |",
        "|---|---|---|---|---|---|",
    ]
    split = [
        "",
        f"Real Airflow {version}, graceful hand-over split, seconds {head}: the old scheduler's "
        "shutdown (stop sent -> its exit), then the gap (its exit -> new scheduler's first "
        "job row)",
        "",
        "| scenario | prewarm | runs | shutdown min | median | max | gap min | median | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    try:
        for prewarm in args.prewarm.split(","):
            for scenario in args.scenarios.split(","):
                values = bench(
                    server,
                    scenario,
                    args.runs,
                    prewarm == "on",
                    args.airflow,
                    args.sides,
                    args.keep_logs,
                )
                lines.append(f"| {scenario} | {prewarm} | {len(values)} | {spread(values, 0)} |")
                print(lines[-1], flush=True)
                if len(values[0]) == 3:
                    split.append(
                        f"| {scenario} | {prewarm} | {len(values)} | {spread(values, 1)} | "
                        f"{spread(values, 2)} |"
                    )
                    print(split[-1], flush=True)
    finally:
        server.close()
    write_report(lines + (split if len(split) > 5 else []), args.out, args.append)
    return 0


def spread(values: list[tuple[float, ...]], i: int) -> str:
    """`min | median | max` of the `i`th figure of each run."""
    xs = [v[i] for v in values]
    return f"{min(xs):.2f} | {statistics.median(xs):.2f} | {max(xs):.2f}"


def bench(
    server: PostgresServer,
    scenario: str,
    runs: int,
    prewarm: bool,
    major: int = 2,
    sides: str = "dag-processor",
    keep_logs: str = "",
) -> list[tuple[float, ...]]:
    with tempfile.TemporaryDirectory(prefix="bench-af-") as tmp, contextlib.ExitStack() as stack:
        db = migrated_db(server, Path(tmp), major)
        scheduler = [db.binary, "scheduler", "--skip-serve-logs"]
        group = {}
        if major == 3:
            stack.enter_context(api_server(db, Path(tmp)))
            group = {"scheduler": scheduler}
            group.update({side: [db.binary, side] for side in filter(None, sides.split(","))})
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
            for _ in range(2 * runs):  # runs counted; a switchover not done is not
                if len(values) == runs:
                    break
                try:
                    values.append(one_run(c, db, scenario, prewarm))
                    if not values[-1]:
                        values.pop()
                        continue
                    runs_at = time.strftime("%H:%M:%S", time.gmtime())
                    numbers = " ".join(f"{v:.3f}" for v in values[-1])
                    print(f"{scenario} run: {numbers} (ended {runs_at} UTC)", flush=True)
                except AssertionError:
                    print(c.dump_logs(), file=sys.stderr)
                    raise
                time.sleep(1.0)
            return values
        finally:
            c.stop_all(timeout=40)
            if keep_logs:
                shutil.copytree(c.root, Path(keep_logs) / f"{scenario}-{c.cluster}")


if __name__ == "__main__":
    sys.exit(main())
