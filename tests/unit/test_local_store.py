"""The local backend's SQLite store: daemons started together do not fail on each other's
schema set-up, and every later call keeps its short timeout."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

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


def open_store(directory: str, barrier: Any, answers: Any) -> None:
    barrier.wait(10)
    try:
        LocalStore(directory, "c", 0.3).close()
        answers.put("ok")
    except BackendUnavailable as err:
        answers.put(str(err))


def test_daemons_creating_a_new_store_together_all_get_it(tmp_path: Path) -> None:
    """Six processes open one new store at the same instant, 20 times over: SQLite answers
    some of them "database is locked" at once (no busy wait) while another switches the new
    file to WAL; before the set-up was retried, about 3 % of them failed (a daemon that
    exited at start, seen in CI)."""
    ctx = multiprocessing.get_context("fork")
    failed = []
    for round_ in range(20):
        barrier, answers = ctx.Barrier(6), ctx.Queue()
        procs = [
            ctx.Process(target=open_store, args=(str(tmp_path / str(round_)), barrier, answers))
            for _ in range(6)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        failed += [a for a in (answers.get(timeout=5) for _ in procs) if a != "ok"]
    assert not failed, failed
