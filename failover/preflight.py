"""The checks `failover run` makes before it starts, each without side effects.

`failover check-config` runs the same function, so it refuses exactly what `run` would.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from failover import airflowdb
from failover.config import Settings
from failover.errors import ConfigError
from failover.http import parse_listen, read_token, tls_context
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
    missing = airflowdb.airflow_on_path(settings.command, env)
    if missing and not settings.keeper.listen:  # in sidecar mode another container runs it
        raise ConfigError("command", missing, "install it or fix the command")
    if settings.keeper.listen:
        _writable_dir(Path(settings.keeper.listen).parent, "keeper.listen", create=False)
    if settings.backend == "local":
        _writable_dir(Path(settings.local.dir), "local.dir", create=True)
    if settings.backend == "zookeeper" and settings.zookeeper.auth_file:
        from failover.zkconn import read_auth_file

        read_auth_file(settings.zookeeper.auth_file)
    return token


def _writable_dir(path: Path, field: str, create: bool) -> None:
    """`path` is a writable directory, or (`create`) could be made in its nearest parent."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    if existing != path and not create:
        raise ConfigError(field, f"{path} does not exist", "create the directory first")
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        verb = "create" if existing != path else "write to"
        raise ConfigError(
            field, f"cannot {verb} {path}: {existing} is not a writable directory", "pick another"
        )
