"""The mysql backend against a real MariaDB: the named lock and its renew proof, the epoch,
wait_timeout, the keeper's proof lock, fencing by KILL / mysql.rds_kill, the server-start
rule, presence locks, the member tables and Airflow's `job` table (made by hand, Airflow's
MySQL shape: Airflow 2.11 does not support MariaDB as its metadata DB)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pymysql
import pytest

from failover.backends.mysql.election import MySQLElection
from failover.backends.mysql.fence import OlderEpochSweep
from failover.backends.mysql.jobs import JobTable
from failover.backends.mysql.members import MySQLMembers
from failover.backends.mysql.schema import ensure_schema
from failover.backends.mysql.session import Session, SessionTimings
from failover.dsn import mysql_connect_args
from failover.errors import BackendUnavailable
from failover.interfaces import LeaderInfo, MemberState
from failover.keeper.proof import MySQLLockProof, keeper_lock_name, mysql_lock_name

from ..harness import sent_statements
from ..servers import FAILOVER_PASSWORD, FAILOVER_USER, MariaDBServer

pytestmark = pytest.mark.integration

JOB_DDL = """
CREATE TABLE job (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY, dag_id VARCHAR(250), state VARCHAR(20),
    job_type VARCHAR(30), start_date TIMESTAMP(6) NULL, end_date TIMESTAMP(6) NULL,
    latest_heartbeat TIMESTAMP(6) NULL, executor_class VARCHAR(500), hostname VARCHAR(500),
    unixname VARCHAR(1000))
