"""The member store's calls per tick: a due heartbeat rides on the flags read where the store
does both in one statement (PostgreSQL); the end of the tick writes only what changed."""

from __future__ import annotations

from dataclasses import dataclass, field

from failover.child import ChildState
from failover.controller import Role
from failover.errors import BackendUnavailable
from failover.interfaces import ClusterFlags, MemberState

from .fakes import FakeClock, FakeStore, SharedLease, make_rig


@dataclass
class OneTripStore(FakeStore):
    """A store with a one-statement heartbeat + flags; every call is counted (and may be
    slow on the fake clock, or fail)."""

    clock: FakeClock | None = None
    delay: float = 0.0
    down: bool = False
    calls: list[str] = field(default_factory=list)
    one_statement_heartbeat = True

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.clock is not None:
            self.clock.advance(self.delay)
        if self.down:
            raise BackendUnavailable("metadata DB unreachable")

    def flags(self) -> ClusterFlags:
        self._call("flags")
        return super().flags()

    def heartbeat(self, state: MemberState) -> None:
        self._call("heartbeat")
        super().heartbeat(state)

    def heartbeat_and_flags(self, state: MemberState) -> ClusterFlags:
        self._call("heartbeat+flags")
        super().heartbeat(state)
        return super().flags()


def test_a_steady_standby_makes_one_store_call_a_tick() -> None:
    store = OneTripStore()
    rig = make_rig(lease=SharedLease(holder="other", epoch=7), store=store)
    rig.controller.tick()
    assert store.calls == ["flags", "heartbeat"]  # the first tick has no state to send yet
    for n in range(5):
        rig.clock.advance(1.0)
        del store.calls[:]
        result = rig.controller.tick()
        assert result.sentence == "no action: following leader other (epoch 7)"
        assert store.calls == ["heartbeat+flags"], n
    assert store.rows["n1"].sentence == "no action: following leader other (epoch 7)"


def test_a_store_without_one_statement_keeps_two_calls_a_tick() -> None:
    """MySQL, ZooKeeper, local: the flags first, the heartbeat at the end, as before."""
    calls: list[str] = []

    class Counted(FakeStore):
        def flags(self) -> ClusterFlags:
            calls.append("flags")
            return super().flags()

        def heartbeat(self, state: MemberState) -> None:
            calls.append("heartbeat")
            super().heartbeat(state)

    rig = make_rig(lease=SharedLease(holder="other", epoch=7), store=Counted())
    for _ in range(3):
        rig.controller.tick()
        rig.clock.advance(1.0)
    assert calls == ["flags", "heartbeat"] * 3


def test_a_change_in_the_tick_is_written_at_its_end() -> None:
    store = OneTripStore()
    rig = make_rig(lease=SharedLease(holder="other", epoch=7), store=store)
    rig.controller.tick()
    rig.clock.advance(1.0)
    rig.launcher.last.inbox.extend(["READY", "WARMING 9", 'WARM {"seconds": 2.0}'])
    del store.calls[:]
    rig.controller.tick()
    assert store.calls == ["heartbeat+flags", "heartbeat"]  # the old state, then the new one
    assert store.rows["n1"].child_state == "warm"
    rig.clock.advance(1.0)
    del store.calls[:]
    rig.controller.tick()
    assert store.calls == ["heartbeat+flags"]


def test_the_leader_saves_one_call_and_its_row_follows_every_change() -> None:
    store = OneTripStore()
    rig = make_rig(store=store)
    assert rig.controller.tick().role is Role.LEADER
    assert store.rows["n1"].role == "leader"  # the change is written in the same tick
    rig.launcher.last.inbox.append("STARTED 4242")
    rig.clock.advance(1.0)
    rig.controller.tick()
    assert store.rows["n1"].child_state.startswith("running")
    rig.clock.advance(1.0)
    del store.calls[:]
    rig.controller.tick()
    assert store.calls == ["heartbeat+flags"]


