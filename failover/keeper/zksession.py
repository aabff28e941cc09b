"""The keeper's end of a dead daemon's ZooKeeper session: re-attach with its id and password,
mark the breadcrumb released (only while its contender node exists), close. Standard library.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from failover.keeper import proctree

# Why this is safe, and why the successor may then start at once:
# * The keeper comes here only after it saw its daemon die (end of stream, and the daemon's
#   process exited: `after_daemon_died`) and proved its whole tree gone (keeper/core.py). A
#   daemon runs at most one child keeper at a time, so no process of that epoch runs any
#   more, and none will start.
# * The breadcrumb is written in one multi with `check(contender)`: while our contender node
#   exists it is the lowest (new contenders sort after it; a sequence name never comes back),
#   so no other daemon has led since our epoch began, and none can write the breadcrumb. A
#   successor reads "released", exactly what a graceful release writes after the child
#   exited, and so starts without waiting for the old keeper's deadline.
# * Anything else (expired, unreachable, refused, contender gone) changes nothing: the
#   session expires as before and the successor waits for the old keeper's deadline.
# Jute records (zookeeper.jute): ConnectRequest {int protocolVersion, long lastZxidSeen, int
# timeOut, long sessionId, buffer passwd, bool readOnly}; ConnectResponse {int, int timeOut,
# long sessionId, buffer passwd, bool}; RequestHeader {int xid, int type}; ReplyHeader {int
# xid, long zxid, int err}; multi ops are framed by MultiHeader {int type, bool done, int err}.

WORD = "ZK-SESSION"  # the daemon -> keeper line: `ZK-SESSION <json>` (holds secrets: never echo)
CLOSE_SESSION, CHECK, SET_DATA, MULTI, AUTH = -11, 13, 5, 14, 100
AUTH_XID, WATCH_XID, PING_XID = -4, -1, -2
MULTI_XID, CLOSE_XID = 1, 2
# Stat: czxid mzxid ctime mtime (long) version cversion aversion (int) ephemeralOwner (long)
# dataLength numChildren (int) pzxid (long)
STAT_BYTES = 68
MAX_REPLY = 1 << 20
# The server raises this to its minSessionTimeout: if we are cut off half-way, the session we
# touched ends as soon as the server allows.
REATTACH_TIMEOUT_MS = 1
DAEMON_EXIT_WAIT = 1.0  # after end of stream, how long the daemon's process may take to go
ERRORS = {-101: "no node", -102: "not authorised", -112: "session expired", -115: "auth failed"}


class ProtocolError(Exception):
    """The server said something we did not expect."""


@dataclass(frozen=True)
class Ticket:
    """What the keeper needs to end its daemon's session; secrets never show in a repr."""

    hosts: tuple[tuple[str, int], ...]
    session_id: int = field(repr=False)
    password: bytes = field(repr=False)
    timeout_ms: int  # the session's negotiated timeout: it expires by itself within that
    contender: str  # absolute paths (chroot included)
    breadcrumb: str
    released: bytes  # the breadcrumb saying "released" (by the keeper)
    auth: tuple[str, str] | None = field(default=None, repr=False)  # digest user, password
    use_ssl: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def line(self) -> str:
        info = {
            "hosts": [list(h) for h in self.hosts],
            "session_id": self.session_id,
            "password": self.password.hex(),
            "timeout_ms": self.timeout_ms,
            "contender": self.contender,
            "breadcrumb": self.breadcrumb,
            "released": self.released.decode(),
            "auth": list(self.auth) if self.auth else None,
            "tls": [self.ca_file, self.cert_file, self.key_file] if self.use_ssl else None,
        }
        return f"{WORD} {json.dumps(info, separators=(',', ':'))}"

    @classmethod
    def parse(cls, payload: str) -> Ticket:
        """The ticket of a line's argument; ValueError (naming no value) if malformed."""
        try:
            info: dict[str, Any] = json.loads(payload)
            auth, tls = info.get("auth"), info.get("tls")
            return cls(
                hosts=tuple((str(h), int(p)) for h, p in info["hosts"]),
                session_id=int(info["session_id"]),
                password=bytes.fromhex(info["password"]),
                timeout_ms=int(info["timeout_ms"]),
                contender=str(info["contender"]),
                breadcrumb=str(info["breadcrumb"]),
                released=str(info["released"]).encode(),
                auth=(str(auth[0]), str(auth[1])) if auth else None,
                use_ssl=tls is not None,
                ca_file=tls[0] if tls else None,
                cert_file=tls[1] if tls else None,
                key_file=tls[2] if tls else None,
            )
        except (ValueError, KeyError, TypeError, IndexError):
            raise ValueError("malformed session ticket") from None


