"""The controller's own tables in MySQL / MariaDB, created and migrated idempotently.

Safe when several daemons start at once: DDL runs under a named lock. Columns as in
PostgreSQL's, plus `fenced_epoch`. Never touches Airflow's tables.
"""

from __future__ import annotations

import contextlib
import math
import re

from failover.backends.mysql.session import Session
from failover.errors import BackendUnavailable
from failover.keeper.proof import mysql_lock_name

# Every table: (columns in order, primary key). Types speak both MySQL 8 and MariaDB 10.3+;
# DATETIME(6) in UTC (each session sets time_zone = '+00:00').
TABLES: dict[str, tuple[list[tuple[str, str]], str]] = {
    "cluster": (
        [
            ("cluster", "VARCHAR(191) NOT NULL"),
            ("epoch", "BIGINT NOT NULL DEFAULT 0"),
            ("leader", "VARCHAR(191) NULL"),
            ("paused", "BOOLEAN NOT NULL DEFAULT FALSE"),
            ("switchover_to", "VARCHAR(191) NULL"),
            ("switchover_from", "VARCHAR(191) NULL"),
            ("switchover_at", "DATETIME(6) NULL"),
            ("renewed_at", "DATETIME(6) NULL"),
            ("server_started", "DATETIME(6) NULL"),
            ("lease_seconds", "DOUBLE NULL"),
            ("switchover_result", "TEXT NULL"),
            # Every keeper lock of an epoch up to this one is proven free (MySQL only: the
            # server cannot list named locks portably, so fencing asks for each epoch after it).
            ("fenced_epoch", "BIGINT NOT NULL DEFAULT 0"),
        ],
        "cluster",
    ),
    "member": (
        [
            ("cluster", "VARCHAR(191) NOT NULL"),
            ("node", "VARCHAR(191) NOT NULL"),
            ("role", "VARCHAR(64) NOT NULL"),
            ("epoch", "BIGINT NOT NULL"),
            # the group's components and health (`status`); was VARCHAR(64), widened in place
            ("child_state", "VARCHAR(500) NOT NULL"),
            ("child_pid", "INT NULL"),
            ("version", "VARCHAR(64) NOT NULL"),
            ("sentence", "VARCHAR(500) NOT NULL DEFAULT ''"),
            ("heartbeat_at", "DATETIME(6) NOT NULL"),
        ],
        "cluster, node",
    ),
    "history": (
        [
            ("cluster", "VARCHAR(191) NOT NULL"),
            ("epoch", "BIGINT NOT NULL"),
            ("node", "VARCHAR(191) NOT NULL"),
            ("reason", "TEXT NOT NULL"),
            ("started_at", "DATETIME(6) NOT NULL"),
            ("ended_at", "DATETIME(6) NULL"),
            ("end_reason", "TEXT NULL"),
        ],
        "cluster, epoch",
    ),
}


def tables(prefix: str) -> dict[str, str]:
    """Quoted table names (the prefix is validated `[a-z_]`)."""
    return {name: f"`{prefix}{name}`" for name in TABLES}


def create_statements(prefix: str) -> list[str]:
    out = []
    for name, (columns, key) in TABLES.items():
        body = ", ".join(f"`{c}` {t}" for c, t in columns)
        out.append(
            f"CREATE TABLE IF NOT EXISTS `{prefix}{name}` ({body}, PRIMARY KEY ({key})) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )
    return out


def ensure_schema(session: Session, prefix: str) -> None:
    """Create the tables and add missing columns, serialized across daemons by a named lock.

    `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` is MariaDB-only: columns are compared with
    information_schema instead, which both servers have."""
    name = mysql_lock_name(f"failover:schema:{prefix}")
    wait = max(1, math.floor(session.timings.call_limit / 2))
    got = session.query("SELECT GET_LOCK(%s, %s)", (name, wait))
    if not got or got[0][0] != 1:
        raise BackendUnavailable("another daemon is creating the failover tables: try again")
    try:
        for statement in create_statements(prefix):
            session.query(statement)
        for table, (columns, _) in TABLES.items():
            rows = session.query(
                "SELECT COLUMN_NAME, CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                (f"{prefix}{table}",),
            )
            have = {str(r[0]).lower(): r[1] for r in rows}
            for column, kind in columns:
                if column not in have:
                    session.query(f"ALTER TABLE `{prefix}{table}` ADD COLUMN `{column}` {kind}")
                elif _narrower(have[column], kind):
                    session.query(f"ALTER TABLE `{prefix}{table}` MODIFY `{column}` {kind}")
    finally:
        with contextlib.suppress(BackendUnavailable):
            session.query("DO RELEASE_LOCK(%s)", (name,))


def _narrower(length: object, kind: str) -> bool:
    """Whether a VARCHAR column of `length` characters is shorter than `kind` declares."""
    wanted = re.match(r"VARCHAR\((\d+)\)", kind)
    return wanted is not None and isinstance(length, int) and length < int(wanted.group(1))
