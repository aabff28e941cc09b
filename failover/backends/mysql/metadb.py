"""The MySQL / MariaDB dialect of the metadata DB: member tables, Airflow's `job` rows and
the older-epoch keeper sweep, each on a session of its own."""

from __future__ import annotations

from collections.abc import Callable

from failover import log
from failover.airflow.health import JobSource
from failover.backends.mysql.fence import OlderEpochSweep
from failover.backends.mysql.jobs import JobTable
from failover.backends.mysql.members import MySQLMembers
from failover.config import Settings
from failover.dsn import with_params
from failover.interfaces import MetadataDB


def warn(text: str) -> None:
    log.get().warning("backend_warning", warning=text)


def full_dsn(settings: Settings, dsn: str) -> str:
    """The DSN with `[mysql] ssl_ca` / `ssl_verify_identity` folded in (the keeper reads
    them from the DSN too)."""
    my = settings.mysql
    if not my.ssl_ca:
        return dsn
    verify = "true" if my.ssl_verify_identity else ""
    return with_params(dsn, ssl_ca=my.ssl_ca, ssl_verify_identity=verify)


def password_for(settings: Settings, dsn: str) -> Callable[[], str] | None:
    """With `[mysql] iam_auth`, a provider of fresh RDS IAM tokens for this DSN's host (RDS
    sends them with mysql_clear_password, which PyMySQL allows only over TLS: set ssl_ca)."""
    if not settings.mysql.iam_auth:
        return None
    from failover.aws import IamTokens

    return IamTokens.for_dsn(dsn, settings.aws.region).password


class MySQLMetadata(MetadataDB):
    def __init__(self, settings: Settings, dsn: str) -> None:
        self.settings = settings
        self.dsn = full_dsn(settings, dsn)
        self.store: MySQLMembers | None = None

    def members(self) -> MySQLMembers:
        if self.store is None:
            s = self.settings
            self.store = MySQLMembers(
                self.dsn,
                s.cluster,
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
            s.backend_timeout_seconds,
            hostname,
            lambda text: log.get().warning("health_warning", warning=text),
            password_for(s, self.dsn),
            on_released,
            s.lease_seconds,
        )

    def sweep(self) -> Callable[[int], int]:
        return OlderEpochSweep(self.members().query, self.settings.cluster)
