"""The member store as the tick uses it: operator flags, heartbeats, best-effort records.

In ZooKeeper mode the store is the metadata DB: a call that failed or was slower than
the backend timeout fails the rest of the tick, so the DB is never waited on twice
between two renews.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from failover.dbreach import DbReach
from failover.errors import BackendUnavailable
from failover.interfaces import ClusterFlags, MemberState, MemberStore


class Records:
    """One tick's view of the member store; `failed` is reset by `read_flags()`.

    A steady member writes its heartbeat with the flags read at the start of a tick (one
    statement where the store can) and again at the end only if what its row shows changed."""

    def __init__(
        self,
        store: MemberStore,
        clock: Callable[[], float],
        timeout: Callable[[], float],
        db_reach: DbReach | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.timeout = timeout  # the backend timeout now (a reload may change it)
        self.db_reach = db_reach
        self.flags = ClusterFlags()
        self.failed = False  # the store failed us earlier in this tick
        self.last_heartbeat: float | None = None
        self.last_written: Hashable | None = None
        self.last_state: tuple[Hashable, MemberState] | None = None  # how the last tick ended
        # False after a heartbeat + flags statement failed or was slow (a row lock, a lagging
        # synchronous replica): the flags are read alone until a heartbeat goes through again.
        self.combined_ok = True

    def read_flags(self, now: float | None = None, every: float = 0.0) -> None:
        """The first store call of a tick: keeps the last known flags if it fails. With `now`,
        a store that can (`one_statement_heartbeat`) writes a heartbeat due by then in the same
        statement, showing the state the previous tick ended in."""
        self.failed = False
        last = self._due_with_flags(now, every)

        def read() -> None:
            if last is None:
                self.flags = self.store.flags()
            else:
                self.flags = self.store.heartbeat_and_flags(last[1])

        done = self._run(read)
        if last is not None and done:
            self.last_heartbeat = now
            self.last_written = last[0]
        if last is not None and self.failed:
            self.combined_ok = False

    def _due_with_flags(
        self, now: float | None, every: float
    ) -> tuple[Hashable, MemberState] | None:
        """The state to write with the flags: a heartbeat is due and the store does both in
        one statement (the first tick has no state yet: it writes at its end)."""
        if now is None or self.last_state is None or not self.store.one_statement_heartbeat:
            return None
        if not self.combined_ok:
            return None
        if self.last_heartbeat is not None and now - self.last_heartbeat < every:
            return None
        return self.last_state

    def call(self, call: Callable[[], None]) -> bool:
        """A best-effort store call, skipped when the store failed us in this tick; whether
        it was made and succeeded."""
        return not self.failed and self._run(call)

    def slow(self, started: float, ended: float | None = None) -> None:
        """A metadata-DB call that took longer than the backend timeout counts as failed."""
        ended = self.clock() if ended is None else ended
        if ended - started > self.timeout():
            self.failed = True

    def heartbeat(self, now: float, every: float, shown: Hashable, state: MemberState) -> None:
        """Write our member row when `every` seconds passed or what it shows changed."""
        self.last_state = (shown, state)
        due = self.last_heartbeat is None or now - self.last_heartbeat >= every
        if (not due and shown == self.last_written) or self.failed:
            return  # (a store that failed this tick is tried again next tick, not twice now)
        if self._run(lambda: self.store.heartbeat(state)):
            self.last_heartbeat = now
            self.last_written = shown
            self.combined_ok = self.combined_ok or not self.failed  # went through in time

    def _run(self, call: Callable[[], None]) -> bool:
        """Make one store call, timed and reported; whether it succeeded."""
        started = self.clock()
        error: BackendUnavailable | None = None
        try:
            call()
        except BackendUnavailable as err:
            error = err
        ended = self.clock()
        if error is not None:
            self.failed = True
        self.slow(started, ended)
        if self.db_reach is not None:
            self.db_reach.record(started, ended, None if error is None else str(error))
        return error is None
