"""Real Airflow 3.3.2: `airflow scheduler` and `airflow dag-processor` as one leader-only group
under two candidates on PostgreSQL, an `airflow api-server --apps execution` outside the
controller (one shared JWT secret). Fault: kill -9 of the leader's daemon. The new leader's
SchedulerJob and DagProcessorJob heartbeat, tasks keep succeeding, and at no sample do two
nodes' SchedulerJob or DagProcessorJob rows heartbeat at once.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, EnvSampler, cluster_processes, keeper_trees, wait_until
from .conftest import DAEMON_SETTINGS, AirflowDb, api_server, migrated_db
from .test_airflow import JobSampler, keeper_children, rows, running_jobs, successes
from .test_prewarm import events, warm_pid

pytestmark = pytest.mark.e2e


def heartbeating(dsn: str, job_type: str, exclude: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
    found = rows(
        dsn,
        "SELECT hostname FROM job WHERE job_type = %s AND state = 'running' "
        "AND latest_heartbeat > now() - interval '3 seconds' ORDER BY id DESC LIMIT 1",
        (job_type,),
    )
    return found[0][0] if found and found[0][0] not in exclude else None


@pytest.fixture
def airflow3_db(pg_server: Any, tmp_path: Path) -> Iterator[AirflowDb]:
    db = migrated_db(pg_server, tmp_path, major=3)
    with api_server(db, tmp_path):
        yield db


def make_group(db: AirflowDb, root: Path, prewarm: bool) -> Cluster:
    return Cluster(
        root / "daemons",
        nodes=("m1", "m2"),
        cluster=f"e2e{uuid.uuid4().hex[:6]}",
        settings={
            **DAEMON_SETTINGS,
            "backend": "postgres",
            "airflow.prewarm": "true" if prewarm else "false",
        },
        components={
            "scheduler": [db.binary, "scheduler", "--skip-serve-logs"],
            "dag-processor": [db.binary, "dag-processor"],
        },
        env=db.env(),
    )


@pytest.fixture(params=[False, True], ids=["cold", "prewarm"])
def group(airflow3_db: AirflowDb, tmp_path: Path, request: Any) -> Iterator[Cluster]:
    c = make_group(airflow3_db, tmp_path, request.param)
    yield c
    c.stop_all(timeout=40)
    wait_until(lambda: not cluster_processes(c.cluster), 20, "no Airflow process left")


@pytest.fixture
def cold_group(airflow3_db: AirflowDb, tmp_path: Path) -> Iterator[Cluster]:
    c = make_group(airflow3_db, tmp_path, False)
    yield c
    c.stop_all(timeout=40)
    wait_until(lambda: not cluster_processes(c.cluster), 20, "no Airflow process left")


def test_kill9_leader_daemon_moves_the_group(group: Cluster, airflow3_db: AirflowDb) -> None:
    db = airflow3_db
    with (
        EnvSampler(group.cluster) as procs,
        JobSampler(db.dsn, group.cluster) as schedulers,
        JobSampler(db.dsn, group.cluster, "DagProcessorJob") as processors,
    ):
        group.start_all()
        leader = wait_until(lambda: heartbeating(db.dsn, "SchedulerJob"), 120, "a scheduler", 0.2)
        assert (
            wait_until(lambda: heartbeating(db.dsn, "DagProcessorJob"), 120, "a dag-processor", 0.2)
            == leader
        )
        wait_until(lambda: successes(db.dsn, leader) >= 1, 120, "tasks on the leader", 0.5)
        standby = next(n for n in group.nodes if n != leader)
        prewarm = group.settings["airflow.prewarm"] == "true"
        warm = warm_pid(group, standby) if prewarm else None
        t0 = time.monotonic()
        group.signal(leader, signal.SIGKILL)
        new = wait_until(
            lambda: heartbeating(db.dsn, "SchedulerJob", {leader}), 60, "the new scheduler", 0.1
        )
        took = time.monotonic() - t0
        assert new == standby
        if warm is not None:  # the promoted scheduler is the pre-warmed process
            assert cluster_processes(group.cluster).get(warm, {}).get("node") == standby
            assert not events(group, standby, "prewarm_cold")
        wait_until(
            lambda: heartbeating(db.dsn, "DagProcessorJob", {leader}) == new,
            60,
            "the new dag-processor",
            0.2,
        )
        assert running_jobs(db.dsn, leader) == 0  # release_orphans on Airflow 3 too
        before = successes(db.dsn, new)
        wait_until(lambda: successes(db.dsn, new) > before, 90, "tasks on the new leader", 0.5)
    procs.assert_clean()
    schedulers.assert_clean()
    processors.assert_clean()
    assert took < 30, took
    mode = "prewarm" if warm else "cold"
    print(f"\nAirflow 3 kill -9 daemon -> new scheduler heartbeat ({mode}): {took:.2f} s")


def dag_processor_pid(c: Cluster, node: str) -> int:
    """The `airflow dag-processor` main process of `node`'s group (a child of its keeper);
    0 while there is none."""
    for keeper, (owner, _) in keeper_trees(c.cluster).items():
        if owner != node:
            continue
        for pid in keeper_children(keeper):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"dag-processor" in f.read():
                        return pid
            except OSError:
                continue
    return 0


def test_hung_dag_processor_is_restarted_alone_then_graceful_handover(
    cold_group: Cluster, airflow3_db: AirflowDb
) -> None:
    c, db = cold_group, airflow3_db
    with (
        EnvSampler(c.cluster) as procs,
        JobSampler(db.dsn, c.cluster) as schedulers,
        JobSampler(db.dsn, c.cluster, "DagProcessorJob") as processors,
    ):
        c.start_all()
        leader = wait_until(lambda: heartbeating(db.dsn, "DagProcessorJob"), 120, "dag-proc", 0.2)
        hung = wait_until(lambda: dag_processor_pid(c, leader), 30, "its pid", 0.2)
        wait_until(lambda: heartbeating(db.dsn, "SchedulerJob") == leader, 120, "scheduler", 0.2)
        scheduler_jobs = rows(db.dsn, "SELECT id FROM job WHERE job_type = 'SchedulerJob'")
        os.kill(hung, signal.SIGSTOP)  # its DagProcessorJob heartbeat stops (threshold 10 s)
        t0 = time.monotonic()
        wait_until(
            lambda: any("component dag-processor" in s for s in c.sentences(leader)),
            60,
            "the hang verdict on the dag-processor",
            0.5,
        )
        wait_until(
            lambda: (pid := dag_processor_pid(c, leader)) != hung and pid,
            60,
            "a new dag-processor",
            0.2,
        )
        wait_until(
            lambda: heartbeating(db.dsn, "DagProcessorJob") == leader, 90, "its heartbeat", 0.2
        )
        took = time.monotonic() - t0
        # The scheduler was left alone: no new SchedulerJob row.
        assert rows(db.dsn, "SELECT id FROM job WHERE job_type = 'SchedulerJob'") == scheduler_jobs
        # Graceful: SIGTERM of the leader daemon hands the whole group over.
        c.signal(leader, signal.SIGTERM)
        assert c.procs[leader].wait(timeout=60) == 0
        new = wait_until(
            lambda: heartbeating(db.dsn, "SchedulerJob", {leader}), 90, "the new scheduler", 0.2
        )
        wait_until(
            lambda: heartbeating(db.dsn, "DagProcessorJob", {leader}) == new,
            90,
            "the new dag-processor",
            0.2,
        )
        before = successes(db.dsn, new)
        wait_until(lambda: successes(db.dsn, new) > before, 90, "tasks on the new leader", 0.5)
    procs.assert_clean()
    schedulers.assert_clean()
    processors.assert_clean()
    print(f"\nAirflow 3 hung dag-processor -> its new heartbeat: {took:.2f} s")
