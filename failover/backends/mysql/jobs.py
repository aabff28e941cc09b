"""Airflow's `job` table on MySQL / MariaDB: the scheduler's rows, and the release of dead
schedulers' rows before ours starts. Read-only but for that one UPDATE; works with the
Airflow 2.7+ and 3.x `job` table shape.
"""

from __future__ import annotations

from collections.abc import Callable

from failover.airflow.health import JobRow
from failover.backends.mysql.session import DENIED, Session, SessionTimings, error_code
from failover.errors import BackendUnavailable

JOB_COLUMNS = {"id", "job_type", "state", "hostname", "latest_heartbeat"}

RELEASE_SQL = (
    "UPDATE job SET state = 'failed' WHERE job_type = 'SchedulerJob' AND state = 'running' "
    "AND id <= %s"
)


class JobTable:
    """`job` rows of SchedulerJobs, on a session of its own. MySQL has no UPDATE ...
    RETURNING: the baseline id is read first, then only rows up to it are released."""

    def __init__(
        self,
        dsn: str,
        timeout: float,
        hostname: str | None,
        on_warning: Callable[[str], None],
        password: Callable[[], str] | None = None,
        release_orphans: Callable[[int], None] | None = None,
        lease_seconds: float = 30.0,
    ) -> None:
        self.session = Session(
            dsn, SessionTimings(lease_seconds, timeout), False, on_warning, password
        )
        self.hostname = hostname
        self.warn = on_warning
        self.usable: bool | None = None  # None: not checked yet
        self.release_orphans = release_orphans

    def _check_schema(self) -> bool:
        if self.usable is None:
            rows = self.session.query(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'job'"
            )
            missing = JOB_COLUMNS - {str(r[0]).lower() for r in rows}
            self.usable = not missing
            if missing:
                self.warn(
                    f"Airflow's job table is missing or unknown (no {', '.join(sorted(missing))}): "
                    "scheduler health falls back to process liveness"
                )
        return self.usable

    def baseline(self) -> int:
        """The highest job id now; with `release_orphans`, every SchedulerJob still `running`
        up to it is marked failed (its scheduler is provably gone), as on PostgreSQL."""
        if not self._check_schema():
            raise BackendUnavailable("no usable Airflow job table")
        base = int(self.session.query("SELECT COALESCE(MAX(id), 0) FROM job")[0][0])
        if self.release_orphans is not None:
            try:
                released = int(self.session.query(RELEASE_SQL, (base,))[0][0])
            except BackendUnavailable as err:
                if error_code(err.__cause__) not in DENIED:
                    raise
                self.warn(
                    "cannot mark dead schedulers' job rows failed (GRANT UPDATE (state) ON job "
                    "to this user, see deploy/mysql/grants.sql): their tasks wait for "
                    "Airflow's orphan check"
                )
                self.release_orphans = None
            else:
                if released:
                    self.release_orphans(released)
        return base

    def newest(self, after_id: int) -> JobRow | None:
        if not self._check_schema():
            raise BackendUnavailable("no usable Airflow job table")
        sql = (
            "SELECT id, hostname, TIMESTAMPDIFF(MICROSECOND, latest_heartbeat, NOW(6)) / 1e6 "
            "FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' AND id > %s"
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
