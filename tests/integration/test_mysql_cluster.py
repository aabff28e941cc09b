"""Three real daemons on the mysql backend (MariaDB), under kill -9, SIGTERM, SIGSTOP past
the lease, server restart, the server down for two leases, and an admin's KILL of the lock
session.

Samplers check every 50 ms: at most one epoch's child tree alive, and at most one epoch's
keeper lock held.
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

import pymysql
import pytest

from failover.dsn import mysql_connect_args
from failover.keeper.proof import keeper_lock_name, mysql_lock_name

from ..harness import Cluster, Periodic, Sampler, wait_until

pytestmark = pytest.mark.integration


def my_cluster(root: Path, dsn: str, **settings: str) -> Cluster:
    return Cluster(
        root,
        settings={"backend": "mysql", "mysql.dsn": dsn, **settings},
        probe_args=("--fork", "1", "--escape", "session"),
    )


@pytest.fixture
def cluster(tmp_path: Path, my_dsn: str) -> Iterator[Cluster]:
    c = my_cluster(tmp_path, my_dsn)
    yield c
    c.stop_all()


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = pymysql.connect(**mysql_connect_args(dsn), autocommit=True, connect_timeout=3)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


class KeeperLockSampler(Periodic):
    """At most one epoch's keeper lock held at every 50 ms sample (epochs 1..40)."""

    label = "one keeper lock at a time"

    def __init__(self, dsn: str, cluster: str, interval: float = 0.05) -> None:
        super().__init__(interval)
        self.dsn = dsn
        self.cluster = cluster
        self.conn: Any = None
        self.names = [keeper_lock_name(cluster, e) for e in range(1, 41)]

    def check(self) -> Any:
        try:
            if self.conn is None or not self.conn.open:
                self.conn = pymysql.connect(
                    **mysql_connect_args(self.dsn), autocommit=True, connect_timeout=2
                )
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT " + ", ".join("IS_USED_LOCK(%s)" for _ in self.names), self.names
                )
                row = cur.fetchone()
        except pymysql.MySQLError:
            self.conn = None
            return self.SKIP  # the server may be restarting on purpose
        held = [e + 1 for e, holder in enumerate(row) if holder is not None]
        return f"keeper locks of epochs {held}" if len(held) > 1 else None

    def finish(self) -> None:
        if self.conn is not None and self.conn.open:
            self.conn.close()


def lock_holder(dsn: str) -> int | None:
    rows = query(dsn, "SELECT IS_USED_LOCK(%s)", (mysql_lock_name("failover:t"),))
    return rows[0][0]


