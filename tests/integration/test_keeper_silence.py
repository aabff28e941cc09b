"""A keeper that stops answering (FAULTS.md 26, 27): frozen by SIGSTOP, killed, or frozen on a
standby, on every backend (local, PostgreSQL, ZooKeeper, MySQL/MariaDB), with real daemons;
and the sidecar liveness probe.

The daemon must find a silent keeper by itself, kill its tree, and never hang a stop on it.
The sampler checks every 50 ms that at most one epoch's child tree is alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from failover.keeper import proctree
from failover.keeper.proof import boottime

from ..harness import PROBE, Cluster, Sampler, alive, keepers, read_records, wait_until
from .test_keeper import launch, lines_until, started_tree
from .test_observability import get, start_with_http
from .test_sidecar import Container

pytestmark = pytest.mark.integration

LEASE, LOOP, STOP_TIMEOUT = 3.0, 0.5, 5.0  # as tests/harness.Cluster runs the daemons
ANSWER = (LEASE - LOOP) / 2  # Settings.keeper_answer_seconds
BACKENDS = ["local", "postgres", "zookeeper", "mysql"]


def make_cluster(root: Path, backend: str, request: Any, **settings: str) -> Cluster:
    probe_args: tuple[str, ...] = ("--fork", "1", "--escape", "session")
    extra: dict[str, str] = {"backend": backend}
    if backend == "postgres":
        extra["postgres.dsn"] = request.getfixturevalue("pg_dsn")
    elif backend == "zookeeper":
        extra["zookeeper.hosts"] = request.getfixturevalue("zk_chroot")
    elif backend == "mysql":
        extra["mysql.dsn"] = request.getfixturevalue("my_dsn")
    # Our own cluster name: keepers are found by it, and other tests run on this host too.
    name = f"ks{uuid.uuid4().hex[:8]}"
    return Cluster(
        root,
        nodes=("n1", "n2"),
        settings={**extra, **settings},
        probe_args=probe_args,
        cluster=name,
    )


@pytest.fixture(params=BACKENDS)
def cluster(request: Any, tmp_path: Path) -> Iterator[Cluster]:
    c = make_cluster(tmp_path, request.param, request)
    yield c
    for pid, _, _ in keepers(c.cluster):  # a keeper a test froze must not outlive it
        os.kill(pid, signal.SIGCONT)
    c.stop_all()


def wait_for(c: Cluster, test: Callable[[], Any], timeout: float, what: str) -> Any:
    try:
        return wait_until(test, timeout, what)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{c.dump_logs()}") from None


def keeper_of(c: Cluster, node: str) -> int:
    """The pid of `node`'s one keeper (the leader's runs the child, a standby's is warm)."""

    def one() -> int | None:
        pids = [pid for pid, owner, _ in keepers(c.cluster) if owner == node]
        return pids[0] if len(pids) == 1 else None

    pid: int = wait_for(c, one, 10, f"{node}'s keeper")
    return pid


def tree_of(c: Cluster, node: str, epoch: str) -> set[int]:
    return {pid for pid, p in c.live_children().items() if (p["node"], p["epoch"]) == (node, epoch)}


def start_of(c: Cluster, node: str, epoch: str) -> float:
    starts = [
        float(r["t"])
        for r in read_records(c.records)
        if r["word"] == "start" and (r["node"], r["epoch"]) == (node, epoch)
    ]
    return min(starts)


def other(c: Cluster, node: str) -> str:
    return next(n for n in c.nodes if n != node)


def standby_ready(c: Cluster, node: str) -> None:
    """`node` follows the leader and its warm keeper is up (so it can take over at once)."""
    wait_for(
        c,
        lambda: any("following leader" in s for s in c.sentences(node)[-3:]),
        20,
        f"{node} to follow",
    )
    keeper_of(c, node)
    dsn = c.settings.get("postgres.dsn")
    if dsn is None:
        time.sleep(1.0)  # its READY: imports done, its proof of life (if any) open
        return
    import psycopg2

    def session_open() -> bool:  # the warm keeper's proof-of-life session: READY follows
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            name = f"failover:{c.cluster}:{node}:standby"
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            )
            row = cur.fetchone()
        conn.close()
        return bool(row and row[0])

    wait_for(c, session_open, 20, f"{node}'s warm keeper's proof-of-life session")
    time.sleep(0.2)


