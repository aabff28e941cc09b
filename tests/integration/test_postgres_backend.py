"""The PostgreSQL election backend driven directly against a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from failover.backends.postgres.election import POLL_SQL, PostgresElection
from failover.backends.postgres.schema import ensure_schema
from failover.backends.postgres.session import Session, SessionTimings
from failover.errors import BackendUnavailable
from failover.interfaces import LeaderInfo

from ..harness import sent_statements, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def elections(pg_dsn: str) -> Iterator[list[PostgresElection]]:
    made: list[PostgresElection] = []
    yield made
    for e in made:
        e.close()


def make(made: list[PostgresElection], dsn: str, node: str, lease: float = 3.0) -> PostgresElection:
    e = PostgresElection(dsn, "c", node, lease, 1.0, "failover_")
    made.append(e)
    return e


def open_session(dsn: str, name: str) -> Any:
    conn = psycopg2.connect(dsn, application_name=name)
    conn.autocommit = True
    return conn


def test_one_holder_epoch_and_release(pg_dsn: str, elections: list[PostgresElection]) -> None:
    a, b = make(elections, pg_dsn, "a"), make(elections, pg_dsn, "b")
    assert a.try_acquire() and not b.try_acquire()
    assert a.try_acquire()  # idempotent for the holder, no lock stacking
    assert a.bump_epoch() == 1
    assert b.leader().node == "a" and b.leader().epoch == 1
    assert a.renew() and not b.renew()
    a.release()
    assert b.try_acquire() and b.bump_epoch() == 2
    assert not a.renew()


def test_a_standby_tick_costs_one_statement(pg_dsn: str, elections: list[PostgresElection]) -> None:
    """A standby's campaign learns the leader and epoch from the statement that tried the
    lock (bench/scale.py: it took five a tick: the lock, the holder, its heartbeat, the holder
    again, the epoch)."""
    a, b = make(elections, pg_dsn, "a"), make(elections, pg_dsn, "b")
    assert a.try_acquire() and a.bump_epoch() == 1
    assert not b.try_acquire()
    sent = sent_statements(b.lock)
    for _ in range(3):
        assert b.campaign() == (False, LeaderInfo("a", 1))
    assert len(sent) == 3
    a.release()
    assert b.campaign() == (True, None) and b.bump_epoch() == 2
    assert a.campaign() == (False, LeaderInfo("b", 2))


def poll_plan(dsn: str, b: PostgresElection) -> str:
    """EXPLAIN ANALYZE of b's campaign poll, run on a session of its own."""
    conn = open_session(dsn, "explain")
    try:
        with conn.cursor() as cur:
            poll = sql.SQL("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + POLL_SQL).format(
                m=sql.Identifier("failover_member"), t=sql.Identifier("failover_cluster")
            )
            cur.execute(poll, (b.key, b.cluster, b.cluster, b.classid, b.objid, b.lease))
            return "\n".join(r[0] for r in cur.fetchall())
    finally:
        conn.close()


