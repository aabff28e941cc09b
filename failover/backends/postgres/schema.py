"""The controller's own tables in PostgreSQL, created and migrated idempotently.

Safe when several daemons start at once: DDL runs under a transaction advisory lock.
Never touches Airflow's tables.
"""

from __future__ import annotations

from psycopg2 import sql

from failover.backends.postgres.session import Session, lock_key
from failover.errors import BackendUnavailable

DDL = """
CREATE TABLE IF NOT EXISTS {cluster} (
    cluster text PRIMARY KEY,
    epoch bigint NOT NULL DEFAULT 0,
    leader text,
    paused boolean NOT NULL DEFAULT false,
    switchover_to text,
    switchover_from text,
    switchover_at timestamptz);
ALTER TABLE {cluster} ADD COLUMN IF NOT EXISTS renewed_at timestamptz;
ALTER TABLE {cluster} ADD COLUMN IF NOT EXISTS server_started timestamptz;
ALTER TABLE {cluster} ADD COLUMN IF NOT EXISTS lease_seconds float8;
ALTER TABLE {cluster} ADD COLUMN IF NOT EXISTS switchover_result text;
CREATE TABLE IF NOT EXISTS {member} (
    cluster text NOT NULL,
    node text NOT NULL,
    role text NOT NULL,
    epoch bigint NOT NULL,
    child_state text NOT NULL,
    child_pid integer,
    version text NOT NULL,
    sentence text NOT NULL DEFAULT '',
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster, node));
CREATE TABLE IF NOT EXISTS {history} (
    cluster text NOT NULL,
    epoch bigint NOT NULL,
    node text NOT NULL,
    reason text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    end_reason text,
    PRIMARY KEY (cluster, epoch));
"""


def tables(prefix: str) -> dict[str, sql.Identifier]:
    return {name: sql.Identifier(f"{prefix}{name}") for name in ("cluster", "member", "history")}


def ensure_schema(session: Session, prefix: str) -> None:
    """Create the tables if missing, serialized across daemons by an xact advisory lock."""
    ddl = sql.SQL(DDL).format(**tables(prefix))
    statement = sql.SQL("BEGIN; SELECT pg_advisory_xact_lock(%s); {}; COMMIT;").format(ddl)
    try:
        session.query(statement, (lock_key(f"schema:{prefix}"),))
    except BackendUnavailable:
        if session.connected:
            session.query("ROLLBACK")  # leave no aborted transaction behind
        raise