def test_election_status_and_tables(cluster: Cluster, my_dsn: str) -> None:
    with Sampler(cluster.tag) as sampler, KeeperLockSampler(my_dsn, "t") as locks:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        assert query(
            my_dsn, "SELECT IS_USED_LOCK(%s) IS NOT NULL", (keeper_lock_name("t", int(epoch)),)
        ) == [(1,)]
        assert lock_holder(my_dsn) is not None
        wait_until(
            lambda: len(query(my_dsn, "SELECT node FROM failover_member WHERE cluster = 't'")) == 3,
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
                "mysql",
                "--set",
                f"mysql.dsn={my_dsn}",
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
        history = query(my_dsn, "SELECT epoch, node FROM failover_history WHERE cluster = 't'")
        assert (int(epoch), leader) in history
    sampler.assert_clean()
    locks.assert_clean()


def test_kill9_leader_daemon(cluster: Cluster, my_dsn: str) -> None:
    with Sampler(cluster.tag) as sampler, KeeperLockSampler(my_dsn, "t") as locks:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        cluster.signal(leader, signal.SIGKILL)
        t0 = time.monotonic()
        _, new_epoch = cluster.leader_child(exclude=[leader], timeout=20)
        took = time.monotonic() - t0
        assert int(new_epoch) > int(epoch)
    sampler.assert_clean()
    locks.assert_clean()
    assert took < 10, cluster.dump_logs()


def test_graceful_stop_hands_over(cluster: Cluster, my_dsn: str) -> None:
    with Sampler(cluster.tag) as sampler, KeeperLockSampler(my_dsn, "t") as locks:
        cluster.start_all()
        leader, _ = cluster.leader_child()
        cluster.signal(leader, signal.SIGTERM)
        assert cluster.procs[leader].wait(timeout=20) == 0
        new_leader, _ = cluster.leader_child(exclude=[leader], timeout=20)
        assert new_leader != leader
    sampler.assert_clean()
    locks.assert_clean()


def test_sigstop_leader_past_the_lease(cluster: Cluster, my_dsn: str) -> None:
    with Sampler(cluster.tag) as sampler, KeeperLockSampler(my_dsn, "t") as locks:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        cluster.signal(leader, signal.SIGSTOP)
        new_leader, new_epoch = cluster.leader_child(exclude=[leader], timeout=20)
        assert int(new_epoch) > int(epoch)
        time.sleep(3.0)  # frozen for ~2-3 leases in all
        cluster.signal(leader, signal.SIGCONT)
        wait_until(
            lambda: any("following" in s or "lost" in s for s in cluster.sentences(leader)[-3:]),
            15,
            "the thawed leader to step down",
        )
        assert cluster.leader_child() == (new_leader, new_epoch)
    sampler.assert_clean()
    locks.assert_clean()


def test_admin_kills_leader_lock_session(cluster: Cluster, my_dsn: str) -> None:
    with Sampler(cluster.tag) as sampler, KeeperLockSampler(my_dsn, "t") as locks:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        holder = lock_holder(my_dsn)
        assert holder is not None
        query(my_dsn, "KILL CONNECTION %s", (holder,))
        _, new_epoch = cluster.leader_child(exclude=[leader], timeout=20)
        assert int(new_epoch) > int(epoch)
        assert any("lost leadership" in s for s in cluster.sentences(leader)), cluster.dump_logs()
    sampler.assert_clean()
    locks.assert_clean()


def newer_epoch(cluster: Cluster, epoch: str) -> None:
    wait_until(
        lambda: (o := cluster.leader_child(timeout=30)) and int(o[1]) > int(epoch),
        40,
        f"a child of an epoch above {epoch} once the server is back",
    )


def test_server_restart(tmp_path: Path, my_factory: Any) -> None:
    server = my_factory()
    cluster = my_cluster(tmp_path, server.create_database("t_restart"))
    try:
        with Sampler(cluster.tag) as sampler:
            cluster.start_all()
            _, epoch = cluster.leader_child()
            server.kill()
            server.start()
            # Every session died: the keeper can no longer vouch and kills the tree; a new
            # leader on the restarted server waits a lease (its Uptime proves nothing).
            newer_epoch(cluster, epoch)
            sentences = [s for n in cluster.nodes for s in cluster.sentences(n)]
            assert any("proves nothing" in s or "server changed" in s for s in sentences), sentences
        sampler.assert_clean()
    finally:
        cluster.stop_all()


def test_server_down_for_two_leases(tmp_path: Path, my_factory: Any) -> None:
    server = my_factory()
    cluster = my_cluster(tmp_path, server.create_database("t_down"))
    try:
        with Sampler(cluster.tag) as sampler:
            cluster.start_all()
            _, epoch = cluster.leader_child()
            server.stop()
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


def test_proxy_dsn_refused() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "failover",
            "run",
            "--backend",
            "mysql",
            "--set",
            "mysql.dsn=mysql://u:sekret@db.proxy-abc.eu-west-1.rds.amazonaws.com:3306/airflow",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "RDS Proxy" in done.stderr and "sekret" not in done.stderr


def test_wrong_password_retries_without_crash_loop(tmp_path: Path, my_server: Any) -> None:
    dsn = my_server.dsn("t_none", user="failover", password="wrong-password")
    cluster = my_cluster(tmp_path, dsn)
    try:
        proc = cluster.start("n1")
        wait_until(
            lambda: any("Access denied" in s for s in cluster.sentences("n1")),
            15,
            "a one-line auth error",
        )
        time.sleep(1)
        assert proc.poll() is None, "the daemon died instead of retrying"
        assert "wrong-password" not in (tmp_path / "n1.log").read_text()
        assert not cluster.live_children()
    finally:
        cluster.stop_all()


def test_zookeeper_mode_with_a_mysql_metadata_db(
    tmp_path: Path, zk_chroot: str, my_dsn: str
) -> None:
    """The election in ZooKeeper, the member tables and health in MySQL."""
    cluster = Cluster(
        tmp_path,
        settings={"backend": "zookeeper", "zookeeper.hosts": zk_chroot, "metadata_dsn": my_dsn},
        probe_args=("--fork", "1", "--escape", "session"),
    )
    try:
        with Sampler(cluster.tag) as sampler:
            cluster.start_all()
            leader, epoch = cluster.leader_child()
            wait_until(
                lambda: (
                    len(query(my_dsn, "SELECT node FROM failover_member WHERE cluster = 't'")) == 3
                ),
                10,
                "three member rows in MySQL",
            )
            cluster.signal(leader, signal.SIGKILL)
            _, new_epoch = cluster.leader_child(exclude=[leader], timeout=30)
            assert int(new_epoch) > int(epoch)
            history = query(my_dsn, "SELECT epoch FROM failover_history WHERE cluster = 't'")
            wait_until(
                lambda: (
                    (int(new_epoch),)
                    in query(my_dsn, "SELECT epoch FROM failover_history WHERE cluster = 't'")
                ),
                10,
                f"history row of epoch {new_epoch} (have {history})",
            )
        sampler.assert_clean()
    finally:
        cluster.stop_all()


def test_cli_pause_resume_switchover(cluster: Cluster, my_dsn: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "failover",
                *args,
                "--cluster",
                "t",
                "--backend",
                "mysql",
                "--set",
                f"mysql.dsn={my_dsn}",
                "--set",
                "lease_seconds=3",
                "--set",
                "loop_seconds=0.5",
                "--set",
                "backend_timeout_seconds=0.5",
                "--set",
                "self_fence_margin_seconds=0.5",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    with Sampler(cluster.tag) as sampler, KeeperLockSampler(my_dsn, "t") as locks:
        cluster.start_all()
        leader, _ = cluster.leader_child()
        assert cli("pause").returncode == 0
        assert json.loads(cli("status", "--json").stdout)["paused"] is True
        assert cli("resume").returncode == 0
        other = "n2" if leader != "n2" else "n3"
        done = cli("switchover", "--to", other)
        assert done.returncode == 0, done.stderr
        assert cluster.leader_child()[0] == other
    sampler.assert_clean()
    locks.assert_clean()
