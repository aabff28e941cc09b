"""Scheduler health verdicts and what the leader does with them."""

from __future__ import annotations

from failover.airflow.health import Health, HealthPolicy, JobRow, judge
from failover.child import ChildState
from failover.controller import Controller, Role

from .fakes import FakeJobs, make_rig
from .test_controller import started

POLICY = HealthPolicy(threshold=30.0, startup_grace=60.0)


def test_judge() -> None:
    assert judge(None, 10, POLICY).health is Health.STARTING
    assert judge(None, 61, POLICY).health is Health.HUNG
    assert judge(JobRow(5, "h", 2.0), 100, POLICY).health is Health.HEALTHY
    hung = judge(JobRow(5, "h", 31.0), 100, POLICY)
    assert hung.health is Health.HUNG and "job 5" in hung.detail and "31 s ago" in hung.detail


def with_jobs() -> tuple[object, FakeJobs]:
    rig = make_rig()
    jobs = FakeJobs()
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
        health_policy=POLICY,
    )
    return rig, jobs


def test_hung_scheduler_is_killed_restarted_and_repeated_hangs_step_down() -> None:
    rig, jobs = with_jobs()
    started(rig)  # type: ignore[arg-type]
    assert jobs.asked_after == [41]  # only rows created after the child's start count
    for hang in range(3):
        jobs.row = JobRow(42 + hang, "h", 1.0)
        rig.clock.advance(1)
        assert rig.controller.tick().sentence == "no action: I am the leader with epoch 1"
        jobs.row = JobRow(42 + hang, "h", 45.0)  # stopped heartbeating
        rig.clock.advance(1)
        result = rig.controller.tick()
        assert (
            "last heartbeat 45 s ago" in result.sentence and "killing the child" in result.sentence
        )
        assert rig.launcher.last.sent[-1] == "KILL"
        rig.launcher.last.inbox.extend(["EXITED -9", "GONE kill requested"])
        rig.clock.advance(0.1)
        result = rig.controller.tick()
        if hang < 2:
            assert rig.child.state is ChildState.BACKOFF, result.sentence
            rig.clock.advance(10)
            rig.controller.tick()
            rig.launcher.last.inbox.append("STARTED 9")
            rig.controller.tick()
            assert rig.child.state is ChildState.RUNNING
    assert rig.child.state is ChildState.FAILED
    assert result.role is Role.DEMOTING  # three hangs: let a healthy candidate take over


def test_no_heartbeat_within_grace_is_fine_then_hung() -> None:
    rig, jobs = with_jobs()
    started(rig)  # type: ignore[arg-type]
    rig.clock.advance(30)
    assert "no action" in rig.controller.tick().sentence
    rig.clock.advance(31)
    assert "no SchedulerJob row" in rig.controller.tick().sentence


def test_unreadable_job_table_never_kills() -> None:
    rig, jobs = with_jobs()
    started(rig)  # type: ignore[arg-type]
    jobs.down = True
    rig.clock.advance(500)
    rig.backend.lease.holder = "n1"
    result = rig.controller.tick()
    assert result.sentence == "no action: I am the leader with epoch 1"
    assert rig.controller.verdict.health is Health.UNKNOWN