"""


def connect(dsn: str) -> Any:
    return pymysql.connect(**mysql_connect_args(dsn), autocommit=True, connect_timeout=3)


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def election(dsn: str, node: str, lease: float = 3.0, cluster: str = "c") -> MySQLElection:
    return MySQLElection(dsn, cluster, node, lease, 0.5, "failover_")


def test_lock_renew_epoch_and_leader(my_dsn: str) -> None:
    a, b = election(my_dsn, "a"), election(my_dsn, "b")
    try:
        assert a.try_acquire() and not b.try_acquire()
        assert a.try_acquire()  # again: no second GET_LOCK (it is re-entrant)
        assert a.renew()
        assert a.bump_epoch() == 1
        assert b.leader().node == "a" and b.leader().epoch == 1
        a.release()
        assert b.try_acquire() and b.bump_epoch() == 2
        assert not a.renew()
    finally:
        a.close()
        b.close()


def test_a_standby_tick_costs_two_statements(my_dsn: str) -> None:
    """A standby's campaign takes the lock or learns who holds it, and the epoch, in two
    statements (bench/scale.py: it took four a tick: ours?, GET_LOCK, the holder, leader)."""
    a, b = election(my_dsn, "a"), election(my_dsn, "b")
    try:
        assert a.try_acquire() and a.bump_epoch() == 1
        assert not b.try_acquire()
        sent = sent_statements(b.lock)
        for _ in range(3):
            assert b.campaign() == (False, LeaderInfo("a", 1))
        assert len(sent) == 6
        assert a.campaign() == (True, None)  # the holder again: no second GET_LOCK
        a.release()
        assert b.campaign() == (True, None) and b.bump_epoch() == 2
        assert a.campaign() == (False, LeaderInfo("b", 2)) and not a.renew()
    finally:
        a.close()
        b.close()


def partnered(dsn: str, node: str, lease: float = 3.0) -> tuple[MySQLElection, MySQLMembers]:
    """An election with its member store beside it, as the mysql backend builds them."""
    e = election(dsn, node, lease)
    store = MySQLMembers(dsn, "c", "failover_", lease, 0.5)
    store.partner = e
    return e, store


def test_a_standby_tick_is_its_flags_read_on_its_lock_session(my_dsn: str) -> None:
    """Beside its store, a standby's flags read also shows who holds the lock: its campaign
    then sends nothing while a live leader holds it, and the store borrows the lock session
    (a standby holds one session fewer); a leader's store has a session of its own, opened
    at its next tick (not on the takeover's path)."""
    a, a_store = partnered(my_dsn, "a")
    b, b_store = partnered(my_dsn, "b")
    try:
        assert a.campaign() == (True, None) and a.bump_epoch() == 1 and a.renew()
        a_store.flags()
        assert a_store.session is a_store.own and a_store.own.connected
        assert not b.try_acquire()  # (its first: connect, presence lock, schema)
        b_store.flags()
        sent = sent_statements(b.lock)
        for _ in range(3):
            b_store.flags()
            assert b.campaign() == (False, LeaderInfo("a", 1))
        assert len(sent) == 3 and all("paused" in str(s) for s in sent), sent
        assert b_store.session is b.lock and not b_store.own.connected
        assert b.campaign() == (False, LeaderInfo("a", 1))  # no glance this tick: it asks
        assert len(sent) == 5
        a.release()
        b_store.flags()  # the lock looks free: b campaigns and takes it
        assert b.campaign() == (True, None) and b.bump_epoch() == 2
        b_store.heartbeat(MemberState("b", "leader", 2, "running", 1, "0", "leading"))
        assert not b_store.own.connected  # no connect on the takeover's path
        assert b_store.session is b.lock
        b_store.flags()  # its next tick opens its own session
        assert b_store.session is b_store.own and b_store.own.connected
        a_store.flags()
        assert a.campaign() == (False, LeaderInfo("b", 2))
        assert a_store.session is a.lock and not a_store.own.connected
    finally:
        for x in (a, b, a_store, b_store):
            x.close()


def test_a_glance_at_a_silent_holder_still_campaigns(my_dsn: str) -> None:
    """A holder whose last renew is older than the lease may have vanished: the glance does
    not spare the campaign, which KILLs it once its session is idle past the lease."""
    a, _ = partnered(my_dsn, "a", lease=1.0)
    b, b_store = partnered(my_dsn, "b", lease=1.0)
    try:
        assert a.campaign() == (True, None) and a.bump_epoch() == 1
        assert not b.try_acquire()  # (its first: connect, presence lock, schema)
        query(my_dsn, "UPDATE failover_cluster SET renewed_at = NOW(6) - INTERVAL 30 SECOND")
        b_store.flags()
        sent = sent_statements(b.lock)
        assert b.campaign()[0] is False and len(sent) == 2  # GET_LOCK, the holder: idle < lease
    finally:
        for x in (a, b, b_store):
            x.close()


def test_long_names_are_hashed_and_distinct(my_dsn: str) -> None:
    long1, long2 = "x" * 60 + "1", "x" * 60 + "2"
    assert len(mysql_lock_name(f"failover:{long1}")) <= 64
    assert mysql_lock_name(f"failover:{long1}") != mysql_lock_name(f"failover:{long2}")
    assert len(keeper_lock_name(long1, 10**9)) <= 64
    a, b = election(my_dsn, "a", cluster=long1), election(my_dsn, "b", cluster=long2)
    try:
        assert a.try_acquire() and b.try_acquire()  # two clusters, two locks
    finally:
        a.close()
        b.close()


def test_admin_kill_of_the_lock_session_ends_leadership(my_dsn: str) -> None:
    a, b = election(my_dsn, "a"), election(my_dsn, "b")
    try:
        assert a.try_acquire()
        a.bump_epoch()
        conn_id = query(my_dsn, "SELECT IS_USED_LOCK(%s)", (a.lock_name,))[0][0]
        query(my_dsn, "KILL CONNECTION %s", (conn_id,))
        with pytest.raises(BackendUnavailable):
            a.renew()  # the session is gone: it cannot prove anything
        assert not a.renew()  # a new session holds no lock
        assert b.try_acquire()
    finally:
        a.close()
        b.close()


def test_wait_timeout_frees_a_silent_holder(my_dsn: str) -> None:
    a, b = election(my_dsn, "a", lease=1.5), election(my_dsn, "b", lease=1.5)
    try:
        assert a.try_acquire()
        assert query(my_dsn, "SELECT 1") and a.lock.timings.wait_timeout == 2
        time.sleep(3.0)  # a says nothing (frozen): the server drops it after wait_timeout
        assert b.try_acquire()
    finally:
        a.close()
        b.close()


def test_vanished_holder_with_a_long_wait_timeout_is_killed(my_dsn: str) -> None:
    holder = connect(my_dsn)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, 0)", (mysql_lock_name("failover:c"),))
        b = election(my_dsn, "b", lease=1.0)
        try:
            assert not b.try_acquire()  # idle for less than a lease: left alone
            t0 = time.monotonic()
            for _ in range(40):  # b campaigns every 0.1 s, as a standby does every tick
                if b.try_acquire():
                    break
                time.sleep(0.1)
            took = time.monotonic() - t0
            assert b._holding and 1.0 < took < 3.5
        finally:
            b.close()
    finally:
        holder.close()


