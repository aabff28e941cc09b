"""What bench/scale.py measures: /proc CPU and RSS; the servers' sessions and their request
counts come from tests/sessions.py (the tests count them too)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from failover.keeper import proctree
from tests.harness import cmdline
from tests.sessions import (  # noqa: F401 (bench/scale.py reads them from here)
    log_size,
    log_tail,
    my_count_log,
    my_ports,
    pg_count_log,
    pg_ports,
    socket_owners,
    zk_cons,
    zk_mntr,
)

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of `pid` (and of its reaped children with `children`); 0 if gone."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def rss_mb(pid: int) -> float:
    return proctree.rss_bytes(pid) / 2**20


def children_of(pid: int) -> list[int]:
    return [p for p, (_, ppid, _) in proctree.snapshot().items() if ppid == pid]


def tree_cpu(pid: int) -> float:
    """CPU seconds of a server: its main process, its reaped children, its live children
    (a PostgreSQL backend's time moves from the live sum to the postmaster's cutime on exit)."""
    return cpu_seconds(pid, children=True) + sum(cpu_seconds(c) for c in children_of(pid))


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (PostgreSQL's shared buffers) split between users."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_rss(pid: int) -> float:
    """Memory of a server and its children, as the sum of their PSS."""
    return pss_mb(pid) + sum(pss_mb(c) for c in children_of(pid))


def environ_node(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"FAILOVER_NODE="):
                    return item.split(b"=", 1)[1].decode()
    except OSError:
        pass
    return "?"


@dataclass
class Procs:
    """Our processes, by kind: daemon/keeper/child pid -> (cluster, node)."""

    daemons: dict[int, tuple[str, str]]
    keepers: dict[int, tuple[str, str]]
    children: dict[int, tuple[str, str]]

    def owner(self, pid: int) -> tuple[str, str] | None:
        for kind in (self.daemons, self.keepers, self.children):
            if pid in kind:
                return kind[pid]
        return None


def find_procs(daemons: dict[int, tuple[str, str]], tags: dict[str, str]) -> Procs:
    """One /proc scan: the keepers of our clusters (by their --name failover:<cluster>:<node>)
    and the probe children (by their tag, `tags` maps tag -> cluster)."""
    clusters = {c for c, _ in daemons.values()}
    keepers: dict[int, tuple[str, str]] = {}
    children: dict[int, tuple[str, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        argv = cmdline(pid)
        if b"failover.keeper" in argv and b"--name" in argv:
            parts = argv[argv.index(b"--name") + 1].decode().split(":")
            if len(parts) >= 3 and parts[0] == "failover" and parts[1] in clusters:
                keepers[pid] = (parts[1], parts[2])
        elif len(argv) > 3 and argv[1].endswith(b"probe.py") and argv[2] == b"--tag":
            cluster = tags.get(argv[3].decode())
            if cluster is not None:
                children[pid] = (cluster, environ_node(pid))
    return Procs(dict(daemons), keepers, children)


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
