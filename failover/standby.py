"""The standby side of the tick: campaign, or say why not (a child still alive, paused,
cooling down after stepping down, a pending switchover to another member, the DB out of reach).

A mixin of `Controller`: it reads and sets the controller's state; the leader side is there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from failover.child import Child, ChildState
from failover.dbreach import DbReach
from failover.errors import BackendUnavailable, ChildError
from failover.interfaces import ClusterFlags, ElectionBackend, MemberStore
from failover.records import Records
from failover.roles import Role, Timings


class Standby:
    """What a standby does in `tick()`; `Controller` supplies the state and the leader side."""

    node: str
    backend: ElectionBackend
    child: Child
    records: Records
    t: Timings
    role: Role
    epoch: int
    leader: str | None
    backend_up: bool
    fence_deadline: float | None
    cooldown_until: float
    demote_reason: str
    shutting_down: bool
    clock: Callable[[], float]
    store: MemberStore
    db_reach: DbReach | None

    @property
    def flags(self) -> ClusterFlags:
        raise NotImplementedError

    def _keeper_env(self) -> dict[str, str]:
        raise NotImplementedError

    def _keeper_args(self) -> list[str]:
        raise NotImplementedError

    def _proven(self, started: float) -> None:
        raise NotImplementedError

    def _fence(self, now: float) -> tuple[str, str | None]:
        raise NotImplementedError

    def _stand(self, now: float) -> tuple[str, str | None]:
        self.records.read_flags()
        if self.shutting_down and self.child.gone:
            return "standby: nothing to stop", None
        waiting = self._not_campaigning(now)
        if waiting is None:
            return self._campaign(now)
        # A release that failed (a backend blip) may have left our place in the queue; only
        # `try_acquire` would clean it up, and we do not campaign: finish leaving it now.
        with contextlib.suppress(BackendUnavailable):
            self.backend.tidy()
        return waiting

    def _not_campaigning(self, now: float) -> tuple[str, str | None] | None:
        """Why this standby tick does not campaign, or None when it should."""
        if not self.child.gone:
            self.child.stop(hard=True)
            return "standby with a child still alive: killing it", None
        if self.child.state is ChildState.FAILED and now >= self.cooldown_until:
            self.child.reset_failures()
        self._keep_warm(now)
        if self.flags.paused:
            return f"paused: no elections; leader is {self.leader or 'nobody'}", None
        if now < self.cooldown_until:
            return (
                f"standby cooling down for {self.cooldown_until - now:.1f} s after stepping "
                f"down ({self.demote_reason})",
                None,
            )
        if self._yield_to_switchover_target():
            return (
                f"standby: switchover to {self.flags.switchover_to} pending, not campaigning",
                None,
            )
        return self._hold_back_for_db()

    def _yield_to_switchover_target(self) -> bool:
        target = self.flags.switchover_to
        age = self.flags.switchover_age or 0.0
        return bool(target) and target != self.node and age < 2 * self.t.lease

    def _ready(self, now: float) -> bool:
        """A standby that would campaign now (what a DB-blind leader may hand over to)."""
        return (
            self.role is Role.STANDBY
            and self.child.gone
            and not self.shutting_down
            and not self.flags.paused
            and now >= self.cooldown_until
            and not self._yield_to_switchover_target()
        )

    def _hold_back_for_db(self) -> tuple[str, str | None] | None:
        """Cannot reach the metadata DB while another member can: leave leadership to it (and
        leave the queue: a contender that does not campaign would block the ones behind)."""
        reach = self.db_reach
        peers = reach.hold_back_for() if reach is not None else []
        if reach is None or not peers:
            return None
        with contextlib.suppress(BackendUnavailable):
            self.backend.release()
        return reach.hold_back_sentence(peers), None

    def _campaign(self, now: float) -> tuple[str, str | None]:
        started = self.clock()  # after this tick's DB read, which may have been slow
        try:
            won = self.backend.try_acquire()
            if not won:
                info = self.backend.leader()
                self.backend_up = True
                self.leader, self.epoch = info.node, info.epoch
                return f"no action: following leader {info.node} (epoch {info.epoch})", None
            self.epoch = self.backend.bump_epoch()
        except BackendUnavailable as err:
            self.backend_up = False
            return f"standby: backend unavailable ({err})", None
        self.backend_up = True
        self.role = Role.FENCING
        self.leader = self.node
        self._proven(started)
        self.fence_deadline = None
        if self.flags.switchover_to is not None:
            self.records.call(self.store.clear_switchover)
        # History is best effort; leadership is not (and a DB that failed us is not waited on).
        self.records.call(lambda: self.store.begin_term(self.epoch, self.node, "elected"))
        sentence, transition = self._fence(now)
        return f"acquired leadership, epoch {self.epoch}; {sentence}", transition or "elected"

    def _keep_warm(self, now: float) -> None:
        """A standby keeps a keeper started in advance, so promotion skips its start-up."""
        if not self.child.wants_warm(now):
            return  # (no env to build: with IAM auth that would mean a token every tick)
        try:
            self.child.prepare(now, self._keeper_env(), self._keeper_args())
        except (ChildError, BackendUnavailable) as err:
            self.child.warm_error = str(err)
            self.child.warm_retry_at = now + self.t.loop
