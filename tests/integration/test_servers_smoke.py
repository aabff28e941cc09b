"""Smoke tests for the real-server test infrastructure (tests/servers.py, conftest)."""

from __future__ import annotations

import re
import time
import uuid

import psycopg2
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError
from kazoo.protocol.states import KazooState

try:
    from tests.servers import FAILOVER_PASSWORD, FAILOVER_USER
except ImportError:
    from servers import FAILOVER_PASSWORD, FAILOVER_USER  # type: ignore[no-redef,import-not-found,unused-ignore]

pytestmark = pytest.mark.integration


def _kazoo(hosts: str, timeout: float = 10.0) -> KazooClient:
    client = KazooClient(hosts=hosts, timeout=timeout, connection_retry={"max_tries": -1})
    client.start(timeout=15)
    return client


# --------------------------------------------------------------------------- PostgreSQL


def test_pg_select_1(pg_dsn: str) -> None:
    with psycopg2.connect(pg_dsn, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()


def test_pg_password_role(pg_server, pg_dsn: str) -> None:
    dbname = pg_dsn.rsplit("/", 1)[1]
    good = pg_server.dsn(dbname, user=FAILOVER_USER, password=FAILOVER_PASSWORD)
    conn = psycopg2.connect(good, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT current_user, pg_has_role(current_user, 'pg_signal_backend', 'member'),"
                " rolcreatedb FROM pg_roles WHERE rolname = current_user"
            )
            assert cur.fetchone() == (FAILOVER_USER, True, True)
    finally:
        conn.close()

    for bad in (
        pg_server.dsn(dbname, user=FAILOVER_USER, password="wrong-password"),
        pg_server.dsn(dbname, user=FAILOVER_USER),  # no password at all
    ):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(bad, connect_timeout=10)


def test_pg_advisory_lock(pg_dsn: str) -> None:
    holder = psycopg2.connect(pg_dsn, connect_timeout=10)
    other = psycopg2.connect(pg_dsn, connect_timeout=10)
    holder.autocommit = other.autocommit = True
    try:
        with holder.cursor() as h, other.cursor() as o:
            h.execute("SELECT pg_try_advisory_lock(42)")
            assert h.fetchone() == (True,)
            o.execute("SELECT pg_try_advisory_lock(42)")
            assert o.fetchone() == (False,)
            h.execute("SELECT pg_advisory_unlock(42)")
            assert h.fetchone() == (True,)
            o.execute("SELECT pg_try_advisory_lock(42)")
            assert o.fetchone() == (True,)
    finally:
        holder.close()
        other.close()


def test_pg_restart_and_kill_keep_data(pg_factory) -> None:
    pg = pg_factory()
    dsn = pg.create_database("keep")
    pg.execute("CREATE TABLE t (v text)", dbname="keep")
    pg.execute("INSERT INTO t VALUES ('before restart')", dbname="keep")
    port = pg.port

    pg.restart()
    assert pg.port == port
    assert pg.query("SELECT v FROM t", dbname="keep") == [("before restart",)]

    pg.execute("INSERT INTO t VALUES ('before kill')", dbname="keep")
    pg.kill()
    assert not pg.is_running()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(dsn, connect_timeout=2)
    pg.start()
    rows = pg.query("SELECT v FROM t ORDER BY v", dbname="keep")
    assert rows == [("before kill",), ("before restart",)]


# --------------------------------------------------------------------------- ZooKeeper


def test_zk_ephemeral_node_vanishes_with_client(zk_chroot: str) -> None:
    owner = _kazoo(zk_chroot)
    observer = _kazoo(zk_chroot)
    try:
        owner.create("/leader", b"me", ephemeral=True)
        assert observer.get("/leader")[0] == b"me"
        assert observer.get("/leader")[1].ephemeralOwner == owner.client_id[0]
        owner.stop()  # closes the session: ephemeral node is deleted at once
        deadline = time.monotonic() + 10
        while observer.exists("/leader") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert observer.exists("/leader") is None
    finally:
        for client in (owner, observer):
            client.stop()
            client.close()


def _negotiated_timeout_ms(server, client: KazooClient) -> int:
    """Session timeout the server granted, read from the ``cons`` four-letter word.

    kazoo does not expose it: ``client._session_timeout`` stays the *requested* value.
    """
    sid = f"sid=0x{client.client_id[0]:x},"
    for line in server.four_letter_word("cons").splitlines():
        if sid in line:
            return int(re.search(r"[(,]to=(\d+)", line).group(1))
    raise AssertionError(f"session {sid} not in cons output")


@pytest.mark.parametrize(("requested_s", "expected_ticks"), [(30.0, 20), (0.1, 2), (2.0, 10)])
def test_zk_session_timeout_is_clamped_by_tick_time(zk_server, requested_s, expected_ticks) -> None:
    # Without min/maxSessionTimeout the server clamps into [2, 20] * tickTime.
    client = _kazoo(zk_server.hosts, timeout=requested_s)
    try:
        negotiated = _negotiated_timeout_ms(zk_server, client)
        assert negotiated == expected_ticks * zk_server.tick_time_ms
    finally:
        client.stop()
        client.close()


def test_zk_session_timeout_bounds_are_configurable(zk_factory) -> None:
    zk = zk_factory(tick_time_ms=200, max_session_timeout_ms=10_000)
    client = _kazoo(zk.hosts, timeout=30.0)
    try:
        assert _negotiated_timeout_ms(zk, client) == 10_000
    finally:
        client.stop()
        client.close()


def test_zk_ensemble_survives_one_member_stopping(zk_factory) -> None:
    ensemble = zk_factory.ensemble(3)
    assert sorted(s.mode() for s in ensemble) == ["follower", "follower", "leader"]
    client = _kazoo(ensemble.hosts)
    try:
        client.create("/before", b"1")
        victim = ensemble.leader()
        assert victim is not None
        victim.stop()
        assert not victim.is_running()

        # The two survivors elect a new leader; writes work again within a few seconds.
        path = f"/after-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + 30
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                client.create(path, b"2")
                break
            except NodeExistsError:  # an earlier attempt went through, its reply was lost
                break
            except Exception as exc:  # ConnectionLoss / SessionExpired while re-electing
                last_error = exc
                time.sleep(0.2)
        else:
            pytest.fail(f"ensemble not writable after a member stopped: {last_error!r}")
        assert client.state == KazooState.CONNECTED
        assert client.get("/before")[0] == b"1"
        survivors = [s for s in ensemble if s is not victim]
        assert sorted(s.mode() for s in survivors) == ["follower", "leader"]

        victim.start()  # rejoins as a follower and catches up
        assert victim.mode() == "follower"
    finally:
        client.stop()
        client.close()
