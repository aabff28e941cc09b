"""Cost curve: N clusters x 3 daemons on ONE PostgreSQL / ZooKeeper / MariaDB server (loop 1 s);
prints a Markdown table per point and writes bench/results/scale.md.

    python bench/scale.py [--points 1,10,50] [--backends postgres,zookeeper,mysql]
                          [--window 30] [--runs 3]

Per point: start N clusters (each its own database, or its own cluster name on ZooKeeper; a
probe child per leader; default timings but loop 1 s), let them settle, then
  1. a CPU window: server CPU (the server process and its children, from /proc), daemon,
     keeper and child CPU and RSS (average per process), the server connections our processes
     hold (each server session mapped to the process owning its client socket);
  2. a request window: statements per daemon (its keeper's sessions included) from the
     PostgreSQL log (log_statement = all) or MariaDB's general log, switched on for this
     window only, or ZooKeeper requests received per session (`cons`, pings included);
  3. kill -9 of the leader daemon of cluster 0, --runs times, while the others run: time from
     the kill to the new child's exec (as bench/takeover.py), with the overlap sampler on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scalestats as st
from takeover import boottime, exec_time, new_start_after

from failover.keeper import proctree
from tests.harness import Cluster, Sampler

SETTINGS = {  # the defaults (harness.Cluster sets test values otherwise), loop 1 s
    "lease_seconds": "10",
    "loop_seconds": "1",
    "backend_timeout_seconds": "2",
    "self_fence_margin_seconds": "1",
    "stop_timeout_seconds": "10",
}
BATCH = 2  # clusters started at once: 6 daemons (and their keepers) importing on 2 cores
MIN_FREE_MB = 2500


class Backend:
    """One server and what it tells about its sessions: conn id -> client port, requests."""

    name = ""
    server: Any

    def settings(self, n: int, i: int) -> dict[str, str]:
        raise NotImplementedError

    def pid(self) -> int:
        return int(self.server.pid)

    def sessions(self) -> dict[int, int]:
        """Session id -> client port (ZooKeeper: the port itself)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter[int]]:
        """Requests per session id while the block runs."""
        raise NotImplementedError

    def close(self) -> None:
        self.server.close()


class Postgres(Backend):
    name = "postgres"

    def __init__(self) -> None:
        from tests.servers import PostgresServer

        self.server = PostgresServer(settings={"max_connections": 1000})
        self.server.start()

    def settings(self, n: int, i: int) -> dict[str, str]:
        return {"backend": "postgres", "postgres.dsn": self.server.create_database(f"s{n}_{i}")}

    def sessions(self) -> dict[int, int]:
        return st.pg_ports(self.server)

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter[int]]:
        counts: Counter[int] = Counter()
        self.server.execute("ALTER SYSTEM SET log_statement = 'all'")
        self.server.execute("SELECT pg_reload_conf()")
        time.sleep(1)
        start = st.log_size(self.server.log_path)
        try:
            yield counts
        finally:
            end = st.log_size(self.server.log_path)
            self.server.execute("ALTER SYSTEM RESET log_statement")
            self.server.execute("SELECT pg_reload_conf()")
        text = st.log_tail(self.server.log_path, start)[: end - start]
        counts.update(st.pg_count_log(text))


class MariaDB(Backend):
    name = "mysql"

    def __init__(self) -> None:
        from tests.servers import MariaDBServer

        self.server = MariaDBServer(settings={"max_connections": 1000})
        self.server.start()
        self.log = self.server.dir / "general.log"

    def settings(self, n: int, i: int) -> dict[str, str]:
        return {"backend": "mysql", "mysql.dsn": self.server.create_database(f"t_s{n}_{i}")}

    def sessions(self) -> dict[int, int]:
        return st.my_ports(self.server)

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter[int]]:
        counts: Counter[int] = Counter()
        self.server.query(f"SET GLOBAL general_log_file = '{self.log}'")
        self.server.query("SET GLOBAL general_log = ON")
        time.sleep(1)
        start = st.log_size(self.log)
        try:
            yield counts
        finally:
            end = st.log_size(self.log)
            self.server.query("SET GLOBAL general_log = OFF")
        counts.update(st.my_count_log(st.log_tail(self.log, start)[: end - start]))


