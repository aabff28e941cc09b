"""The PostgreSQL dialect of the metadata DB: member tables, Airflow's `job` rows and the
older-epoch session sweep, each on a session of its own."""

from __future__ import annotations

from collections.abc import Callable

from failover import log
from failover.airflow.health import JobSource
from failover.backends.postgres.fence import OlderEpochSweep
from failover.backends.postgres.jobs import JobTable
from failover.backends.postgres.members import PostgresMembers
from failover.config import Settings
from failover.interfaces import MetadataDB


def warn(text: str) -> None:
    log.get().warning("backend_warning", warning=text)


def password_for(settings: Settings, dsn: str) -> Callable[[], str] | None:
    """With `[postgres] iam_auth`, a provider of fresh RDS IAM tokens for this DSN's host."""
    if not settings.postgres.iam_auth:
        return None
    from failover.aws import IamTokens

    return IamTokens.for_dsn(dsn, settings.aws.region).password


class PostgresMetadata(MetadataDB):
    def __init__(self, settings: Settings, dsn: str) -> None:
        self.settings = settings
        self.dsn = dsn
        self.store: PostgresMembers | None = None

    def members(self) -> PostgresMembers:
        if self.store is None:
            s = self.settings
            self.store = PostgresMembers(
                self.dsn,
                s.cluster,
                s.node,
                s.table_prefix,
                s.lease_seconds,
                s.backend_timeout_seconds,
                warn,
                password_for(s, self.dsn),
            )
        return self.store

    def jobs(self, hostname: str | None, on_released: Callable[[int], None] | None) -> JobSource:
        s = self.settings
        return JobTable(
            self.dsn,
            s.cluster,
            s.node,
            s.backend_timeout_seconds,
            hostname,
            lambda text: log.get().warning("health_warning", warning=text),
            password_for(s, self.dsn),
            on_released,
            s.lease_seconds,
        )

    def sweep(self) -> Callable[[int], int]:
        return OlderEpochSweep(self.members().session, self.settings.cluster)
