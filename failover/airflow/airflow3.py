"""Airflow 3 on candidate masters: which major the group runs, and what `check-config` warns
about (the shared JWT secret, the execution API, 2.x leftovers). Reads files, one TCP probe.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import socket
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from failover.airflow.settings import airflow_setting
from failover.config import Settings

Group = Sequence[tuple[str, Sequence[str]]]
SECRET_VARS = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API_AUTH__JWT_PRIVATE_KEY_PATH")
TWO_ONLY: tuple[str, ...] = ("AIRFLOW__WEBSERVER__", "AIRFLOW__CORE__STANDALONE_DAG_PROCESSOR")
TWO_ONLY += ("AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR",)


def airflow_major(argv: Sequence[str], env: Mapping[str, str]) -> int | None:
    """The major version of the Airflow that `argv[0]` runs, from its venv's package metadata
    (no import, no subprocess); None when it cannot be told."""
    path = shutil.which(argv[0], path=env.get("PATH")) if argv else None
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            first = f.readline(512).decode("utf-8", "replace")
    except OSError:
        return None
    roots = [os.path.dirname(os.path.dirname(os.path.realpath(path)))]
    if first.startswith("#!"):
        roots.insert(0, os.path.dirname(os.path.dirname(first[2:].split()[0])))
    for root in roots:
        pattern = os.path.join(
            root, "lib", "python3*", "site-packages", "apache_airflow-*.dist-info"
        )
        for found in sorted(glob.glob(pattern)):
            version = os.path.basename(found)[len("apache_airflow-") :].split(".")[0]
            if version.isdigit():
                return int(version)
    return None


def _names(group: Group) -> list[str]:
    return [
        argv[1] for _, argv in group if len(argv) > 1 and os.path.basename(argv[0]) == "airflow"
    ]


def execution_api_url(env: Mapping[str, str]) -> str:
    """Where this host's tasks (LocalExecutor) send their state: Airflow 3's own rule."""
    for section in ("workers", "core"):
        url = airflow_setting(env, section, "execution_api_server_url")
        if url:
            return url
    base = airflow_setting(env, "api", "base_url") or "/"
    if base.startswith("/"):
        base = f"http://localhost:8080{base}"
    return f"{base.rstrip('/')}/execution/"


def _local(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
        return True
    return host in (socket.gethostname(), socket.getfqdn())


def _listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def warnings(group: Group, env: Mapping[str, str]) -> list[str]:
    """What an operator of Airflow 3 must hear about before a failover goes wrong."""
    names = _names(group)
    majors = [m for _, argv in group if (m := airflow_major(argv, env)) is not None]
    if "webserver" in names:
        return [
            "`airflow webserver` is in the group: the leader-only group is for the scheduler, "
            "dag-processor and triggerer; on Airflow 3 run `airflow api-server` on every host, "
            "outside the controller (on 2.x run the webserver outside it too)"
        ]
    if not (majors and max(majors) >= 3) and "dag-processor" not in names:
        return []  # Airflow 2 (or not known to be 3): nothing of this applies
    out: list[str] = []
    if "dag-processor" not in names:
        out.append(
            "Airflow 3 without `airflow dag-processor` in [airflow.components]: nothing parses "
            'DAG files on the leader; add dag-processor = ["airflow", "dag-processor"]'
        )
    if "api-server" in names:
        out.append(
            "`airflow api-server` is in the group: it is stateless; run it on every host "
            "outside the controller, behind the load balancer"
        )
    if not any(env.get(v) or env.get(v + "_CMD") or env.get(v + "_SECRET") for v in SECRET_VARS):
        where = "only in airflow.cfg (Airflow writes a random one per host)"
        if not airflow_setting(env, "api_auth", "jwt_secret"):
            where = "nowhere (each host generates its own)"
        out.append(
            f"[api_auth] jwt_secret is set {where}: after a failover the api-servers refuse the "
            "new leader's task tokens (`Invalid auth token`, every task fails); set the same "
            "AIRFLOW__API_AUTH__JWT_SECRET (or its _CMD / _SECRET form) on every host"
        )
    url = execution_api_url(env)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.hostname and _local(parts.hostname) and not _listens(parts.hostname, port):
        out.append(
            f"the execution API {url} points at this host, but nothing listens on port {port}: "
            "tasks cannot report their state; run `airflow api-server --apps execution` here "
            "(outside the controller) or set [workers] execution_api_server_url to the "
            "load balancer"
        )
    old = sorted(k for k in env if k.startswith(TWO_ONLY))
    if old:
        out.append(
            f"Airflow 2 settings that Airflow 3 ignores: {', '.join(old)} "
            "([webserver] moved to [api] / [fab]; the DAG processor is always standalone)"
        )
    return out


def default_group(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Airflow 3 needs its DAG processor beside the scheduler: with neither `command` nor
    `[airflow] components` set, the default group there is scheduler + dag-processor."""
    if settings.airflow.components or settings.command != ("airflow", "scheduler"):
        return settings
    if (airflow_major(settings.command, env) or 0) < 3:
        return settings
    group = (
        ("scheduler", ("airflow", "scheduler")),
        ("dag-processor", ("airflow", "dag-processor")),
    )
    return settings.replace(airflow=dataclasses.replace(settings.airflow, components=group))
