"""PyMySQL connections that share one TLS context per TLS settings in a process, instead of
building one (the system's whole CA store: ~1 MB of OpenSSL heap, ~25 ms of CPU) per connect."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pymysql.connections

CACHE_MAX = 8  # distinct TLS settings kept per process (a daemon has one or two DSNs)
FILE_KEYS = ("ca", "capath", "cert", "key")

_contexts: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def settings_key(sslp: object) -> tuple[Any, ...] | None:
    """A key for PyMySQL's TLS settings dict, with the identity of the files it names (a CA
    bundle replaced on disk is read at the next connect); None: not a plain dict, no sharing."""
    if not isinstance(sslp, dict):
        return None
    parts: list[tuple[Any, ...]] = []
    for name, value in sorted(sslp.items()):
        if not isinstance(value, str | bool | int | None):
            return None
        stamp = _file_stamp(value) if name in FILE_KEYS and isinstance(value, str) else None
        parts.append((name, value, stamp))
    return tuple(parts)


def shared_context(sslp: object, build: Callable[[Any], Any]) -> Any:
    """The context `build(sslp)` made the first time these settings were seen in this process."""
    key = settings_key(sslp)
    if key is None:
        return build(sslp)
    with _lock:
        ctx = _contexts.get(key)
        if ctx is None:
            if len(_contexts) >= CACHE_MAX:
                _contexts.clear()
            ctx = _contexts[key] = build(sslp)
        return ctx


if TYPE_CHECKING:
    _Base = pymysql.connections.Connection[Any]
else:
    _Base = pymysql.connections.Connection


class Connection(_Base):
    """`pymysql.connect` whose TLS context is shared. PyMySQL >= 1.2 makes one in every
    connection, even without TLS settings (it then tries TLS if the server offers it, unverified)
    and even when the connect fails: a daemon reconnecting through a server restart built
    dozens, and the heap they left grew its RSS by ~1.7 MB at a time (issue #20)."""

    def _create_ssl_ctx(self, sslp: Any) -> Any:
        return shared_context(sslp, super()._create_ssl_ctx)  # type: ignore[misc]
