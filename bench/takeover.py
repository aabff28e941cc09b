"""Takeover latency per backend and scenario; prints a Markdown table and writes it to
bench/results/takeover.md.

    python bench/takeover.py [--runs 20] [--backends local,postgres,mysql] [--scenarios ...]

Scenarios (three daemons, probe child, default loop_seconds=1, lease_seconds=5):
  graceful  SIGTERM the leader daemon; gap = new child's exec - old child's SIGTERM
  kill9     SIGKILL the leader daemon; time from the kill to the new child's exec
  kill9child  SIGKILL the leader's child; time from the kill to the restarted child's exec
  sigstop   SIGSTOP the leader daemon; time from the stop to the new child's exec
  keeperstop  SIGSTOP the leader's keeper; time from the stop to the new child's exec
            (the daemon finds it silent, kills its tree, steps down)
  keeperterm  SIGSTOP the leader's keeper, then SIGTERM the leader daemon; time from the
            SIGTERM to the new child's exec
  partition cut the leader's host from the backend (every daemon in its own network
            namespace, veth link down: packets vanish); time from the cut to the new
            child's exec; then heal and wait until the old leader follows (postgres and
            zookeeper and mysql; local has no network: n/a)
mysql runs on a private MariaDB (Debian's mariadb-server), like the tests.
"The new child's exec" is when the new child process exec'd, from the kernel's process events
(bench/execwatch.py: netlink proc connector, root; else /proc starttime, 10 ms steps); the
child's own start-up (Python, Airflow imports) comes on top.
A sampler (tests/harness.py, every 50 ms) watches the probe trees of the kill9 runs: any
sample with two trees alive is printed and fails the run.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.execwatch import ExecWatch
from tests.harness import Cluster, Sampler, keepers, read_records, wait_until
from tests.netns import Forwarder, Host, namespace_host

LEASE = 5.0
SETTINGS = {
    "lease_seconds": str(LEASE),
    "loop_seconds": "1",
    "backend_timeout_seconds": "1",
    "self_fence_margin_seconds": "1",
    "stop_timeout_seconds": "10",
}
TARGETS = {
    "graceful": "<= 0.2 s gap",
    "kill9": "<= 1 s (zookeeper: median <= 0.5 s)",
    "sigstop": f"<= lease + 1 s = {LEASE + 1:g} s",
    "kill9child": "restart on the same leader after the 1 s backoff",
    "partition": f"<= lease + 1 s = {LEASE + 1:g} s",
    "keeperstop": f"<= lease = {LEASE:g} s",
    "keeperterm": f"<= stop_timeout + 2 s + 1 s = {float(SETTINGS['stop_timeout_seconds']) + 3:g} s",
}
NAMESPACE_OCTETS = (221, 222, 223)  # 10.231.<octet>.0/30; chaos tests draw from 20..219


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def exec_time(pid: int) -> float:
    """When the process exec'd, on CLOCK_BOOTTIME: to the microsecond from the kernel's process
    events (execwatch, root), else its start from /proc (10 ms resolution: jiffies)."""
    if EXEC_WATCH is not None:
        t = EXEC_WATCH.exec_at(pid, timeout=2.0)
        if t is not None:
            return t
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _exec_watch() -> ExecWatch | None:
    """One watch for the whole bench run (None without the rights: /proc's jiffies then)."""
    try:
        watch = ExecWatch().__enter__()
    except OSError as err:
        print(f"exec times from /proc (10 ms steps): no process events ({err})", file=sys.stderr)
        return None
    atexit.register(watch.__exit__)
    return watch


EXEC_WATCH = _exec_watch()


def first_start_after(cluster: Cluster, t: float, exclude: str = "") -> dict[str, str] | None:
    """The first child start recorded after `t` (boottime) on a node other than `exclude`."""
    for r in read_records(cluster.records):
        if r["word"] == "start" and float(r["t"]) > t and r["node"] != exclude:
            return r
    return None


def new_start_after(cluster: Cluster, t: float, exclude: str) -> dict[str, str]:
    found: dict[str, str] = wait_until(
        lambda: first_start_after(cluster, t, exclude), 30, "a new child start"
    )
    return found


def one_run(cluster: Cluster, scenario: str) -> float:
    leader, epoch = cluster.leader_child(timeout=30)
    t0 = boottime()
    if scenario == "kill9child":
        mine = [
            r for r in read_records(cluster.records) if r["word"] == "start" and r["node"] == leader
        ]
        os.kill(int(mine[-1]["pid"]), signal.SIGKILL)
        new = new_start_after(cluster, t0, "")
        return exec_time(int(new["pid"])) - t0
    if scenario in ("keeperstop", "keeperterm"):
        (keeper,) = [pid for pid, node, _ in keepers(cluster.cluster) if node == leader]
        os.kill(keeper, signal.SIGSTOP)
        t0 = boottime()
    if scenario in ("graceful", "keeperterm"):
        cluster.signal(leader, signal.SIGTERM)
    elif scenario == "keeperstop":
        pass  # the daemon lives on; it must find its keeper silent by itself
    elif scenario == "kill9":
        cluster.signal(leader, signal.SIGKILL)
    else:
        cluster.signal(leader, signal.SIGSTOP)
    new = new_start_after(cluster, t0, leader)
    if scenario == "graceful":
        terms = [
            float(r["t"])
            for r in read_records(cluster.records)
            if r["word"] == "term" and r["node"] == leader and r["epoch"] == epoch
        ]
        t0 = terms[0]
    took = exec_time(int(new["pid"])) - t0
    if scenario == "keeperstop":
        return took  # the old leader stays, as a standby
    if scenario == "sigstop":
        cluster.signal(leader, signal.SIGCONT)
        cluster.signal(leader, signal.SIGTERM)
    cluster.procs[leader].wait(timeout=30)
    cluster.start(leader)
    return took


def bench(
    backend: str,
    scenario: str,
    runs: int,
    make_dsn: Callable[[], str] | None,
    zk_hosts: str | None = None,
) -> list[float]:
    settings = dict(SETTINGS, backend=backend)
    pause = 0.3
    if scenario == "kill9child":
        # One crash at a time: a child that ran 2 s is no fast failure, so no backoff doubling.
        settings["fast_failure_seconds"] = "2"
        pause = 2.5
    if scenario == "keeperstop":
        pause = 2 * LEASE  # the old leader cools down that long: one fault at a time
    probe: tuple[str, ...] = ()
    if backend == "zookeeper":
        assert zk_hosts is not None
        settings["zookeeper.hosts"] = f"{zk_hosts}/bench-{scenario}-{time.monotonic_ns()}"
    if backend == "postgres":
        assert make_dsn is not None
        dsn = make_dsn()
        settings["postgres.dsn"] = dsn
        probe = ("--pg-dsn", dsn)
    if backend == "mysql":
        assert make_dsn is not None
        settings["mysql.dsn"] = make_dsn()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        name = f"b{os.getpid()}"  # keepers are found by cluster name; others use "t"
        cluster = Cluster(Path(tmp), settings=settings, probe_args=probe, cluster=name)
        try:
            with Sampler(cluster.tag) as sampler:
                cluster.start_all()
                results = []
                for _ in range(runs):
                    results.append(one_run(cluster, scenario))
                    time.sleep(pause)
            if scenario in ("kill9", "keeperstop", "keeperterm"):
                overlaps = f"{len(sampler.violations)} overlap samples of {sampler.samples}"
                print(f"{backend} {scenario}: {overlaps}")
                sampler.assert_clean()
            return results
        finally:
            cluster.stop_all()


def partition_run(cluster: Cluster, hosts: dict[str, Host]) -> float:
    leader, _ = cluster.leader_child(timeout=60)
    t0 = boottime()
    hosts[leader].cut()
    try:
        new = new_start_after(cluster, t0, leader)
        took = exec_time(int(new["pid"])) - t0
    finally:
        hosts[leader].heal()
    wait_until(
        lambda: cluster.sentences(leader)[-1].startswith("no action: following leader"),
        60,
        f"{leader} to follow again after the heal",
    )
    return took


def bench_partition(backend: str, runs: int, zk_hosts: str | None = None) -> list[float]:
    """Every daemon in a network namespace of its own, reaching the backend over its veth."""
    from tests.servers import FAILOVER_PASSWORD, FAILOVER_USER, MariaDBServer, PostgresServer

    settings = dict(SETTINGS, backend=backend)
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        cluster = Cluster(Path(tmp), settings=settings)
        hosts = {
            node: stack.enter_context(namespace_host(octet))
            for node, octet in zip(cluster.nodes, NAMESPACE_OCTETS, strict=True)
        }
        endpoint: dict[str, dict[str, str]] = {}
        if backend == "postgres":
            ips = ",".join(h.host_ip for h in hosts.values())
            server = PostgresServer(settings={"listen_addresses": f"127.0.0.1,{ips}"})
            server.start()
            stack.callback(server.close)
            with open(server.data_dir / "pg_hba.conf", "a") as f:
                f.write("host all all 10.231.0.0/16 trust\n")
            server.execute("SELECT pg_reload_conf()")
            dsn = server.create_database("bench_partition")
            for node, h in hosts.items():
                mine = dsn.replace("127.0.0.1", h.host_ip)
                endpoint[node] = {"postgres.dsn": mine, "--pg-dsn": mine}
        elif backend == "mysql":
            ips = ",".join(h.host_ip for h in hosts.values())
            my = MariaDBServer(settings={"bind_address": f"127.0.0.1,{ips}"})
            my.start()
            stack.callback(my.close)
            my.create_database("t_bench_partition")
            dsn = my.dsn("t_bench_partition", user=FAILOVER_USER, password=FAILOVER_PASSWORD)
            for node, h in hosts.items():
                endpoint[node] = {"mysql.dsn": dsn.replace("127.0.0.1", h.host_ip)}
        else:
            assert zk_hosts is not None
            port = int(zk_hosts.rsplit(":", 1)[1])
            chroot = f"/bench-partition-{time.monotonic_ns()}"
            for node, h in hosts.items():
                forward = Forwarder(h.host_ip, port)
                stack.callback(forward.close)
                endpoint[node] = {"zookeeper.hosts": f"{h.host_ip}:{forward.listen_port}{chroot}"}
        real_argv = cluster.argv

        def argv(node: str) -> list[str]:
            mine = dict(endpoint[node])
            pg = mine.pop("--pg-dsn", None)
            cluster.settings.update(mine)
            cluster.probe_args = ("--pg-dsn", pg) if pg else ()
            return hosts[node].exec_prefix() + real_argv(node)

        cluster.argv = argv  # type: ignore[method-assign]
        try:
            cluster.start_all()
            results = []
            for _ in range(runs):
                results.append(partition_run(cluster, hosts))
                time.sleep(1.0)
            return results
        finally:
            cluster.stop_all()


def start_servers(backends: list[str]) -> tuple[Any, Any]:
    """The PostgreSQL and ZooKeeper servers the backends need (None where not needed)."""
    pg = zk = None
    if "postgres" in backends:
        from tests.servers import PostgresServer

        pg = PostgresServer()
        pg.start()
    if "zookeeper" in backends:
        from tests.servers import ZooKeeperServer

        zk = ZooKeeperServer(tick_time_ms=200, max_session_timeout_ms=20000)
        zk.start()
    return pg, zk


def start_mariadb(backends: list[str]) -> tuple[Any, Callable[[], str] | None]:
    """A private MariaDB and a maker of fresh databases on it, for the mysql backend."""
    if "mysql" not in backends:
        return None, None
    from tests.servers import MariaDBServer

    server = MariaDBServer()
    server.start()
    counter = iter(range(1000))
    return server, lambda: server.create_database(f"t_bench_{next(counter)}")


def write_report(lines: list[str], out: str | Path, append: bool = False) -> None:
    """Write a bench's Markdown lines to `out` (after what it holds, with `append`) and print
    them."""
    text = "\n".join(lines) + "\n"
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    before = path.read_text() + "\n" if append and path.exists() else ""
    path.write_text(before + text)
    print("\n" + text)


def row(backend: str, scenario: str, values: list[float]) -> str:
    if not values:
        return f"| {backend} | {scenario} | - | n/a | n/a | n/a | n/a | one host, no network |"
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return (
        f"| {backend} | {scenario} | {len(values)} | {values[0]:.3f} | "
        f"{statistics.median(values):.3f} | {p95:.3f} | {values[-1]:.3f} | {TARGETS[scenario]} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--backends", default="local,postgres,zookeeper")
    p.add_argument("--scenarios", default="graceful,kill9,kill9child,sigstop,partition")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "takeover.md"))
    args = p.parse_args()
    backends = args.backends.split(",")
    server, zk = start_servers(backends)
    make_dsn = None
    if server is not None:
        counter = iter(range(1000))
        make_dsn = lambda: server.create_database(f"bench_{next(counter)}")  # noqa: E731
    zk_hosts = zk.hosts if zk is not None else None
    my_server, my_dsn = start_mariadb(backends)
    lines = [
        f"Takeover latency, seconds ({platform.node()}: {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, lease {LEASE:g} s, loop 1 s, "
        f"{time.strftime('%Y-%m-%d')})",
        "",
        "| backend | scenario | runs | min | median | p95 | max | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        for backend in backends:
            for scenario in args.scenarios.split(","):
                if scenario == "partition":
                    values = (
                        [] if backend == "local" else bench_partition(backend, args.runs, zk_hosts)
                    )
                else:
                    dsns = my_dsn if backend == "mysql" else make_dsn
                    values = bench(backend, scenario, args.runs, dsns, zk_hosts)
                lines.append(row(backend, scenario, values))
                print(lines[-1], flush=True)
    finally:
        if server is not None:
            server.close()
        if my_server is not None:
            my_server.close()
        if zk is not None:
            zk.close()
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
