"""Real `airflow scheduler` (2.11.2) supervised by two candidates on the mysql backend, with
its metadata DB on MariaDB 10.11 (`airflow db migrate` works there although Airflow does not
list MariaDB as supported; Airflow connects with mysql+pymysql://).

kill -9 of the leader's daemon: the standby's scheduler heartbeats, the dead one's job row is
released, and at no sample do schedulers of two nodes heartbeat at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from failover.dsn import mysql_connect_args

from ..harness import Cluster, EnvSampler, Periodic, cluster_processes, wait_until
from .conftest import DAEMON_SETTINGS, AirflowDb, airflow_binary

pytestmark = pytest.mark.e2e


class MySQLAirflowDb(AirflowDb):
    def env(self, **extra: str) -> dict[str, str]:
        env = super().env(**extra)
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.dsn.replace(
            "mysql://", "mysql+pymysql://", 1
        )
        return env


def rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = pymysql.connect(**mysql_connect_args(dsn), autocommit=True, connect_timeout=3)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


FRESH = (
    "SELECT DISTINCT hostname FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' "
    "AND latest_heartbeat > UTC_TIMESTAMP(6) - INTERVAL {s} SECOND"
)


class JobSampler(Periodic):
    """Every 100 ms: fresh running SchedulerJob rows whose node still has live processes."""

    label = "one live scheduler heartbeating"

    def __init__(self, dsn: str, cluster: str) -> None:
        super().__init__(interval=0.1)
        self.cluster = cluster
        self.dsn = dsn

    def check(self) -> Any:
        try:
            fresh = {r[0] for r in rows(self.dsn, FRESH.format(s="2.5"))}
        except pymysql.MySQLError:
            return self.SKIP
        both = fresh & {p["node"] for p in cluster_processes(self.cluster).values()}
        return f"heartbeating {sorted(both)}" if len(both) > 1 else None


@pytest.fixture
def mysql_airflow_db(my_server: Any, tmp_path: Path) -> MySQLAirflowDb:
    binary = airflow_binary()
    dsn = my_server.create_database(f"t_af_{uuid.uuid4().hex[:10]}")
    db = MySQLAirflowDb(binary, dsn, tmp_path / "airflow_home", tmp_path / "records.log")
    db.home.mkdir()
    done = subprocess.run(
        [binary, "db", "migrate"],
        env={**os.environ, **db.env()},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 and "No module named 'pymysql'" in done.stderr:
        pytest.fail("the Airflow venv lacks PyMySQL: run scripts/test", pytrace=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return db


@pytest.fixture
def candidates(mysql_airflow_db: MySQLAirflowDb, tmp_path: Path) -> Iterator[Cluster]:
    cluster = f"e2e{uuid.uuid4().hex[:6]}"
    c = Cluster(
        tmp_path / "daemons",
        nodes=("m1", "m2"),
        cluster=cluster,
        settings={**DAEMON_SETTINGS, "backend": "mysql"},  # the DSN: Airflow's own setting
        command=(mysql_airflow_db.binary, "scheduler", "--skip-serve-logs"),
        env=mysql_airflow_db.env(),
    )
    yield c
    c.stop_all(timeout=40)
    wait_until(lambda: not cluster_processes(cluster), 20, "no Airflow process left")


def heartbeating(dsn: str, exclude: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
    found = [r[0] for r in rows(dsn, FRESH.format(s="2")) if r[0] not in exclude]
    return found[0] if found else None


def test_kill9_leader_daemon_on_mariadb(
    candidates: Cluster, mysql_airflow_db: MySQLAirflowDb
) -> None:
    db = mysql_airflow_db
    with EnvSampler(candidates.cluster) as procs, JobSampler(db.dsn, candidates.cluster) as jobs:
        candidates.start_all()
        leader = wait_until(lambda: heartbeating(db.dsn), 90, "a heartbeating scheduler", 0.2)
        time.sleep(2.0)
        t0 = time.monotonic()
        candidates.signal(leader, signal.SIGKILL)
        new = wait_until(lambda: heartbeating(db.dsn, {leader}), 60, "the standby's scheduler", 0.1)
        took = time.monotonic() - t0
        assert new != leader
        running = rows(
            db.dsn,
            "SELECT count(*) FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' "
            "AND hostname = %s",
            (leader,),
        )
        assert running == [(0,)]  # release_orphans on MySQL
    procs.assert_clean()
    jobs.assert_clean()
    assert took < 30, took
    print(f"\nMariaDB: kill -9 daemon -> new scheduler heartbeat: {took:.2f} s", file=sys.stderr)
