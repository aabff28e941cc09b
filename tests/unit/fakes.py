"""Fakes for the controller's injected parts: clock, backend, store, keeper launcher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from failover.child import Child, ChildPolicy
from failover.controller import Controller, Timings
from failover.errors import BackendUnavailable, ChildError
from failover.interfaces import (
    ClusterFlags,
    ElectionBackend,
    FenceReport,
    LeaderInfo,
    MemberRecord,
    MemberState,
    MemberStore,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class SharedLease:
    """What a real backend would keep on the server: one holder, one epoch."""

    holder: str | None = None
    epoch: int = 0
    keeper_alive: bool = False


class FakeBackend(ElectionBackend):
    name = "fake"

    def __init__(self, node: str, lease: SharedLease, log: list[str]) -> None:
        self.node = node
        self.lease = lease
        self.log = log
        self.down = False
        self.fence_calls: list[bool] = []
        self.sweeps: list[bool] = []
        self.given_up = False  # released, but not confirmed: still holding (ZooKeeper's queue)
        self.session_line: str | None = None  # what keeper_session() hands the child's keeper

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailable("fake backend is down")

    def keeper_session(self) -> str | None:
        return self.session_line

    def try_acquire(self) -> bool:
        self._check()
        self.tidy()  # registering again deletes what we gave up (ZooKeeper's `_register`)
        if self.lease.holder in (None, self.node):
            self.lease.holder = self.node
            return True
        return False

    def renew(self) -> bool:
        self._check()
        return self.lease.holder == self.node

    def bump_epoch(self) -> int:
        self._check()
        self.lease.epoch += 1
        return self.lease.epoch

    def fence(self, epoch: int, force: bool, sweep: bool = True) -> FenceReport:
        self._check()
        self.fence_calls.append(force)
        self.sweeps.append(sweep)
        if self.lease.keeper_alive and force:
            self.lease.keeper_alive = False
            return FenceReport(pending=0, terminated=1, detail="killed")
        if self.lease.keeper_alive:
            return FenceReport(pending=1, wait_seconds=5.0, detail="old keeper alive")
        return FenceReport(pending=0, detail="none")

    def release(self) -> None:
        self.given_up = True  # like ZooKeeper: forgotten first, then deleted if it can be
        self._check()
        self._leave()

    def tidy(self) -> None:
        if self.given_up:
            self._check()
            self._leave()

    def _leave(self) -> None:
        self.given_up = False
        self.log.append(f"release {self.node}")
        if self.lease.holder == self.node:
            self.lease.holder = None

    def leader(self) -> LeaderInfo:
        self._check()
        return LeaderInfo(self.lease.holder, self.lease.epoch)


@dataclass
class FakeStore(MemberStore):
    rows: dict[str, MemberState] = field(default_factory=dict)
    cluster_flags: ClusterFlags = field(default_factory=ClusterFlags)
    terms: list[tuple[str, int, str]] = field(default_factory=list)

    def heartbeat(self, state: MemberState) -> None:
        self.rows[state.node] = state

    def members(self) -> list[MemberRecord]:
        return [
            MemberRecord(s.node, s.role, s.epoch, s.child_state, s.child_pid, s.version, 0.1)
            for s in self.rows.values()
        ]

    def begin_term(self, epoch: int, node: str, reason: str) -> None:
        self.terms.append(("begin", epoch, reason))

    def end_term(self, epoch: int, reason: str) -> None:
        self.terms.append(("end", epoch, reason))

    def flags(self) -> ClusterFlags:
        return self.cluster_flags

    def set_paused(self, paused: bool) -> None:
        self.cluster_flags = ClusterFlags(paused=paused)

    def request_switchover(self, from_node: str | None, to_node: str | None) -> None:
        self.cluster_flags = ClusterFlags(
            switchover_to=to_node or "", switchover_from=from_node, switchover_age=0.0
        )

    def clear_switchover(self, result: str = "") -> None:
        self.cluster_flags = ClusterFlags(
            paused=self.cluster_flags.paused,
            switchover_age=0.0,
            switchover_result=result or None,
        )


class FakeLink:
    """A keeper that does what it is told when the test says so."""

    def __init__(self, log: list[str], pid: int) -> None:
        self.log = log
        self.pid = pid
        self.sent: list[str] = []
        self.inbox: list[str] = []
        self.silent = 0.0  # what silence() reports: set by a test to play a stuck keeper
        self.killable = True  # False: a sidecar keeper in another container
        self.pings = 0
        self.killed = False

    def send(self, line: str) -> None:
        self.sent.append(line)
        self.log.append(f"keeper {self.pid} <- {line}")

    def read_lines(self) -> list[str]:
        lines, self.inbox = self.inbox, []
        return lines

    def fileno(self) -> int:
        return -1

    def ping(self, every: float) -> None:
        self.pings += 1

    def silence(self) -> float:
        return self.silent

    def kill(self) -> bool:
        self.log.append(f"keeper {self.pid} killed by the daemon")
        self.killed = self.killable
        return self.killable

    def cleanup(self) -> None:
        self.log.append(f"keeper {self.pid} cleaned up")

    def close(self) -> None:
        self.log.append(f"keeper {self.pid} closed")
        self.cleanup()


class FakeLauncher:
    def __init__(self, log: list[str]) -> None:
        self.on_demand = True  # False: sidecar mode, a keeper only while `connected`
        self.connected = True
        self.log = log
        self.links: list[FakeLink] = []
        self.envs: list[Mapping[str, str]] = []
        self.args: list[list[str]] = []

    def launch(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        stop_timeout: float,
        keeper_args: Sequence[str],
    ) -> FakeLink:
        if not self.on_demand and not self.connected:
            raise ChildError("no keeper has connected to /run/failover/keeper.sock yet")
        link = FakeLink(self.log, 100 + len(self.links))
        self.links.append(link)
        self.envs.append(env)
        self.args.append(list(keeper_args))
        self.log.append(f"launch keeper {link.pid}")
        return link

    @property
    def last(self) -> FakeLink:
        return self.links[-1]


POLICY = ChildPolicy(
    stop_timeout=5.0,
    max_fast_failures=3,
    fast_failure_seconds=30.0,
    backoff_initial=1.0,
    backoff_max=8.0,
)
TIMINGS = Timings(lease=10.0, loop=1.0, self_fence=9.0, stop_timeout=5.0, backend_timeout=2.0)


@dataclass
class Rig:
    controller: Controller
    backend: FakeBackend
    store: FakeStore
    launcher: FakeLauncher
    clock: FakeClock
    log: list[str]
    child: Child


def make_rig(
    node: str = "n1", lease: SharedLease | None = None, store: FakeStore | None = None
) -> Rig:
    log: list[str] = []
    clock = FakeClock()
    backend = FakeBackend(node, lease or SharedLease(), log)
    store = store or FakeStore()
    launcher = FakeLauncher(log)
    child = Child(launcher, ["airflow", "scheduler"], POLICY)
    controller = Controller(
        cluster="c1",
        node=node,
        backend=backend,
        store=store,
        child=child,
        clock=clock,
        timings=TIMINGS,
        base_env={"PATH": "/bin"},
    )
    return Rig(controller, backend, store, launcher, clock, log, child)


class FakeJobs:
    """A job table: the test sets the newest row; `down` makes reads fail."""

    def __init__(self) -> None:
        self.row: object = None
        self.base = 41
        self.down = False
        self.asked_after: list[int] = []
        self.rows: dict[str, object] = {}  # other job types' newest rows

    def baseline(self) -> int:
        if self.down:
            raise BackendUnavailable("job table unreachable")
        job_id = getattr(self.row, "job_id", 0)
        self.base = max(self.base, job_id)
        return self.base

    def newest(self, after_id: int, job_type: str = "SchedulerJob") -> object:
        if self.down:
            raise BackendUnavailable("job table unreachable")
        if job_type != "SchedulerJob":
            row = self.rows.get(job_type)
            return row if getattr(row, "job_id", 0) > after_id else None
        self.asked_after.append(after_id)
        return self.row if getattr(self.row, "job_id", 0) > after_id else None
