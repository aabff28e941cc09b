"""Decisions of the loop tick, on a fake clock, backend, store and keeper."""

from __future__ import annotations

from failover.airflow.health import Health, JobRow
from failover.child import ChildState
from failover.controller import Role
from failover.interfaces import ClusterFlags, MemberState

from .fakes import FakeClock, FakeJobs, FakeStore, Rig, SharedLease, make_rig


def started(rig: Rig) -> None:
    """Drive a rig from standby to a leader with a running child."""
    result = rig.controller.tick()
    assert result.role is Role.LEADER, result.sentence
    rig.launcher.last.inbox.append("STARTED 4242")
    rig.controller.tick()
    assert rig.child.state is ChildState.RUNNING


def test_standby_wins_fences_and_starts_child_in_one_tick() -> None:
    rig = make_rig()
    result = rig.controller.tick()
    assert result.role is Role.LEADER
    assert result.epoch == 1
    assert result.transition == "elected"
    assert result.sentence.startswith("acquired leadership, epoch 1")
    env = rig.launcher.envs[0]
    assert env["FAILOVER_NODE"] == "n1" and env["FAILOVER_CLUSTER"] == "c1"
    assert rig.launcher.args[0][:2] == ["--name", "failover:c1:n1"]
    # The keeper's hard deadline is the self-fence deadline, never the whole lease.
    assert rig.launcher.last.sent[0] == "GO 1 1009.000000"


def test_steady_leader_sentence_and_renew_extends_keeper_deadline() -> None:
    rig = make_rig()
    started(rig)
    rig.clock.advance(1.0)
    result = rig.controller.tick()
    assert result.sentence == "no action: I am the leader with epoch 1"
    assert rig.launcher.last.sent[-1] == "RUN-UNTIL 1010.000000"


def test_only_the_keeper_of_a_started_child_gets_the_backend_session() -> None:
    lease = SharedLease(holder="other", epoch=7)
    rig = make_rig(lease=lease)
    rig.backend.session_line = "ZK-SESSION {}"
    rig.controller.tick()
    assert rig.launcher.last.sent == []  # a standby's warm keeper: nothing
    lease.holder = None
    rig.controller.tick()
    assert rig.launcher.last.sent == ["GO 8 1009.000000", "ZK-SESSION {}"]


def test_sidecar_standby_campaigns_only_once_its_keeper_connected() -> None:
    """A daemon restarted before its keeper container reconnected would win, fail to start
    the child and cool down for a lease: it waits for the keeper instead."""
    rig = make_rig()
    rig.launcher.on_demand, rig.launcher.connected = False, False
    result = rig.controller.tick()
    assert result.role is Role.STANDBY
    assert "no keeper has connected yet" in result.sentence
    assert rig.backend.lease.holder is None  # never campaigned
    rig.launcher.connected = True
    rig.clock.advance(1.0)
    result = rig.controller.tick()
    assert result.role is Role.LEADER, result.sentence
    assert len(rig.launcher.links) == 1  # the connected keeper got GO


def test_standby_follows_the_leader_with_a_warm_keeper() -> None:
    lease = SharedLease(holder="other", epoch=7)
    rig = make_rig(lease=lease)
    result = rig.controller.tick()
    assert result.role is Role.STANDBY
    assert result.sentence == "no action: following leader other (epoch 7)"
    assert len(rig.launcher.links) == 1 and rig.launcher.last.sent == []  # warm, no GO
    lease.holder = None
    assert rig.controller.tick().role is Role.LEADER
    assert len(rig.launcher.links) == 1 and rig.launcher.last.sent == ["GO 8 1009.000000"]


def test_older_keeper_alive_delays_start_then_is_forced() -> None:
    lease = SharedLease(keeper_alive=True)
    rig = make_rig(lease=lease)
    result = rig.controller.tick()
    assert result.role is Role.FENCING
    assert "waiting up to 5.0 s" in result.sentence
    assert all(not link.sent for link in rig.launcher.links)  # nothing started
    rig.clock.advance(2.0)
    assert rig.controller.tick().role is Role.FENCING
    assert rig.backend.fence_calls == [False, False]
    rig.clock.advance(3.0)
    result = rig.controller.tick()
    assert result.role is Role.LEADER
    assert rig.backend.fence_calls[-1] is True
    assert rig.controller.fenced == 1


