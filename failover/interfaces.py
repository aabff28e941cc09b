"""What the controller and daemon need from a backend: election, member store, metadata DB,
and the entry each backend package registers. Three-way outcomes: True (done), False
(someone else / answered no), `BackendUnavailable` (could not ask).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from failover.airflow.health import JobSource
    from failover.config import Settings
    from failover.dbreach import ReachBoard

# A metadata-DB session that failed to connect tries again at most this long after (its
# backoff's cap); DB-reachability rules wait longer than this before trusting a reconnect.
RECONNECT_MAX_SECONDS = 5.0


@dataclass(frozen=True)
class LeaderInfo:
    """Who holds leadership now, as the backend sees it."""

    node: str | None
    epoch: int


@dataclass(frozen=True)
class FenceReport:
    """What fencing older epochs found and did."""

    pending: int  # proof-of-life holders of older epochs still present
    terminated: int = 0  # sessions or processes of older epochs we terminated
    wait_seconds: float = 0.0  # how long a safe start must still wait, at most
    detail: str = ""


@dataclass(frozen=True)
class MemberState:
    """One member's heartbeat, written every tick."""

    node: str
    role: str
    epoch: int
    child_state: str
    child_pid: int | None
    version: str
    sentence: str = ""

    def row(self, cluster: str) -> tuple[Any, ...]:
        """The SQL member row's values, in column order (the sentence cut to its column)."""
        return (
            cluster,
            self.node,
            self.role,
            self.epoch,
            self.child_state,
            self.child_pid,
            self.version,
            self.sentence[:500],
        )


@dataclass(frozen=True)
class MemberRecord:
    node: str
    role: str
    epoch: int
    child_state: str
    child_pid: int | None
    version: str
    heartbeat_age: float
    sentence: str = ""

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> MemberRecord:
        """A SQL row: node, role, epoch, child_state, child_pid, version, age, sentence."""
        return cls(
            str(r[0]), str(r[1]), int(r[2]), str(r[3]), r[4], str(r[5]), float(r[6]), str(r[7])
        )


@dataclass(frozen=True)
class ClusterFlags:
    """Operator requests shared by the whole cluster."""

    paused: bool = False
    switchover_to: str | None = None  # "" = any other member
    switchover_from: str | None = None
    switchover_age: float | None = None  # of the pending request, else of the last outcome
    switchover_result: str | None = None  # how the last request ended, once decided
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> ClusterFlags:
        """A SQL row: paused, switchover_to, switchover_from, age (seconds), result."""
        paused, target, source, age, result = r
        return cls(
            paused=bool(paused),
            switchover_to=target,
            switchover_from=source or None,
            switchover_age=float(age) if age is not None else None,
            switchover_result=result or None,
        )


class ElectionBackend(abc.ABC):
    """Leadership for one cluster. Methods raise `BackendUnavailable` when they cannot ask."""

    name = "abstract"

    @abc.abstractmethod
    def try_acquire(self) -> bool:
        """Become leader if nobody is; True when we hold leadership after the call."""

    @abc.abstractmethod
    def renew(self) -> bool:
        """Prove we still lead and extend the lease; False: leadership is lost."""

    @abc.abstractmethod
    def bump_epoch(self) -> int:
        """As the new leader, take the next epoch and return it."""

    @abc.abstractmethod
    def fence(self, epoch: int, force: bool, sweep: bool = True) -> FenceReport:
        """Make older epochs harmless; with `force`, terminate what still holds on. `sweep`
        False: skip the optional metadata-DB sweep (ZooKeeper mode), the DB just failed us."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give leadership up (only after the child tree is proven gone)."""

    @abc.abstractmethod
    def leader(self) -> LeaderInfo:
        """The current leader, if any."""

    def campaign(self) -> tuple[bool, LeaderInfo | None]:
        """A standby's tick: `try_acquire()` and, when lost, `leader()`. A backend that learns
        both in one read overrides it (each standby asks it every loop)."""
        if self.try_acquire():
            return True, None
        return False, self.leader()

    def tidy(self) -> None:
        """Finish what an earlier `release()` could not confirm (called on every standby tick
        that does not campaign); raises `BackendUnavailable` to be tried again next tick."""

    def effective_lease(self) -> float | None:
        """Seconds after a proven renew that leadership can survive, if the backend knows it
        better than `lease_seconds` (ZooKeeper: the negotiated session timeout)."""
        return None

    def keeper_args(self) -> list[str]:
        """Arguments that give the keeper its proof of life for this backend."""
        return []

    def keeper_env(self) -> dict[str, str]:
        """Secrets the keeper needs (passed by env, never argv); removed before the child."""
        return {}

    def keeper_session(self) -> str | None:
        """A line for the child's keeper: our session, to end once this daemon died and the
        tree is gone, so a crash is taken over at once (ZooKeeper); None: nothing to hand."""
        return None

    def watch_fd(self) -> int | None:
        """A descriptor that turns readable when leadership may have changed."""
        return None

    def poll_interval(self) -> float | None:
        """How often `changed()` is worth calling when there is no descriptor, or when news
        already came in with a statement's answer (PostgreSQL's NOTIFY)."""
        return None

    def changed(self) -> bool:
        """Cheap check (drains `watch_fd`): True when a tick now could change something."""
        return False

    def member_present(self, node: str) -> bool | None:
        """Whether `node`'s daemon still holds its place in the backend (its session or alive
        lock); None when this backend cannot tell. Raises `BackendUnavailable`."""
        return None

    def close(self) -> None:
        """Drop connections; a held leadership ends with them."""


