"""MySQL / MariaDB election: `GET_LOCK(name, 0)` on a dedicated direct connection.

Epoch in `<prefix>cluster`, bumped while holding the lock. Fencing waits for the keeper locks
of older epochs to be freed (proof that their trees are dead) and KILLs stragglers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from failover.backends.mysql.fence import kill, older_keepers
from failover.backends.mysql.schema import ensure_schema, tables
from failover.backends.mysql.session import Session, SessionTimings
from failover.backends.mysql.wake import ReleaseWatch
from failover.dsn import with_params
from failover.errors import BackendUnavailable
from failover.interfaces import ElectionBackend, FenceReport, LeaderInfo
from failover.keeper.proof import mysql_lock_name

SERVER_CLOCK_SLACK = 2.0  # seconds: server_started comes from whole-second Uptime


class MySQLElection(ElectionBackend):
    """Leadership = holding the named lock `failover:<cluster>` on our own live session."""

    name = "mysql"

    def __init__(
        self,
        dsn: str,
        cluster: str,
        node: str,
        lease_seconds: float,
        timeout: float,
        table_prefix: str,
        on_warning: Callable[[str], None] | None = None,
        password: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wake: bool = True,
    ) -> None:
        self.dsn = dsn
        self.wake = wake
        self.cluster = cluster
        self.node = node
        self.lease = lease_seconds
        self.timeout = timeout
        self.clock = clock
        self.prefix = table_prefix
        self.table = tables(table_prefix)["cluster"]
        self.lock_name = mysql_lock_name(f"failover:{cluster}")
        self.warn = on_warning or (lambda _: None)
        self.password = password
        self.lock = Session(dsn, SessionTimings(lease_seconds, timeout), True, self.warn, password)
        self.lock.on_connect = self._take_member_lock
        self.wake_name = mysql_lock_name(f"failover:{cluster}:wake")
        self.wake_generation: int | None = None  # the wake lock held on this generation
        self.watch = ReleaseWatch(
            dsn, self.wake_name, SessionTimings(lease_seconds, timeout), self.warn, password
        )
        self.held_generation: int | None = None  # lock held on this session generation
        self.schema_ready = False
        self.previous_silent_for: float | None = None
        self.bumped_at = 0.0
        self.server_changed = False
        self.fence_lease = lease_seconds
        self.fenced_epoch = 0
        self.glance: tuple[float, tuple[Any, ...]] | None = None  # (when, GLANCE's columns)

    # -- helpers ----------------------------------------------------------------------------
    def _q(self, statement: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        if not self.schema_ready:
            ensure_schema(self.lock, self.prefix)
            self.schema_ready = True
        return self.lock.query(statement, params)

    def member_lock(self, node: str) -> str:
        return mysql_lock_name(f"failover:{self.cluster}:{node}")

    def _take_member_lock(self, session: Session) -> None:
        """Every lock session holds its node's presence lock (`member_present`)."""
        rows = session.query("SELECT GET_LOCK(%s, 0)", (self.member_lock(self.node),))
        if rows[0][0] != 1:
            self.warn(
                f"the presence lock of node {self.node!r} is held by another session: a "
                "duplicate node name, or our own previous session not yet timed out"
            )

    @property
    def _holding(self) -> bool:
        return self.held_generation is not None and self.held_generation == self.lock.generation

    def _we_hold(self) -> bool:
        return bool(self._q("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (self.lock_name,))[0][0])

    # -- beside the member store (members.Partner) --------------------------------------------
    def leads(self) -> bool:
        """Whether we hold leadership on the lock session now (the store then keeps its own
        session once it is open: a statement cut by the watchdog closes its session)."""
        return self._holding

    def glanced(self, row: tuple[Any, ...] | None) -> None:
        self.glance = None if row is None else (self.clock(), row)

    def _seen_holder(self) -> LeaderInfo | None:
        """The leader this tick's flags read saw holding the lock on another session and
        renewing within the lease: nothing to ask the server (GET_LOCK would fail). None:
        no such glance (the lock looked free, ours, or maybe vanished): campaign."""
        glance, self.glance = self.glance, None
        if glance is None or self.clock() - glance[0] > self.timeout or not self.lock.connected:
            return None
        holder, node, epoch, silent, recorded = glance[1]
        if holder is None or silent is None or int(holder) == self.lock.conn.thread_id():
            return None
        if float(silent) > max(self.lease, float(recorded or 0.0)):
            return None  # _fence_vanished_holder may have to look at it
        return LeaderInfo(str(node) if node else None, int(epoch))

    # -- election ---------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        return self.campaign()[0]

    def campaign(self) -> tuple[bool, LeaderInfo | None]:
        """Take the lock or learn who holds it, and the epoch: no statement when this tick's
        flags read saw a live leader hold it, else two."""
        if self._holding:
            return self.renew(), None
        self.held_generation = None
        seen = self._seen_holder()
        if seen is not None:
            return False, seen
        # Never GET_LOCK twice on one session: it is re-entrant, and one RELEASE_LOCK would
        # then not free it. IF() evaluates one branch only: 2 = ours already, 1 = granted.
        got = self._q(
            "SELECT IF(IS_USED_LOCK(%s) = CONNECTION_ID(), 2, GET_LOCK(%s, 0))",
            (self.lock_name, self.lock_name),
        )[0][0]
        if got == 2:
            self.held_generation = self.lock.generation
            return True, None
        if got != 1:
            fenced, info = self._fence_vanished_holder()
            if not fenced:
                return False, info or self.leader()
            if self._q("SELECT GET_LOCK(%s, 0)", (self.lock_name,))[0][0] != 1:
                return False, self.leader()
        self.held_generation = self.lock.generation
        self._take_wake_lock()
        return True, None

    def _take_wake_lock(self) -> None:
        """Hold the wake lock beside leadership: standbys waiting for it wake the moment it
        goes. Busy (a standby is just handing it back): the next renew tries again."""
        if self.wake_generation == self.lock.generation:
            return
        if self._q("SELECT GET_LOCK(%s, 0)", (self.wake_name,))[0][0] == 1:
            self.wake_generation = self.lock.generation

    def _fence_vanished_holder(self) -> tuple[bool, LeaderInfo | None]:
        """KILL a holder idle (`Sleep`) past the lease whose last renew is older than the
        lease too: its host vanished and the server has not noticed (wait_timeout normally
        ends it first; this covers a server that refused or capped it). Whether it did, and
        the leader and epoch, read by the same statement (None: the lock was free by then)."""
        rows = self._q(
            "SELECT p.ID, p.COMMAND, p.TIME, "
            f"TIMESTAMPDIFF(MICROSECOND, c.renewed_at, NOW(6)) / 1e6, c.lease_seconds, "
            f"c.cluster, c.leader, c.epoch "
            f"FROM information_schema.PROCESSLIST p LEFT JOIN {self.table} c ON c.cluster = %s "
            "WHERE p.ID = IS_USED_LOCK(%s)",
            (self.cluster, self.lock_name),
        )
        if not rows:
            return False, None
        conn_id, command, idle, silent, recorded, row, node, epoch = rows[0]
        info = (
            LeaderInfo("?", 0)
            if row is None
            else LeaderInfo(str(node) if node else None, int(epoch))
        )
        lease = max(self.lease, float(recorded or 0.0))
        quiet = min(float(idle or 0), float(silent) if silent is not None else 1e9)
        if command != "Sleep" or quiet <= lease:
            return False, info
        return kill(self._q, {self.lock_name: int(conn_id)}) > 0, info

    def renew(self) -> bool:
        if not self._holding:
            self.lock.connection()  # a new session (after a reconnect) holds no lock
            if not self._holding:
                self.held_generation = None
                return False
        if self._renew_and_record():
            self._take_wake_lock()
            return True
        self.held_generation = None
        return False

    def _renew_and_record(self) -> bool:
        """Prove `IS_USED_LOCK(name) = CONNECTION_ID()` and record when (DB time) in the same
        statement; a proof later than backend_timeout_seconds is no proof (see PostgreSQL)."""
        started = self.clock()
        updated = self._q(
            f"UPDATE {self.table} SET renewed_at = NOW(6), server_started = %s "
            "WHERE cluster = %s AND IS_USED_LOCK(%s) = CONNECTION_ID()",
            (self.lock.server_started, self.cluster, self.lock_name),
        )[0][0]
        ok = bool(updated) or self._we_hold()  # no row yet (before the first epoch)
        took = self.clock() - started
        if ok and took > self.timeout:
            raise BackendUnavailable(
                f"MySQL answered the renew after {took:.1f} s, more than "
                f"backend_timeout_seconds ({self.timeout:g} s)"
            )
        return ok

    def bump_epoch(self) -> int:
        if not (self._holding and self.lock.connected):
            raise BackendUnavailable("lost the lock session before taking the epoch")
        self._q(
            f"INSERT INTO {self.table} (cluster, epoch, leader, lease_seconds) "
            "VALUES (%s, 1, %s, %s) ON DUPLICATE KEY UPDATE epoch = epoch + 1, "
            "leader = VALUES(leader), lease_seconds = GREATEST(COALESCE(lease_seconds, 0), "
            "VALUES(lease_seconds))",
            (self.cluster, self.node, self.lease),
        )
        epoch, silent, started, lease, fenced = self._q(
            "SELECT epoch, TIMESTAMPDIFF(MICROSECOND, renewed_at, NOW(6)) / 1e6, "
            "ABS(TIMESTAMPDIFF(MICROSECOND, server_started, %s)) / 1e6, lease_seconds, "
            f"fenced_epoch FROM {self.table} WHERE cluster = %s",
            (self.lock.server_started, self.cluster),
        )[0]
        if not self._we_hold():
            raise BackendUnavailable("lost the lock while taking the epoch")
        self.previous_silent_for = float(silent) if silent is not None else None
        self.bumped_at = self.clock()
        # Another server than the one the previous leader renewed on (restart, RDS failover,
        # promoted replica): its replicated renewed_at may lag. Trust nothing: wait a lease.
        self.server_changed = started is not None and float(started) > SERVER_CLOCK_SLACK
        self.fence_lease = float(lease)
        self.fenced_epoch = int(fenced)
        return int(epoch)

    def fence(self, epoch: int, force: bool, sweep: bool = True) -> FenceReport:
        keepers = older_keepers(self._q, self.cluster, epoch, self.fenced_epoch)
        uptime = float(self._q("SHOW GLOBAL STATUS LIKE 'Uptime'")[0][1])
        lease = self.fence_lease
        silent = self._previous_silent_now()
        if self.server_changed and not force:
            return FenceReport(
                pending=len(keepers) or 1,
                wait_seconds=lease,
                detail="the database server changed since the last renew (restart, failover "
                "or promoted replica): waiting one lease",
            )
        if silent is not None and silent > lease:
            force = True  # the old keeper's own deadline has passed: its tree is dead
        if (keepers or uptime < lease) and not force:
            why = (
                f"{len(keepers)} older keeper lock(s) still held"
                if keepers
                else f"server started {uptime:.0f} s ago: absence of keepers proves nothing yet"
            )
            wait = lease if keepers else lease - uptime
            return FenceReport(pending=len(keepers) or 1, wait_seconds=wait, detail=why)
        killed = kill(self._q, keepers)
        if killed == len(set(keepers.values())):
            self._q(
                f"UPDATE {self.table} SET lease_seconds = %s, fenced_epoch = %s "
                "WHERE cluster = %s AND epoch = %s",
                (self.lease, epoch - 1, self.cluster, epoch),
            )
            self.fence_lease = self.lease
            self.fenced_epoch = epoch - 1
        detail = f"killed {killed} older keeper session(s)" if killed else "no older keepers"
        return FenceReport(pending=0, terminated=killed, detail=detail)

    def _previous_silent_now(self) -> float | None:
        if self.previous_silent_for is None:
            return None
        return self.previous_silent_for + max(0.0, self.clock() - self.bumped_at)

    def release(self) -> None:
        if self._holding:
            try:  # leadership first, then the wake lock: woken standbys find it free
                self._q("DO RELEASE_LOCK(%s), RELEASE_LOCK(%s)", (self.lock_name, self.wake_name))
                self.wake_generation = None
            except BackendUnavailable:
                self.lock.close()  # the lock lives as long as its session: end it
                raise
            finally:
                self.held_generation = None
        self.held_generation = None

    def member_present(self, node: str) -> bool:
        """Its daemon's lock session holds the node's presence lock (a dead host's session
        lingers until wait_timeout or keepalives end it)."""
        rows = self._q("SELECT IS_USED_LOCK(%s) IS NOT NULL", (self.member_lock(node),))
        return bool(rows[0][0])

    def leader(self) -> LeaderInfo:
        rows = self._q(
            f"SELECT IS_USED_LOCK(%s), leader, epoch FROM {self.table} WHERE cluster = %s",
            (self.lock_name, self.cluster),
        )
        if not rows:
            holder = self._q("SELECT IS_USED_LOCK(%s)", (self.lock_name,))[0][0]
            return LeaderInfo("?" if holder is not None else None, 0)
        holder, node, epoch = rows[0]
        return LeaderInfo(str(node) if holder is not None and node else None, int(epoch))

    def keeper_args(self) -> list[str]:
        return [
            "--mysql-dsn-env",
            "FAILOVER_KEEPER_DSN",
            "--pg-epoch-table",
            f"{self.prefix}cluster:{self.cluster}",
        ]

    def keeper_env(self) -> dict[str, str]:
        if self.password is None:
            return {"FAILOVER_KEEPER_DSN": self.dsn}
        return {"FAILOVER_KEEPER_DSN": with_params(self.dsn, password=self.password())}

    # -- wake-ups ---------------------------------------------------------------------------
    def watch_fd(self) -> int | None:
        if not self.wake or self._holding:
            # A leader holds the wake lock itself: its waiter would only hold a connection.
            self.watch.close()
            return None
        return self.watch.fileno()

    def changed(self) -> bool:
        return self.watch.changed()

    def close(self) -> None:
        self.watch.close()
        self.lock.close()
