"""The local backend's SQLite store: daemons started together do not fail on each other's
schema set-up, and every later call keeps its short timeout."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from failover.backends.local.election import LocalStore
from failover.errors import BackendUnavailable


def hold_lock(path: Path, seconds: float, held: threading.Event) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    held.set()
    time.sleep(seconds)
    db.execute("COMMIT")
    db.close()


def test_setup_waits_for_another_daemons_lock_then_calls_keep_their_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.db"
    sqlite3.connect(path).close()
    held = threading.Event()
    holder = threading.Thread(target=hold_lock, args=(path, 1.5, held))
    holder.start()
    assert held.wait(5)
    started = time.monotonic()
    store = LocalStore(str(tmp_path), "c", 0.3)  # used to fail: "database is locked"
    holder.join()
    assert time.monotonic() - started >= 1.0  # it waited for the holder
    held.clear()
    holder = threading.Thread(target=hold_lock, args=(path, 2.0, held))
    holder.start()
    assert held.wait(5)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="locked"):
        store.run(lambda db: db.execute("DELETE FROM flags WHERE key = 'x'"), write=True)
    assert time.monotonic() - started < 1.5  # a tick's call still gives up after ~0.3 s
    holder.join()
    store.close()
