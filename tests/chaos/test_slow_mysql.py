"""A slow or frozen MariaDB under the mysql backend (FAULTS.md 21): every packet between the
leader's host and the server delayed by 2 s; or the server itself frozen (SIGSTOP) past the
lease, so every call hangs until the half-lease watchdog cuts it.

Either way the leader's child is gone by the self-fence deadline, no daemon crashes or loops,
and the cluster settles on one leader once the server answers again.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, Sampler, read_records, wait_until
from ..integration.test_mysql_cluster import KeeperLockSampler
from ..netns import Host
from ..servers import FAILOVER_PASSWORD, FAILOVER_USER

pytestmark = pytest.mark.chaos
LEASE = 3.0


def test_slow_mysql_hands_over_without_a_restart_loop(
    host: Host, my_factory: Any, tmp_path: Path
) -> None:
    server = my_factory(settings={"bind_address": f"127.0.0.1,{host.host_ip}"})
    server.create_database("t_slow")
    dsn = server.dsn("t_slow", user=FAILOVER_USER, password=FAILOVER_PASSWORD)
    c = Cluster(
        tmp_path,
        nodes=("slow", "fast"),
        settings={
            "backend": "mysql",
            "mysql.dsn": dsn.replace("127.0.0.1", host.host_ip),
            "lease_seconds": str(LEASE),
        },
        probe_args=("--fork", "1", "--escape", "session"),
    )
    real_argv = c.argv
    c.argv = lambda node: (host.exec_prefix() if node == "slow" else []) + real_argv(node)  # type: ignore[method-assign]
    try:
        with Sampler(c.tag) as sampler, KeeperLockSampler(server.dsn(), c.cluster) as locks:
            c.start("slow")
            leader, epoch = c.leader_child(timeout=30)
            assert leader == "slow"
            c.start("fast")
            time.sleep(1.0)
            t0 = time.monotonic()
            host.delay(2000)
            wait_until(
                lambda: all(p["node"] != "slow" for p in c.live_children().values()),
                LEASE + 3,
                "the slow leader's tree to die by its self-fence deadline",
            )
            died = time.monotonic() - t0
            new_leader, new_epoch = c.leader_child(exclude=["slow"], timeout=4 * LEASE + 10)
            took = time.monotonic() - t0
            assert new_leader == "fast" and int(new_epoch) > int(epoch)
            time.sleep(max(0.0, t0 + 2 * LEASE + 3 - time.monotonic()))
            slow_starts = sum(
                1
                for r in read_records(c.records)
                if r["word"] == "start" and r["node"] == "slow" and r["epoch"] != epoch
            )
            host.undelay()
            wait_until(
                lambda: any("following leader fast" in s for s in c.sentences("slow")[-3:]),
                30,
                "the slow node to follow the new leader once the delay is gone",
            )
            assert c.leader_child() == (new_leader, new_epoch)
            assert all(p.poll() is None for p in c.procs.values()), c.dump_logs()
        sampler.assert_clean()
        locks.assert_clean()
    finally:
        c.stop_all()
    print(f"\nslow mysql +2000 ms: old tree dead after {died:.2f} s, takeover {took:.2f} s")
    assert slow_starts == 0
    assert died <= LEASE + 1.0, died
    assert took <= 3 * LEASE + 3, took


def test_frozen_server_calls_are_cut_by_the_watchdog(my_factory: Any, tmp_path: Path) -> None:
    server = my_factory()
    c = Cluster(
        tmp_path,
        settings={"backend": "mysql", "mysql.dsn": server.create_database("t_frozen")},
        probe_args=("--fork", "1", "--escape", "session"),
    )
    try:
        with Sampler(c.tag) as sampler:
            c.start_all()
            _, epoch = c.leader_child()
            t0 = time.monotonic()
            os.kill(server.pid, signal.SIGSTOP)
            try:
                wait_until(lambda: not c.live_children(), LEASE + 2, "the child tree to die")
                died = time.monotonic() - t0
                time.sleep(2 * LEASE)  # frozen for ~3 leases: nobody may lead
                assert not c.live_children()
                sentences = [s for n in c.nodes for s in c.sentences(n)]
                assert any("half of lease_seconds" in s for s in sentences), sentences[-10:]
            finally:
                os.kill(server.pid, signal.SIGCONT)
            wait_until(
                lambda: (o := c.leader_child(timeout=30)) and int(o[1]) > int(epoch),
                40,
                "a newer epoch's child once the server thaws",
            )
            assert all(p.poll() is None for p in c.procs.values()), c.dump_logs()
        sampler.assert_clean()
    finally:
        c.stop_all()
    assert died <= LEASE + 1.0, died
