"""The daemon as PID 1 of a container (a new PID namespace, no tini): orphans are reaped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from failover.keeper import proctree

from ..harness import Cluster, tagged_processes, wait_until

pytestmark = pytest.mark.integration


def test_daemon_as_pid1_reaps_orphaned_grandchildren(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare (util-linux) is needed", pytrace=False)
    c = Cluster(tmp_path, nodes=("c1",), probe_args=("--fork", "2", "--escape", "session"))
    argv = [unshare, "--pid", "--fork", "--mount-proc", "--kill-child", *c.argv("c1")]
    log = open(tmp_path / "c1.log", "ab")
    outer = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    daemon = 0
    try:
        old = set(
            wait_until(
                lambda: len(tagged_processes(c.tag)) == 3 and tagged_processes(c.tag),
                20,
                "probe and grandchildren",
            )
        )
        kids = {pid for pid, (_, ppid, _) in proctree.snapshot().items() if ppid == outer.pid}
        (daemon,) = kids  # unshare's child: PID 1 of the namespace
        keepers = [
            p
            for p, (_, ppid, _) in proctree.snapshot().items()
            if ppid == daemon and b"failover.keeper" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        assert keepers
        for keeper in keepers:
            os.kill(keeper, signal.SIGKILL)  # the probe dies by PDEATHSIG; grandchildren orphan

        def no_zombies_under_daemon() -> bool:
            return not [
                p
                for p, (state, ppid, _) in proctree.snapshot().items()
                if ppid == daemon and state == "Z"
            ]

        # (the daemon then restarts its child: only the old tree must go)
        wait_until(
            lambda: not old & set(tagged_processes(c.tag)), 15, "the orphaned tree to be killed"
        )
        wait_until(no_zombies_under_daemon, 15, "PID 1 to reap every zombie")
    finally:
        if daemon:
            os.kill(daemon, signal.SIGTERM)  # a graceful stop of PID 1 ends the namespace
        outer.send_signal(signal.SIGTERM)
        try:
            outer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            outer.kill()
            outer.wait()
        log.close()
