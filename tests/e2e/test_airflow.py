"""Real `airflow scheduler` (2.11.2) supervised by two candidates on PostgreSQL.

Faults: kill -9 of the leader's daemon, SIGSTOP of the leader's scheduler (hang), graceful
stop. Each time a new scheduler heartbeats, no task runs twice for one logical date, and at
no sample do live schedulers of two nodes heartbeat at once.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from ..harness import Cluster, EnvSampler, Periodic, cluster_processes, keeper_trees, wait_until
from .conftest import DAEMON_SETTINGS, AirflowDb

pytestmark = pytest.mark.e2e


class JobSampler(Periodic):
    """Every 100 ms: fresh running SchedulerJob (or `job_type`) rows whose node still has live
    processes."""

    label = "one live scheduler heartbeating"

    def __init__(self, dsn: str, cluster: str, job_type: str = "SchedulerJob") -> None:
        super().__init__(interval=0.1)
        self.cluster = cluster
        self.dsn = dsn
        self.job_type = job_type
        self.conn: Any = None

    def check(self) -> Any:
        try:
            if self.conn is None:
                self.conn = psycopg2.connect(self.dsn, connect_timeout=2)
                self.conn.autocommit = True
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT DISTINCT hostname FROM job WHERE job_type = %s "
                    "AND state = 'running' AND latest_heartbeat > now() - interval '2.5 seconds'",
                    (self.job_type,),
                )
                fresh = {r[0] for r in cur.fetchall()}
        except psycopg2.Error:
            self.finish()  # the server restarts: no sample until it is back
            return self.SKIP
        both = fresh & {p["node"] for p in cluster_processes(self.cluster).values()}
        return f"heartbeating {sorted(both)}" if len(both) > 1 else None

    def finish(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@pytest.fixture
def candidates(airflow_db: AirflowDb, tmp_path: Path) -> Iterator[Cluster]:
    cluster = f"e2e{uuid.uuid4().hex[:6]}"
    c = Cluster(
        tmp_path / "daemons",
        nodes=("m1", "m2"),
        cluster=cluster,
        settings={**DAEMON_SETTINGS, "backend": "postgres"},
        command=(airflow_db.binary, "scheduler", "--skip-serve-logs"),
        env=airflow_db.env(),
    )
    yield c
    c.stop_all(timeout=40)
    wait_until(lambda: not cluster_processes(cluster), 20, "no Airflow process left")


def keeper_children(keeper: int) -> list[int]:
    with open(f"/proc/{keeper}/task/{keeper}/children") as f:
        return [int(p) for p in f.read().split()]


def rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def heartbeating(dsn: str, exclude: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
    found = rows(
        dsn,
        "SELECT hostname FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' "
        "AND latest_heartbeat > now() - interval '2 seconds' ORDER BY id DESC LIMIT 1",
    )
    return found[0][0] if found and found[0][0] not in exclude else None


def successes(dsn: str, hostname: str) -> int:
    """Successful task instances of the `tock` DAG (runs independent of each other)."""
    sql = (
        "SELECT count(*) FROM task_instance WHERE dag_id = 'tock' AND state = 'success' "
        "AND hostname = %s"
    )
    return int(rows(dsn, sql, (hostname,))[0][0])


def running_jobs(dsn: str, hostname: str) -> int:
    sql = (
        "SELECT count(*) FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' "
        "AND hostname = %s"
    )
    return int(rows(dsn, sql, (hostname,))[0][0])


def scheduler_job_ids(dsn: str) -> set[int]:
    return {r[0] for r in rows(dsn, "SELECT id FROM job WHERE job_type = 'SchedulerJob'")}


def assert_no_task_ran_twice(db: AirflowDb, killed: str | None = None) -> None:
    """No `tick` run executed twice. Except one: the run whose task was running when the
    scheduler of `killed` was killed (its process died with the tree) is reset by the new
    scheduler's orphan check and runs once more, on another scheduler."""
    runs: dict[str, list[str]] = {}
    lines = db.records.read_text().splitlines() if db.records.exists() else []
    for line in lines:
        run, _, node = line.partition(" ")
        runs.setdefault(run, []).append(node)
    doubled = {run: nodes for run, nodes in runs.items() if len(nodes) > 1}
    retried = {
        str(run): int(n)
        for run, n in rows(
            db.dsn,
            "SELECT run_id, try_number FROM task_instance WHERE dag_id = 'tick' AND try_number > 1",
        )
    }
    if killed is None:
        assert not doubled, f"tasks ran twice: {doubled}"
        assert retried == {}, retried
        return
    assert len(retried) <= 1 and all(n == 2 for n in retried.values()), retried
    for run, nodes in doubled.items():
        assert run in retried and nodes[0] == killed and len(nodes) == 2, (run, nodes)


