"""Three real daemons on the PostgreSQL backend, under kill -9, SIGSTOP, server restart, the
server down for longer than the lease, an admin's pg_terminate_backend, and a graceful stop.

Samplers check every 50 ms: at most one epoch's child tree alive, and at most one epoch's
child DB sessions open.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from failover.backends.postgres.session import lock_key

from ..harness import Cluster, DbSampler, Sampler, read_records, wait_until

pytestmark = pytest.mark.integration


def pg_cluster(root: Path, dsn: str, **settings: str) -> Cluster:
    c = Cluster(
        root,
        settings={"backend": "postgres", "postgres.dsn": dsn, **settings},
        probe_args=("--fork", "1", "--escape", "session", "--pg-dsn", dsn),
    )
    return c


@pytest.fixture
def cluster(tmp_path: Path, pg_dsn: str) -> Iterator[Cluster]:
    c = pg_cluster(tmp_path, pg_dsn)
    yield c
    c.stop_all()


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def sessions(dsn: str, cluster: str) -> list[str]:
    rows = query(
        dsn,
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
        (f"failover:{cluster}:%",),
    )
    return sorted(r[0] for r in rows)


def test_election_status_and_tables(cluster: Cluster, pg_dsn: str) -> None:
    with Sampler(cluster.tag) as sampler, DbSampler(pg_dsn, cluster.cluster) as db:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        names = sessions(pg_dsn, cluster.cluster)
        assert f"failover:t:{leader}:{epoch}:keeper" in names
        assert f"failover:t:{leader}:{epoch}" in names  # the child's own session (PGAPPNAME)
        holder = query(
            pg_dsn,
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = (%s::bigint & x'ffffffffffffffff'::bigint)",
            (lock_key("t"),),
        )
        assert holder == [(f"failover:t:{leader}",)]
        wait_until(
            lambda: len(query(pg_dsn, "SELECT node FROM failover_member WHERE cluster = 't'")) == 3,
            10,
            "three member rows",
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "failover",
                "status",
                "--json",
                "--cluster",
                "t",
                "--backend",
                "postgres",
                "--set",
                f"postgres.dsn={pg_dsn}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["leader"] == leader
        assert {m["node"] for m in status["members"]} == {"n1", "n2", "n3"}
        assert all(m["heartbeat_age"] < 3 for m in status["members"])
        history = query(pg_dsn, "SELECT epoch, node FROM failover_history WHERE cluster = 't'")
        assert (int(epoch), leader) in history
    sampler.assert_clean()
    db.assert_clean()


def test_kill9_leader_daemon(cluster: Cluster, pg_dsn: str) -> None:
    with Sampler(cluster.tag) as sampler, DbSampler(pg_dsn, cluster.cluster) as db:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        cluster.signal(leader, signal.SIGKILL)
        t0 = time.monotonic()
        new_leader, new_epoch = cluster.leader_child(exclude=[leader], timeout=20)
        took = time.monotonic() - t0
        assert int(new_epoch) > int(epoch)
        assert not [
            n for n in sessions(pg_dsn, "t") if n.endswith(f":{epoch}") or f":{epoch}:" in n
        ]
    sampler.assert_clean()
    db.assert_clean()
    assert took < 10, cluster.dump_logs()


def test_graceful_stop_hands_over(cluster: Cluster, pg_dsn: str) -> None:
    with Sampler(cluster.tag) as sampler, DbSampler(pg_dsn, cluster.cluster) as db:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        cluster.signal(leader, signal.SIGTERM)
        assert cluster.procs[leader].wait(timeout=20) == 0
        new_leader, _ = cluster.leader_child(exclude=[leader], timeout=20)
        assert new_leader != leader
    sampler.assert_clean()
    db.assert_clean()
    assert any(r["word"] == "term" and r["node"] == leader for r in read_records(cluster.records))


def test_sigstop_leader_for_three_leases(cluster: Cluster, pg_dsn: str) -> None:
    with Sampler(cluster.tag) as sampler, DbSampler(pg_dsn, cluster.cluster) as db:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        cluster.signal(leader, signal.SIGSTOP)
        new_leader, new_epoch = cluster.leader_child(exclude=[leader], timeout=20)
        assert int(new_epoch) > int(epoch)
        time.sleep(max(0.0, 9.0 - 3.0))  # stay frozen for ~3 x lease (3 s) in all
        cluster.signal(leader, signal.SIGCONT)
        wait_until(
            lambda: any("following" in s or "lost" in s for s in cluster.sentences(leader)[-3:]),
            15,
            "the thawed leader to step down",
        )
        assert cluster.leader_child() == (new_leader, new_epoch)
    sampler.assert_clean()
    db.assert_clean()


def test_admin_terminates_leader_lock_session(cluster: Cluster, pg_dsn: str) -> None:
    with Sampler(cluster.tag) as sampler, DbSampler(pg_dsn, cluster.cluster) as db:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        query(
            pg_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"failover:t:{leader}",),
        )
        new_leader, new_epoch = cluster.leader_child(exclude=[leader], timeout=20)
        assert int(new_epoch) > int(epoch)
        assert any("lost leadership" in s for s in cluster.sentences(leader))
    sampler.assert_clean()
    db.assert_clean()


def newer_epoch(cluster: Cluster, epoch: str) -> None:
    """Wait (40 s at most) for the one live child tree to be of an epoch above `epoch`."""
    wait_until(
        lambda: (o := cluster.leader_child(timeout=30)) and int(o[1]) > int(epoch),
        40,
        f"a child of an epoch above {epoch} once the server is back",
    )


def test_postgres_restart(tmp_path: Path, pg_factory: Any) -> None:
    server = pg_factory()
    cluster = pg_cluster(tmp_path, server.create_database("restart"))
    try:
        with Sampler(cluster.tag) as sampler:
            cluster.start_all()
            _, epoch = cluster.leader_child()
            server.restart(mode="immediate")
            # Every session died: the keeper can no longer vouch and kills the tree; after
            # the restart a leader waits a lease from the server start, then starts.
            newer_epoch(cluster, epoch)
            sentences = [s for n in cluster.nodes for s in cluster.sentences(n)]
            assert any("absence of keepers proves nothing" in s for s in sentences), sentences
        sampler.assert_clean()
    finally:
        cluster.stop_all()


def test_postgres_down_longer_than_the_lease(tmp_path: Path, pg_factory: Any) -> None:
    server = pg_factory()
    cluster = pg_cluster(tmp_path, server.create_database("down"))
    try:
        with Sampler(cluster.tag) as sampler:
            cluster.start_all()
            _, epoch = cluster.leader_child()
            server.stop(mode="immediate")
            # The keeper's proof of life broke with the server: the tree dies at once, and
            # nobody can lead while the lock's server is down, however long that is.
            wait_until(lambda: not cluster.live_children(), 10, "the child tree to die")
            for _ in range(12):  # two leases (3 s) with the server down
                time.sleep(0.5)
                assert not cluster.live_children()
            server.start()
            newer_epoch(cluster, epoch)
            for node in cluster.nodes:
                assert cluster.procs[node].poll() is None, f"{node} exited while the DB was down"
        sampler.assert_clean()
    finally:
        cluster.stop_all()


def test_pooler_dsn_refused(pg_dsn: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "failover",
            "run",
            "--backend",
            "postgres",
            "--set",
            "postgres.dsn=postgresql://u:sekret@pgbouncer.internal:6432/airflow",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "looks like a connection pooler" in done.stderr and "sekret" not in done.stderr


def test_wrong_password_retries_without_crash_loop(tmp_path: Path, pg_server: Any) -> None:
    dsn = pg_server.dsn(user="failover", password="wrong-password")
    cluster = pg_cluster(tmp_path, dsn)
    try:
        proc = cluster.start("n1")
        wait_until(
            lambda: any("password authentication failed" in s for s in cluster.sentences("n1")),
            15,
            "a one-line auth error",
        )
        time.sleep(2)
        assert proc.poll() is None, "the daemon died instead of retrying"
        log = (tmp_path / "n1.log").read_text()
        assert "wrong-password" not in log
        assert not cluster.live_children()
    finally:
        cluster.stop_all()
