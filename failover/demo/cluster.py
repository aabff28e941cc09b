"""`failover demo`: three local candidates, a SIGKILLed leader, a graceful switchover.

Needs no servers and no Airflow; everything lives in a temp dir and is cleaned up
(`--keep`: the three daemons stay up to be looked at with `failover status`).
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


def _created_at(pid: int) -> float:
    """When the process was created, on CLOCK_BOOTTIME (10 ms resolution: clock ticks)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Demo:
    def __init__(self, root: Path, detach: bool = False) -> None:
        self.root = root
        self.detach = detach
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
                argv,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=self.detach,  # --keep: they outlive the demo and its terminal
            )

    def wait_for(self, test: str, timeout: float = 20.0, count: int = 0) -> dict[str, object]:
        """A status with a healthy leader (not `test` unless "any") and `count` members."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.check_running()
            try:
                status = cluster_status(self.settings)
            except FailoverError:
                status = {}
            members = status.get("members") if status else None
            enough = isinstance(members, list) and len(members) >= count
            new_leader = test == "any" or status["leader"] != test
            if enough and status["healthy_leader"] and new_leader:
                return status
            time.sleep(0.05)
        raise FailoverError(f"no healthy leader within {timeout:g} s; logs in {self.root}")

    def check_running(self) -> None:
        """A daemon that exited on its own fails the demo with its last log line."""
        for node, proc in self.daemons.items():
            if proc.poll() is not None:
                lines = (self.root / f"{node}.log").read_text(errors="replace").splitlines()
                last = lines[-1] if lines else "no output"
                raise FailoverError(f"{node}'s daemon exited with {proc.returncode}: {last}")

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
    demo = Demo(root, detach=keep)
    ok = False
    try:
        print(f"starting three candidates {', '.join(NODES)} on the local backend in {root}")
        for node in NODES:
            demo.start(node)
        status = demo.wait_for("any", count=len(NODES))
        print(render(status))
        _kill_leader(demo, status)
        _switchover(demo, demo.wait_for("any"))
        ok = True
        return 0
    except FailoverError as err:
        print(f"failover: demo failed: {err}", file=sys.stderr)
        return 1
    finally:
        if keep and ok:
            _leave_running(demo)
        else:
            _clean_up(demo, keep_dir=keep or not ok)  # a failure keeps its logs


def _kill_leader(demo: Demo, status: dict[str, object]) -> None:
    """kill -9 the leader's daemon; show the takeover; restart the killed daemon."""
    leader, child_pid = _child_of(status)
    print(f"\n1. kill -9 the leader's daemon ({leader}, pid {demo.daemons[leader].pid})")
    killed_at = time.clock_gettime(time.CLOCK_BOOTTIME)
    demo.daemons[leader].kill()
    new = demo.starts_after(killed_at, child_pid)
    old_gone = not _pid_alive(child_pid)
    created = _created_at(new.pid) if _pid_alive(new.pid) else new.t
    print(
        f"   {new.node} took over with epoch {new.epoch}: new child {new.pid} created "
        f"{max(created - killed_at, 0.0):.2f} s after the kill; old child {child_pid} gone: "
        f"{old_gone}\n   (the stand-in logged its own start at {new.t - killed_at:.2f} s: "
        "its Python start-up comes on top)"
    )
    demo.daemons[leader].wait()
    print(
        f"   restarting {leader}'s daemon, as systemd's Restart=always would: "
        "it rejoins as a standby"
    )
    demo.start(leader)
    print(render(demo.wait_for("any", count=len(NODES))))


def _switchover(demo: Demo, status: dict[str, object]) -> None:
    current, child_pid = _child_of(status)
    members = status["members"]
    assert isinstance(members, list)
    target = next(m["node"] for m in members if m["role"] == "standby")
    print(f"\n2. graceful switchover {current} -> {target}")
    asked_at = time.clock_gettime(time.CLOCK_BOOTTIME)
    print("   " + request_switchover(demo.settings, target, 20.0))
    new = demo.starts_after(asked_at, child_pid)
    stops = [e for e in read_events(demo.events) if e.word == "stop" and e.pid == child_pid]
    created = _created_at(new.pid) if _pid_alive(new.pid) else new.t
    gap = max(created - stops[0].t, 0.0) if stops else float("nan")
    print(
        f"   old child {child_pid} stopped (SIGTERM), new child {new.pid} on {new.node} "
        f"created {gap:.2f} s later (epoch {new.epoch})"
    )
    print(render(demo.wait_for("any")))


def _leave_running(demo: Demo) -> None:
    """--keep: the daemons go on; say how to look at them and how to stop them."""
    where = f"--cluster demo --set local.dir={demo.root / 'state'}"
    pids = " ".join(str(p.pid) for p in demo.daemons.values())
    print(
        f"\nkept running (--keep): daemons {pids}, logs in {demo.root}\n"
        f"  failover status {where}\n"
        f"  failover switchover {where}\n"
        f"stop them (graceful, a few seconds), then remove their directory:\n"
        f"  kill {pids}\n"
        f"  rm -rf {demo.root}"
    )


def _clean_up(demo: Demo, keep_dir: bool) -> None:
    demo.stop_all()
    leftovers = [e.pid for e in read_events(demo.events) if e.word == "start" and _pid_alive(e.pid)]
    print(f"\ncleaned up: daemons stopped, children left running: {len(leftovers)}")
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    if keep_dir:
        print(f"kept {demo.root}")
    else:
        shutil.rmtree(demo.root, ignore_errors=True)
