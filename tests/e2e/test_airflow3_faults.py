"""Real Airflow 3.3.2, one pre-warmed two-candidate group through three faults in a row: kill -9
of the leader's daemon while a 15 s task runs on it (the task is reset at once and runs again on
the new leader, never on two hosts at once), SIGSTOP of the new leader's daemon, and
`failover switchover --to` back. Never two SchedulerJob or DagProcessorJob rows heartbeating;
the dag-processor starts only after the scheduler's first job row.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from ..harness import Cluster, EnvSampler, cluster_processes, wait_until
from .conftest import AirflowDb
from .test_airflow import JobSampler, rows, successes
from .test_airflow3 import (  # noqa: F401 (airflow3_db: a fixture)
    airflow3_db,
    dag_processor_pid,
    make_group,
)
from .test_prewarm import events, warm_pid

pytestmark = pytest.mark.e2e


def heartbeating(dsn: str, job_type: str, exclude: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
    """The node of the newest running `job_type` row that heartbeat in the last 15 s (a
    loaded machine delays heartbeats; the samplers keep their strict window), unless excluded."""
    found = rows(
        dsn,
        "SELECT hostname FROM job WHERE job_type = %s AND state = 'running' "
        "AND latest_heartbeat > now() - interval '15 seconds' ORDER BY id DESC LIMIT 1",
        (job_type,),
    )
    return found[0][0] if found and found[0][0] not in exclude else None


def execute(dsn: str, sql: str) -> int:
    """Run one statement; the rows it changed."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
            return int(cur.rowcount)
    finally:
        conn.close()


def slow_records(db: AirflowDb) -> list[tuple[str, int, str, float]]:
    """(start|end, try number, node, wall time) written by the `slow` DAG's task."""
    path = Path(f"{db.records}.slow")
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        word, try_number, node, at = line.split()
        out.append((word, int(try_number), node, float(at)))
    return out


def warmed(c: Cluster, node: str) -> int:
    """How often `node` has pre-warmed a scheduler so far."""
    return len(events(c, node, "prewarm_ready"))


