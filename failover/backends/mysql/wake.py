"""Wake standbys at once when the leader's lock goes (MySQL has no LISTEN/NOTIFY): the leader
holds a second named lock; each standby's watch session waits for it in GET_LOCK.

The wait is sent without reading the answer, so the daemon's select() sees the socket turn
readable when the lock is granted: the leader released it, or its session ended."""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from typing import Any

import pymysql
from pymysql.constants import COMMAND

from failover.backends.mysql.session import Session, SessionTimings
from failover.errors import BackendUnavailable

WAIT_SECONDS = 60  # the server answers 0 after this; the next watch_fd() waits again


class ReleaseWatch:
    """A standby's watch session on the wake lock `name`."""

    def __init__(
        self,
        dsn: str,
        name: str,
        timings: SessionTimings,
        on_warning: Callable[[str], None] | None = None,
        password: Callable[[], str] | None = None,
    ) -> None:
        self.name = name
        # The statement limit of this session outlasts the wait: under the backend timeout
        # MariaDB's max_statement_time (MySQL's max_execution_time) ended it every 2 s, and
        # each standby sent the wait again (0.5 statements a second for nothing).
        waits = SessionTimings(timings.lease, timings.statement_timeout, WAIT_SECONDS + 5.0)
        self.session = Session(dsn, waits, False, on_warning, password)
        self.pending = False

    def fileno(self) -> int | None:
        """The socket to select on, after sending the wait if none is under way."""
        if self.pending and self.session.connected:
            return self.session.fileno()
        self.pending = False
        try:
            conn: Any = self.session.connection()
            sql = f"SELECT GET_LOCK({conn.escape(self.name)}, {WAIT_SECONDS})"
            conn._execute_command(COMMAND.COM_QUERY, sql)
        except (BackendUnavailable, pymysql.MySQLError, OSError):
            self.session.close()
            return None
        self.pending = True
        return self.session.fileno()

    def changed(self) -> bool:
        """True when the wake lock was granted to us (the leader's is gone) or the session
        broke; the lock is given back at once, for the next standby and the next leader."""
        fd = self.session.fileno()
        if not self.pending or fd is None:
            return False
        if not select.select([fd], [], [], 0)[0]:
            return False
        self.pending = False
        conn: Any = self.session.conn
        try:
            conn._read_query_result()
            granted = conn._result.rows[0][0] == 1
            if granted:
                with conn.cursor() as cur:
                    cur.execute("DO RELEASE_LOCK(%s)", (self.name,))
        except (pymysql.MySQLError, OSError, IndexError, TypeError):
            self.session.close()
            return True
        return bool(granted)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session.close()
        self.pending = False
