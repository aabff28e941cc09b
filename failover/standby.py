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
from failover.interfaces import ClusterFlags, ElectionBackend, MemberRecord, MemberStore
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
    # A pending switchover: the epoch when we first held back for it, and since when the old
    # leader is gone without a newer epoch (nobody took over); the tick's note on it.
    switch_epoch: int | None
    stalled_since: float | None
    switch_note: str
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
        self.records.read_flags(now, self.t.loop)
        self.switch_note = ""
        if self.shutting_down and self.child.gone:
            return "standby: nothing to stop", None
        waiting = self._not_campaigning(now)
        if waiting is None:
            sentence, transition = self._campaign(now)
        else:
            # A release that failed (a backend blip) may have left our place in the queue;
            # only `try_acquire` would clean it up, and we do not campaign: finish leaving it.
            with contextlib.suppress(BackendUnavailable):
                self.backend.tidy()
            sentence, transition = waiting
        if self.switch_note:
            sentence = f"{self.switch_note}; {sentence}"
        return sentence, transition

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
        if not self.child.keeper_at_hand:
            # Sidecar mode: winning now would only fail the start and cool down for a lease.
            return "standby: no keeper has connected yet (sidecar); not campaigning", None
        held = self._hold_for_switchover(now)
        if held is not None:
            return held, None
        if now < self.cooldown_until and not self._cooldown_lifted():
            return (
                f"standby cooling down for {self.cooldown_until - now:.1f} s after stepping "
                f"down ({self.demote_reason})",
                None,
            )
        return self._hold_back_for_db()

    def _yield_to_switchover_target(self) -> bool:
        """Another member was asked to take over (and the request is not too old)."""
        target = self.flags.switchover_to
        age = self.flags.switchover_age or 0.0
        return bool(target) and target != self.node and age < 2 * self.t.lease

    def _cooldown_lifted(self) -> bool:
        """After stepping down for a switchover, the cool-down only kept us out of the
        target's way: once the request is decided (won or abandoned), or a new one names us
        as its target (a switchover back), we may campaign."""
        target = self.flags.switchover_to
        decided = target is None or bool(self.switch_note)
        return self.demote_reason == "switchover" and (decided or target == self.node)

    def _hold_for_switchover(self, now: float) -> str | None:
        """While another member should take a pending switchover: why we hold back. None to
        campaign: no request, we are its target, or it is abandoned now (the target is
        evidently not taking over), which clears the request and says why."""
        flags = self.flags
        target = flags.switchover_to
        ours = flags.switchover_from == self.node  # we stepped down for it
        if target is None or target == self.node or not (target or ours):
            self.switch_epoch = self.stalled_since = None
            return None
        why = self._switchover_stalled(target, now)
        if why is None:
            return f"standby: switchover to {target or 'another member'} pending, not campaigning"
        result = f"switchover to {target or 'another member'} abandoned: {why}"
        self.records.call(lambda: self.store.clear_switchover(result))
        self.switch_note = result
        self.switch_epoch = self.stalled_since = None
        return None

    def _switchover_stalled(self, target: str, now: float) -> str | None:
        """Why the switchover to `target` ("" = any other member) will not happen, or None
        while it still may: the old leader still stops its child, or a newer epoch began."""
        age = self.flags.switchover_age or 0.0
        if age >= 2 * self.t.lease:
            return f"undecided after {age:.1f} s"
        try:
            info = self.backend.leader()
            if self.switch_epoch is None:
                self.switch_epoch = info.epoch
            if info.epoch > self.switch_epoch or info.node == self.flags.switchover_from:
                self.stalled_since = None  # taken over, or the old leader is still stopping
                return None
            if self.stalled_since is None:
                self.stalled_since = now
            gone = self._target_gone(target) if target else None
        except BackendUnavailable:
            return None  # cannot tell now; the age limit ends the wait
        if gone:
            return gone
        # The target acts on the release within a tick (woken at once by the backend).
        waited, bound = now - self.stalled_since, max(self.t.lease / 2, 2 * self.t.loop)
        if waited >= bound:
            return f"{target or 'nobody'} has not taken over {waited:.1f} s after the release"
        return None

    def _target_gone(self, target: str) -> str | None:
        """The target's daemon is gone, silent for a lease, or shut down."""
        if self.backend.member_present(target) is False:
            return f"{target}'s daemon is gone"
        rows: list[MemberRecord] = []
        if not self.records.call(lambda: rows.extend(self.store.members())):
            return None  # the store failed us in this tick: judge by the backend only
        row = next((m for m in rows if m.node == target), None)
        if row is None:
            return f"{target} is not a member"
        if row.heartbeat_age >= self.t.lease:
            return f"{target} silent for {row.heartbeat_age:.1f} s"
        if row.role == Role.STOPPED.value:
            return f"{target} shut down"
        return None

    def _ready(self, now: float) -> bool:
        """A standby that would campaign now (what a DB-blind leader may hand over to)."""
        return (
            self.role is Role.STANDBY
            and self.child.gone
            and not self.shutting_down
            and not self.flags.paused
            and now >= self.cooldown_until
            and not self._yield_to_switchover_target()
            and self.child.keeper_at_hand
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
            won, info = self.backend.campaign()
            if not won:
                info = info or self.backend.leader()
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
        reason = "elected"
        target = self.flags.switchover_to
        if self.switch_note:  # we abandoned it in this tick (and cleared the request)
            reason = f"elected after {self.switch_note}"
        elif target is not None:  # decided by our win
            how = "done" if target in ("", self.node) else f"abandoned: {self.node} won first"
            result = f"switchover to {target or 'another member'} {how}: {self.node} elected"
            self.records.call(lambda: self.store.clear_switchover(result))
        # History is best effort; leadership is not (and a DB that failed us is not waited on).
        self.records.call(lambda: self.store.begin_term(self.epoch, self.node, reason))
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
