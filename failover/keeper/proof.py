"""Proof of life held by the keeper while its tree may live: a lock file or a DB session.

Standard library only; psycopg2 / pymysql are imported only in postgres / mysql mode.
"""

from __future__ import annotations

import fcntl
import os
import select
import time
from typing import Any


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME: monotonic, and counts time spent suspended."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def wake_name(directory: str, cluster: str, node: str) -> str:
    """The abstract Unix socket a local-backend daemon listens on for wake-ups."""
    import hashlib

    key = f"{os.path.realpath(directory)}|{cluster}|{node}".encode()
    return "\0failover-wake-" + hashlib.sha256(key).hexdigest()[:32]


def wake_local(directory: str, cluster: str, skip: str = "") -> None:
    """Local backend: a datagram to every daemon of the cluster (found by their alive files),
    so they act at once: a release, a keeper whose tree is gone, an operator's request."""
    import glob
    import socket

    prefix = f"{cluster}."
    pattern = os.path.join(glob.escape(directory), f"{glob.escape(cluster)}.*.alive")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in glob.glob(pattern):
            node = os.path.basename(path)[len(prefix) : -len(".alive")]
            if node == skip:
                continue
            try:
                sock.sendto(b"wake", wake_name(directory, cluster, node))
            except OSError:
                pass  # nobody listening (a daemon that is gone): nothing to wake


class LockFileProof:
    """One host: an exclusive flock, taken at "go" and held for as long as the keeper lives."""

    def __init__(self, path: str, wait: float) -> None:
        self.path = path
        self.wait = wait
        self.fd: int | None = None
        self.error = ""

    def prepare(self) -> bool:
        return True

    def activate(self, epoch: int) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        end = boottime() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if boottime() >= end:
                    os.close(fd)
                    self.error = f"proof-of-life lock {self.path} is held by an older keeper"
                    return False
                time.sleep(0.01)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def fileno(self) -> int | None:
        return None

    def broken(self) -> bool:
        return False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            directory, name = os.path.split(self.path)
            wake_local(directory, name.removesuffix(".keeper.lock"))


class PgSessionProof:
    """Postgres mode: our own DB session, named `<name>:<epoch>:keeper` from "go" on.

    A new leader waits for it to close; if it breaks, we can no longer vouch: kill the tree.
    Opened while warm (named `<name>:standby`) so "go" costs one round trip.
    """

    def __init__(
        self, dsn: str, name: str, channel: str | None, epoch_table: str | None = None
    ) -> None:
        self.dsn = dsn
        self.name = name
        self.channel = channel
        self.epoch_table = epoch_table  # "<table>:<cluster>": refuse GO for a superseded epoch
        self.conn: Any = None
        self.error = ""

    def prepare(self) -> bool:
        import psycopg2

        try:
            self.conn = psycopg2.connect(
                self.dsn,
                application_name=f"{self.name}:standby",
                connect_timeout=2,
                keepalives=1,
                keepalives_idle=2,
                keepalives_interval=1,
                keepalives_count=3,
            )
        except psycopg2.Error as err:
            from failover.dsn import scrub

            text = str(err).strip()
            first = text.splitlines()[0] if text else type(err).__name__
            self.error = f"cannot open the proof-of-life session: {scrub(first, self.dsn)}"
            return False
        self.conn.autocommit = True
        return True

    def activate(self, epoch: int) -> bool:
        """Rename the session to this epoch's keeper, then make sure no newer epoch exists.

        A new leader bumps the epoch before it looks for older keepers, and we rename before
        we look at the epoch: so either it sees us and waits, or we see it and refuse.
        """
        try:
            with self.conn.cursor() as cur:
                cur.execute("SET application_name = %s", (f"{self.name}:{epoch}:keeper",))
                if self.epoch_table:
                    table, _, cluster = self.epoch_table.partition(":")
                    cur.execute(
                        f'SELECT epoch FROM "{table}" WHERE cluster = %s',
                        (cluster,),
                    )
                    row = cur.fetchone()
                    if row is not None and int(row[0]) > epoch:
                        self.error = f"epoch {row[0]} superseded ours ({epoch}): not starting"
                        return False
        except Exception as err:
            text = str(err).strip().splitlines()
            self.error = f"proof-of-life session failed: {text[0] if text else type(err).__name__}"
            return False
        return True

    def fileno(self) -> int | None:
        return int(self.conn.fileno()) if self.conn is not None and not self.conn.closed else None

    def broken(self) -> bool:
        if self.conn is None or self.conn.closed:
            return True
        readable, _, _ = select.select([self.conn.fileno()], [], [], 0)
        if not readable:
            return False
        try:
            self.conn.poll()
            self.conn.notifies.clear()
        except Exception:
            return True
        return bool(self.conn.closed)

    def release(self) -> None:
        if self.conn is None:
            return
        try:
            if self.channel and not self.conn.closed:
                with self.conn.cursor() as cur:
                    cur.execute("SELECT pg_notify(%s, %s)", (self.channel, f"gone {self.name}"))
        except Exception:  # noqa: S110 - closing anyway
            pass
        self.conn.close()
        self.conn = None


