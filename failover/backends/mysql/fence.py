"""Fencing in MySQL / MariaDB by named lock: find the sessions holding older epochs' keeper
locks (`IS_USED_LOCK`) and end them with `KILL`, or `CALL mysql.rds_kill` where KILL is denied.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from failover.backends.mysql.session import DENIED, error_code, one_line
from failover.errors import BackendUnavailable
from failover.keeper.proof import keeper_lock_name

Query = Callable[..., list[tuple[Any, ...]]]

MAX_EPOCHS = 256  # keeper locks looked up per fence, newest first (one statement)
KILL_WAIT = 1.0  # seconds for a killed session to let its locks go
NO_PROCEDURE = 1305  # CALL of a procedure that does not exist (not RDS)
UNKNOWN_THREAD = 1094


def older_keepers(query: Query, cluster: str, epoch: int, fenced: int) -> dict[str, int]:
    """{lock name: connection id} of the keeper locks still held for epochs in
    (fenced, epoch)."""
    epochs = list(range(max(fenced + 1, epoch - MAX_EPOCHS, 1), epoch))
    if not epochs:
        return {}
    names = [keeper_lock_name(cluster, e) for e in epochs]
    columns = ", ".join("IS_USED_LOCK(%s)" for _ in names)
    row = query(f"SELECT {columns}", tuple(names))[0]
    return {n: int(holder) for n, holder in zip(names, row, strict=True) if holder is not None}


def kill(query: Query, holders: dict[str, int], wait: float = KILL_WAIT) -> int:
    """End the sessions holding the named locks `holders` ({lock name: connection id}); how
    many let their lock go within `wait` seconds (IS_USED_LOCK shows every account's holders,
    PROCESSLIST only ours). KILL needs no privilege for our own account's sessions; otherwise
    CONNECTION_ADMIN (MySQL 8) / CONNECTION ADMIN (MariaDB) or SUPER, or on RDS for MySQL
    `mysql.rds_kill`. Neither: a BackendUnavailable naming the grant."""
    for conn_id in sorted(set(holders.values())):
        try:
            query("KILL CONNECTION %s", (int(conn_id),))
        except BackendUnavailable as err:
            code = error_code(err.__cause__)
            if code == UNKNOWN_THREAD:  # gone already
                continue
            if code not in DENIED:
                raise
            _rds_kill(query, int(conn_id), err)
    left = dict(holders)
    end = time.monotonic() + wait
    for _ in range(int(wait / 0.02) + 1):
        left = {name: i for name, i in left.items() if _holds(query, name, i)}
        if not left or time.monotonic() >= end:
            break
        time.sleep(0.02)
    return len(set(holders.values()) - set(left.values()))


def _rds_kill(query: Query, conn_id: int, denied: BackendUnavailable) -> None:
    try:
        query("CALL mysql.rds_kill(%s)", (conn_id,))
    except BackendUnavailable as err:
        code = error_code(err.__cause__)
        if code == UNKNOWN_THREAD:
            return
        if code != NO_PROCEDURE and code not in DENIED:
            raise
        cause = denied.__cause__ if denied.__cause__ is not None else denied
        raise BackendUnavailable(
            f"cannot KILL MySQL session {conn_id}: {one_line(cause)}; grant CONNECTION_ADMIN "
            "(MySQL 8) or SUPER to the failover user, or on RDS GRANT EXECUTE ON PROCEDURE "
            "mysql.rds_kill (see deploy/mysql/grants.sql)"
        ) from err


def _holds(query: Query, name: str, conn_id: int) -> bool:
    return bool(query("SELECT IS_USED_LOCK(%s) <=> %s", (name, conn_id))[0][0])


class OlderEpochSweep:
    """ZooKeeper mode / the metadata DB: end the sessions still holding older epochs' keeper
    locks. Child sessions carry no name MySQL can show (no application_name): they end with
    their processes, which the keeper proves gone."""

    def __init__(self, query: Query, cluster: str) -> None:
        self.query = query
        self.cluster = cluster

    def __call__(self, epoch: int) -> int:
        return kill(self.query, older_keepers(self.query, self.cluster, epoch, max(0, epoch - 16)))
