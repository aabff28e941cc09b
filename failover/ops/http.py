"""The HTTP endpoint: /healthz, /readyz, /leader, /status, /metrics; POST actions with a token.

A threaded server with bounded request size, time and concurrency; it never blocks the loop.
"""

from __future__ import annotations

import hmac
import json
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from failover.errors import ConfigError

MAX_BODY = 4096
MAX_CONCURRENT = 16
REQUEST_TIMEOUT = 5.0
GET_PATHS = ("/healthz", "/readyz", "/leader", "/status", "/metrics")
POST_PATHS = ("/switchover", "/pause", "/resume")

Action = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


class Board:
    """The latest status snapshot, written by the loop and read by request threads."""

    def __init__(self, loop_seconds: float) -> None:
        self.loop_seconds = loop_seconds
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {}
        self._last_tick = 0.0

    def publish(self, status: dict[str, Any]) -> None:
        with self._lock:
            self._status = status
            self._last_tick = time.monotonic()

    def read(self) -> tuple[dict[str, Any], float]:
        with self._lock:
            return dict(
                self._status
            ), time.monotonic() - self._last_tick if self._last_tick else 1e9


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError("http.listen", f"{listen!r} is not host:port", 'e.g. "127.0.0.1:8787"')
    return host.strip("[]") or "0.0.0.0", int(port)


def read_token(path: str | None, allow_insecure: bool = False) -> str | None:
    if not path:
        return None
    from failover.sources import check_private_file

    check_private_file(path, "http.token_file", allow_insecure)
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as err:
        raise ConfigError(
            "http.token_file", f"cannot read {path}: {err.strerror}", "check the path"
        ) from err
    if len(token) < 16:
        raise ConfigError(
            "http.token_file",
            f"{path} holds a token shorter than 16 characters",
            "put a long random token in it, e.g. openssl rand -hex 32",
        )
    return token


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(
            "http.tls_cert_file", f"cannot load {cert} / its key: {err}", "check both PEM files"
        ) from err
    return ctx


class Server:
    """Owns the listening socket and its thread."""

    def __init__(
        self,
        listen: str,
        board: Board,
        registry: CollectorRegistry,
        token: str | None,
        actions: dict[str, Action],
        tls: tuple[str, str] | None = None,
    ) -> None:
        host, port = parse_listen(listen)
        handler = type(
            "Handler",
            (_Handler,),
            {
                "board": board,
                "registry": registry,
                "token": token,
                "actions": actions,
                "slots": threading.BoundedSemaphore(MAX_CONCURRENT),
            },
        )
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as err:
            raise ConfigError(
                "http.listen",
                f"cannot listen on {listen}: {err.strerror}",
                "pick a free port or set it empty to disable",
            ) from err
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls_context(*tls).wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )  # the handshake happens in the request thread: a slow client blocks no one
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    board: Board
    registry: CollectorRegistry
    token: str | None
    actions: dict[str, Action]
    slots: threading.BoundedSemaphore
    timeout = REQUEST_TIMEOUT
    default_request_version = "HTTP/1.0"  # no HTTP/0.9: every answer has a status line
    server_version = "failover"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the daemon's own log is the record; no per-request noise on stderr

    def _send(
        self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(data, default=str) + "\n").encode()
        self._send(code, body, "application/json", headers)

    def _guarded(self, fn: Callable[[], None]) -> None:
        if not self.slots.acquire(blocking=False):
            self._json(503, {"error": "too many concurrent requests"})
            return
        try:
            fn()
        finally:
            self.slots.release()

    def do_GET(self) -> None:
        self._guarded(self._get)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _other(self) -> None:
        self._method_not_allowed()

    do_PUT = do_DELETE = do_PATCH = _other

    def _method_not_allowed(self) -> None:
        path = self.path.split("?", 1)[0]
        allow = "GET, HEAD" if path in GET_PATHS else "POST" if path in POST_PATHS else ""
        if not allow:
            self._json(404, {"error": f"no such endpoint {path[:100]!r}"})
            return
        self._json(405, {"error": f"use {allow}"}, {"Allow": allow})

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in GET_PATHS:
            self._method_not_allowed()
            return
        status, age = self.board.read()
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            fresh = age <= 3 * self.board.loop_seconds
            self._json(200 if fresh else 503, {"loop_age_seconds": round(age, 3), "ok": fresh})
        elif path == "/readyz":
            ready = bool(status) and bool(status.get("backend_up"))
            self._json(200 if ready else 503, {"ready": ready})
        elif path == "/leader":
            leads = (
                status.get("role") == "leader" and status.get("child", {}).get("state") == "running"
            )
            self._json(200 if leads else 503, {"leader": leads, "node": status.get("node")})
        else:
            self._json(200, status)

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in POST_PATHS:
            self._method_not_allowed()
            return
        if self.token is None:
            self._json(403, {"error": "POST endpoints are disabled: set [http] token_file"})
            return
        given = self.headers.get("Authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(
            given[7:].strip().encode(), self.token.encode()
        ):
            self._json(401, {"error": "bearer token required"}, {"WWW-Authenticate": "Bearer"})
            return
        body = self._body()
        if body is None:
            return
        code, data = self.actions[path](body)
        self._json(code, data)

    def _body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._json(400, {"error": "bad Content-Length"})
            return None
        if length > MAX_BODY:
            self._json(413, {"error": f"body larger than {MAX_BODY} bytes"})
            return None
        if length <= 0:
            return {}
        try:
            data = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            self._json(400, {"error": "body is not JSON"})
            return None
        if not isinstance(data, dict):
            self._json(400, {"error": "body must be a JSON object"})
            return None
        return data
