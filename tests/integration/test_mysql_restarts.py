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

from failover.backends.mysql.election import MySQLElection
from failover.backends.mysql.members import MySQLMembers
from failover.backends.mysql.session import Session
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


def sessions(election: MySQLElection, members: MySQLMembers) -> list[Session]:
    return [election.lock, election.watch.session, members.session]


def use_all(
    election: MySQLElection, members: MySQLMembers, state: MemberState, count: ContextCount
) -> bool:
    """One standby's work: campaign, wait on the wake lock, heartbeat. True when all worked."""
    count.counting = True
    try:
        election.campaign()
        members.heartbeat(state)
        return election.watch_fd() is not None
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
    holder = MySQLElection(dsn, "c", "a", 3.0, 0.5, "failover_")
    standby = MySQLElection(dsn, "c", "b", 3.0, 0.5, "failover_")
    members = MySQLMembers(dsn, "c", "failover_", 3.0, 0.5)
    state = MemberState("b", "standby", 0, "none", None, "test")
    try:
        count = ContextCount(monkeypatch)
        assert holder.try_acquire()
        assert use_all(standby, members, state, count)
        threads, first = threading.active_count(), count.built
        generation = standby.lock.generation
        for _ in range(RESTARTS):
            server.stop()
            for _ in range(6):  # connects that fail while the server is down
                for s in sessions(standby, members):
                    s.next_attempt = 0.0
                assert not use_all(standby, members, state, count)
            server.start()
            for s in sessions(standby, members):
                s.next_attempt = 0.0
            wait_until(lambda: use_all(standby, members, state, count), 20, "the sessions back")
        assert standby.lock.generation >= generation + RESTARTS  # it did reconnect each time
        contexts = {id(s.conn.ctx) for s in sessions(standby, members)}
        assert len(contexts) == 1, "every connection shares one TLS context"
        assert count.built == first, f"{count.built - first} TLS contexts built by reconnects"
        assert threading.active_count() == threads  # the one watchdog thread
    finally:
        for closeable in (holder, standby, members):
            closeable.close()


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
