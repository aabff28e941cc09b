"""PostgreSQL / RDS election: a session advisory lock on a dedicated direct connection.

Epoch in `<prefix>cluster`, bumped inside the lock. Fencing waits for the keeper sessions
of older epochs to close (proof that their trees are dead) and terminates stragglers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import psycopg2
from psycopg2 import sql

from failover.backends.postgres.fence import older_sessions, terminate
from failover.backends.postgres.schema import ensure_schema
from failover.backends.postgres.session import Session, SessionTimings, lock_key, split_key
from failover.dsn import dsn_with_password
from failover.errors import BackendUnavailable
from failover.interfaces import ElectionBackend, FenceReport, LeaderInfo

HOLDER_SQL = """
SELECT l.pid, a.application_name, a.state,
       EXTRACT(EPOCH FROM now() - a.state_change)::float8 AS idle_for
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.objsubid = 1
  AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


# A standby's whole tick in one statement: try the lock and, for when it is taken, the leader,
# epoch and lease recorded and how long ago the leader last proved its lease (`renewed_at`,
# written by every renew). Only when that proof is older than the lease (or missing, or in
# the future: a server whose clock went back) is the holder read from pg_locks and
# pg_stat_activity (how long its session and its member heartbeat are quiet: a vanished
# host's session is terminated). Those views cost in proportion to the server's sessions and
# standbys poll every loop: the condition depends on the outer row alone and OFFSET 0 keeps
# the subquery whole, so PostgreSQL gates the scan off otherwise (a one-time filter: "never
# executed" in EXPLAIN ANALYZE). Whether the lock call runs before or after the scan does not
# matter: the holder columns are used only when the lock was not granted, so somebody else
# held it throughout.
POLL_SQL = (
    """
WITH attempt AS (SELECT pg_try_advisory_lock(%s) AS won),
c AS (SELECT leader, epoch, lease_seconds,
             EXTRACT(EPOCH FROM now() - renewed_at)::float8 AS silent
      FROM {t} WHERE cluster = %s)
SELECT a.won, h.pid, h.application_name, h.state, h.idle_for,
       (SELECT EXTRACT(EPOCH FROM now() - m.heartbeat_at)::float8 FROM {m} m
        WHERE m.cluster = %s AND m.node = substring(h.application_name from '[^:]*$')),
       c.lease_seconds, c.epoch, c.leader, c.silent
FROM attempt a
LEFT JOIN c ON true
LEFT JOIN LATERAL (SELECT * FROM ("""
    + HOLDER_SQL
    + """) AS hs
    WHERE NOT a.won
      AND (c.silent IS NULL OR c.silent < 0
           OR c.silent > GREATEST(%s::float8, COALESCE(c.lease_seconds, 0)))
    OFFSET 0
) AS h ON true
"""
)


