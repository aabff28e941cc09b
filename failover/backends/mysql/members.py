"""Member heartbeats, leadership history and operator flags in MySQL / MariaDB.

Heartbeat times come from the database's `NOW(6)` (UTC session), so ages do not depend on
host clocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from failover.backends.mysql.schema import ensure_schema, tables
from failover.backends.mysql.session import Session, SessionTimings
from failover.errors import BackendUnavailable
from failover.interfaces import ClusterFlags, MemberRecord, MemberState, MemberStore

AGE = "TIMESTAMPDIFF(MICROSECOND, {col}, NOW(6)) / 1e6"
# What the flags read also sees of the leader lock when the store sits beside the election
# (`Partner`): its holder, the leader and epoch recorded, the age of the last renew, the lease.
GLANCE = f", IS_USED_LOCK(%s), leader, epoch, {AGE.format(col='renewed_at')}, lease_seconds"


class Partner(Protocol):
    """The election this store sits beside (the MySQL backend, one DSN for both)."""

    lock_name: str
    lock: Session

    def leads(self) -> bool:
        """Whether it holds leadership on its lock session now."""

    def glanced(self, row: tuple[Any, ...] | None) -> None:
        """What this tick's flags read saw of the leader lock (GLANCE's columns)."""


class MySQLMembers(MemberStore):
    """The `<prefix>member`, `<prefix>history` and `<prefix>cluster` tables of one cluster."""

    def __init__(
        self,
        dsn: str,
        cluster: str,
        prefix: str,
        lease_seconds: float,
        timeout: float,
        on_warning: Callable[[str], None] | None = None,
        password: Callable[[], str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.t = tables(prefix)
        self.own = Session(dsn, SessionTimings(lease_seconds, timeout), False, on_warning, password)
        self.schema_ready = False
        self.partner: Partner | None = None

    @property
    def session(self) -> Session:
        """Beside an election: its lock session while it does not lead (a standby holds one
        session fewer; ours is closed), and while it leads until ours is open again (see
        `flags`); else our own, so a leader's store statement cut by the watchdog does not
        end the lock's session."""
        partner = self.partner
        if partner is None or (partner.leads() and self.own.connected):
            return self.own
        if not partner.leads():
            self.own.close()
        return partner.lock

    def query(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        session = self.session
        if not self.schema_ready:
            ensure_schema(session, self.prefix)
            self.schema_ready = True
        return session.query(statement, params)

    def heartbeat(self, state: MemberState) -> None:
        self.query(
            f"INSERT INTO {self.t['member']} (cluster, node, role, epoch, child_state, "
            "child_pid, version, sentence, heartbeat_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, NOW(6)) ON DUPLICATE KEY UPDATE "
            "role = VALUES(role), epoch = VALUES(epoch), child_state = VALUES(child_state), "
            "child_pid = VALUES(child_pid), version = VALUES(version), "
            "sentence = VALUES(sentence), heartbeat_at = NOW(6)",
            state.row(self.cluster),
        )

    def members(self) -> list[MemberRecord]:
        rows = self.query(
            "SELECT node, role, epoch, child_state, child_pid, version, "
            f"{AGE.format(col='heartbeat_at')}, sentence "
            f"FROM {self.t['member']} WHERE cluster = %s ORDER BY node",
            (self.cluster,),
        )
        return [MemberRecord.from_row(r) for r in rows]

    def begin_term(self, epoch: int, node: str, reason: str) -> None:
        self.query(
            f"INSERT IGNORE INTO {self.t['history']} (cluster, epoch, node, reason, started_at) "
            "VALUES (%s, %s, %s, %s, NOW(6))",
            (self.cluster, epoch, node, reason),
        )

    def end_term(self, epoch: int, reason: str) -> None:
        self.query(
            f"UPDATE {self.t['history']} SET ended_at = NOW(6), end_reason = %s "
            "WHERE cluster = %s AND epoch = %s AND ended_at IS NULL",
            (reason, self.cluster, epoch),
        )

    def history(self, limit: int = 20) -> list[tuple[Any, ...]]:
        return self.query(
            "SELECT epoch, node, reason, started_at, ended_at, end_reason "
            f"FROM {self.t['history']} WHERE cluster = %s ORDER BY epoch DESC LIMIT %s",
            (self.cluster, limit),
        )

    def flags(self) -> ClusterFlags:
        """The operator flags; beside an election, with a glance at its lock that spares a
        standby its campaign statements while a live leader holds it."""
        partner = self.partner
        if partner is not None:
            partner.glanced(None)  # a glance is this tick's or none
            if partner.leads() and not self.own.connected:
                # A new leader's own session is opened at the start of its next tick, not on
                # its takeover's path (its first statements go on the lock session).
                with contextlib.suppress(BackendUnavailable):
                    self.own.connection()
        rows = self.query(
            "SELECT paused, switchover_to, switchover_from, "
            f"{AGE.format(col='switchover_at')}, switchover_result"
            f"{GLANCE if partner is not None else ''} "
            f"FROM {self.t['cluster']} WHERE cluster = %s",
            (partner.lock_name, self.cluster) if partner is not None else (self.cluster,),
        )
        if not rows:
            return ClusterFlags()
        if partner is not None:
            partner.glanced(rows[0][5:])
        return ClusterFlags.from_row(rows[0][:5])

    def _update(self, assignments: str, params: tuple[Any, ...]) -> None:
        self.query(f"INSERT IGNORE INTO {self.t['cluster']} (cluster) VALUES (%s)", (self.cluster,))
        self.query(
            f"UPDATE {self.t['cluster']} SET {assignments} WHERE cluster = %s",
            (*params, self.cluster),
        )

    def set_paused(self, paused: bool) -> None:
        self._update("paused = %s", (paused,))

    def request_switchover(self, from_node: str | None, to_node: str | None) -> None:
        self._update(
            "switchover_to = %s, switchover_from = %s, switchover_at = NOW(6), "
            "switchover_result = NULL",
            (to_node or "", from_node or ""),
        )

    def clear_switchover(self, result: str = "") -> None:
        self._update(
            "switchover_to = NULL, switchover_from = NULL, switchover_at = NOW(6), "
            "switchover_result = %s",
            (result or None,),
        )

    def close(self) -> None:
        self.own.close()
