"""Airflow's own settings as a candidate host sees them: thresholds, hostname, warnings.

Read from `AIRFLOW__*` and `airflow.cfg`; no database access (see `MetadataDB.jobs`).
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from failover.airflow.broker import local_brokers

DEFAULT_THRESHOLD = 30.0


def airflow_setting(env: Mapping[str, str], section: str, key: str) -> str | None:
    """An Airflow setting from `AIRFLOW__SECTION__KEY` or `$AIRFLOW_HOME/airflow.cfg`."""
    value = env.get(f"AIRFLOW__{section.upper()}__{key.upper()}")
    if value is not None:
        return value
    home = Path(env.get("AIRFLOW_HOME") or Path.home() / "airflow")
    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read(home / "airflow.cfg", encoding="utf-8")
    except (OSError, configparser.Error):
        return None
    return cfg.get(section, key, fallback=None)


def health_threshold(env: Mapping[str, str]) -> float:
    return threshold(env, "scheduler", "scheduler_health_check_threshold")


def threshold(env: Mapping[str, str], section: str, key: str) -> float:
    """A `*_health_check_threshold` of Airflow's config, in seconds (default 30)."""
    raw = airflow_setting(env, section, key)
    try:
        return float(raw) if raw else DEFAULT_THRESHOLD
    except ValueError:
        return DEFAULT_THRESHOLD


def expected_hostname(env: Mapping[str, str]) -> str | None:
    """The hostname Airflow will record, when we can know it (default callable only)."""
    callable_path = airflow_setting(env, "core", "hostname_callable")
    if callable_path and callable_path.replace(":", ".") not in (
        "socket.getfqdn",
        "airflow.utils.net.getfqdn",
    ):
        return None  # the user's own callable: match by job id only
    import socket

    return socket.getfqdn()


def environment_warnings(
    env: Mapping[str, str],
    has_metadata_db: bool,
    broker_at_home: Callable[[str], list[str]] = local_brokers,
) -> list[str]:
    """Airflow settings an operator should hear about on a candidate master;
    `broker_at_home(url)` names the broker hosts that resolve to this host."""
    out: list[str] = []
    broker = airflow_setting(env, "celery", "broker_url") or ""
    here = broker_at_home(broker) if broker else []
    if here:
        out.append(
            f"AIRFLOW__CELERY__BROKER_URL points at this host ({', '.join(here)}): brokers "
            "belong on their own cluster, or losing this candidate loses the queue too"
        )
    locking = (airflow_setting(env, "scheduler", "use_row_level_locking") or "true").lower()
    if has_metadata_db and locking in ("true", "1", "yes"):
        out.append(
            "the metadata DB is PostgreSQL with row-level locking: Airflow could run several "
            "schedulers safely; failover still keeps exactly one (predictable load)"
        )
    return out


def airflow_on_path(command: list[str] | tuple[str, ...], env: Mapping[str, str]) -> str | None:
    """An error text when the command's program cannot be found, else None."""
    import shutil

    program = command[0]
    if os.sep in program:
        return None if os.access(program, os.X_OK) else f"{program} is not an executable file"
    if shutil.which(program, path=env.get("PATH")) is None:
        hint = " (pip install apache-airflow)" if program == "airflow" else ""
        return f"{program!r} is not on PATH{hint}; set command to its full path"
    return None
