"""The leader-only group: config shape, side components' restarts and crash loop, their
health, and how `status` shows them."""

from __future__ import annotations

import dataclasses

import pytest

from failover.airflow.health import HealthPolicy, JobRow
from failover.child import Child, ChildState
from failover.child.group import Component, decode, encode, job_type
from failover.controller import Controller
from failover.errors import ConfigError
from failover.sources import load_settings

from .fakes import POLICY, FakeJobs, FakeLauncher, make_rig
from .test_controller import started

GROUP = '{"dag-processor": ["airflow", "dag-processor"], "scheduler": ["airflow", "scheduler"]}'


def test_components_from_env_and_toml(tmp_path: object) -> None:
    s = load_settings(env={"FAILOVER_AIRFLOW__COMPONENTS": GROUP})
    assert s.group == (
        ("scheduler", ("airflow", "scheduler")),  # the scheduler first, whatever the order
        ("dag-processor", ("airflow", "dag-processor")),
    )
    assert load_settings(env={}).group == (("scheduler", ("airflow", "scheduler")),)
    path = tmp_path / "f.toml"  # type: ignore[operator]
    path.write_text(
        '[airflow.components]\nscheduler = ["airflow", "scheduler", "--skip-serve-logs"]\n'
        'triggerer = "airflow triggerer"\n'
    )
    s = load_settings(str(path), env={})
    assert s.group[1] == ("triggerer", ("airflow", "triggerer"))


def test_components_with_command_or_bad_names_are_refused() -> None:
    env = {"FAILOVER_AIRFLOW__COMPONENTS": GROUP, "FAILOVER_COMMAND": "airflow scheduler -n 1"}
    with pytest.raises(ConfigError, match="together with command"):
        load_settings(env=env)
    with pytest.raises(ConfigError, match="name of"):
        load_settings(env={"FAILOVER_AIRFLOW__COMPONENTS": '{"A B": ["x"]}'})
    with pytest.raises(ConfigError, match="AIRFLOW__COMPONENTS: expected a table"):
        load_settings(env={"FAILOVER_AIRFLOW__COMPONENTS": '["x"]'})


def make() -> tuple[Child, FakeLauncher]:
    launcher = FakeLauncher([])
    side = Component("dag-processor", ("airflow", "dag-processor"))
    return Child(launcher, ["airflow", "scheduler"], POLICY, sides=[side]), launcher


def test_side_component_restarts_alone_with_backoff_then_crash_loop_fails_the_group() -> None:
    child, launcher = make()
    child.start(0, 1, 99.0, {})
    assert launcher.args[-1] == ["--component", 'dag-processor=["airflow", "dag-processor"]']
    link = launcher.last
    link.inbox.extend(["STARTED 10", "STARTED 11 dag-processor"])
    child.poll(0.1)
    side = child.sides["dag-processor"]
    assert (child.pid, side.pid, side.state) == (10, 11, "running")
    now = 1.0
    for n in range(1, POLICY.max_fast_failures):
        link.inbox.append("EXITED 1 dag-processor")
        sent = len(link.sent)
        child.poll(now)
        assert side.state == "backoff" and child.state is ChildState.RUNNING and child.pid == 10
        assert len(link.sent) == sent  # not before its backoff
        now = side.backoff_until
        child.poll(now)  # the backoff passed: restart it, on its own
        assert link.sent[-1] == "RESTART dag-processor" and side.restarts == n
        link.inbox.append(f"STARTED {20 + n} dag-processor")
        child.poll(now)
        assert side.state == "running" and side.pid == 20 + n
    link.inbox.append("EXITED 1 dag-processor")
    child.poll(now)  # one fast failure too many: the whole group goes, leadership with it
    assert link.sent[-1] == "KILL"
    link.inbox.extend(["EXITED -9", "GONE kill requested"])
    child.poll(now)
    assert child.state is ChildState.FAILED and "crash loop" in child.last_event
    assert side.state == "stopped"


def test_side_exits_during_a_stop_are_not_failures() -> None:
    child, launcher = make()
    child.start(0, 1, 99.0, {})
    launcher.last.inbox.extend(["STARTED 10", "STARTED 11 dag-processor"])
    child.poll(0.1)
    child.stop()
    launcher.last.inbox.extend(["EXITED 0", "EXITED 0 dag-processor", "GONE stop requested"])
    child.poll(0.2)
    assert child.state is ChildState.STOPPED and child.sides["dag-processor"].fast_failures == 0
    child.start(1, 1, 99.0, {})  # the scheduler crashes: the keeper ends the rest of the group
    launcher.last.inbox.extend(["STARTED 20", "STARTED 21 dag-processor"])
    child.poll(1.1)
    launcher.last.inbox.extend(["EXITED 1", "EXITED -15 dag-processor"])
    child.poll(1.2)
    side = child.sides["dag-processor"]
    assert side.fast_failures == 0 and side.state == "stopped"
    assert "RESTART dag-processor" not in launcher.last.sent