def test_unreachable_backend_keeps_child_until_demote_point_then_stops_it() -> None:
    rig = make_rig()
    started(rig)
    rig.backend.down = True
    rig.clock.advance(1.0)
    result = rig.controller.tick()
    assert result.role is Role.LEADER
    assert "may run" in result.sentence
    assert rig.launcher.last.sent[-1].startswith("RUN-UNTIL")  # no new deadline sent
    # self-fence deadline = 1000 + 9 = 1009, demote lead = min(5, 10/2) = 5 -> stop from 1004.
    rig.clock.now = 1004.0
    result = rig.controller.tick()
    assert result.role is Role.DEMOTING
    assert rig.launcher.last.sent[-1] == "STOP"
    # Release is never attempted before the keeper says the tree is gone.
    assert not any(line.startswith("release") for line in rig.log)


def test_lost_leadership_kills_child_hard_and_releases_only_after_gone() -> None:
    lease = SharedLease()
    rig = make_rig(lease=lease)
    started(rig)
    lease.holder = "usurper"
    result = rig.controller.tick()
    assert result.transition == "lost"
    assert rig.launcher.last.sent[-1] == "KILL"
    rig.controller.tick()
    assert rig.controller.role is Role.DEMOTING
    rig.launcher.last.inbox.append("GONE kill requested")
    result = rig.controller.tick()
    assert result.role is Role.STANDBY
    assert lease.holder == "usurper"  # our release did not touch the new leader's lease


def test_shutdown_stops_child_before_release() -> None:
    lease = SharedLease()
    rig = make_rig(lease=lease)
    started(rig)
    rig.controller.request_shutdown()
    rig.controller.tick()
    assert "STOP" in rig.launcher.last.sent
    assert lease.holder == "n1"
    assert not rig.controller.finished
    rig.launcher.last.inbox.extend(["EXITED 0", "GONE stop requested"])
    result = rig.controller.tick()
    assert lease.holder is None
    stop_at = rig.log.index("keeper 100 <- STOP")
    cleanup_at = rig.log.index("keeper 100 cleaned up")
    release_at = rig.log.index("release n1")
    assert stop_at < cleanup_at < release_at
    assert rig.controller.finished, result.sentence


def test_crash_loop_backs_off_then_gives_leadership_up() -> None:
    lease = SharedLease()
    rig = make_rig(lease=lease)
    started(rig)
    for crash in range(2):
        rig.launcher.last.inbox.extend(["EXITED 1", "GONE child exited"])
        rig.clock.advance(0.5)
        result = rig.controller.tick()
        assert rig.child.state is ChildState.BACKOFF
        assert "restart in" in result.sentence
        rig.clock.advance(2.0**crash + 0.01)
        rig.controller.tick()
        assert rig.child.state is ChildState.STARTING
        rig.launcher.last.inbox.append("STARTED 5000")
    rig.launcher.last.inbox.extend(["EXITED 1", "GONE child exited"])
    result = rig.controller.tick()
    assert rig.child.state is ChildState.FAILED
    assert result.role is Role.DEMOTING
    result = rig.controller.tick()
    assert result.role is Role.STANDBY
    assert lease.holder is None
    # Cooling down: does not campaign at once.
    assert "cooling down" in rig.controller.tick().sentence


def test_switchover_to_named_standby_demotes_and_others_yield() -> None:
    store = FakeStore()
    lease = SharedLease()
    leader = make_rig("n1", lease, store)
    other = make_rig("n2", lease, store)
    target = make_rig("n3", lease, store)
    started(leader)
    other.controller.tick()
    target.controller.tick()
    store.request_switchover("n1", "n3")
    result = leader.controller.tick()
    assert result.transition == "switchover"
    leader.launcher.last.inbox.append("GONE stop requested")
    assert leader.controller.tick().role is Role.STANDBY
    assert "not campaigning" in other.controller.tick().sentence
    result = target.controller.tick()
    assert result.role is Role.LEADER
    assert store.cluster_flags.switchover_to is None


