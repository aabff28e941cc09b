"""PostgreSQL sessions for failover: keepalives and timeouts derived from the lease.

One `Session` = one direct connection that reconnects with backoff; errors become
`BackendUnavailable` with a one-line reason that never contains the password.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from failover.dsn import scrub
from failover.errors import BackendUnavailable
from failover.interfaces import RECONNECT_MAX_SECONDS


@dataclass(frozen=True)
class SessionTimings:
    """Per-session limits; all derived from the lease unless given."""

    lease: float
    statement_timeout: float

    @property
    def call_limit(self) -> float:
        """No call on an open connection waits longer than this (half a lease): the tick
        that made it still renews before the self-fence deadline."""
        return self.lease / 2

    @property
    def connect_timeout(self) -> int:
        """libpq's connect_timeout (whole seconds, per address: `localhost` may have two);
        with the settings that follow, a new connection also stays within `call_limit`.
        Name resolution is not bounded: use an address or a name the resolver answers fast."""
        return max(1, min(math.ceil(self.statement_timeout), math.floor(self.call_limit / 2)))

    @property
    def keepalive_idle(self) -> int:
        return max(1, math.floor(self.lease / 3))

    @property
    def keepalive_interval(self) -> int:
        return max(1, math.floor(self.lease / 9))

    @property
    def keepalive_count(self) -> int:
        return 3

    def server_settings(self, idle_session: bool) -> dict[str, str]:
        """Settings applied with SET on every new session (checked with SHOW after)."""
        settings = {
            "statement_timeout": f"{int(self.statement_timeout * 1000)}",
            "lock_timeout": f"{int(self.statement_timeout * 1000)}",
            "tcp_keepalives_idle": str(self.keepalive_idle),
            "tcp_keepalives_interval": str(self.keepalive_interval),
            "tcp_keepalives_count": str(self.keepalive_count),
        }
        if idle_session:
            # A frozen or vanished holder is cut off by the server after one lease.
            settings["idle_session_timeout"] = f"{int(self.lease * 1000)}"
        return settings


class CallCut(psycopg2.OperationalError):
    """The watchdog cut this call off at its limit: its connection is unusable."""


class Cut:
    """One watched call: `fired` once the watchdog shut its socket down."""

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.deadline = deadline
        self.fired = False


class Watchdog:
    """Shuts down the socket of a call that outlives its limit, which wakes libpq at once.

    tcp_user_timeout alone does not bound a call: Linux counts it from the first
    retransmission, which comes one RTO after the send, and not at all while a sent
    request waits for an answer with nothing unacknowledged (keepalives then decide).
    Measured here: a query cut off by a silent network hung 5.3 s with a 2 s user
    timeout. One thread serves every session; psycopg2 drops the GIL while it waits."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.cuts: set[Cut] = set()
        self.thread: threading.Thread | None = None

    @contextlib.contextmanager
    def limit(self, fd: int, seconds: float, message: str) -> Iterator[None]:
        """Run the body under a limit; raise `CallCut(message)` if it was cut, even when
        the answer came just as it was (what the call did may be lost with the session)."""
        # A duplicate of the socket: libpq may close its own fd inside the call, and that
        # number could then be another thread's socket (HTTP, kazoo) before we are done.
        cut = Cut(os.dup(fd), time.monotonic() + seconds)
        with self.cond:
            if self.thread is None or not self.thread.is_alive():  # (none after a fork)
                self.thread = threading.Thread(target=self._run, name="pg-watchdog", daemon=True)
                self.thread.start()
            self.cuts.add(cut)
            self.cond.notify()
        try:
            yield
        except psycopg2.Error as err:
            if cut.fired:
                raise CallCut(message) from err
            raise
        finally:
            with self.cond:  # after this the watchdog is done with the duplicate
                self.cuts.discard(cut)
            os.close(cut.fd)
        if cut.fired:
            raise CallCut(message)

    def _run(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                for cut in [c for c in self.cuts if c.deadline <= now]:
                    self.cuts.discard(cut)
                    cut.fired = True
                    with contextlib.suppress(OSError):
                        sock = socket.socket(fileno=cut.fd)
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        finally:
                            sock.detach()
                wait = min((c.deadline for c in self.cuts), default=now + 60.0) - now
                self.cond.wait(max(wait, 0.001))


WATCHDOG = Watchdog()


def one_line(err: BaseException, dsn: str = "") -> str:
    """The first line of a driver error, with the DSN's password scrubbed out."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return scrub(line, dsn) if dsn else line


class Session:
    """A lazily (re)connected autocommit connection."""

    def __init__(
        self,
        dsn: str,
        application_name: str,
        timings: SessionTimings,
        idle_session: bool = False,
        on_warning: Callable[[str], None] | None = None,
        password: Callable[[], str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.password = password  # e.g. a fresh RDS IAM token for every new connection
        self.application_name = application_name
        self.timings = timings
        self.idle_session = idle_session
        self.on_warning = on_warning or (lambda _: None)
        self.conn: Any = None
        self.failures = 0
        self.next_attempt = 0.0
        self.generation = 0  # bumped on every new connection: a new session lost all locks
        self.warned: set[str] = set()
        self.no_answer = (
            f"no answer within {timings.call_limit:g} s (half of lease_seconds): connection closed"
        )

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def connection(self) -> Any:
        if self.connected:
            return self.conn
        now = time.monotonic()
        if now < self.next_attempt:
            raise BackendUnavailable(
                f"reconnect to PostgreSQL in {self.next_attempt - now:.1f} s "
                f"(last error: {self.last_error})"
            )
        try:
            self.conn = self._connect()
        except psycopg2.Error as err:
            self.failures += 1
            self.last_error = one_line(err, self.dsn)
            backoff = 0.25 * 2 ** min(self.failures, 5)
            self.next_attempt = now + min(backoff, RECONNECT_MAX_SECONDS)
            raise BackendUnavailable(f"cannot connect to PostgreSQL: {self.last_error}") from err
        self.failures = 0
        self.generation += 1
        return self.conn

    last_error = ""

    def _connect(self) -> Any:
        t = self.timings
        started = time.monotonic()
        conn = psycopg2.connect(
            self.dsn,
            password=self.password() if self.password is not None else None,  # None: the DSN's
            application_name=self.application_name,
            connect_timeout=t.connect_timeout,
            keepalives=1,
            keepalives_idle=t.keepalive_idle,
            keepalives_interval=t.keepalive_interval,
            keepalives_count=t.keepalive_count,
            tcp_user_timeout=int(t.call_limit * 1000),
        )
        conn.autocommit = True
        idle_session = self.idle_session
        if idle_session and conn.server_version < 140000:  # idle_session_timeout came in 14
            idle_session = False
            if "idle_session_timeout" not in self.warned:
                self.warned.add("idle_session_timeout")
                self.on_warning(
                    f"PostgreSQL {conn.server_version // 10000} has no idle_session_timeout: "
                    "a frozen leader's lock is freed by the vanished-holder check (its "
                    "heartbeat older than a lease) instead; PostgreSQL 14+ is recommended"
                )
        try:
            left = max(0.1, t.call_limit - (time.monotonic() - started))  # one limit for all
            with WATCHDOG.limit(conn.fileno(), left, self.no_answer), conn.cursor() as cur:
                for name, value in t.server_settings(idle_session).items():
                    cur.execute(sql.SQL("SET {} = %s").format(sql.Identifier(name)), (value,))
                    self._check_setting(cur, name, value)
        except psycopg2.Error:
            conn.close()
            raise
        return conn

    def _check_setting(self, cur: Any, name: str, wanted: str) -> None:
        cur.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,))
        row = cur.fetchone()
        if (row is None or row[0] != wanted) and name not in self.warned:
            self.warned.add(name)
            got = "not supported" if row is None else row[0]
            self.on_warning(
                f"PostgreSQL ignored {name}={wanted} (is {got}); a vanished leader's "
                "session may linger longer than the lease"
            )

    def query(self, statement: Any, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement; rows if it returns any. Connection trouble -> BackendUnavailable."""
        conn = self.connection()
        try:
            with (
                WATCHDOG.limit(conn.fileno(), self.timings.call_limit, self.no_answer),
                conn.cursor() as cur,
            ):
                cur.execute(statement, params)
                return list(cur.fetchall()) if cur.description is not None else []
        except CallCut as err:
            self.close()
            self.last_error = str(err)
            raise BackendUnavailable(f"PostgreSQL gave {self.last_error}") from err
        except psycopg2.Error as err:
            if isinstance(err, psycopg2.errors.QueryCanceled) and not conn.closed:
                raise BackendUnavailable(
                    f"PostgreSQL statement timed out: {one_line(err, self.dsn)}"
                ) from err
            if not isinstance(err, (psycopg2.OperationalError, psycopg2.InterfaceError)):
                raise BackendUnavailable(f"PostgreSQL refused: {one_line(err, self.dsn)}") from err
            self.close()
            self.last_error = one_line(err, self.dsn)
            raise BackendUnavailable(f"PostgreSQL connection lost: {self.last_error}") from err

    def fileno(self) -> int | None:
        return self.conn.fileno() if self.connected else None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
            self.conn = None


def lock_key(cluster: str) -> int:
    """A signed 64-bit advisory lock key from `failover:<cluster>` (never a small int)."""
    import hashlib

    digest = hashlib.blake2b(f"failover:{cluster}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def split_key(key: int) -> tuple[int, int]:
    """(classid, objid) as pg_locks shows a bigint advisory key."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF
