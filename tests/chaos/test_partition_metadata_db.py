"""ZooKeeper backend with a PostgreSQL metadata DB (FAULTS.md 6): the leader's host loses the
DB only, while ZooKeeper still answers it.

The leader runs in a network namespace and reaches both servers through forwarders; an
iptables rule in the namespace drops its packets to the DB forwarder only (no FIN, no RST:
the DB just goes silent). It keeps leading for `db_unreachable_resign_seconds`, then steps
down for a standby that reaches the DB; the new leader terminates the old child's lingering
DB session before it starts its own; after the heal nothing moves. With the DB down for
everybody the leader stays. Samplers: one child tree and one epoch's DB sessions at a time.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, DbSampler, Sampler, read_records, wait_until
from .conftest import Forwarder, Host

pytestmark = pytest.mark.chaos
LEASE = 4.0  # the first failing DB call hangs ~lease/2 (tcp_user_timeout) after the renew
RESIGN = 8.0  # db_unreachable_resign_seconds (the default, 2 x lease, spelled out)
STEADY = 6.0  # a taker reached the DB this long: max(lease, reconnect backoff cap + loop + timeout)


def drop_db_packets(host: Host, port: int, action: str) -> None:
    """Add (-A) or delete (-D) a rule dropping the namespace's packets to the DB forwarder."""
    rule = ["OUTPUT", "-d", host.host_ip, "-p", "tcp", "--dport", str(port), "-j", "DROP"]
    subprocess.run(
        [*host.exec_prefix(), "iptables-legacy", "-w", action, *rule],
        check=True,
        capture_output=True,
        timeout=10,
    )


def zk_db_cluster(tmp_path: Path, nodes: tuple[str, ...], zk_hosts: str, dsn: str) -> Cluster:
    return Cluster(
        tmp_path,
        nodes=nodes,
        settings={
            "backend": "zookeeper",
            "zookeeper.hosts": f"{zk_hosts}/dbcut-{uuid.uuid4().hex[:8]}",
            "metadata_dsn": dsn,
            "lease_seconds": str(LEASE),
            "zookeeper.db_unreachable_resign_seconds": str(RESIGN),
        },
        # The child holds a DB session named failover:<cluster>:<node>:<epoch>, like Airflow.
        probe_args=("--fork", "1", "--escape", "session", "--pg-dsn", dsn),
    )


def first(c: Cluster, node: str, pattern: str) -> str | None:
    return next((s for s in c.sentences(node) if re.search(pattern, s)), None)


def acquisitions(c: Cluster) -> int:
    return sum(s.startswith("acquired leadership") for n in c.nodes for s in c.sentences(n))


