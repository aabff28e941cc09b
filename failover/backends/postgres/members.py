"""Member heartbeats, leadership history and operator flags in the metadata DB.

Heartbeat times come from the database's `now()`, so ages do not depend on host clocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg2 import sql

from failover.backends.postgres.schema import ensure_schema, tables
from failover.backends.postgres.session import Session, SessionTimings
from failover.interfaces import ClusterFlags, MemberRecord, MemberState, MemberStore

UPSERT = (
    "INSERT INTO {m} (cluster, node, role, epoch, child_state, child_pid, version, sentence, "
    "heartbeat_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now()) "
    "ON CONFLICT (cluster, node) DO UPDATE SET role = EXCLUDED.role, "
    "epoch = EXCLUDED.epoch, child_state = EXCLUDED.child_state, "
    "child_pid = EXCLUDED.child_pid, version = EXCLUDED.version, "
    "sentence = EXCLUDED.sentence, heartbeat_at = now()"
)
FLAGS = (
    "SELECT paused, switchover_to, switchover_from, "
    "EXTRACT(EPOCH FROM now() - switchover_at)::float8, switchover_result "
    "FROM {c} WHERE cluster = %s"
)


class PostgresMembers(MemberStore):
    """The `<prefix>member`, `<prefix>history` and `<prefix>cluster` tables of one cluster."""

    def __init__(
        self,
        dsn: str,
        cluster: str,
        node: str,
        prefix: str,
        lease_seconds: float,
        timeout: float,
        on_warning: Callable[[str], None] | None = None,
        password: Callable[[], str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.t = tables(prefix)
        self.session = Session(
            dsn,
            f"failover:{cluster}:{node}:store",
            SessionTimings(lease_seconds, timeout),
            False,
            on_warning,
            password,
        )
        self.schema_ready = False

    def _q(self, statement: Any, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.schema_ready:
            ensure_schema(self.session, self.prefix)
            self.schema_ready = True
        return self.session.query(statement, params)

    def heartbeat(self, state: MemberState) -> None:
        self._q(sql.SQL(UPSERT).format(m=self.t["member"]), state.row(self.cluster))

    one_statement_heartbeat = True

    def heartbeat_and_flags(self, state: MemberState) -> ClusterFlags:
        """One statement: a data-modifying CTE runs to completion whether or not the query
        reads it; no cluster row (nobody took an epoch or set a flag yet): default flags."""
        rows = self._q(
            sql.SQL(f"WITH beat AS ({UPSERT}) {FLAGS}").format(
                m=self.t["member"], c=self.t["cluster"]
            ),
            (*state.row(self.cluster), self.cluster),
        )
        return ClusterFlags.from_row(rows[0]) if rows else ClusterFlags()

    def members(self) -> list[MemberRecord]:
        rows = self._q(
            sql.SQL(
                "SELECT node, role, epoch, child_state, child_pid, version, "
                "EXTRACT(EPOCH FROM now() - heartbeat_at)::float8, sentence "
                "FROM {m} WHERE cluster = %s ORDER BY node"
            ).format(m=self.t["member"]),
            (self.cluster,),
        )
        return [MemberRecord.from_row(r) for r in rows]

    def begin_term(self, epoch: int, node: str, reason: str) -> None:
        self._q(
            sql.SQL(
                "INSERT INTO {h} (cluster, epoch, node, reason) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (cluster, epoch) DO NOTHING"
            ).format(h=self.t["history"]),
            (self.cluster, epoch, node, reason),
        )

    def end_term(self, epoch: int, reason: str) -> None:
        self._q(
            sql.SQL(
                "UPDATE {h} SET ended_at = now(), end_reason = %s "
                "WHERE cluster = %s AND epoch = %s AND ended_at IS NULL"
            ).format(h=self.t["history"]),
            (reason, self.cluster, epoch),
        )

    def history(self, limit: int = 20) -> list[tuple[Any, ...]]:
        return self._q(
            sql.SQL(
                "SELECT epoch, node, reason, started_at, ended_at, end_reason FROM {h} "
                "WHERE cluster = %s ORDER BY epoch DESC LIMIT %s"
            ).format(h=self.t["history"]),
            (self.cluster, limit),
        )

    def flags(self) -> ClusterFlags:
        rows = self._q(sql.SQL(FLAGS).format(c=self.t["cluster"]), (self.cluster,))
        if not rows:
            return ClusterFlags()
        return ClusterFlags.from_row(rows[0])

    def _update(self, assignments: str, params: tuple[Any, ...]) -> None:
        self._q(
            sql.SQL(
                "INSERT INTO {c} (cluster) VALUES (%s) ON CONFLICT (cluster) DO NOTHING; "
                "UPDATE {c} SET " + assignments + " WHERE cluster = %s"
            ).format(c=self.t["cluster"]),
            (self.cluster, *params, self.cluster),
        )

    def set_paused(self, paused: bool) -> None:
        self._update("paused = %s", (paused,))

    def request_switchover(self, from_node: str | None, to_node: str | None) -> None:
        self._update(
            "switchover_to = %s, switchover_from = %s, switchover_at = now(), "
            "switchover_result = NULL",
            (to_node or "", from_node or ""),
        )

    def clear_switchover(self, result: str = "") -> None:
        self._update(
            "switchover_to = NULL, switchover_from = NULL, switchover_at = now(), "
            "switchover_result = %s",
            (result or None,),
        )

    def close(self) -> None:
        self.session.close()
