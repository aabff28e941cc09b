"""The oracle itself: the invariant sampler must notice two child trees at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ..harness import PROBE, Sampler, tagged_processes, wait_until


def test_sampler_catches_two_epochs_at_once(tmp_path: Path) -> None:
    tag = f"probe-{uuid.uuid4().hex[:8]}"
    procs = []
    try:
        with Sampler(tag) as sampler:
            for epoch in ("1", "2"):
                env = {**os.environ, "FAILOVER_EPOCH": epoch, "FAILOVER_NODE": f"n{epoch}"}
                argv = [sys.executable, PROBE, "--tag", tag, "--record", str(tmp_path / "r.log")]
                procs.append(subprocess.Popen(argv, env=env))
            wait_until(lambda: len(tagged_processes(tag)) == 2, 10, "two probes")
            time.sleep(0.3)
        assert sampler.violations
        with pytest.raises(AssertionError, match="one child tree at a time broken"):
            sampler.assert_clean()
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_live_probe_without_failover_env_still_counts(tmp_path: Path) -> None:
    """A probe killed between the sampler's reads of its cmdline and its environ is skipped
    (its memory is gone: both read empty); a live one whose environment lacks FAILOVER_* is
    still reported, as an unknown owner, so it still breaks the invariant beside another."""
    tag = f"probe-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, PROBE, "--tag", tag, "--record", str(tmp_path / "r.log")]
    bare = subprocess.Popen(argv, env={"PATH": os.environ.get("PATH", "/usr/bin")})
    try:
        found = wait_until(lambda: tagged_processes(tag), 10, "the probe")
        assert found == {bare.pid: {"epoch": "?", "node": "?"}}
    finally:
        bare.kill()
        bare.wait()
