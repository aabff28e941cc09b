"""structlog set-up: JSON lines in production, console on a TTY.

Every line carries node, cluster, epoch and role once `bind()` has been called.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from failover.dsn import redact_dsn

_SECRET_KEYS = ("password", "token", "secret", "dsn", "auth")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: never print a value under a secret-looking key in clear."""
    for key, value in list(event.items()):
        lowered = key.lower()
        if isinstance(value, str) and any(s in lowered for s in _SECRET_KEYS):
            event[key] = redact_dsn(value) if "dsn" in lowered else "***"
    return event


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def bind(**context: Any) -> None:
    """Context every later line carries (node, cluster, epoch, role)."""
    structlog.contextvars.bind_contextvars(**context)


def get() -> Any:
    return structlog.get_logger("failover")
