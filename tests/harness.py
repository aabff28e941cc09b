"""Real daemons for integration tests: a cluster runner and an invariant sampler.

The sampler looks at /proc every 50 ms and fails on any moment where probe processes
of two different epochs (or nodes) are alive at once.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROBE = str(Path(__file__).with_name("probe.py"))


def wait_until(test: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll `test` until it returns something truthy; bounded in time and count."""
    end = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        value = test()
        if value:
            return value
        if time.monotonic() >= end:
            break
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _memory_gone(pid: str) -> bool:
    """The kernel reads /proc/PID/cmdline and environ from the process's memory: both come
    back empty once an exiting process released it (it is then only a zombie to be)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read() == b""
    except OSError:
        return True


def tagged_processes(tag: str) -> dict[int, dict[str, str]]:
    """pid -> {epoch, node} of every live process whose command line carries `tag`."""
    found: dict[int, dict[str, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            argv = cmdline.split(b"\0")
            # Only the probe itself (argv[1] is probe.py), not the daemon or keeper lines.
            if tag.encode() not in cmdline or len(argv) < 2 or not argv[1].endswith(b"probe.py"):
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            if state in (b"Z", b"X"):
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            if b"FAILOVER_NODE" not in env and _memory_gone(name):
                continue  # killed between our reads: past its exit_mm, it runs no code again
        except (OSError, IndexError):
            continue
        found[int(name)] = {
            "epoch": env.get(b"FAILOVER_EPOCH", b"?").decode(),
            "node": env.get(b"FAILOVER_NODE", b"?").decode(),
        }
    return found


class Periodic:
    """A background thread that runs `check()` every `interval` seconds: `check` returns a
    violation text, None (a clean sample), or SKIP (no sample: the server is restarting)."""

    label = "the invariant"
    SKIP = object()

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.violations: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def check(self) -> Any:
        raise NotImplementedError

    def finish(self) -> None:
        """Release what `check` holds (called on the sampler's own thread)."""

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                outcome = self.check()
                if outcome is self.SKIP:
                    continue
                self.samples += 1
                if outcome is not None:
                    self.violations.append(f"{time.monotonic():.3f}: {outcome}")
        finally:
            self.finish()

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def assert_clean(self) -> None:
        assert self.samples > 0, f"the sampler of {self.label} never ran"
        assert not self.violations, f"{self.label} broken:\n" + "\n".join(self.violations[:5])


class Sampler(Periodic):
    """At most one epoch's probe tree alive at every 50 ms sample."""

    label = "one child tree at a time"

    def __init__(self, tag: str, interval: float = 0.05) -> None:
        super().__init__(interval)
        self.tag = tag
        self.epochs_seen: set[str] = set()

    def processes(self) -> dict[int, dict[str, str]]:
        return tagged_processes(self.tag)

    def check(self) -> Any:
        procs = self.processes()
        owners = {(p["node"], p["epoch"]) for p in procs.values()}
        self.epochs_seen |= {p["epoch"] for p in procs.values()}
        return f"{sorted(owners)} {procs}" if len(owners) > 1 else None


def sent_statements(session: Any) -> list[Any]:
    """From now on, every statement `session.query` sends is appended to the returned list."""
    sent: list[Any] = []
    query = session.query

    def counted(statement: Any, params: Any = None) -> Any:
        sent.append(statement)
        return query(statement, params)

    session.query = counted
    return sent


def read_records(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        word, *pairs = line.split()
        rec = dict(p.split("=", 1) for p in pairs)
        rec["word"] = word
        out.append(rec)
    return out


@dataclass
class Cluster:
    """N `failover run` daemons on one backend, each supervising a probe child."""

    root: Path
    nodes: tuple[str, ...] = ("n1", "n2", "n3")
    settings: dict[str, str] = field(default_factory=dict)
    probe_args: tuple[str, ...] = ()
    cluster: str = "t"
    tag: str = field(default_factory=lambda: f"probe-{uuid.uuid4().hex[:10]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    command: tuple[str, ...] = ()  # the child; default: the probe
    env: dict[str, str] = field(default_factory=dict)
    components: dict[str, list[str]] = field(default_factory=dict)  # the group, if any

    @property
    def records(self) -> Path:
        return self.root / "records.log"

    def argv(self, node: str) -> list[str]:
        argv = [sys.executable, "-m", "failover", "run", "--node", node, "--cluster", self.cluster]
        merged = {
            "local.dir": str(self.root / "state"),
            "lease_seconds": "3",
            "loop_seconds": "0.5",
            "backend_timeout_seconds": "0.5",
            "self_fence_margin_seconds": "0.5",
            "stop_timeout_seconds": "5",
            "log.format": "json",
            "http.listen": "",
            **self.settings,
        }
        for key, value in merged.items():
            argv += ["--set", f"{key}={value}"]
        if self.components:
            return [*argv, "--set", f"airflow.components={json.dumps(self.components)}"]
        if self.command:
            return [*argv, "--", *self.command]
        probe = [sys.executable, PROBE, "--tag", self.tag, "--record", str(self.records)]
        return [*argv, "--", *probe, *self.probe_args]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`failover <args>` run as a client of this cluster (`client_args`, its env)."""
        return subprocess.run(
            [sys.executable, "-m", "failover", *args, *self.client_args()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **self.env},
        )

    def client_args(self) -> list[str]:
        """`--cluster` and the daemons' `--set` options (less HTTP and log), for client
        commands such as `failover status` or `switchover` run against this cluster."""
        argv = self.argv(self.nodes[0])
        sets = [f"--set={v}" for k, v in itertools.pairwise(argv) if k == "--set"]
        sets = [s for s in sets if not s.startswith(("--set=http.", "--set=log."))]
        return ["--cluster", self.cluster, *sets]

    def start(self, node: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{node}.log", "ab")
        proc = subprocess.Popen(
            self.argv(node),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env, **(env or {})},
        )
        log.close()
        self.procs[node] = proc
        return proc

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def sentences(self, node: str) -> list[str]:
        path = self.root / f"{node}.log"
        out = []
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "tick":
                out.append(event["sentence"])
        return out

    def live_children(self) -> dict[int, dict[str, str]]:
        return tagged_processes(self.tag)

    def leader_child(self, timeout: float = 20.0, exclude: Iterable[str] = ()) -> tuple[str, str]:
        """(node, epoch) of the single live child tree once its probe is ready for signals."""
        excluded = set(exclude)

        def one() -> tuple[str, str] | None:
            owners = {(p["node"], p["epoch"]) for p in self.live_children().values()}
            if len(owners) != 1:
                return None
            owner = next(iter(owners))
            ready = any(
                r["word"] == "start" and (r["node"], r["epoch"]) == owner
                for r in read_records(self.records)
            )
            return owner if ready and owner[0] not in excluded else None

        result: tuple[str, str] = wait_until(one, timeout, "exactly one live child tree")
        return result

    def signal(self, node: str, sig: int) -> None:
        self.procs[node].send_signal(sig)

    def stop_all(self, timeout: float = 20.0, kill_leftovers: bool = True) -> None:
        """SIGTERM every daemon (continued first), SIGKILL one that outlives `timeout`; then,
        unless told not to, SIGKILL any probe process still alive."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if not kill_leftovers:
            return
        # Nothing of ours may outlive the test, whatever happened.
        for pid in self.live_children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def dump_logs(self) -> str:
        parts = []
        for node in self.procs:
            path = self.root / f"{node}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {node} ---\n" + "\n".join(text.splitlines()[-25:]))
        return "\n".join(parts)


class DbSampler(Periodic):
    """At most one epoch's child DB sessions at every 50 ms sample."""

    label = "one epoch's DB sessions at a time"

    def __init__(self, dsn: str, cluster: str, interval: float = 0.05) -> None:
        super().__init__(interval)
        self.dsn = dsn
        self.cluster = cluster
        self.conn: Any = None

    def check(self) -> Any:
        import psycopg2

        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg2.connect(self.dsn, connect_timeout=2)
                self.conn.autocommit = True
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                    (f"failover:{self.cluster}:%",),
                )
                names = [r[0] for r in cur.fetchall()]
        except psycopg2.Error:
            self.conn = None
            return self.SKIP  # the server may be restarting on purpose
        # Child sessions are failover:<cluster>:<node>:<epoch>, the epoch a number.
        epochs = {n.split(":")[3] for n in names if n.count(":") == 3 and n.split(":")[3].isdigit()}
        return f"child sessions {sorted(names)}" if len(epochs) > 1 else None

    def finish(self) -> None:
        if self.conn is not None:
            self.conn.close()


# failover/airflow/prewarm.py's /proc/<pid>/comm until GO: while importing, then once ready.
WARMING_NAME, WARM_NAME = b"failover-warmup", b"failover-warm"


def _warm_standby(pid: int) -> bool:
    """A pre-warmed scheduler still waiting for GO (runs nothing, holds no DB session): named
    `failover-warmup`/`failover-warm`, titled `... [warm standby]`, or not yet named (the
    interpreter still starting failover/airflow/prewarm.py)."""
    name, argv = comm(pid), cmdline(pid)
    starting = name.startswith(b"python") and len(argv) > 1 and argv[1].endswith(b"prewarm.py")
    titled = b"[warm standby]" in b" ".join(argv)  # its `ps` title until GO
    return name in (WARMING_NAME, WARM_NAME) or starting or titled


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def comm(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip()
    except OSError:
        return b""


def keepers(cluster: str) -> Iterator[tuple[int, str, set[int]]]:
    """(keeper pid, node, every live process of its tree) for each keeper of `cluster`, found
    by the keeper's command line and the tree's session and descent (Airflow rewrites its
    processes' titles and environment, so those cannot be used)."""
    from failover.keeper import proctree

    marker = f"failover:{cluster}:".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"failover.keeper" not in argv or b"--name" not in argv:
            continue
        label = argv[argv.index(b"--name") + 1]
        if label.startswith(marker):
            pid = int(name)
            members = proctree.tree_members(pid, [pid])
            # A fork of the keeper that has not exec'd yet (its command line is the keeper's,
            # or empty while execve replaces it) runs keeper code, not a child.
            members = {p for p in members if cmdline(p) not in (argv, [b""], [])}
            yield pid, label.decode().rsplit(":", 1)[1], members


def warm_processes(cluster: str) -> dict[int, str]:
    """pid -> node of every pre-warmed scheduler of `cluster` ready and waiting for GO."""
    found: dict[int, str] = {}
    for _, node, members in keepers(cluster):
        found.update({p: node for p in members if comm(p) == WARM_NAME})
    return found


def keeper_trees(cluster: str) -> dict[int, tuple[str, set[int]]]:
    """keeper pid -> (node, live processes of its child tree) for every keeper of `cluster`
    that has a child. A standby's pre-warmed scheduler waiting for GO is not a child yet."""
    trees: dict[int, tuple[str, set[int]]] = {}
    for pid, node, members in keepers(cluster):
        warm = {p for p in members if _warm_standby(p)}
        # ... nor what it runs while warming up (e.g. `file`, run by platform.architecture()).
        children = {p for p in members - warm if not _descends_from(p, warm, pid)}
        if children:
            trees[pid] = (node, children)
    return trees


def _descends_from(pid: int, ancestors: set[int], stop: int) -> bool:
    for _ in range(64):  # bounded: a tree is never that deep
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                pid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid in ancestors:
            return True
        if pid in (stop, 0, 1):
            return False
    return False


def cluster_processes(cluster: str) -> dict[int, dict[str, str]]:
    """pid -> {node, epoch: keeper pid} of live child-tree processes of `cluster`."""
    out: dict[int, dict[str, str]] = {}
    for keeper, (node, members) in keeper_trees(cluster).items():
        for pid in members:
            out[pid] = {"node": node, "epoch": f"keeper-{keeper}"}
    return out


class EnvSampler(Sampler):
    """Like Sampler, but finds the child trees of a cluster by its keepers (any command)."""

    def processes(self) -> dict[int, dict[str, str]]:
        return cluster_processes(self.tag)
