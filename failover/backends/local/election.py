"""The embedded backend for one host: fcntl lock files + SQLite (lease, epoch, members).

Each daemon holds `<cluster>.<node>.alive` while it lives; the keeper holds
`<cluster>.keeper.lock` while any child tree of the cluster lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from failover.errors import BackendUnavailable, ConfigError, DuplicateNode, StoreError
from failover.interfaces import (
    ClusterFlags,
    ElectionBackend,
    FenceReport,
    LeaderInfo,
    MemberRecord,
    MemberState,
    MemberStore,
)
from failover.keeper import proctree
from failover.keeper.proof import boottime, wake_local, wake_name

SCHEMA = """
CREATE TABLE IF NOT EXISTS leader (
    id INTEGER PRIMARY KEY CHECK (id = 1), node TEXT, token TEXT,
    epoch INTEGER NOT NULL DEFAULT 0, expires_at REAL NOT NULL DEFAULT 0);
INSERT OR IGNORE INTO leader (id) VALUES (1);
CREATE TABLE IF NOT EXISTS member (
    node TEXT PRIMARY KEY, role TEXT, epoch INTEGER, child_state TEXT, child_pid INTEGER,
    version TEXT, sentence TEXT, heartbeat_at REAL);
CREATE TABLE IF NOT EXISTS history (
    epoch INTEGER PRIMARY KEY, node TEXT, reason TEXT, started_at REAL, ended_at REAL,
    end_reason TEXT);
