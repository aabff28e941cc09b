"""Three real daemons on the ZooKeeper backend, under kill -9, SIGTERM, SIGSTOP, server stops
shorter and longer than the session, an injected session expiry and a switchover.

A sampler checks every 50 ms that at most one epoch's child tree is alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from ..harness import Cluster, Sampler, read_records, wait_until
from ..servers import free_port
from .test_zookeeper_backend import ZkProxy, expire_session

pytestmark = pytest.mark.integration

LEASE = 3.0  # also the requested session timeout; the session fixture server grants 0.4..4 s
TIMINGS = {  # as tests/harness.Cluster runs the daemons
    "lease_seconds": "3",
    "loop_seconds": "0.5",
    "backend_timeout_seconds": "0.5",
    "self_fence_margin_seconds": "0.5",
    "http.listen": "",
}


def zk_cluster(root: Path, hosts: str | None, **settings: str) -> Cluster:
    base = {"backend": "zookeeper", **({"zookeeper.hosts": hosts} if hosts else {})}
    return Cluster(
        root, settings={**base, **settings}, probe_args=("--fork", "1", "--escape", "session")
    )


@pytest.fixture
def cluster(tmp_path: Path, zk_chroot: str) -> Iterator[Cluster]:
    c = zk_cluster(tmp_path, zk_chroot)
    yield c
    c.stop_all()


def wait_for(c: Cluster, test: Callable[[], Any], timeout: float, what: str) -> Any:
    """`wait_until`, with the daemons' last log lines when it times out."""
    try:
        return wait_until(test, timeout, what)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{c.dump_logs()}") from None


def records(c: Cluster, word: str) -> list[dict[str, str]]:
    return [r for r in read_records(c.records) if r["word"] == word]


def start_time(c: Cluster, node: str, epoch: str) -> float:
    found = [r for r in records(c, "start") if (r["node"], r["epoch"]) == (node, epoch)]
    return float(found[0]["t"])


def failover_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "failover", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ensure_chroot(hosts: str) -> str:
    chroot = f"/t-{uuid.uuid4().hex}"
    client = KazooClient(hosts=hosts, timeout=10)
    client.start(timeout=15)
    client.ensure_path(chroot)
    client.stop()
    client.close()
    return chroot


def test_election_status_and_duplicate_node(cluster: Cluster, zk_chroot: str) -> None:
    with Sampler(cluster.tag) as sampler:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        zk = ("--cluster", "t", "--backend", "zookeeper", "--set", f"zookeeper.hosts={zk_chroot}")
        done = wait_for(
            cluster,
            lambda: (
                (d := failover_cli("status", "--json", *zk)).returncode == 0
                and len(json.loads(d.stdout)["members"]) == 3
                and d
            ),
            15,
            "status with three members from ZooKeeper",
        )
        status = json.loads(done.stdout)
        assert status["leader"] == leader and status["backend"] == "zookeeper"
        assert all(m["heartbeat_age"] < 3 for m in status["members"])
        timings = [f"{k}={v}" for k, v in TIMINGS.items()]
        dup = failover_cli(
            "run", "--node", leader, *zk, *(a for t in timings for a in ("--set", t)), "--", "true"
        )
        assert dup.returncode == 3, dup.stderr
        message = dup.stderr.strip().splitlines()[-1]
        assert message.startswith(f"failover: node '{leader}' already runs in cluster 't'")
        assert cluster.leader_child() == (leader, epoch)
    sampler.assert_clean()


def test_kill9_leader_daemon(cluster: Cluster) -> None:
    with Sampler(cluster.tag) as sampler:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        killed_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        cluster.signal(leader, signal.SIGKILL)
        new_leader, new_epoch = cluster.leader_child(exclude=[leader], timeout=15)
        took = start_time(cluster, new_leader, new_epoch) - killed_at
        assert int(new_epoch) > int(epoch)
    sampler.assert_clean()
    print(f"kill -9 takeover: {took:.2f} s (session timeout {LEASE:g} s)")
    # The dead daemon's keeper ended its session once the tree was gone (keeper/zksession.py).
    assert took < 1.0, cluster.dump_logs()
    fenced = [s for s in cluster.sentences(new_leader) if "fenced older epochs" in s]
    assert fenced and "its keeper saw its tree gone" in fenced[0], fenced


def test_graceful_stop_hands_over_at_once(cluster: Cluster) -> None:
    with Sampler(cluster.tag) as sampler:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        cluster.signal(leader, signal.SIGTERM)
        assert cluster.procs[leader].wait(timeout=20) == 0
        new_leader, new_epoch = cluster.leader_child(exclude=[leader], timeout=10)
    sampler.assert_clean()
    term = [r for r in records(cluster, "term") if (r["node"], r["epoch"]) == (leader, epoch)]
    gap = start_time(cluster, new_leader, new_epoch) - float(term[0]["t"])
    print(f"graceful gap: {gap:.3f} s")
    assert gap < 1.0, cluster.dump_logs()
    assert any("released after its child exited" in s for s in cluster.sentences(new_leader))