def test_keeper_proof_lock_fence_waits_then_kills(my_dsn: str) -> None:
    a, b = election(my_dsn, "a"), election(my_dsn, "b")
    proof = MySQLLockProof(my_dsn, "failover:c:a", "failover_cluster:c")
    try:
        assert a.try_acquire() and a.bump_epoch() == 1
        assert proof.prepare() and proof.activate(1) and not proof.broken()
        a.close()  # the daemon dies; its keeper still vouches for its tree
        assert b.try_acquire() and b.bump_epoch() == 2
        report = b.fence(2, force=False)
        assert report.pending == 1 and "older keeper" in report.detail
        report = b.fence(2, force=True)
        assert report.pending == 0 and report.terminated == 1
        assert proof.broken()  # the keeper sees it at once and kills its tree
        assert b.fence(2, force=False).pending == 0  # fenced_epoch: not asked again
        # A keeper whose epoch was superseded refuses to start.
        late = MySQLLockProof(my_dsn, "failover:c:a", "failover_cluster:c")
        assert late.prepare() and not late.activate(1)
        assert "superseded" in late.error or "held" in late.error
        late.release()
    finally:
        proof.release()
        b.close()


def test_keeper_gone_means_start_at_once(my_dsn: str) -> None:
    a, b = election(my_dsn, "a", lease=0.5), election(my_dsn, "b", lease=0.5)
    proof = MySQLLockProof(my_dsn, "failover:c:a", "failover_cluster:c")
    try:
        assert a.try_acquire() and a.bump_epoch() == 1
        assert proof.prepare() and proof.activate(1)
        proof.release()  # its tree is gone
        a.close()
        assert b.try_acquire() and b.bump_epoch() == 2
        report = b.fence(2, force=False)  # (server up for more than this 0.5 s lease)
        assert report.pending == 0 and report.terminated == 0
    finally:
        b.close()


def test_young_server_proves_nothing(my_dsn: str) -> None:
    a = election(my_dsn, "a", lease=3600)
    try:
        assert a.try_acquire() and a.bump_epoch() == 1
        report = a.fence(1, force=False)
        assert report.pending == 1 and "proves nothing" in report.detail
        assert a.fence(1, force=True).pending == 0
    finally:
        a.close()


def test_restarted_server_waits_a_lease(tmp_path: Any, my_factory: Any) -> None:
    server: MariaDBServer = my_factory()
    dsn = server.create_database("t_restarted")
    a = election(dsn, "a", lease=0.5)
    try:
        assert a.try_acquire() and a.bump_epoch() == 1 and a.renew()
        server.kill()
        # The restarted server's start is later than the recorded one by more than
        # SERVER_CLOCK_SLACK (2 s), though each start is read from a whole-second Uptime (up
        # to 1 s late each): the gap must exceed 3 s.
        time.sleep(3.5)
        server.start()
        time.sleep(1.0)
        b = election(dsn, "b", lease=0.5)
        try:
            assert b.try_acquire() and b.bump_epoch() == 2
            report = b.fence(2, force=False)
            assert report.pending == 1 and "server changed" in report.detail
        finally:
            b.close()
    finally:
        a.close()


def test_kill_denied_falls_back_to_rds_kill_or_names_the_grant(my_server: Any, my_dsn: str) -> None:
    dbname = my_dsn.rsplit("/", 1)[1]
    limited = my_server.dsn(dbname, user=FAILOVER_USER, password=FAILOVER_PASSWORD)
    other = MySQLLockProof(my_dsn, "failover:c:x", None)  # a root session: not ours to KILL
    b = election(limited, "b")
    try:
        assert other.prepare() and other.activate(1)
        assert b.try_acquire() and b.bump_epoch() == 1
        b.bump_epoch()
        with pytest.raises(BackendUnavailable) as err:
            b.fence(2, force=True)
        text = str(err.value)
        assert "CONNECTION_ADMIN" in text and "mysql.rds_kill" in text and "\n" not in text
        assert FAILOVER_PASSWORD not in text
        # RDS for MySQL: KILL is denied, mysql.rds_kill (definer rights) is allowed.
        my_server.query("DROP PROCEDURE IF EXISTS mysql.rds_kill")
        my_server.query(
            "CREATE DEFINER = 'root'@'localhost' PROCEDURE mysql.rds_kill(IN thread BIGINT) "
            "SQL SECURITY DEFINER KILL CONNECTION thread"
        )
        my_server.query(f"GRANT EXECUTE ON PROCEDURE mysql.rds_kill TO '{FAILOVER_USER}'@'%'")
        try:
            report = b.fence(2, force=True)
            assert report.terminated == 1 and other.broken()
        finally:
            my_server.query("DROP PROCEDURE IF EXISTS mysql.rds_kill")
    finally:
        other.release()
        b.close()


