"""The election backend interface and the member store interface.

Three-way outcomes: True (done), False (someone else / answered no), `BackendUnavailable`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class ClusterFlags:
    """Operator requests shared by the whole cluster."""

    paused: bool = False
    switchover_to: str | None = None  # "" = any other member
    switchover_from: str | None = None
    switchover_age: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


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
        """How often `changed()` is worth calling when there is no descriptor."""
        return None

    def changed(self) -> bool:
        """Cheap check (drains `watch_fd`): True when a tick now could change something."""
        return False

    def close(self) -> None:
        """Drop connections; a held leadership ends with them."""


class MemberStore(abc.ABC):
    """The controller's own records: member heartbeats, history, operator flags."""

    @abc.abstractmethod
    def heartbeat(self, state: MemberState) -> None: ...

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
    def clear_switchover(self) -> None: ...

    def close(self) -> None:
        """Drop connections."""