def test_a_standby_poll_reads_pg_locks_only_when_the_leader_is_silent(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    """While the leader renews within the lease, the poll's holder scan (pg_locks and
    pg_stat_activity: their cost grows with the server's sessions) is never executed; once its
    last renew is older than the lease, it is (a vanished host's session must be seen)."""
    a, b = make(elections, pg_dsn, "a"), make(elections, pg_dsn, "b")
    assert a.try_acquire() and a.bump_epoch() == 1 and a.renew()
    scans = [line for line in poll_plan(pg_dsn, b).splitlines() if "pg_lock_status" in line]
    assert scans and all("never executed" in line for line in scans), scans
    assert b.campaign() == (False, LeaderInfo("a", 1))
    admin = open_session(pg_dsn, "admin")
    with admin.cursor() as cur:
        cur.execute(
            "UPDATE failover_cluster SET renewed_at = now() - interval '1 hour' WHERE cluster = 'c'"
        )
    admin.close()
    scans = [line for line in poll_plan(pg_dsn, b).splitlines() if "pg_lock_status" in line]
    assert scans and not any("never executed" in line for line in scans), scans
    assert b.campaign() == (False, LeaderInfo("a", 1))  # its session is not idle long: kept


def test_no_epoch_is_taken_on_a_session_that_lost_the_lock(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    a = make(elections, pg_dsn, "a")
    assert a.try_acquire() and a.bump_epoch() == 1
    a.release()
    assert a.try_acquire()
    a.lock.close()  # e.g. cut by the watchdog right after the lock was granted
    with pytest.raises(BackendUnavailable, match="lost the lock session"):
        a.bump_epoch()
    b = make(elections, pg_dsn, "b")
    assert b.leader().epoch == 1  # nothing bumped on a new session that holds nothing


def test_lost_session_means_lost_leadership(pg_dsn: str, elections: list[PostgresElection]) -> None:
    a = make(elections, pg_dsn, "a")
    assert a.try_acquire()
    admin = open_session(pg_dsn, "admin")
    with admin.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'failover:c:a'"
        )
    with pytest.raises(BackendUnavailable):
        a.renew()  # the dead connection is noticed...
    assert a.renew() is False  # ...and a new session holds nothing
    admin.close()


@pytest.fixture
def no_idle_session_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A managed server that ignores idle_session_timeout: only the standby's check frees a
    vanished holder's lock."""
    original = SessionTimings.server_settings
    monkeypatch.setattr(
        SessionTimings, "server_settings", lambda self, idle: original(self, idle_session=False)
    )


@pytest.mark.usefixtures("no_idle_session_timeout")
def test_vanished_holder_is_fenced_after_a_lease(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    a, b = make(elections, pg_dsn, "a", lease=2.0), make(elections, pg_dsn, "b", lease=2.0)
    assert a.try_acquire()
    assert not b.try_acquire()
    time.sleep(2.5)  # a is silent for longer than the lease
    assert b.try_acquire()
    with pytest.raises(BackendUnavailable):
        a.renew()


@pytest.mark.usefixtures("no_idle_session_timeout")
def test_vanished_holder_with_a_longer_lease_is_fenced_after_its_lease(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    a, b = make(elections, pg_dsn, "a", lease=4.0), make(elections, pg_dsn, "b", lease=2.0)
    assert a.try_acquire() and a.bump_epoch() == 1 and a.renew()
    time.sleep(2.5)  # silent past b's lease, inside its own
    assert not b.try_acquire()
    time.sleep(2.0)
    assert b.try_acquire()


def test_fence_waits_for_older_keeper_then_terminates(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    old_keeper = open_session(pg_dsn, "failover:c:old:1:keeper")
    old_child = open_session(pg_dsn, "failover:c:old:1")
    same_epoch = open_session(pg_dsn, "failover:c:b:2")
    other_cluster = open_session(pg_dsn, "failover:x:old:1:keeper")
    b = make(elections, pg_dsn, "b", lease=2.0)
    assert b.try_acquire()
    for _ in range(5):  # the session server may be younger than a lease: that alone would wait
        time.sleep(0.5)
        assert b.renew()  # (and an idle lock session is cut off after a lease)
    report = b.fence(2, force=False)
    assert report.pending == 1 and "older keeper" in report.detail
    old_keeper.close()
    # The server ends a closed client's backend asynchronously: wait until it is gone.
    wait_until(
        lambda: (
            not b._q(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'failover:c:old:1:keeper'"
            )
        ),
        5,
        "the closed keeper session to leave pg_stat_activity",
    )
    report = b.fence(2, force=False)
    assert report.pending == 0 and report.terminated == 1  # the straggling child session
    assert old_child.closed or _is_dead(old_child)
    assert not _is_dead(same_epoch) and not _is_dead(other_cluster)
    again = open_session(pg_dsn, "failover:c:old:1:keeper")
    report = b.fence(2, force=True)
    assert report.pending == 0 and report.terminated == 1
    assert _is_dead(again)


def _is_dead(conn: Any) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return False
    except psycopg2.Error:
        return True


def test_fence_without_pg_signal_backend_says_how_to_fix(
    pg_server: Any, pg_dsn: str, elections: list[PostgresElection]
) -> None:
    dbname = pg_dsn.rsplit("/", 1)[1]
    admin = open_session(pg_dsn, "admin")
    with admin.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS weak")
        cur.execute("CREATE ROLE weak LOGIN PASSWORD 'weak-pw'")
        cur.execute(f'GRANT ALL ON DATABASE "{dbname}" TO weak')
        cur.execute("GRANT ALL ON SCHEMA public TO weak")
    victim = open_session(pg_dsn, "failover:c:old:1:keeper")  # owned by the superuser
    weak = make(elections, pg_server.dsn(dbname=dbname, user="weak", password="weak-pw"), "w")
    assert weak.try_acquire()
    with pytest.raises(BackendUnavailable, match="grant pg_signal_backend"):
        weak.fence(2, force=True)
    victim.close()
    admin.close()


def test_schema_creation_is_safe_concurrently(pg_dsn: str) -> None:
    errors: list[BaseException] = []

    def create() -> None:
        session = Session(pg_dsn, "schema", SessionTimings(10, 5))
        try:
            ensure_schema(session, "race_")
        except BaseException as err:
            errors.append(err)
        finally:
            session.close()

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors


def test_fresh_server_makes_the_leader_wait(
    pg_factory: Any, elections: list[PostgresElection]
) -> None:
    server = pg_factory()
    dsn = server.create_database("fresh")
    b = make(elections, dsn, "b", lease=30.0)
    assert b.try_acquire()
    report = b.fence(1, force=False)
    assert report.pending == 1 and "absence of keepers proves nothing" in report.detail
    assert 25 < report.wait_seconds <= 30


def leader_with_keeper(
    elections: list[PostgresElection], dsn: str, lease: float
) -> tuple[PostgresElection, Any]:
    """a leads epoch 1, just renewed, and its keeper's proof-of-life session is open."""
    a = make(elections, dsn, "a", lease=lease)
    assert a.try_acquire() and a.bump_epoch() == 1 and a.renew()
    return a, open_session(dsn, "failover:c:a:1:keeper")


def test_silent_previous_leader_lets_the_next_fence_at_once(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    a, old_keeper = leader_with_keeper(elections, pg_dsn, 2.0)  # a's keeper, cut off with it
    time.sleep(2.6)  # a proves nothing for longer than a lease; the server drops its session
    b = make(elections, pg_dsn, "b", lease=2.0)
    assert b.try_acquire() and b.bump_epoch() == 2
    assert b.previous_silent_for is not None and b.previous_silent_for > 2.0
    report = b.fence(2, force=False)
    assert report.pending == 0 and report.terminated == 1  # no waiting out another lease
    assert _is_dead(old_keeper)


def test_recently_renewed_leader_is_waited_for(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    a, keeper = leader_with_keeper(elections, pg_dsn, 30.0)
    a.release()  # a just renewed: its keeper may still run until its deadline
    b = make(elections, pg_dsn, "b", lease=30.0)
    assert b.try_acquire() and b.bump_epoch() == 2
    report = b.fence(2, force=False)
    assert report.pending >= 1 and not _is_dead(keeper)
    keeper.close()


def test_keeper_of_a_leader_cut_off_just_under_a_lease_ago_is_fenced_when_its_lease_ends(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    # a renewed, then vanished; b took the lock before a's lease ran out, so a's keeper may
    # still run: b waits, but only until a's last renew + lease, not a whole lease from now.
    a, keeper = leader_with_keeper(elections, pg_dsn, 2.0)
    time.sleep(1.0)
    a.release()
    b = make(elections, pg_dsn, "b", lease=2.0)
    assert b.try_acquire() and b.bump_epoch() == 2
    assert b.previous_silent_for is not None and 0.9 < b.previous_silent_for < 2.0
    first = b.fence(2, force=False)
    assert first.pending == 1 and not _is_dead(keeper)
    time.sleep(2.0 - b.previous_silent_for + 0.1)  # a's lease is over now
    report = b.fence(2, force=False)
    assert report.pending == 0 and report.terminated == 1, report
    assert _is_dead(keeper)


def idle(e: PostgresElection, seconds: float) -> None:
    """Let time pass without a renew, keeping the lock session from idle_session_timeout."""
    for _ in range(int(seconds / 0.5)):
        time.sleep(0.5)
        assert e._we_hold()
    time.sleep(seconds % 0.5)


def test_a_predecessor_with_a_longer_lease_is_waited_for_by_its_lease(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    # A rolling restart lowers lease_seconds from 6 s to 2 s: b (2 s) takes over from a
    # (6 s). a's keeper may run until a's last renew + 6 s, so b waits by 6 s, not by 2 s.
    a, keeper = leader_with_keeper(elections, pg_dsn, 6.0)
    a.release()
    b = make(elections, pg_dsn, "b", lease=2.0)
    assert b.try_acquire() and b.bump_epoch() == 2
    first = b.fence(2, force=False)
    assert first.pending == 1 and first.wait_seconds == 6.0, first
    idle(b, 2.5)  # past b's own lease, inside a's
    c = make(elections, pg_dsn, "c", lease=2.0)
    assert c.leader().epoch == 2
    report = b.fence(2, force=False)
    assert report.pending == 1 and not _is_dead(keeper), report
    # b dies before its fence is done: its successor still waits by a's lease.
    b.close()  # (the server ends its backend, and frees the lock, asynchronously)
    wait_until(c.try_acquire, 5, "c to take the lock b left")
    assert c.bump_epoch() == 3
    assert c.fence(3, force=False).wait_seconds == 6.0
    idle(c, 6.0 - 2.5 + 0.2)  # a's lease is over now
    report = c.fence(3, force=False)
    assert report.pending == 0 and report.terminated == 1, report
    assert _is_dead(keeper)
    # Once fenced, only c's own lease counts for the next one.
    c.release()
    d = make(elections, pg_dsn, "d", lease=2.0)
    assert d.try_acquire() and d.bump_epoch() == 4 and d.fence_lease == 2.0


def test_promoted_replica_makes_the_next_leader_wait(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    a = make(elections, pg_dsn, "a", lease=2.0)
    assert a.try_acquire() and a.bump_epoch() == 1 and a.renew()
    # As if a replica had been promoted: the recorded server start is not this server's.
    admin = open_session(pg_dsn, "admin")
    with admin.cursor() as cur:
        cur.execute(
            "UPDATE failover_cluster SET server_started = server_started - interval '1 day', "
            "renewed_at = renewed_at - interval '1 hour'"
        )
    admin.close()
    a.release()
    b = make(elections, pg_dsn, "b", lease=2.0)
    assert b.try_acquire() and b.bump_epoch() == 2
    report = b.fence(2, force=False)  # a stale (replicated) renewed_at must not shortcut the wait
    assert report.pending == 1 and "server changed" in report.detail and report.wait_seconds == 2.0
    assert b.fence(2, force=True).pending == 0
    assert b.renew()
    c = make(elections, pg_dsn, "c", lease=2.0)
    b.release()
    assert c.try_acquire() and c.bump_epoch() == 3 and not c.server_changed  # same server again


class SteppingClock:
    """A monotonic clock that advances `step` seconds on every reading."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_renew_answered_later_than_the_backend_timeout_is_no_proof(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    # A slow network stretches a call past backend_timeout_seconds (statement_timeout bounds only
    # the server's part): as if each renew took 1.5 s, more than the 1 s limit.
    clock = SteppingClock(0.001)
    a = PostgresElection(pg_dsn, "c", "a", 3.0, 1.0, "failover_", clock=clock)
    elections.append(a)
    assert a.try_acquire() and a.bump_epoch() == 1 and a.renew()
    clock.step = 1.5
    with pytest.raises(BackendUnavailable, match=r"answered the renew after 1\.5 s"):
        a.renew()
    with pytest.raises(BackendUnavailable):
        a.try_acquire()  # the holder's campaign is a renew: no proof either
    clock.step = 0.001
    assert a.renew()  # the lock was never given up: a timely answer proves it again
    b = make(elections, pg_dsn, "b")
    assert not b.try_acquire()
    a.release()
    assert b.try_acquire()


def test_a_failed_unlock_ends_the_lock_session(
    pg_dsn: str, elections: list[PostgresElection]
) -> None:
    a, b = make(elections, pg_dsn, "a"), make(elections, pg_dsn, "b")
    assert a.try_acquire() and a.bump_epoch() == 1 and a.renew()
    a.lock.query("BEGIN")  # a session in a failed transaction refuses every statement
    with pytest.raises(BackendUnavailable):
        a.lock.query("SELECT 1 / 0")
    with pytest.raises(BackendUnavailable, match="refused"):
        a.release()
    assert not a.lock.connected  # the session that held the lock is gone, and the lock with it
    wait_until(b.try_acquire, 5, "b to take the lock")
    assert not a.renew() and not a.try_acquire()