def _buffer(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data


def _string(text: str) -> bytes:
    return _buffer(text.encode())


def connect_request(ticket: Ticket) -> bytes:
    head = struct.pack("!iqiq", 0, 0, REATTACH_TIMEOUT_MS, ticket.session_id)
    return head + _buffer(ticket.password) + b"\x00"


def multi_request(ticket: Ticket) -> bytes:
    """check(contender, any version) + setData(breadcrumb, released, any version): atomic."""
    check = struct.pack("!iBi", CHECK, 0, -1) + _string(ticket.contender) + struct.pack("!i", -1)
    set_data = struct.pack("!iBi", SET_DATA, 0, -1) + _string(ticket.breadcrumb)
    set_data += _buffer(ticket.released) + struct.pack("!i", -1)
    return check + set_data + struct.pack("!iBi", -1, 1, -1)


def multi_errors(reply: bytes, offset: int) -> list[int]:
    """The error code of each op of a multi reply (0: done)."""
    errors: list[int] = []
    for _ in range(16):
        op, done, _err = struct.unpack_from("!iBi", reply, offset)
        offset += 9
        if done:
            return errors
        if op == -1:
            errors.append(struct.unpack_from("!i", reply, offset)[0])
            offset += 4
        elif op in (CHECK, SET_DATA):
            errors.append(0)
            offset += STAT_BYTES if op == SET_DATA else 0
        else:
            raise ProtocolError(f"unexpected op {op} in a multi reply")
    raise ProtocolError("unterminated multi reply")


class Wire:
    """Length-prefixed packets on one socket, every wait bounded by `end` (monotonic)."""

    def __init__(self, sock: socket.socket, end: float) -> None:
        self.sock = sock
        self.end = end

    def _arm(self) -> None:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("out of time")
        self.sock.settimeout(left)

    def send(self, payload: bytes) -> None:
        self._arm()
        self.sock.sendall(struct.pack("!i", len(payload)) + payload)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            self._arm()
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data

    def recv(self) -> bytes:
        (length,) = struct.unpack("!i", self._exact(4))
        if not 0 <= length <= MAX_REPLY:
            raise ProtocolError(f"bad packet length {length}")
        return self._exact(length)

    def call(self, xid: int, op: int, body: bytes) -> tuple[int, bytes]:
        """Send one request; (err, reply) of its ReplyHeader, the body at offset 16."""
        self.send(struct.pack("!ii", xid, op) + body)
        for _ in range(64):
            reply = self.recv()
            got, _zxid, err = struct.unpack_from("!iqi", reply, 0)
            if got in (WATCH_XID, PING_XID):
                continue
            if got != xid:
                raise ProtocolError(f"reply xid {got}, expected {xid}")
            return err, reply
        raise ProtocolError("no reply among 64 packets")


def _open(host: str, port: int, ticket: Ticket, end: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=max(0.01, end - time.monotonic()))
    if not ticket.use_ssl:
        return sock
    # As kazoo does for the daemon (zkconn.client_kwargs): verify against the CA, no host name.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    try:
        if ticket.ca_file:
            context.load_verify_locations(ticket.ca_file)
        if ticket.cert_file:
            context.load_cert_chain(ticket.cert_file, ticket.key_file)
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def _end_on(wire: Wire, ticket: Ticket) -> str:
    wire.send(connect_request(ticket))
    _proto, timeout, session_id = struct.unpack_from("!iiq", wire.recv(), 0)
    if timeout <= 0 or session_id != ticket.session_id:
        return "the session had expired already"
    if ticket.auth:
        user, password = ticket.auth
        body = struct.pack("!i", 0) + _string("digest") + _string(f"{user}:{password}")
        err, _ = wire.call(AUTH_XID, AUTH, body)
        if err:
            return f"ZooKeeper refused the digest credentials ({ERRORS.get(err, err)})"
    err, reply = wire.call(MULTI_XID, MULTI, multi_request(ticket))
    errors = multi_errors(reply, 16) if not err else [err]
    failed = next((e for e in errors if e), 0)
    err, _ = wire.call(CLOSE_XID, CLOSE_SESSION, b"")
    closed = "closed the session" if not err else f"close failed ({ERRORS.get(err, err)})"
    if not failed:
        return f"marked the breadcrumb released and {closed}"
    return f"breadcrumb not marked ({ERRORS.get(failed, failed)}); {closed}"


def end_session(ticket: Ticket, budget: float) -> str:
    """Try each server in turn for at most `budget` seconds; what happened, in one line
    without secrets. On any failure the session is left to expire by itself."""
    end = time.monotonic() + budget
    last = "no server tried"
    for _ in range(1000):
        for host, port in ticket.hosts:
            if time.monotonic() >= end:
                return f"ZooKeeper not reached within {budget:g} s ({last})"
            try:
                with _open(host, port, ticket, end) as sock:
                    return _end_on(Wire(sock, end), ticket)
            except (OSError, ProtocolError, struct.error, ssl.SSLError, TimeoutError) as err:
                last = f"{host}:{port}: {type(err).__name__}"
        time.sleep(max(0.0, min(0.1, end - time.monotonic())))
    return f"ZooKeeper not reached ({last})"


def after_daemon_died(ticket: Ticket, daemon_pid: int) -> str:
    """The keeper saw end of stream and its tree gone: once the daemon's process has exited,
    end its session within the session timeout (it expires by itself after that)."""
    # pid 0 (a sidecar in another PID namespace): end of stream is the proof, as a daemon
    # never closes the link of a keeper that runs its child while it lives on (it sends KILL
    # and waits for GONE); a daemon that still runs keeps its session, whatever closed the link.
    if daemon_pid and not proctree.exited(daemon_pid, DAEMON_EXIT_WAIT):
        return "the daemon's process still runs: its ZooKeeper session is left alone"
    return end_session(ticket, min(max(ticket.timeout_ms / 1000, 1.0), 30.0))