def test_frozen_keeper_then_sigterm_ends_the_tree_and_hands_over(cluster: Cluster) -> None:
    c = cluster
    with Sampler(c.tag) as sampler:
        c.start_all()
        leader, epoch = c.leader_child()
        standby_ready(c, other(c, leader))
        tree = tree_of(c, leader, epoch)
        os.kill(keeper_of(c, leader), signal.SIGSTOP)
        termed = boottime()
        c.signal(leader, signal.SIGTERM)
        wait_for(c, lambda: not any(alive(p) for p in tree), STOP_TIMEOUT + 3, "the tree to end")
        gone = boottime()
        new_leader, new_epoch = c.leader_child(exclude=[leader], timeout=10)
        assert c.procs[leader].wait(timeout=10) == 0
    sampler.assert_clean()
    took, gap = gone - termed, start_of(c, new_leader, new_epoch) - gone
    print(
        f"\nfrozen keeper + SIGTERM: tree gone after {took:.2f} s, standby child {gap:.2f} s later"
    )
    assert took <= STOP_TIMEOUT + 2, c.dump_logs()
    assert gap <= 1.0, c.dump_logs()
    released = [s for s in c.sentences(leader) if s.startswith("released leadership")]
    assert released and "the daemon killed its tree" in released[-1], released


def test_frozen_keeper_under_a_live_leader_is_killed_within_one_lease(cluster: Cluster) -> None:
    c = cluster
    with Sampler(c.tag) as sampler:
        c.start_all()
        leader, epoch = c.leader_child()
        standby_ready(c, other(c, leader))
        tree = tree_of(c, leader, epoch)
        frozen = keeper_of(c, leader)
        os.kill(frozen, signal.SIGSTOP)
        stopped = boottime()
        wait_for(c, lambda: not any(alive(p) for p in tree), 2 * LEASE, "the tree to end")
        gone = boottime()
        new_leader, new_epoch = c.leader_child(exclude=[leader], timeout=10)
        assert not alive(frozen)
        assert c.procs[leader].poll() is None  # the daemon lives on, as a standby
    sampler.assert_clean()
    took, gap = gone - stopped, start_of(c, new_leader, new_epoch) - gone
    print(
        f"\nfrozen keeper, live leader: tree gone after {took:.2f} s, new child {gap:.2f} s later"
    )
    assert took <= LEASE, c.dump_logs()
    said = c.sentences(leader)
    assert any("keeper did not answer" in s and "stepping down" in s for s in said), said[-5:]
    wait_for(
        c,
        lambda: any("following leader" in s for s in c.sentences(leader)[-3:]),
        4 * LEASE,
        "the old leader to follow",
    )


def test_killed_keeper_is_a_crashed_child(cluster: Cluster) -> None:
    c = cluster
    with Sampler(c.tag) as sampler:
        c.start_all()
        leader, epoch = c.leader_child()
        tree = tree_of(c, leader, epoch)
        killed = boottime()
        os.kill(keeper_of(c, leader), signal.SIGKILL)
        wait_for(c, lambda: not any(alive(p) for p in tree), 5, "the tree to end")
        gone = boottime()
        c.leader_child(timeout=15)  # the child again, here (crash, backoff) or on the standby
    sampler.assert_clean()
    print(f"\nkilled keeper: tree gone after {gone - killed:.2f} s")
    assert gone - killed <= 2.0


