"""The child state machine, driven by fake keeper lines."""

from __future__ import annotations

import pytest

from failover.child import Child, ChildState, child_env
from failover.errors import ChildError

from .fakes import POLICY, FakeLauncher


def make() -> tuple[Child, FakeLauncher]:
    log: list[str] = []
    launcher = FakeLauncher(log)
    return Child(launcher, ["cmd"], POLICY), launcher


def test_start_running_stop_gone() -> None:
    child, launcher = make()
    assert child.gone and child.may_start(0)
    child.start(0, 1, 9.0, {})
    assert child.state is ChildState.STARTING and not child.gone
    launcher.last.inbox.append("STARTED 77")
    child.poll(0.1)
    assert child.state is ChildState.RUNNING and child.pid == 77
    child.stop()
    child.stop()  # asked once only
    assert launcher.last.sent == ["STOP"]
    child.stop(hard=True)
    child.stop(hard=True)
    assert launcher.last.sent == ["STOP", "KILL"]
    assert not child.gone  # not gone until the keeper says so
    launcher.last.inbox.extend(["EXITED -15", "GONE stop requested"])
    child.poll(0.2)
    assert child.state is ChildState.STOPPED and child.exit_code == -15 and child.pid is None


def test_cannot_start_twice() -> None:
    child, _ = make()
    child.start(0, 1, 9.0, {})
    with pytest.raises(ChildError, match="starting"):
        child.start(0, 1, 9.0, {})


def test_backoff_doubles_and_caps_then_fails() -> None:
    child, launcher = make()
    now = 0.0
    delays = []
    for _ in range(POLICY.max_fast_failures):
        child.start(now, 1, now + 9, {})
        launcher.last.inbox.extend(["STARTED 1", "EXITED 1", "GONE child exited"])
        child.poll(now + 1)
        if child.state is ChildState.BACKOFF:
            delays.append(child.backoff_until - (now + 1))
            assert not child.may_start(now + 1)
            now = child.backoff_until
    assert delays == [1.0, 2.0]
    assert child.state is ChildState.FAILED and child.gone
    child.reset_failures()
    assert child.state is ChildState.STOPPED and child.fast_failures == 0


def test_slow_failure_resets_the_count() -> None:
    child, launcher = make()
    child.start(0, 1, 99, {})
    launcher.last.inbox.extend(["STARTED 1", "GONE child exited"])
    child.poll(5)
    assert child.fast_failures == 1
    child.start(10, 1, 99, {})
    launcher.last.inbox.extend(["STARTED 2", "GONE child exited"])
    child.poll(100)  # ran 90 s > fast_failure_seconds
    assert child.fast_failures == 0
    assert child.backoff_until == pytest.approx(101.0)


def test_keeper_death_without_gone_is_cleaned_up() -> None:
    child, launcher = make()
    child.start(0, 1, 9, {})
    launcher.last.inbox.append("EOF")
    child.poll(1)
    assert child.gone
    assert "cleaned up" in launcher.log[-1]


def test_extend_only_while_running() -> None:
    child, launcher = make()
    child.start(0, 1, 9, {})
    child.extend(10)
    child.stop()
    child.extend(11)
    assert launcher.last.sent == ["RUN-UNTIL 10.000000", "STOP"]


def test_child_env() -> None:
    env = child_env({"A": "1"}, "prod", "m1", 8)
    assert env == {
        "A": "1",
        "FAILOVER_EPOCH": "8",
        "FAILOVER_NODE": "m1",
        "FAILOVER_CLUSTER": "prod",
        "PGAPPNAME": "failover:prod:m1:8",
    }
