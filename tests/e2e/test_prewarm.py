"""Hot standby ([airflow] prewarm) with the real Airflow 2.11.2 on PostgreSQL.

The standby keeps a pre-warmed `airflow scheduler` waiting; promotion hands it the start.
Checked: the promoted process is the warm one, it really schedules (task instances of the
`tock` DAG succeed through the LocalExecutor), its DB sessions carry the new epoch's
PGAPPNAME; a PostgreSQL restart while it waits is harmless; a reloaded configuration
re-warms it; never two schedulers heartbeating, never two child trees.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, EnvSampler, alive, cluster_processes, keeper_trees, wait_until
from .conftest import DAEMON_SETTINGS, AirflowDb, migrated_db
from .test_airflow import (
    JobSampler,
    assert_no_task_ran_twice,
    heartbeating,
    keeper_children,
    rows,
    successes,
)

pytestmark = pytest.mark.e2e

SETTINGS = {**DAEMON_SETTINGS, "airflow.prewarm": "true"}


def cluster_for(db: AirflowDb, root: Path, backend: str) -> Cluster:
    return Cluster(
        root / "daemons",
        nodes=("m1", "m2"),
        cluster=f"pw{uuid.uuid4().hex[:6]}",
        settings={**SETTINGS, "backend": backend},
        command=(db.binary, "scheduler", "--skip-serve-logs"),
        env=db.env(),
    )


@pytest.fixture
def warm_pair(airflow_db: AirflowDb, tmp_path: Path) -> Iterator[Cluster]:
    c = cluster_for(airflow_db, tmp_path, "postgres")
    yield c
    c.stop_all(timeout=40)
    wait_until(lambda: not cluster_processes(c.cluster), 20, "no Airflow process left")


def events(c: Cluster, node: str, name: str) -> list[dict[str, Any]]:
    """The daemon's JSON log events called `name`."""
    path = c.root / f"{node}.log"
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if f'"{name}"' in line:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                out.append(record)
    return out


def warm_pid(c: Cluster, node: str, after: int = 0, timeout: float = 90) -> int:
    """The pid of `node`'s pre-warmed scheduler once ready (the ready event number > after)."""
    ready = wait_until(
        lambda: len(events(c, node, "prewarm_ready")) > after and events(c, node, "prewarm_ready"),
        timeout,
        f"{node}'s scheduler pre-warmed",
        0.2,
    )
    pid: int = ready[-1]["pid"]
    return pid


def leader_then_standby(c: Cluster, db: AirflowDb) -> int:
    """m1 leads (cold: nobody was warm yet), m2 pre-warms; the warm pid."""
    c.start("m1")
    assert wait_until(lambda: heartbeating(db.dsn), 90, "m1's scheduler", 0.2) == "m1"
    c.start("m2")
    return warm_pid(c, "m2")


def app_names(dsn: str) -> set[str]:
    return {r[0] for r in rows(dsn, "SELECT application_name FROM pg_stat_activity")}


def task_states(dsn: str) -> list[tuple[Any, ...]]:
    sql = "SELECT dag_id, state, hostname, count(*) FROM task_instance GROUP BY 1, 2, 3"
    return rows(dsn, sql)


def test_promoted_warm_scheduler_schedules(warm_pair: Cluster, airflow_db: AirflowDb) -> None:
    c, db = warm_pair, airflow_db
    with EnvSampler(c.cluster) as procs, JobSampler(db.dsn, c.cluster) as jobs:
        pid = leader_then_standby(c, db)
        t0 = time.monotonic()
        c.signal("m1", signal.SIGKILL)
        assert wait_until(lambda: heartbeating(db.dsn, {"m1"}), 60, "m2's scheduler", 0.05)
        took = time.monotonic() - t0
        (keeper,) = [k for k, (node, _) in keeper_trees(c.cluster).items() if node == "m2"]
        assert pid in keeper_children(keeper), "the promoted scheduler is the pre-warmed one"
        # Its DB sessions carry the new epoch (PGAPPNAME set by GO, after the warm-up).
        prefix = f"failover:{c.cluster}:m2:"
        names = wait_until(
            lambda: {
                n for n in app_names(db.dsn) if n.startswith(prefix) and n[len(prefix) :].isdigit()
            },
            30,
            "the promoted scheduler's DB sessions",
        )
        assert {int(n[len(prefix) :]) for n in names} == {2}, names  # m1 had epoch 1
        # It really schedules: task instances succeed through the executor on m2.
        try:
            wait_until(lambda: successes(db.dsn, "m2") >= 2, 90, "two successful tasks on m2", 0.5)
        except AssertionError as err:
            raise AssertionError(f"{err}; task instances: {task_states(db.dsn)}") from None
    procs.assert_clean()
    jobs.assert_clean()
    assert_no_task_ran_twice(db, killed="m1")
    print(f"\nprewarm: kill -9 leader -> warm m2 heartbeating {took:.2f} s", file=sys.stderr)


def test_postgres_restart_while_warm_is_harmless(pg_factory: Any, tmp_path: Path) -> None:
    """Local election, PostgreSQL metadata DB restarted under the waiting warm scheduler: the
    same process is promoted afterwards and works (it held no connection to go stale)."""
    server = pg_factory()
    db = migrated_db(server, tmp_path)
    c = cluster_for(db, tmp_path, "local")
    try:
        with EnvSampler(c.cluster) as procs, JobSampler(db.dsn, c.cluster) as jobs:
            pid = leader_then_standby(c, db)
            server.restart()
            time.sleep(2.0)
            assert alive(pid), "the warm process survives the restart"
            assert wait_until(lambda: heartbeating(db.dsn), 90, "m1 again after the restart")
            c.signal("m1", signal.SIGKILL)
            assert wait_until(lambda: heartbeating(db.dsn, {"m1"}), 60, "m2's scheduler", 0.1)
            (keeper,) = [k for k, (node, _) in keeper_trees(c.cluster).items() if node == "m2"]
            assert pid in keeper_children(keeper)
            wait_until(lambda: successes(db.dsn, "m2") >= 1, 90, "a successful task on m2", 0.5)
            assert not events(c, "m2", "prewarm_cold")
        procs.assert_clean()
        jobs.assert_clean()
    finally:
        c.stop_all(timeout=40)
        wait_until(lambda: not cluster_processes(c.cluster), 20, "no Airflow process left")


def test_reloaded_configuration_rewarms(airflow_db: AirflowDb, tmp_path: Path) -> None:
    db = airflow_db
    c = cluster_for(db, tmp_path, "postgres")
    config = tmp_path / "failover.toml"
    config.write_text("backoff_initial_seconds = 1\n")
    c.env["FAILOVER_CONFIG"] = str(config)
    try:
        first = leader_then_standby(c, db)
        config.write_text("backoff_initial_seconds = 2\n")
        c.signal("m2", signal.SIGHUP)
        restart = wait_until(
            lambda: events(c, "m2", "prewarm_restart"), 30, "a re-warm after the reload"
        )
        assert restart[0]["reason"] == "configuration reloaded"
        second = warm_pid(c, "m2", after=1)
        assert second != first
        wait_until(lambda: not alive(first), 10, "the old warm process gone")
    finally:
        c.stop_all(timeout=40)
        wait_until(lambda: not cluster_processes(c.cluster), 20, "no Airflow process left")