class ZooKeeper(Backend):
    name = "zookeeper"

    def __init__(self, config: dict[str, str] | None = None) -> None:
        from tests.servers import ZooKeeperServer

        self.server = ZooKeeperServer(
            tick_time_ms=200, max_session_timeout_ms=20000, extra_config=config or None
        )
        self.server.start()

    def settings(self, n: int, i: int) -> dict[str, str]:
        return {"backend": "zookeeper", "zookeeper.hosts": f"{self.server.hosts}/scale{n}"}

    def sessions(self) -> dict[int, int]:
        return {port: port for port in st.zk_cons(self.server)}

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter[int]]:
        counts: Counter[int] = Counter()
        before = st.zk_cons(self.server)
        try:
            yield counts
        finally:
            after = st.zk_cons(self.server)
        counts.update({p: n - before[p] for p, n in after.items() if p in before})


BACKENDS: dict[str, Callable[[], Backend]] = {
    "postgres": Postgres,
    "zookeeper": ZooKeeper,
    "mysql": MariaDB,
}


class Fleet:
    """N clusters of 3 daemons (each under `setpriv --pdeathsig KILL`: none outlives us)."""

    def __init__(self, root: Path, backend: Backend, n: int) -> None:
        self.clusters: list[Cluster] = []
        for i in range(n):
            c = Cluster(
                root / f"c{i}",
                settings={**SETTINGS, **backend.settings(n, i)},
                cluster=f"s{os.getpid()}n{n}c{i}",
            )
            plain = c.argv
            c.argv = lambda node, plain=plain: [
                "setpriv",
                "--pdeathsig",
                "KILL",
                "--",
                *plain(node),
            ]  # type: ignore[method-assign]
            self.clusters.append(c)

    def renice_others(self, nice: int) -> None:
        """Every process of clusters 1..N-1 (daemons, keepers, children) at `nice`: cluster 0's
        takeover then meets the others' requests at the server but hardly their CPU use
        (they share this machine's cores, which hosts in production do not)."""
        for c in self.clusters[1:]:
            for proc in c.procs.values():
                for pid in {proc.pid} | proctree.tree_members(proc.pid):
                    with contextlib.suppress(OSError):
                        os.setpriority(os.PRIO_PROCESS, pid, nice)

    def start(self) -> None:
        for first in range(0, len(self.clusters), BATCH):
            if st.mem_available_mb() < MIN_FREE_MB:
                raise SystemExit(f"only {st.mem_available_mb():.0f} MB available: stopping")
            batch = self.clusters[first : first + BATCH]
            for c in batch:
                c.start_all()
            for c in batch:
                c.leader_child(timeout=300)
            time.sleep(1)  # the standbys' start-up, before the next batch

    def daemons(self) -> dict[int, tuple[str, str]]:
        return {p.pid: (c.cluster, n) for c in self.clusters for n, p in c.procs.items()}

    def procs(self) -> st.Procs:
        return st.find_procs(self.daemons(), {c.tag: c.cluster for c in self.clusters})

    def stop(self) -> None:
        for c in self.clusters:
            for proc in c.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        for c in self.clusters:
            c.stop_all(timeout=60)


def leaders(procs: st.Procs) -> set[tuple[str, str]]:
    """(cluster, node) of every daemon whose child runs."""
    return set(procs.children.values())


def cpu_window(fleet: Fleet, backend: Backend, window: float) -> dict[str, Any]:
    procs = fleet.procs()
    kinds = {"daemon": procs.daemons, "keeper": procs.keepers, "child": procs.children}
    before = {k: {p: st.cpu_seconds(p) for p in v} for k, v in kinds.items()}
    server0, t0 = st.tree_cpu(backend.pid()), time.monotonic()
    time.sleep(window)
    server1, wall = st.tree_cpu(backend.pid()), time.monotonic() - t0
    out: dict[str, Any] = {"server_cpu": 100 * (server1 - server0) / wall}
    out["server_rss"] = st.tree_rss(backend.pid())
    for kind, pids in kinds.items():
        alive = [p for p in pids if st.rss_mb(p) > 0]
        used = [st.cpu_seconds(p) - before[kind][p] for p in alive]
        out[f"{kind}_cpu"] = 100 * sum(used) / wall / max(1, len(alive))
        out[f"{kind}_rss"] = sum(st.rss_mb(p) for p in alive) / max(1, len(alive))
        out[f"{kind}s"] = len(alive)
    out["leaders"] = leaders(procs)
    return out


