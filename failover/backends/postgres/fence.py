"""Fencing in PostgreSQL by session name: find and terminate the sessions of older epochs
(`failover:<cluster>:<node>:<epoch>[:keeper]`); used by both the postgres and zookeeper modes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg2.errors

from failover.backends.postgres.session import Session, one_line
from failover.errors import BackendUnavailable

Query = Callable[[Any, tuple[Any, ...]], list[tuple[Any, ...]]]

OLD_SESSIONS_SQL = """
SELECT pid, application_name FROM pg_stat_activity
WHERE application_name LIKE %s AND pid <> pg_backend_pid()
"""


def appname_epoch(name: str, cluster: str) -> tuple[int, bool] | None:
    """(epoch, is_keeper) of `failover:<cluster>:<node>:<epoch>[:keeper]`, else None."""
    parts = name.split(":")
    if len(parts) not in (4, 5) or parts[0] != "failover" or parts[1] != cluster:
        return None
    if len(parts) == 5 and parts[4] != "keeper":
        return None
    try:
        return int(parts[3]), len(parts) == 5
    except ValueError:
        return None


def older_sessions(query: Query, cluster: str, epoch: int) -> tuple[list[int], list[int]]:
    """(keeper pids, child pids) of the cluster's sessions named with an epoch below `epoch`."""
    keepers: list[int] = []
    children: list[int] = []
    for pid, name in query(OLD_SESSIONS_SQL, (f"failover:{cluster}:%",)):
        parsed = appname_epoch(str(name), cluster)
        if parsed is None or parsed[0] >= epoch:
            continue
        (keepers if parsed[1] else children).append(int(pid))
    return keepers, children


TERMINATE_SQL = "SELECT p FROM unnest(%s::int[]) AS p WHERE pg_terminate_backend(p)"
STILL_THERE_SQL = "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s::int[])"
TERMINATE_WAIT = 1.0  # seconds for the signalled backends to leave pg_stat_activity


def terminate(query: Query, pids: Sequence[int], wait: float = TERMINATE_WAIT) -> int:
    """`pg_terminate_backend` all of `pids` in one statement (PostgreSQL 12+), then wait up to
    `wait` seconds for them to end; how many ended. A missing privilege is a
    BackendUnavailable that names the grant."""
    if not pids:
        return 0
    try:
        signalled = {int(r[0]) for r in query(TERMINATE_SQL, (list(pids),))}
    except BackendUnavailable as err:
        if isinstance(err.__cause__, psycopg2.errors.InsufficientPrivilege):
            raise BackendUnavailable(
                f"cannot terminate backends {list(pids)}: {one_line(err.__cause__)}; grant "
                "pg_signal_backend to the failover role (RDS: rds_superuser)"
            ) from err
        raise
    left = set(signalled)
    end = time.monotonic() + wait
    for _ in range(int(wait / 0.02) + 1):
        if not left or time.monotonic() >= end:
            break
        time.sleep(0.02)
        left = {int(r[0]) for r in query(STILL_THERE_SQL, (sorted(left),))}
    return len(signalled - left)


class OlderEpochSweep:
    """ZooKeeper mode: the new leader terminates the metadata-DB sessions of older epochs
    (a lingering child session of a cut-off host, a statement still in flight), on a session
    the daemon already holds."""

    def __init__(self, session: Session, cluster: str) -> None:
        self.session = session
        self.cluster = cluster

    def __call__(self, epoch: int) -> int:
        """Sessions terminated; BackendUnavailable when the DB cannot be asked or refuses."""
        keepers, children = older_sessions(self.session.query, self.cluster, epoch)
        return terminate(self.session.query, keepers + children)
