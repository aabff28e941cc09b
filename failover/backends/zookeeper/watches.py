"""One-shot ZooKeeper watches we hold, so a steady tick asks for none again, and the node
reads they keep fresh (the epoch, the flags): re-read only when their watch fired.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import NoNodeError, RolledBackError
from kazoo.protocol.states import ZnodeStat

from failover.backends.zookeeper.conn import ZkConnection

Read = tuple[bytes, ZnodeStat]


class Watches:
    """Paths with a watch pending in a session. kazoo calls `fired` when one fires, and for
    every watch (path None) when the connection drops: it does not keep them across a
    reconnect. Either way the mark goes and the daemon's loop wakes."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.lock = threading.Lock()
        self.pending: dict[str, int] = {}  # path -> session id the watch was set in
        self.cache: dict[str, tuple[Read, float]] = {}  # path -> (read, monotonic) of a watch

    def needed(self, path: str, sid: int | None) -> bool:
        with self.lock:
            return sid is None or self.pending.get(path) != sid

    def arming(self, path: str, sid: int | None) -> None:
        """Called before the request that sets the watch: a firing may beat its reply."""
        with self.lock:
            if sid is not None:
                self.pending[path] = sid

    def forget(self, path: str) -> None:
        """No watch to rely on there (its request failed, the node is missing, we wrote it)."""
        with self.lock:
            self.pending.pop(path, None)
            self.cache.pop(path, None)

    def fired(self, event: Any = None) -> None:
        """kazoo's watch callback (its thread, must not block)."""
        self.dropped(event)
        self.wake()

    def dropped(self, event: Any = None) -> None:
        """`fired` without waking the loop: for a read nothing waits on (the epoch shown)."""
        path = getattr(event, "path", None)
        with self.lock:
            if path is None:
                self.pending.clear()
                self.cache.clear()
            else:
                self.pending.pop(path, None)
                self.cache.pop(path, None)

    def fresh(self, path: str, sid: int | None, max_age: float) -> Read | None:
        """The cached read of `path` while its watch is pending in session `sid` and it is
        younger than `max_age` s (a safety re-read), else None: read it again."""
        with self.lock:
            got = self.cache.get(path)
            if sid is None or self.pending.get(path) != sid or got is None:
                return None
            return got[0] if time.monotonic() - got[1] < max_age else None

    def keep(self, path: str, sid: int | None, read: Read) -> None:
        """Cache a read made with a watch, unless that watch fired meanwhile."""
        with self.lock:
            if sid is not None and self.pending.get(path) == sid:
                self.cache[path] = (read, time.monotonic())

    def exists(self, conn: ZkConnection, path: str, sid: int) -> bool:
        """Set an existence watch on `path` unless one is pending in session `sid`; whether
        the node exists (as the caller's read of the queue just said, if no request was needed)."""
        if not self.needed(path, sid):
            return True
        self.arming(path, sid)
        try:
            there = conn.call("watch", lambda: conn.client.exists_async(path, watch=self.fired))
        except BaseException:
            self.forget(path)
            raise
        if there is None:
            self.forget(path)
        return there is not None

    def versions(self, sid: int | None) -> list[tuple[str, int]]:
        """(path, version) of every read kept while its watch is pending in session `sid`."""
        with self.lock:
            return [
                (path, got[0][1].version)
                for path, got in self.cache.items()
                if sid is not None and self.pending.get(path) == sid
            ]

    def verified(self, paths: list[str]) -> None:
        """These kept reads were found current by the server just now: fresh again."""
        with self.lock:
            for path in paths:
                got = self.cache.get(path)
                if got is not None:
                    self.cache[path] = (got[0], time.monotonic())

    def read(
        self, conn: ZkConnection, what: str, path: str, max_age: float, wake: bool = True
    ) -> Read | None:
        """A node's data read with a watch, or the last such read while its watch is pending
        in this session and it is younger than `max_age` s (no request); None: no node. With
        `wake`, a change wakes the daemon's loop at once."""
        callback = self.fired if wake else self.dropped
        sid = conn.session_id()
        cached = self.fresh(path, sid, max_age)
        if cached is not None:
            return cached
        self.arming(path, sid)
        try:
            got: Read = conn.call(what, lambda: conn.client.get_async(path, watch=callback))
        except NoNodeError:
            self.forget(path)  # a missing node holds no data watch
            return None
        except BaseException:
            self.forget(path)
            raise
        self.keep(path, sid, got)
        return got

    def set_checked(self, conn: ZkConnection, what: str, path: str, data: bytes) -> Any:
        """Set `path` in one request that also checks every kept read is still current (its
        version): a lost watch costs at most a tick, and no periodic re-read is due. The new
        ZnodeStat, or None when nothing is kept or the request failed (stale reads forgotten)."""
        kept = self.versions(conn.session_id())
        if not kept:
            return None

        def txn() -> Any:
            t = conn.client.transaction()
            for node, version in kept:
                t.check(node, version)
            t.set_data(path, data)
            return t.commit_async()

        results = conn.call(what, txn)
        if not any(isinstance(r, Exception) for r in results):
            self.verified([node for node, _ in kept])
            return results[-1]
        # Checks before the failed operation passed (RolledBackError); the failed one and
        # those after it (not evaluated) are read again. `path` missing fails only itself.
        stale = [
            n
            for (n, _), r in zip(kept, results, strict=False)
            if not isinstance(r, RolledBackError)
        ]
        for node in stale:
            self.forget(node)
        if stale:
            self.wake()
        return None
