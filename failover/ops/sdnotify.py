"""sd_notify over NOTIFY_SOCKET: READY, STATUS, WATCHDOG, STOPPING (no libsystemd needed).

A no-op outside systemd; the watchdog period comes from WATCHDOG_USEC (for our pid only).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]  # abstract namespace
        elif path.startswith("/"):
            self.address = path
        self.watchdog_seconds: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1_000_000
        self.sock: socket.socket | None = None
        self.last_status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.sendto("\n".join(fields).encode("utf-8", "replace"), self.address)
        except OSError:
            return False  # systemd gone or socket full: never stop the loop for it
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={_one_line(status)}", f"MAINPID={os.getpid()}")
        self.last_status = status

    def status(self, status: str) -> None:
        if status != self.last_status:
            self.send(f"STATUS={_one_line(status)}")
            self.last_status = status

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _one_line(text: str) -> str:
    return text.replace("\n", " ")[:400]
