"""Names and keys the PostgreSQL backend relies on (no server needed)."""

from __future__ import annotations

from failover.backends.postgres.fence import appname_epoch
from failover.backends.postgres.session import SessionTimings, lock_key, split_key


def test_lock_key_is_64_bit_and_never_airflows_small_keys() -> None:
    keys = {lock_key(c) for c in ("airflow", "prod", "a", "b")}
    assert len(keys) == 4
    for key in keys:
        assert -(2**63) <= key < 2**63
        assert abs(key) > 2**32  # Airflow uses 1 and 2; a hash this small would be suspicious
    assert lock_key("airflow") == lock_key("airflow")


def test_split_key_matches_pg_locks_columns() -> None:
    key = lock_key("airflow")
    classid, objid = split_key(key)
    assert ((classid << 32) | objid) == key & 0xFFFFFFFFFFFFFFFF
    assert 0 <= classid < 2**32 and 0 <= objid < 2**32


def test_appname_epoch() -> None:
    assert appname_epoch("failover:c:n1:7", "c") == (7, False)
    assert appname_epoch("failover:c:n1:7:keeper", "c") == (7, True)
    for name in (
        "failover:c:n1",
        "failover:c:n1:store",
        "failover:c:n1:watch",
        "failover:c:n1:standby",
        "failover:other:n1:7",
        "failover:c:n1:7:other",
        "psql",
    ):
        assert appname_epoch(name, "c") is None, name


def test_session_timings_follow_the_lease() -> None:
    t = SessionTimings(lease=10, statement_timeout=2)
    s = t.server_settings(idle_session=True)
    assert s["idle_session_timeout"] == "10000"
    assert s["statement_timeout"] == "2000"
    idle, interval, count = t.keepalive_idle, t.keepalive_interval, t.keepalive_count
    assert idle + interval * count <= 10  # a dead peer is noticed within one lease
    assert "idle_session_timeout" not in t.server_settings(idle_session=False)


def test_a_new_connection_stays_within_half_a_lease() -> None:
    # connect_timeout applies per address (`localhost` may have two), then the settings.
    for lease, timeout, expected in ((10, 2, 2), (3, 0.5, 1), (30, 5, 5), (20, 9, 5), (3, 1.2, 1)):
        t = SessionTimings(lease=lease, statement_timeout=timeout)
        assert t.call_limit == lease / 2
        assert t.connect_timeout == expected, (lease, timeout)
        assert 2 * t.connect_timeout <= max(t.call_limit, 2)  # libpq counts whole seconds
