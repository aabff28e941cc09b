"""A harmless stand-in for `airflow scheduler`: logs start and stop, then idles.

`python -m failover.demo.standin [LOGFILE]`; used by `failover demo` and the tests.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType


def _record(path: str | None, word: str) -> None:
    if not path:
        return
    line = (
        f"{word} node={os.environ.get('FAILOVER_NODE', '?')} "
        f"epoch={os.environ.get('FAILOVER_EPOCH', '?')} pid={os.getpid()} "
        f"t={time.clock_gettime(time.CLOCK_BOOTTIME):.6f}\n"
    )
    with open(path, "a", encoding="ascii") as f:
        f.write(line)


def main(argv: list[str]) -> int:
    path = argv[0] if argv else None

    def stop(signum: int, frame: FrameType | None) -> None:
        _record(path, "stop")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    _record(path, "start")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
