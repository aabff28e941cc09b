"""The keeper's side components: the commands that run beside the main one (the scheduler),
in the keeper's session, each in a process group of its own so it can be ended alone.

Standard library only. Argv: `--component NAME=<json argv>`, repeated, in group order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from failover.keeper import proctree


def parse_component(text: str) -> tuple[str, list[str]]:
    """`NAME=["argv", ...]` -> (name, argv); ValueError when malformed."""
    name, sep, raw = text.partition("=")
    argv = json.loads(raw) if sep else None
    if (
        not name
        or not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) for a in argv)
    ):
        raise ValueError(f'bad --component {text!r}: expected NAME=["cmd", ...]')
    return name, argv


def component_arg(name: str, argv: Sequence[str]) -> str:
    return f"{name}={json.dumps(list(argv))}"


def _group_preexec() -> None:
    proctree.child_preexec()
    os.setpgid(0, 0)  # its own group: `KILL <name>` and its exit end its remnants only


@dataclass
class Side:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None


class Group:
    """Side components started after the main child; restarted one at a time on request."""

    def __init__(
        self,
        components: Sequence[tuple[str, list[str]]],
        send: Callable[[str], None],
        deferred: bool = False,
    ):
        self.sides = {name: Side(name, argv) for name, argv in components}
        self.send = send
        self.env: Mapping[str, str] = {}
        self.deferred = deferred  # start_all starts none: the daemon sends RESTART for each

    @classmethod
    def of(
        cls, args: Sequence[str], send: Callable[[str], None], deferred: bool = False
    ) -> Group | None:
        """From the keeper's `--component` options; None without any."""
        return cls([parse_component(a) for a in args], send, deferred) if args else None

    def command(self, word: str, name: str, running: bool) -> None:
        """`KILL <name>` ends that component (its process group); `RESTART <name>` starts it
        again, only while the group runs (not once a stop began)."""
        if word == "KILL":
            self.kill(name)
        elif running:
            self.start(name)

    def start_all(self, env: Mapping[str, str]) -> None:
        """Start every side component, or (deferred) only keep `env` for their RESTART."""
        self.env = env
        for name in self.sides if not self.deferred else ():
            self.start(name)

    def start(self, name: str) -> None:
        side = self.sides.get(name)
        if side is None:
            self.send(f"ERROR unknown component {name!r}")
            return
        if side.proc is not None:
            return  # still running (or not reaped yet): one process per component
        try:
            side.proc = subprocess.Popen(
                side.argv,
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                preexec_fn=_group_preexec,  # noqa: PLW1509 - the keeper has no threads
            )
        except OSError as err:
            self.send(f"ERROR cannot start {side.argv[0]!r}: {err.strerror}")
            self.send(f"EXITED 127 {name}")
            return
        self.send(f"STARTED {side.proc.pid} {name}")

    def kill(self, name: str) -> None:
        side = self.sides.get(name)
        if side is not None and side.proc is not None:
            _killpg(side.proc.pid)

    def live_pids(self) -> list[int]:
        """The side components' processes not reaped yet."""
        return [side.proc.pid for side in self.sides.values() if side.proc is not None]

    def reaped(self, pid: int, code: int) -> bool:
        """A reaped pid: True if it was a side component (its remnants are killed)."""
        for side in self.sides.values():
            if side.proc is not None and side.proc.pid == pid:
                _killpg(pid)
                side.proc = None
                self.send(f"EXITED {code} {side.name}")
                return True
        return False


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
