"""The systemd side: the unit file verifies and is hardened; a real daemon notifies a real
datagram socket and stops pinging the watchdog while it cannot renew its lease."""

from __future__ import annotations

import itertools
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..harness import Cluster, wait_until

pytestmark = pytest.mark.integration
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "failover.service"


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)", pytrace=False)
    return path


def test_unit_verifies_and_scores_at_most_4(tmp_path: Path) -> None:
    unit = tmp_path / "failover.service"
    # verify checks that ExecStart exists: point it at this interpreter for the check.
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/failover", sys.executable))
    done = subprocess.run(
        [analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    problems = [
        line
        for line in done.stderr.splitlines()
        if "failover.service" in line and "airflow" not in line
    ]
    assert done.returncode == 0 or not problems, done.stderr
    done = subprocess.run(
        [analyze(), "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    score = float(
        re.search(r"Overall exposure level for failover.service: ([0-9.]+)", done.stdout).group(1)
    )
    assert score <= 4.0, done.stdout[-2000:]
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSignal=SIGKILL",
        "KillMode=control-group",
        "Restart=always",
        "EnvironmentFile=-/etc/failover/failover.env",
    ):
        assert line in text


def test_daemon_notifies_and_withholds_watchdog_without_lease(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    c = Cluster(
        tmp_path / "run",
        nodes=("w1",),
        settings={"lease_seconds": "5", "self_fence_margin_seconds": "0.5"},
    )
    c.env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    got: list[tuple[float, str]] = []

    def drain(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                got.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                pass

    try:
        c.start("w1")
        wait_until(lambda: drain(0.2) or any("READY=1" in m for _, m in got), 15, "READY=1")
        assert any("STATUS=" in m for _, m in got)
        drain(2.0)
        pings = [t for t, m in got if m == "WATCHDOG=1"]
        assert len(pings) >= 3 and max(b - a for a, b in itertools.pairwise(pings)) < 1.5
        # Cut the leader off its backend: an exclusive SQLite lock makes every renew time out.
        db = sqlite3.connect(tmp_path / "run" / "state" / "t.db", timeout=5, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        cut = time.monotonic()
        drain(3.5)
        db.execute("ROLLBACK")
        db.close()
        late = [t for t, m in got if m == "WATCHDOG=1" and t > cut]
        # The self-fence deadline is 4.5 s after the last renew; with a 2 s watchdog the
        # pings must stop by 2.5 s after it, so systemd would kill the unit in time.
        assert not [t for t in late if t - cut > 2.8], late
    finally:
        c.stop_all()
        sock.close()