def test_member_presence_lock(my_dsn: str) -> None:
    a, b = election(my_dsn, "a"), election(my_dsn, "b")
    try:
        b.try_acquire()
        assert not a.member_present("zz")
        a.try_acquire()  # connects: takes its presence lock
        assert b.member_present("a")
        a.close()
        # The server frees a closed session's locks as it handles the quit: soon, not at once.
        deadline = time.monotonic() + 5.0
        while b.member_present("a") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not b.member_present("a")
    finally:
        b.close()


def test_a_failed_on_connect_closes_the_session_to_run_again(my_dsn: str) -> None:
    """A presence lock that could not be taken on a new session (a statement timeout leaves
    it connected) is not skipped for that session's life: it is closed and tried again."""
    calls: list[int] = []

    def on_connect(session: Session) -> None:
        calls.append(session.generation)
        if len(calls) == 1:
            raise BackendUnavailable("MySQL statement timed out: (1969) simulated")

    s = Session(my_dsn, SessionTimings(3.0, 0.5), True)
    s.on_connect = on_connect
    try:
        with pytest.raises(BackendUnavailable):
            s.query("SELECT 1")
        assert not s.connected
        assert s.query("SELECT 1") == [(1,)] and calls == [1, 2]
    finally:
        s.close()


def test_schema_concurrent_and_migrates(my_dsn: str) -> None:
    errors: list[BaseException] = []

    def make() -> None:
        s = Session(my_dsn, SessionTimings(3.0, 2.0))
        try:
            ensure_schema(s, "failover_")
        except BaseException as err:
            errors.append(err)
        finally:
            s.close()

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    query(my_dsn, "ALTER TABLE failover_cluster DROP COLUMN switchover_result")
    # Tables of an older version: child_state was VARCHAR(64), too short for a group's
    # components with their health (a strict server refuses the whole heartbeat).
    query(my_dsn, "ALTER TABLE failover_member MODIFY child_state VARCHAR(64) NOT NULL")
    make()
    cols = {r[0] for r in query(my_dsn, "SHOW COLUMNS FROM failover_cluster")}
    assert {"switchover_result", "fenced_epoch", "renewed_at", "server_started"} <= cols
    store = MySQLMembers(my_dsn, "c", "failover_", 3.0, 2.0)
    try:
        state = "running:healthy|" + ",".join(
            f"{name}:running:4194303:12:healthy" for name in ("dag-processor", "triggerer")
        )
        store.heartbeat(MemberState("a", "leader", 3, state, 42, "0.1", "no action"))
        assert [m.child_state for m in store.members()] == [state]
    finally:
        store.close()


def test_member_store(my_dsn: str) -> None:
    store = MySQLMembers(my_dsn, "c", "failover_", 3.0, 2.0)
    try:
        store.heartbeat(MemberState("a", "leader", 3, "running", 42, "0.1", "no action"))
        store.heartbeat(MemberState("a", "leader", 4, "running", 43, "0.1", "again"))
        [m] = store.members()
        assert (m.node, m.epoch, m.child_pid, m.sentence) == ("a", 4, 43, "again")
        assert 0 <= m.heartbeat_age < 2
        store.begin_term(4, "a", "acquired")
        store.begin_term(4, "a", "acquired")  # idempotent
        store.end_term(4, "stopped")
        assert [r[:2] for r in store.history()] == [(4, "a")]
        store.set_paused(True)
        assert store.flags().paused
        store.request_switchover("a", "b")
        flags = store.flags()
        assert (flags.switchover_from, flags.switchover_to) == ("a", "b")
        store.clear_switchover("switchover to b done")
        flags = store.flags()
        assert flags.switchover_to is None and flags.switchover_result == "switchover to b done"
        assert flags.switchover_age is not None and flags.switchover_age < 2
    finally:
        store.close()