class MemberStore(abc.ABC):
    """The controller's own records: member heartbeats, history, operator flags."""

    # True when `heartbeat_and_flags` is one statement: the tick then folds a due heartbeat
    # into its flags read. Else the two stay apart (a slow first call ends the tick's DB work).
    one_statement_heartbeat = False

    @abc.abstractmethod
    def heartbeat(self, state: MemberState) -> None: ...

    def heartbeat_and_flags(self, state: MemberState) -> ClusterFlags:
        """Write our member row, then read the operator flags."""
        self.heartbeat(state)
        return self.flags()

    @abc.abstractmethod
    def members(self) -> list[MemberRecord]: ...

    @abc.abstractmethod
    def begin_term(self, epoch: int, node: str, reason: str) -> None: ...

    @abc.abstractmethod
    def end_term(self, epoch: int, reason: str) -> None: ...

    @abc.abstractmethod
    def flags(self) -> ClusterFlags: ...

    @abc.abstractmethod
    def set_paused(self, paused: bool) -> None: ...

    @abc.abstractmethod
    def request_switchover(self, from_node: str | None, to_node: str | None) -> None: ...

    @abc.abstractmethod
    def clear_switchover(self, result: str = "") -> None:
        """End the pending request; `result` says how ("switchover to b done: ...")."""

    def close(self) -> None:
        """Drop connections."""


class MetadataDB(abc.ABC):
    """Airflow's metadata DB as the controller uses it, one dialect per database (chosen by
    the DSN's scheme): the controller's own tables, Airflow's `job` rows, older epochs'
    sessions. Each part opens its own session; nothing connects before it is asked for."""

    @abc.abstractmethod
    def members(self) -> MemberStore:
        """The member / history / flag tables (one store per MetadataDB, made on first use)."""

    @abc.abstractmethod
    def jobs(self, hostname: str | None, on_released: Callable[[int], None] | None) -> JobSource:
        """Airflow's `job` table; `on_released` (if set) is told how many dead schedulers' rows
        were marked failed before our scheduler starts (orphan release)."""

    @abc.abstractmethod
    def sweep(self) -> Callable[[int], int]:
        """Ends the DB sessions of epochs older than the argument and returns how many; runs
        on the members' session (ZooKeeper mode: the keeper holds no DB session)."""


@dataclass(frozen=True)
class Parts:
    """What a backend package builds for a daemon."""

    election: ElectionBackend
    members: MemberStore
    reach: ReachBoard | None = None  # who reaches the metadata DB (ZooKeeper mode), if used


@dataclass(frozen=True)
class Backend:
    """The one entry point of a backend package (its `BACKEND`), found through the registry.

    `build` makes a daemon's parts; `open_store` only the member store (for `status`, `pause`
    and `switchover` from any host); `metadata` the metadata-DB dialect for the DSN schemes in
    `schemes`, when this package speaks one. Optional: `read_store`, the member store for
    read-only commands, creating nothing (default: `open_store`); `check`, the backend's
    start-up checks of `failover run`, without side effects (also run by `check-config`)."""

    name: str
    build: Callable[[Settings], Parts]
    open_store: Callable[[Settings], MemberStore]
    metadata: Callable[[Settings, str], MetadataDB] | None = None
    schemes: tuple[str, ...] = ()
    read_store: Callable[[Settings], MemberStore] | None = None
    check: Callable[[Settings], None] | None = None
