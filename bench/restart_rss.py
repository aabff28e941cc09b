"""Memory of daemons across database server restarts: RSS, threads, fds, malloc, smaps.

python bench/restart_rss.py --backend mysql --restarts 14 [--nodes 3] [--probe]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.takeover import LEASE, SETTINGS
from tests.harness import Cluster

PROBE_DIR = Path(__file__).with_name("rssprobe")


def status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "Threads"):
                out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def smaps(pid: int) -> dict[str, int]:
    """Rss kB per mapping, keyed by address range and name."""
    out: dict[str, int] = {}
    key = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                key = f"{head[0]} {head[5] if len(head) > 5 else '[anon]'}"
            elif head and head[0] == "Rss:":
                out[key] = int(head[1])
    return out


def smaps_diff(before: dict[str, int], after: dict[str, int], top: int = 6) -> str:
    deltas = [(after.get(k, 0) - before.get(k, 0), k) for k in set(before) | set(after)]
    deltas = sorted((d for d in deltas if abs(d[0]) >= 64), reverse=True)[:top]
    return "; ".join(f"{k.split()[1]}@{k.split()[0][:12]} {d:+d}" for d, k in deltas) or "-"


def probe_dump(pid: int, out_dir: Path) -> str:
    """The in-process probe's one-line summary (bench/rssprobe/sitecustomize.py), if loaded."""
    path = out_dir / f"{pid}.txt"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.kill(pid, signal.SIGUSR2)
    for _ in range(100):
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text().strip()
        time.sleep(0.05)
    return "(no probe answer)"


def server(
    backend: str, stack: contextlib.ExitStack, fault: str = "restart"
) -> tuple[dict[str, str], Callable[[], None]]:
    if backend == "mysql":
        from tests.servers import FAILOVER_PASSWORD, FAILOVER_USER, MariaDBServer

        my = MariaDBServer()
        my.start()
        stack.callback(my.close)
        my.create_database("t_rss")
        dsn = my.dsn("t_rss", user=FAILOVER_USER, password=FAILOVER_PASSWORD)
        if fault == "restart":
            return {"backend": "mysql", "mysql.dsn": dsn}, my.restart

        def kill_sessions() -> None:
            ids = my.query(
                f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{FAILOVER_USER}'"
            )
            for (conn_id,) in ids:
                with contextlib.suppress(Exception):
                    my.query(f"KILL CONNECTION {int(conn_id)}")

        return {"backend": "mysql", "mysql.dsn": dsn}, kill_sessions
    from tests.servers import PostgresServer

    pg = PostgresServer()
    pg.start()
    stack.callback(pg.close)
    return {"backend": "postgres", "postgres.dsn": pg.create_database("rss")}, pg.restart


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", choices=("mysql", "postgres"), default="mysql")
    ap.add_argument("--restarts", type=int, default=14)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--fault", choices=("restart", "kill"), default="restart")
    ap.add_argument("--settle", type=float, default=3 * LEASE, help="seconds after a restart")
    ap.add_argument("--probe", action="store_true", help="load bench/rssprobe in the daemons")
    ap.add_argument("--smaps", action="store_true", help="print the mappings that grew")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="restart-rss-")))
        settings, restart = server(args.backend, stack, args.fault)
        nodes = tuple(f"n{i + 1}" for i in range(args.nodes))
        c = Cluster(tmp, nodes=nodes, settings={**SETTINGS, **settings}, cluster="rss")
        if args.probe:
            path = os.environ.get("PYTHONPATH", "")
            c.env = {"PYTHONPATH": f"{PROBE_DIR}:{path}", "RSSPROBE_DIR": str(tmp)}
        c.start_all()
        stack.callback(c.stop_all)
        c.leader_child(timeout=60)
        time.sleep(args.settle)
        base = {n: smaps(c.procs[n].pid) for n in nodes}
        print("| restart | " + " | ".join(f"{n} RSS MB / anon / thr / fds" for n in nodes) + " |")
        for i in range(args.restarts + 1):
            if i:
                restart()
                with contextlib.suppress(AssertionError):
                    c.leader_child(timeout=60)
                time.sleep(args.settle)
            cells = []
            for n in nodes:
                s = status(c.procs[n].pid)
                cells.append(
                    f"{s['VmRSS'] / 1024:.1f} / {s['RssAnon'] / 1024:.1f} / "
                    f"{s['Threads']} / {s['fds']}"
                )
            print(f"| {i} | " + " | ".join(cells) + " |", flush=True)
            for n in nodes if args.probe else ():
                print(f"    {n}: {probe_dump(c.procs[n].pid, tmp)}", flush=True)
            for n in nodes if args.smaps else ():
                now = smaps(c.procs[n].pid)
                print(f"    {n} smaps: {smaps_diff(base[n], now)}", flush=True)
                base[n] = now
    return 0


if __name__ == "__main__":
    sys.exit(main())
