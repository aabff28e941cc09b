"""Hostile and malformed input never crashes: it ends in a clear error or is ignored.

Config (TOML and env), DSNs, HTTP requests, member rows written by another version.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover.backends.local.election import LocalMembers, LocalStore
from failover.config import SECTIONS, Settings
from failover.dsn import normalize_sqlalchemy_url, parse_dsn, redact_dsn
from failover.errors import ConfigError
from failover.sources import load_settings, settings_fields

from .test_http import TOKEN, Rig

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
KEYS = [k for k in settings_fields(Settings) if k not in SECTIONS] + ["lease_second", "x"]
SECTION_KEYS = {name: [*settings_fields(cls), "bogus"] for name, cls in SECTIONS.items()}
ANY_SECTION_KEY = sorted({key for keys in SECTION_KEYS.values() for key in keys})
VALUES = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(max_size=30),
    st.lists(st.text(max_size=10), max_size=3),
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes


@FUZZ
@given(text=st.text(max_size=200))
def test_any_toml_text_loads_or_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "f.toml"
    path.write_text(
        text, encoding="utf-8", errors="surrogatepass"
    ) if "\ud800" not in text else None
    if not path.exists():
        return
    path.chmod(0o600)
    try:
        load_settings(str(path), env={})
    except ConfigError as err:
        assert "\n" not in str(err)


@FUZZ
@given(
    top=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6),
    section=st.sampled_from(sorted(SECTION_KEYS)),
    sub=st.dictionaries(st.sampled_from(ANY_SECTION_KEY), VALUES, max_size=4),
)
def test_structured_config_loads_or_is_a_config_error(
    tmp_path: Path, top: dict[str, Any], section: str, sub: dict[str, Any]
) -> None:
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    lines.append(f"[{section}]")
    lines += [f"{k} = {toml_value(v)}" for k, v in sub.items()]
    path = tmp_path / "f.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    try:
        load_settings(str(path), env={"FAILOVER_LOCAL__DIR": str(tmp_path)})
    except ConfigError as err:
        assert err.field and "\n" not in str(err)


@FUZZ
@given(
    env=st.dictionaries(
        st.from_regex(r"FAILOVER_[A-Z_]{1,30}", fullmatch=True), st.text(max_size=40), max_size=4
    )
)
def test_env_loads_or_is_a_config_error(env: dict[str, str]) -> None:
    try:
        load_settings(None, env={k: v for k, v in env.items() if "\x00" not in v})
    except ConfigError as err:
        assert "\n" not in str(err)


@FUZZ
@given(text=st.text(max_size=80))
def test_dsn_helpers_never_crash(text: str) -> None:
    normalize_sqlalchemy_url(text)
    redact_dsn(text)
    try:
        parse_dsn(text, "metadata_dsn")
    except ConfigError as err:
        assert err.field == "metadata_dsn"


# Starts upper-case, ends with a digit: never a word of the DSN itself ("password", a host).
SECRET = st.from_regex(r"[A-Z][A-Za-z0-9]{6,15}[0-9]", fullmatch=True)


@FUZZ
@given(
    user=st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    password=SECRET,
    host=st.from_regex(r"[a-z]{3,10}", fullmatch=True),
)
def test_redaction_hides_the_password(user: str, password: str, host: str) -> None:
    for dsn in (
        f"postgresql+psycopg2://{user}:{password}@{host}:5432/db",
        f"postgresql://{host}/db?user={user}&password={password}",
        f"host={host} user={user} password={password} dbname=db",
        f"host={host} password='{password}'",
    ):
        assert password not in redact_dsn(dsn), dsn


@pytest.fixture(scope="module")
def rig() -> Any:
    r = Rig(TOKEN)
    r.board.publish(
        {"node": "n1", "role": "leader", "backend_up": True, "child": {"state": "running"}}
    )
    yield r
    r.server.close()


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@FUZZ
@given(
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"BREW", b"G\xffT"]),
    path=st.one_of(
        st.sampled_from(
            [b"/status", b"/pause", b"/switchover", b"/metrics", b"/../x", b"//", b"/leader?x=1"]
        ),
        st.binary(max_size=40),
    ),
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"Authorization", b"Content-Length", b"X"]), st.binary(max_size=30)
        ),
        max_size=3,
    ),
    body=st.binary(max_size=300),
)
def test_http_answers_anything_and_stays_up(
    rig: Any, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    clean = [(k, v.replace(b"\r", b"").replace(b"\n", b"")) for k, v in headers]
    head = b"\r\n".join(
        [
            method + b" " + path.replace(b" ", b"") + b" HTTP/1.1",
            b"Host: x",
            *[k + b": " + v for k, v in clean],
        ]
    )
    reply = raw_request(rig.server.port, head + b"\r\n\r\n" + body)
    if reply:
        assert reply.startswith(b"HTTP/1.")
    status = raw_request(rig.server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.startswith(b"HTTP/1.0 200") or status.startswith(b"HTTP/1.1 200")
    assert rig.calls == []  # never an action without the token


def test_member_rows_from_another_version_are_ignored(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path), "c", 1.0)
    members = LocalMembers(store)
    db = sqlite3.connect(store.db_path)
    db.execute(
        "INSERT INTO member VALUES ('good', 'standby', 1, 'stopped', NULL, '0.1', 's', 1e12)"
    )
    db.execute("INSERT INTO member VALUES ('bad1', NULL, 'x', NULL, 'pid', NULL, NULL, NULL)")
    db.execute(
        "INSERT INTO member VALUES ('bad2', 'leader', 2, 'running', 5, 'v', 's', 'yesterday')"
    )
    db.execute("INSERT INTO flags VALUES ('paused', 'maybe', 'never')")
    db.execute("INSERT INTO flags VALUES ('switchover_to', 'n2', 'soon')")
    db.commit()
    db.close()
    rows = members.members()
    assert [r.node for r in rows] == ["good"]
    flags = members.flags()
    assert flags.paused is False and flags.switchover_to == "n2"
    store.close()