def test_job_table_health_and_orphan_release(my_dsn: str) -> None:
    query(my_dsn, JOB_DDL)
    query(
        my_dsn,
        "INSERT INTO job (job_type, state, hostname, latest_heartbeat) VALUES "
        "('SchedulerJob', 'running', 'old', UTC_TIMESTAMP(6) - INTERVAL 50 SECOND)",
    )
    released: list[int] = []
    warnings: list[str] = []
    table = JobTable(my_dsn, 2.0, "me", warnings.append, None, released.append, 3.0)
    try:
        base = table.baseline()
        assert released == [1] and base == 1
        assert query(my_dsn, "SELECT state FROM job") == [("failed",)]
        assert table.newest(base) is None
        query(
            my_dsn,
            "INSERT INTO job (job_type, state, hostname, latest_heartbeat) VALUES "
            "('SchedulerJob', 'running', 'me', UTC_TIMESTAMP(6) - INTERVAL 2 SECOND), "
            "('SchedulerJob', 'running', 'other', UTC_TIMESTAMP(6))",
        )
        row = table.newest(base)
        assert row is not None and row.hostname == "me" and 1.5 < row.heartbeat_age < 10
        assert not warnings
    finally:
        table.close()


def test_job_table_missing_warns(my_dsn: str) -> None:
    warnings: list[str] = []
    table = JobTable(my_dsn, 2.0, None, warnings.append)
    try:
        with pytest.raises(BackendUnavailable):
            table.baseline()
        assert warnings and "job table" in warnings[0]
    finally:
        table.close()


def test_sweep_ends_older_keeper_sessions(my_dsn: str) -> None:
    proof = MySQLLockProof(my_dsn, "failover:c:a", None)
    store = MySQLMembers(my_dsn, "c", "failover_", 3.0, 2.0)
    try:
        assert proof.prepare() and proof.activate(3)
        sweep = OlderEpochSweep(store.query, "c")
        assert sweep(3) == 0
        assert sweep(4) == 1 and proof.broken()
    finally:
        proof.release()
        store.close()


def test_standby_wakes_when_the_lock_goes(my_dsn: str) -> None:
    import select

    a, b = election(my_dsn, "a"), election(my_dsn, "b")
    try:
        assert a.try_acquire() and not b.try_acquire()
        fd = b.watch_fd()
        assert fd is not None
        assert not select.select([fd], [], [], 0.3)[0] and not b.changed()  # nothing yet
        a.release()
        assert select.select([b.watch_fd()], [], [], 2.0)[0], "no wake-up on release"
        assert b.changed() and b.try_acquire()
        # The holder's session dying (kill -9 of its daemon) wakes a standby as well.
        assert not a.try_acquire()
        fd = a.watch_fd()
        assert fd is not None
        b.lock.close()
        assert select.select([fd], [], [], 2.0)[0], "no wake-up when the holder's session ended"
        assert a.changed() and a.try_acquire()
    finally:
        a.close()
        b.close()


def test_leader_and_standby_without_wake_hold_no_waiter_session(my_dsn: str) -> None:
    """Server connections per daemon: a leader closes its wake waiter (it holds the wake lock
    itself), and `[mysql] wake = false` opens none; the lock session alone campaigns."""

    def connection_ids() -> set[int]:
        return {int(r[0]) for r in query(my_dsn, "SELECT ID FROM information_schema.PROCESSLIST")}

    a = election(my_dsn, "a", cluster="c_wake")
    b = MySQLElection(my_dsn, "c_wake", "b", 3.0, 0.5, "failover_", wake=False)
    try:
        assert a.watch_fd() is not None  # a standby's waiter
        waiter = a.watch.session.conn.thread_id()
        assert waiter in connection_ids()
        assert a.try_acquire()
        assert a.watch_fd() is None
        assert waiter not in connection_ids(), "the leader kept its wake waiter's connection"
        assert not b.try_acquire() and b.watch_fd() is None and b.watch.session.conn is None
        a.release()
        assert b.try_acquire()  # found at its next campaign, without a wake-up
    finally:
        a.close()
        b.close()


def test_keeper_session_survives_a_short_global_wait_timeout(my_factory: Any) -> None:
    server: MariaDBServer = my_factory(settings={"wait_timeout": "1"})
    dsn = server.create_database("t_short_wait")
    proof = MySQLLockProof(dsn, "failover:c:a", None)
    try:
        assert proof.prepare() and proof.activate(1)
        time.sleep(2.5)  # idle past the server's 1 s wait_timeout
        assert not proof.broken()
    finally:
        proof.release()
