"""Faults of the child itself on real daemons: kill -9 of the scheduler, and a crash loop."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ..harness import Cluster, Sampler, read_records, wait_until

pytestmark = pytest.mark.chaos


def test_kill9_child_is_restarted_on_the_same_leader(tmp_path: Path) -> None:
    c = Cluster(tmp_path, probe_args=("--fork", "1", "--escape", "pgid"))
    try:
        with Sampler(c.tag) as sampler:
            c.start_all()
            leader, epoch = c.leader_child()
            (main,) = [int(r["pid"]) for r in read_records(c.records) if r["word"] == "start"]
            os.kill(main, signal.SIGKILL)
            wait_until(
                lambda: len([r for r in read_records(c.records) if r["word"] == "start"]) == 2,
                15,
                "the restarted child",
            )
            assert c.leader_child() == (leader, epoch)  # same leader, same epoch, no election
        sampler.assert_clean()
        assert any("restart in" in s or "starting the child" in s for s in c.sentences(leader))
    finally:
        c.stop_all()


def test_crash_loop_hands_leadership_to_another_candidate(tmp_path: Path) -> None:
    # Every child exits after 0.3 s: each leader gives up after 2 fast failures and cools down.
    c = Cluster(
        tmp_path,
        settings={"max_fast_failures": "2", "backoff_initial_seconds": "0.2"},
        probe_args=("--exit-after", "0.3", "--exit-code", "3"),
    )
    try:
        with Sampler(c.tag) as sampler:
            c.start_all()
            first = wait_until(
                lambda: next(
                    (r["node"] for r in read_records(c.records) if r["word"] == "start"), None
                ),
                20,
                "a first child",
            )
            wait_until(
                lambda: any("child crash loop" in s for s in c.sentences(first)),
                20,
                "the first leader to give up",
            )
            others = wait_until(
                lambda: (
                    {r["node"] for r in read_records(c.records) if r["word"] == "start"} - {first}
                ),
                20,
                "another candidate to try",
            )
            assert others
            time.sleep(0.5)
        sampler.assert_clean()
        transitions = [s for s in c.sentences(first) if "stepping down" in s]
        assert transitions and "child crash loop" in transitions[0]
    finally:
        c.stop_all()