def test_leader_cut_from_the_metadata_db_only_hands_over_once(
    host: Host, zk_server: Any, pg_factory: Any, tmp_path: Path
) -> None:
    server = pg_factory()
    zk_forward = Forwarder(host.host_ip, zk_server.port)
    pg_forward = Forwarder(host.host_ip, server.port)
    direct = server.create_database("dbcut")
    dsn = direct.replace(f"127.0.0.1:{server.port}", f"{host.host_ip}:{pg_forward.listen_port}")
    c = zk_db_cluster(tmp_path, ("cut", "b", "c"), f"{host.host_ip}:{zk_forward.listen_port}", dsn)
    real_argv = c.argv
    c.argv = lambda node: (host.exec_prefix() if node == "cut" else []) + real_argv(node)  # type: ignore[method-assign]
    try:
        with Sampler(c.tag) as sampler, DbSampler(direct, c.cluster) as db:
            c.start("cut")
            leader, epoch = c.leader_child(timeout=30)
            assert leader == "cut"
            c.start("b")
            c.start("c")
            for node in ("b", "c"):
                wait_until(lambda n=node: first(c, n, "^no action: following leader cut"), 30, node)
            time.sleep(STEADY + 1.0)  # both standbys count as takers
            t0 = time.monotonic()
            drop_db_packets(host, pg_forward.listen_port, "-A")
            wait_until(
                lambda: first(c, "cut", "metadata DB has been unreachable"),
                RESIGN + 20,
                "the cut-off leader to step down",
            )
            resigned = time.monotonic() - t0
            new_leader, new_epoch = c.leader_child(exclude=["cut"], timeout=20)
            took = time.monotonic() - t0
            assert new_leader in ("b", "c") and int(new_epoch) > int(epoch)
            taken = first(c, new_leader, "^acquired leadership")
            assert taken and re.search(r"terminated [1-9]\d* older session\(s\)", taken), taken
            print(f"\n{first(c, 'cut', 'metadata DB has been unreachable')}\n{taken}")
            wait_until(
                lambda: first(c, "cut", "^standby: the metadata DB is unreachable from here"),
                4 * LEASE,
                "the cut-off node to hold back",
            )
            before_heal = acquisitions(c)
            drop_db_packets(host, pg_forward.listen_port, "-D")
            t_heal = time.monotonic()
            wait_until(
                lambda: c.sentences("cut")[-1].startswith(
                    f"no action: following leader {new_leader}"
                ),
                6 * LEASE,
                "the healed node to follow as a plain standby",
            )
            rejoined = time.monotonic() - t_heal
            for _ in range(int(4 * LEASE / 0.5)):  # no flapping for four leases
                time.sleep(0.5)
                assert c.leader_child(timeout=5) == (new_leader, new_epoch)
            assert acquisitions(c) == before_heal == 2
            # The cut-off leader's child ran until the hand-over, then stopped gracefully: the
            # DB hang never delayed a renew past the keeper's deadline.
            records = read_records(c.records)
            ran = sorted(r["word"] for r in records if r["node"] == "cut")
            assert ran == ["grandchild-start", "grandchild-term", "start", "term"], ran
            stopped = next(float(r["t"]) for r in records if r["word"] == "term")
            started = next(
                float(r["t"]) for r in records if (r["word"], r["node"]) == ("start", new_leader)
            )
        sampler.assert_clean()
        db.assert_clean()
        assert sampler.epochs_seen == {epoch, new_epoch}
        assert resigned >= RESIGN - 0.1, resigned  # never before the configured time
        assert resigned <= RESIGN + 15, resigned  # generous: the first failing call can hang
        print(
            f"metadata DB cut: resigned after {resigned:.2f} s (configured {RESIGN:g} s), "
            f"{new_leader}'s child running after {took:.2f} s ({started - stopped:.2f} s after the "
            f"old child's SIGTERM); healed node following after {rejoined:.2f} s"
        )
    finally:
        c.stop_all()
        zk_forward.close()
        pg_forward.close()


def test_metadata_db_down_for_everybody_keeps_the_leader(
    zk_server: Any, pg_factory: Any, tmp_path: Path
) -> None:
    server = pg_factory()
    dsn = server.create_database("dbdown")
    c = zk_db_cluster(tmp_path, ("a", "b"), zk_server.hosts, dsn)
    try:
        with Sampler(c.tag) as sampler, DbSampler(dsn, c.cluster) as db:
            c.start("a")
            owner = c.leader_child(timeout=30)
            c.start("b")
            wait_until(lambda: first(c, "b", "^no action: following leader a"), 30, "b")
            time.sleep(STEADY + 1.0)
            pids = set(c.live_children())
            server.stop()
            t0 = time.monotonic()
            for _ in range(int(3 * RESIGN / 0.5)):  # three times the resign delay
                time.sleep(0.5)
                assert c.leader_child(timeout=5) == owner
            assert first(c, "a", r"\(metadata DB unreachable, and from no ready standby either\)")
            down_for = time.monotonic() - t0
            server.start()
            t_back = time.monotonic()
            recovered = None
            for _ in range(int((STEADY + 4 * LEASE) / 0.5)):  # the healing moves nothing either
                time.sleep(0.5)
                assert c.leader_child(timeout=5) == owner
                plain = c.sentences("a")[-1] == f"no action: I am the leader with epoch {owner[1]}"
                if recovered is None and plain:
                    recovered = time.monotonic() - t_back
            assert recovered is not None, "the leader never reached the DB again"
            assert set(c.live_children()) == pids  # the very same child tree all along
            assert acquisitions(c) == 1
        sampler.assert_clean()
        db.assert_clean()
        print(
            f"\nmetadata DB down for everybody for {down_for:.1f} s: leader {owner} kept its "
            f"child; it reached the DB again {recovered:.1f} s after the restart"
        )
    finally:
        c.stop_all()