def test_a_failed_or_slow_combined_call_ends_the_ticks_store_work() -> None:
    store = OneTripStore()
    rig = make_rig(lease=SharedLease(holder="other", epoch=7), store=store)
    rig.controller.tick()
    store.down = True
    rig.clock.advance(1.0)
    del store.calls[:]
    rig.controller.tick()
    assert store.calls == ["heartbeat+flags"]  # not tried twice in one tick
    assert rig.controller.records.failed
    store.down = False
    rig.clock.advance(1.0)
    del store.calls[:]
    rig.controller.tick()  # the flags alone and the heartbeat apart, once, then together
    assert store.calls == ["flags", "heartbeat"] and not rig.controller.records.failed
    rig.clock.advance(1.0)
    del store.calls[:]
    rig.controller.tick()
    assert store.calls == ["heartbeat+flags"] and not rig.controller.records.failed
    store.clock, store.delay = rig.clock, 3.5  # slower than the backend timeout (2 s)
    rig.launcher.last.inbox.extend(["READY", "WARMING 9", 'WARM {"seconds": 2.0}'])
    rig.clock.advance(1.0)
    del store.calls[:]
    rig.controller.tick()
    assert store.calls == ["heartbeat+flags"]  # the change waits for the next tick
    assert rig.controller.records.failed


def test_a_slow_db_in_the_leaders_tick_is_waited_on_once() -> None:
    """The combined call comes after the renew like the flags read did: one wait a tick."""
    store = OneTripStore()
    rig = make_rig(store=store)
    rig.controller.tick()
    rig.launcher.last.inbox.append("STARTED 4242")
    rig.clock.advance(1.0)
    rig.controller.tick()
    assert rig.child.state is ChildState.RUNNING
    store.clock, store.delay = rig.clock, 3.5
    for _ in range(5):
        deadline = float(rig.launcher.last.sent[-1].split()[1])
        rig.clock.advance(1.0)
        renew_at = rig.clock()
        del store.calls[:]
        result = rig.controller.tick()
        assert renew_at < deadline
        # One wait a tick: together first, then (slow) the flags alone, no heartbeat after.
        assert store.calls in (["heartbeat+flags"], ["flags"])
        assert result.role is Role.LEADER and rig.child.state is ChildState.RUNNING


def test_writes_failing_fall_back_to_reading_the_flags_alone() -> None:
    """A row lock or a lagging synchronous replica fails or slows the heartbeat + flags
    statement: the next ticks read the flags alone (a pause still reaches the member) and
    write the heartbeat apart, until a heartbeat goes through in time again."""

    @dataclass
    class WritesDown(OneTripStore):
        writes_down: bool = False

        def _call(self, name: str) -> None:
            super()._call(name)
            if self.writes_down and name != "flags":
                raise BackendUnavailable("canceling statement due to lock timeout")

    store = WritesDown()
    rig = make_rig(lease=SharedLease(holder="other", epoch=7), store=store)
    rig.controller.tick()
    rig.clock.advance(1.0)
    store.writes_down = True
    del store.calls[:]
    rig.controller.tick()
    assert store.calls == ["heartbeat+flags"]  # failed: the flags were not read
    store.set_paused(True)
    rig.clock.advance(1.0)
    del store.calls[:]
    result = rig.controller.tick()
    assert store.calls == ["flags", "heartbeat"], store.calls  # apart; the write fails again
    assert result.sentence.startswith("paused"), result.sentence
    store.writes_down = False
    for expected in (["flags", "heartbeat"], ["heartbeat+flags"]):
        rig.clock.advance(1.0)
        del store.calls[:]
        rig.controller.tick()
        assert store.calls == expected


def test_a_leader_whose_renew_failed_does_not_send_its_old_row_with_the_flags() -> None:
    """A leader back from a freeze finds its lock gone: its first store call reads the flags
    alone, so its row does not show it as a fresh leader; the end of the tick writes the
    truth."""
    from .test_controller import started

    store = OneTripStore()
    lease = SharedLease()
    rig = make_rig(lease=lease, store=store)
    started(rig)
    rig.clock.advance(1.0)
    rig.controller.tick()
    lease.holder = "other"  # taken over while we were frozen
    rig.clock.advance(1.0)
    del store.calls[:]
    rig.controller.tick()
    assert store.calls[0] == "flags", store.calls
    assert store.rows["n1"].role != Role.LEADER.value
