"""`failover demo`: three local candidates, a SIGKILLed leader, a graceful switchover.

Needs no servers and no Airflow; everything lives in a temp dir and is cleaned up.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from failover.config import Settings
from failover.errors import FailoverError
from failover.ops.status import cluster_status, render, request_switchover

NODES = ("alpha", "bravo", "charlie")
LEASE = 3.0


@dataclass(frozen=True)
class Event:
    word: str
    node: str
    epoch: int
    pid: int
    t: float


def read_events(path: Path) -> list[Event]:
    events: list[Event] = []
    if not path.exists():
        return events
    for line in path.read_text().splitlines():
        parts = dict(p.split("=", 1) for p in line.split()[1:])
        events.append(
            Event(
                line.split()[0],
                parts["node"],
                int(parts["epoch"]),
                int(parts["pid"]),
                float(parts["t"]),
            )
        )
    return events


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.events = root / "events.log"
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self.settings = Settings(
            cluster="demo",
            node="cli",
            backend="local",
            lease_seconds=LEASE,
            loop_seconds=0.5,
            backend_timeout_seconds=0.5,
            self_fence_margin_seconds=0.5,
        ).replace(local=Settings().local.__class__(dir=str(root / "state")))

    def start(self, node: str) -> None:
        argv = [
            sys.executable,
            "-m",
            "failover",
            "run",
            "--node",
            node,
            "--cluster",
            "demo",
            "--set",
            f"local.dir={self.root / 'state'}",
            "--set",
            f"lease_seconds={LEASE}",
            "--set",
            "loop_seconds=0.5",
            "--set",
            "backend_timeout_seconds=0.5",
            "--set",
            "self_fence_margin_seconds=0.5",
            "--set",
            "stop_timeout_seconds=5",
            "--set",
            "log.format=json",
            "--set",
            "http.listen=",
            "--",
            sys.executable,
            "-m",
            "failover.demo.standin",
            str(self.events),
        ]
        with open(self.root / f"{node}.log", "ab") as out:
            self.daemons[node] = subprocess.Popen(
                argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )

    def wait_for(self, test: str, timeout: float = 20.0) -> dict[str, object]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                status = cluster_status(self.settings)
            except FailoverError:
                status = {}
            if status and status["healthy_leader"] and (test == "any" or status["leader"] != test):
                return status
            time.sleep(0.05)
        raise FailoverError(f"no healthy leader within {timeout:g} s; logs in {self.root}")

    def starts_after(self, t: float, old_pid: int) -> Event:
        """The first child started after `t` that is not the old one (which, on a busy machine,
        may write its own start line only after the fault)."""
        end = time.monotonic() + 20
        while time.monotonic() < end:
            for e in read_events(self.events):
                if e.word == "start" and e.t > t and e.pid != old_pid:
                    return e
            time.sleep(0.01)
        raise FailoverError("no new child started within 20 s")

    def stop_all(self) -> None:
        for proc in self.daemons.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.daemons.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _child_of(status: dict[str, object]) -> tuple[str, int]:
    members = status["members"]
    assert isinstance(members, list)
    leader = next(m for m in members if m["role"] == "leader")
    return str(leader["node"]), int(leader["child_pid"])


def run_demo(keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="failover-demo-"))
    demo = Demo(root)
    boot = time.clock_gettime
    try:
        print(f"starting three candidates {', '.join(NODES)} on the local backend in {root}")
        for node in NODES:
            demo.start(node)
        status = demo.wait_for("any")
        print(render(status))
        leader, child_pid = _child_of(status)

        print(f"\n1. kill -9 the leader's daemon ({leader}, pid {demo.daemons[leader].pid})")
        killed_at = boot(time.CLOCK_BOOTTIME)
        demo.daemons[leader].kill()
        new = demo.starts_after(killed_at, child_pid)
        old_gone = not _pid_alive(child_pid)
        print(
            f"   {new.node} took over with epoch {new.epoch}: new child {new.pid} started "
            f"{new.t - killed_at:.3f} s after the kill; old child {child_pid} gone: {old_gone}"
        )
        demo.daemons[leader].wait()
        demo.start(leader)
        status = demo.wait_for("any")
        print(render(status))

        current, child_pid = _child_of(status)
        members = status["members"]
        assert isinstance(members, list)
        target = next(m["node"] for m in members if m["role"] == "standby")
        print(f"\n2. graceful switchover {current} -> {target}")
        asked_at = boot(time.CLOCK_BOOTTIME)
        print("   " + request_switchover(demo.settings, target, 20.0))
        new = demo.starts_after(asked_at, child_pid)
        stops = [e for e in read_events(demo.events) if e.word == "stop" and e.pid == child_pid]
        gap = new.t - stops[0].t if stops else float("nan")
        print(
            f"   old child {child_pid} stopped, new child {new.pid} on {new.node} started "
            f"{gap * 1000:.0f} ms later (epoch {new.epoch})"
        )
        print(render(demo.wait_for("any")))
        return 0
    except FailoverError as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1
    finally:
        demo.stop_all()
        leftovers = [
            e.pid for e in read_events(demo.events) if e.word == "start" and _pid_alive(e.pid)
        ]
        print(f"\ncleaned up: daemons stopped, children left running: {len(leftovers)}")
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
