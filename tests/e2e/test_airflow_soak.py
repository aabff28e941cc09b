"""Soak with the real Airflow 2.11.2 scheduler (pytest -m soak tests/e2e/test_airflow_soak.py;
FAILOVER_TEST_SOAK_MINUTES, default 30; FAILOVER_TEST_SOAK_SEED; FAILOVER_TEST_SOAK_KEEP=<dir>
keeps the logs): two candidates on
PostgreSQL, LocalExecutor, a DAG of 10 s tasks running all along, random faults of the leader
(kill -9 / SIGTERM / SIGSTOP of its daemon, kill -9 of its scheduler, switchover). Writes
bench/results/soak-airflow.md: faults, tries of one run that overlapped in time (must be 0),
samplers (one child tree, one SchedulerJob heartbeating: must be clean), failed DAG runs."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, EnvSampler, cmdline, comm, keeper_trees, wait_until
from .conftest import DAEMON_SETTINGS, HERE, AirflowDb
from .test_airflow import JobSampler, heartbeating, keeper_children, rows

pytestmark = [pytest.mark.e2e, pytest.mark.soak]
FAULTS = ("kill9_daemon", "sigterm_daemon", "sigstop_daemon", "kill9_scheduler", "switchover")
REPORT = HERE.parent.parent / "bench" / "results" / "soak-airflow.md"


def tries(records: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(run_id, try) -> {node, first, last, ended} from the DAG's records: the try was alive
    from its first record to its last (a beat a second; a killed try has no end)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for line in records.read_text().splitlines() if records.exists() else []:
        run, try_number, node, word, t = line.split()
        seen = out.setdefault((run, try_number), {"node": node, "first": float(t), "last": 0.0})
        seen["first"] = min(seen["first"], float(t))
        seen["last"] = max(seen["last"], float(t))
        seen["ended"] = seen.get("ended", False) or word == "end"
    return out


def overlapping(records: Path) -> list[str]:
    """Tries of one run alive at once: one's first record before another's last."""
    by_run: dict[str, list[tuple[float, float, str]]] = {}
    for (run, _), t in tries(records).items():
        by_run.setdefault(run, []).append((t["first"], t["last"], t["node"]))
    found = []
    for run, spans in by_run.items():
        spans.sort()
        for (_, last, n1), (first, _, n2) in itertools.pairwise(spans):
            if first < last:
                found.append(f"{run}: {n1} alive until {last:.2f}, {n2} from {first:.2f}")
    return found


class TreeSampler(EnvSampler):
    """EnvSampler that keeps what each process of a broken sample was (comm, argv)."""

    def check(self) -> Any:
        outcome = super().check()
        if outcome:
            outcome += " " + repr({p: (comm(p), cmdline(p)[:4]) for p in self.processes()})
        return outcome


def last_job(dsn: str) -> int:
    return int(
        rows(dsn, "SELECT coalesce(max(id), 0) FROM job WHERE job_type = 'SchedulerJob'")[0][0]
    )


def fresh_job(dsn: str, after: int) -> bool:
    """A SchedulerJob started after job `after` heartbeats (its first beat is its start)."""
    sql = (
        "SELECT count(*) FROM job WHERE job_type = 'SchedulerJob' AND id > %s AND state = "
        "'running' AND latest_heartbeat > now() - interval '2 seconds'"
    )
    return bool(rows(dsn, sql, (after,))[0][0])


def inject(c: Cluster, fault: str, leader: str) -> str | None:
    """Do `fault`; returns what an abandoned switchover said."""
    if fault in {"kill9_daemon", "sigterm_daemon"}:
        c.signal(leader, signal.SIGKILL if fault == "kill9_daemon" else signal.SIGTERM)
        c.procs[leader].wait(timeout=60)
        c.start(leader)
    elif fault == "sigstop_daemon":
        c.signal(leader, signal.SIGSTOP)
        time.sleep(10)
        c.signal(leader, signal.SIGCONT)
    elif fault == "kill9_scheduler":
        for keeper, (node, _) in keeper_trees(c.cluster).items():
            if node == leader:
                os.kill(min(keeper_children(keeper)), signal.SIGKILL)
    else:
        other = next(n for n in c.nodes if n != leader)
        argv = [sys.executable, "-m", "failover", "switchover", "--to", other, "--wait", "60"]
        done = subprocess.run(
            [*argv, *c.client_args()],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            env={**os.environ, **c.env},
        )
        if done.returncode != 0:  # abandoned (the old leader leads on): an outcome, no fault
            return done.stderr.strip()
    return None


@pytest.mark.timeout(900 + 60 * float(os.environ.get("FAILOVER_TEST_SOAK_MINUTES", "30")))
def test_airflow_soak(airflow_db: AirflowDb, tmp_path: Path) -> None:
    minutes = float(os.environ.get("FAILOVER_TEST_SOAK_MINUTES", "30"))
    seed = int(os.environ.get("FAILOVER_TEST_SOAK_SEED", "7"))
    rng = random.Random(seed)
    db = airflow_db
    c = Cluster(
        tmp_path / "daemons",
        nodes=("m1", "m2"),
        cluster=f"soak{uuid.uuid4().hex[:6]}",
        settings={**DAEMON_SETTINGS, "backend": "postgres", "airflow.prewarm": "true"},
        command=(db.binary, "scheduler", "--skip-serve-logs"),
        env=db.env(AIRFLOW__CORE__DAGS_FOLDER=str(HERE / "dags_soak")),
    )
    faults: Counter[str] = Counter()
    recoveries: list[float] = []
    stuck: list[str] = []
    abandoned: list[str] = []
    end = time.monotonic() + 60 * minutes
    try:
        with TreeSampler(c.cluster) as procs, JobSampler(db.dsn, c.cluster) as jobs:
            c.start_all()
            for _ in range(10_000):
                leader = wait_until(lambda: heartbeating(db.dsn), 120, "a scheduler", 0.2)
                if time.monotonic() >= end:
                    break
                time.sleep(rng.uniform(20, 40))  # tasks run between faults
                leader = wait_until(lambda: heartbeating(db.dsn), 120, "a scheduler", 0.2)
                fault = rng.choice(FAULTS)
                faults[fault] += 1
                newest = last_job(db.dsn)
                t0 = time.monotonic()
                said = inject(c, fault, leader)
                if said:
                    abandoned.append(said)
                try:
                    wait_until(lambda n=newest: fresh_job(db.dsn, n), 120, "a new scheduler", 0.2)
                except AssertionError:
                    stuck.append(f"no new scheduler 120 s after {fault}")
                    print(c.dump_logs(), file=sys.stderr)
                    continue
                recoveries.append(time.monotonic() - t0)
        c.stop_all(timeout=40)
        runs = dict(rows(db.dsn, "SELECT state, count(*) FROM dag_run GROUP BY state"))
        retried = rows(db.dsn, "SELECT count(*) FROM task_instance WHERE try_number > 1")[0][0]
        doubled = overlapping(db.records)
        ended = sum(1 for t in tries(db.records).values() if t["ended"])
        recovery = (
            f"median {statistics.median(recoveries):.1f}, max {max(recoveries):.1f}"
            if recoveries
            else "none measured"
        )
        REPORT.write_text(
            f"# Soak: real Airflow 2.11.2 (LocalExecutor), two candidates on PostgreSQL\n\n"
            f"`FAILOVER_TEST_SOAK_MINUTES={minutes:g} FAILOVER_TEST_SOAK_SEED={seed} "
            f"python -m pytest -m soak tests/e2e/test_airflow_soak.py` "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 2 cores, prewarm on, "
            f"load average at the end {os.getloadavg()[0]:.1f})\n\n"
            f"- faults: {dict(faults)} ({sum(faults.values())} in all)\n"
            f"- fault -> a new SchedulerJob heartbeating, s: {recovery}\n"
            f"- task tries started {len(tries(db.records))}, finished {ended}; "
            f"task instances with more than one try {retried}\n"
            f"- tries of one run overlapping in time: {len(doubled)} (must be 0)\n"
            f"- samplers: {len(procs.violations)} of {procs.samples} (one child tree), "
            f"{len(jobs.violations)} of {jobs.samples} (one SchedulerJob heartbeating) "
            f"(must be 0)\n"
            f"- DAG runs by state at the end: {runs}\n"
            f"- switchovers abandoned (the old leader led on): {abandoned}\n"
            f"- faults after which no new scheduler heartbeated within 120 s: {stuck}\n"
        )
        print("\n" + REPORT.read_text(), file=sys.stderr)
        for line in doubled[:10] + procs.violations[:3]:
            print(line, file=sys.stderr)
        if doubled or procs.violations:
            print(c.dump_logs(), file=sys.stderr)
        procs.assert_clean()
        jobs.assert_clean()
        assert not doubled, doubled
        assert not stuck, stuck
    finally:
        c.stop_all(timeout=40)
        keep = os.environ.get("FAILOVER_TEST_SOAK_KEEP")  # a directory for the logs
        if keep:
            shutil.copytree(tmp_path, keep, dirs_exist_ok=True, ignore_dangling_symlinks=True)
