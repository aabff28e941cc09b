"""What the child state machine is made of: its states, the keeper link and launcher it is
driven through (the OS side, injected), its policy, and the warm keeper's pre-warm reports."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class ChildState(enum.Enum):
    STOPPED = "stopped"  # no keeper, no process of ours
    STARTING = "starting"  # keeper launched, child not confirmed yet
    RUNNING = "running"
    STOPPING = "stopping"  # asked to stop; not proven gone yet
    BACKOFF = "backoff"  # crashed; gone; waiting before a restart is allowed
    FAILED = "failed"  # crashed too often; gone; leadership should be given up


GONE_STATES = (ChildState.STOPPED, ChildState.BACKOFF, ChildState.FAILED)
PREWARM_WORDS = ("WARMING", "WARM", "COLD", "REWARM")  # a warm keeper's pre-warm reports
# A keeper reports its tree gone within ms of its own deadline (stop_timeout after STOP, at once
# after KILL); one that has not after this much more is killed with its tree by the daemon.
STOP_SLACK_SECONDS = 1.0


class KeeperLink(Protocol):
    """A live keeper process seen from the daemon."""

    pid: int

    def send(self, line: str) -> None: ...
    def read_lines(self) -> list[str]:
        """Lines received so far; `EOF` as the last item once the keeper closed its end."""
        ...

    def fileno(self) -> int: ...
    def ping(self, every: float) -> None:
        """Send `PING` if nothing waits for an answer and nothing was sent for `every` s."""
        ...

    def silence(self) -> float:
        """Seconds the oldest line sent has waited for the keeper's `ACK` (0: none waits)."""
        ...

    def kill(self) -> bool:
        """SIGKILL the keeper and its whole tree; True once confirmed gone (False: cannot)."""
        ...

    def cleanup(self) -> None:
        """After EOF: make sure no process of the keeper's session is left; reap the keeper."""
        ...

    def close(self) -> None:
        """Close our end (the keeper sees EOF), then `cleanup()`."""
        ...


class Launcher(Protocol):
    # False when keepers are started by someone else and connect (sidecar mode): a promotion
    # then needs one already waiting.
    on_demand: bool

    def launch(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
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
    answer_seconds: float = 0.0  # a keeper silent this long is presumed stuck (0: never)
    ping_seconds: float = 1.0  # ask an idle keeper this often (the loop period)
    # Side components start once the main command is judged healthy (its first job row), so
    # they do not compete with its start-up for the cores (see Child.release_sides).
    defer_sides: bool = False


@dataclass
class Prewarm:
    """The pre-warmed scheduler of this standby's warm keeper, as its keeper reports it."""

    state: str = "off"  # off, starting, warm, cold
    pid: int | None = None
    seconds: float | None = None  # how long the last warm-up took
    rss_bytes: int = 0
    airflow: str = ""
    fingerprint: str = ""
    detail: str = ""
    restarts: int = 0  # warm processes replaced (inputs changed, max age, died, reload)
    starts: int = 0  # warm processes this warm keeper started
    # Not yet logged: (level, event, fields); the daemon drains it.
    events: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)

    def on_line(self, word: str, arg: str) -> None:
        if word == "WARMING":
            self.starts += 1
            if self.starts > 1:
                self.restarts += 1
            pid = int(arg) if arg.isdigit() else None
            self.state, self.pid, self.detail = "starting", pid, "importing Airflow"
        elif word == "WARM":
            try:
                info = json.loads(arg)
            except ValueError:
                info = {}
            self.state, self.detail = "warm", ""
            self.seconds = info.get("seconds")
            self.rss_bytes = int(info.get("rss_bytes") or 0)
            self.airflow = str(info.get("airflow") or "")
            self.fingerprint = str(info.get("fingerprint") or "")
            fields: dict[str, object] = {
                "pid": self.pid,
                "seconds": self.seconds,
                "rss_mb": round(self.rss_bytes / 2**20),
                "airflow": self.airflow,
                "fingerprint": self.fingerprint,
            }
            self.events.append(("info", "prewarm_ready", fields))
        elif word == "COLD":
            self.state, self.detail, self.rss_bytes = "cold", arg, 0
            self.events.append(("warning", "prewarm_cold", {"reason": arg}))
        elif word == "REWARM":
            self.events.append(("info", "prewarm_restart", {"pid": self.pid, "reason": arg}))

    def gone(self) -> None:
        self.state, self.pid, self.rss_bytes, self.detail = "off", None, 0, ""
        self.starts = 0
