"""Fencing in MySQL / MariaDB by named lock: find the sessions holding older epochs' keeper
locks (`IS_USED_LOCK`) and end them with `KILL`, or `CALL mysql.rds_kill` where KILL is denied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from failover.backends.mysql.session import DENIED, error_code, one_line
from failover.errors import BackendUnavailable
from failover.keeper.proof import keeper_lock_name

Query = Callable[..., list[tuple[Any, ...]]]

MAX_EPOCHS = 256  # keeper locks looked up per fence, newest first (one statement)
KILL_WAIT = 1.0  # seconds for a killed session to let its locks go
NO_PROCEDURE = 1305  # CALL of a procedure that does not exist (not RDS)


def older_keepers(query: Query, cluster: str, epoch: int, fenced: int) -> dict[int, int]:
    """{epoch: connection id} of the keeper locks still held for epochs in (fenced, epoch)."""
    epochs = list(range(max(fenced + 1, epoch - MAX_EPOCHS, 1), epoch))
    if not epochs:
        return {}
    columns = ", ".join("IS_USED_LOCK(%s)" for _ in epochs)
    row = query(f"SELECT {columns}", tuple(keeper_lock_name(cluster, e) for e in epochs))[0]
    return {e: int(holder) for e, holder in zip(epochs, row, strict=True) if holder is not None}


def kill(query: Query, ids: Sequence[int], wait: float = KILL_WAIT) -> int:
    """End the sessions `ids`; how many are gone within `wait` seconds. KILL needs no
    privilege for our own account's sessions; otherwise CONNECTION_ADMIN (MySQL 8), SUPER,
    or on RDS for MySQL `mysql.rds_kill`. Neither: a BackendUnavailable naming the grant."""
    for conn_id in ids:
        try:
            query("KILL CONNECTION %s", (int(conn_id),))
        except BackendUnavailable as err:
            code = error_code(err.__cause__)
            if code == 1094:  # unknown thread id: it is gone already
                continue
            if code not in DENIED:
                raise
            _rds_kill(query, int(conn_id), err)
    left = set(ids)
    end = time.monotonic() + wait
    for _ in range(int(wait / 0.02) + 1):
        left = {i for i in left if _exists(query, i)}
        if not left or time.monotonic() >= end:
            break
        time.sleep(0.02)
    return len(set(ids) - left)


def _rds_kill(query: Query, conn_id: int, denied: BackendUnavailable) -> None:
    try:
        query("CALL mysql.rds_kill(%s)", (conn_id,))
    except BackendUnavailable as err:
        code = error_code(err.__cause__)
        if code == 1094:
            return
        if code != NO_PROCEDURE and code not in DENIED:
            raise
        cause = denied.__cause__ if denied.__cause__ is not None else denied
        raise BackendUnavailable(
            f"cannot KILL MySQL session {conn_id}: {one_line(cause)}; grant CONNECTION_ADMIN "
            "(MySQL 8) or SUPER to the failover user, or on RDS GRANT EXECUTE ON PROCEDURE "
            "mysql.rds_kill (see deploy/mysql/grants.sql)"
        ) from err


def _exists(query: Query, conn_id: int) -> bool:
    rows = query("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (conn_id,))
    return bool(rows[0][0])


class OlderEpochSweep:
    """ZooKeeper mode / the metadata DB: end the sessions still holding older epochs' keeper
    locks. Child sessions carry no name MySQL can show (no application_name): they end with
    their processes, which the keeper proves gone."""

    def __init__(self, query: Query, cluster: str) -> None:
        self.query = query
        self.cluster = cluster

    def __call__(self, epoch: int) -> int:
        holders = older_keepers(self.query, self.cluster, epoch, max(0, epoch - 16))
        return kill(self.query, sorted(holders.values()))