def process_started(pid: int) -> float:
    """Wall time at which `pid` started (/proc: clock ticks since boot)."""
    with open(f"/proc/{pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def scheduler_started(db: AirflowDb, node: str) -> float:
    """Wall time of `node`'s first SchedulerJob row (same host: one clock)."""
    sql = (
        "SELECT extract(epoch FROM start_date) FROM job WHERE job_type = 'SchedulerJob' "
        "AND hostname = %s ORDER BY id LIMIT 1"
    )
    return float(rows(db.dsn, sql, (node,))[0][0])


def healthy_row(c: Cluster, node: str) -> str | None:
    """`node`'s line of the `failover status` table once its scheduler (HEALTH column) and its
    dag-processor (COMPONENTS) are both running and healthy."""
    done = c.cli("status", timeout=90)
    if done.returncode != 0:  # 1: no healthy leader (yet)
        assert done.returncode == 1 and "no healthy leader" in done.stdout, done.stderr
        return None
    head, *lines = done.stdout.splitlines()[1:]
    assert head.split()[-2:] == ["HEALTH", "COMPONENTS"], done.stdout
    for line in lines:
        cells = line.split()
        if cells and cells[0] == node and cells[5:8:2] == ["running", "healthy"]:
            side = " ".join(cells[8:])
            return line if re.fullmatch(r"dag-processor running \d+ healthy", side) else None
    return None


@pytest.fixture
def warm_group(airflow3_db: AirflowDb, tmp_path: Path) -> Iterator[Cluster]:  # noqa: F811
    c = make_group(airflow3_db, tmp_path, True)
    # Hang verdicts are test_airflow3.py's subject: here generous thresholds (the controller's
    # for the scheduler, Airflow's for the dag-processor), so a loaded machine's late
    # heartbeats do not turn these faults into crash loops.
    c.settings["airflow.health_threshold_seconds"] = "20"
    c.env["AIRFLOW__DAG_PROCESSOR__HEALTH_CHECK_THRESHOLD"] = "30"
    yield c
    c.stop_all(timeout=40)
    wait_until(lambda: not cluster_processes(c.cluster), 20, "no Airflow process left")


def kill9_while_a_task_runs(c: Cluster, db: AirflowDb, leader: str, standby: str) -> float:
    """The leader dies with the `slow` task running on it: the new leader's takeover resets it
    (release_orphans) and it runs again, try 2, on the standby, after the first try's tree died."""
    unpause = "UPDATE dag SET is_paused = false WHERE dag_id = 'slow'"
    wait_until(lambda: execute(db.dsn, unpause), 120, "the slow DAG parsed", 0.5)
    wait_until(lambda: slow_records(db), 240, "the slow task started", 0.2)
    assert slow_records(db)[0][:3] == ("start", 1, leader)
    warm_pid(c, standby, after=0)
    killed_at = time.time()
    c.signal(leader, signal.SIGKILL)
    assert wait_until(lambda: heartbeating(db.dsn, "SchedulerJob", {leader}), 60, "new", 0.1)
    again = wait_until(
        lambda: [r for r in slow_records(db) if r[:2] == ("start", 2)], 90, "try 2", 0.2
    )
    assert again[0][2] == standby and again[0][3] > killed_at, slow_records(db)
    wait_until(
        lambda: ("end", 2, standby) in [r[:3] for r in slow_records(db)], 60, "try 2 end", 0.2
    )
    execute(db.dsn, "UPDATE dag SET is_paused = true WHERE dag_id = 'slow'")
    assert [r[:3] for r in slow_records(db)] == [
        ("start", 1, leader),
        ("start", 2, standby),
        ("end", 2, standby),
    ]
    ti = "SELECT try_number, hostname, state FROM {} WHERE dag_id = 'slow' ORDER BY try_number"
    wait_until(
        lambda: rows(db.dsn, ti.format("task_instance")) == [(2, standby, "success")],
        30,
        "try 2 succeeded",
        0.2,
    )
    assert [r[:2] for r in rows(db.dsn, ti.format("task_instance_history"))] == [(1, leader)]
    return again[0][3] - killed_at


@pytest.mark.timeout(900)  # ~2 min on an idle machine; several under a shared one's load
def test_orphaned_task_then_sigstop_then_switchover(
    warm_group: Cluster,
    airflow3_db: AirflowDb,  # noqa: F811
) -> None:
    c, db = warm_group, airflow3_db
    with (
        EnvSampler(c.cluster) as procs,
        JobSampler(db.dsn, c.cluster) as schedulers,
        JobSampler(db.dsn, c.cluster, "DagProcessorJob") as processors,
    ):
        c.start_all()
        a = wait_until(lambda: heartbeating(db.dsn, "SchedulerJob"), 120, "a scheduler", 0.2)
        b = next(n for n in c.nodes if n != a)
        wait_until(lambda: heartbeating(db.dsn, "DagProcessorJob") == a, 120, "a's dag", 0.2)
        assert process_started(dag_processor_pid(c, a)) > scheduler_started(db, a) - 0.1
        wait_until(lambda: successes(db.dsn, a) >= 1, 120, "tasks on the leader", 0.5)
        rerun = kill9_while_a_task_runs(c, db, a, b)
        c.procs[a].wait(timeout=30)
        a_warmed = warmed(c, a)
        c.start(a)
        wait_until(lambda: heartbeating(db.dsn, "DagProcessorJob", {a}) == b, 90, "b's dag", 0.2)

        # SIGSTOP of b's daemon: its keeper ends the group at the self-fence deadline, then
        # a (standby again, pre-warmed) takes over once b's lock session is gone.
        warm_pid(c, a, after=a_warmed)
        b_warmed = warmed(c, b)
        t0 = time.monotonic()
        c.signal(b, signal.SIGSTOP)
        got = wait_until(lambda: heartbeating(db.dsn, "SchedulerJob", {b}), 90, "a again", 0.1)
        stopped = time.monotonic() - t0
        assert got == a
        wait_until(lambda: heartbeating(db.dsn, "DagProcessorJob", {b}) == a, 90, "a's dag", 0.2)
        c.signal(b, signal.SIGCONT)
        before = successes(db.dsn, a)
        wait_until(lambda: successes(db.dsn, a) > before, 90, "tasks on a", 0.5)

        # Graceful switchover back to b, named.
        warm_pid(c, b, after=b_warmed)  # b re-warmed as a standby after its SIGCONT
        t0 = time.monotonic()
        done = c.cli("switchover", "--to", b, timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{a} -> {b}" in done.stdout
        got = wait_until(lambda: heartbeating(db.dsn, "SchedulerJob", {a}), 60, "b again", 0.1)
        switched = time.monotonic() - t0
        assert got == b
        wait_until(lambda: heartbeating(db.dsn, "DagProcessorJob", {a}) == b, 90, "b's dag", 0.2)
        before = successes(db.dsn, b)
        wait_until(lambda: successes(db.dsn, b) > before, 90, "tasks on b", 0.5)
        # `failover status` shows each component of the leader's group with its health.
        row = wait_until(lambda: healthy_row(c, b), 60, "b's group healthy in status", 0.5)
        assert row.split()[1] == "leader", row
    procs.assert_clean()
    schedulers.assert_clean()
    processors.assert_clean()
    print(
        f"\nAirflow 3: kill -9 -> orphaned task's try 2 starts {rerun:.2f} s; "
        f"SIGSTOP -> new scheduler {stopped:.2f} s; switchover -> {switched:.2f} s"
    )
