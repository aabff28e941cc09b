"""Wall-clock jumps of +1 h and -1 h on a running leader and standby (FAULTS.md 20) change
nothing: no takeover, no child restart, no lease loss. Deadlines live on CLOCK_BOOTTIME and
the wall clock is only for display.

The real clock stays untouched: libfaketime (LD_PRELOAD) fakes CLOCK_REALTIME for the daemons,
their keepers and children, from an offset read out of FAKETIME_TIMESTAMP_FILE on every call
(FAKETIME_NO_CACHE), so rewriting that file jumps the wall clock of running processes;
DONT_FAKE_MONOTONIC leaves CLOCK_MONOTONIC and CLOCK_BOOTTIME alone. libfaketime 0.9.10
(Debian 12) mangles absolute CLOCK_MONOTONIC sleeps even then, so Python 3.11's time.sleep
fails with EINVAL (wolfcw/libfaketime#426); a tiny shim preloaded first hands those sleeps to
the kernel unchanged. A SIGHUP reload makes each daemon log a line whose wall-clock timestamp
proves it saw the jump.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, DbSampler, Sampler, read_records, wait_until

pytestmark = pytest.mark.chaos
LEASE = 3.0
OFFSETS = {"+1h": 3600.0, "-1h": -3600.0, "+0": 0.0}

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Sleeps on the clocks libfaketime is told not to fake go straight to the kernel. */
int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *req,
                    struct timespec *rem)
{
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
    if (clock_id == CLOCK_MONOTONIC || clock_id == CLOCK_BOOTTIME) {
        int saved = errno;
        int err = syscall(SYS_clock_nanosleep, clock_id, flags, req, rem) == -1 ? errno : 0;
        errno = saved;
        return err;
    }
    if (next == NULL)
        next = (int (*)(clockid_t, int, const struct timespec *, struct timespec *))
            dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clock_id, flags, req, rem);
}
"""

CHECK = """
import time
a, b = time.clock_gettime(time.CLOCK_BOOTTIME), time.time()
time.sleep(0.05)
print(time.time() - b, time.clock_gettime(time.CLOCK_BOOTTIME) - a, b)
"""


def _unavailable(reason: str) -> None:
    msg = f"wall-clock jumps cannot be faked here: {reason} (scripts/test installs them)"
    if os.environ.get("FAILOVER_TEST_ALLOW_SKIP") == "1":
        pytest.skip(msg)
    pytest.fail(msg, pytrace=False)


