"""The keeper with real processes: EOF, deadline, stop order, escapees, the proof-of-life lock."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from failover.keeper.core import boottime
from failover.keeper.launcher import KeeperLauncher, SocketKeeperLink

from ..harness import PROBE, read_records, tagged_processes, wait_until


def launch(
    tmp_path: Path,
    *probe_args: str,
    run_for: float = 30.0,
    stop_timeout: float = 5.0,
    keeper_args: tuple[str, ...] = (),
) -> tuple[SocketKeeperLink, str, Path]:
    tag = f"probe-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records.log"
    command = [sys.executable, PROBE, "--tag", tag, "--record", str(records), *probe_args]
    env = {**os.environ, "FAILOVER_NODE": "k"}
    link = KeeperLauncher().launch(
        command, env, stop_timeout, ("--name", "failover:t:k", *keeper_args)
    )
    link.send(f"GO 1 {boottime() + run_for:.6f}")
    return link, tag, records


def lines_until(link: SocketKeeperLink, word: str, timeout: float = 10.0) -> list[str]:
    seen: list[str] = []

    def got() -> bool:
        seen.extend(link.read_lines())
        return any(line.startswith(word) for line in seen)

    wait_until(got, timeout, f"keeper line {word}")
    return seen


def started_tree(link: SocketKeeperLink, records: Path, size: int) -> None:
    """Wait until the probe and its grandchildren have their signal handlers in place."""
    lines_until(link, "STARTED")
    wait_until(
        lambda: len([r for r in read_records(records) if r["word"].endswith("start")]) == size,
        10,
        f"{size} probe processes ready",
    )


@pytest.mark.parametrize("escape", ["none", "pgid", "session"])
def test_control_stream_eof_kills_whole_tree(tmp_path: Path, escape: str) -> None:
    link, tag, records = launch(tmp_path, "--fork", "2", "--escape", escape)
    started_tree(link, records, 3)
    link.sock.close()  # what the kernel does when the daemon is SIGKILLed
    wait_until(lambda: not tagged_processes(tag), 5, "the tree to die after EOF")
    assert link.proc.wait(timeout=5) == 0


def test_eof_mid_fork_storm_leaves_nothing_when_the_keeper_exits(tmp_path: Path) -> None:
    """The probe forks orphans (each in its own session, reparented to the keeper, forking
    sleepers of its own) every 5 ms while the keeper kills: when the keeper exits, none of
    them may be alive."""
    link, tag, records = launch(tmp_path, "--storm", "100")
    try:
        lines_until(link, "STARTED")
        wait_until(lambda: len(tagged_processes(tag)) >= 30, 20, "the storm under way")
        link.sock.close()  # what the kernel does when the daemon is SIGKILLed
        assert link.proc.wait(timeout=15) == 0
        left = tagged_processes(tag)
        assert not left, f"the keeper exited with {len(left)} processes of its tree alive"
    finally:
        for pid in tagged_processes(tag):  # (only if it failed)
            os.kill(pid, signal.SIGKILL)


def test_missed_deadline_kills_tree_without_the_daemon(tmp_path: Path) -> None:
    link, tag, records = launch(tmp_path, "--fork", "1", "--escape", "session", run_for=1.5)
    started_tree(link, records, 2)
    t0 = time.monotonic()
    lines = lines_until(link, "GONE", timeout=10)
    assert time.monotonic() - t0 < 3.0
    assert any("deadline" in line for line in lines), lines
    assert not tagged_processes(tag)
    link.cleanup()


def test_run_until_extends_life(tmp_path: Path) -> None:
    link, tag, records = launch(tmp_path, run_for=1.0)
    started_tree(link, records, 1)
    link.send(f"RUN-UNTIL {boottime() + 30:.6f}")
    time.sleep(1.5)
    assert tagged_processes(tag), "the child died although its deadline was extended"
    link.send("KILL")
    lines_until(link, "GONE")
    assert not tagged_processes(tag)
    link.cleanup()


def test_stop_terms_main_pid_first_then_the_rest(tmp_path: Path) -> None:
    link, tag, records = launch(tmp_path, "--fork", "2", "--escape", "pgid")
    started_tree(link, records, 3)
    link.send("STOP")
    lines = lines_until(link, "GONE")
    assert "EXITED 0" in lines
    words = [r["word"] for r in read_records(records) if r["word"].endswith("term")]
    assert words == ["term", "grandchild-term", "grandchild-term"], words
    assert not tagged_processes(tag)
    link.cleanup()


def test_stop_escalates_to_sigkill_at_stop_timeout(tmp_path: Path) -> None:
    link, _, records = launch(tmp_path, "--ignore-term", stop_timeout=1.0)
    started_tree(link, records, 1)
    t0 = time.monotonic()
    link.send("STOP")
    lines = lines_until(link, "GONE")
    assert 0.9 < time.monotonic() - t0 < 4.0
    assert "EXITED -9" in lines
    link.cleanup()


def test_child_exit_is_reported_and_leftovers_killed(tmp_path: Path) -> None:
    link, tag, _ = launch(tmp_path, "--fork", "1", "--exit-after", "0.3", "--exit-code", "7")
    lines = lines_until(link, "GONE")
    assert "EXITED 7" in lines
    assert not tagged_processes(tag)
    link.cleanup()


def test_busy_proof_of_life_lock_refuses_to_start(tmp_path: Path) -> None:
    lock = tmp_path / "keeper.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        link, tag, _ = launch(
            tmp_path, keeper_args=("--lock-file", str(lock), "--lock-wait", "0.3")
        )
        lines = lines_until(link, "GONE")
        assert any("held by an older keeper" in line for line in lines)
        assert not any(line.startswith("STARTED") for line in lines)
        assert not tagged_processes(tag)
        link.cleanup()
    finally:
        os.close(fd)


def test_keeper_holds_lock_until_tree_gone(tmp_path: Path) -> None:
    lock = tmp_path / "keeper.lock"
    link, tag, _ = launch(tmp_path, "--fork", "1", keeper_args=("--lock-file", str(lock)))
    lines_until(link, "STARTED")
    fd = os.open(lock, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        link.send("STOP")
        lines_until(link, "GONE")
        link.cleanup()
        assert not tagged_processes(tag)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free now
    finally:
        os.close(fd)


def test_missing_command_is_reported(tmp_path: Path) -> None:
    link = KeeperLauncher().launch(["/nonexistent/cmd"], dict(os.environ), 5, [])
    link.send(f"GO 1 {boottime() + 30:.6f}")
    lines = lines_until(link, "GONE")
    assert any("cannot start '/nonexistent/cmd'" in line for line in lines)
    link.cleanup()


def test_warm_keeper_waits_for_go_and_exits_on_eof(tmp_path: Path) -> None:
    tag = f"probe-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, PROBE, "--tag", tag, "--record", str(tmp_path / "r.log")]
    link = KeeperLauncher().launch(command, dict(os.environ), 5, ["--name", "failover:t:k"])
    lines_until(link, "READY")
    time.sleep(0.3)
    assert not tagged_processes(tag), "a warm keeper started its child before GO"
    link.close()
    assert link.proc.returncode == 0
    assert not tagged_processes(tag)


def test_child_gets_epoch_and_appname_on_go(tmp_path: Path) -> None:
    link, tag, records = launch(tmp_path)
    started_tree(link, records, 1)
    (pid,) = tagged_processes(tag)
    env = dict(
        item.split("=", 1)
        for item in open(f"/proc/{pid}/environ", "rb").read().decode().split("\0")
        if "=" in item
    )
    assert env["FAILOVER_EPOCH"] == "1" and env["PGAPPNAME"] == "failover:t:k:1"
    link.send("KILL")
    lines_until(link, "GONE")
    link.cleanup()


@pytest.mark.integration
def test_pg_proof_session_named_by_epoch_and_kills_tree_when_cut(
    tmp_path: Path, pg_dsn: str
) -> None:
    import psycopg2

    tag = f"probe-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "r.log"
    command = [sys.executable, PROBE, "--tag", tag, "--record", str(records)]
    env = {**os.environ, "FAILOVER_KEEPER_DSN": pg_dsn}
    args = [
        "--name",
        "failover:t:k",
        "--pg-dsn-env",
        "FAILOVER_KEEPER_DSN",
        "--pg-channel",
        "failover:t",
    ]
    link = KeeperLauncher().launch(command, env, 5, args)
    lines_until(link, "READY")

    def names() -> list[str]:
        conn = psycopg2.connect(pg_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'failover:t:k%'"
                )
                return sorted(r[0] for r in cur.fetchall())
        finally:
            conn.close()

    assert names() == ["failover:t:k:standby"]
    link.send(f"GO 7 {boottime() + 30:.6f}")
    started_tree(link, records, 1)
    assert names() == ["failover:t:k:7:keeper"]
    (pid,) = tagged_processes(tag)
    assert "FAILOVER_KEEPER_DSN" not in open(f"/proc/{pid}/environ", "rb").read().decode()
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'failover:t:k:7:keeper'"
        )
    conn.close()
    lines = lines_until(link, "GONE")
    assert any("proof-of-life session lost" in line for line in lines), lines
    assert not tagged_processes(tag)
    link.cleanup()


@pytest.mark.integration
def test_pg_keeper_refuses_a_superseded_epoch(tmp_path: Path, pg_dsn: str) -> None:
    import psycopg2

    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE failover_cluster (cluster text PRIMARY KEY, epoch bigint)")
        cur.execute("INSERT INTO failover_cluster VALUES ('t', 6)")  # a newer leader bumped to 6
    conn.close()
    tag = f"probe-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, PROBE, "--tag", tag, "--record", str(tmp_path / "r.log")]
    env = {**os.environ, "FAILOVER_KEEPER_DSN": pg_dsn}
    args = [
        "--name",
        "failover:t:k",
        "--pg-dsn-env",
        "FAILOVER_KEEPER_DSN",
        "--pg-epoch-table",
        "failover_cluster:t",
    ]
    link = KeeperLauncher().launch(command, env, 5, args)
    lines_until(link, "READY")
    link.send(f"GO 5 {boottime() + 30:.6f}")  # a late GO for the superseded epoch 5
    lines = lines_until(link, "GONE")
    assert any("superseded" in line for line in lines), lines
    assert not any(line.startswith("STARTED") for line in lines)
    assert not tagged_processes(tag)
    link.cleanup()
