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
    assert launcher.last.sent == ["GO 1 9.000000", "STOP"]
    child.stop(hard=True)
    child.stop(hard=True)
    assert launcher.last.sent == ["GO 1 9.000000", "STOP", "KILL"]
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


def test_extend_while_alive_and_stopping_not_after() -> None:
    child, launcher = make()
    child.start(0, 1, 9, {})
    child.extend(10)
    child.stop()
    child.extend(11)  # a graceful stop keeps its stop_timeout while the lease is renewed
    assert launcher.last.sent == [
        "GO 1 9.000000",
        "RUN-UNTIL 10.000000",
        "STOP",
        "RUN-UNTIL 11.000000",
    ]
    launcher.last.inbox.append("GONE stop requested")
    child.poll(1)
    child.extend(12)
    assert launcher.last.sent[-1] == "RUN-UNTIL 11.000000"


def test_child_env_drops_stale_epoch_names() -> None:
    env = child_env({"A": "1", "FAILOVER_EPOCH": "3", "PGAPPNAME": "x"}, "prod", "m1")
    assert env == {"A": "1", "FAILOVER_NODE": "m1", "FAILOVER_CLUSTER": "prod"}


def test_warm_keeper_is_used_for_the_start() -> None:
    child, launcher = make()
    child.prepare(0, {}, ["--name", "x"])
    child.prepare(0, {}, ["--name", "x"])  # one warm keeper at most
    assert len(launcher.links) == 1
    warm = launcher.last
    warm.inbox.append("READY")
    child.poll(0.1)
    assert child.warm_ready
    child.start(1, 4, 10.0, {})
    assert len(launcher.links) == 1 and child.link is warm and child.warm is None
    assert warm.sent == ["GO 4 10.000000"]


def test_dead_warm_keeper_is_replaced_with_backoff() -> None:
    child, launcher = make()
    child.prepare(0, {}, [])
    launcher.last.inbox.extend(
        ["ERROR cannot open the proof-of-life session: boom", "GONE no proof of life"]
    )
    child.poll(0.1)
    assert child.warm is None and "boom" in child.warm_error
    child.prepare(0.2, {}, [])
    assert len(launcher.links) == 1  # not before the retry time
    child.prepare(child.warm_retry_at, {}, [])
    assert len(launcher.links) == 2


def test_start_without_warm_keeper_launches_one_and_says_go() -> None:
    child, launcher = make()
    child.prepare(0, {}, [])
    launcher.last.inbox.append("EOF")  # died before we noticed
    child.start(1, 2, 9.0, {})
    assert len(launcher.links) == 2 and launcher.last.sent == ["GO 2 9.000000"]


def test_discard_warm_closes_it() -> None:
    child, launcher = make()
    child.prepare(0, {}, [])
    child.discard_warm()
    assert child.warm is None and "keeper 100 closed" in launcher.log


def test_prewarm_state_follows_the_warm_keeper() -> None:
    log: list[str] = []
    launcher = FakeLauncher(log)
    child = Child(launcher, ["airflow", "scheduler"], POLICY, ("--prewarm",))
    child.prepare(0.0, {}, ["--name", "failover:c:n"])
    assert launcher.args[-1] == ["--name", "failover:c:n", "--prewarm"]
    warm = launcher.last
    warm.inbox.extend(["READY", "WARMING 41"])
    child.poll(0.1)
    assert (child.prewarm.state, child.prewarm.pid) == ("starting", 41)
    warm.inbox.append('WARM {"seconds": 2.5, "rss_bytes": 136314880, "airflow": "2.11.2"}')
    child.poll(0.2)
    p = child.prewarm
    assert (p.state, p.seconds, p.rss_bytes, p.airflow) == ("warm", 2.5, 136314880, "2.11.2")
    warm.inbox.extend(["REWARM its inputs changed", "WARMING 42", "COLD the warm process exited"])
    child.poll(0.3)
    assert child.prewarm.restarts == 1 and child.prewarm.state == "cold"
    warm.inbox.append("WARMING 43")
    child.poll(0.4)
    assert child.prewarm.restarts == 2 and child.prewarm.state == "starting"
    assert [e[1] for e in child.prewarm.events] == [
        "prewarm_ready",
        "prewarm_restart",
        "prewarm_cold",
    ]
    child.discard_warm("configuration reloaded")
    assert child.prewarm.restarts == 3 and child.prewarm.state == "off"
    assert child.prewarm.events[-1][2]["reason"] == "configuration reloaded"


def test_promotion_ends_the_warm_state_and_cold_starts_do_not_prewarm() -> None:
    log: list[str] = []
    launcher = FakeLauncher(log)
    child = Child(launcher, ["airflow", "scheduler"], POLICY, ("--prewarm",))
    child.start(0.0, 1, 9.0, {}, ["--name", "x"])  # no warm keeper: a cold start
    assert launcher.args[-1] == ["--name", "x"]
    launcher.last.inbox.extend(["STARTED 5", "EXITED 0", "GONE child exited"])
    child.poll(0.5)
    child.prepare(10.0, {}, ["--name", "x"])
    launcher.last.inbox.extend(["READY", "WARMING 7", 'WARM {"seconds": 1}'])
    child.poll(10.1)
    assert child.prewarm.state == "warm"
    child.start(10.2, 2, 19.0, {}, ["--name", "x"])
    assert child.prewarm.state == "off" and launcher.last.sent == ["GO 2 19.000000"]