def test_frozen_standby_keeper_is_replaced_without_touching_the_leader(cluster: Cluster) -> None:
    c = cluster
    with Sampler(c.tag) as sampler:
        c.start_all()
        leader, epoch = c.leader_child()
        standby = other(c, leader)
        standby_ready(c, standby)
        tree = tree_of(c, leader, epoch)
        frozen = keeper_of(c, standby)
        os.kill(frozen, signal.SIGSTOP)
        stopped = boottime()
        wait_for(c, lambda: not alive(frozen), 2 * LEASE, "the frozen warm keeper to be killed")
        killed = boottime()
        fresh = wait_for(
            c,
            lambda: [p for p, n, _ in keepers(c.cluster) if n == standby and p != frozen],
            10,
            "a new warm keeper",
        )
        replaced = boottime()
        assert tree_of(c, leader, epoch) == tree  # the leader's child never noticed
        assert c.leader_child() == (leader, epoch)
        assert fresh
    sampler.assert_clean()
    print(
        f"\nfrozen standby keeper: killed after {killed - stopped:.2f} s, "
        f"replaced {replaced - killed:.2f} s later"
    )
    assert killed - stopped <= LEASE
    log = (c.root / f"{standby}.log").read_text()
    assert "warm_keeper_unresponsive" in log


def test_stop_is_bounded_by_stop_timeout_when_the_lease_is_long(
    tmp_path: Path, request: Any
) -> None:
    # A long lease (silence bound 4.75 s) and a short stop_timeout: the stop's own bound
    # (stop_timeout + 1 s) ends the frozen keeper's tree first.
    stop_timeout = 1.0
    c = make_cluster(
        tmp_path,
        "local",
        request,
        lease_seconds="10",
        loop_seconds="0.5",
        stop_timeout_seconds=str(stop_timeout),
    )
    try:
        with Sampler(c.tag) as sampler:
            c.start_all()
            leader, epoch = c.leader_child()
            standby_ready(c, other(c, leader))
            tree = tree_of(c, leader, epoch)
            os.kill(keeper_of(c, leader), signal.SIGSTOP)
            termed = boottime()
            c.signal(leader, signal.SIGTERM)
            wait_for(c, lambda: not any(alive(p) for p in tree), 10, "the tree to end")
            gone = boottime()
            new_leader, new_epoch = c.leader_child(exclude=[leader], timeout=10)
            assert c.procs[leader].wait(timeout=10) == 0
        sampler.assert_clean()
    finally:
        for pid, _, _ in keepers(c.cluster):
            os.kill(pid, signal.SIGCONT)
        c.stop_all()
    took, gap = gone - termed, start_of(c, new_leader, new_epoch) - gone
    print(f"\nfrozen keeper, lease 10 s, stop_timeout 1 s: tree gone after {took:.2f} s")
    assert took <= stop_timeout + 2, c.dump_logs()
    assert gap <= 1.0, c.dump_logs()
    assert any("did not finish its STOP in time" in s for s in c.sentences(leader))


def test_the_keepers_answers_do_not_make_a_steady_leader_tick_faster(
    tmp_path: Path, request: Any
) -> None:
    c = make_cluster(tmp_path, "local", request)
    c.nodes = ("n1",)
    try:
        (port,) = start_with_http(c).values()
        c.leader_child()

        def ticks() -> float:
            text = get(port, "/metrics")[1]
            (line,) = [
                x for x in text.splitlines() if x.startswith("failover_tick_duration_seconds_count")
            ]
            return float(line.split()[-1])

        before = ticks()
        time.sleep(3.0)
        took = ticks() - before
    finally:
        c.stop_all()
    assert took <= 3.0 / LOOP + 3, f"{took:g} ticks in 3 s with loop_seconds {LOOP:g}"


# -- the keeper's side of the protocol ------------------------------------------------------


def answered(link: Any) -> bool:
    link.read_lines()
    return bool(link.silence() == 0.0)


def test_keeper_answers_every_line_and_the_link_measures_silence(tmp_path: Path) -> None:
    link, _, records = launch(tmp_path, "--fork", "1")
    started_tree(link, records, 2)
    link.send("PING")
    link.send(f"RUN-UNTIL {boottime() + 30:.6f}")
    wait_until(lambda: answered(link), 5, "the ACK")
    assert link.answered == 3  # GO, PING, RUN-UNTIL
    os.kill(link.pid, signal.SIGSTOP)
    try:
        link.send("PING")
        time.sleep(0.3)
        link.read_lines()
        assert link.silence() >= 0.25  # nobody answers a frozen keeper
    finally:
        os.kill(link.pid, signal.SIGCONT)
    wait_until(lambda: answered(link), 5, "the late ACK")
    assert link.answered == 4
    link.send("STOP")
    lines_until(link, "GONE")
    link.cleanup()


