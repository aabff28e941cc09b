"""The keeper's command line, its options from a sidecar's INIT, and the proof of life they
name (standard library only, as the keeper)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from failover.airflow.prewarm import parse_with_command
from failover.keeper.proof import LockFileProof, MySQLLockProof, PgSessionProof, Proof


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m failover.keeper",
        description="Run CMD in this session; kill its whole tree when the daemon stops vouching.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--control-fd", type=int, help="connected stream socket fd")
    where.add_argument(
        "--connect", metavar="PATH", help="sidecar mode: connect to the daemon's Unix socket"
    )
    p.add_argument("--name", default="failover:keeper", help="failover:<cluster>:<node>")
    p.add_argument("--stop-timeout", type=float, default=30.0, help="SIGTERM -> SIGKILL grace")
    p.add_argument("--lock-file", help="hold this flock as proof of life (local backend)")
    p.add_argument("--lock-wait", type=float, default=5.0, help="how long to wait for the lock")
    p.add_argument("--pg-dsn-env", help="env var with the DSN of the proof-of-life session")
    p.add_argument("--pg-channel", help="NOTIFY this channel when the tree is gone")
    p.add_argument("--pg-epoch-table", help="<table>:<cluster>: refuse GO for a superseded epoch")
    p.add_argument("--mysql-dsn-env", help="env var with the DSN of the MySQL proof session")
    p.add_argument(
        "--prewarm", action="store_true", help="keep `airflow scheduler` imported while warm"
    )
    p.add_argument(
        "--prewarm-max-age", type=float, default=0.0, help="re-warm after this many seconds"
    )
    p.add_argument("--component", action="append", default=[], help="NAME=<json argv>")
    p.add_argument(
        "--defer-components", action="store_true", help="start them on RESTART <name> only"
    )
    p.add_argument("--alive-file", help="write CLOCK_BOOTTIME here every second (--check reads)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parse_with_command(p, argv)


def proof_of_life(args: argparse.Namespace) -> Proof | None:
    if args.pg_dsn_env:
        # The DSN (with its password) reaches us by env, never argv, and not the child.
        dsn = os.environ.pop(args.pg_dsn_env, "")
        return PgSessionProof(dsn, args.name, args.pg_channel, args.pg_epoch_table)
    if args.mysql_dsn_env:
        dsn = os.environ.pop(args.mysql_dsn_env, "")
        return MySQLLockProof(dsn, args.name, args.pg_epoch_table)
    if args.lock_file:
        return LockFileProof(args.lock_file, args.lock_wait)
    return None


def init_args(init: dict[str, Any], argv: Sequence[str]) -> argparse.Namespace:
    """Sidecar mode: our options from the daemon's `INIT` (its env goes to our environ)."""
    os.environ.update({str(k): str(v) for k, v in init.get("env", {}).items()})
    command = list(argv[argv.index("--") :]) if "--" in argv else []
    return parse(["--control-fd", "-1", *[str(a) for a in init.get("args", [])], *command])
