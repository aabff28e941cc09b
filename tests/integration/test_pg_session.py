"""A `Session` call never waits longer than half a lease, whatever the network or server does.

tcp_user_timeout cannot promise that: a request the server's kernel acknowledged but
nobody answers (a frozen backend, a stalled proxy) has nothing unacknowledged, so the
kernel waits on keepalives, which that same kernel answers. The watchdog cuts the socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

import pytest

from failover.backends.postgres.session import Session, SessionTimings
from failover.errors import BackendUnavailable

LEASE = 2.0  # call limit 1 s


def session(dsn: str, statement_timeout: float = 30.0) -> Session:
    return Session(dsn, "failover:t:n:limit", SessionTimings(LEASE, statement_timeout))


def timed_failure(s: Session, statement: str) -> tuple[float, str]:
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        s.query(statement)
    return time.monotonic() - started, str(err.value)


def test_a_slow_statement_is_cut_at_the_call_limit(pg_dsn: str) -> None:
    s = session(pg_dsn)  # statement_timeout 30 s: only the client-side limit can end it
    try:
        took, message = timed_failure(s, "SELECT pg_sleep(6)")
        assert took < 3.0, took  # limit 1 s; generous for a busy machine, far below 6 s
        assert "no answer within 1 s (half of lease_seconds)" in message, message
        assert not s.connected
        assert s.query("SELECT 1") == [(1,)]  # a new connection right away
    finally:
        s.close()


def test_a_frozen_backend_is_cut_at_the_call_limit(pg_dsn: str, pg_server: Any) -> None:
    if not hasattr(pg_server, "pid"):
        pytest.skip("the server's processes are not on this host")
    s = session(pg_dsn)
    probe = session(pg_dsn)
    try:
        backend = int(s.query("SELECT pg_backend_pid()")[0][0])
        os.kill(backend, signal.SIGSTOP)  # its kernel still acknowledges every packet
        thaw = threading.Timer(10.0, os.kill, (backend, signal.SIGCONT))  # bounds a hang
        thaw.start()
        try:
            took, message = timed_failure(s, "SELECT 1")
        finally:
            thaw.cancel()
            os.kill(backend, signal.SIGCONT)
        assert took < 3.0, took
        assert "no answer within 1 s" in message, message
        assert probe.query("SELECT 1") == [(1,)]
        assert s.query("SELECT 2") == [(2,)]
    finally:
        with contextlib.suppress(Exception):
            s.close()
        probe.close()


def test_quick_calls_are_not_cut(pg_dsn: str) -> None:
    s = session(pg_dsn)
    try:
        for _ in range(50):
            assert s.query("SELECT pg_sleep(0.01), 1")[0][1] == 1
        generation = s.generation
        time.sleep(1.5)  # idle past the limit: only calls are timed, not the connection
        assert s.query("SELECT 1") == [(1,)]
        assert s.generation == generation == 1
    finally:
        s.close()