def test_link_kill_ends_a_frozen_keeper_and_its_escaped_tree(tmp_path: Path) -> None:
    link, tag, records = launch(tmp_path, "--fork", "2", "--escape", "session")
    started_tree(link, records, 3)
    tree = {int(r["pid"]) for r in read_records(records)}
    os.kill(link.pid, signal.SIGSTOP)
    started = time.monotonic()
    assert link.kill()
    took = time.monotonic() - started
    assert not any(alive(p) for p in tree)
    assert link.proc is not None and link.proc.returncode == -signal.SIGKILL
    assert took < 2.0, took


def test_launcher_link_kill_reaps_orphans_as_subreaper(tmp_path: Path) -> None:
    """In a subprocess (it makes itself a subreaper): a keeper killed while frozen leaves
    no process behind, even the grandchild that escaped into its own session."""
    script = tmp_path / "kill.py"
    tag = f"probe-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records.log"
    script.write_text(
        f"""
import os, signal, sys, time
from failover.keeper.proof import boottime
from failover.keeper.launcher import KeeperLauncher

def ready():
    try:
        return open({str(records)!r}).read().count("start") >= 3
    except OSError:
        return False

launcher = KeeperLauncher(adopt_orphans=True)
cmd = [sys.executable, {PROBE!r}, "--tag", {tag!r}, "--record", {str(records)!r},
       "--fork", "2", "--escape", "session"]
link = launcher.launch(cmd, dict(os.environ), 5.0, ("--name", "failover:t:k"))
link.send(f"GO 1 {{boottime() + 30:.6f}}")
for _ in range(500):
    if ready():
        break
    time.sleep(0.02)
os.kill(link.pid, signal.SIGSTOP)
print("confirmed" if link.kill() else "left")
"""
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.strip() == "confirmed", out.stderr
    pids = {int(r["pid"]) for r in read_records(records)}
    assert len(pids) == 3 and not any(alive(p) for p in pids)


# -- the sidecar form: a liveness probe on the scheduler container -------------------------


def probe_ok(alive_file: Path, max_age: float) -> bool:
    check = ["keeper", "--check", str(alive_file), "--max-age", f"{max_age:g}"]
    out = subprocess.run(
        [sys.executable, "-m", "failover", *check],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return out.returncode == 0


def test_sidecar_liveness_probe_fails_when_the_keeper_is_frozen(tmp_path: Path) -> None:
    shared = tmp_path / "run-failover"
    shared.mkdir()
    c = Cluster(tmp_path / "daemons", nodes=("p1",), cluster=f"sc{uuid.uuid4().hex[:8]}")
    sock, beat = shared / "keeper.sock", shared / "keeper.alive"
    probe = [sys.executable, PROBE, "--tag", c.tag, "--record", str(c.records), "--fork", "1"]
    keeper_argv = ["keeper", "--connect", str(sock), "--alive-file", str(beat), "--", *probe]
    container = Container(
        [sys.executable, "-m", "failover", *keeper_argv],
        tmp_path / "keeper.log",
    )
    c.settings["keeper.listen"] = str(sock)
    try:
        with Sampler(c.tag) as sampler:
            c.start_all()
            c.leader_child()
            assert probe_ok(beat, 2.0)
            assert container.proc is not None
            keeper = container.proc.pid
            os.kill(keeper, signal.SIGSTOP)
            try:
                wait_until(lambda: not probe_ok(beat, 2.0), 10, "the probe to fail")
                # The daemon sees it too, but cannot kill another container's processes.
                wait_for(
                    c,
                    lambda: any(
                        "its tree is not gone yet (sidecar" in s for s in c.sentences("p1")
                    ),
                    2 * LEASE,
                    "the daemon to notice",
                )
            finally:
                os.kill(keeper, signal.SIGCONT)
            # What the kubelet does when the probe fails: kill every process of the container.
            proctree.kill_tree(keeper, [keeper], reap_children=False)
            os.kill(keeper, signal.SIGKILL)
            wait_until(lambda: probe_ok(beat, 2.0), 20, "a new keeper to beat")
        sampler.assert_clean()
    finally:
        c.stop_all()
        container.close()