def leader_ready(c: Cluster, db: AirflowDb, exclude: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    node: str = wait_until(
        lambda: heartbeating(db.dsn, exclude), 90, "a heartbeating scheduler", 0.2
    )
    wait_until(
        lambda: db.records.exists() and db.records.read_text().strip(), 90, "a task run", 0.5
    )
    return node


def test_kill9_leader_daemon(candidates: Cluster, airflow_db: AirflowDb) -> None:
    with (
        EnvSampler(candidates.cluster) as procs,
        JobSampler(airflow_db.dsn, candidates.cluster) as jobs,
    ):
        candidates.start_all()
        leader = leader_ready(candidates, airflow_db)
        t0 = time.monotonic()
        candidates.signal(leader, signal.SIGKILL)
        new = wait_until(
            lambda: heartbeating(airflow_db.dsn, {leader}), 60, "the standby's scheduler", 0.1
        )
        took = time.monotonic() - t0
        assert new != leader
        # [airflow] release_orphans: the dead scheduler's job row is failed before the new
        # one starts (Airflow alone would wait until its heartbeat is stale, then up to
        # orphaned_tasks_check_interval), so its orphaned tasks are reset at once.
        assert running_jobs(airflow_db.dsn, leader) == 0
        # A `tick` task running at the kill stays "running" until Airflow sees the dead job's
        # heartbeat stale at its next orphan check (orphaned_tasks_check_interval, 300 s), and
        # `tick` runs one at a time: the independent `tock` runs show the new scheduler works.
        wait_until(lambda: successes(airflow_db.dsn, new) >= 1, 60, "tasks on the new leader", 0.5)
    procs.assert_clean()
    jobs.assert_clean()
    assert_no_task_ran_twice(airflow_db, killed=leader)
    assert took < 30, took
    print(f"\nkill -9 daemon -> new scheduler heartbeat: {took:.2f} s", file=sys.stderr)


def test_hung_scheduler_is_killed_and_restarted(candidates: Cluster, airflow_db: AirflowDb) -> None:
    with (
        EnvSampler(candidates.cluster) as procs,
        JobSampler(airflow_db.dsn, candidates.cluster) as jobs,
    ):
        candidates.start_all()
        leader = leader_ready(candidates, airflow_db)
        before = scheduler_job_ids(airflow_db.dsn)
        (keeper,) = [
            k for k, (node, _) in keeper_trees(candidates.cluster).items() if node == leader
        ]
        scheduler = min(keeper_children(keeper))  # the keeper's own child: the scheduler
        os.kill(scheduler, signal.SIGSTOP)
        t0 = time.monotonic()
        wait_until(
            lambda: any("killing the child" in s for s in candidates.sentences(leader)),
            30,
            "the hang verdict",
        )
        # A new scheduler job (same node after a restart, or the standby) heartbeats again.
        wait_until(
            lambda: (
                heartbeating(airflow_db.dsn) is not None
                and scheduler_job_ids(airflow_db.dsn) - before
            ),
            60,
            "a new scheduler job heartbeating",
            0.2,
        )
        took = time.monotonic() - t0
    procs.assert_clean()
    jobs.assert_clean()
    assert_no_task_ran_twice(airflow_db, killed=leader)
    print(f"\nhung scheduler -> new scheduler heartbeat: {took:.2f} s", file=sys.stderr)


def test_graceful_stop_hands_over(candidates: Cluster, airflow_db: AirflowDb) -> None:
    with (
        EnvSampler(candidates.cluster) as procs,
        JobSampler(airflow_db.dsn, candidates.cluster) as jobs,
    ):
        candidates.start_all()
        leader = leader_ready(candidates, airflow_db)
        t0 = time.monotonic()
        candidates.signal(leader, signal.SIGTERM)
        assert candidates.procs[leader].wait(timeout=60) == 0
        new = wait_until(
            lambda: heartbeating(airflow_db.dsn, {leader}), 60, "the standby's scheduler", 0.1
        )
        took = time.monotonic() - t0
        assert new != leader
    procs.assert_clean()
    jobs.assert_clean()
    assert_no_task_ran_twice(airflow_db)
    print(f"\ngraceful stop -> new scheduler heartbeat: {took:.2f} s", file=sys.stderr)
