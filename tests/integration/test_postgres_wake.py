"""PostgreSQL wake-ups on the lock session and the member store's one-statement heartbeat,
against a real server: LISTEN rides on the lock session (again after every reconnect)."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from failover.backends.postgres.election import PostgresElection
from failover.backends.postgres.members import PostgresMembers
from failover.interfaces import ClusterFlags, LeaderInfo, MemberState

from ..harness import sent_statements, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def made() -> Iterator[list[Any]]:
    parts: list[Any] = []
    yield parts
    for p in parts:
        p.close()


def election(
    made: list[Any], dsn: str, node: str, lease: float = 3.0, notify: bool = True
) -> PostgresElection:
    e = PostgresElection(dsn, "c", node, lease, 1.0, "failover_", notify=notify)
    made.append(e)
    return e


def query(dsn: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def pids(dsn: str, name: str) -> list[int]:
    rows = query(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
        "AND datname = current_database()",
        (name,),
    )
    return [int(r[0]) for r in rows]


def woken(e: PostgresElection, timeout: float) -> bool:
    """Wait as the daemon does (select on watch_fd, then changed()); whether it was woken."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        fd, poll = e.watch_fd(), e.poll_interval()
        assert fd is not None or poll, "nothing to wait on"
        readable, _, _ = select.select(
            [fd] if fd is not None else [], [], [], min(left, poll or left)
        )
        if (readable or poll) and e.changed():
            return True
    return False


def test_a_release_wakes_a_standby_through_its_lock_session(pg_dsn: str, made: list[Any]) -> None:
    a, b = election(made, pg_dsn, "a"), election(made, pg_dsn, "b")
    assert a.try_acquire() and a.bump_epoch() == 1
    assert b.campaign() == (False, LeaderInfo("a", 1))
    assert b.watch_fd() == b.lock.fileno()
    names = query(
        pg_dsn,
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s "
        "AND datname = current_database()",
        ("failover:c:%",),
    )
    assert sorted(r[0] for r in names) == ["failover:c:a", "failover:c:b"]  # no watch session
    assert not woken(b, 0.3)
    started = time.monotonic()
    a.release()
    assert woken(b, 2.0) and time.monotonic() - started < 1.0
    assert b.campaign() == (True, None)


def test_the_lock_session_listens_again_after_a_reconnect(pg_dsn: str, made: list[Any]) -> None:
    a, b = election(made, pg_dsn, "a"), election(made, pg_dsn, "b")
    assert a.try_acquire() and a.bump_epoch() == 1
    assert not b.campaign()[0] and b.watch_fd() is not None
    [old] = pids(pg_dsn, "failover:c:b")
    query(pg_dsn, "SELECT pg_terminate_backend(%s)", (old,))
    assert woken(b, 2.0)  # the end of the session wakes it at once...
    assert not b.lock.connected and b.watch_fd() is None  # ...and it is dropped
    assert b.campaign() == (False, LeaderInfo("a", 1))  # the next tick reconnects
    assert b.watch_fd() is not None
    assert pids(pg_dsn, "failover:c:b") != [old]
    started = time.monotonic()
    a.release()
    assert woken(b, 2.0) and time.monotonic() - started < 1.0
    assert b.campaign()[0]


def test_idle_session_timeout_spares_a_campaigning_standby(pg_dsn: str, made: list[Any]) -> None:
    """The lock session has idle_session_timeout = lease. A standby's campaign runs every loop
    (shorter than the lease), so LISTENing between ticks never reaches it; one that stops
    campaigning (paused, cooling down) for a lease is cut, sees it at once, and reconnects."""
    lease = 2.0
    a, b = election(made, pg_dsn, "a", lease), election(made, pg_dsn, "b", lease)
    assert a.try_acquire()
    assert not b.campaign()[0]
    [pid] = pids(pg_dsn, "failover:c:b")
    for _ in range(7):  # 3.5 s, loop 0.5 s
        assert not woken(b, 0.5)
        assert a.renew() and not b.campaign()[0]
    assert pids(pg_dsn, "failover:c:b") == [pid]
    started = time.monotonic()
    assert woken(b, 2 * lease)  # no campaign: the server ends the session a lease on
    assert time.monotonic() - started > lease - 0.6 and not b.lock.connected
    b.campaign()  # the next campaign reconnects, and it LISTENs again
    assert b.lock.connected and b.watch_fd() is not None


def test_a_notify_taken_in_with_a_statement_ends_the_wait_at_once(
    pg_dsn: str, made: list[Any]
) -> None:
    a, b = election(made, pg_dsn, "a"), election(made, pg_dsn, "b")
    assert a.try_acquire()
    assert not b.campaign()[0] and b.watch_fd() is not None
    assert b.poll_interval() is None
    a.release()
    time.sleep(0.2)
    b.leader()  # a statement of the tick: psycopg2 takes the NOTIFY in with its answer
    assert b.poll_interval() == pytest.approx(0.001)
    assert b.changed() and b.poll_interval() is None


def test_notify_off_listens_to_nothing(pg_dsn: str, made: list[Any]) -> None:
    a = election(made, pg_dsn, "a", notify=False)
    b = election(made, pg_dsn, "b", notify=False)
    listener = psycopg2.connect(pg_dsn)
    listener.autocommit = True
    try:
        with listener.cursor() as cur:
            cur.execute('LISTEN "failover:c"')
        assert a.try_acquire() and not b.campaign()[0]
        assert b.watch_fd() is None and b.poll_interval() is None and not b.changed()
        a.release()
        time.sleep(0.3)
        listener.poll()
        assert listener.notifies == []  # the release sends none either
        assert b.lock.query("SELECT count(*) FROM pg_listening_channels()") == [(0,)]
    finally:
        listener.close()


def test_heartbeat_and_flags_is_one_statement(pg_dsn: str, made: list[Any]) -> None:
    store = PostgresMembers(pg_dsn, "c", "b", "failover_", 3.0, 1.0)
    made.append(store)
    assert store.flags() == ClusterFlags()  # (creates the tables)
    sent = sent_statements(store.session)
    state = MemberState("b", "standby", 0, "stopped", None, "0.1", "no action: following a")
    assert store.heartbeat_and_flags(state) == ClusterFlags()  # no cluster row yet
    assert len(sent) == 1
    [row] = store.members()
    assert (row.node, row.role, row.sentence) == ("b", "standby", "no action: following a")
    store.set_paused(True)
    store.request_switchover("a", "b")
    del sent[:]
    later = MemberState("b", "standby", 3, "warm", None, "0.1", "no action: following a (3)")
    flags = store.heartbeat_and_flags(later)
    assert len(sent) == 1
    assert flags.paused and flags.switchover_to == "b" and flags.switchover_from == "a"
    [row] = store.members()
    assert (row.epoch, row.child_state, row.heartbeat_age) == (3, "warm", pytest.approx(0, abs=1))
    wait_until(lambda: store.members()[0].heartbeat_age > 0.2, 5, "the heartbeat to age")
    store.heartbeat_and_flags(later)
    assert store.members()[0].heartbeat_age < 0.2  # the CTE ran though nothing read it
