"""Three real `failover run` daemons on the local backend, under kill -9, SIGTERM and SIGSTOP.

A sampler checks every 50 ms that at most one epoch's child tree is alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import Cluster, Sampler, read_records, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, probe_args=("--fork", "2", "--escape", "session"))
    yield c
    c.stop_all()


def test_kill9_leader_daemon(cluster: Cluster) -> None:
    with Sampler(cluster.tag) as sampler:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        # The probe and two grandchildren that escaped into sessions of their own.
        old = set(
            wait_until(
                lambda: len(cluster.live_children()) == 3 and cluster.live_children(), 10, "3 procs"
            )
        )
        cluster.signal(leader, signal.SIGKILL)
        t0 = time.monotonic()
        _, new_epoch = cluster.leader_child(exclude=[leader], timeout=15)
        took = time.monotonic() - t0
        assert int(new_epoch) > int(epoch)
        assert not old & set(cluster.live_children()), "an old-epoch process survived"
    sampler.assert_clean()
    assert took < 10.0, cluster.dump_logs()  # generous bound; bench/ measures the real number


def test_sigterm_leader_hands_over_gracefully(cluster: Cluster) -> None:
    with Sampler(cluster.tag) as sampler:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        cluster.signal(leader, signal.SIGTERM)
        assert cluster.procs[leader].wait(timeout=15) == 0
        new_leader, new_epoch = cluster.leader_child(exclude=[leader], timeout=15)
        assert new_leader != leader and int(new_epoch) == int(epoch) + 1
    sampler.assert_clean()
    records = read_records(cluster.records)
    terms = [r for r in records if r["word"] == "term" and r["node"] == leader]
    assert terms, "the old child was not asked to stop with SIGTERM"
    sentences = cluster.sentences(leader)
    assert any("released leadership" in s for s in sentences), sentences[-5:]


def test_sigstop_leader_child_dies_by_deadline_and_standby_takes_over(cluster: Cluster) -> None:
    with Sampler(cluster.tag) as sampler:
        cluster.start_all()
        leader, epoch = cluster.leader_child()
        stopped_at = time.monotonic()
        cluster.signal(leader, signal.SIGSTOP)
        # lease 3 s, margin 0.5 s: the keeper kills the tree <= 2.5 s after the last renew,
        # although the daemon never runs again.
        wait_until(
            lambda: all(p["node"] != leader for p in cluster.live_children().values()),
            8,
            "the frozen leader's child tree to die",
        )
        died_after = time.monotonic() - stopped_at
        new_leader, new_epoch = cluster.leader_child(exclude=[leader], timeout=15)
        assert int(new_epoch) > int(epoch)
        cluster.signal(leader, signal.SIGCONT)
        wait_until(
            lambda: any(
                "lost leadership" in s or "following" in s for s in cluster.sentences(leader)[-3:]
            ),
            10,
            "the thawed daemon to step down",
        )
        time.sleep(1.0)
        assert cluster.leader_child() == (new_leader, new_epoch)
    sampler.assert_clean()
    assert died_after < 5.0


def test_duplicate_node_name_refused(cluster: Cluster) -> None:
    cluster.start("n1")
    cluster.leader_child()
    done = subprocess.run(
        cluster.argv("n1"), check=False, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 3, done.stderr
    assert "node 'n1' already runs" in done.stderr
    assert len(cluster.live_children()) == 3  # the first daemon's tree, untouched


def test_bad_reload_keeps_running_config(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "f.toml"
    config.write_text("lease_seconds = 3\n")
    cluster.settings = {}
    cluster.start("n1")
    cluster.procs["n1"].kill()
    cluster.procs["n1"].wait()
    proc = subprocess.Popen(
        [*cluster.argv("n1")[:3], "run", "--config", str(config), *cluster.argv("n1")[4:]],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "n1.log", "ab"),
    )
    cluster.procs["n1"] = proc
    node, epoch = cluster.leader_child()
    config.write_text("lease_seconds = = broken\n")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload_refused" in (tmp_path / "n1.log").read_text(), 10, "reload_refused")
    assert "not valid TOML" in (tmp_path / "n1.log").read_text()
    time.sleep(1.0)
    assert cluster.leader_child() == (node, epoch)
    assert proc.poll() is None


def test_keeper_killed_leaves_no_escaped_grandchild(cluster: Cluster) -> None:
    """The daemon is a subreaper: a SIGKILLed keeper's escaped descendants come to it and die."""
    from failover.keeper import proctree

    cluster.nodes = ("n1",)
    cluster.start("n1")
    old = set(
        wait_until(
            lambda: len(cluster.live_children()) == 3 and cluster.live_children(), 20, "3 procs"
        )
    )
    daemon = cluster.procs["n1"].pid
    keepers = [p for p, (_, ppid, _) in proctree.snapshot().items() if ppid == daemon]
    for keeper in keepers:
        os.kill(keeper, signal.SIGKILL)
    wait_until(
        lambda: not old & set(cluster.live_children()), 10, "the escaped grandchildren to die"
    )