class PostgresElection(ElectionBackend):
    """Leadership = holding `pg_try_advisory_lock(key)` on our own live session."""

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        cluster: str,
        node: str,
        lease_seconds: float,
        timeout: float,
        table_prefix: str,
        notify: bool = True,
        on_warning: Callable[[str], None] | None = None,
        password: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dsn = dsn
        self.cluster = cluster
        self.node = node
        self.lease = lease_seconds
        self.timeout = timeout
        self.clock = clock
        self.prefix = table_prefix
        self.key = lock_key(cluster)
        self.classid, self.objid = split_key(self.key)
        self.channel = f"failover:{cluster}"
        self.warn = on_warning or (lambda _: None)
        timings = SessionTimings(lease_seconds, timeout)
        self.password = password
        self.lock = Session(dsn, f"failover:{cluster}:{node}", timings, True, self.warn, password)
        self.notify = notify  # LISTEN on the lock session (no session of its own)
        self.listening: int | None = None  # the lock session generation that LISTENs
        self.held_generation: int | None = None  # lock held on this session generation
        self.schema_ready = False
        self.signal_warned = False
        self.previous_silent_for: float | None = None
        self.bumped_at = 0.0  # self.clock() once the epoch was taken
        self.server_changed = False
        self.fence_lease = lease_seconds  # the longer of ours and the previous leader's

    # -- helpers ----------------------------------------------------------------------------
    def _q(self, statement: Any, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        if not self.schema_ready:
            ensure_schema(self.lock, self.prefix)
            self.schema_ready = True
        return self.lock.query(statement, params)

    @property
    def _holding(self) -> bool:
        return self.held_generation is not None and self.held_generation == self.lock.generation

    def _table(self) -> sql.Identifier:
        return sql.Identifier(f"{self.prefix}cluster")

    def _we_hold(self) -> bool:
        rows = self._q(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
            "AND objid = %s AND objsubid = 1 AND granted AND pid = pg_backend_pid())",
            (self.classid, self.objid),
        )
        return bool(rows[0][0])

    def _terminate(self, pids: list[int]) -> int:
        return terminate(self._q, pids)

    # -- election ---------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        return self.campaign()[0]

    def campaign(self) -> tuple[bool, LeaderInfo | None]:
        """Try the lock; when it is taken, learn the leader and the epoch in the same
        statement (one statement a standby tick, where it took five), and look at the holder's
        session only when the leader has not proven its lease for a lease (POLL_SQL)."""
        if self._holding:
            return self.renew(), None
        self.held_generation = None
        rows = self._q(
            sql.SQL(POLL_SQL).format(m=sql.Identifier(f"{self.prefix}member"), t=self._table()),
            (self.key, self.cluster, self.cluster, self.classid, self.objid, self.lease),
        )
        won, recorded, epoch, leader, silent = rows[0][0], *rows[0][6:]
        if not won:
            lease = max(self.lease, float(recorded or 0.0))
            if silent is not None and 0.0 <= float(silent) <= lease:
                # The holder proved its lease within it: it is alive (the scan was skipped).
                return False, LeaderInfo(str(leader) if leader else None, int(epoch or 0))
            holders = [r[1:6] for r in rows if r[1] is not None]
            info = self._leader_info([h[:3] for h in holders], int(epoch or 0))
            if not self._fence_vanished_holder(holders, lease):
                return False, info
            if not self._q("SELECT pg_try_advisory_lock(%s)", (self.key,))[0][0]:
                return False, self.leader()
        self.held_generation = self.lock.generation
        return True, None

    def _fence_vanished_holder(self, holders: list[tuple[Any, ...]], lease: float) -> bool:
        """Terminate an idle holder whose lock session or member heartbeat is older than the
        lease (the longer of ours and the recorded one: a rolling restart may have given it a
        longer one): its host vanished or its daemon froze, and the session lingers. Asked
        only when its last renew is older than that lease too (POLL_SQL)."""
        for pid, _name, state, idle_for, heartbeat_age in holders:
            if state != "idle":
                continue
            quiet = max(idle_for or 0.0, heartbeat_age or 0.0)
            if quiet > self.lease and quiet > lease:
                return self._terminate([pid]) > 0
        return False

    def renew(self) -> bool:
        if not self._holding:
            # A new session (after a reconnect) holds no lock: leadership is lost.
            self.lock.connection()
            if not self._holding:
                self.held_generation = None
                return False
        if self._renew_and_record():
            return True
        self.held_generation = None
        return False

    def _renew_and_record(self) -> bool:
        """Prove we hold the lock and, in the same statement, record when (DB time).

        A proof that arrives later than one backend call may take is no proof: the
        statement_timeout bounds only the server's part of the call, and a slow network can
        stretch it up to tcp_user_timeout (half a lease). A leader whose renewals take that
        long cannot keep its child inside the lease, so it is told the backend is unreachable
        and steps down in time (the lock stays held until it releases it)."""
        started = self.clock()
        rows = self._q(
            sql.SQL(
                "WITH held AS (SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = %s AND objid = %s AND objsubid = 1 AND granted "
                "AND pid = pg_backend_pid()) AS ok), "
                "upd AS (UPDATE {t} SET renewed_at = now(), "
                "server_started = pg_postmaster_start_time() WHERE cluster = %s "
                "AND (SELECT ok FROM held) RETURNING 1) "
                "SELECT ok FROM held"
            ).format(t=self._table()),
            (self.classid, self.objid, self.cluster),
        )
        took = self.clock() - started
        if rows[0][0] and took > self.timeout:
            raise BackendUnavailable(
                f"PostgreSQL answered the renew after {took:.1f} s, more than "
                f"backend_timeout_seconds ({self.timeout:g} s)"
            )
        return bool(rows[0][0])

    def bump_epoch(self) -> int:
        if not (self._holding and self.lock.connected):  # a new session would hold nothing
            raise BackendUnavailable("lost the lock session before taking the epoch")
        rows = self._q(
            sql.SQL(
                "INSERT INTO {t} (cluster, epoch, leader, lease_seconds) VALUES (%s, 1, %s, %s) "
                "ON CONFLICT (cluster) DO UPDATE "
                "SET epoch = {t}.epoch + 1, leader = EXCLUDED.leader, "
                "lease_seconds = GREATEST({t}.lease_seconds, EXCLUDED.lease_seconds) "
                "RETURNING epoch, EXTRACT(EPOCH FROM now() - renewed_at)::float8, "
                "server_started IS NOT NULL "
                "AND server_started <> pg_postmaster_start_time(), lease_seconds"
            ).format(t=self._table()),
            (self.cluster, self.node, self.lease),
        )
        if not self._we_hold():
            raise BackendUnavailable("lost the lock while taking the epoch")
        # How long the previous leader has not proven its lease (None: never recorded).
        self.previous_silent_for = float(rows[0][1]) if rows[0][1] is not None else None
        self.bumped_at = self.clock()
        # Another server than the one the previous leader renewed on: a promoted replica (its
        # start time is old) whose replicated renewed_at may lag. Trust neither: wait a lease.
        self.server_changed = bool(rows[0][2])
        # An older child may run for its own leader's lease, which a rolling restart may have
        # set longer than ours: every fence wait uses the longest lease not yet fenced. The
        # row keeps that maximum until our fence is done, for a successor if we die first.
        self.fence_lease = float(rows[0][3])
        return int(rows[0][0])

    def fence(self, epoch: int, force: bool, sweep: bool = True) -> FenceReport:
        keepers, children = older_sessions(self._q, self.cluster, epoch)
        uptime = float(
            self._q("SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")[0][0]
        )
        lease = self.fence_lease
        fresh = uptime < lease
        silent = self._previous_silent_now()
        if self.server_changed and not force:
            return FenceReport(
                pending=len(keepers) or 1,
                wait_seconds=lease,
                detail="the database server changed since the last renew (failover or promoted "
                "replica): waiting one lease",
            )
        if silent is not None and silent > lease:
            # Its last proven renew is older than a lease: the old keeper's own deadline
            # (last renew + lease - margin) has passed, so its tree is dead or dying now.
            force = True
        if (keepers or fresh) and not force:
            why = (
                f"{len(keepers)} older keeper session(s) still open"
                if keepers
                else (f"server started {uptime:.1f} s ago: absence of keepers proves nothing yet")
            )
            wait = lease if keepers else lease - uptime
            return FenceReport(pending=len(keepers) or 1, wait_seconds=wait, detail=why)
        terminated = self._terminate(keepers + children)
        if terminated == len(keepers) + len(children):
            self._q(  # every older tree is gone: from now on only our lease counts
                sql.SQL(
                    "UPDATE {t} SET lease_seconds = %s WHERE cluster = %s AND epoch = %s"
                ).format(t=self._table()),
                (self.lease, self.cluster, epoch),
            )
            self.fence_lease = self.lease
        detail = f"terminated {terminated} older session(s)" if terminated else "no older sessions"
        return FenceReport(pending=0, terminated=terminated, detail=detail)

    def _previous_silent_now(self) -> float | None:
        """How long the previous leader has not proven its lease by now: its silence when the
        epoch was taken (DB clock) plus the time since (ours, counted from after that answer,
        so never more than the truth). Checked on every fence call, not only the first: a
        predecessor cut off just under a lease ago is waited for only until its lease ran out,
        not a whole lease more."""
        if self.previous_silent_for is None:
            return None
        return self.previous_silent_for + max(0.0, self.clock() - self.bumped_at)

    def release(self) -> None:
        if self._holding:
            try:
                self._q("SELECT pg_advisory_unlock(%s)", (self.key,))
            except BackendUnavailable:
                # A session lock lives as long as its session: end it (the child is proven
                # gone), or it would keep leadership for a member that stands by.
                self.lock.close()
                raise
            finally:
                self.held_generation = None
            if self.notify:
                with contextlib.suppress(BackendUnavailable):  # released: standbys also poll
                    self._q("SELECT pg_notify(%s, %s)", (self.channel, f"released {self.node}"))
        self.held_generation = None

    def member_present(self, node: str) -> bool:
        """Its daemon's lock session is connected to this database (a dead host's session
        lingers until keepalives or idle_session_timeout end it)."""
        rows = self._q(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s)",
            (f"failover:{self.cluster}:{node}",),
        )
        return bool(rows[0][0])

    def leader(self) -> LeaderInfo:
        holders = self._q(HOLDER_SQL, (self.classid, self.objid))
        rows = self._q(
            sql.SQL("SELECT epoch FROM {t} WHERE cluster = %s").format(t=self._table()),
            (self.cluster,),
        )
        return self._leader_info(holders, int(rows[0][0]) if rows else 0)

    @staticmethod
    def _leader_info(holders: list[tuple[Any, ...]], epoch: int) -> LeaderInfo:
        if not holders:
            return LeaderInfo(None, epoch)
        name = str(holders[0][1])
        return LeaderInfo(name.split(":")[2] if name.count(":") == 2 else name, epoch)

    def keeper_args(self) -> list[str]:
        return [
            "--pg-dsn-env",
            "FAILOVER_KEEPER_DSN",
            "--pg-channel",
            self.channel,
            "--pg-epoch-table",
            f"{self.prefix}cluster:{self.cluster}",
        ]

    def keeper_env(self) -> dict[str, str]:
        if self.password is None:
            return {"FAILOVER_KEEPER_DSN": self.dsn}
        return {"FAILOVER_KEEPER_DSN": dsn_with_password(self.dsn, self.password())}

    # -- wake-ups ---------------------------------------------------------------------------
    # The lock session LISTENs too: a new session (after a reconnect) listens to nothing, so
    # each generation LISTENs again. Only the daemon's loop thread uses the lock session, and
    # it calls these between ticks, when no statement is in flight on it.
    def watch_fd(self) -> int | None:
        """The lock session's socket, LISTENing; None when disabled or disconnected (the next
        tick's statement reconnects it: a reconnect here would only race the tick)."""
        if not self.notify or not self.lock.connected:
            return None
        if self.listening != self.lock.generation:
            try:
                self.lock.query(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            except BackendUnavailable:
                return None
            self.listening = self.lock.generation
        return self.lock.fileno()

    def poll_interval(self) -> float | None:
        """At once when a NOTIFY already came in with this tick's statements (psycopg2 takes
        it off the socket with their answers, so the socket alone would not say so)."""
        conn = self.lock.conn
        if self.notify and conn is not None and not conn.closed and conn.notifies:
            return 0.001
        return None

    def changed(self) -> bool:
        conn = self.lock.conn
        if not self.notify or conn is None or conn.closed:
            return False
        try:
            conn.poll()
        except psycopg2.Error:
            # The server ended the session (an admin, idle_session_timeout of a standby that
            # does not campaign, a restart): drop it; the next tick reconnects and knows.
            self.lock.close()
            return True
        if conn.notifies:
            conn.notifies.clear()
            return True
        return False

    def close(self) -> None:
        self.lock.close()
