"""A slow database (FAULTS.md 21): every packet between the leader's host and PostgreSQL is
delayed (+2 s, +5 s), nothing is lost, the TCP sessions stay up as long as they can.

The leader runs in a network namespace; tests/netdelay.py holds each packet it sends for the
delay (netem's job; this kernel may lack sch_netem). The leader must not crash and must not
flap: either its renewals still fit the lease, or its child is stopped by the self-fence
deadline and a standby takes over. Once the delay is gone the cluster settles on one leader.
PostgreSQL backend with a short and a long lease; ZooKeeper backend with only the metadata
DB slow. Samplers: one child tree and one epoch's DB sessions at every 50 ms sample.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, DbSampler, Sampler, read_records, wait_until
from ..netns import Forwarder, Host

pytestmark = pytest.mark.chaos


@dataclass
class Outcome:
    died: float  # delay on -> the slow leader's child tree gone
    took: float  # delay on -> the standby's child started
    slow_starts: int  # child starts on the slow node while the delay was on
    rejoined: float  # delay off -> the slow node follows the new leader


def slow_leader_run(
    host: Host, pg_factory: Any, tmp_path: Path, delay_ms: int, timings: dict[str, str]
) -> Outcome:
    server = pg_factory(settings={"listen_addresses": f"127.0.0.1,{host.host_ip}"})
    with open(server.data_dir / "pg_hba.conf", "a") as f:
        f.write("host all all 10.231.0.0/16 trust\n")
    server.execute("SELECT pg_reload_conf()")
    dsn = server.create_database("slow").replace("127.0.0.1", host.host_ip)
    lease = float(timings["lease_seconds"])
    c = Cluster(
        tmp_path,
        nodes=("slow", "fast"),
        settings={"backend": "postgres", "postgres.dsn": dsn, **timings},
        probe_args=("--fork", "1", "--escape", "session", "--pg-dsn", dsn),
    )
    real_argv = c.argv
    c.argv = lambda node: (host.exec_prefix() if node == "slow" else []) + real_argv(node)  # type: ignore[method-assign]
    try:
        with (
            Sampler(c.tag) as sampler,
            DbSampler(dsn.replace(host.host_ip, "127.0.0.1"), c.cluster) as db,
        ):
            c.start("slow")
            leader, epoch = c.leader_child(timeout=3 * lease + 20)  # a fresh server: a lease
            assert leader == "slow"
            c.start("fast")
            time.sleep(1.0)  # the standby is warm and following
            t0 = time.monotonic()
            host.delay(delay_ms)
            wait_until(
                lambda: all(p["node"] != "slow" for p in c.live_children().values()),
                lease + 3,
                "the slow leader's tree to die by its self-fence deadline",
            )
            died = time.monotonic() - t0
            new_leader, new_epoch = c.leader_child(exclude=["slow"], timeout=4 * lease + 10)
            took = time.monotonic() - t0
            assert new_leader == "fast" and int(new_epoch) > int(epoch)
            time.sleep(max(0.0, t0 + 2 * lease + 5 - time.monotonic()))  # delay stays on
            slow_starts = sum(
                1
                for r in read_records(c.records)
                if r["word"] == "start" and r["node"] == "slow" and r["epoch"] != epoch
            )
            assert c.procs["slow"].poll() is None, c.dump_logs()
            host.undelay()
            t1 = time.monotonic()
            wait_until(
                lambda: any("following leader fast" in s for s in c.sentences("slow")[-3:]),
                30,
                "the slow node to follow the new leader once the delay is gone",
            )
            rejoined = time.monotonic() - t1
            time.sleep(1.0)
            assert c.leader_child() == (new_leader, new_epoch)
            assert all(p.poll() is None for p in c.procs.values()), c.dump_logs()
        sampler.assert_clean()
        db.assert_clean()
    finally:
        c.stop_all()
    assert all(p.returncode == 0 for p in c.procs.values()), c.dump_logs()
    return Outcome(died, took, slow_starts, rejoined)


@pytest.mark.parametrize("delay_ms", [2000, 5000])
def test_slow_db_with_a_short_lease_hands_over(
    host: Host, pg_factory: Any, tmp_path: Path, delay_ms: int
) -> None:
    # Lease 3 s: a 2 s round trip cannot fit; the leader's lock session dies by tcp_user_timeout
    # (half a lease) and it cannot reconnect in time, so it self-fences and the standby leads.
    lease = 3.0
    out = slow_leader_run(host, pg_factory, tmp_path, delay_ms, {"lease_seconds": str(lease)})
    print(
        f"\nslow db +{delay_ms} ms, lease {lease:g} s: old tree dead after {out.died:.2f} s, "
        f"standby's child after {out.took:.2f} s, restarts on the slow node {out.slow_starts}, "
        f"rejoined {out.rejoined:.2f} s after the delay ended"
    )
    assert out.slow_starts == 0  # no restart loop on the slow node
    assert out.died <= lease + 1.0, out.died
    assert out.took <= 3 * lease + 3, out.took


def test_slow_db_with_a_long_lease_steps_down_instead_of_a_restart_loop(
    host: Host, pg_factory: Any, tmp_path: Path
) -> None:
    # Lease 10 s: the session survives a 2 s round trip, but every renew answers later than
    # backend_timeout_seconds, so none counts as proof: the leader stops its child before the
    # self-fence deadline and releases, instead of having it killed and restarted in a loop.
    lease = 10.0
    timings = {
        "lease_seconds": str(lease),
        "loop_seconds": "1",
        "backend_timeout_seconds": "1",
        "self_fence_margin_seconds": "1",
    }
    out = slow_leader_run(host, pg_factory, tmp_path, 2000, timings)
    print(
        f"\nslow db +2000 ms, lease {lease:g} s: old tree dead after {out.died:.2f} s, "
        f"standby's child after {out.took:.2f} s, restarts on the slow node {out.slow_starts}, "
        f"rejoined {out.rejoined:.2f} s after the delay ended"
    )
    assert out.slow_starts == 0
    assert out.died <= lease + 1.0, out.died
    assert out.took <= 3 * lease, out.took


def test_slow_metadata_db_in_zookeeper_mode_hands_over_once(
    host: Host, zk_server: Any, pg_factory: Any, tmp_path: Path
) -> None:
    # ZooKeeper answers the leader at once; only its metadata DB is 2 s away. Its DB sessions
    # die by tcp_user_timeout, so it counts as cut from the DB and steps down (once) for the
    # standby that reaches it (db_unreachable_resign_seconds, default 2 x lease).
    lease = 3.0
    server = pg_factory(settings={"listen_addresses": f"127.0.0.1,{host.host_ip}"})
    with open(server.data_dir / "pg_hba.conf", "a") as f:
        f.write("host all all 10.231.0.0/16 trust\n")
    server.execute("SELECT pg_reload_conf()")
    direct = server.create_database("slowzk")
    dsn = direct.replace("127.0.0.1", host.host_ip)
    zk_forward = Forwarder(host.host_ip, zk_server.port)
    c = Cluster(
        tmp_path,
        nodes=("slow", "fast"),
        settings={
            "backend": "zookeeper",
            "zookeeper.hosts": f"{host.host_ip}:{zk_forward.listen_port}/slow-{uuid.uuid4().hex}",
            "metadata_dsn": dsn,
            "lease_seconds": str(lease),
        },
        probe_args=("--fork", "1", "--escape", "session", "--pg-dsn", dsn),
    )
    real_argv = c.argv
    c.argv = lambda node: (host.exec_prefix() if node == "slow" else []) + real_argv(node)  # type: ignore[method-assign]
    try:
        with Sampler(c.tag) as sampler, DbSampler(direct, c.cluster) as db:
            c.start("slow")
            leader, epoch = c.leader_child(timeout=30)
            assert leader == "slow"
            c.start("fast")
            wait_until(lambda: "following leader slow" in " ".join(c.sentences("fast")), 30, "fast")
            time.sleep(2 * lease)  # the standby has reached the DB steadily: it may take over
            t0 = time.monotonic()
            host.delay(2000, dport=server.port)
            new_leader, new_epoch = c.leader_child(exclude=["slow"], timeout=2 * lease + 20)
            took = time.monotonic() - t0
            time.sleep(2 * lease)
            host.undelay()
            t1 = time.monotonic()
            wait_until(
                lambda: c.sentences("slow")[-1].startswith("no action: following leader fast"),
                30,
                "the slow node to follow once the delay is gone",
            )
            rejoined = time.monotonic() - t1
            for _ in range(int(2 * lease / 0.5)):  # no flapping for two leases
                time.sleep(0.5)
                assert c.leader_child(timeout=5) == (new_leader, new_epoch)
            assert all(p.poll() is None for p in c.procs.values()), c.dump_logs()
            acquired = sum(
                s.startswith("acquired leadership") for n in c.nodes for s in c.sentences(n)
            )
            starts = [r for r in read_records(c.records) if r["word"] == "start"]
        sampler.assert_clean()
        db.assert_clean()
    finally:
        c.stop_all()
        zk_forward.close()
    print(
        f"\nslow metadata db +2000 ms, zookeeper lease {lease:g} s: standby's child after "
        f"{took:.2f} s, {acquired} acquisitions, {len(starts)} child starts, slow node following "
        f"{rejoined:.2f} s after the delay ended"
    )
    assert new_leader == "fast" and int(new_epoch) > int(epoch)
    assert acquired == 2 and len(starts) == 2  # one handover, no restarts
    assert took <= 2 * lease + 15, took
