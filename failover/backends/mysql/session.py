"""MySQL / MariaDB sessions for failover: timeouts derived from the lease, a call watchdog.

One `Session` = one direct PyMySQL connection that reconnects with backoff; errors become
`BackendUnavailable` with a one-line reason that never contains the password.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.constants.CLIENT

from failover.backends.mysql.tls import Connection
from failover.dsn import mysql_connect_args, scrub
from failover.errors import BackendUnavailable
from failover.interfaces import RECONNECT_MAX_SECONDS

# Server error codes worth telling apart (both servers use the same numbers).
LOST = {2006, 2013, 2055, 1927, 1053, 4031}  # gone away, lost, killed, shutdown, idle timeout
TIMED_OUT = {1205, 1969, 3024}  # lock wait, MariaDB max_statement_time, MySQL max_execution_time
DENIED = {1044, 1045, 1095, 1142, 1143, 1227, 1370}  # privileges (1095: not owner of thread)


# What a session setting the server ignored costs.
IGNORED = {
    "time_zone": "DB-side ages may be off by the server's UTC offset",
    "innodb_lock_wait_timeout": "a row lock may hold a statement until the call watchdog "
    "(half a lease) cuts its connection",
    "max_statement_time": "a slow statement runs until the call watchdog (half a lease) cuts "
    "its connection",
    "max_execution_time": "a slow SELECT runs until the call watchdog (half a lease) cuts its "
    "connection",
    "wait_timeout": "a vanished leader's lock may linger longer than the lease",
}


@dataclass(frozen=True)
class SessionTimings:
    """Per-session limits; all derived from the lease unless given."""

    lease: float
    statement_timeout: float
    server_limit: float | None = None  # the server-side statement limit, if not the above

    @property
    def server_timeout(self) -> float:
        """What the server ends a statement after (max_statement_time, max_execution_time)."""
        return self.statement_timeout if self.server_limit is None else self.server_limit

    @property
    def call_limit(self) -> float:
        """No call on an open connection waits longer than this (half a lease)."""
        return self.lease / 2

    @property
    def connect_timeout(self) -> float:
        return max(0.5, min(self.statement_timeout, self.call_limit / 2))

    @property
    def wait_timeout(self) -> int:
        """The server drops a lock session idle this long (whole seconds): a frozen or
        vanished holder's lock is freed one lease after its last renew."""
        return max(1, math.ceil(self.lease))


class Watchdog:
    """Shuts down the socket of a call that outlives its limit, which wakes PyMySQL at once
    (its read_timeout bounds each read, not a call of several). One thread for all."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.cuts: dict[int, tuple[int, float]] = {}  # id -> (dup fd, deadline)
        self.fired: set[int] = set()
        self.thread: threading.Thread | None = None
        self.counter = 0

    @contextlib.contextmanager
    def limit(self, fd: int, seconds: float) -> Iterator[Callable[[], bool]]:
        """Run the body under a limit; yields `fired()`, true once the socket was cut."""
        dup = os.dup(fd)  # the driver may close its own fd inside the call
        with self.cond:
            if self.thread is None or not self.thread.is_alive():  # (none after a fork)
                self.thread = threading.Thread(target=self._run, name="mysql-watchdog", daemon=True)
                self.thread.start()
            self.counter += 1
            key = self.counter
            self.cuts[key] = (dup, time.monotonic() + seconds)
            self.cond.notify()
        try:
            yield lambda: key in self.fired
        finally:
            with self.cond:
                self.cuts.pop(key, None)
                self.fired.discard(key)
            os.close(dup)

    def _run(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                for key, (fd, deadline) in list(self.cuts.items()):
                    if deadline > now:
                        continue
                    del self.cuts[key]
                    self.fired.add(key)
                    with contextlib.suppress(OSError):
                        sock = socket.socket(fileno=fd)
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        finally:
                            sock.detach()
                wait = min((d for _, d in self.cuts.values()), default=now + 60.0) - now
                self.cond.wait(max(wait, 0.001))


WATCHDOG = Watchdog()


def error_code(err: BaseException | None) -> int | None:
    """The server's (or client's) error number of a PyMySQL error, if any."""
    args = getattr(err, "args", ())
    return int(args[0]) if args and isinstance(args[0], int) else None


def one_line(err: BaseException, dsn: str = "") -> str:
    """The first line of a driver error, with the DSN's password scrubbed out."""
    code = error_code(err)
    args: tuple[Any, ...] = tuple(getattr(err, "args", ()))
    text = str(args[1]) if len(args) > 1 else str(err)
    lines = text.strip().splitlines()
    line = lines[0] if lines else type(err).__name__
    line = f"({code}) {line}" if code is not None else line
    return scrub(line, dsn) if dsn else line


