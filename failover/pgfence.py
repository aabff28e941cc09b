"""Fencing in PostgreSQL by session name: find and terminate the sessions of older epochs
(`failover:<cluster>:<node>:<epoch>[:keeper]`); used by both the postgres and zookeeper modes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg2.errors

from failover.errors import BackendUnavailable
from failover.pg import Session, one_line

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


def terminate(query: Query, pids: Sequence[int]) -> int:
    """`pg_terminate_backend` each pid (waiting up to 1 s); how many ended. A missing
    privilege is a BackendUnavailable that names the grant."""
    done = 0
    for pid in pids:
        try:
            rows = query("SELECT pg_terminate_backend(%s, %s)", (pid, 1000))
        except BackendUnavailable as err:
            if isinstance(err.__cause__, psycopg2.errors.InsufficientPrivilege):
                raise BackendUnavailable(
                    f"cannot terminate backend {pid}: {one_line(err.__cause__)}; grant "
                    "pg_signal_backend to the failover role (RDS: rds_superuser)"
                ) from err
            raise
        done += 1 if rows and rows[0][0] else 0
    return done


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
