"""What real MySQL-backend daemons cost the server (issue #20): at most 3 sessions per daemon
(leader: lock, member store, keeper; standby: lock, which also carries its member statements,
the wake-lock waiter, keeper) and 2 statements per standby tick (the flags read, which also
shows who holds the lock, and the heartbeat). Counted by MariaDB itself: its PROCESSLIST
mapped to our processes through their loopback sockets, and its general log."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from failover.keeper.proctree import tree_members

from ..harness import Cluster, wait_until
from ..sessions import log_size, log_tail, my_count_log, my_ports, socket_owners

pytestmark = pytest.mark.integration

FLAGS_READ = "SELECT paused, switchover_to"


def daemon_sessions(c: Cluster, server: Any) -> dict[str, set[int]]:
    """node -> the server connection ids its daemon and its keeper hold."""
    ports = my_ports(server)
    out: dict[str, set[int]] = {}
    for node, proc in c.procs.items():
        pids = {proc.pid} | tree_members(proc.pid)
        owned = set(socket_owners(pids))
        out[node] = {conn for conn, port in ports.items() if port in owned}
    return out


@pytest.fixture
def cluster(tmp_path: Path, my_dsn: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, settings={"backend": "mysql", "mysql.dsn": my_dsn})
    yield c
    c.stop_all()


def test_three_sessions_per_daemon_and_two_statements_per_standby_tick(
    cluster: Cluster, my_server: Any
) -> None:
    if not hasattr(my_server, "dir"):
        pytest.skip("needs the general log (a local MariaDBServer)")
    c = cluster
    c.start_all()
    leader, _ = c.leader_child(timeout=60)
    standbys = [n for n in c.nodes if n != leader]

    def settled() -> bool:  # every standby follows, its waiter and warm keeper connected
        held = daemon_sessions(c, my_server)
        return all(
            len(held[n]) == 3 and any("following leader" in s for s in c.sentences(n)[-3:])
            for n in standbys
        )

    wait_until(settled, 30, "standbys following with their waiter and warm keeper")
    held = daemon_sessions(c, my_server)
    for node, mine in held.items():
        assert len(mine) == 3, f"{node}: {sorted(mine)} ({held})"
    log = my_server.dir / "cost-general.log"
    my_server.query(f"SET GLOBAL general_log_file = '{log}'")
    my_server.query("SET GLOBAL general_log = ON")
    try:
        time.sleep(1.0)
        start = log_size(log)
        time.sleep(5.0)
        end = log_size(log)
    finally:
        my_server.query("SET GLOBAL general_log = OFF")
    text = log_tail(log, start)[: end - start]
    counts = my_count_log(text)
    ticks = Counter(
        int(line.split()[-1])
        for line in (x.split(" Query\t")[0] for x in text.splitlines() if FLAGS_READ in x)
    )
    assert daemon_sessions(c, my_server) == held, "a session changed during the window"
    report = []
    for node in c.nodes:
        total = sum(counts[conn] for conn in held[node])
        reads = sum(ticks[conn] for conn in held[node])  # one flags read a tick
        report.append(f"{node}: {total} statements, {reads} ticks")
        assert reads >= 5, report  # loop 0.5 s: ~9 ticks in 5 s
        if node != leader:
            assert total <= 2 * reads + 1, report
    print("\n" + "; ".join(report) + f" (leader {leader})")
