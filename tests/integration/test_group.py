"""The leader-only group with real processes: one keeper runs every component in its
session; stop order scheduler first; a side component restarted alone; every fault ends all."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from failover.keeper.core import boottime
from failover.keeper.group import component_arg
from failover.keeper.launcher import KeeperLauncher, SocketKeeperLink

from ..harness import PROBE, Cluster, Sampler, read_records, tagged_processes, wait_until
from .test_keeper import lines_until

pytestmark = pytest.mark.integration


def probe(tag: str, records: Path, *args: str) -> list[str]:
    return [sys.executable, PROBE, "--tag", tag, "--record", str(records), *args]


def launch_group(
    tmp_path: Path,
    side_args: tuple[str, ...] = (),
    stop_timeout: float = 5.0,
    extra: tuple[str, ...] = (),
) -> tuple[SocketKeeperLink, str, str, Path]:
    main_tag, side_tag = f"probe-{uuid.uuid4().hex[:8]}", f"probe-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records.log"
    side = probe(side_tag, records, *side_args)
    link = KeeperLauncher().launch(
        probe(main_tag, records),
        {**os.environ, "FAILOVER_NODE": "k"},
        stop_timeout,
        ("--name", "failover:t:k", "--component", component_arg("side", side), *extra),
    )
    link.send(f"GO 1 {boottime() + 30:.6f}")
    return link, main_tag, side_tag, records


def pids(lines: list[str]) -> dict[str, int]:
    out = {}
    for line in lines:
        word, *rest = line.split()
        if word == "STARTED":
            out[rest[1] if len(rest) > 1 else "main"] = int(rest[0])
    return out


def test_group_starts_together_and_stops_scheduler_first(tmp_path: Path) -> None:
    link, main_tag, side_tag, records = launch_group(tmp_path, ("--fork", "1"))
    seen = lines_until(link, "STARTED")
    wait_until(lambda: len(read_records(records)) >= 3, 10, "main, side and its grandchild")
    seen += link.read_lines()
    assert set(pids(seen)) == {"main", "side"}, seen
    link.send("STOP")
    seen += lines_until(link, "GONE")
    terms = [r for r in read_records(records) if r["word"].endswith("term")]
    by_pid = {int(r["pid"]): r["word"] for r in terms}
    assert terms[0]["pid"] == str(pids(seen)["main"]), terms  # the scheduler first
    assert str(pids(seen)["side"]) in [r["pid"] for r in terms[1:]] and by_pid
    assert not tagged_processes(main_tag) and not tagged_processes(side_tag)
    link.cleanup()


def test_side_that_drops_its_sigterm_gets_another(tmp_path: Path) -> None:
    """Airflow 3.3's dag-processor can drop a SIGTERM (its handler's sys.exit raised inside a
    garbage-collector callback is ignored): the keeper repeats it every second instead of
    letting the stop wait for the SIGKILL at the stop timeout (here 20 s)."""
    link, main_tag, side_tag, records = launch_group(
        tmp_path, ("--drop-first-term",), stop_timeout=20.0
    )
    seen = lines_until(link, "STARTED")
    wait_until(lambda: len(read_records(records)) >= 2, 10, "main and side started")
    seen += link.read_lines()
    side = str(pids(seen)["side"])
    started = time.monotonic()
    link.send("STOP")
    seen += lines_until(link, "GONE", timeout=15)
    took = time.monotonic() - started
    side_terms = [r for r in read_records(records) if r["word"] == "term" and r["pid"] == side]
    assert len(side_terms) == 2, side_terms
    assert took < 10, f"the stop took {took:.1f} s: the side's dropped SIGTERM was not repeated"
    assert not tagged_processes(main_tag) and not tagged_processes(side_tag)
    link.cleanup()


def test_deferred_side_starts_on_restart_only(tmp_path: Path) -> None:
    link, main_tag, side_tag, _ = launch_group(tmp_path, extra=("--defer-components",))
    seen = lines_until(link, "STARTED")
    wait_until(lambda: tagged_processes(main_tag), 10, "the main probe")
    time.sleep(0.5)
    seen += link.read_lines()
    assert set(pids(seen)) == {"main"} and not tagged_processes(side_tag), seen
    link.send("RESTART side")  # what the daemon sends once the scheduler heartbeats
    seen += lines_until(link, "STARTED")
    assert set(pids(seen)) == {"main", "side"}, seen
    wait_until(lambda: tagged_processes(side_tag), 10, "the side probe")
    link.send("STOP")
    lines_until(link, "GONE")
    assert not tagged_processes(main_tag) and not tagged_processes(side_tag)
    link.cleanup()


def test_side_exit_is_restarted_alone_and_kill_ends_only_it(tmp_path: Path) -> None:
    link, main_tag, side_tag, _ = launch_group(
        tmp_path, ("--exit-after", "0.3", "--exit-code", "7")
    )
    seen = lines_until(link, "EXITED")
    assert "EXITED 7 side" in seen and pids(seen)["main"] in tagged_processes(main_tag)
    main_pid = pids(seen)["main"]
    link.send("RESTART side")
    seen = lines_until(link, "STARTED")
    assert pids(seen)["side"] != main_pid
    seen += lines_until(link, "EXITED")  # it exits again after 0.3 s
    link.send("RESTART side")
    new = pids(lines_until(link, "STARTED"))["side"]
    link.send("KILL side")
    seen = lines_until(link, "EXITED")
    assert "EXITED -9 side" in seen or "EXITED 7 side" in seen
    assert new not in tagged_processes(side_tag)
    assert main_pid in tagged_processes(main_tag), "the scheduler must keep running"
    link.sock.close()  # the daemon died: everything goes
    wait_until(lambda: not tagged_processes(main_tag), 5, "the group to die after EOF")
    assert link.proc is not None and link.proc.wait(timeout=5) == 0


def test_eof_kills_every_component_and_escaped_grandchildren(tmp_path: Path) -> None:
    link, main_tag, side_tag, records = launch_group(
        tmp_path, ("--fork", "1", "--escape", "session")
    )
    lines_until(link, "STARTED")
    wait_until(lambda: len(read_records(records)) >= 3, 10, "main, side and its grandchild")
    link.sock.close()
    wait_until(
        lambda: not tagged_processes(main_tag) and not tagged_processes(side_tag), 5, "all gone"
    )


@pytest.fixture
def group_cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, nodes=("n1", "n2"))
    main = probe(c.tag, c.records, "--fork", "1")
    side = probe(c.tag, c.root / "side.log", "--exit-after", "1.0", "--exit-code", "3")
    c.components = {"scheduler": main, "side": side}
    c.settings = {
        "fast_failure_seconds": "0.5",  # the side runs 1 s: not a fast failure, no crash loop
        "backoff_initial_seconds": "0.5",
    }
    yield c
    c.stop_all()


def test_daemon_group_restarts_side_alone_and_kill9_ends_the_group(group_cluster: Cluster) -> None:
    c = group_cluster
    with Sampler(c.tag) as sampler:
        c.start_all()
        leader, epoch = c.leader_child()
        main_pid = wait_until(
            lambda: next(
                (int(r["pid"]) for r in read_records(c.records) if r["word"] == "start"), None
            ),
            10,
            "the main probe",
        )

        def status() -> dict[str, object]:
            out = c.cli("status", "--json", timeout=30)
            return json.loads(out.stdout)  # type: ignore[no-any-return]

        def side_restarted() -> bool:
            rows = [m for m in status()["members"] if m["node"] == leader]  # type: ignore[attr-defined]
            comps = rows[0]["components"] if rows else []
            return bool(comps) and comps[0]["restarts"] >= 2

        wait_until(side_restarted, 20, "the side component restarted twice", step=0.5)
        text = c.cli("status", timeout=30).stdout
        (row,) = [line for line in text.splitlines() if line.startswith(leader)]
        assert text.splitlines()[1].split()[-2:] == ["HEALTH", "COMPONENTS"], text
        # The probes write no job rows: health "unknown" for the main command and its side.
        assert re.search(r" running +\d+ +unknown +side \w+ (\d+|-) unknown \(\d+ restarts\)", row)
        assert main_pid in tagged_processes(c.tag), "the scheduler was restarted with its side"
        exits = [r for r in read_records(c.root / "side.log") if r["word"] == "exit"]
        assert len(exits) >= 2
        c.signal(leader, signal.SIGKILL)
        t0 = time.monotonic()
        new, new_epoch = c.leader_child(exclude=[leader], timeout=20)
        assert int(new_epoch) > int(epoch) and time.monotonic() - t0 < 15
        assert main_pid not in tagged_processes(c.tag)
    sampler.assert_clean()
