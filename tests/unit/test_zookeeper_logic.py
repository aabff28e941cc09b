"""ZooKeeper backend logic without a server: the kazoo log tap (negotiated timeout, no
secrets), contender names, the keeper-deadline arithmetic of fencing, the switchover hook."""

from __future__ import annotations

import logging

import pytest
from structlog.testing import capture_logs

from failover.backends.zookeeper.conn import BLATHER, KazooLog
from failover.backends.zookeeper.store import (
    Breadcrumb,
    Contender,
    SwitchoverAware,
    keeper_deadline_left,
)
from failover.interfaces import ClusterFlags, MemberState

from .fakes import FakeStore

SESSION_LINE = (
    "Session created, session_id: %r session_passwd: %s\n"
    "    negotiated session timeout: %s\n"
    "    connect timeout: %s\n"
    "    read timeout: %s"
)


def test_kazoo_log_captures_the_negotiated_timeout_and_hides_secrets() -> None:
    got: list[float] = []
    tap = KazooLog(got.append, {"node": "a", "cluster": "t"})
    with capture_logs() as logs:
        tap.log(BLATHER, SESSION_LINE, 1234, "deadbeef-session-password", 4000, 4000.0, 2666.6)
        tap.debug("Sending request(xid=%s): %s", None, "Auth(scheme='digest', auth='u:pw')")
        tap.log(BLATHER, "Read response %s", "x")
        tap.info("Zookeeper connection established, state: %s", "CONNECTED")
        for _ in range(3):
            tap.warning("Connection dropped: %s", "socket connection broken")
    assert got == [4.0]
    assert not tap.isEnabledFor(logging.DEBUG) and tap.isEnabledFor(BLATHER)
    text = repr(logs)
    assert "deadbeef" not in text and "pw" not in text
    assert [e["log_level"] for e in logs] == ["debug", "warning"]  # warnings not repeated
    assert logs[1]["message"] == "Connection dropped: socket connection broken"
    assert logs[1]["node"] == "a"


def test_quiet_kazoo_log_forwards_nothing() -> None:
    got: list[float] = []
    tap = KazooLog(got.append, None)
    with capture_logs() as logs:
        tap.warning("Connection dropped: %s", "x")
        tap.log(BLATHER, SESSION_LINE, 1, "p", 3000, 3000.0, 2000.0)
    assert logs == [] and got == [3.0]


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("c_n1_0000000007", Contender("c_n1_0000000007", "n1", 7)),
        ("c_my_node-2_0000000123", Contender("c_my_node-2_0000000123", "my_node-2", 123)),
        ("c__0000000001", None),
        ("epoch", None),
        ("c_n1_00000x0007", None),
        ("members", None),
    ],
)
def test_contender_names(name: str, parsed: Contender | None) -> None:
    assert Contender.parse(name) == parsed


def crumb(proved_at_ms: int, lease_ms: int = 3000) -> Breadcrumb:
    return Breadcrumb("n1", 4, "tok", lease_ms, False, proved_at_ms)


def test_keeper_deadline_arithmetic() -> None:
    # Proved at 10.0 s with a 3 s lease bound: its keeper kills by 13.0 s at the latest.
    assert keeper_deadline_left(crumb(10_000), 11_000, 9.0) == pytest.approx(2.0)
    assert keeper_deadline_left(crumb(10_000), 13_500, 9.0) == pytest.approx(-0.5)
    # A server clock stepped back an hour: never more than one lease from now.
    assert keeper_deadline_left(crumb(10_000), 10_000 - 3_600_000, 9.0) == 3.0
    # A breadcrumb without a lease: ours stands in.
    assert keeper_deadline_left(crumb(10_000, 0), 10_000, 9.0) == 9.0


def test_breadcrumb_parse() -> None:
    info = {"node": "n2", "epoch": 7, "token": "t", "lease_ms": 2500, "released": True}
    assert Breadcrumb.parse(info, 99) == Breadcrumb("n2", 7, "t", 2500, True, 99)
    assert Breadcrumb.parse({**info, "proved_at_ms": 5}, 99).proved_at_ms == 5
    assert Breadcrumb.parse({}, 1) is None and Breadcrumb.parse("junk", 1) is None


def test_switchover_hook_sees_every_flags_read_and_forwards_the_rest() -> None:
    inner = FakeStore()
    seen: list[ClusterFlags] = []
    store = SwitchoverAware(inner, seen.append)
    inner.request_switchover("a", "c")
    flags = store.flags()
    assert seen == [flags] and flags.switchover_to == "c"
    store.heartbeat(MemberState("a", "leader", 1, "running", None, "v"))
    assert [m.node for m in store.members()] == ["a"]
    store.clear_switchover()
    assert store.flags().switchover_to is None
