"""A pre-warmed `airflow scheduler`: imports done, waiting for "go" on a pipe.

Run by the keeper with Airflow's own interpreter, as a script (standard library and Airflow
only; `failover` need not be installed in Airflow's environment):

    <airflow python> prewarm.py --control-fd R --status-fd W -- airflow scheduler [ARGS...]

It does the work `airflow scheduler` does before it touches the database: imports the
command, its job runner and the executor, loads the providers' configuration, parses the
arguments with Airflow's own parser, configures the SQLAlchemy mappers, then
`gc.collect(); gc.freeze()`. It opens no database connection (the process may wait for hours
and the database may fail over meanwhile; a pooled socket would be stale).

Status pipe (one line each): `READY <json>` when warm ({"seconds", "airflow", "watch"}: the
files whose change should re-warm it), or `COLD <reason>` when it cannot pre-warm (unknown
Airflow version, a failed import); a cold process still waits and then execs the plain
command. Control pipe: `GO <json env>` runs the scheduler exactly as the CLI would (the env
adds FAILOVER_EPOCH and PGAPPNAME); end of file before GO = exit at once.
"""

from __future__ import annotations

import os
import sys

# Run as a script, our own directory would shadow the standard library (failover/http.py).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import contextlib
import gc
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

# Airflow versions whose scheduler start-up this module knows (public CLI entry points:
# `airflow.__main__.main`, `airflow.cli.cli_parser.get_parser`, `airflow.settings.engine`).
SUPPORTED = ((2, 10), (2, 11))
# What `airflow scheduler` imports lazily on its first use, imported here in advance.
MODULES = (
    "airflow.cli.commands.scheduler_command",
    "airflow.jobs.scheduler_job_runner",
    "airflow.jobs.job",
    "airflow.dag_processing.manager",
    "airflow.dag_processing.processor",
    "airflow.models",
    "airflow.models.dagbag",
    "airflow.models.serialized_dag",
    "airflow.serialization.serialized_objects",
    "airflow.utils.db",  # the migration check before every command
    "airflow.migrations.utils",
    "airflow.utils.serve_logs",
    "airflow.utils.scheduler_health",
    "airflow.listeners.spec.lifecycle",
    "airflow.listeners.spec.dagrun",
    "airflow.listeners.spec.taskinstance",
    "airflow.www.app",
    "alembic.command",
    "alembic.script",
    "alembic.runtime.environment",
    "alembic.runtime.migration",
    "alembic.autogenerate",
    "alembic.ddl.postgresql",
    "multiprocessing.connection",
    "multiprocessing.managers",
    "multiprocessing.pool",
    "multiprocessing.popen_fork",
)


def _report(fd: int, line: str) -> None:
    try:
        os.write(fd, line.encode("utf-8", "replace") + b"\n")
    except OSError:
        pass  # the keeper is gone; the control pipe's EOF ends us


def _version(text: str) -> tuple[int, int]:
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def _watch_list(airflow: Any) -> list[str]:
    """Files whose change means the warm process runs outdated code or configuration."""
    from airflow import configuration

    package = os.path.dirname(airflow.__file__)
    site = os.path.dirname(package)
    paths = [site, package, os.path.join(package, "__init__.py")]
    config = getattr(configuration, "AIRFLOW_CONFIG", "")
    if config:
        paths.append(config)
    return paths


def warm_up(command: Sequence[str]) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Everything before the first database use; the callable runs the command."""
    t0 = time.monotonic()
    import airflow

    version = getattr(airflow, "__version__", "unknown")
    if _version(version) not in SUPPORTED:
        known = ", ".join(f"{a}.{b}" for a, b in SUPPORTED)
        raise LookupError(f"Airflow {version} is not one prewarm knows ({known})")
    if len(command) < 2 or command[1] != "scheduler":
        raise LookupError(f"the command is not `airflow scheduler`: {' '.join(command[:2])}")
    import importlib

    from airflow import settings
    from airflow.__main__ import main
    from airflow.cli import cli_parser

    sys.argv = list(command)
    args = cli_parser.get_parser().parse_args(list(command[1:]))  # cached parser, checked args
    if getattr(args, "daemon", False):
        raise LookupError("`airflow scheduler --daemon` detaches: run it in the foreground")
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)  # not in this version or install: imported on use, if ever
    from airflow.executors.executor_loader import ExecutorLoader
    from airflow.providers_manager import ProvidersManager

    ProvidersManager().initialize_providers_configuration()
    ExecutorLoader.import_default_executor_cls()
    from sqlalchemy.orm import configure_mappers

    configure_mappers()
    engine = getattr(settings, "engine", None)
    if engine is not None:
        pool = engine.pool
        if pool.checkedout():
            raise RuntimeError(f"{pool.checkedout()} database connection(s) checked out")
        engine.dispose()  # drop any idle pooled connection: it would be stale after hours
    gc.collect()
    gc.freeze()
    info = {
        "seconds": round(time.monotonic() - t0, 3),
        "airflow": version,
        "watch": _watch_list(airflow),
        "not_imported": missing,
    }
    return main, info


def _read_go(fd: int) -> dict[str, str] | None:
    """Block until `GO <json>`; None on end of file (the keeper is gone or gave up on us)."""
    data = b""
    while b"\n" not in data:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            return None
        data += chunk
    word, _, payload = data.split(b"\n", 1)[0].decode("utf-8", "replace").partition(" ")
    if word != "GO":
        return None
    env = json.loads(payload or "{}")
    return {str(k): str(v) for k, v in env.items()}


# /proc/<pid>/comm until GO (not a running scheduler): while importing, then once ready.
WARMING_NAME = b"failover-warmup"
WARM_NAME = b"failover-warm"


def _title(text: str, comm: bytes) -> None:
    """The process title (`ps`) and its short name (/proc/<pid>/comm), in that order: the
    title library also sets the short name."""
    with contextlib.suppress(Exception):  # cosmetic
        import setproctitle  # an Airflow dependency

        setproctitle.setproctitle(text)
    _name(comm)


def _name(comm: bytes) -> None:
    with contextlib.suppress(Exception):  # tools and tests tell a waiting process by it
        import ctypes

        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(comm[:15]), 0, 0, 0)  # PR_SET_NAME


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A pre-warmed `airflow scheduler` waiting for GO.")
    p.add_argument("--control-fd", type=int, required=True, help="read end: GO <json> or EOF")
    p.add_argument("--status-fd", type=int, required=True, help="write end: READY/COLD lines")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- airflow scheduler ARGS...")
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        p.error("give the command after --")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    command = list(args.command)
    run: Callable[[], Any] | None = None
    _title(f"{' '.join(command)} [warm standby]", WARMING_NAME)
    try:
        run, info = warm_up(command)
        _name(WARM_NAME)
        _report(args.status_fd, "READY " + json.dumps(info))
    except Exception as err:  # any failure means: start cold on GO
        _report(args.status_fd, f"COLD {type(err).__name__}: {err}"[:500])
    os.close(args.status_fd)
    env = _read_go(args.control_fd)
    if env is None:
        os._exit(0)  # the keeper is gone or gave up on us: nothing to clean up
    os.close(args.control_fd)
    os.environ.update(env)
    if run is None:  # exec gives the process the command's own name
        os.execvp(command[0], command)  # noqa: S606 - the plain command, as the CLI
    sys.argv = list(command)
    _title(" ".join(command), os.path.basename(command[0]).encode()[:15])
    return int(run() or 0)


if __name__ == "__main__":
    sys.exit(main())
