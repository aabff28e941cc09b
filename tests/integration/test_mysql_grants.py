"""Least privilege on MariaDB: a cluster on the user of deploy/mysql/grants.sql elects,
fences a killed leader's keeper (KILL of its own account's session), keeps its tables, and
releases dead schedulers' job rows - with nothing more than the file grants."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from failover.backends.mysql.jobs import JobTable

from ..harness import Cluster, Sampler, wait_until
from .test_mysql_backend import JOB_DDL
from .test_mysql_cluster import KeeperLockSampler, query

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def least_user(my_server: Any, dbname: str) -> str:
    user = f"fo_{dbname[-8:]}"
    grants = (ROOT / "deploy/mysql/grants.sql").read_text()
    grants = grants.replace("`airflow`", f"`{dbname}`").replace("'failover'@", f"'{user}'@")
    grants = grants.replace("a long random password", "least-pw")
    code = "\n".join(ln for ln in grants.splitlines() if not ln.lstrip().startswith("--"))
    for statement in code.split(";"):
        if statement.strip():
            my_server.query(statement)
    return str(my_server.dsn(dbname, user=user, password="least-pw"))


def test_cluster_on_the_grants_file_user(my_server: Any, my_dsn: str, tmp_path: Path) -> None:
    dbname = my_dsn.rsplit("/", 1)[1]
    query(my_dsn, JOB_DDL)
    query(
        my_dsn,
        "INSERT INTO job (job_type, state, hostname) VALUES ('SchedulerJob', 'running', 'x')",
    )
    dsn = least_user(my_server, dbname)
    c = Cluster(
        tmp_path,
        settings={"backend": "mysql", "mysql.dsn": dsn},
        probe_args=("--fork", "1", "--escape", "session"),
    )
    try:
        with Sampler(c.tag) as sampler, KeeperLockSampler(my_dsn, "t") as locks:
            c.start_all()
            leader, epoch = c.leader_child()
            c.signal(leader, signal.SIGKILL)
            _, new_epoch = c.leader_child(exclude=[leader], timeout=20)
            assert int(new_epoch) > int(epoch)
            wait_until(
                lambda: len(query(my_dsn, "SELECT node FROM failover_member")) == 3, 10, "members"
            )
        sampler.assert_clean()
        locks.assert_clean()
    finally:
        c.stop_all()
    warnings: list[str] = []
    released: list[int] = []
    table = JobTable(dsn, 2.0, None, warnings.append, None, released.append, 3.0)
    try:
        assert table.baseline() == 1 and released == [1] and not warnings
    finally:
        table.close()
    with pytest.raises(Exception, match="denied"):
        query(dsn, "UPDATE job SET hostname = 'y'")  # nothing else of Airflow's is writable