def test_switchover_back_to_a_member_still_cooling_down_from_the_last_one() -> None:
    """The cool-down after stepping down for a switchover keeps a member out of the target's
    way; a new request that names it as the target is not abandoned for it."""
    store = FakeStore()
    lease = SharedLease()
    first = make_rig("n1", lease, store)
    second = make_rig("n2", lease, store)
    started(first)
    second.controller.tick()
    store.request_switchover("n1", "n2")
    assert first.controller.tick().transition == "switchover"
    first.launcher.last.inbox.append("GONE stop requested")
    assert first.controller.tick().role is Role.STANDBY
    assert second.controller.tick().role is Role.LEADER
    second.launcher.last.inbox.append("STARTED 4243")
    second.controller.tick()
    assert first.controller.tick().role is Role.STANDBY  # within n1's cool-down ...
    store.request_switchover("n2", "n1")
    assert second.controller.tick().transition == "switchover"
    second.launcher.last.inbox.append("GONE stop requested")
    assert second.controller.tick().role is Role.STANDBY
    result = first.controller.tick()  # ... but it is the target now
    assert result.role is Role.LEADER, result.sentence
    assert store.cluster_flags.switchover_to is None


def test_switchover_to_unknown_node_is_refused() -> None:
    rig = make_rig()
    started(rig)
    rig.store.request_switchover("n1", "ghost")
    result = rig.controller.tick()
    assert "refused" in result.sentence
    assert result.role is Role.LEADER


def test_paused_leader_keeps_child_and_paused_standby_does_not_campaign() -> None:
    store = FakeStore()
    lease = SharedLease()
    leader = make_rig("n1", lease, store)
    standby = make_rig("n2", lease, store)
    started(leader)
    store.set_paused(True)
    assert leader.controller.tick().sentence.startswith("paused: leader with epoch 1")
    lease.holder = None  # even with the lease vacant, a paused standby stays put
    assert standby.controller.tick().sentence.startswith("paused: no elections")
    assert standby.controller.role is Role.STANDBY


def test_standby_with_stray_child_kills_it() -> None:
    rig = make_rig()
    started(rig)
    rig.controller.role = Role.STANDBY
    result = rig.controller.tick()
    assert "killing it" in result.sentence
    assert rig.launcher.last.sent[-1] == "KILL"


def test_shorter_backend_lease_shortens_the_self_fence() -> None:
    rig = make_rig()
    rig.backend.effective_lease = lambda: 6.0  # type: ignore[method-assign]
    rig.controller.tick()
    # lease 10, self_fence 9 (margin 1) -> with an effective lease of 6: 5 s after the renew.
    assert rig.launcher.last.sent[0] == "GO 1 1005.000000"


def test_failed_fencing_cools_down_instead_of_burning_epochs() -> None:
    from failover.errors import BackendUnavailable

    rig = make_rig()

    def refuse(epoch: int, force: bool, sweep: bool = True) -> object:
        raise BackendUnavailable("cannot terminate backend 7: grant pg_signal_backend")

    rig.backend.fence = refuse  # type: ignore[method-assign,assignment]
    result = rig.controller.tick()
    assert "grant pg_signal_backend" in result.sentence and result.transition == "fence_failed"
    rig.controller.tick()
    assert rig.controller.role is Role.STANDBY
    for _ in range(5):
        rig.clock.advance(1)
        assert "cooling down" in rig.controller.tick().sentence
    assert rig.backend.lease.epoch == 1  # no new epoch while cooling down


def test_store_outage_during_a_switchover_check_does_not_crash_the_loop() -> None:
    from failover.errors import BackendUnavailable

    rig = make_rig()
    started(rig)
    rig.store.request_switchover("n1", "n2")

    def down() -> list[object]:
        raise BackendUnavailable("metadata DB unreachable")

    rig.store.members = down  # type: ignore[method-assign,assignment]
    result = rig.controller.tick()
    assert (
        result.role is Role.LEADER and result.sentence == "no action: I am the leader with epoch 1"
    )


def test_a_standby_with_a_ready_prewarmed_scheduler_shows_warm() -> None:
    lease = SharedLease(holder="other", epoch=7)
    rig = make_rig(lease=lease)
    rig.controller.tick()
    assert rig.store.rows["n1"].child_state == "stopped"
    rig.launcher.last.inbox.extend(["READY", "WARMING 9", 'WARM {"seconds": 2.0}'])
    rig.controller.tick()  # a changed state is written at once, not at the next heartbeat
    assert rig.store.rows["n1"].child_state == "warm"
    lease.holder = None
    rig.clock.advance(1.0)
    assert rig.controller.tick().role is Role.LEADER
    assert rig.store.rows["n1"].child_state == "starting"


# --------------------------------------------------------------------------- a slow metadata DB


