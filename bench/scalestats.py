"""What bench/scale.py measures: /proc CPU and RSS, which process owns a loopback socket, and
per-connection request counts on the server (PostgreSQL log, MariaDB general log, ZooKeeper cons).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failover.keeper import proctree
from tests.harness import cmdline

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


def socket_owners(pids: Iterable[int]) -> dict[int, int]:
    """Local TCP port -> pid, for the loopback client sockets of `pids`."""
    inode_port: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            inode_port[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    owners: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                port = inode_port.get(target[8:-1])
                if port is not None:
                    owners[port] = pid
    return owners


# ---------------------------------------------------------------- per-connection counters
# Each server gives: connection id -> client port (who) and connection id -> requests so far.

PG_STATEMENT = re.compile(r"\[(\d+)\] \S* ?LOG:  (?:statement|execute [^:]*):")
MY_QUERY = re.compile(r"^(?:\d{6}\s+[\d:]+)?\s+(\d+) (Query|Execute)\t")
ZK_CONS = re.compile(r"/127\.0\.0\.1:(\d+)\[\d+\]\(.*?recved=(\d+)")


def pg_ports(server: Any) -> dict[int, int]:
    """Backend pid -> client port of every TCP session."""
    rows = server.query(
        "SELECT pid, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL"
    )
    return {int(pid): int(port) for pid, port in rows if port and int(port) > 0}


def pg_count_log(text: str) -> Counter[int]:
    """Statements per backend pid in a stretch of the server log (log_statement = all)."""
    return Counter(int(m.group(1)) for m in PG_STATEMENT.finditer(text))


def my_ports(server: Any) -> dict[int, int]:
    rows = server.query("SELECT ID, HOST FROM information_schema.PROCESSLIST")
    out = {}
    for ident, host in rows:
        if host and ":" in host:
            out[int(ident)] = int(host.rsplit(":", 1)[1])
    return out


def my_count_log(text: str) -> Counter[int]:
    """Query/Execute lines per connection id in a stretch of MariaDB's general log."""
    counts: Counter[int] = Counter()
    for line in text.splitlines():
        m = MY_QUERY.match(line)
        if m:
            counts[int(m.group(1))] += 1
    return counts


def zk_cons(server: Any) -> dict[int, int]:
    """Client port -> requests received so far (pings included), from `cons`."""
    text = server.four_letter_word("cons", timeout=10)
    return {int(m.group(1)): int(m.group(2)) for m in ZK_CONS.finditer(text)}


def zk_mntr(server: Any) -> dict[str, str]:
    out = {}
    for line in server.four_letter_word("mntr", timeout=10).splitlines():
        if "\t" in line:
            key, value = line.split("\t", 1)
            out[key] = value.strip()
    return out


def log_tail(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