class Session:
    """A lazily (re)connected autocommit connection; `on_connect` runs on every new one."""

    def __init__(
        self,
        dsn: str,
        timings: SessionTimings,
        lock_session: bool = False,
        on_warning: Callable[[str], None] | None = None,
        password: Callable[[], str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.password = password  # e.g. a fresh RDS IAM token for every new connection
        self.timings = timings
        self.lock_session = lock_session
        self.on_warning = on_warning or (lambda _: None)
        self.conn: Any = None
        self.failures = 0
        self.next_attempt = 0.0
        self.generation = 0  # bumped on every new connection: a new session lost all locks
        self.warned: set[str] = set()
        self.last_error = ""
        self.mariadb = False
        self.server_started: datetime.datetime | None = None  # DB clock, of this connection
        self.on_connect: Callable[[Session], None] | None = None

    @property
    def connected(self) -> bool:
        return self.conn is not None and self.conn.open

    def connection(self) -> Any:
        if self.connected:
            return self.conn
        now = time.monotonic()
        if now < self.next_attempt:
            raise BackendUnavailable(
                f"reconnect to MySQL in {self.next_attempt - now:.1f} s "
                f"(last error: {self.last_error})"
            )
        try:
            self.conn = self._connect()
        except (pymysql.MySQLError, OSError) as err:
            self.conn = None
            self.failures += 1
            self.last_error = one_line(err, self.dsn)
            self.next_attempt = now + min(0.25 * 2 ** min(self.failures, 5), RECONNECT_MAX_SECONDS)
            raise BackendUnavailable(f"cannot connect to MySQL: {self.last_error}") from err
        self.failures = 0
        self.generation += 1
        if self.on_connect is not None:
            try:
                self.on_connect(self)
            except BaseException:
                self.close()  # it runs again on the next connection: none goes without it
                raise
        return self.conn

    def _connect(self) -> Any:
        t = self.timings
        started = time.monotonic()
        args = mysql_connect_args(self.dsn)
        if self.password is not None:
            args["password"] = self.password()
        conn: Any = Connection(  # pymysql.connect, with a TLS context shared by all
            **args,
            connect_timeout=t.connect_timeout,
            read_timeout=t.call_limit,
            write_timeout=t.call_limit,
            autocommit=True,
            client_flag=pymysql.constants.CLIENT.FOUND_ROWS,
        )
        try:
            sock = conn._sock
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                idle = min(max(1, math.floor(t.lease / 3)), 32767)  # the kernel caps it
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(t.call_limit * 1000)
                )
            self.mariadb = "mariadb" in conn.get_server_info().lower()
            left = max(0.1, t.call_limit - (time.monotonic() - started))
            with WATCHDOG.limit(sock.fileno(), left), conn.cursor() as cur:
                self._apply_settings(cur)
        except BaseException:
            conn.close()
            raise
        return conn

    def _apply_settings(self, cur: Any) -> None:
        t = self.timings
        wanted: dict[str, str | int | float] = {
            "time_zone": "+00:00",  # every DB-side time we store or compare is UTC
            "innodb_lock_wait_timeout": max(1, math.ceil(t.statement_timeout)),
        }
        if self.mariadb:  # seconds, every statement
            wanted["max_statement_time"] = round(t.server_timeout, 6)
        else:  # milliseconds, SELECT only (MySQL 5.7.8+)
            wanted["max_execution_time"] = int(t.server_timeout * 1000)
        if self.lock_session:
            wanted["wait_timeout"] = t.wait_timeout
        for name, value in wanted.items():
            cur.execute(f"SET SESSION {name} = %s", (value,))
            cur.execute(f"SELECT @@session.{name}")
            got = str(cur.fetchone()[0])
            if _differs(got, str(value)) and name not in self.warned:
                self.warned.add(name)
                self.on_warning(f"MySQL ignored {name}={value} (is {got}); {IGNORED[name]}")
        cur.execute("SHOW GLOBAL STATUS LIKE 'Uptime'")
        uptime = int(cur.fetchone()[1])
        cur.execute("SELECT NOW(6) - INTERVAL %s SECOND", (uptime,))
        self.server_started = cur.fetchone()[0]

    def query(self, statement: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (for a write: [(rowcount,)]). Connection trouble ->
        BackendUnavailable, its cause the driver's error."""
        conn = self.connection()
        limit = self.timings.call_limit
        try:
            with WATCHDOG.limit(conn._sock.fileno(), limit) as fired, conn.cursor() as cur:
                try:
                    cur.execute(statement, params)
                    rows = list(cur.fetchall()) if cur.description is not None else None
                except (pymysql.MySQLError, OSError) as err:
                    if fired():
                        raise TimeoutError(
                            f"no answer within {limit:g} s (half of lease_seconds)"
                        ) from err
                    raise
                return rows if rows is not None else [(cur.rowcount,)]
        except TimeoutError as err:
            self.close()
            self.last_error = str(err)
            raise BackendUnavailable(f"MySQL gave {err}: connection closed") from err
        except (pymysql.MySQLError, OSError) as err:
            code = error_code(err)
            if code in TIMED_OUT and self.connected:
                raise BackendUnavailable(f"MySQL statement timed out: {one_line(err)}") from err
            lost = isinstance(err, (pymysql.OperationalError, pymysql.InterfaceError, OSError))
            if not lost or (code is not None and code not in LOST and code < 2000):
                raise BackendUnavailable(f"MySQL refused: {one_line(err, self.dsn)}") from err
            self.close()
            self.last_error = one_line(err, self.dsn)
            raise BackendUnavailable(f"MySQL connection lost: {self.last_error}") from err

    def fileno(self) -> int | None:
        return int(self.conn._sock.fileno()) if self.connected else None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def _differs(got: str, wanted: str) -> bool:
    try:
        return abs(float(got) - float(wanted)) > 1e-3
    except ValueError:
        return got != wanted
