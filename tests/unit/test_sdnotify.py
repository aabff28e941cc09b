"""sd_notify against a real datagram socket, and the watchdog rule."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from failover.config import Settings
from failover.controller import Role
from failover.daemon import check_watchdog, watchdog_ok
from failover.errors import ConfigError
from failover.ops.sdnotify import Notifier


def receiver(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock, path


def test_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    sock, path = receiver(tmp_path)
    n = Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert n.enabled and n.watchdog_seconds == 5.0
    n.ready("no action:\nI am the leader")
    msg = sock.recv(4096).decode()
    assert (
        "READY=1" in msg
        and "STATUS=no action: I am the leader" in msg
        and f"MAINPID={os.getpid()}" in msg
    )
    n.status("no action:\nI am the leader")  # unchanged: nothing sent
    n.status("stepping down")
    assert sock.recv(4096) == b"STATUS=stepping down"
    n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.close()
    sock.close()


def test_abstract_socket_and_disabled_cases(tmp_path: Path) -> None:
    name = f"failover-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
    assert sock.recv(100) == b"WATCHDOG=1"
    sock.close()
    off = Notifier({})
    assert not off.enabled and off.send("READY=1") is False
    assert (
        Notifier(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"}
        ).watchdog_seconds
        is None
    )
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert gone.send("READY=1") is False  # no listener: ignored, never raises


def test_watchdog_rule() -> None:
    assert watchdog_ok(Role.STANDBY, 0.0, 100.0, 5.0)
    assert watchdog_ok(Role.LEADER, 106.0, 100.0, 5.0)
    assert not watchdog_ok(Role.LEADER, 104.0, 100.0, 5.0)  # a missed ping could outlive it
    assert not watchdog_ok(Role.DEMOTING, 101.0, 100.0, 5.0)


def test_watchdog_period_must_fit_the_lease() -> None:
    s = Settings(node="n")  # lease 10, margin 1, loop 1
    check_watchdog(None, s)
    check_watchdog(5.0, s)
    with pytest.raises(ConfigError, match="WatchdogSec: 9 s is not below"):
        check_watchdog(9.0, s)
    with pytest.raises(ConfigError, match="shorter than two ticks"):
        check_watchdog(1.5, s)
