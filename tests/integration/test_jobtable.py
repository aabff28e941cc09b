"""Reading Airflow's `job` table on a real PostgreSQL (the table made by hand, Airflow's shape)."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

from failover.backends.postgres.jobs import JobTable
from failover.errors import BackendUnavailable

pytestmark = pytest.mark.integration

JOB_DDL = """
CREATE TABLE job (
    id serial PRIMARY KEY, dag_id varchar(250), state varchar(20), job_type varchar(30),
    start_date timestamptz, end_date timestamptz, latest_heartbeat timestamptz,
    executor_class varchar(500), hostname varchar(500), unixname varchar(1000))
"""


def execute(dsn: str, sql: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def test_rows_after_the_baseline_by_hostname(pg_dsn: str) -> None:
    execute(pg_dsn, JOB_DDL)
    execute(
        pg_dsn,
        "INSERT INTO job (job_type, state, hostname, latest_heartbeat) VALUES "
        "('SchedulerJob', 'running', 'old', now() - interval '50 seconds')",
    )
    warnings: list[str] = []
    table = JobTable(pg_dsn, "c", "n", 2.0, "me", warnings.append)
    try:
        base = table.baseline()
        assert base == 1 and table.newest(base) is None
        execute(
            pg_dsn,
            "INSERT INTO job (job_type, state, hostname, latest_heartbeat) VALUES "
            "('SchedulerJob', 'running', 'other', now()), "
            "('SchedulerJob', 'running', 'me', now() - interval '3 seconds'), "
            "('LocalTaskJob', 'running', 'me', now())",
        )
        row = table.newest(base)
        assert row is not None and row.job_id == 3 and row.hostname == "me"
        assert 2.5 < row.heartbeat_age < 10
        assert warnings == []
    finally:
        table.close()


def test_unknown_schema_warns_and_falls_back(pg_dsn: str) -> None:
    execute(pg_dsn, "CREATE TABLE job (id serial PRIMARY KEY, something text)")
    warnings: list[str] = []
    table = JobTable(pg_dsn, "c", "n", 2.0, None, warnings.append)
    try:
        with pytest.raises(BackendUnavailable, match="no usable Airflow job table"):
            table.baseline()
        assert len(warnings) == 1 and "falls back to process liveness" in warnings[0]
    finally:
        table.close()


def states(dsn: str) -> dict[int, str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, state FROM job ORDER BY id")
            return {int(i): str(s) for i, s in cur.fetchall()}
    finally:
        conn.close()


def test_baseline_releases_dead_schedulers_jobs(pg_dsn: str) -> None:
    execute(pg_dsn, JOB_DDL)
    execute(
        pg_dsn,
        "INSERT INTO job (job_type, state, hostname, latest_heartbeat) VALUES "
        "('SchedulerJob', 'running', 'old', now()), "  # the fenced leader's: fresh heartbeat
        "('SchedulerJob', 'success', 'older', now()), "
        "('LocalTaskJob', 'running', 'old', now())",  # a task's job: not ours to judge
    )
    released: list[int] = []
    table = JobTable(pg_dsn, "c", "n", 2.0, "me", [].append, release_orphans=released.append)
    try:
        assert table.baseline() == 3 and released == [1]
        assert states(pg_dsn) == {1: "failed", 2: "success", 3: "running"}
        execute(
            pg_dsn,
            "INSERT INTO job (job_type, state, hostname, latest_heartbeat) "
            "VALUES ('SchedulerJob', 'running', 'me', now())",
        )
        assert table.baseline() == 4 and released == [1, 1]  # our own dead child's row
        assert table.baseline() == 4 and released == [1, 1]  # nothing left: no call
    finally:
        table.close()


def test_release_without_the_grant_warns_once_and_still_gives_the_baseline(pg_dsn: str) -> None:
    execute(pg_dsn, JOB_DDL)
    execute(
        pg_dsn,
        "INSERT INTO job (job_type, state, hostname, latest_heartbeat) "
        "VALUES ('SchedulerJob', 'running', 'old', now())",
    )
    role = f"ro_{uuid.uuid4().hex[:8]}"
    execute(pg_dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT SELECT ON job TO {role}")
    info = psycopg2.extensions.parse_dsn(pg_dsn)
    dsn = f"host={info['host']} port={info['port']} dbname={info['dbname']} user={role} password=pw"
    warnings: list[str] = []
    released: list[int] = []
    table = JobTable(dsn, "c", "n", 2.0, None, warnings.append, release_orphans=released.append)
    try:
        assert table.baseline() == 1 and table.baseline() == 1
        assert released == [] and states(pg_dsn) == {1: "running"}
        assert len(warnings) == 1 and "GRANT UPDATE (state) ON job" in warnings[0]
        assert "pw" not in warnings[0]
    finally:
        table.close()
        execute(pg_dsn, f"REVOKE ALL ON job FROM {role}; DROP ROLE {role}")
