"""Which process owns a server session, and what each session sent: the tests' and the
benchmarks' view of a PostgreSQL, MariaDB or ZooKeeper server's clients (loopback TCP)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any


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