def owners_by_session(fleet: Fleet, backend: Backend) -> tuple[dict[int, tuple[str, str]], int]:
    """Server session id -> (cluster, node) of the daemon it serves (its keeper's sessions
    count for the daemon), and the number of server sessions that are not ours."""
    procs = fleet.procs()
    pids = [*procs.daemons, *procs.keepers, *procs.children]
    port_pid = st.socket_owners(pids)
    mine: dict[int, tuple[str, str]] = {}
    other = 0
    for session, port in backend.sessions().items():
        owner = procs.owner(port_pid[port]) if port in port_pid else None
        if owner is None:
            other += 1
        else:
            mine[session] = owner
    return mine, other


def per_role(
    values: dict[tuple[str, str], float], lead: set[tuple[str, str]], fleet: Fleet
) -> tuple[float, float]:
    """Average of `values` over the leader daemons and over the standby daemons."""
    every = [(c.cluster, n) for c in fleet.clusters for n in c.nodes]
    led = [values.get(d, 0.0) for d in every if d in lead]
    stood = [values.get(d, 0.0) for d in every if d not in lead]
    return statistics.fmean(led or [0.0]), statistics.fmean(stood or [0.0])


def request_window(fleet: Fleet, backend: Backend, window: float) -> dict[str, Any]:
    owners, other = owners_by_session(fleet, backend)
    conns: Counter[tuple[str, str]] = Counter(owners.values())
    with backend.counting() as counts:
        t0 = time.monotonic()
        time.sleep(window)
        wall = time.monotonic() - t0
    owners.update(owners_by_session(fleet, backend)[0])  # sessions opened meanwhile
    rates: Counter[tuple[str, str]] = Counter()
    for session, n in counts.items():
        if session in owners:
            rates[owners[session]] += n / wall
    lead = leaders(fleet.procs())
    conn_lead, conn_stand = per_role({k: float(v) for k, v in conns.items()}, lead, fleet)
    rate_lead, rate_stand = per_role(dict(rates), lead, fleet)
    return {
        "conns": sum(conns.values()) / max(1, 3 * len(fleet.clusters)),
        "conn_lead": conn_lead,
        "conn_stand": conn_stand,
        "other_sessions": other,
        "rate_lead": rate_lead,
        "rate_stand": rate_stand,
        "leaders_after": lead,
    }


def kill9_runs(cluster: Cluster, runs: int) -> tuple[list[float], str]:
    """kill -9 the leader daemon, time to the new child's exec; restart it as a standby."""
    took = []
    with Sampler(cluster.tag) as sampler:
        for _ in range(runs):
            leader, _ = cluster.leader_child(timeout=120)
            time.sleep(3)  # every standby steady
            t0 = boottime()
            cluster.signal(leader, signal.SIGKILL)
            new = new_start_after(cluster, t0, leader)
            took.append(exec_time(int(new["pid"])) - t0)
            cluster.procs[leader].wait(timeout=30)
            cluster.start(leader)
        time.sleep(5)
    return took, f"{len(sampler.violations)} overlap samples of {sampler.samples}"