CREATE TABLE IF NOT EXISTS flags (key TEXT PRIMARY KEY, value TEXT, set_at REAL);
"""


def _lock_is_held(path: Path) -> bool:
    """True when another open file description holds an exclusive flock on `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


SETUP_WAIT = 10.0  # seconds a new store waits for another daemon's schema set-up
SETUP_RETRY = 0.05  # seconds between set-up attempts answered "locked" at once


class LocalStore:
    """The SQLite file shared by every daemon of one cluster on this host."""

    def __init__(
        self, directory: str, cluster: str, timeout: float, read_only: bool = False
    ) -> None:
        """`read_only` (status): create nothing; a store no daemon has made is an error."""
        self.dir = Path(directory)
        self.cluster = cluster
        self.db_path = self.dir / f"{cluster}.db"
        if read_only and not self.db_path.is_file():
            raise StoreError(
                f"{self.db_path} does not exist: no daemon of this cluster has run with this "
                "[local] dir (check --cluster and --set local.dir=DIR)"
            )
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise ConfigError(
                "local.dir",
                f"cannot create {self.dir}: {err.strerror}",
                "pick a writable directory",
            ) from err
        # Daemons started together race for the one-time WAL switch and schema: that takes
        # up to SETUP_WAIT (start-up, not a tick), every later call `timeout`. SQLite answers
        # some of those races "locked" at once, not after its busy wait (two connections
        # switching the journal mode of a new file): the whole set-up is tried again.
        deadline = time.monotonic() + (timeout if read_only else max(timeout, SETUP_WAIT))
        for _ in range(int(SETUP_WAIT / SETUP_RETRY) + 2):
            try:
                self.db = self._connect(deadline - time.monotonic(), timeout, read_only)
                return
            except sqlite3.OperationalError as err:
                if time.monotonic() + SETUP_RETRY >= deadline or "locked" not in str(err):
                    raise BackendUnavailable(f"local store {self.db_path}: {err}") from err
            except sqlite3.Error as err:
                raise BackendUnavailable(f"local store {self.db_path}: {err}") from err
            time.sleep(SETUP_RETRY)

    def _connect(self, wait: float, timeout: float, read_only: bool) -> sqlite3.Connection:
        """One attempt at the set-up: waits up to `wait` for locks, then `timeout` a call."""
        db = sqlite3.connect(self.db_path, timeout=max(wait, timeout), isolation_level=None)
        try:
            if not read_only:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        except BaseException:
            db.close()
            raise
        return db

    def alive_path(self, node: str) -> Path:
        return self.dir / f"{self.cluster}.{node}.alive"

    @property
    def keeper_lock(self) -> Path:
        return self.dir / f"{self.cluster}.keeper.lock"

    def run(self, fn: Callable[[sqlite3.Connection], object], write: bool = False) -> object:
        try:
            if write:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self.db)
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
                return result
            return fn(self.db)
        except sqlite3.Error as err:
            raise BackendUnavailable(f"local store {self.db_path}: {err}") from err

    def close(self) -> None:
        self.db.close()


class LocalElection(ElectionBackend):
    """Lease in SQLite on CLOCK_BOOTTIME; a dead daemon's alive lock frees its lease at once."""

    name = "local"

    def __init__(self, store: LocalStore, node: str, lease_seconds: float) -> None:
        self.store = store
        self.node = node
        self.lease = lease_seconds
        self.token = secrets.token_hex(8)
        self._alive_fd = self._claim_node()
        self._wake = self._bind_wake()
        self._last_poll = 0.0
        self._seen: tuple[object, ...] | None = None

    def _claim_node(self) -> int:
        path = self.store.alive_path(self.node)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = Path(path).read_text().strip() or "?"
            os.close(fd)
            raise DuplicateNode(
                f"node {self.node!r} already runs in cluster {self.store.cluster!r} "
                f"(pid {other}); give this daemon another node name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _bind_wake(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind(wake_name(str(self.store.dir), self.store.cluster, self.node))
        sock.setblocking(False)
        return sock

    def _row(self, db: sqlite3.Connection) -> tuple[str | None, str | None, int, float]:
        row = db.execute(
            "SELECT node, token, epoch, expires_at FROM leader WHERE id = 1"
        ).fetchone()
        return row[0], row[1], int(row[2]), float(row[3])

    def _vacant(self, node: str | None, token: str | None, expires_at: float) -> bool:
        if node is None or expires_at <= boottime():
            return True
        if token == self.token:
            return False
        # Another incarnation (or another node) whose daemon is dead: its lease is void.
        return node == self.node or not _lock_is_held(self.store.alive_path(node))

    def member_present(self, node: str) -> bool:
        """Its daemon holds its alive lock (gone the moment that daemon dies)."""
        return node == self.node or _lock_is_held(self.store.alive_path(node))

    def try_acquire(self) -> bool:
        def txn(db: sqlite3.Connection) -> bool:
            node, token, _, expires_at = self._row(db)
            if token == self.token and node == self.node and expires_at > boottime():
                return True
            if not self._vacant(node, token, expires_at):
                return False
            db.execute(
                "UPDATE leader SET node = ?, token = ?, expires_at = ? WHERE id = 1",
                (self.node, self.token, boottime() + self.lease),
            )
            return True

        return bool(self.store.run(txn, write=True))

    def renew(self) -> bool:
        def txn(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE leader SET expires_at = ? WHERE id = 1 AND token = ? AND expires_at > ?",
                (boottime() + self.lease, self.token, boottime()),
            )
            return cur.rowcount == 1

        return bool(self.store.run(txn, write=True))

    def bump_epoch(self) -> int:
        def txn(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "UPDATE leader SET epoch = epoch + 1 WHERE id = 1 AND token = ?", (self.token,)
            )
            if cur.rowcount != 1:
                raise BackendUnavailable("leadership changed while taking the epoch")
            return self._row(db)[2]

        epoch = self.store.run(txn, write=True)
        assert isinstance(epoch, int)
        return epoch

    def fence(self, epoch: int, force: bool, sweep: bool = True) -> FenceReport:
        lock = self.store.keeper_lock
        if not _lock_is_held(lock):
            return FenceReport(pending=0, detail="no older keeper holds the cluster lock")
        if not force:
            return FenceReport(
                pending=1, wait_seconds=self.lease, detail="an older keeper still holds the lock"
            )
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return FenceReport(pending=1, detail=f"cannot read the keeper pid from {lock}")
        left = proctree.kill_tree(pid, [pid], reap_children=False)
        proctree.signal_all([pid], 9)
        for _ in range(200):
            if not _lock_is_held(lock):
                break
            time.sleep(0.01)
        pending = 1 if _lock_is_held(lock) else 0
        return FenceReport(
            pending=pending, terminated=1, detail=f"killed keeper {pid} ({left or 'tree empty'})"
        )

    def release(self) -> None:
        def txn(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE leader SET node = NULL, token = NULL, expires_at = 0 "
                "WHERE id = 1 AND token = ?",
                (self.token,),
            )

        self.store.run(txn, write=True)
        wake_local(str(self.store.dir), self.store.cluster, self.node)

    def leader(self) -> LeaderInfo:
        def read(db: sqlite3.Connection) -> LeaderInfo:
            node, token, epoch, expires_at = self._row(db)
            return LeaderInfo(None if self._vacant(node, token, expires_at) else node, epoch)

        info = self.store.run(read)
        assert isinstance(info, LeaderInfo)
        return info

    def keeper_args(self) -> list[str]:
        return ["--lock-file", str(self.store.keeper_lock), "--lock-wait", "2"]

    def watch_fd(self) -> int | None:
        return self._wake.fileno()

    def poll_interval(self) -> float:
        # Releases and keepers wake us by datagram; polling only catches a frozen leader's
        # lease running out and a daemon that died with its keeper.
        return 0.25

    def changed(self) -> bool:
        woken = False
        with contextlib.suppress(BlockingIOError):
            while self._wake.recv(64):
                woken = True
        if woken:
            return True
        now = boottime()
        if now - self._last_poll < self.poll_interval():
            return False
        self._last_poll = now

        def read(db: sqlite3.Connection) -> tuple[object, ...]:
            node, token, epoch, expires_at = self._row(db)
            flags = db.execute("SELECT key, value FROM flags ORDER BY key").fetchall()
            return (self._vacant(node, token, expires_at), node, epoch, tuple(flags))

        try:
            seen = self.store.run(read)
        except BackendUnavailable:
            return True
        assert isinstance(seen, tuple)
        changed = self._seen is not None and seen != self._seen
        self._seen = seen
        return changed

    def close(self) -> None:
        self.store.close()
        self._wake.close()
        os.close(self._alive_fd)


def _member(row: tuple[object, ...], now: float) -> MemberRecord | None:
    """A member row, or None when another (older, newer, hostile) writer left it unreadable."""
    node, role, epoch, child_state, child_pid, version, sentence, heartbeat_at = row
    try:
        return MemberRecord(
            node=str(node),
            role=str(role) if role is not None else "unknown",
            epoch=int(epoch),  # type: ignore[call-overload]
            child_state=str(child_state) if child_state is not None else "unknown",
            child_pid=int(child_pid) if child_pid is not None else None,  # type: ignore[call-overload]
            version=str(version),
            heartbeat_age=now - float(heartbeat_at),  # type: ignore[arg-type]
            sentence=str(sentence or ""),
        )
    except (TypeError, ValueError):
        return None


class LocalMembers(MemberStore):
    """Member heartbeats, history and flags in the local SQLite file."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def heartbeat(self, state: MemberState) -> None:
        self.store.run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO member VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    state.node,
                    state.role,
                    state.epoch,
                    state.child_state,
                    state.child_pid,
                    state.version,
                    state.sentence,
                    boottime(),
                ),
            ),
            write=True,
        )

    def members(self) -> list[MemberRecord]:
        rows = self.store.run(
            lambda db: db.execute(
                "SELECT node, role, epoch, child_state, child_pid, version, sentence, heartbeat_at "
                "FROM member ORDER BY node"
            ).fetchall()
        )
        assert isinstance(rows, list)
        now = boottime()
        return [m for m in (_member(r, now) for r in rows) if m is not None]

    def begin_term(self, epoch: int, node: str, reason: str) -> None:
        self.store.run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO history (epoch, node, reason, started_at) VALUES (?,?,?,?)",
                (epoch, node, reason, time.time()),
            ),
            write=True,
        )

    def end_term(self, epoch: int, reason: str) -> None:
        self.store.run(
            lambda db: db.execute(
                "UPDATE history SET ended_at = ?, end_reason = ? "
                "WHERE epoch = ? AND ended_at IS NULL",
                (time.time(), reason, epoch),
            ),
            write=True,
        )

    def history(self, limit: int = 20) -> list[tuple[object, ...]]:
        rows = self.store.run(
            lambda db: db.execute(
                "SELECT epoch, node, reason, started_at, ended_at, end_reason FROM history "
                "ORDER BY epoch DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )
        assert isinstance(rows, list)
        return rows

    def flags(self) -> ClusterFlags:
        rows = self.store.run(
            lambda db: db.execute("SELECT key, value, set_at FROM flags").fetchall()
        )
        assert isinstance(rows, list)
        values = {str(r[0]): (str(r[1]), r[2]) for r in rows}
        paused = values.get("paused", ("0", 0.0))[0] == "1"
        target = values.get("switchover_to")
        source = values.get("switchover_from")
        result = values.get("switchover_result")
        age = None
        if target is not None or result is not None:
            try:
                age = boottime() - float((target or result or ("", 0.0))[1])
            except (TypeError, ValueError):
                age = 0.0  # written by something else: treat the request as new
        return ClusterFlags(
            paused=paused,
            switchover_to=target[0] if target else None,
            switchover_from=(source[0] or None) if source else None,
            switchover_age=age,
            switchover_result=result[0] if result else None,
        )

    def _set(self, items: dict[str, str | None]) -> None:
        def txn(db: sqlite3.Connection) -> None:
            for key, value in items.items():
                if value is None:
                    db.execute("DELETE FROM flags WHERE key = ?", (key,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO flags VALUES (?, ?, ?)", (key, value, boottime())
                    )

        self.store.run(txn, write=True)
        wake_local(str(self.store.dir), self.store.cluster)

    def set_paused(self, paused: bool) -> None:
        self._set({"paused": "1" if paused else None})

    def request_switchover(self, from_node: str | None, to_node: str | None) -> None:
        self._set(
            {
                "switchover_to": to_node or "",
                "switchover_from": from_node or "",
                "switchover_result": None,
            }
        )

    def clear_switchover(self, result: str = "") -> None:
        self._set(
            {"switchover_to": None, "switchover_from": None, "switchover_result": result or None}
        )
