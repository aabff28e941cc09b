"""ZooKeeper mode with a PostgreSQL metadata DB, against real servers: members publish whether
they reach the DB in ZooKeeper, and a new leader ends older epochs' sessions in the DB."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from failover.backends import open_backend
from failover.backends.postgres.fence import OlderEpochSweep
from failover.backends.postgres.session import Session, SessionTimings
from failover.backends.zookeeper.conn import ZkConnection, zk_options
from failover.backends.zookeeper.election import ZooKeeperElection
from failover.backends.zookeeper.store import ZkNodes
from failover.config import Settings, ZooKeeperSettings
from failover.dbreach import ReachReport
from failover.interfaces import MemberStore, Parts

from ..harness import wait_until
from .test_postgres_backend import _is_dead, open_session
from .test_zookeeper_backend import lead, zk_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def opened() -> Iterator[list[tuple[ZooKeeperElection, MemberStore]]]:
    made: list[tuple[ZooKeeperElection, MemberStore]] = []
    yield made
    for election, store in made:
        store.close()
        election.close()
        election.client.stop()  # also when close() left the session to expire
        election.client.close()


def with_db(zk_chroot: str, pg_dsn: str, node: str, **zk: Any) -> Settings:
    return zk_settings(zk_chroot, node, **zk).replace(metadata_dsn=pg_dsn)


def open_zk(
    settings: Settings, made: list[tuple[ZooKeeperElection, MemberStore]]
) -> tuple[ZooKeeperElection, MemberStore]:
    election, store = open_parts(settings, made).election, made[-1][1]
    return election, store


def open_parts(settings: Settings, made: list[tuple[ZooKeeperElection, MemberStore]]) -> Parts:
    parts = open_backend(settings)
    assert isinstance(parts.election, ZooKeeperElection)
    made.append((parts.election, parts.members))
    return parts


def test_reach_reports_live_in_zookeeper_and_leave_with_the_session(
    zk_chroot: str, pg_dsn: str, opened: list[tuple[ZooKeeperElection, MemberStore]]
) -> None:
    a_settings = with_db(zk_chroot, pg_dsn, "a")
    a_parts = open_parts(a_settings, opened)
    b_parts = open_parts(with_db(zk_chroot, pg_dsn, "b"), opened)
    board_a, board_b, b = a_parts.reach, b_parts.reach, b_parts.election
    assert board_a is not None and board_b is not None
    board_a.publish("leader", False, False, 0.0)
    board_b.publish("standby", True, True, 12.5)
    time.sleep(0.3)
    reports = {r.node: r for r in board_a.reports()}
    assert reports["a"] == ReachReport("a", "leader", False, False, 0.0, reports["a"].age)
    assert reports["b"] == ReachReport("b", "standby", True, True, 12.5, reports["b"].age)
    assert all(0.2 <= r.age < 2.0 for r in reports.values()), reports
    # Off without a metadata DB, or with 0.
    assert open_parts(zk_settings(zk_chroot, "c"), opened).reach is None
    zk = ZooKeeperSettings(hosts=zk_chroot, db_unreachable_resign_seconds=0)
    assert open_parts(a_settings.replace(zookeeper=zk, node="d"), opened).reach is None
    b.close()  # a clean close ends b's session: its report goes with it
    wait_until(lambda: [r.node for r in board_a.reports()] == ["a"], 5, "b's report to vanish")


def test_new_leader_ends_older_epoch_sessions_in_the_metadata_db(
    zk_chroot: str, pg_dsn: str, opened: list[tuple[ZooKeeperElection, MemberStore]]
) -> None:
    a, _ = open_zk(with_db(zk_chroot, pg_dsn, "a"), opened)
    b, _ = open_zk(with_db(zk_chroot, pg_dsn, "b"), opened)
    assert lead(a) == 1
    assert "older session" not in a.fence(1, False).detail  # nothing older than epoch 1
    child_a = open_session(pg_dsn, "failover:t:a:1")  # its child's session, left behind
    keeper_a = open_session(pg_dsn, "failover:t:a:1:keeper")
    store_a = open_session(pg_dsn, "failover:t:a:store")
    other = open_session(pg_dsn, "failover:x:a:1")  # another cluster
    a.release()
    assert b.try_acquire() and b.bump_epoch() == 2
    child_b = open_session(pg_dsn, "failover:t:b:2")
    report = b.fence(2, False)
    assert report.pending == 0 and report.terminated == 2, report
    assert report.detail == (
        "a of epoch 1 released after its child exited; terminated 2 older session(s) in the "
        "metadata DB"
    )
    assert _is_dead(child_a) and _is_dead(keeper_a)
    assert not any(_is_dead(c) for c in (store_a, other, child_b))
    assert b.fence(2, False).terminated == 0  # nothing left: the sentence stays short
    for conn in (store_a, other, child_b):
        conn.close()


def test_sweep_without_pg_signal_backend_warns_and_never_blocks_the_start(
    pg_server: Any, zk_chroot: str, pg_dsn: str
) -> None:
    dbname = pg_dsn.rsplit("/", 1)[1]
    weak_role = f"weak_{uuid.uuid4().hex[:8]}"
    admin = open_session(pg_dsn, "admin")
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {weak_role} LOGIN PASSWORD 'weak-pw'")
        cur.execute(f'GRANT ALL ON DATABASE "{dbname}" TO {weak_role}')
    victim = open_session(pg_dsn, "failover:t:old:0")  # older, owned by the superuser
    weak = Session(
        pg_server.dsn(dbname=dbname, user=weak_role, password="weak-pw"),
        "failover:t:w:store",
        SessionTimings(3.0, 1.0),
    )
    warnings: list[str] = []
    settings = zk_settings(zk_chroot, "w")
    nodes = ZkNodes(ZkConnection(zk_options(settings), warnings.append))
    w = ZooKeeperElection(nodes, 3.0, 1.5, warnings.append, OlderEpochSweep(weak, "t"))
    try:
        assert w.try_acquire() and w.bump_epoch() == 1
        report = w.fence(1, False)
        assert report.pending == 0 and report.terminated == 0
        assert "grant pg_signal_backend to the failover role (RDS: rds_superuser)" in report.detail
        assert any("grant pg_signal_backend" in text for text in warnings), warnings
        assert w.renew()  # the tick goes on: the old tree is dead by its keeper deadline
        assert not _is_dead(victim)
    finally:
        w.release()
        w.close()
        weak.close()
        victim.close()
        with admin.cursor() as cur:
            cur.execute(f'REVOKE ALL ON DATABASE "{dbname}" FROM {weak_role}')
        admin.close()
