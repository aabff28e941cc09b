"""Soak: bench/soak.py's random faults against three daemons on each backend for N minutes
(pytest -m soak; FAILOVER_TEST_SOAK_MINUTES, default 2; FAILOVER_TEST_SOAK_SEED). Fails on any
overlap sample, child left behind, or fault after which no leader settled within 90 s."""

from __future__ import annotations

import os
import sys

import pytest

from bench.soak import run

pytestmark = pytest.mark.soak


@pytest.mark.timeout(600 + 60 * float(os.environ.get("FAILOVER_TEST_SOAK_MINUTES", "2")))
@pytest.mark.parametrize("backend", ["local", "postgres", "mysql", "zookeeper"])
def test_random_faults(backend: str) -> None:
    minutes = float(os.environ.get("FAILOVER_TEST_SOAK_MINUTES", "2"))
    text, problems = run(backend, minutes, int(os.environ.get("FAILOVER_TEST_SOAK_SEED", "7")))
    print("\n" + text, file=sys.stderr)
    assert not problems, problems
