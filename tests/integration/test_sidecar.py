"""Sidecar mode: the daemon and the keeper share only a socket directory, as two containers
of one pod would; the keeper is the scheduler container's command and is restarted like one."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import PROBE, Cluster, Sampler, read_records, wait_until

pytestmark = pytest.mark.integration


class Container:
    """Runs the keeper command and restarts it when it exits (restartPolicy: Always)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set() and self.restarts < 50:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    self.argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL
                )
            while self.proc.poll() is None and not self.stop.wait(0.05):
                pass
            if self.stop.is_set():
                break
            self.restarts += 1
            self.stop.wait(0.2)

    def close(self) -> None:
        self.stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.thread.join(timeout=10)


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[tuple[Cluster, dict[str, Container]]]:
    shared = tmp_path / "run-failover"  # the emptyDir both containers mount
    shared.mkdir()
    c = Cluster(tmp_path / "daemons", nodes=("p1", "p2"))
    containers: dict[str, Container] = {}
    for node in c.nodes:
        sock = shared / f"{node}.sock"
        probe = [sys.executable, PROBE, "--tag", c.tag, "--record", str(c.records), "--fork", "1"]
        containers[node] = Container(
            [sys.executable, "-m", "failover", "keeper", "--connect", str(sock), "--", *probe],
            tmp_path / f"{node}-keeper.log",
        )
    yield c, containers
    c.stop_all()
    for container in containers.values():
        container.close()


def test_sidecar_keeper_runs_child_only_while_its_daemon_leads(
    pod: tuple[Cluster, dict[str, Container]], tmp_path: Path
) -> None:
    c, containers = pod
    with Sampler(c.tag) as sampler:
        for node in c.nodes:
            c.settings["keeper.listen"] = str(tmp_path / "run-failover" / f"{node}.sock")
            c.start(node)
        leader, epoch = c.leader_child()
        ours = [r for r in read_records(c.records) if r["word"] == "start" and r["epoch"] == epoch]
        assert ours and ours[0]["node"] == leader  # FAILOVER_NODE reached the other container
        keeper_pid = containers[leader].proc.pid  # type: ignore[union-attr]
        c.signal(leader, signal.SIGKILL)
        new_leader, new_epoch = c.leader_child(exclude=[leader], timeout=20)
        assert int(new_epoch) > int(epoch)
        # The dead daemon's keeper killed its tree and exited; the "container" restarted.
        wait_until(
            lambda: containers[leader].restarts >= 1 and containers[leader].proc.pid != keeper_pid,  # type: ignore[union-attr]
            10,
            "the keeper container to restart",
        )
        c.start(leader)
        c.signal(new_leader, signal.SIGTERM)
        assert c.procs[new_leader].wait(timeout=20) == 0
        final, _ = c.leader_child(exclude=[new_leader], timeout=20)
        assert final == leader
    sampler.assert_clean()


def test_daemon_without_a_connected_keeper_does_not_lead(tmp_path: Path) -> None:
    c = Cluster(tmp_path, nodes=("lonely",), settings={"keeper.listen": str(tmp_path / "k.sock")})
    try:
        c.start("lonely")
        wait_until(
            lambda: any("no keeper has connected" in s for s in c.sentences("lonely")),
            15,
            "the daemon to say no keeper is connected",
        )
        assert not c.live_children()
    finally:
        c.stop_all()


def test_keeper_takes_init_and_go_arriving_in_one_read(tmp_path: Path) -> None:
    """A keeper that connected before its daemon led gets INIT and GO back to back; read
    together, the keeper used to take the GO for garbage after INIT and exit at once (the
    daemon saw "keeper died", crash loop; found in the podman pod form, #21)."""
    import json
    import socket
    import time

    path = tmp_path / "k.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(15)
    marker = tmp_path / "started"
    child = f"open({str(marker)!r}, 'w').close(); import time; time.sleep(60)"
    argv = [sys.executable, "-m", "failover", "keeper", "--connect", str(path), "--"]
    keeper = subprocess.Popen([*argv, sys.executable, "-c", child], stdin=subprocess.DEVNULL)
    conn = None
    try:
        conn, _ = server.accept()
        init = json.dumps({"args": ["--stop-timeout", "5"], "env": {}})
        deadline = time.clock_gettime(time.CLOCK_BOOTTIME) + 30
        conn.sendall(f"INIT {init}\nGO 1 {deadline:.6f}\n".encode())  # one segment
        wait_until(marker.exists, 15, "the keeper to start its child")
        conn.close()  # EOF: the keeper ends the tree and exits
        conn = None
        assert keeper.wait(timeout=15) == 0
    finally:
        if conn is not None:
            conn.close()
        server.close()
        if keeper.poll() is None:
            keeper.kill()
            keeper.wait(timeout=10)
