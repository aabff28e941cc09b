"""Who can reach the metadata DB (ZooKeeper mode): this member's own verdict from its DB calls,
the reports members publish through the backend, and the pure rules that act on them.

A leader that has not reached the DB for `resign_after` steps down only for a standby that
reaches it steadily; a standby that cannot reach it holds back while another member can.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from failover.errors import BackendUnavailable

LEADING = ("leader", "fencing")


@dataclass(frozen=True)
class ReachReport:
    """What one member last published about the metadata DB."""

    node: str
    role: str
    db_ok: bool
    ready: bool  # a standby that would campaign now (not cooling down, paused or stopping)
    ok_for: float  # seconds its DB calls had succeeded without a failure, when published
    age: float  # seconds since it was published (server clock)


class ReachBoard(Protocol):
    """Where members publish their reports: a place a DB-blind leader can still read."""

    def publish(self, role: str, db_ok: bool, ready: bool, ok_for: float) -> None:
        """Raises BackendUnavailable when it cannot."""
        ...

    def reports(self) -> list[ReachReport]:
        """Every member's last report; raises BackendUnavailable when it cannot ask."""
        ...


@dataclass(frozen=True)
class ReachPolicy:
    resign_after: float  # the leader's DB unreachable this long: step down for a taker (0: off)
    fresh: float  # a report older than this says nothing
    steady: float  # a taker must have reached the DB this long (outlasts reconnect backoff)
    timeout: float  # a DB call slower than this counts as a failure
    publish_every: float  # republish an unchanged report this often (keeps it fresh)


def takers(reports: Iterable[ReachReport], me: str, policy: ReachPolicy) -> list[str]:
    """Standbys a DB-blind leader may hand over to: fresh, ready, reaching the DB steadily."""
    return sorted(
        r.node
        for r in reports
        if r.node != me
        and r.db_ok
        and r.ready
        and r.age < policy.fresh
        and r.ok_for >= policy.steady
    )


def reachers(reports: Iterable[ReachReport], me: str, policy: ReachPolicy) -> list[str]:
    """Members a DB-blind standby holds back for: fresh, reaching the DB, leading or ready."""
    return sorted(
        r.node
        for r in reports
        if r.node != me and r.db_ok and r.age < policy.fresh and (r.ready or r.role in LEADING)
    )


def should_resign(
    down_for: float, reports: Iterable[ReachReport], me: str, policy: ReachPolicy
) -> list[str]:
    """The takers to step down for, or [] to keep leading (not long enough, or nobody to
    hand over to: the DB is down for everybody, and a new leader would gain nothing)."""
    if policy.resign_after <= 0 or down_for < policy.resign_after:
        return []
    return takers(reports, me, policy)


class DbReach:
    """This member's DB verdict (on the controller's clock), published every loop, and the
    board asked only when a rule could apply. Errors of the board never escape."""

    def __init__(self, board: ReachBoard, policy: ReachPolicy, node: str) -> None:
        self.board = board
        self.policy = policy
        self.node = node
        self.down_since: float | None = None  # first failed call of the current outage
        self.up_since: float | None = None  # first good tick after the last failure
        self.failed_in_tick = False
        self.ended_in_tick: float | None = None  # the outage a success of this tick ended
        self.last_error = ""
        self.published: tuple[str, bool, bool] | None = None
        self.published_at: float | None = None

    # -- the verdict ------------------------------------------------------------------------
    def new_tick(self) -> None:
        self.failed_in_tick = False
        self.ended_in_tick = None

    def record(self, started: float, ended: float, error: str | None) -> None:
        """One DB call's outcome: an error or a call slower than the timeout is a failure; a
        success ends an outage only when no other call of the same tick failed."""
        if error is None and ended - started > self.policy.timeout:
            error = f"a metadata DB call took {ended - started:.1f} s"
        if error is not None:
            self.failed_in_tick = True
            self.last_error = error
            self.up_since = None
            if self.down_since is None:  # an outage the tick's earlier success ended goes on
                self.down_since = self.ended_in_tick or started
        elif not self.failed_in_tick:
            self.ended_in_tick = self.ended_in_tick or self.down_since
            self.down_since = None
            if self.up_since is None:
                self.up_since = ended

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def down_for(self, now: float) -> float:
        return 0.0 if self.down_since is None else now - self.down_since

    def ok_for(self, now: float) -> float:
        return 0.0 if self.up_since is None else now - self.up_since

    # -- the board --------------------------------------------------------------------------
    def publish(self, now: float, role: str, ready: bool) -> None:
        """Publish when the report changed or is due; a failure is retried next tick."""
        shown = (role, self.up_since is not None, ready)
        due = self.published_at is None or now - self.published_at >= self.policy.publish_every
        if shown == self.published and not due:
            return
        try:
            self.board.publish(role, shown[1], ready, round(self.ok_for(now), 3))
        except BackendUnavailable:
            return
        self.published, self.published_at = shown, now

    def _reports(self) -> list[ReachReport] | None:
        try:
            return self.board.reports()
        except BackendUnavailable:
            return None

    def resign_for(self, now: float) -> list[str]:
        """Leader: the standbys to step down for now ([] = keep leading)."""
        if self.policy.resign_after <= 0 or self.down_for(now) < self.policy.resign_after:
            return []  # the board is not even asked
        reports = self._reports()
        return should_resign(self.down_for(now), reports or [], self.node, self.policy)

    def hold_back_for(self) -> list[str]:
        """Standby: the members to leave leadership to while we cannot reach the DB."""
        if not self.down:
            return []
        reports = self._reports()
        return reachers(reports or [], self.node, self.policy)

    # -- sentences --------------------------------------------------------------------------
    def resign_sentence(self, now: float, epoch: int, takers: list[str]) -> str:
        return (
            f"stepping down from epoch {epoch}: the metadata DB has been unreachable for "
            f"{self.down_for(now):.1f} s ({self.last_error}) while {_who(takers)} it: "
            "stopping the child"
        )

    def hold_back_sentence(self, peers: list[str]) -> str:
        return (
            f"standby: the metadata DB is unreachable from here ({self.last_error}) while "
            f"{_who(peers)} it: not campaigning"
        )

    def note(self, now: float) -> str:
        """What a leader adds to its sentence while it cannot reach the DB."""
        if not self.down:
            return ""
        if self.policy.resign_after > 0 and self.down_for(now) >= self.policy.resign_after:
            return " (metadata DB unreachable, and from no ready standby either)"
        return " (metadata DB unreachable)"


def _who(nodes: list[str]) -> str:
    return f"{', '.join(nodes)} reach{'es' if len(nodes) == 1 else ''}"
