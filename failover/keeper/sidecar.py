"""Sidecar mode: the keeper connects to the daemon's Unix socket and reads its `INIT` line.

Standard library only; the keeper's alive file keeps beating while it waits for either.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from failover.keeper.alive import WAKE_SECONDS, Alive


def connect(path: str, alive: Alive | None) -> socket.socket:
    """Connect to the daemon, waiting for it to listen (it may start later)."""
    delay = 0.1
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if alive is not None:
                alive.beat()
            time.sleep(delay)
            delay = min(delay * 2, WAKE_SECONDS if alive is not None else 2.0)


def read_init(sock: socket.socket, alive: Alive | None) -> tuple[dict[str, Any], bytes] | None:
    """The daemon's first line, `INIT <json>` (our options and env), and what followed it in
    the same read (a `GO` may); None if the daemon went away first."""
    data = b""
    sock.settimeout(WAKE_SECONDS)
    while b"\n" not in data:
        if alive is not None:
            alive.beat()
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return None
        data += chunk
    sock.settimeout(None)
    line, _, rest = data.partition(b"\n")
    word, _, payload = line.decode("utf-8", "replace").partition(" ")
    if word != "INIT":
        return None
    init: dict[str, Any] = json.loads(payload)
    return init, rest