class DragStore(FakeStore):
    """A metadata DB that answers every call, `delay` seconds of the fake clock late."""

    def __init__(self, clock: FakeClock, delay: float = 0.0) -> None:
        super().__init__()
        self.clock = clock
        self.delay = delay
        self.calls: list[str] = []

    def _drag(self, name: str) -> None:
        self.calls.append(name)
        self.clock.advance(self.delay)

    def flags(self) -> ClusterFlags:
        self._drag("flags")
        return super().flags()

    def heartbeat(self, state: MemberState) -> None:
        self._drag("heartbeat")
        super().heartbeat(state)

    def begin_term(self, epoch: int, node: str, reason: str) -> None:
        self._drag("begin_term")
        super().begin_term(epoch, node, reason)


class DragJobs(FakeJobs):
    """The job table on the same slow DB."""

    def __init__(self, clock: FakeClock, delay: float = 0.0) -> None:
        super().__init__()
        self.clock = clock
        self.delay = delay
        self.baselines = 0

    def baseline(self) -> int:
        self.baselines += 1
        self.clock.advance(self.delay)
        return super().baseline()

    def newest(self, after_id: int, job_type: str = "SchedulerJob") -> object:
        self.clock.advance(self.delay)
        return super().newest(after_id, job_type)


def slow_rig(delay: float, lease: SharedLease | None = None) -> tuple[Rig, DragStore, DragJobs]:
    rig = make_rig(lease=lease)
    store, jobs = DragStore(rig.clock, delay), DragJobs(rig.clock, delay)
    rig.controller.store, rig.controller.health = store, jobs
    return rig, store, jobs


def test_a_slow_db_read_in_the_campaign_tick_is_the_last_db_call_and_not_counted() -> None:
    # backend timeout 2 s; the DB answers after 3.5 s (below tcp_user_timeout: no error).
    rig, store, jobs = slow_rig(3.5)
    result = rig.controller.tick()
    assert result.role is Role.LEADER and result.epoch == 1
    assert store.calls == ["flags"]  # no history row, no heartbeat
    assert jobs.baselines == 0 and rig.controller.job_baseline is None
    assert rig.controller.verdict.detail == "no health check: metadata DB failed at start"
    assert rig.backend.sweeps == [False]  # no older-epoch sweep on that DB either
    # The self-fence deadline counts from the acquire (after the slow read), not the tick start.
    assert rig.launcher.last.sent[0] == "GO 1 1012.500000"
    store.delay = jobs.delay = 0.0
    rig.clock.advance(1.0)
    rig.controller.tick()
    assert store.calls[-2:] == ["flags", "heartbeat"]  # the next tick writes again


def test_the_re_verify_renew_after_a_slow_db_read_sets_the_deadline() -> None:
    rig, store, _ = slow_rig(0.0, SharedLease(keeper_alive=True))
    assert rig.controller.tick().role is Role.FENCING  # an older keeper: wait up to 5 s
    store.delay = 3.5
    rig.clock.now = 1005.0
    result = rig.controller.tick()  # renew at 1005, slow read until 1008.5, force, re-verify
    assert result.role is Role.LEADER
    assert rig.backend.sweeps == [True, False]
    assert rig.launcher.last.sent[0] == "GO 1 1017.500000"


def test_a_slow_db_in_the_leaders_tick_never_stacks_past_the_self_fence_deadline() -> None:
    rig, store, jobs = slow_rig(0.0)
    started(rig)
    jobs.row = JobRow(job_id=42, hostname="h", heartbeat_age=1.0)  # the child's own row
    assert rig.controller._check_health(rig.clock()) is Health.HEALTHY
    store.delay = jobs.delay = 3.5
    asked = len(jobs.asked_after)
    for _ in range(5):
        deadline = float(rig.launcher.last.sent[-1].split()[1])
        rig.clock.advance(1.0)
        renew_at = rig.clock()
        calls = len(store.calls)
        result = rig.controller.tick()
        assert renew_at < deadline, "the keeper would have killed a healthy child"
        assert rig.launcher.last.sent[-1] == f"RUN-UNTIL {renew_at + 9:.6f}"
        assert store.calls[calls:] == ["flags"]  # no job-table read, no heartbeat after it
        assert result.role is Role.LEADER and rig.child.state is ChildState.RUNNING
    assert len(jobs.asked_after) == asked
