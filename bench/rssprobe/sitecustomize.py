"""bench/restart_rss.py --probe: on SIGUSR2 a process writes <RSSPROBE_DIR>/<pid>.txt with its
threads, glibc malloc totals, pymalloc arenas and the object types whose count changed."""

from __future__ import annotations

import collections
import ctypes
import gc
import os
import signal
import tempfile
import threading

_last: collections.Counter[str] = collections.Counter()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> str:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    m = libc.mallinfo2()
    mb = 1024 * 1024
    return (
        f"malloc arena {m.arena / mb:.2f} used {m.uordblks / mb:.2f} "
        f"free {m.fordblks / mb:.2f} mmap {m.hblkhd / mb:.2f} ({m.hblks})"
    )


def _arenas() -> str:
    import sys

    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    keep = [
        line
        for line in text.splitlines()
        if "arenas allocated current" in line
        or "arenas highwater" in line
        or line.startswith("Total")
    ]
    return ", ".join(" ".join(line.split()) for line in keep)


def _dump(signum: int, frame: object) -> None:
    global _last
    gc.collect()
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    delta = counts.copy()
    delta.subtract(_last)
    grew = ", ".join(f"{k} {v:+d}" for k, v in delta.most_common(6) if v) if _last else "-"
    _last = counts
    threads = ",".join(sorted(t.name for t in threading.enumerate()))
    import sys

    text = f"threads [{threads}] | blocks {sys.getallocatedblocks()} | {_mallinfo()} | {_arenas()} | objects {sum(counts.values())} grew: {grew}\n"
    path = os.path.join(os.environ["RSSPROBE_DIR"], f"{os.getpid()}.txt")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


if os.environ.get("RSSPROBE_DIR") and signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL:
    signal.signal(signal.SIGUSR2, _dump)
