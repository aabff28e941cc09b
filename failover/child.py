"""The supervised child as an explicit state machine, driven through its keeper.

The OS side (spawning the keeper, the control socket) is injected as a `Launcher`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from failover.errors import ChildError


class ChildState(enum.Enum):
    STOPPED = "stopped"  # no keeper, no process of ours
    STARTING = "starting"  # keeper launched, child not confirmed yet
    RUNNING = "running"
    STOPPING = "stopping"  # asked to stop; not proven gone yet
    BACKOFF = "backoff"  # crashed; gone; waiting before a restart is allowed
    FAILED = "failed"  # crashed too often; gone; leadership should be given up


GONE_STATES = (ChildState.STOPPED, ChildState.BACKOFF, ChildState.FAILED)


class KeeperLink(Protocol):
    """A live keeper process seen from the daemon."""

    pid: int

    def send(self, line: str) -> None: ...
    def read_lines(self) -> list[str]:
        """Lines received so far; `EOF` as the last item once the keeper closed its end."""
        ...

    def fileno(self) -> int: ...
    def cleanup(self) -> None:
        """After EOF: make sure no process of the keeper's session is left; reap the keeper."""
        ...


class Launcher(Protocol):
    def launch(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        run_until: float,
        stop_timeout: float,
        keeper_args: Sequence[str],
    ) -> KeeperLink: ...


@dataclass(frozen=True)
class ChildPolicy:
    stop_timeout: float
    max_fast_failures: int
    fast_failure_seconds: float
    backoff_initial: float
    backoff_max: float


class Child:
    """One supervised command; at most one keeper (hence one child tree) at a time."""

    def __init__(self, launcher: Launcher, command: Sequence[str], policy: ChildPolicy) -> None:
        self.launcher = launcher
        self.command = tuple(command)
        self.policy = policy
        self.state = ChildState.STOPPED
        self.link: KeeperLink | None = None
        self.pid: int | None = None
        self.epoch: int | None = None
        self.started_at: float | None = None
        self.exit_code: int | None = None
        self.fast_failures = 0
        self.restarts = 0
        self.backoff_until = 0.0
        self.stop_requested = False
        self.stop_sent = ""
        self.last_event = ""

    @property
    def gone(self) -> bool:
        """Proven: no process of ours runs (the keeper confirmed its tree empty)."""
        return self.state in GONE_STATES

    def may_start(self, now: float) -> bool:
        if self.state is ChildState.BACKOFF:
            return now >= self.backoff_until
        return self.state is ChildState.STOPPED

    def start(
        self,
        now: float,
        epoch: int,
        run_until: float,
        env: Mapping[str, str],
        keeper_args: Sequence[str] = (),
    ) -> None:
        if not self.may_start(now):
            raise ChildError(f"cannot start the child while it is {self.state.value}")
        if self.started_at is not None:
            self.restarts += 1
        self.link = self.launcher.launch(
            self.command, env, run_until, self.policy.stop_timeout, keeper_args
        )
        self.state = ChildState.STARTING
        self.epoch = epoch
        self.pid = None
        self.exit_code = None
        self.started_at = now
        self.stop_requested = False
        self.stop_sent = ""
        self.last_event = "keeper launched"

    def extend(self, run_until: float) -> None:
        """Let the child run until `run_until` (only ever after a proven renew)."""
        if self.link is not None and self.state in (ChildState.STARTING, ChildState.RUNNING):
            self.link.send(f"RUN-UNTIL {run_until:.6f}")

    def stop(self, hard: bool = False) -> None:
        """Ask the keeper to stop the tree (SIGTERM first, or SIGKILL when `hard`)."""
        if self.link is None or self.gone:
            return
        word = "KILL" if hard else "STOP"
        if self.stop_requested and self.stop_sent in (word, "KILL"):
            return  # already asked; the keeper enforces it
        self.stop_requested = True
        self.stop_sent = word
        self.link.send(word)
        self.state = ChildState.STOPPING

    def reset_failures(self) -> None:
        """Forget the crash history (after leadership was given up and regained)."""
        self.fast_failures = 0
        if self.state in (ChildState.FAILED, ChildState.BACKOFF):
            self.state = ChildState.STOPPED

    def poll(self, now: float) -> list[str]:
        """Take in what the keeper said; return the protocol lines seen."""
        if self.link is None:
            return []
        lines = self.link.read_lines()
        for line in lines:
            self._on_line(now, line)
        return lines

    def _on_line(self, now: float, line: str) -> None:
        word, _, arg = line.partition(" ")
        if word == "STARTED" and self.state is ChildState.STARTING:
            self.pid = int(arg)
            self.state = ChildState.RUNNING
        elif word == "EXITED":
            self.exit_code = int(arg)
        elif word in ("GONE", "EOF"):
            self._gone(now, arg if word == "GONE" else "keeper died")
            return
        elif word == "ERROR":
            self.last_event = arg
            return
        self.last_event = line

    def _gone(self, now: float, reason: str) -> None:
        assert self.link is not None
        self.link.cleanup()
        self.link = None
        self.pid = None
        self.last_event = f"child tree gone: {reason}"
        if self.stop_requested:
            self.state = ChildState.STOPPED
            return
        ran = now - (self.started_at or now)
        if ran < self.policy.fast_failure_seconds:
            self.fast_failures += 1
        else:
            self.fast_failures = 0  # it ran long enough: a fresh crash, not a loop
        if self.fast_failures >= self.policy.max_fast_failures:
            self.state = ChildState.FAILED
            return
        delay = self.policy.backoff_initial * 2 ** max(0, self.fast_failures - 1)
        self.backoff_until = now + min(delay, self.policy.backoff_max)
        self.state = ChildState.BACKOFF


def child_env(base: Mapping[str, str], cluster: str, node: str, epoch: int) -> dict[str, str]:
    """The child's environment: inherited, plus who and which epoch it runs for."""
    env = dict(base)
    env["FAILOVER_EPOCH"] = str(epoch)
    env["FAILOVER_NODE"] = node
    env["FAILOVER_CLUSTER"] = cluster
    env["PGAPPNAME"] = f"failover:{cluster}:{node}:{epoch}"
    return env
