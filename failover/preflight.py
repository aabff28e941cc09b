"""The checks `failover run` makes before it starts, each without side effects.

`failover check-config` runs the same function, so it refuses exactly what `run` would.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from failover.airflow import settings as airflow_settings
from failover.backends import startup_check
from failover.config import Settings
from failover.errors import ConfigError
from failover.ops.http import parse_listen, read_token, tls_context
from failover.sources import check_private_file


def startup_checks(settings: Settings, env: Mapping[str, str]) -> str | None:
    """Raise `ConfigError` for anything `run` refuses at start; return the HTTP token.

    Not covered: systemd's WatchdogSec (only the unit knows it), a port or node name
    already taken by a running daemon, and backends that cannot be reached (retried)."""
    token = read_token(settings.http.token_file, settings.allow_insecure_permissions)
    if settings.http.listen:
        parse_listen(settings.http.listen)
    if settings.http.tls_cert_file and settings.http.tls_key_file:
        check_private_file(
            settings.http.tls_key_file, "http.tls_key_file", settings.allow_insecure_permissions
        )
        tls_context(settings.http.tls_cert_file, settings.http.tls_key_file)
    missing = airflow_settings.airflow_on_path(settings.command, env)
    if missing and not settings.keeper.listen:  # in sidecar mode another container runs it
        raise ConfigError("command", missing, "install it or fix the command")
    socket_dir = Path(settings.keeper.listen).parent
    if settings.keeper.listen and not (socket_dir.is_dir() and os.access(socket_dir, os.W_OK)):
        raise ConfigError(
            "keeper.listen", f"{socket_dir} is not a writable directory", "create it first"
        )
    startup_check(settings)
    return token