def faketime_env(root: Path) -> tuple[dict[str, str], Path]:
    """Environment that runs a process under libfaketime with its offset in the returned file;
    checked with a real process (jump, sleep, untouched CLOCK_BOOTTIME)."""
    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not libs:
        _unavailable("libfaketime.so.1 not found (Debian package libfaketime)")
    if shutil.which("gcc") is None:
        _unavailable("gcc not found, needed to build the clock_nanosleep shim (gcc, libc6-dev)")
    root.mkdir(parents=True, exist_ok=True)
    (root / "shim.c").write_text(SHIM_C)
    build = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(root / "shim.so"), str(root / "shim.c")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if build.returncode != 0:
        _unavailable(f"cannot build the clock_nanosleep shim: {build.stderr.strip()[:300]}")
    stamp = root / "faketime"
    env = {
        "LD_PRELOAD": f"{root / 'shim.so'}:{libs[0]}",
        "FAKETIME_TIMESTAMP_FILE": str(stamp),
        "FAKETIME_NO_CACHE": "1",
        "DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
    }
    stamp.write_text("+1h\n")
    run = subprocess.run(
        [sys.executable, "-c", CHECK],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    stamp.write_text("+0\n")
    if run.returncode != 0:
        pytest.fail(f"python under libfaketime failed: {run.stderr.strip()[-500:]}")
    slept_wall, slept_boot, wall = (float(x) for x in run.stdout.split())
    assert abs(wall - time.time() - 3600) < 60, "libfaketime did not move the wall clock"
    assert 0.04 <= slept_boot < 5 and 0.04 <= slept_wall < 5, run.stdout
    return env, stamp


def reload_stamps(c: Cluster, node: str) -> list[datetime.datetime]:
    """Wall-clock timestamps of the node's `config_reloaded` log lines."""
    path = c.root / f"{node}.log"
    stamps = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "config_reloaded":
            stamps.append(
                datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            )
    return stamps


def seen_offset(c: Cluster, node: str) -> float:
    """SIGHUP the daemon and return its wall clock's offset from the real one (seconds)."""
    before = len(reload_stamps(c, node))
    c.signal(node, signal.SIGHUP)
    stamps = wait_until(
        lambda: (s := reload_stamps(c, node))[before:] and s, 10, f"{node} to log its reload"
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    return float((stamps[-1] - now).total_seconds())


@pytest.mark.parametrize("backend", ["local", "postgres", "mysql", "zookeeper"])
def test_wall_clock_jumps_change_nothing(backend: str, tmp_path: Path, request: Any) -> None:
    env, stamp = faketime_env(tmp_path / "faketime")
    settings: dict[str, str] = {"backend": backend, "lease_seconds": str(LEASE)}
    probe: tuple[str, ...] = ("--fork", "1", "--escape", "session")
    dsn = None
    if backend == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        settings["postgres.dsn"] = dsn
        probe += ("--pg-dsn", dsn)
    if backend == "mysql":
        settings["mysql.dsn"] = request.getfixturevalue("my_dsn")
    if backend == "zookeeper":
        zk = request.getfixturevalue("zk_server")
        settings["zookeeper.hosts"] = f"{zk.hosts}/wall-{uuid.uuid4().hex}"
    c = Cluster(tmp_path, nodes=("a", "b"), settings=settings, probe_args=probe, env=env)
    seen: dict[str, dict[str, float]] = {}
    db = DbSampler(dsn, c.cluster) if dsn is not None else None
    try:
        with Sampler(c.tag) as sampler, db or contextlib.nullcontext():
            c.start("a")
            owner = c.leader_child(timeout=30)
            c.start("b")
            wait_until(
                lambda: any("following leader a" in s for s in c.sentences("b")), 30, "b following"
            )
            time.sleep(LEASE)  # a few renewals on the real clock first
            pids = set(c.live_children())
            for spec, offset in OFFSETS.items():
                stamp.write_text(f"{spec}\n")  # the running daemons' wall clock jumps now
                seen[spec] = {node: seen_offset(c, node) for node in c.nodes}
                for node, got in seen[spec].items():
                    assert abs(got - offset) < 60, (node, spec, got)
                for _ in range(int(3 * LEASE / 0.5)):  # three leases on the jumped clock
                    time.sleep(0.5)
                    assert c.leader_child(timeout=5) == owner
                    assert set(c.live_children()) == pids, "the child tree changed"
            assert all(p.poll() is None for p in c.procs.values()), c.dump_logs()
            starts = [r for r in read_records(c.records) if r["word"] == "start"]
            said = {node: c.sentences(node) for node in c.nodes}
        sampler.assert_clean()
        if db is not None:
            db.assert_clean()
    finally:
        c.stop_all()
    assert len(starts) == 1, starts  # no restart, no takeover
    assert sum(s.startswith("acquired leadership") for s in said["a"]) == 1
    assert not any("acquired" in s or "leader with epoch" in s for s in said["b"]), said["b"]
    for node in c.nodes:
        bad = [s for s in said[node] if "cannot renew" in s or "lost" in s or "stepping" in s]
        assert not bad, (node, bad)
    print(
        f"\nwall clock {backend}: offsets seen by (a, b) "
        + ", ".join(f"{k}: {v['a']:+.0f}/{v['b']:+.0f} s" for k, v in seen.items())
        + f"; leader {owner} kept its child tree {sorted(pids)} throughout"
    )
