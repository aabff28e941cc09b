"""Soak: random faults against three local daemons for N minutes (pytest -m soak;
FAILOVER_TEST_SOAK_MINUTES, default 2). Reports faults, takeovers and overlap samples (must be 0)."""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ..harness import Cluster, Sampler, read_records

pytestmark = pytest.mark.soak
FAULTS = ("kill9_daemon", "sigterm_daemon", "sigstop_daemon", "kill9_child")


def test_random_faults(tmp_path: Path) -> None:
    minutes = float(os.environ.get("FAILOVER_TEST_SOAK_MINUTES", "2"))
    rng = random.Random(int(os.environ.get("FAILOVER_TEST_SOAK_SEED", "7")))
    c = Cluster(tmp_path, probe_args=("--fork", "1", "--escape", "session"))
    faults: Counter[str] = Counter()
    end = time.monotonic() + 60 * minutes
    try:
        with Sampler(c.tag) as sampler:
            c.start_all()
            for _ in range(10_000):
                if time.monotonic() >= end:
                    break
                leader, _ = c.leader_child(timeout=30)
                fault = rng.choice(FAULTS)
                faults[fault] += 1
                if fault == "kill9_child":
                    pids = [
                        int(r["pid"])
                        for r in read_records(c.records)
                        if r["word"] == "start" and r["node"] == leader
                    ]
                    os.kill(pids[-1], signal.SIGKILL)
                elif fault == "sigstop_daemon":
                    c.signal(leader, signal.SIGSTOP)
                    time.sleep(2 * 3.0)
                    c.signal(leader, signal.SIGCONT)
                else:
                    c.signal(leader, signal.SIGKILL if fault == "kill9_daemon" else signal.SIGTERM)
                    c.procs[leader].wait(timeout=30)
                    c.start(leader)
                time.sleep(rng.uniform(0.5, 2.0))
        starts = len([r for r in read_records(c.records) if r["word"] == "start"])
        print(
            f"\nsoak {minutes:g} min: faults {dict(faults)}, child starts {starts}, "
            f"samples {sampler.samples}, overlaps {len(sampler.violations)}",
            file=sys.stderr,
        )
        sampler.assert_clean()
    finally:
        c.stop_all()