def gave_up(sentence: str) -> bool:
    """A thawed leader's first renew finds its session expired ("lost leadership") or, while
    kazoo is still reconnecting (SUSPENDED), its self-fence deadline long past."""
    past_deadline = "cannot renew leadership" in sentence and "stopping the child" in sentence
    return "lost leadership" in sentence or past_deadline


def test_sigstop_leader_for_three_leases(cluster: Cluster) -> None:
    with Sampler(cluster.tag) as sampler:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        stopped_at = time.monotonic()
        cluster.signal(leader, signal.SIGSTOP)
        new_leader, new_epoch = cluster.leader_child(exclude=[leader], timeout=15)
        assert int(new_epoch) > int(epoch)
        time.sleep(max(0.0, 3 * LEASE - (time.monotonic() - stopped_at)))
        cluster.signal(leader, signal.SIGCONT)
        wait_for(
            cluster,
            lambda: any(gave_up(s) for s in cluster.sentences(leader)),
            15,
            "the thawed leader to give its leadership up",
        )
        wait_for(
            cluster,
            lambda: any("following leader" in s for s in cluster.sentences(leader)[-3:]),
            15,
            "the thawed leader to follow",
        )
        assert cluster.leader_child() == (new_leader, new_epoch)
    sampler.assert_clean()


def test_injected_session_expiry(tmp_path: Path, zk_server: Any) -> None:
    proxy = ZkProxy(zk_server.hosts)
    chroot = ensure_chroot(zk_server.hosts)
    cluster = zk_cluster(tmp_path, None)
    try:
        with Sampler(cluster.tag) as sampler:
            cluster.start("n1", env={"FAILOVER_ZOOKEEPER__HOSTS": proxy.hosts(chroot)})
            assert cluster.leader_child()[0] == "n1"
            for node in ("n2", "n3"):
                cluster.start(node, env={"FAILOVER_ZOOKEEPER__HOSTS": zk_server.hosts + chroot})
            wait_for(
                cluster,
                lambda: any("following leader n1" in s for s in cluster.sentences("n3")),
                15,
                "n3 to follow",
            )
            expire_session(zk_server.hosts, proxy.sessions[0])
            new_leader, new_epoch = cluster.leader_child(exclude=["n1"], timeout=15)
            assert int(new_epoch) == 2
            wait_for(
                cluster,
                lambda: any("lost leadership" in s for s in cluster.sentences("n1")),
                10,
                "n1 to lose",
            )
        sampler.assert_clean()
        waited = [s for s in cluster.sentences(new_leader) if "ended unreleased" in s]
        assert waited and "before its keeper deadline" in waited[0], cluster.sentences(new_leader)
    finally:
        cluster.stop_all()
        proxy.close()


def test_zookeeper_down_longer_than_the_session(tmp_path: Path, zk_factory: Any) -> None:
    server = zk_factory()
    cluster = zk_cluster(tmp_path, server.hosts + ensure_chroot(server.hosts))
    try:
        with Sampler(cluster.tag) as sampler:
            cluster.start_all()
            leader, epoch = cluster.leader_child()
            server.stop()
            down_at = time.monotonic()
            # The leader cannot renew: its child is gone by the self-fence deadline.
            wait_for(cluster, lambda: not cluster.live_children(), LEASE, "the child to be stopped")
            wait_for(
                cluster,
                lambda: time.monotonic() - down_at > 2 * LEASE and not cluster.live_children(),
                3 * LEASE,
                "an outage of two sessions with no child anywhere",
            )
            server.start()
            new_leader, new_epoch = cluster.leader_child(timeout=20)
            assert int(new_epoch) > int(epoch)
        sampler.assert_clean()
        assert any("cannot renew leadership" in s for s in cluster.sentences(leader))
    finally:
        cluster.stop_all()


def test_zookeeper_down_shorter_than_the_session(tmp_path: Path, zk_factory: Any) -> None:
    server = zk_factory(max_session_timeout_ms=20_000)
    cluster = zk_cluster(tmp_path, server.hosts + ensure_chroot(server.hosts), lease_seconds="12")
    try:
        with Sampler(cluster.tag) as sampler:
            cluster.start_all()
            leader, epoch = cluster.leader_child()
            pid = next(iter(cluster.live_children()))
            server.stop()
            wait_for(
                cluster,
                lambda: any("cannot renew" in s for s in cluster.sentences(leader)),
                5,
                "the outage seen",
            )
            server.start()
            wait_for(
                cluster,
                lambda: (
                    cluster.sentences(leader)[-1]
                    == f"no action: I am the leader with epoch {epoch}"
                ),
                10,
                "the leader to renew again",
            )
            assert cluster.leader_child() == (leader, epoch)
            assert pid in cluster.live_children()
        sampler.assert_clean()
        assert len(records(cluster, "start")) == 1  # the child was never restarted
        assert not any(
            "stepping down" in s or "stopping the child" in s for s in cluster.sentences(leader)
        )
    finally:
        cluster.stop_all()


