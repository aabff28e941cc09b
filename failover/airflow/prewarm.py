"""A pre-warmed `airflow scheduler`: imports done, waiting for "go" on a pipe.

Run by the keeper with Airflow's own interpreter, as a script (standard library and Airflow
only; `failover` need not be installed in Airflow's environment):

    <airflow python> prewarm.py --control-fd R --status-fd W -- airflow scheduler [ARGS...]

It does the work `airflow scheduler` does before it touches the database: imports the
command, its job runner and the executor, loads the providers' configuration, parses the
arguments with Airflow's own parser, configures the SQLAlchemy mappers, then
`gc.collect(); gc.freeze()`. It opens no database connection (the process may wait for hours
and the database may fail over meanwhile; a pooled socket would be stale).

Status pipe (one line each): `READY <json>` when warm ({"seconds", "airflow", "watch",
"seen"}: the files whose change should re-warm it, and their identity before anything was
read), or `COLD <reason>` and exit when it cannot pre-warm: exit code 3 for a lasting
reason (unknown Airflow version, not `airflow scheduler`), 4 when the warm-up failed (it may
work later). Control pipe: `GO <json env>` runs the scheduler exactly as the CLI would (the
env adds FAILOVER_EPOCH and PGAPPNAME); end of file before GO = exit at once.
"""

from __future__ import annotations

import os
import sys

# Run as a script, our own directory would come first on sys.path: drop it (nothing of ours
# may shadow what Airflow imports).
if __name__ == "__main__" and sys.path:  # noqa: SIM102 - ruff allows only this form first
    if os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__)):
        del sys.path[0]

import argparse
import contextlib
import gc
import importlib.util
import json
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

# Airflow versions whose scheduler start-up this module knows (public CLI entry points:
# `airflow.__main__.main`, `airflow.cli.cli_parser.get_parser`, `airflow.settings.engine`).
SUPPORTED = ((2, 10), (2, 11))
EXIT_UNSUPPORTED = 3  # will not pre-warm this: the keeper starts the plain command on GO
EXIT_FAILED = 4  # the warm-up failed: the keeper tries again after a backoff
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
    # Three migration scripts import it, and the migration check before every command loads
    # them all (unless [database] check_migrations = False): a cold start imports it too.
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


class Unsupported(Exception):
    """A lasting reason not to pre-warm this command."""


def watch_list() -> list[str]:
    """Files whose change means a warm process runs outdated code or configuration, found
    without importing Airflow (so their identity can be taken before anything is read)."""
    paths = [os.path.realpath(sys.executable)]
    spec = importlib.util.find_spec("airflow")
    if spec is not None and spec.origin:
        package = os.path.dirname(spec.origin)
        paths += [os.path.dirname(package), package, spec.origin]
    home = os.path.expanduser(os.environ.get("AIRFLOW_HOME") or "~/airflow")
    paths.append(os.path.expanduser(os.environ.get("AIRFLOW_CONFIG") or f"{home}/airflow.cfg"))
    return paths


def identity(paths: Sequence[str]) -> list[Any]:
    """What each path is now: [inode, size, mtime_ns], or None when missing (the keeper
    compares it with its own look at the same paths)."""
    out: list[Any] = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append([st.st_ino, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append(None)
    return out


def warm_up(command: Sequence[str]) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Everything before the first database use; the callable runs the command."""
    t0 = time.monotonic()
    watch = watch_list()
    seen = identity(watch)  # before anything is read: a change during the warm-up shows
    import airflow

    version = getattr(airflow, "__version__", "unknown")
    if _version(version) not in SUPPORTED:
        known = ", ".join(f"{a}.{b}" for a, b in SUPPORTED)
        raise Unsupported(f"Airflow {version} is not one prewarm knows ({known})")
    if len(command) < 2 or command[1] != "scheduler":
        raise Unsupported(f"the command is not `airflow scheduler`: {' '.join(command[:2])}")
    import importlib

    from airflow import settings
    from airflow.__main__ import main
    from airflow.cli import cli_parser

    sys.argv = [shutil.which(command[0]) or command[0], *command[1:]]
    args = cli_parser.get_parser().parse_args(list(command[1:]))  # cached parser, checked args
    if getattr(args, "daemon", False):
        raise Unsupported("`airflow scheduler --daemon` detaches: run it in the foreground")
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
    local_settings = sys.modules.get("airflow_local_settings")  # cluster policies, if any
    extra = [getattr(local_settings, "__file__", None)]
    info = {
        "seconds": round(time.monotonic() - t0, 3),
        "airflow": version,
        "watch": watch + [p for p in extra if p],
        "seen": seen,
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
    """The short name (/proc/<pid>/comm) and the process title (`ps`); the title library
    also sets the short name, so it is set again right after."""
    _name(comm)
    with contextlib.suppress(Exception):  # cosmetic
        import setproctitle  # an Airflow dependency

        setproctitle.setproctitle(text)
    _name(comm)


def _name(comm: bytes) -> None:
    with contextlib.suppress(Exception):  # tools and tests tell a waiting process by it
        import ctypes

        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(comm[:15]), 0, 0, 0)  # PR_SET_NAME


def parse_with_command(p: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse options and a REMAINDER `command` given after `--` (shared with the keeper)."""
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        p.error("give the command after --")
    return args


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A pre-warmed `airflow scheduler` waiting for GO.")
    p.add_argument("--control-fd", type=int, required=True, help="read end: GO <json> or EOF")
    p.add_argument("--status-fd", type=int, required=True, help="write end: READY/COLD lines")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- airflow scheduler ARGS...")
    return parse_with_command(p, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    command = list(args.command)
    _title(f"{' '.join(command)} [warm standby]", WARMING_NAME)
    try:
        run, info = warm_up(command)
    except Unsupported as err:
        _report(args.status_fd, f"COLD {err}"[:500])
        os._exit(EXIT_UNSUPPORTED)
    except (Exception, SystemExit) as err:  # argparse exits on bad arguments
        _report(args.status_fd, f"COLD warm-up failed: {type(err).__name__}: {err}"[:500])
        os._exit(EXIT_FAILED)  # no atexit: nothing of Airflow's to tidy, no connection
    _name(WARM_NAME)
    _report(args.status_fd, "READY " + json.dumps(info))
    os.close(args.status_fd)
    env = _read_go(args.control_fd)
    if env is None:
        os._exit(0)  # the keeper is gone or gave up on us: nothing to clean up
    os.close(args.control_fd)
    os.environ.update(env)
    sys.argv = [shutil.which(command[0]) or command[0], *command[1:]]  # as the script has it
    _title(" ".join(command), os.path.basename(command[0]).encode()[:15])
    return int(run() or 0)


if __name__ == "__main__":
    sys.exit(main())