def test_hung_side_component_is_killed_alone_by_its_own_threshold() -> None:
    rig = make_rig()
    jobs = FakeJobs()
    side = Component("dag-processor", ("airflow", "dag-processor"))
    rig.child.sides = {side.name: side}
    rig.controller = Controller(
        cluster="c1",
        node="n1",
        backend=rig.backend,
        store=rig.store,
        child=rig.child,
        clock=rig.clock,
        timings=rig.controller.t,
        base_env={},
        health=jobs,
        health_policy=HealthPolicy(threshold=30.0, startup_grace=60.0),
    )
    rig.controller.side_policies = {"DagProcessorJob": HealthPolicy(5.0, 60.0)}
    started(rig)  # type: ignore[arg-type]
    rig.launcher.last.inbox.append("STARTED 11 dag-processor")
    jobs.row = JobRow(42, "h", 1.0)
    jobs.rows["DagProcessorJob"] = JobRow(43, "h", 4.0)
    rig.clock.advance(1)
    assert rig.controller.tick().sentence == "no action: I am the leader with epoch 1"
    assert side.health == "healthy"
    jobs.rows["DagProcessorJob"] = JobRow(43, "h", 6.0)  # over its own 5 s, not the 30 s
    rig.clock.advance(1)
    sentence = rig.controller.tick().sentence
    assert "component dag-processor" in sentence and "6 s ago" in sentence, sentence
    assert rig.launcher.last.sent[-1] == "KILL dag-processor"
    rig.launcher.last.inbox.append("EXITED -9 dag-processor")
    rig.clock.advance(1)
    rig.controller.tick()
    assert side.state == "backoff" and side.fast_failures == 1
    assert rig.child.state is ChildState.RUNNING  # the scheduler was left alone
    rig.clock.advance(POLICY.backoff_initial)
    rig.controller.tick()
    assert "RESTART dag-processor" in rig.launcher.last.sent[-2:]
    # The restarted one is judged by rows above the old one only.
    rig.launcher.last.inbox.append("STARTED 12 dag-processor")
    rig.clock.advance(1)
    assert rig.controller.tick().sentence == "no action: I am the leader with epoch 1"
    assert side.health == "starting"


def test_member_row_carries_the_components_for_status() -> None:
    side = Component("dag-processor", ("airflow", "dag-processor"), "running", 11, 2)
    side.health = "healthy"
    text = encode("running", [side], "starting")
    assert text == "running:starting|dag-processor:running:11:2:healthy"
    assert decode(text) == (
        "running",
        [
            {
                "name": "dag-processor",
                "state": "running",
                "pid": 11,
                "restarts": 2,
                "health": "healthy",
            }
        ],
        "starting",
    )
    assert encode("running", [], "healthy") == "running"  # a lone command: as before
    assert decode("running") == ("running", [], "unknown")
    # A row written by a daemon before health was recorded (rolling upgrade).
    assert decode("running|dag-processor:running:11:2") == (
        "running",
        [
            {
                "name": "dag-processor",
                "state": "running",
                "pid": 11,
                "restarts": 2,
                "health": "unknown",
            }
        ],
        "unknown",
    )
    assert job_type(["/venv/bin/airflow", "triggerer"]) == "TriggererJob"
    assert job_type(["python", "x.py"]) is None


def test_status_table_shows_components() -> None:
    from failover.ops.status import render

    member = {
        "node": "n1",
        "role": "leader",
        "epoch": 3,
        "heartbeat_age": 0.4,
        "child": "running",
        "child_pid": 10,
        "child_health": "healthy",
        "components": decode("running:healthy|dag-processor:running:11:2:hung")[1],
    }
    status = {
        "cluster": "c",
        "backend": "local",
        "paused": False,
        "switchover_to": None,
        "members": [member],
        "healthy_leader": True,
    }
    text = render(status)
    head, row = text.splitlines()[1:3]
    assert head.split() == [
        *("NODE", "ROLE", "EPOCH", "HEARTBEAT", "CHILD", "PID", "HEALTH", "COMPONENTS")
    ]
    assert row.split()[5:8] == ["running", "10", "healthy"]
    assert "dag-processor running 11 hung (2 restarts)" in row


def test_side_components_start_once_the_scheduler_heartbeats() -> None:
    """With `defer_sides` the keeper starts the dag-processor only on `RESTART`, sent once
    the scheduler's first job row is seen: it does not compete with its start-up."""
    rig = make_rig()
    jobs = FakeJobs()
    side = Component("dag-processor", ("airflow", "dag-processor"))
    rig.child.sides = {side.name: side}
    rig.child.policy = dataclasses.replace(POLICY, defer_sides=True)
    rig.controller = Controller(
        cluster="c1",
        node="n1",
        backend=rig.backend,
        store=rig.store,
        child=rig.child,
        clock=rig.clock,
        timings=rig.controller.t,
        base_env={},
        health=jobs,
        health_policy=HealthPolicy(threshold=30.0, startup_grace=60.0),
    )
    started(rig)  # type: ignore[arg-type]
    assert rig.launcher.args[-1][-1] == "--defer-components"
    for _ in range(3):  # no SchedulerJob row yet: the scheduler is starting
        rig.clock.advance(1)
        rig.controller.tick()
        assert side.state == "deferred" and "RESTART dag-processor" not in rig.launcher.last.sent
    jobs.row = JobRow(42, "h", 0.2)
    rig.clock.advance(1)
    assert rig.controller.tick().sentence == "no action: I am the leader with epoch 1"
    assert rig.launcher.last.sent.count("RESTART dag-processor") == 1
    assert side.state == "starting" and side.started_at == rig.clock()
    rig.launcher.last.inbox.append("STARTED 11 dag-processor")
    rig.clock.advance(1)
    rig.controller.tick()
    assert (side.state, side.pid) == ("running", 11)
    assert rig.launcher.last.sent.count("RESTART dag-processor") == 1


def test_deferred_sides_are_released_only_while_the_main_runs() -> None:
    child, launcher = make()
    child.policy = dataclasses.replace(POLICY, defer_sides=True)
    child.start(0, 1, 99.0, {})
    assert launcher.args[-1][-1] == "--defer-components"
    child.release_sides(0.05)  # not running yet: nothing to release
    assert "RESTART dag-processor" not in launcher.last.sent
    launcher.last.inbox.append("STARTED 10")
    child.poll(0.1)
    child.release_sides(0.1)
    assert launcher.last.sent[-1] == "RESTART dag-processor"