KEEPER_WAIT_TIMEOUT = 28800  # the servers' default: the keeper's session is idle for hours
MYSQL_LOCK_NAME_MAX = 64  # GET_LOCK names longer than this are refused (MySQL 5.7+)


def mysql_lock_name(text: str) -> str:
    """A GET_LOCK name for `text`: itself when it fits in 64 characters, else `failover:` and
    a SHA-1 of it (49 characters), so long cluster or node names still get a lock of their own."""
    if len(text) <= MYSQL_LOCK_NAME_MAX:
        return text
    import hashlib

    return "failover:" + hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - a name, no secret


def keeper_lock_name(cluster: str, epoch: int) -> str:
    """The named lock an epoch's keeper holds while its tree may live (MySQL mode)."""
    return mysql_lock_name(f"failover:{cluster}:{epoch}:keeper")


class MySQLLockProof:
    """MySQL mode: our own session holds the named lock of our epoch from "go" on.

    A new leader asks `IS_USED_LOCK` for older epochs' names: free means that keeper's tree is
    gone (the lock dies with its session). If the session breaks, we can no longer vouch: kill
    the tree. Connected while warm, so "go" costs two round trips.
    """

    def __init__(self, dsn: str, name: str, epoch_table: str | None = None) -> None:
        self.dsn = dsn
        self.name = name  # failover:<cluster>:<node>
        self.epoch_table = epoch_table  # "<table>:<cluster>": refuse GO for a superseded epoch
        self.conn: Any = None
        self.error = ""

    def prepare(self) -> bool:
        import socket

        import pymysql

        from failover.dsn import mysql_connect_args, scrub

        try:
            self.conn = pymysql.connect(
                **mysql_connect_args(self.dsn), connect_timeout=2, autocommit=True
            )
            with self.conn.cursor() as cur:  # a short global wait_timeout must not end it
                cur.execute("SET SESSION wait_timeout = %s", (KEEPER_WAIT_TIMEOUT,))
            sock = self.conn._sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for opt, value in (("TCP_KEEPIDLE", 2), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, opt) and sock.family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        except (pymysql.MySQLError, OSError) as err:
            text = str(err).strip()
            first = text.splitlines()[0] if text else type(err).__name__
            self.error = f"cannot open the proof-of-life session: {scrub(first, self.dsn)}"
            return False
        return True

    def activate(self, epoch: int) -> bool:
        """Take our epoch's lock, then make sure no newer epoch exists (same order argument
        as the PostgreSQL session: either the new leader sees our lock, or we see its epoch)."""
        cluster = self.name.split(":")[1] if self.name.count(":") >= 2 else self.name
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT GET_LOCK(%s, 0)", (keeper_lock_name(cluster, epoch),))
                row = cur.fetchone()
                if row is None or row[0] != 1:
                    self.error = f"the keeper lock of epoch {epoch} is held elsewhere"
                    return False
                if self.epoch_table:
                    table, _, name = self.epoch_table.partition(":")
                    cur.execute(f"SELECT epoch FROM `{table}` WHERE cluster = %s", (name,))
                    row = cur.fetchone()
                    if row is not None and int(row[0]) > epoch:
                        self.error = f"epoch {row[0]} superseded ours ({epoch}): not starting"
                        return False
        except Exception as err:
            text = str(err).strip().splitlines()
            self.error = f"proof-of-life session failed: {text[0] if text else type(err).__name__}"
            return False
        return True

    def fileno(self) -> int | None:
        sock = getattr(self.conn, "_sock", None) if self.conn is not None else None
        return int(sock.fileno()) if sock is not None else None

    def broken(self) -> bool:
        """The server never speaks unasked: anything readable is its goodbye (KILL, restart,
        wait_timeout) or EOF."""
        fd = self.fileno()
        if fd is None:
            return True
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable)

    def release(self) -> None:
        if self.conn is None:
            return
        try:
            self.conn.close()  # the lock ends with the session
        except Exception:  # noqa: S110 - closing anyway
            pass
        self.conn = None


Proof = LockFileProof | PgSessionProof | MySQLLockProof
