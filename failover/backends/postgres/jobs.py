"""Airflow's `job` table on PostgreSQL: the scheduler's rows, and the release of dead
schedulers' rows before ours starts. Read-only but for that one UPDATE; works with the
Airflow 2.7+ and 3.x `job` table shape.
"""

from __future__ import annotations

from collections.abc import Callable

from failover.airflow.health import JobRow
from failover.backends.postgres.session import Session, SessionTimings
from failover.errors import BackendUnavailable

JOB_COLUMNS = {"id", "job_type", "state", "hostname", "latest_heartbeat"}

RELEASE_SQL = (
    "WITH base AS (SELECT coalesce(max(id), 0) AS id FROM job), "
    "released AS (UPDATE job SET state = 'failed' WHERE job_type = 'SchedulerJob' "
    "AND state = 'running' AND id <= (SELECT id FROM base) RETURNING id) "
    "SELECT (SELECT id FROM base), (SELECT count(*) FROM released)"
)


def _denied(err: BackendUnavailable) -> bool:
    import psycopg2.errors

    return isinstance(err.__cause__, psycopg2.errors.InsufficientPrivilege)


class JobTable:
    """`job` rows of SchedulerJobs, on a session of its own."""

    def __init__(
        self,
        dsn: str,
        cluster: str,
        node: str,
        timeout: float,
        hostname: str | None,
        on_warning: Callable[[str], None],
        password: Callable[[], str] | None = None,
        release_orphans: Callable[[int], None] | None = None,
        lease_seconds: float = 30.0,
    ) -> None:
        # The lease sets tcp_user_timeout (lease / 2): a read on a silent network must give
        # up well before the keeper's self-fence deadline, which the next renew extends.
        self.session = Session(
            dsn,
            f"failover:{cluster}:{node}:health",
            SessionTimings(lease_seconds, timeout),
            False,
            on_warning,
            password,
        )
        self.hostname = hostname
        self.warn = on_warning
        self.usable: bool | None = None  # None: not checked yet
        # Called with the number of dead schedulers' job rows marked failed by baseline().
        self.release_orphans = release_orphans

    def _check_schema(self) -> bool:
        if self.usable is None:
            rows = self.session.query(  # the `job` table the search_path resolves to
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('job') "
                "AND attnum > 0 AND NOT attisdropped"
            )
            missing = JOB_COLUMNS - {str(r[0]) for r in rows}
            self.usable = not missing
            if missing:
                self.warn(
                    f"Airflow's job table is missing or unknown (no {', '.join(sorted(missing))}): "
                    "scheduler health falls back to process liveness"
                )
        return self.usable

    def baseline(self) -> int:
        """The highest job id now, taken just before our scheduler starts; every SchedulerJob
        still `running` up to it belongs to a scheduler that is provably gone (fenced, or
        our own previous child whose whole tree the keeper saw end). With `release_orphans`
        those rows are marked failed in the same statement, as Airflow itself would once
        their heartbeat is stale: its startup orphan check then adopts or resets their
        tasks at once instead of after `orphaned_tasks_check_interval` (300 s)."""
        if not self._check_schema():
            raise BackendUnavailable("no usable Airflow job table")
        if self.release_orphans is not None:
            try:
                base, released = self.session.query(RELEASE_SQL)[0]
            except BackendUnavailable as err:
                if not _denied(err):
                    raise
                self.warn(
                    "cannot mark dead schedulers' job rows failed (GRANT UPDATE (state) ON job "
                    "to this role, see deploy/postgres/grants.sql): their tasks wait for "
                    "Airflow's orphan check"
                )
                self.release_orphans = None
            else:
                if released:
                    self.release_orphans(int(released))
                return int(base)
        rows = self.session.query("SELECT coalesce(max(id), 0) FROM job")
        return int(rows[0][0])

    def newest(self, after_id: int) -> JobRow | None:
        if not self._check_schema():
            raise BackendUnavailable("no usable Airflow job table")
        sql = (
            "SELECT id, hostname, EXTRACT(EPOCH FROM now() - latest_heartbeat)::float8 FROM job "
            "WHERE job_type = 'SchedulerJob' AND state = 'running' AND id > %s"
        )
        params: tuple[object, ...] = (after_id,)
        if self.hostname:
            sql += " AND hostname = %s"
            params = (after_id, self.hostname)
        rows = self.session.query(sql + " ORDER BY id DESC LIMIT 1", params)
        if not rows:
            return None
        job_id, hostname, age = rows[0]
        return JobRow(int(job_id), str(hostname), float(age) if age is not None else 1e9)

    def close(self) -> None:
        self.session.close()
