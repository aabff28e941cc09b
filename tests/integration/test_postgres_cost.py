"""What real PostgreSQL daemons cost the server (issue #20): 3 sessions per daemon (lock, which
also LISTENs, member store, keeper), 2 statements per standby tick; and a release still wakes
a standby at once, also after an admin ended its lock session."""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from ..harness import Cluster, DbSampler, Sampler, read_records, wait_until

pytestmark = pytest.mark.integration

STATEMENT = re.compile(r"\[(\d+)\] \S* ?LOG:  (?:statement|execute [^:]*):")


def sessions(dsn: str, cluster: str) -> dict[str, list[int]]:
    """application_name -> backend pids, for the cluster's sessions."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT application_name, pid FROM pg_stat_activity "
                "WHERE application_name LIKE %s AND datname = current_database()",
                (f"failover:{cluster}:%",),
            )
            out: dict[str, list[int]] = {}
            for name, pid in cur.fetchall():
                out.setdefault(name, []).append(int(pid))
            return out
    finally:
        conn.close()


def terminate(dsn: str, pid: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        conn.close()


def daemon_sessions(names: dict[str, list[int]], cluster: str, node: str) -> dict[str, int]:
    """The sessions a daemon holds (its keeper's included, its child's own not): name -> pid."""
    out = {}
    for name, pids in names.items():
        parts = name.split(":")
        if parts[:3] != ["failover", cluster, node]:
            continue
        if len(parts) == 4 and parts[3].isdigit():
            continue  # the child's session (PGAPPNAME failover:<cluster>:<node>:<epoch>)
        for pid in pids:
            out[f"{name}#{pid}"] = pid
    return out


def ready(c: Cluster, dsn: str) -> tuple[str, list[str]]:
    """The leader, once every standby follows it with its warm keeper's session open."""
    leader, _ = c.leader_child(timeout=60)
    standbys = [n for n in c.nodes if n != leader]

    def all_up() -> bool:
        names = sessions(dsn, c.cluster)
        return all(
            f"failover:{c.cluster}:{n}:standby" in names
            and any("following leader" in s for s in c.sentences(n)[-3:])
            for n in standbys
        )

    wait_until(all_up, 30, "standbys following with warm keepers")
    return leader, standbys


@pytest.fixture
def cluster(tmp_path: Path, pg_dsn: str) -> Iterator[Cluster]:
    c = Cluster(
        tmp_path,
        settings={"backend": "postgres", "postgres.dsn": pg_dsn},
        probe_args=("--fork", "1", "--escape", "session", "--pg-dsn", pg_dsn),
    )
    yield c
    c.stop_all()


def test_three_sessions_per_daemon_and_two_statements_per_standby_tick(
    cluster: Cluster, pg_dsn: str, pg_server: Any
) -> None:
    if not hasattr(pg_server, "log_path"):
        pytest.skip("needs the server log (a local PostgresServer)")
    c = cluster
    c.start_all()
    leader, standbys = ready(c, pg_dsn)
    names = sessions(pg_dsn, c.cluster)
    held = {n: daemon_sessions(names, c.cluster, n) for n in c.nodes}
    for node, mine in held.items():
        assert len(mine) == 3, f"{node}: {sorted(mine)}"  # lock, store, keeper; no watch
    pg_server.execute("ALTER SYSTEM SET log_statement = 'all'")
    pg_server.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(1.0)
        start = pg_server.log_path.stat().st_size
        time.sleep(5.0)
        end = pg_server.log_path.stat().st_size
    finally:
        pg_server.execute("ALTER SYSTEM RESET log_statement")
        pg_server.execute("SELECT pg_reload_conf()")
    with open(pg_server.log_path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    counts = Counter(int(m.group(1)) for m in STATEMENT.finditer(text))
    assert sessions(pg_dsn, c.cluster) == names, "a session changed during the window"
    report = []
    for node in c.nodes:
        lock = counts[names[f"failover:{c.cluster}:{node}"][0]]  # one campaign or renew a tick
        total = sum(counts[pid] for pid in held[node].values())
        report.append(f"{node}: {total} statements, {lock} ticks")
        assert lock >= 5, report  # loop 0.5 s: ~9 ticks in 5 s
        assert total <= 2 * lock + 1, report
    print("\n" + "; ".join(report) + f" (leader {leader})")


def test_a_release_wakes_a_standby_whose_lock_session_was_ended(
    tmp_path: Path, pg_dsn: str
) -> None:
    """loop_seconds 8: a standby that takes over well inside its loop was woken by the NOTIFY
    on its lock session, LISTENing again after an admin's pg_terminate_backend."""
    loop = 8.0
    c = Cluster(
        tmp_path,
        nodes=("n1", "n2"),
        settings={
            "backend": "postgres",
            "postgres.dsn": pg_dsn,
            "lease_seconds": "20",
            "loop_seconds": str(loop),
        },
        probe_args=("--fork", "1", "--escape", "session"),
    )
    try:
        with Sampler(c.tag) as sampler, DbSampler(pg_dsn, c.cluster) as db:
            c.start_all()
            leader, [standby] = ready(c, pg_dsn)
            lock = f"failover:{c.cluster}:{standby}"
            [old] = sessions(pg_dsn, c.cluster)[lock]
            terminate(pg_dsn, old)
            wait_until(
                lambda: sessions(pg_dsn, c.cluster).get(lock, [old]) != [old],
                5,
                "the standby's new lock session (it saw the old one end: no loop wait)",
            )
            reconnected = time.clock_gettime(time.CLOCK_BOOTTIME)
            time.sleep(0.5)  # its LISTEN follows the tick that reconnected
            c.signal(leader, signal.SIGTERM)
            assert c.procs[leader].wait(timeout=20) == 0
            exited = time.clock_gettime(time.CLOCK_BOOTTIME)
            new_leader, new_epoch = c.leader_child(exclude=[leader], timeout=20)
        sampler.assert_clean()
        db.assert_clean()
        started = min(
            float(r["t"])
            for r in read_records(c.records)
            if r["word"] == "start" and (r["node"], r["epoch"]) == (new_leader, new_epoch)
        )
        print(f"\nchild {started - exited:.3f} s after the old daemon exited")
        assert new_leader == standby
        assert started - exited < 1.5, c.dump_logs()
        assert started < reconnected + loop - 1.0, "it waited for its tick\n" + c.dump_logs()
    finally:
        c.stop_all()
