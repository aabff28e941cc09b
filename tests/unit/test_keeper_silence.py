"""A keeper that stops answering, on fakes: the child's is killed with its tree and the leader
steps down, a stop is bounded whatever the keeper does, a warm keeper is replaced."""

from __future__ import annotations

from dataclasses import replace

import pytest

from failover.child import STOP_SLACK_SECONDS, Child, ChildState
from failover.config import Settings
from failover.controller import KEEPER_STUCK, Role

from .fakes import POLICY, FakeLauncher, Rig, SharedLease, make_rig

ANSWER = 4.5


def make_child() -> tuple[Child, FakeLauncher]:
    launcher = FakeLauncher([])
    return Child(launcher, ["cmd"], replace(POLICY, answer_seconds=ANSWER)), launcher


def running(child: Child, launcher: FakeLauncher) -> None:
    child.start(0.0, 1, 9.0, {})
    launcher.last.inbox.append("STARTED 77")
    child.poll(0.1)
    assert child.state is ChildState.RUNNING


def test_a_silent_keeper_is_killed_and_the_child_counts_as_failed() -> None:
    child, launcher = make_child()
    running(child, launcher)
    link = launcher.last
    link.silent = ANSWER - 0.1
    child.poll(1.0)
    assert not link.killed and child.state is ChildState.RUNNING
    assert child.check_at(1.0) == pytest.approx(1.1)  # the daemon looks again when it is due
    link.silent = ANSWER
    child.poll(1.1)
    assert link.killed and child.gone and child.state is ChildState.FAILED
    assert child.keeper_stuck == "the keeper did not answer for 4.5 s"
    assert child.keeper_kills == 1 and child.link is None
    assert child.events and child.events[0][1] == "keeper_unresponsive"
    child.reset_failures()
    assert child.keeper_stuck == "" and child.may_start(2.0)


def test_an_idle_keeper_is_pinged_every_poll() -> None:
    child, launcher = make_child()
    running(child, launcher)
    pings = launcher.last.pings
    child.poll(0.5)
    assert launcher.last.pings == pings + 1


def test_a_stop_the_keeper_does_not_finish_is_bounded_by_stop_timeout() -> None:
    child, launcher = make_child()
    running(child, launcher)
    child.stop()
    child.poll(1.0)  # the deadline counts from the first look after the STOP
    assert child.stop_by == 1.0 + POLICY.stop_timeout + STOP_SLACK_SECONDS
    child.poll(child.stop_by - 0.01)
    assert not launcher.last.killed
    child.poll(child.stop_by)
    assert launcher.last.killed and child.state is ChildState.STOPPED  # an orderly stop
    assert "did not finish its STOP in time" in child.last_event


def test_a_kill_after_a_stop_shortens_the_bound() -> None:
    child, launcher = make_child()
    running(child, launcher)
    child.stop()
    child.poll(1.0)
    child.stop(hard=True)
    child.poll(2.0)
    assert child.stop_by == 2.0 + STOP_SLACK_SECONDS


def test_a_keeper_we_cannot_kill_keeps_the_child_not_gone() -> None:
    child, launcher = make_child()
    running(child, launcher)
    launcher.last.killable = False  # sidecar: another container's keeper
    launcher.last.silent = ANSWER
    child.poll(1.0)
    assert child.keeper_stuck and not child.gone and child.link is not None
    assert child.check_at(1.0) is None  # no busy loop on a keeper we cannot end
    launcher.last.inbox.append("EOF")  # its container was restarted by the liveness probe
    child.poll(2.0)
    assert child.gone


def test_a_silent_warm_keeper_is_replaced_after_a_backoff() -> None:
    child, launcher = make_child()
    child.prepare(0.0, {}, ())
    warm = child.warm
    assert warm is not None
    launcher.last.inbox.append("READY")
    child.poll(0.1)
    launcher.last.silent = ANSWER
    child.poll(5.0)
    assert launcher.last.killed and child.warm is None and child.warm_kills == 1
    assert not child.wants_warm(5.0) and child.wants_warm(5.0 + 1.0)
    assert child.events[-1][1] == "warm_keeper_unresponsive"


def leader(rig: Rig) -> None:
    rig.child.policy = replace(rig.child.policy, answer_seconds=ANSWER)
    assert rig.controller.tick().role is Role.LEADER
    rig.launcher.last.inbox.append("STARTED 4242")
    rig.controller.tick()
    assert rig.child.state is ChildState.RUNNING


def test_a_leader_whose_keeper_stops_answering_steps_down_and_cools_down() -> None:
    lease = SharedLease()
    rig = make_rig(lease=lease)
    leader(rig)
    rig.clock.advance(1.0)
    rig.launcher.last.silent = ANSWER
    result = rig.controller.tick()
    assert result.role is Role.DEMOTING and result.transition == KEEPER_STUCK
    assert result.sentence == (
        "stepping down from epoch 1: the keeper did not answer for 4.5 s; its tree is gone"
    )
    result = rig.controller.tick()
    assert result.role is Role.STANDBY and lease.holder is None
    assert "the daemon killed its tree" in result.sentence
    rig.clock.advance(1.0)
    assert "cooling down" in rig.controller.tick().sentence  # the other candidate goes first


def test_shutdown_with_a_frozen_keeper_releases_within_stop_timeout() -> None:
    lease = SharedLease()
    rig = make_rig(lease=lease)
    leader(rig)
    rig.controller.request_shutdown()
    rig.controller.tick()
    for _ in range(int((POLICY.stop_timeout + STOP_SLACK_SECONDS) / 0.1) + 2):
        rig.clock.advance(0.1)
        result = rig.controller.tick()
        if result.role is Role.STOPPED:
            break
    assert result.role is Role.STOPPED and lease.holder is None
    assert rig.launcher.last.killed  # the keeper never answered: the daemon ended the tree


def test_the_answer_bound_comes_from_the_lease() -> None:
    s = Settings()
    assert s.keeper_answer_seconds == (s.lease_seconds - s.loop_seconds) / 2 == 4.5
    # Frozen right after its last answer, the keeper is found by the next ask plus the bound,
    # before the self-fence deadline even with a renew hanging for backend_timeout.
    worst = s.loop_seconds + s.keeper_answer_seconds + s.backend_timeout_seconds
    assert worst < s.self_fence_seconds
