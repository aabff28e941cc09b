"""The keeper's end of a dead daemon's ZooKeeper session, on the real server: the packets
themselves, a keeper whose daemon lives on (nothing happens), and one that cannot reach
ZooKeeper (it gives up on time)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from failover.keeper.launcher import KeeperLauncher
from failover.keeper.proof import boottime
from failover.keeper.zksession import Ticket, end_session

from ..harness import PROBE, alive, read_records, tagged_processes, wait_until
from .test_keeper import lines_until

pytestmark = pytest.mark.integration
RELEASED = b'{"released":true,"released_by":"keeper"}'


@pytest.fixture
def session(zk_server: Any) -> Iterator[tuple[KazooClient, Ticket]]:
    """A live session holding a contender node, and the ticket to end it."""
    chroot = f"/zks-{uuid.uuid4().hex}"
    client = KazooClient(hosts=zk_server.hosts, timeout=10)
    client.start(timeout=15)
    client.create(f"{chroot}/failover/t/leader", b'{"released":false}', makepath=True)
    client.create(f"{chroot}/failover/t/c_n1_0000000000", b"{}", ephemeral=True)
    session_id, password = client.client_id
    host, port = zk_server.hosts.rsplit(":", 1)
    ticket = Ticket(
        hosts=((host, int(port)),),
        session_id=session_id,
        password=password,
        timeout_ms=2000,
        contender=f"{chroot}/failover/t/c_n1_0000000000",
        breadcrumb=f"{chroot}/failover/t/leader",
        released=RELEASED,
    )
    yield client, ticket
    client.stop()
    client.close()


def observe(hosts: str, ticket: Ticket) -> tuple[bytes, bool]:
    """(breadcrumb data, contender exists) seen from another session."""
    other = KazooClient(hosts=hosts, timeout=10)
    other.start(timeout=15)
    try:
        return other.get(ticket.breadcrumb)[0], other.exists(ticket.contender) is not None
    finally:
        other.stop()
        other.close()


def test_marks_released_and_closes(session: tuple[KazooClient, Ticket], zk_server: Any) -> None:
    _, ticket = session
    done = end_session(ticket, 5.0)
    assert done == "marked the breadcrumb released and closed the session"
    assert observe(zk_server.hosts, ticket) == (RELEASED, False)


def test_contender_gone_leaves_the_breadcrumb(
    session: tuple[KazooClient, Ticket], zk_server: Any
) -> None:
    client, ticket = session
    client.delete(ticket.contender)
    done = end_session(ticket, 5.0)
    assert done == "breadcrumb not marked (no node); closed the session"
    assert observe(zk_server.hosts, ticket) == (b'{"released":false}', False)


def test_an_expired_session_is_left_alone(
    session: tuple[KazooClient, Ticket], zk_server: Any
) -> None:
    client, ticket = session
    client.stop()  # closes the session
    assert end_session(ticket, 5.0) == "the session had expired already"
    assert observe(zk_server.hosts, ticket) == (b'{"released":false}', False)


def test_keeper_leaves_a_live_daemons_session_alone(
    session: tuple[KazooClient, Ticket], zk_server: Any, tmp_path: Path, capfd: Any
) -> None:
    """End of stream while the daemon (here: this test) still runs: no proof it died, so the
    tree is killed but the session is not touched."""
    client, ticket = session
    tag = f"probe-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records.log"
    command = [sys.executable, PROBE, "--tag", tag, "--record", str(records)]
    link = KeeperLauncher().launch(command, dict(os.environ), 5.0, ("--name", "failover:t:k"))
    link.send(f"GO 1 {boottime() + 30:.6f}")
    link.send(ticket.line())
    lines_until(link, "STARTED")
    wait_until(lambda: read_records(records), 10, "the probe to start")
    link.sock.close()
    wait_until(lambda: not tagged_processes(tag), 5, "the tree to die after EOF")
    assert link.proc is not None and link.proc.wait(timeout=5) == 0
    assert "still runs: its ZooKeeper session is left alone" in capfd.readouterr().err
    assert observe(zk_server.hosts, ticket) == (b'{"released":false}', True)
    assert client.connected


FAKE_DAEMON = """
import os, sys, time
from failover.keeper.launcher import KeeperLauncher
from failover.keeper.proof import boottime
link = KeeperLauncher().launch(sys.argv[2:], dict(os.environ), 5.0, ("--name", "failover:t:k"))
link.send(f"GO 1 {boottime() + 60:.6f}")
link.send(sys.stdin.readline().strip())
for _ in range(1000):
    if any(line.startswith("STARTED") for line in link.read_lines()):
        break
    time.sleep(0.01)
print(link.pid, flush=True)
time.sleep(60)
"""


def test_keeper_that_cannot_reach_zookeeper_exits_on_time(tmp_path: Path) -> None:
    """The daemon is killed; ZooKeeper accepts connections but never answers: the tree dies
    at once, the keeper gives up after the session timeout (2 s) and exits."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted, never answered
    ticket = Ticket(
        hosts=(("127.0.0.1", silent.getsockname()[1]),),
        session_id=0x1234,
        password=bytes(16),
        timeout_ms=2000,
        contender="/failover/t/c_n1_0000000000",
        breadcrumb="/failover/t/leader",
        released=RELEASED,
    )
    tag = f"probe-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records.log"
    err = open(tmp_path / "keeper.err", "wb")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FAKE_DAEMON,
            "-",
            sys.executable,
            PROBE,
            "--tag",
            tag,
            "--record",
            str(records),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
    )
    err.close()
    try:
        assert daemon.stdin is not None and daemon.stdout is not None
        daemon.stdin.write(ticket.line().encode() + b"\n")
        daemon.stdin.flush()
        keeper = int(daemon.stdout.readline())
        wait_until(lambda: read_records(records), 10, "the probe to start")
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=5)
        wait_until(lambda: not tagged_processes(tag), 1.0, "the tree to die at once")
        wait_until(lambda: not alive(keeper), 6.0, "the keeper to give up and exit")
        took = time.monotonic() - t0
        text = (tmp_path / "keeper.err").read_text()
        assert "ZooKeeper not reached within 2 s" in text, text
        assert 1.5 < took < 4.0, took
    finally:
        silent.close()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=5)
