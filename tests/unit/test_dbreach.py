"""ZooKeeper mode, a member cut off from the metadata DB only (FAULTS.md 6): the pure rules,
and three controllers on a fake clock, a shared fake lease and a shared fake report board."""

from __future__ import annotations

from dataclasses import dataclass, field

from failover.child import ChildState
from failover.controller import Role
from failover.dbreach import (
    DbReach,
    ReachPolicy,
    ReachReport,
    reachers,
    should_resign,
    takers,
)
from failover.errors import BackendUnavailable
from failover.interfaces import ClusterFlags, MemberState

from .fakes import FakeClock, FakeStore, Rig, SharedLease, make_rig

POLICY = ReachPolicy(resign_after=20.0, fresh=4.0, steady=8.0, timeout=2.0, publish_every=1.0)


def report(node: str, **kw: object) -> ReachReport:
    values: dict[str, object] = {
        "role": "standby",
        "db_ok": True,
        "ready": True,
        "ok_for": 60.0,
        "age": 0.5,
        **kw,
    }
    return ReachReport(node=node, **values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pure rules


def test_takers_are_fresh_ready_standbys_that_reach_the_db_steadily() -> None:
    reports = [
        report("me", role="leader", db_ok=False, ready=False),
        report("ok"),
        report("stale", age=4.0),
        report("blind", db_ok=False),
        report("cooling", ready=False),
        report("new", ok_for=7.9),
    ]
    assert takers(reports, "me", POLICY) == ["ok"]


def test_resign_only_after_the_delay_and_only_for_a_taker() -> None:
    ok = [report("b")]
    assert should_resign(19.9, ok, "a", POLICY) == []
    assert should_resign(20.0, ok, "a", POLICY) == ["b"]
    assert should_resign(600.0, [report("b", db_ok=False)], "a", POLICY) == []  # down for all
    off = ReachPolicy(0.0, 4.0, 8.0, 2.0, 1.0)
    assert should_resign(600.0, ok, "a", off) == []


def test_a_blind_standby_holds_back_for_a_leader_or_a_ready_standby_that_reaches_the_db() -> None:
    assert reachers([report("l", role="leader", ready=False, ok_for=0.1)], "me", POLICY) == ["l"]
    assert reachers([report("s", ok_for=0.0)], "me", POLICY) == ["s"]
    assert reachers([report("s", ready=False)], "me", POLICY) == []
    assert reachers([report("s", age=9.0), report("me")], "me", POLICY) == []


def test_a_slow_call_is_a_failure_and_one_failure_spoils_the_whole_tick() -> None:
    reach = DbReach(Board(FakeClock(), {}, "a"), POLICY, "a")
    reach.new_tick()
    reach.record(100.0, 100.5, None)
    assert not reach.down and reach.ok_for(101.0) == 0.5
    reach.new_tick()
    reach.record(101.0, 103.5, None)  # answered, but slower than the 2 s timeout
    assert reach.down and "took 2.5 s" in reach.last_error
    reach.new_tick()
    reach.record(104.0, 104.1, None)
    reach.record(104.1, 104.2, "connection lost")  # the same tick: still down
    assert reach.down_for(110.0) == 9.0 and reach.ok_for(110.0) == 0.0
    reach.new_tick()
    reach.record(110.0, 110.1, None)
    assert not reach.down and reach.ok_for(111.1) == 1.0


# --------------------------------------------------------------------------- three controllers


@dataclass
class Board:
    """One member's view of a shared report board (ZooKeeper in production)."""

    clock: FakeClock
    rows: dict[str, tuple[str, bool, bool, float, float]]
    node: str
    down: bool = False

    def publish(self, role: str, db_ok: bool, ready: bool, ok_for: float) -> None:
        if self.down:
            raise BackendUnavailable("board down")
        self.rows[self.node] = (role, db_ok, ready, ok_for, self.clock())

    def reports(self) -> list[ReachReport]:
        if self.down:
            raise BackendUnavailable("board down")
        return [
            ReachReport(n, role, ok, ready, ok_for, self.clock() - at)
            for n, (role, ok, ready, ok_for, at) in self.rows.items()
        ]


@dataclass
class DbStore(FakeStore):
    """Member records in a metadata DB this member may be cut off from."""

    down: bool = False

    def flags(self) -> ClusterFlags:
        if self.down:
            raise BackendUnavailable("cannot connect to PostgreSQL: timeout expired")
        return super().flags()

    def heartbeat(self, state: MemberState) -> None:
        if self.down:
            raise BackendUnavailable("cannot connect to PostgreSQL: timeout expired")
        super().heartbeat(state)


@dataclass
class Nodes:
    clock: FakeClock = field(default_factory=FakeClock)
    lease: SharedLease = field(default_factory=SharedLease)
    rows: dict[str, tuple[str, bool, bool, float, float]] = field(default_factory=dict)
    rigs: dict[str, Rig] = field(default_factory=dict)

    def add(self, node: str) -> Rig:
        rig = make_rig(node, self.lease, DbStore())
        rig.clock = rig.controller.clock = self.clock  # type: ignore[misc]
        board = Board(self.clock, self.rows, node)
        rig.controller.db_reach = DbReach(board, POLICY, node)
        self.rigs[node] = rig
        return rig

    def store(self, node: str) -> DbStore:
        store = self.rigs[node].store
        assert isinstance(store, DbStore)
        return store

    def step(self, seconds: float = 1.0) -> dict[str, str]:
        """Advance the clock and tick every node; each one's sentence."""
        self.clock.advance(seconds)
        return {node: rig.controller.tick().sentence for node, rig in self.rigs.items()}

    def resigning(self, node: str) -> Rig:
        """Cut `node`, the leader, off the DB until it steps down; its child has just exited."""
        rig = self.rigs[node]
        self.store(node).down = True
        for _ in range(21):
            self.step()
        assert rig.controller.role is Role.DEMOTING
        rig.launcher.last.inbox.extend(["EXITED 0", "GONE stop requested"])
        return rig

    def leaders(self) -> list[str]:
        return [n for n, r in self.rigs.items() if r.controller.role is not Role.STANDBY]


def three(leader: str = "a") -> Nodes:
    nodes = Nodes()
    for node in ("a", "b", "c"):
        nodes.add(node)
    rig = nodes.rigs[leader]
    assert rig.controller.tick().role is Role.LEADER
    rig.launcher.last.inbox.append("STARTED 4242")
    for _ in range(12):  # every standby has reached the DB longer than `steady`
        nodes.step()
    assert rig.child.state is ChildState.RUNNING and nodes.leaders() == [leader]
    return nodes


def test_leader_cut_from_the_db_resigns_once_and_the_standby_keeps_leadership() -> None:
    nodes = three()
    a = nodes.rigs["a"]
    nodes.store("a").down = True
    nodes.step()
    first_failure = nodes.clock()
    for _ in range(19):
        said = nodes.step()
        assert a.controller.role is Role.LEADER
    assert said["a"] == "no action: I am the leader with epoch 1 (metadata DB unreachable)"
    nodes.clock.advance(1.0)
    result = a.controller.tick()
    assert result.transition == "db_unreachable" and result.role is Role.DEMOTING
    assert nodes.clock() - first_failure == 20.0
    assert result.sentence.startswith("stepping down from epoch 1: the metadata DB has been ")
    assert "timeout expired) while b, c reach it: stopping the child" in result.sentence
    assert a.launcher.last.sent[-1] == "STOP"
    assert a.controller.tick().role is Role.DEMOTING  # released only once the tree is gone
    assert nodes.lease.holder == "a"
    a.launcher.last.inbox.extend(["EXITED 0", "GONE stop requested"])
    assert a.controller.tick().role is Role.STANDBY and nodes.lease.holder is None
    # The resigned leader ticks first, yet does not win straight back.
    assert "cooling down" in a.controller.tick().sentence
    nodes.step(0.02)
    assert nodes.leaders() == ["b"] and nodes.lease.epoch == 2
    for _ in range(30):  # past the cooldown, still cut off: holds back for the others
        said = nodes.step()
    assert said["a"].startswith("standby: the metadata DB is unreachable from here")
    assert said["a"].endswith("while b, c reach it: not campaigning")
    assert "release a" in a.log  # left the queue
    nodes.store("a").down = False  # healed: a rejoins as a plain standby, nothing moves
    for _ in range(60):
        said = nodes.step()
        assert nodes.leaders() == ["b"] and nodes.lease.epoch == 2
    assert said["a"] == "no action: following leader b (epoch 2)"


def test_a_release_lost_in_a_backend_blip_is_finished_while_cooling_down_and_holding_back() -> None:
    """The resigning leader's release fails (a ZooKeeper blip within the session timeout): its
    queue node stays the lowest. It never campaigns again while cut off from the DB, so only
    its non-campaigning ticks can delete that node; otherwise nobody would ever lead."""
    nodes = three()
    a = nodes.resigning("a")
    a.backend.down = True
    nodes.clock.advance(1.0)
    result = a.controller.tick()
    assert result.role is Role.STANDBY and "release not confirmed" in result.sentence
    assert nodes.lease.holder == "a"  # still the lowest in the queue
    said = nodes.step()
    assert "cooling down" in said["a"] and nodes.leaders() == []
    a.backend.down = False  # the blip ends; a keeps cooling down, then holds back
    for _ in range(3):
        said = nodes.step()
    assert "cooling down" in said["a"]
    assert nodes.leaders() == ["b"] and nodes.lease.epoch == 2
    for _ in range(30):
        said = nodes.step()
    assert said["a"].endswith("while b, c reach it: not campaigning")
    assert nodes.leaders() == ["b"]


def test_db_down_for_everybody_keeps_the_leader_and_healing_moves_nothing() -> None:
    nodes = three()
    for node in "abc":
        nodes.store(node).down = True
    for _ in range(60):
        said = nodes.step()
        assert nodes.leaders() == ["a"]
    assert said["a"].endswith("(metadata DB unreachable, and from no ready standby either)")
    assert said["b"] == "no action: following leader a (epoch 1)"  # no one to hold back for
    for node in "abc":
        nodes.store(node).down = False
    for _ in range(60):
        said = nodes.step()
        assert nodes.leaders() == ["a"] and nodes.lease.epoch == 1
    assert said["a"] == "no action: I am the leader with epoch 1"


def test_a_standby_healing_first_is_trusted_only_once_it_reached_the_db_steadily() -> None:
    nodes = three()
    for node in "abc":
        nodes.store(node).down = True
    for _ in range(30):
        nodes.step()
    nodes.store("b").down = False  # b reconnects a few seconds before the leader does
    for _ in range(5):
        nodes.step()
        assert nodes.leaders() == ["a"]
    nodes.store("a").down = False
    for _ in range(60):
        nodes.step()
        assert nodes.leaders() == ["a"] and nodes.lease.epoch == 1
    nodes.store("a").down = True  # ... but a leader that stays cut off does hand over
    for _ in range(25):
        nodes.step()
    a = nodes.rigs["a"].controller
    assert a.role is Role.DEMOTING and a.demote_reason == "metadata DB unreachable"


def test_a_blind_standby_leaves_the_queue_while_the_leader_reaches_the_db() -> None:
    nodes = three()
    nodes.store("b").down = True
    said = nodes.step()
    assert said["b"] == (
        "standby: the metadata DB is unreachable from here (cannot connect to PostgreSQL: "
        "timeout expired) while a, c reach it: not campaigning"
    )
    assert "release b" in nodes.rigs["b"].log
    nodes.lease.holder = None  # the leader vanished: only c may take over
    nodes.rigs["b"].controller.tick()
    assert nodes.lease.holder is None
    assert nodes.rigs["c"].controller.tick().role is Role.LEADER


def test_board_outage_never_crashes_the_tick_and_never_resigns() -> None:
    nodes = three()
    nodes.store("a").down = True
    board = nodes.rigs["a"].controller.db_reach
    assert board is not None and isinstance(board.board, Board)
    board.board.down = True
    for _ in range(40):
        nodes.step()
        assert nodes.leaders() == ["a"]


def test_a_cooling_or_paused_standby_is_no_taker() -> None:
    nodes = three()
    for rig in (nodes.rigs["b"], nodes.rigs["c"]):
        rig.controller.cooldown_until = nodes.clock() + 1000
    nodes.store("a").down = True
    for _ in range(40):
        said = nodes.step()
        assert nodes.leaders() == ["a"]
    assert said["a"].endswith("(metadata DB unreachable, and from no ready standby either)")


# --------------------------------------------------------------------------- the leader's tick


@dataclass
class SlowStore(DbStore):
    """A metadata DB whose reads take `delay` seconds of the fake clock, or fail after it."""

    clock: FakeClock = field(default_factory=FakeClock)
    delay: float = 0.0
    heartbeats: int = 0
    on_read: list[str] = field(default_factory=list)
    keeper_lines: list[str] = field(default_factory=list)

    def flags(self) -> ClusterFlags:
        self.on_read.append(self.keeper_lines[-1] if self.keeper_lines else "")
        self.clock.advance(self.delay)
        return super().flags()

    def heartbeat(self, state: MemberState) -> None:
        self.heartbeats += 1
        super().heartbeat(state)


def test_the_leader_renews_before_it_waits_on_the_metadata_db() -> None:
    """A hang of the DB (up to tcp_user_timeout) comes after the renew, never between the
    last renew and the next one on top of the previous tick's DB work."""
    rig = make_rig(lease=SharedLease())
    store = SlowStore(clock=rig.clock)
    rig.controller.store = store
    assert rig.controller.tick().role is Role.LEADER
    rig.launcher.last.inbox.append("STARTED 4242")
    rig.controller.tick()
    store.keeper_lines = rig.launcher.last.sent
    store.delay, store.down = 1.5, True  # the first read after a cut hangs, then fails
    rig.clock.now = 1010.0
    assert rig.controller.tick().role is Role.LEADER
    assert store.on_read[-1] == "RUN-UNTIL 1019.000000"  # extended before the read


def test_a_failed_store_read_is_not_waited_on_again_in_the_same_tick() -> None:
    from .fakes import FakeJobs

    rig = make_rig(lease=SharedLease())
    store = SlowStore(clock=rig.clock)
    jobs = FakeJobs()
    rig.controller.store, rig.controller.health = store, jobs
    assert rig.controller.tick().role is Role.LEADER
    rig.launcher.last.inbox.append("STARTED 4242")
    rig.clock.advance(1.0)
    rig.controller.tick()
    asked, beats = len(jobs.asked_after), store.heartbeats
    assert asked == 1 and beats == 2
    store.down = True
    for _ in range(3):
        rig.clock.advance(1.0)
        rig.controller.tick()
    assert len(jobs.asked_after) == asked and store.heartbeats == beats
    assert rig.controller.verdict.detail == "metadata DB unreachable"
    store.down = False
    rig.clock.advance(1.0)
    rig.controller.tick()
    assert len(jobs.asked_after) == asked + 1 and store.heartbeats == beats + 1


def test_resigning_without_the_db_still_confirms_the_release() -> None:
    nodes = three()
    a = nodes.resigning("a")
    result = a.controller.tick()
    assert result.sentence == "released leadership of epoch 1 after the child exited"
