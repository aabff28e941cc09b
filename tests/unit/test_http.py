"""HTTP contract of the status endpoint, served in-process on a real socket."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from failover.errors import ConfigError
from failover.ops.http import Board, Server, parse_listen, read_token
from failover.ops.metrics import Metrics, Sample

TOKEN = "s3cret-token-0123456789abcdef"


class Rig:
    def __init__(self, token: str | None) -> None:
        self.board = Board(loop_seconds=1.0)
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, "9.9", "local", "n1", "c1")
        self.calls: list[tuple[str, dict[str, Any]]] = []

        def action(name: str) -> Any:
            def run(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                self.calls.append((name, body))
                return 200, {"done": name}

            return run

        actions = {p: action(p) for p in ("/switchover", "/pause", "/resume")}
        self.server = Server("127.0.0.1:0", self.board, self.registry, token, actions)
        self.server.start()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig(TOKEN)
    yield r
    r.server.close()


def leader_status() -> dict[str, Any]:
    return {"node": "n1", "role": "leader", "backend_up": True, "child": {"state": "running"}}


def test_healthz_follows_loop_freshness(rig: Rig) -> None:
    assert rig.request("GET", "/healthz")[0] == 503  # no tick yet
    rig.board.publish(leader_status())
    code, _, body = rig.request("GET", "/healthz")
    assert code == 200 and json.loads(body)["ok"] is True
    rig.board._last_tick -= 10  # the loop stalled for 10 s (> 3 x loop)
    assert rig.request("GET", "/healthz")[0] == 503


def test_readyz_and_leader(rig: Rig) -> None:
    assert rig.request("GET", "/readyz")[0] == 503
    rig.board.publish(leader_status())
    assert rig.request("GET", "/readyz")[0] == 200
    assert rig.request("GET", "/leader")[0] == 200
    assert rig.request("HEAD", "/leader")[0] == 200
    rig.board.publish({**leader_status(), "child": {"state": "starting"}})
    assert rig.request("GET", "/leader")[0] == 503  # leader without a running child
    rig.board.publish({**leader_status(), "role": "standby", "child": {"state": "stopped"}})
    assert rig.request("GET", "/leader")[0] == 503


def test_status_and_metrics(rig: Rig) -> None:
    rig.board.publish(leader_status())
    code, headers, body = rig.request("GET", "/status")
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["role"] == "leader"
    rig.metrics.observe(
        Sample("leader", 4, "elected", True, 2, True, 1700000000.0, 1, False, 0.003)
    )
    code, _, body = rig.request("GET", "/metrics")
    text = body.decode()
    assert code == 200
    for line in (
        "failover_is_leader 1.0",
        'failover_role{failover_role="leader"} 1.0',
        "failover_epoch 4.0",
        'failover_leader_transitions_total{reason="elected"} 1.0',
        "failover_child_restarts_total 2.0",
        "failover_child_up 1.0",
        "failover_backend_up 1.0",
        "failover_last_successful_renew_timestamp 1.7e+09",
        "failover_fenced_sessions_total 1.0",
        "failover_paused 0.0",
        'failover_info{backend="local",cluster="c1",node="n1",version="9.9"} 1.0',
        "failover_tick_duration_seconds_count 1.0",
    ):
        assert line in text, line
    assert "# HELP failover_is_leader" in text
    standby = Sample("standby", 4, None, False, 2, True, None, 1, False, 0.002, True, 2.5, 1, 2**27)
    rig.metrics.observe(standby)
    text = rig.request("GET", "/metrics")[2].decode()
    for line in (
        "failover_standby_warm 1.0",
        "failover_standby_warmup_seconds 2.5",
        "failover_standby_warm_restarts_total 1.0",
        "failover_standby_warm_rss_bytes 1.34217728e+08",
    ):
        assert line in text, line


def test_post_needs_the_bearer_token(rig: Rig) -> None:
    assert rig.request("POST", "/pause")[0] == 401
    code, headers, _ = rig.request("POST", "/pause", headers={"Authorization": "Bearer wrong"})
    assert code == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert rig.request("POST", "/pause", headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
    code, _, body = rig.request("POST", "/pause", headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 200 and rig.calls == [("/pause", {})]
    body_json = json.dumps({"to": "n2"}).encode()
    code, _, _ = rig.request(
        "POST",
        "/switchover",
        body_json,
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert code == 200 and rig.calls[-1] == ("/switchover", {"to": "n2"})


def test_no_token_configured_refuses_posts() -> None:
    r = Rig(None)
    try:
        code, _, body = r.request("POST", "/pause", headers={"Authorization": f"Bearer {TOKEN}"})
        assert code == 403 and b"token_file" in body
        assert r.calls == []
    finally:
        r.server.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("GET", "/pause", None, 405),
        ("POST", "/status", None, 405),
        ("DELETE", "/leader", None, 405),
        ("GET", "/nope", None, 404),
        ("GET", "/../etc/passwd", None, 404),
        ("POST", "/pause", b"x" * 5000, 413),
        ("POST", "/pause", b"{not json", 400),
        ("POST", "/pause", b"[1, 2]", 400),
    ],
)
def test_bad_requests(rig: Rig, method: str, path: str, body: bytes | None, code: int) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    got, hdrs, _ = rig.request(method, path, body, headers)
    assert got == code
    if code == 405:
        assert "Allow" in hdrs
    assert rig.calls == []


def test_listen_and_token_validation(tmp_path: Any) -> None:
    assert parse_listen("127.0.0.1:8787") == ("127.0.0.1", 8787)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("8787", "host:", "h:99999", "h:x"):
        with pytest.raises(ConfigError, match=r"http\.listen"):
            parse_listen(bad)
    short = tmp_path / "t"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="shorter than 16"):
        read_token(str(short))
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(str(tmp_path / "missing"))
    good = tmp_path / "g"
    good.write_text(TOKEN + "\n")
    good.chmod(0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {good}"):
        read_token(str(good))
    assert read_token(str(good), allow_insecure=True) == TOKEN
    good.chmod(0o600)
    assert read_token(str(good)) == TOKEN


def test_https_listener(tmp_path: Any) -> None:
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed for this test")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    board = Board(1.0)
    board.publish({"role": "leader", "backend_up": True, "child": {"state": "running"}})
    server = Server("127.0.0.1:0", board, CollectorRegistry(), None, {}, (str(cert), str(key)))
    server.start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=5)
        conn.request("GET", "/leader")
        assert conn.getresponse().status == 200
        conn.close()
        plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            plain.request("GET", "/leader")
            plain.getresponse()
    finally:
        server.close()
    with pytest.raises(ConfigError, match="cannot load"):
        Server("127.0.0.1:0", board, CollectorRegistry(), None, {}, (str(key), str(key)))
