"""The leader-only group seen from the daemon: the side components that run beside the main
command (the scheduler) under its keeper, each with its own state, restarts and backoff.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from failover.errors import ConfigError

# What each Airflow command writes into the `job` table (its health row).
JOB_TYPES = {"scheduler": "SchedulerJob", "dag-processor": "DagProcessorJob"}
JOB_TYPES["triggerer"] = "TriggererJob"


def job_type(argv: Sequence[str]) -> str | None:
    """The `job_type` of an `airflow <command>` argv, None for anything else."""
    if len(argv) < 2 or os.path.basename(argv[0]) != "airflow":
        return None
    return JOB_TYPES.get(argv[1])


@dataclass
class Component:
    """One side component; its process lives in the keeper's session."""

    name: str
    command: tuple[str, ...]
    state: str = "stopped"  # deferred, starting, running, backoff, stopped
    pid: int | None = None
    restarts: int = 0
    fast_failures: int = 0
    started_at: float | None = None
    backoff_until: float = 0.0
    exit_code: int | None = None
    failing: str = ""  # why the daemon killed it (a hang), counted as a failure
    health: str = "unknown"
    last_row: int = 0  # the newest job row seen of it: a restarted one is judged above it
    row_floor: int = 0

    @property
    def job_type(self) -> str | None:
        return job_type(self.command)

    def launched(self, now: float) -> None:
        self.state, self.pid, self.started_at, self.exit_code = "starting", None, now, None
        self.row_floor = self.last_row
        self.failing, self.health = "", "unknown"

    def exited(
        self, now: float, code: int, fast_seconds: float, backoff: tuple[float, float]
    ) -> int:
        """It died while the group ran: back off; return its count of fast failures."""
        self.pid, self.exit_code, self.health = None, code, "unknown"
        ran = now - (self.started_at or now)
        if self.failing or ran < fast_seconds:
            self.fast_failures += 1
        else:
            self.fast_failures = 0
        initial, cap = backoff
        delay = initial * 2 ** max(0, self.fast_failures - 1)
        self.backoff_until = now + min(delay, cap)
        self.state = "backoff"
        return self.fast_failures

    def on_line(
        self, now: float, word: str, arg: str, ending: bool, rule: tuple[float, float, float, int]
    ) -> tuple[str, str]:
        """Its keeper's `STARTED`/`EXITED` line; (event, reason to give the group up).
        `rule`: fast-failure seconds, first backoff, backoff cap, max fast failures."""
        if word == "STARTED" and arg.isdigit():
            self.pid, self.state = int(arg), "running"
            return "", ""
        code = int(arg) if arg.lstrip("-").isdigit() else None
        if ending:
            self.state, self.pid, self.exit_code, self.health = "stopped", None, code, "unknown"
            return "", ""
        why = self.failing or f"exited with {code}"
        fast_seconds, initial, cap, max_fast = rule
        if self.exited(now, code or 0, fast_seconds, (initial, cap)) >= max_fast:
            return f"component {self.name} {why}", f"component {self.name} crash loop ({why})"
        return f"component {self.name} {why}", ""

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "health": self.health,
        }


COMPONENT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
Argv = tuple[str, ...]


def main_first(comps: tuple[tuple[str, Argv], ...], command: Argv) -> tuple[tuple[str, Argv], ...]:
    """The group, main command first: the component named `scheduler` (else the first);
    without components, `command` as a group of one."""
    if not comps:
        return (("scheduler", command),)
    first = [c for c in comps if c[0] == "scheduler"] or [comps[0]]
    return (first[0], *[c for c in comps if c is not first[0]])


def validate_components(comps: tuple[tuple[str, Argv], ...], command: Argv) -> None:
    if not comps:
        return
    if command != ("airflow", "scheduler"):
        raise ConfigError(
            "airflow.components",
            "is set together with command (or -- CMD)",
            "put every command into [airflow.components], or use command alone",
        )
    names = [name for name, _ in comps]
    for name, argv in comps:
        if not COMPONENT_RE.match(name) or not argv or not argv[0]:
            raise ConfigError(
                "airflow.components",
                f"component {name!r} needs a name of [a-z0-9_-] and a non-empty argv",
                'e.g. scheduler = ["airflow", "scheduler"]',
            )
    if len(set(names)) != len(names):
        raise ConfigError("airflow.components", "a name appears twice", "name each once")


def components(group: Sequence[tuple[str, Sequence[str]]]) -> list[Component]:
    """Side components of a group: every entry after the first (the main command)."""
    return [Component(name, tuple(argv)) for name, argv in group[1:]]


def encode(child_state: str, sides: Sequence[Component], health: str = "unknown") -> str:
    """The member row's child state with the main command's health and the side components
    appended, for `status`: `running:healthy|dag-processor:running:4242:0:healthy`
    (name:state:pid:restarts:health, comma-separated). A lone command: its state alone."""
    if not sides:
        return child_state
    parts = [f"{c.name}:{c.state}:{c.pid or '-'}:{c.restarts}:{c.health}" for c in sides]
    return f"{child_state}:{health}|{','.join(parts)}"


def decode(child_state: str) -> tuple[str, list[dict[str, object]], str]:
    """(main state, side components, main health) from a member row's child state; rows of
    daemons before health was written read as health `unknown`."""
    main, _, rest = child_state.partition("|")
    main, _, main_health = main.partition(":")
    out: list[dict[str, object]] = []
    for part in filter(None, rest.split(",")):
        name, state, pid, restarts, health = [*part.split(":"), "", "", "", ""][:5]
        out.append(
            {
                "name": name,
                "state": state,
                "pid": int(pid) if pid.isdigit() else None,
                "restarts": int(restarts) if restarts.isdigit() else 0,
                "health": health or "unknown",
            }
        )
    return main, out, main_health or "unknown"


def group_args(sides: Mapping[str, Component], deferred: bool = False) -> list[str]:
    """The keeper options that start the side components beside the main command (deferred:
    each only on `RESTART <name>`, sent once the main command is healthy)."""
    # NAME=<json argv>, as failover/keeper/group.py parses it
    args = [a for c in sides.values() for a in ("--component", f"{c.name}={json.dumps(c.command)}")]
    return [*args, "--defer-components"] if args and deferred else args


def due_restarts(sides: Mapping[str, Component], now: float) -> list[str]:
    """Side components whose backoff has passed, marked as starting again."""
    due = [c for c in sides.values() if c.state == "backoff" and now >= c.backoff_until]
    for side in due:
        side.launched(now)
        side.restarts += 1
    return [c.name for c in due]
