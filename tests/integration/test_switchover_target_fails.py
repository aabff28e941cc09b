"""A switchover whose named target fails at that moment (frozen, killed, or its child crashes
on start), on every backend: the others stop holding back for it, a child runs again within
about a lease, and never two. `failover switchover` says what happened and exits 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import Cluster, Sampler, read_records, wait_until

pytestmark = pytest.mark.integration

LEASE = 3.0  # tests/harness.Cluster's lease_seconds


def backend_settings(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if backend == "postgres":
        return {"backend": "postgres", "postgres.dsn": request.getfixturevalue("pg_dsn")}
    if backend == "zookeeper":
        return {"backend": "zookeeper", "zookeeper.hosts": request.getfixturevalue("zk_chroot")}
    return {}


def client(c: Cluster, *args: str, timeout: float = 60) -> subprocess.Popen[str]:
    """`failover ARGS...` with the cluster's own settings (as a user on a candidate would)."""
    return subprocess.Popen(
        [sys.executable, "-m", "failover", *args, *c.client_args()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def status(c: Cluster) -> dict[str, object]:
    proc = client(c, "status", "--json")
    out, _ = proc.communicate(timeout=30)
    return json.loads(out) if out.strip() else {}


def standbys_ready(c: Cluster, nodes: tuple[str, ...]) -> bool:
    members = status(c).get("members") or []
    assert isinstance(members, list)
    ready = {m["node"] for m in members if m["role"] == "standby" and m["heartbeat_age"] < 1.5}
    return set(nodes) <= ready


def child_gap(c: Cluster, old_epoch: str, by: set[str]) -> float:
    """Seconds from the old child's SIGTERM to the first start of a newer epoch's child on
    one of `by` (probe records, CLOCK_BOOTTIME)."""
    records = read_records(c.records)
    stopped = [float(r["t"]) for r in records if r["word"] == "term" and r["epoch"] == old_epoch]
    started = [
        float(r["t"])
        for r in records
        if r["word"] == "start" and int(r["epoch"]) > int(old_epoch) and r["node"] in by
    ]
    assert stopped and started, records
    return min(started) - min(stopped)


@pytest.fixture
def made() -> Iterator[list[Cluster]]:
    clusters: list[Cluster] = []
    yield clusters
    for c in clusters:
        c.stop_all()


def start_with_leader(c: Cluster, leader: str) -> str:
    """`leader` leads (started alone first), then the others join as standbys."""
    c.start(leader)
    node, epoch = c.leader_child()
    assert node == leader
    for other in c.nodes:
        if other != leader:
            c.start(other)
    others = tuple(n for n in c.nodes if n != leader)
    wait_until(lambda: standbys_ready(c, others), 30, "the standbys' heartbeats")
    return epoch


@pytest.mark.parametrize("backend", ["local", "postgres", "zookeeper"])
@pytest.mark.parametrize("fault", ["sigstop", "kill9"])
def test_switchover_to_a_target_that_fails(
    backend: str, fault: str, tmp_path: Path, request: pytest.FixtureRequest, made: list[Cluster]
) -> None:
    c = Cluster(
        tmp_path,
        nodes=("s1", "s2", "s3"),
        settings=backend_settings(backend, request),
        probe_args=("--fork", "1", "--escape", "session"),
    )
    made.append(c)
    with Sampler(c.tag) as sampler:
        epoch = start_with_leader(c, "s1")
        # The target fails right as the operator asks for it: the leader still sees a
        # fresh heartbeat and accepts.
        c.signal("s2", signal.SIGSTOP if fault == "sigstop" else signal.SIGKILL)
        cli = client(c, "switchover", "--to", "s2", "--wait", "30")
        out, err = cli.communicate(timeout=60)
        node, _ = c.leader_child(timeout=30)
        gap = child_gap(c, epoch, {"s1", "s3"})
        shown = status(c)
    if fault == "sigstop":
        os.kill(c.procs["s2"].pid, signal.SIGCONT)
    sampler.assert_clean()
    assert node in ("s1", "s3")
    assert cli.returncode == 1, out + err
    assert "switchover to s2 abandoned: " in err and f"; {node} " in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "abandoned" in str(shown["switchover_result"])
    assert shown["switchover_to"] is None  # decided, and cleared
    # Holding back for s2 used to last 2 x lease, then the old leader cooled down as long.
    assert gap < 2 * LEASE - 0.5, f"no child for {gap:.2f} s\n{c.dump_logs()}"


@pytest.mark.parametrize("backend", ["local", "postgres", "zookeeper"])
def test_switchover_target_whose_child_crashes_hands_back(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, made: list[Cluster]
) -> None:
    """The target wins but its child fails at once: the crash-loop rule hands over, and the
    old leader, the only other member, is eligible again (its cool-down ended with the
    request)."""
    c = Cluster(
        tmp_path,
        nodes=("s1", "s2"),
        settings=backend_settings(backend, request),
        probe_args=("--fail-on-node", "s2"),
    )
    made.append(c)
    with Sampler(c.tag) as sampler:
        epoch = start_with_leader(c, "s1")
        cli = client(c, "switchover", "--to", "s2", "--wait", "30")
        cli.communicate(timeout=60)

        def s1_again() -> bool:
            return any(
                r["word"] == "start" and r["node"] == "s1" and int(r["epoch"]) > int(epoch)
                for r in read_records(c.records)
            )

        wait_until(s1_again, 30, "s1 to run the child again")
        fails = [r for r in read_records(c.records) if r["word"] == "fail"]
        gap = child_gap(c, epoch, {"s1"})
    sampler.assert_clean()
    assert len(fails) >= 3 and {r["node"] for r in fails} == {"s2"}, fails
    # The crash loop (3 fast failures, backoff 1 + 2 s) plus one campaign; the old leader
    # used to sit out 2 x lease from its release whatever happened.
    assert gap < 3 + 2 * LEASE, f"no child for {gap:.2f} s\n{c.dump_logs()}"
