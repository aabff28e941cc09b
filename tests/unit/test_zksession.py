"""The session ticket and the multi reply of zksession.py, without a server."""

from __future__ import annotations

import struct

import pytest

from failover.keeper.zksession import CHECK, SET_DATA, WORD, Ticket, multi_errors, multi_request

TICKET = Ticket(
    hosts=(("zk1", 2181), ("10.0.0.2", 2182)),
    session_id=0x100000B1D960001,
    password=bytes(range(16)),
    timeout_ms=5000,
    contender="/airflow/failover/t/c_n1_0000000007",
    breadcrumb="/airflow/failover/t/leader",
    released=b'{"released":true}',
    auth=("failover", "pw-secret"),
    use_ssl=True,
    ca_file="/etc/ca.pem",
    cert_file="/etc/c.pem",
    key_file="/etc/c.key",
)


def test_the_line_carries_the_ticket_and_its_repr_no_secret() -> None:
    line = TICKET.line()
    word, _, payload = line.partition(" ")
    assert word == WORD and "\n" not in line
    assert Ticket.parse(payload) == TICKET
    shown = repr(TICKET)
    for secret in ("pw-secret", TICKET.password.hex(), f"{TICKET.session_id}"):
        assert secret not in shown


def test_a_malformed_ticket_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError) as err:
        Ticket.parse('{"hosts": [], "password": "zz-pw-secret"}')
    assert "secret" not in str(err.value)


def test_the_multi_checks_the_contender_then_sets_the_breadcrumb() -> None:
    body = multi_request(TICKET)
    op, done, _ = struct.unpack_from("!iBi", body, 0)
    assert (op, done) == (CHECK, 0)
    assert TICKET.contender.encode() in body and body.endswith(struct.pack("!iBi", -1, 1, -1))
    assert body.index(TICKET.contender.encode()) < body.index(TICKET.breadcrumb.encode())


def test_multi_reply_errors() -> None:
    ok = struct.pack("!iBi", CHECK, 0, 0) + struct.pack("!iBi", SET_DATA, 0, 0) + bytes(68)
    ok += struct.pack("!iBi", -1, 1, -1)
    assert multi_errors(b"x" * 16 + ok, 16) == [0, 0]
    failed = struct.pack("!iBi", -1, 0, -101) + struct.pack("!i", -101)
    failed += struct.pack("!iBi", -1, 0, -2) + struct.pack("!i", -2)
    failed += struct.pack("!iBi", -1, 1, -1)
    assert multi_errors(failed, 0) == [-101, -2]