def test_switchover_to_the_last_standby(cluster: Cluster, zk_chroot: str) -> None:
    with Sampler(cluster.tag) as sampler:
        cluster.start("n1")
        assert cluster.leader_child()[0] == "n1"
        cluster.start("n2")
        cluster.start("n3")
        zk = ("--cluster", "t", "--backend", "zookeeper", "--set", f"zookeeper.hosts={zk_chroot}")
        wait_for(
            cluster,
            lambda: (
                (d := failover_cli("status", "--json", *zk)).returncode == 0
                and sum(m["role"] == "standby" for m in json.loads(d.stdout)["members"]) == 2
            ),
            15,
            "two standbys",
        )
        # n2 is ahead of n3 in the queue: it must step aside for the named target.
        done = failover_cli("switchover", "--to", "n3", "--wait", "15", *zk)
        assert done.returncode == 0, done.stderr
        assert cluster.leader_child()[0] == "n3"
    sampler.assert_clean()


def test_zookeeper_leader_crash_keeps_our_leader(tmp_path: Path, zk_factory: Any) -> None:
    ensemble = zk_factory.ensemble(3, max_session_timeout_ms=20_000)
    hosts = ensemble.hosts + ensure_chroot(ensemble.hosts)
    cluster = zk_cluster(tmp_path, hosts, lease_seconds="10")
    try:
        with Sampler(cluster.tag) as sampler:
            cluster.start_all()
            leader, epoch = cluster.leader_child()
            victim = ensemble.leader()
            assert victim is not None
            victim.kill()
            time.sleep(1.0)
            wait_for(
                cluster,
                lambda: (
                    cluster.sentences(leader)[-1]
                    == f"no action: I am the leader with epoch {epoch}"
                ),
                10,
                "the leader to renew through the surviving quorum",
            )
            assert cluster.leader_child() == (leader, epoch)
        sampler.assert_clean()
        assert len(records(cluster, "start")) == 1
        log = (tmp_path / f"{leader}.log").read_text()
        assert '"state": "SUSPENDED"' in log  # the quorum change did cut our connection
    finally:
        cluster.stop_all()


ZK_CONS = re.compile(r"/127\.0\.0\.1:(\d+)\[\d+\]\(.*?recved=(\d+)")


def local_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of process `pid`'s TCP connections to `server_port` (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[9] in inodes and remote == server_port:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def requests_and_ticks(zk_server: Any, pid: int, http_port: int) -> tuple[int, float]:
    """Requests the server received so far on `pid`'s sessions (`cons`, pings included), and
    the ticks its loop ran (/metrics)."""
    ports = local_ports(pid, zk_server.port)
    text = zk_server.four_letter_word("cons", timeout=5)
    sent = sum(int(m.group(2)) for m in ZK_CONS.finditer(text) if int(m.group(1)) in ports)
    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        body = reply.read().decode()
    count = "failover_tick_duration_seconds_count"
    ticks = [float(line.split()[-1]) for line in body.splitlines() if line.startswith(count)]
    return sent, ticks[0] if ticks else 0.0


def test_a_steady_standby_sends_two_requests_a_tick_and_sees_a_pause_at_once(
    cluster: Cluster, zk_server: Any
) -> None:
    """Counted by the server: the queue and the heartbeat (five before: the watch on the
    predecessor, the epoch and the flags were asked for every tick). A pause still reaches
    the standby at once: the flags' watch wakes it."""
    http_port = free_port()
    cluster.start("n1")
    assert cluster.leader_child()[0] == "n1"
    cluster.settings["http.listen"] = f"127.0.0.1:{http_port}"
    standby = cluster.start("n2").pid
    following = "no action: following leader n1"
    wait_for(
        cluster,
        lambda: (s := cluster.sentences("n2")) and s[-1].startswith(following),
        20,
        "n2 to follow n1",
    )
    time.sleep(1.0)  # its first ticks set the watches
    sent0, ticks0 = requests_and_ticks(zk_server, standby, http_port)
    time.sleep(6.0)
    sent1, ticks1 = requests_and_ticks(zk_server, standby, http_port)
    ticks, sent = ticks1 - ticks0, sent1 - sent0
    assert ticks >= 4, (ticks, cluster.dump_logs())
    # (a tick may be half done at either reading)
    assert sent <= 2 * ticks + 2, f"{sent} requests in {ticks:g} ticks"
    pause = cluster.cli("pause")
    assert pause.returncode == 0, pause.stderr
    # Within about a tick (loop 0.5 s; without the watch, up to a lease of 3 s).
    wait_for(
        cluster,
        lambda: cluster.sentences("n2")[-1].startswith("paused: no elections"),
        1.5,
        "n2 to see the pause",
    )
