"""A probe child for tests: records start/stop, forks grandchildren that try to escape.

python tests/probe.py --tag TAG --record FILE [--fork N] [--escape pgid|session] [--storm N]
    [--ignore-term | --drop-first-term] [--exit-after S] [--exit-code C] [--fail-on-node NODE]
Every process carries TAG in its command line, so a sampler can find the whole tree.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def record(path: str, word: str) -> None:
    line = (
        f"{word} pid={os.getpid()} node={os.environ.get('FAILOVER_NODE', '?')} "
        f"epoch={os.environ.get('FAILOVER_EPOCH', '?')} "
        f"t={time.clock_gettime(time.CLOCK_BOOTTIME):.6f}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def grandchild(args: argparse.Namespace) -> None:
    if args.escape == "pgid":
        os.setpgid(0, 0)
    elif args.escape == "session":
        os.setsid()
    signal.signal(signal.SIGTERM, lambda *_: (record(args.record, "grandchild-term"), os._exit(0)))
    record(args.record, "grandchild-start")
    while True:
        time.sleep(0.2)


def orphan() -> None:
    """Fork a process that forks a sleeper in a session of its own and exits at once: the
    sleeper is reparented to the nearest subreaper (the keeper)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                for _ in range(10):  # and each forks sleepers of its own, one every 5 ms
                    if os.fork() == 0:
                        time.sleep(600)
                        os._exit(0)
                    time.sleep(0.005)
                time.sleep(600)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tag", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--fork", type=int, default=0)
    p.add_argument("--escape", choices=("none", "pgid", "session"), default="none")
    p.add_argument(
        "--storm",
        type=int,
        default=0,
        help="fork N orphans, one every 5 ms, each in a session of its own (its parent exits) "
        "forking 10 sleepers, one every 5 ms",
    )
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--drop-first-term", action="store_true", help="exit on the second SIGTERM")
    p.add_argument("--exit-after", type=float, default=0.0)
    p.add_argument("--exit-code", type=int, default=1)
    p.add_argument("--fail-on-node", help="on this node (FAILOVER_NODE) exit at once, unready")
    p.add_argument("--pg-dsn", help="hold a DB session (named by PGAPPNAME) like Airflow would")
    args = p.parse_args()
    if args.fail_on_node and os.environ.get("FAILOVER_NODE") == args.fail_on_node:
        record(args.record, "fail")
        return args.exit_code
    conn = None
    if args.pg_dsn:
        import psycopg2

        conn = psycopg2.connect(args.pg_dsn)  # application_name from PGAPPNAME
        conn.autocommit = True
    for _ in range(args.fork):
        if os.fork() == 0:
            try:
                grandchild(args)
            finally:
                os._exit(0)

    terms = []

    def on_term(signum: int, frame: object) -> None:
        record(args.record, "term")
        terms.append(signum)
        if not args.ignore_term and not (args.drop_first_term and len(terms) == 1):
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    record(args.record, "start")  # after the handler: "start" means ready for signals
    started = time.monotonic()
    stormed = 0
    while True:
        if stormed < args.storm:
            stormed += 1
            orphan()
            time.sleep(0.005)
            continue
        time.sleep(0.05)
        if conn is not None and conn.closed:
            return 3
        if args.exit_after and time.monotonic() - started >= args.exit_after:
            record(args.record, "exit")
            return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
