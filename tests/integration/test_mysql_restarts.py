"""The mysql backend's sessions through MariaDB restarts (issue #20): every connection and
every failed connect shares one TLS context per process, and a daemon's threads, fds and RSS
stay flat across restarts."""

from __future__ import annotations

import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pymysql.connections
import pytest

from failover.backends.mysql.members import MySQLMembers
from failover.backends.mysql.session import Session, SessionTimings
from failover.backends.mysql.tls import Connection, settings_key, shared_context
from failover.errors import BackendUnavailable
from failover.interfaces import MemberState
from failover.keeper import proctree

from ..harness import Cluster, wait_until
from ..servers import FAILOVER_PASSWORD, FAILOVER_USER, MariaDBServer

pytestmark = pytest.mark.integration

RESTARTS = 4


class ContextCount:
    """How many TLS contexts with the system's CA store our sessions built (PyMySQL >= 1.2
    builds one per connection unless it is shared); the server helper's pings not counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.built = 0
        self.counting = False
        real = ssl.create_default_context

        def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
            self.built += self.counting
            return real(*args, **kwargs)

        monkeypatch.setattr(ssl, "create_default_context", counted)


def use_all(sessions: list[Session], members: MySQLMembers, count: ContextCount) -> bool:
    """A daemon's sessions at work (lock, watch, member store): True when every one answered."""
    state = MemberState("b", "standby", 0, "none", None, "test")
    count.counting = True
    try:
        for s in sessions:
            s.next_attempt = 0.0  # no reconnect backoff: every call here tries to connect
            s.query("SELECT 1")
        members.heartbeat(state)
        return True
    except BackendUnavailable:
        return False
    finally:
        count.counting = False


def test_sessions_share_one_tls_context_through_restarts(
    my_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: MariaDBServer = my_factory()
    server.create_database("t_tls")
    dsn = server.dsn("t_tls", user=FAILOVER_USER, password=FAILOVER_PASSWORD)
    timings = SessionTimings(3.0, 0.5)
    members = MySQLMembers(dsn, "c", "failover_", 3.0, 0.5)
    sessions = [Session(dsn, timings, lock_session=True), Session(dsn, timings), members.session]
    count = ContextCount(monkeypatch)
    try:
        assert use_all(sessions, members, count)
        threads, first = threading.active_count(), count.built
        for _ in range(RESTARTS):
            server.stop()
            for _ in range(5):  # connects that fail while the server is down
                assert not use_all(sessions, members, count)
            server.start()
            wait_until(lambda: use_all(sessions, members, count), 20, "the sessions back")
        assert all(s.generation >= RESTARTS + 1 for s in sessions)  # reconnected each time
        assert len({id(s.conn.ctx) for s in sessions}) == 1, "one TLS context for all"
        assert count.built == first, f"{count.built - first} TLS contexts built by reconnects"
        assert threading.active_count() == threads  # the one watchdog thread
    finally:
        for s in sessions:
            s.close()


def test_a_replaced_ca_file_is_read_again(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("one")
    built: list[object] = []

    def build(sslp: Any) -> object:
        built.append(object())
        return built[-1]

    sslp = {"ca": str(ca), "check_hostname": False, "verify_mode": False}
    first = shared_context(sslp, build)
    assert shared_context(dict(sslp), build) is first and len(built) == 1
    ca.write_text("two, longer")  # a new bundle: a new context
    assert shared_context(sslp, build) is not first and len(built) == 2
    assert settings_key(object()) is None  # an SSLContext of the caller's: used as it is
    assert issubclass(Connection, pymysql.connections.Connection)


def test_daemon_threads_fds_and_rss_stay_flat_through_restarts(
    tmp_path: Path, my_factory: Any
) -> None:
    """Two daemons, RESTARTS restarts of the server: a generous bound on RSS (it grew by
    ~1.7 MB steps with a TLS context per connect); threads and fds exactly as before."""
    server: MariaDBServer = my_factory()
    server.create_database("t_flat")
    dsn = server.dsn("t_flat", user=FAILOVER_USER, password=FAILOVER_PASSWORD)
    cluster = Cluster(tmp_path, nodes=("n1", "n2"), settings={"backend": "mysql", "mysql.dsn": dsn})
    try:
        cluster.start_all()
        cluster.leader_child(timeout=30)
        time.sleep(3)
        before = {n: daemon_status(cluster.procs[n].pid) for n in cluster.nodes}
        for _ in range(RESTARTS):
            server.restart()
            cluster.leader_child(timeout=45)
            time.sleep(3)
        for n in cluster.nodes:
            pid = cluster.procs[n].pid
            after = daemon_status(pid)
            assert after["threads"] == before[n]["threads"], (n, before[n], after)
            assert after["fds"] <= before[n]["fds"] + 1, (n, before[n], after)  # a keeper pipe
            grew = (after["rss"] - before[n]["rss"]) / 2**20
            assert grew < 4.0, f"{n} RSS grew {grew:.1f} MB over {RESTARTS} restarts"
    finally:
        cluster.stop_all()


def daemon_status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"threads": threads, "fds": fds, "rss": proctree.rss_bytes(pid)}
