"""Soak: random faults against three daemons on one backend for N minutes, samplers running
throughout; prints a Markdown report and writes it to bench/results/soak-<backend>.md.

    python bench/soak.py --backend postgres --minutes 60 [--seed 1] [--out FILE]

Three daemons (lease 5 s, loop 1 s), each supervising a probe child that forks a grandchild
into a session of its own. Networked backends run every daemon in a network namespace of its
own (tests/netns.py), so a member can be cut off or slowed down; ZooKeeper is an ensemble of
three. Before each fault the soak waits for one settled leader; the fault is drawn (seeded)
from those that apply to the backend:

  kill9_daemon / sigterm_daemon  the leader daemon; restarted right after it exited
  sigstop_daemon   the leader daemon frozen for 2 leases, then continued
  kill9_child      the leader's child           kill9_keeper   the leader's keeper
  switchover       `failover switchover --to <a standby>`
  pause_resume     `failover pause`, 2-6 s, `failover resume` (no takeover expected)
  partition        a random member's veth down for 1-3 leases, then up
  slow_backend     +2 s on every packet the leader's host sends, for 3 leases
  server_restart   PostgreSQL / MariaDB restarted; ZooKeeper: the whole ensemble
  member_loss      ZooKeeper: one ensemble member stopped for 2 leases

Node n3 is the long-lived daemon: it is never killed or terminated (when it leads, daemon
kills are drawn again), so its RSS over the whole run is the leak check.
Outcome per fault: "takeover" when another node's child runs next, "restart" when a new
child runs on the same node, "kept" when the same child survived; the latency is from the
fault to the new child's exec (/proc starttime). Samplers: one child tree at every 50 ms
sample (all backends), one epoch's DB sessions (postgres). At the end every daemon gets
SIGTERM; probe processes or keepers still alive after that are "children left behind".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.takeover import (
    LEASE,
    SETTINGS,
    boottime,
    exec_time,
    first_start_after,
)  # the takeover bench's timings
from failover.keeper import proctree
from tests.harness import Cluster, DbSampler, Sampler, keepers, read_records
from tests.netns import Forwarder, Host, namespace_host

COMMON = ("kill9_daemon", "sigterm_daemon", "sigstop_daemon", "kill9_child", "kill9_keeper")
LOCAL = (*COMMON, "switchover", "pause_resume")
NETWORKED = (*LOCAL, "partition", "slow_backend", "server_restart")
FAULTS = {
    "local": LOCAL,
    "postgres": NETWORKED,
    "mysql": NETWORKED,
    "zookeeper": (*NETWORKED, "member_loss"),
}
DAEMON_KILLS = ("kill9_daemon", "sigterm_daemon")
LONG_LIVED = "n3"
QUIET = 2 * LEASE + 2  # no new child this long after a fault is undone: the child was kept
OCTETS = {"postgres": (224, 225, 226), "mysql": (227, 228, 229), "zookeeper": (230, 231, 232)}


@dataclass
class Setup:
    """The cluster, the servers behind it, and how to reach them."""

    cluster: Cluster
    hosts: dict[str, Host] = field(default_factory=dict)
    restart: Callable[[], None] | None = None
    member_loss: Callable[[float, random.Random], None] | None = None
    client: list[str] = field(default_factory=list)  # settings for CLI commands
    db_dsn: str | None = None  # for the DB-session sampler


Endpoints = dict[str, dict[str, str]]  # node -> its settings (and the probe's --pg-dsn)


def postgres_server(setup: Setup, stack: contextlib.ExitStack, ips: str) -> Endpoints:
    from tests.servers import PostgresServer

    pg = PostgresServer(settings={"listen_addresses": f"127.0.0.1,{ips}"})
    pg.start()
    stack.callback(pg.close)
    with open(pg.data_dir / "pg_hba.conf", "a") as f:
        f.write("host all all 10.231.0.0/16 trust\n")
    pg.execute("SELECT pg_reload_conf()")
    dsn = pg.create_database("soak")
    setup.db_dsn = dsn
    setup.restart = lambda: pg.restart()  # noqa: PLW0108
    setup.client += ["--set", f"postgres.dsn={dsn}"]
    out = {}
    for node, h in setup.hosts.items():
        mine = dsn.replace("127.0.0.1", h.host_ip)
        out[node] = {"postgres.dsn": mine, "--pg-dsn": mine}
    return out


def mariadb_server(setup: Setup, stack: contextlib.ExitStack, ips: str) -> Endpoints:
    from tests.servers import FAILOVER_PASSWORD, FAILOVER_USER, MariaDBServer

    my = MariaDBServer(settings={"bind_address": f"127.0.0.1,{ips}"})
    my.start()
    stack.callback(my.close)
    my.create_database("t_soak")
    dsn = my.dsn("t_soak", user=FAILOVER_USER, password=FAILOVER_PASSWORD)
    setup.restart = lambda: my.restart()  # noqa: PLW0108
    setup.client += ["--set", f"mysql.dsn={dsn}"]
    return {n: {"mysql.dsn": dsn.replace("127.0.0.1", h.host_ip)} for n, h in setup.hosts.items()}


def zookeeper_ensemble(setup: Setup, stack: contextlib.ExitStack, ips: str) -> Endpoints:
    """Three members; every host reaches each through a forwarder on its veth."""
    from tests.servers import ZooKeeperServer

    ensemble = ZooKeeperServer.ensemble(3, tick_time_ms=200, max_session_timeout_ms=20000)
    ensemble.start()
    stack.callback(ensemble.close)
    chroot = f"/soak-{time.monotonic_ns()}"
    setup.client += ["--set", f"zookeeper.hosts={ensemble.hosts}{chroot}"]
    out = {}
    for node, h in setup.hosts.items():
        members = []
        for server in ensemble:
            forward = Forwarder(h.host_ip, int(server.hosts.rsplit(":", 1)[1]))
            stack.callback(forward.close)
            members.append(f"{h.host_ip}:{forward.listen_port}")
        out[node] = {"zookeeper.hosts": ",".join(members) + chroot}

    def restart_ensemble() -> None:
        ensemble.stop()
        ensemble.start()

    def lose_member(seconds: float, rng: random.Random) -> None:
        server = rng.choice(list(ensemble))
        server.stop()
        time.sleep(seconds)
        server.start()

    setup.restart = restart_ensemble
    setup.member_loss = lose_member
    return out


SERVERS = {"postgres": postgres_server, "mysql": mariadb_server, "zookeeper": zookeeper_ensemble}


def backend_setup(backend: str, stack: contextlib.ExitStack, tmp: Path) -> Setup:
    """Three daemons on `backend` (each in a namespace of its own unless local), its server."""
    probe = ("--fork", "1", "--escape", "session")
    name = f"soak{backend}{os.getpid()}"
    cluster = Cluster(tmp, settings=dict(SETTINGS, backend=backend), probe_args=probe, cluster=name)
    setup = Setup(cluster, client=["--backend", backend])
    if backend == "local":
        setup.client += ["--set", f"local.dir={tmp / 'state'}"]
        return setup
    octets = OCTETS[backend]
    setup.hosts = {
        n: stack.enter_context(namespace_host(o))
        for n, o in zip(cluster.nodes, octets, strict=True)
    }
    ips = ",".join(h.host_ip for h in setup.hosts.values())
    endpoint = SERVERS[backend](setup, stack, ips)
    real_argv = cluster.argv

    def argv(node: str) -> list[str]:
        mine = dict(endpoint[node])
        pg_dsn = mine.pop("--pg-dsn", None)
        cluster.settings.update(mine)
        cluster.probe_args = probe + (("--pg-dsn", pg_dsn) if pg_dsn else ())
        return setup.hosts[node].exec_prefix() + real_argv(node)

    cluster.argv = argv  # type: ignore[method-assign]
    return setup


def cli(setup: Setup, *args: str, timeout: float = 60) -> int:
    argv = [sys.executable, "-m", "failover", *args, "--cluster", setup.cluster.cluster]
    done = subprocess.run([*argv, *setup.client], capture_output=True, timeout=timeout, check=False)
    return done.returncode


def restart_daemon(c: Cluster, node: str) -> None:
    c.procs[node].wait(timeout=60)
    c.start(node)


def inject(setup: Setup, fault: str, leader: str, rng: random.Random) -> None:
    """Do `fault` to the cluster and undo it (restart, continue, heal); returns when undone."""
    c = setup.cluster
    standbys = [n for n in c.nodes if n != leader]
    if fault == "kill9_daemon":
        c.signal(leader, signal.SIGKILL)
        restart_daemon(c, leader)
    elif fault == "sigterm_daemon":
        c.signal(leader, signal.SIGTERM)
        restart_daemon(c, leader)
    elif fault == "sigstop_daemon":
        c.signal(leader, signal.SIGSTOP)
        time.sleep(2 * LEASE)
        c.signal(leader, signal.SIGCONT)
    elif fault == "kill9_child":
        starts = [
            r for r in read_records(c.records) if r["word"] == "start" and r["node"] == leader
        ]
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(starts[-1]["pid"]), signal.SIGKILL)
    elif fault == "kill9_keeper":
        for pid, node, _ in list(keepers(c.cluster)):
            if node == leader:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    elif fault == "switchover":
        cli(setup, "switchover", "--to", rng.choice(standbys), "--wait", "30")
    elif fault == "pause_resume":
        cli(setup, "pause")
        time.sleep(rng.uniform(2, 6))
        cli(setup, "resume")
    elif fault == "partition":
        host = setup.hosts[rng.choice(c.nodes)]
        host.cut()
        time.sleep(rng.uniform(1, 3) * LEASE)
        host.heal()
    elif fault == "slow_backend":
        setup.hosts[leader].delay(2000)
        time.sleep(3 * LEASE)
        setup.hosts[leader].undelay()
    elif fault == "server_restart":
        assert setup.restart is not None
        setup.restart()
    elif fault == "member_loss":
        assert setup.member_loss is not None
        setup.member_loss(2 * LEASE, rng)


def wait_for_start(c: Cluster, t0: float, quiet: float) -> None:
    """Until a child started after `t0`, or `quiet` seconds passed without one."""
    end = time.monotonic() + quiet
    while time.monotonic() < end and first_start_after(c, t0) is None:
        time.sleep(0.1)


@dataclass
class Report:
    backend: str
    seed: int
    minutes: float
    faults: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stuck: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (minutes, kB) of n3
    rss_end: dict[str, int] = field(default_factory=dict)


def settle(c: Cluster, report: Report, fault: str) -> tuple[str, str] | None:
    try:
        return c.leader_child(timeout=90)
    except AssertionError:
        report.stuck.append(f"{time.strftime('%H:%M:%S')} no settled leader 90 s after {fault}")
        print(c.dump_logs(), file=sys.stderr, flush=True)
        for node, proc in c.procs.items():  # bring back any daemon that died
            if proc.poll() is not None:
                c.start(node)
        return None


def soak(setup: Setup, report: Report, rng: random.Random) -> None:
    c = setup.cluster
    kinds = FAULTS[report.backend]
    begin = time.monotonic()
    end = begin + 60 * report.minutes
    next_rss = begin + 60
    for _ in range(100_000):
        if time.monotonic() >= end:
            break
        if time.monotonic() >= next_rss:
            kb = proctree.rss_bytes(c.procs[LONG_LIVED].pid) // 1024
            if kb:
                report.rss.append(((time.monotonic() - begin) / 60, kb))
            next_rss += 30
        settled = settle(c, report, "the previous fault")
        if settled is None:
            continue
        leader, _ = settled
        fault = rng.choice(kinds)
        while leader == LONG_LIVED and fault in DAEMON_KILLS:
            fault = rng.choice(kinds)
        report.faults[fault] += 1
        t0 = boottime()
        inject(setup, fault, leader, rng)
        wait_for_start(c, t0, QUIET)
        if settle(c, report, fault) is None:
            report.outcomes[fault]["stuck"] += 1
            continue
        new = first_start_after(c, t0)
        if new is None:
            report.outcomes[fault]["kept"] += 1
        else:
            report.outcomes[fault]["takeover" if new["node"] != leader else "restart"] += 1
            try:
                report.latency[fault].append(exec_time(int(new["pid"])) - t0)
            except OSError:
                report.latency[fault].append(float(new["t"]) - t0)
        time.sleep(rng.uniform(0.5, 2.0))


def leftovers(c: Cluster) -> int:
    """SIGTERM every daemon, wait; count probe processes and keepers still alive."""
    c.stop_all(timeout=30, kill_leftovers=False)
    time.sleep(1)
    return len(c.live_children()) + len(list(keepers(c.cluster)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def render(report: Report, overlaps: str, left: int, took: float) -> str:
    lines = [
        f"# Soak: {report.backend}",
        "",
        f"`python bench/soak.py --backend {report.backend} --minutes {report.minutes:g} "
        f"--seed {report.seed}`: {took / 60:.1f} min, {sum(report.faults.values())} faults "
        f"({platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"lease {LEASE:g} s, loop 1 s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load average at the end {os.getloadavg()[0]:.1f})",
        "",
        "| fault | count | takeover | restart | kept | stuck | p50 s | p99 s | max s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fault in sorted(report.faults):
        o, lat = report.outcomes[fault], report.latency[fault]
        stats = (
            f"{statistics.median(lat):.2f} | {percentile(lat, 0.99):.2f} | {max(lat):.2f}"
            if lat
            else "- | - | -"
        )
        lines.append(
            f"| {fault} | {report.faults[fault]} | {o['takeover']} | {o['restart']} | "
            f"{o['kept']} | {o['stuck']} | {stats} |"
        )
    growth = "n/a"
    if len(report.rss) >= 3:
        xs, ys = [m / 60 for m, _ in report.rss[1:]], [kb / 1024 for _, kb in report.rss[1:]]
        slope = statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else 0.0
        growth = f"{slope:+.2f} MB/h (least squares over {len(xs)} samples, one per 30 s)"
    rss = report.rss
    lines += [
        "",
        f"- overlap samples: {overlaps} (must be 0)",
        f"- children left behind after the final SIGTERM: {left} (must be 0)",
        f"- no settled leader within 90 s: {len(report.stuck)}"
        + "".join(f"\n  - {s}" for s in report.stuck),
        f"- long-lived daemon {LONG_LIVED} RSS: "
        + (
            f"{rss[0][1] / 1024:.1f} MB at {rss[0][0]:.1f} min, {rss[-1][1] / 1024:.1f} MB at "
            f"{rss[-1][0]:.1f} min; growth {growth} (target <= 5 MB/h)"
            if rss
            else "n/a"
        ),
        "- RSS of every daemon at the end, MB: "
        + ", ".join(f"{n} {kb / 1024:.1f}" for n, kb in sorted(report.rss_end.items())),
        "",
    ]
    return "\n".join(lines)


def run(backend: str, minutes: float, seed: int) -> tuple[str, list[str]]:
    """One soak; returns the report and its problems (overlaps, leftovers, stuck: none is ok)."""
    rng = random.Random(seed)
    report = Report(backend, seed, minutes)
    started = time.monotonic()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        setup = backend_setup(backend, stack, Path(tmp))
        c = setup.cluster
        samplers: list[Any] = [Sampler(c.tag)]
        if setup.db_dsn:
            samplers.append(DbSampler(setup.db_dsn, c.cluster))
        for s in samplers:
            s.__enter__()
        try:
            c.start_all()
            soak(setup, report, rng)
            report.rss_end = {n: proctree.rss_bytes(p.pid) // 1024 for n, p in c.procs.items()}
            left = leftovers(c)
        finally:
            c.stop_all()
            for s in samplers:
                s.__exit__(None, None, None)
    overlaps = ", ".join(f"{len(s.violations)} of {s.samples} ({s.label})" for s in samplers)
    problems = [f"{s.label}: {v}" for s in samplers for v in s.violations[:5]]
    problems += [f"{left} children left behind"] if left else []
    problems += report.stuck
    return render(report, overlaps, left, time.monotonic() - started), problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=sorted(FAULTS), required=True)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", help="default: bench/results/soak-<backend>.md")
    args = p.parse_args()
    out = Path(args.out or ROOT / "bench" / "results" / f"soak-{args.backend}.md")
    text, problems = run(args.backend, args.minutes, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    for problem in problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
