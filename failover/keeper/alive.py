"""The keeper's alive file, for a liveness probe on the container the keeper runs in.

Standard library only: the keeper imports it; `--check` runs as the probe's command.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from failover.keeper.proof import boottime

BEAT_SECONDS = 0.5  # rewrite at most this often; the keeper's loops wake at least every second
WAKE_SECONDS = 1.0  # the longest a keeper that writes an alive file sleeps between beats
DEFAULT_MAX_AGE = 3.0


class Alive:
    """Writes our CLOCK_BOOTTIME into a file: fixed width, in place (no rename, no truncate).

    CLOCK_BOOTTIME is the kernel's, shared by every container of the host: the probe in the
    same container compares it with its own reading, so wall-clock jumps cannot fool it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.last = -BEAT_SECONDS
        self.beat()

    def beat(self) -> None:
        now = boottime()
        if now - self.last < BEAT_SECONDS:
            return
        self.last = now
        try:
            os.pwrite(self.fd, f"{now:020.6f}\n".encode(), 0)
        except OSError:
            pass  # a full or read-only volume: the probe fails, which is the truth


def age(path: str) -> tuple[float | None, str]:
    """Seconds since the keeper last wrote `path`; None and why when it cannot be told."""
    for _ in range(3):  # a read racing the in-place write may see a torn number: read again
        try:
            with open(path, "rb") as f:
                text = f.read(64).decode("ascii", "replace").strip()
        except OSError as err:
            return None, f"cannot read {path}: {err.strerror}"
        try:
            return boottime() - float(text), ""
        except ValueError:
            time.sleep(0.01)
    return None, f"{path} does not hold a CLOCK_BOOTTIME reading"


def check_main(argv: Sequence[str]) -> int:
    """`--check FILE [--max-age S]`: exit 0 while the keeper beats, 1 (and why) when not."""
    p = argparse.ArgumentParser(
        prog="python -m failover.keeper --check",
        description="Liveness probe: fail when the keeper's alive file is older than --max-age.",
    )
    p.add_argument("file", help="the keeper's --alive-file")
    p.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE, help="seconds (default 3)")
    args = p.parse_args(argv)
    seconds, why = age(args.file)
    if seconds is None:
        print(f"keeper not alive: {why}", file=sys.stderr)
        return 1
    if seconds > args.max_age:
        print(
            f"keeper not alive: its loop last ran {seconds:.1f} s ago (limit {args.max_age:g} s): "
            "frozen or stuck",
            file=sys.stderr,
        )
        return 1
    return 0
