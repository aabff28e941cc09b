"""A failover with Celery work in flight, measured: which tasks ran where and how often, the
new scheduler's first heartbeat and first queued task. Shared by test_celery.py and
bench/celery.py; every figure is read from the metadata DB (DB clock) and the task records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..harness import wait_until
from .celery_site import WORKER_CONCURRENCY, CelerySite, rows


@dataclass
class TaskRow:
    state: str | None
    try_number: int
    external_executor_id: str | None
    hostname: str | None
    queued_by_job_id: int | None
    end_date: Any = None


@dataclass
class Figures:
    """One failover with work in flight (times in seconds from the fault, DB clock)."""

    heartbeat: float  # the new scheduler's job row (its first heartbeat)
    next_queued: float  # the first task instance queued by the new scheduler
    in_flight: int  # running on the worker at the fault
    finished: int  # ... of which succeeded with one try, run once, same Celery task id
    rerun: int  # ... of which ran a second time (a second try or a second record)
    lost: int  # ... of which did not succeed
    adopted: int  # ... of which the new scheduler adopted (queued_by_job_id = its job)
    ended_before: int  # ... of which ended before the new scheduler's first queued task
    # (so maybe before its start-up orphan check: nothing left to adopt)
    queued: int  # queued (in the broker) at the fault
    queued_done: int  # ... of which succeeded with one try
    queued_adopted: int  # ... of which the new scheduler adopted
    new_runs: int  # `beat` DAG runs created after the fault
    beat_retried: int  # `beat` tasks on a second try since the fault (reset, not adopted)
    leader: str
    new_leader: str


def snapshot(dsn: str, run_id: str) -> dict[str, TaskRow]:
    found = rows(
        dsn,
        "SELECT task_id, state, try_number, external_executor_id, hostname, queued_by_job_id, "
        "end_date FROM task_instance WHERE dag_id = 'slow' AND run_id = %s",
        (run_id,),
    )
    return {str(r[0]): TaskRow(r[1], int(r[2]), r[3], r[4] or None, r[5], r[6]) for r in found}


def newest_scheduler(dsn: str) -> tuple[int, str, Any] | None:
    found = rows(
        dsn,
        "SELECT id, hostname, start_date FROM job WHERE job_type = 'SchedulerJob' "
        "AND state = 'running' AND latest_heartbeat > now() - interval '3 seconds' "
        "ORDER BY id DESC LIMIT 1",
    )
    return (int(found[0][0]), str(found[0][1]), found[0][2]) if found else None


def beat_retried(dsn: str) -> int:
    sql = "SELECT count(*) FROM task_instance WHERE dag_id = 'beat' AND try_number > 1"
    return int(rows(dsn, sql)[0][0])


def work_in_flight(site: CelerySite, run_id: str, timeout: float = 180) -> dict[str, TaskRow]:
    """Trigger a `slow` run and wait until the worker runs a full load of its tasks while
    the others wait in the broker."""
    site.trigger(run_id)

    def loaded() -> dict[str, TaskRow] | None:
        tis = snapshot(site.db.dsn, run_id)
        running = [t for t in tis.values() if t.state == "running" and t.hostname == "worker"]
        queued = [t for t in tis.values() if t.state == "queued"]
        return tis if len(running) >= WORKER_CONCURRENCY and queued else None

    snap: dict[str, TaskRow] = wait_until(loaded, timeout, "slow tasks running and queued", 0.2)
    return snap


def records(site: CelerySite, run_id: str) -> dict[str, int]:
    """task_id -> how many times its command started, for one run."""
    counts: dict[str, int] = {}
    lines = site.db.records.read_text().splitlines() if site.db.records.exists() else []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == run_id:
            counts[parts[1]] = counts.get(parts[1], 0) + 1
    return counts


@dataclass
class Fault:
    """What was seen at the fault and right after it."""

    leader: str
    at: Any  # DB now() just before the fault
    tasks: dict[str, TaskRow]  # the run's task instances then
    new_job: tuple[int, str, Any]  # the new scheduler's job row: id, hostname, start_date
    beat_retried: int  # `beat` second tries before the fault


def failover_with_work_in_flight(
    site: CelerySite, run_id: str, fault: Callable[[str], None], timeout: float = 240
) -> Figures:
    """Trigger `run_id`, apply `fault(leader)` once tasks run and wait, then wait for the
    new scheduler and for every task of the run to end; return the figures."""
    before = wait_until(lambda: newest_scheduler(site.db.dsn), 180, "a scheduler", 0.2)
    at_fault = work_in_flight(site, run_id)
    retried_before = beat_retried(site.db.dsn)
    fault_at = rows(site.db.dsn, "SELECT now()")[0][0]
    fault(before[1])
    new = wait_until(
        lambda: (j := newest_scheduler(site.db.dsn)) and j[0] > before[0] and j,
        120,
        "a new scheduler heartbeating",
        0.1,
    )
    final = wait_until(
        lambda: (
            (s := snapshot(site.db.dsn, run_id))
            and all(t.state in ("success", "failed", "upstream_failed") for t in s.values())
            and s
        ),
        timeout,
        "every slow task to end",
        0.5,
    )
    seen = Fault(before[1], fault_at, at_fault, new, retried_before)
    return figures(site, seen, final, records(site, run_id))


def figures(
    site: CelerySite, seen: Fault, final: dict[str, TaskRow], started: dict[str, int]
) -> Figures:
    """The figures of one failover from the run's task instances before and after it."""
    in_flight = {k: t for k, t in seen.tasks.items() if t.state == "running"}
    queued = {k: t for k, t in seen.tasks.items() if t.state == "queued"}
    new_id = seen.new_job[0]

    def once(k: str) -> bool:
        return final[k].state == "success" and final[k].try_number == 1 and started.get(k) == 1

    # Only the new scheduler queues after its job row exists (the old one is gone by then; a
    # SIGTERMed one may still queue while it shuts down, before that).
    next_queued = rows(
        site.db.dsn,
        "SELECT min(queued_dttm) FROM task_instance WHERE queued_dttm >= %s",
        (seen.new_job[2],),
    )[0][0]
    new_runs = rows(
        site.db.dsn,
        "SELECT count(*) FROM dag_run WHERE dag_id = 'beat' AND run_type = 'scheduled' "
        "AND queued_at > %s",
        (seen.at,),
    )[0][0]
    ended = [
        k
        for k in in_flight
        if next_queued and final[k].end_date and final[k].end_date < next_queued
    ]
    return Figures(
        heartbeat=(seen.new_job[2] - seen.at).total_seconds(),
        next_queued=(next_queued - seen.at).total_seconds() if next_queued else float("nan"),
        in_flight=len(in_flight),
        finished=sum(
            once(k) and final[k].external_executor_id == t.external_executor_id
            for k, t in in_flight.items()
        ),
        rerun=sum(final[k].try_number > 1 or started.get(k, 0) > 1 for k in in_flight),
        lost=sum(final[k].state != "success" for k in in_flight),
        adopted=sum(final[k].queued_by_job_id == new_id for k in in_flight),
        ended_before=len(ended),
        queued=len(queued),
        queued_done=sum(once(k) for k in queued),
        queued_adopted=sum(final[k].queued_by_job_id == new_id for k in queued),
        new_runs=int(new_runs),
        beat_retried=beat_retried(site.db.dsn) - seen.beat_retried,
        leader=seen.leader,
        new_leader=seen.new_job[1],
    )


def kill9(site: CelerySite) -> Callable[[str], None]:
    def fault(leader: str) -> None:
        assert site.cluster is not None
        site.cluster.signal(leader, signal.SIGKILL)

    return fault


class SwitchoverAbandoned(AssertionError):
    """The controller gave the request up (the old scheduler's stop outlasted its wait)."""


def switchover(site: CelerySite) -> Callable[[str], None]:
    """`failover switchover --to <the other node>`, asked again (3 tries at most) when the
    CLI could not even reach the DB on a loaded machine."""

    def fault(leader: str) -> None:
        c = site.cluster
        assert c is not None
        other = next(n for n in c.nodes if n != leader)
        argv = [sys.executable, "-m", "failover", "switchover", "--to", other, *c.client_args()]
        for _ in range(3):
            done = subprocess.run(
                argv,
                env={**os.environ, **site.env(None)},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if done.returncode == 0 or "cannot connect" not in done.stderr:
                break
        if "abandoned" in done.stderr:
            raise SwitchoverAbandoned(done.stderr.strip())
        assert done.returncode == 0, done.stderr

    return fault