def point(
    backend: Backend, n: int, window: float, runs: int, settle: float, nice: int | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        fleet = Fleet(Path(tmp), backend, n)
        started = time.monotonic()
        try:
            fleet.start()
            if nice is not None:
                fleet.renice_others(nice)
            print(f"{backend.name} {n}: started in {time.monotonic() - started:.0f} s", flush=True)
            time.sleep(settle)
            load0 = st.loadavg()
            out = cpu_window(fleet, backend, window)
            out.update(request_window(fleet, backend, window))
            out["changes"] = len(out["leaders"] ^ out["leaders_after"]) // 2
            out["took"], out["overlap"] = kill9_runs(fleet.clusters[0], runs)
            out["load"] = f"{load0} / {st.loadavg()}"
            out["mem_free"] = st.mem_available_mb()
            out["dead"] = sum(
                p.poll() is not None for c in fleet.clusters for p in c.procs.values()
            )
            return out
        finally:
            fleet.stop()


HEADER = (
    "| backend | clusters | daemons | server conns / daemon (leader, standby) "
    "| requests/s leader | requests/s standby | server CPU % | server PSS MB "
    "| daemon CPU % / RSS MB | keeper CPU % / RSS MB | child CPU % / RSS MB "
    "| kill -9 takeover s (runs) | load avg (1, 5, 15 min) |\n" + "|---" * 13 + "|"
)


def row(name: str, n: int, r: dict[str, Any]) -> str:
    took = sorted(r["took"])
    med = statistics.median(took) if took else float("nan")
    runs = ", ".join(f"{t:.3f}" for t in took)
    return (
        f"| {name} | {n} | {r['daemons']} | {r['conns']:.2f} ({r['conn_lead']:.1f}, "
        f"{r['conn_stand']:.1f}) | {r['rate_lead']:.2f} | {r['rate_stand']:.2f} "
        f"| {r['server_cpu']:.1f} | {r['server_rss']:.0f} "
        f"| {r['daemon_cpu']:.2f} / {r['daemon_rss']:.1f} | {r['keeper_cpu']:.2f} / "
        f"{r['keeper_rss']:.1f} | {r['child_cpu']:.2f} / {r['child_rss']:.1f} "
        f"| median {med:.3f} ({runs}) | {r['load']} |"
    )


def note(name: str, n: int, r: dict[str, Any]) -> str:
    return (
        f"- {name} x{n}: {r['keepers']} keepers, {r['childs']} children, "
        f"{r['other_sessions']} server sessions not ours, {r['changes']} leader changes "
        f"during the windows, {r['dead']} daemons dead at the end, kill -9 runs: "
        f"{r['overlap']}; {r['mem_free']:.0f} MB available at the end"
    )


def stop_on_term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", default="1,10,50")
    p.add_argument("--backends", default="postgres,zookeeper,mysql")
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=15.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.md"))
    p.add_argument(
        "--zk-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a zoo.cfg line for the ZooKeeper server (e.g. forceSync=no); repeatable",
    )
    p.add_argument(
        "--nice-others",
        type=int,
        metavar="N",
        help="run every cluster but the measured one at nice N (separates the server's load "
        "from the CPU the co-located daemons take)",
    )
    args = p.parse_args()
    for item in args.zk_config:
        if "=" not in item:
            p.error(f"--zk-config {item!r}: expected KEY=VALUE, e.g. forceSync=no")
    signal.signal(signal.SIGTERM, stop_on_term)  # clean up (stop every daemon) on SIGTERM
    if not shutil.which("setpriv"):
        raise SystemExit("setpriv (util-linux) is needed: no daemon may outlive the bench")
    rows, notes = [], []
    print(HEADER, flush=True)
    for name in args.backends.split(","):
        if name == "zookeeper":
            backend: Backend = ZooKeeper(dict(x.split("=", 1) for x in args.zk_config))
        else:
            backend = BACKENDS[name]()
        try:
            for n in (int(x) for x in args.points.split(",")):
                try:
                    r = point(backend, n, args.window, args.runs, args.settle, args.nice_others)
                except AssertionError as err:  # a timeout: say so, go on with the next point
                    rows.append(f"| {name} | {n} | failed: {err} |")
                    notes.append(f"- {name} x{n}: failed: {err}")
                else:
                    rows.append(row(name, n, r))
                    notes.append(note(name, n, r))
                print(rows[-1], "\n", notes[-1], flush=True)
                write(args, rows, notes)
        finally:
            backend.close()
    return 0


def write(args: argparse.Namespace, rows: list[str], notes: list[str]) -> None:
    """The report so far (rewritten after every point)."""
    text = "\n".join(
        [
            f"Cost curve on one server ({platform.node()}: {os.cpu_count()} cores, "
            f"{st.mem_available_mb() / 1024:.0f} GB available, Python "
            f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            "",
            f"`python bench/scale.py {' '.join(sys.argv[1:])}`: lease 10 s, loop 1 s, "
            f"backend timeout 2 s; windows of {args.window:g} s.",
            "",
            HEADER,
            *rows,
            "",
            *notes,
            "",
        ]
    )
    Path(args.out).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
