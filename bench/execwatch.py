"""When a process exec'd, to the microsecond: the kernel's process events (netlink proc
connector, root only), for takeover benchmarks whose figures are a few ms long.

/proc/<pid>/stat gives a process's start in jiffies (10 ms): too coarse for a 20 ms takeover.

    with ExecWatch() as w:
        ...
        t = w.exec_at(pid, timeout=5)   # CLOCK_BOOTTIME seconds, or None
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXEC = 0x00000002
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
EXEC = struct.Struct("=ii")  # process_pid, process_tgid


class ExecWatch:
    """Collects the exec time of every process on the host while open."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        self.sock.bind((os.getpid(), CN_IDX_PROC))
        self.execs: dict[int, float] = {}  # tgid -> last exec, boottime seconds
        self.cond = threading.Condition()
        self.stop = False
        # monotonic -> boottime (they differ by the time spent suspended; none while we run)
        self.offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.clock_gettime(
            time.CLOCK_MONOTONIC
        )
        self.thread = threading.Thread(target=self._run, name="execwatch", daemon=True)

    def __enter__(self) -> ExecWatch:
        op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
        self.sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(cn), 3, 0, 0, os.getpid()) + cn)
        self.sock.settimeout(0.2)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self.thread.join(timeout=2)
        self.sock.close()

    def _run(self) -> None:
        head = NLMSG_HDR.size + CN_MSG.size
        while not self.stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < head + EVENT.size + EXEC.size:
                continue
            what, _, stamp = EVENT.unpack_from(data, head)
            if what != PROC_EVENT_EXEC:
                continue
            _, tgid = EXEC.unpack_from(data, head + EVENT.size)
            with self.cond:
                self.execs[tgid] = stamp / 1e9 + self.offset
                self.cond.notify_all()

    def exec_at(self, pid: int, timeout: float = 5.0) -> float | None:
        """When `pid` last exec'd (CLOCK_BOOTTIME), waiting up to `timeout` for the event."""
        end = time.monotonic() + timeout
        with self.cond:
            while pid not in self.execs:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.execs[pid]
