"""The keeper: leads the child's session and kills the whole tree once nobody vouches for it.

Run as `python -m failover.keeper --control-fd N --name failover:C:N -- CMD...`. Standard
library only (psycopg2 in postgres mode). It starts warm: imports done, proof-of-life
session open, `READY` sent; the child starts only on `GO`.

Protocol on the control stream (one line each, ASCII):
  daemon -> keeper  `GO <epoch> <t>`  take the proof of life, start the child, run until t
                    `RUN-UNTIL <t>`   may run until CLOCK_BOOTTIME t (hard kill at t)
                    `STOP`            graceful: SIGTERM main pid, then the rest, SIGKILL later
                    `KILL`            SIGKILL the whole tree now
                    `ZK-SESSION <json>`  ZooKeeper: the daemon's session (see zksession.py)
                    `PING`            nothing to do but answer (the daemon asks an idle keeper)
                    `RESTART <name>` / `KILL <name>`  one side component (group.py)
  keeper -> daemon  `READY`, `LOCKED`, `STARTED <pid>`, `EXITED <code>`, `GONE <reason>`,
                    `ERROR <text>`, `ACK <n>` (n = lines handled so far: it answers every read);
                    a side component's STARTED/EXITED end with its name
End of stream (the daemon died, even by SIGKILL) = SIGKILL the tree now (exit at once if warm);
then, holding a ZooKeeper session and with the daemon's process gone, end that session.
A keeper that leaves lines unanswered too long is presumed stuck: the daemon kills its tree.
With `--alive-file F` it also writes its CLOCK_BOOTTIME to F at least once a second, and
`--check F` (a container's liveness probe) fails once F is older than `--max-age` seconds.

With `--prewarm` a warm keeper also keeps a pre-warmed `airflow scheduler` waiting
(failover/airflow/prewarm.py under Airflow's interpreter); on GO that process becomes the child.
  keeper -> daemon  `WARMING <pid>`   a warm process started
                    `WARM <json>`     ready: {"seconds", "rss_bytes", "airflow", "fingerprint"}
                    `COLD <reason>`   no pre-warm (GO starts the plain command)
                    `REWARM <reason>` replacing it (its inputs changed, or it reached its max age)
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from failover.keeper import proctree, sidecar, zksession
from failover.keeper.alive import WAKE_SECONDS, Alive, check_main
from failover.keeper.args import init_args, parse, proof_of_life
from failover.keeper.group import Group
from failover.keeper.proof import Proof, boottime
from failover.keeper.warm import Warm, airflow_python

EXIT_LOCK_BUSY = 3
EXIT_START_FAILED = 4


RETERM_SECONDS = 1.0  # a side component still alive after its SIGTERM gets another


class Keeper:
    """One child's lifetime: start it, watch the stream and the deadline, kill the tree."""

    def __init__(
        self,
        control: socket.socket,
        command: Sequence[str],
        stop_timeout: float,
        proof: Proof | None,
    ) -> None:
        self.control = control
        self.command = list(command)
        self.run_until = 0.0
        self.go: tuple[int, float] | None = None
        self.eof = False
        self.stop_timeout = stop_timeout
        self.proof = proof
        self.child: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.buffer = b""
        self.stop_started: float | None = None
        self.rest_termed: float | None = None  # when the rest of the tree got its SIGTERM
        self.reason = ""
        self.warm: Warm | None = None
        self.session: zksession.Ticket | None = None  # the daemon's ZooKeeper session
        self.daemon_pid = 0  # 0: not known (a sidecar in another PID namespace)
        self.group: Group | None = None  # the side components (dag-processor, triggerer)
        self.handled = 0  # daemon lines handled so far: what `ACK` reports
        self.alive: Alive | None = None

    def beat(self) -> None:
        if self.alive is not None:
            self.alive.beat()

    def send(self, line: str) -> None:
        try:
            self.control.sendall(line.encode() + b"\n")
        except OSError:
            pass  # the daemon is gone: EOF handling kills the tree

    def start(self, env: dict[str, str]) -> bool:
        try:
            self.child = subprocess.Popen(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                preexec_fn=proctree.child_preexec,  # noqa: PLW1509 - the keeper has no threads
            )
        except OSError as err:
            self.send(f"ERROR cannot start {self.command[0]!r}: {err.strerror}")
            return False
        self.send(f"STARTED {self.child.pid}")
        return True

    def hard_kill(self, reason: str) -> None:
        self.reason = self.reason or reason
        if self.warm is not None:
            self.warm.stopping = True
        if self.child is not None and self.exit_code is None:
            proctree.signal_all([self.child.pid], signal.SIGKILL)
        # Reaping stays here (`_reap`), so the main child's exit status is not lost. As the
        # subreaper and its session's leader, this keeper is done when it has no child left:
        # no scan of every process on the host on a crashed daemon's takeover path.
        proctree.kill_descendants(self._reap)

    def begin_stop(self, reason: str) -> None:
        if self.stop_started is not None:
            return
        self.reason = self.reason or reason
        self.stop_started = boottime()
        if self.child is not None and self.exit_code is None:
            proctree.signal_all([self.child.pid], signal.SIGTERM)  # the scheduler first

    def _reap(self) -> None:
        for pid, status in proctree.reap():
            if self.warm is not None and pid == self.warm.pid:
                self.warm.exited(os.waitstatus_to_exitcode(status))
            if self.group is not None and self.group.reaped(pid, os.waitstatus_to_exitcode(status)):
                continue
            if self.child is not None and pid == self.child.pid and self.exit_code is None:
                self.exit_code = os.waitstatus_to_exitcode(status)
                self.child.returncode = self.exit_code
                self.send(f"EXITED {self.exit_code}")
                self.begin_stop("child exited")

    def _handle_line(self, line: str) -> None:
        word, _, arg = line.strip().partition(" ")
        if word == "GO" and self.go is None:
            try:
                epoch, until = arg.split()
                self.go = (int(epoch), float(until))
            except ValueError:
                self.send(f"ERROR bad GO {arg!r}")
        elif word == "RUN-UNTIL":
            try:
                self.run_until = float(arg)
            except ValueError:
                self.send(f"ERROR bad RUN-UNTIL {arg!r}")
        elif word == "STOP":
            self.begin_stop("stop requested")
        elif word in ("KILL", "RESTART") and arg and self.group is not None:
            running = self.stop_started is None and not self.reason and self.child is not None
            self.group.command(word, arg, running)
        elif word == "KILL":
            self.hard_kill("kill requested")
        elif word == zksession.WORD:
            try:
                self.session = zksession.Ticket.parse(arg)
            except ValueError:
                self.send(f"ERROR bad {word} line")  # never echoed: it holds secrets
        elif word and word != "PING":
            self.send(f"ERROR unknown command {word!r}")

    def _read_control(self) -> bool:
        """Handle what the daemon sent; False on end of stream."""
        try:
            data = self.control.recv(4096)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.feed(data)
        return True

    def feed(self, data: bytes) -> None:
        """Handle the complete lines of what the daemon sent; keep a partial one; answer."""
        self.buffer += data
        handled = self.handled
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            self._handle_line(raw.decode("ascii", "replace"))
            self.handled += 1
        if self.handled != handled:
            # The one place we answer: the daemon presumes a keeper that stops answering stuck.
            self.send(f"ACK {self.handled}")

    def _escalate(self, now: float) -> None:
        if self.stop_started is None:
            return
        elapsed = now - self.stop_started
        main_done = self.exit_code is not None
        if self.rest_termed is None and (main_done or elapsed >= self.stop_timeout / 2):
            self.rest_termed = now
            if proctree.has_children():  # (none after a hard kill: no scan of the host then)
                rest = proctree.tree_members(os.getpid(), [os.getpid()])
                proctree.signal_all(rest, signal.SIGTERM)
        elif self.group is not None and now - (self.rest_termed or now) >= RETERM_SECONDS:
            # A component may drop a SIGTERM (Airflow 3.3's dag-processor: its handler's
            # sys.exit, raised inside a garbage-collector callback, is ignored): repeat it.
            self.rest_termed = now
            proctree.signal_all(self.group.live_pids(), signal.SIGTERM)
        limit = min(self.stop_timeout, 5.0) if self.reason == "child exited" else self.stop_timeout
        if elapsed >= limit:
            self.hard_kill("stop timeout")

    def end_daemon_session(self) -> str | None:
        """After the tree is proven gone: if the daemon died (end of stream and its process
        gone) while this keeper ran its epoch's child, end its ZooKeeper session, so that the
        next contender takes over now, not after the session timeout. None: nothing tried."""
        ticket, self.session = self.session, None
        if ticket is None or not self.eof or self.child is None or not self._done():
            return None
        return zksession.after_daemon_died(ticket, self.daemon_pid)

    def _done(self) -> bool:
        """The main child reaped and no child left: every descendant (and session member) of
        a subreaper leaves it a child until it is reaped (`proctree.kill_descendants`)."""
        main_done = self.child is None or self.exit_code is not None
        return main_done and not proctree.has_children()

    def run(self, wake_fd: int) -> None:
        """Loop until the child and every process of its tree are gone."""
        self.control.setblocking(False)
        while True:
            self.beat()
            now = boottime()
            if now >= self.run_until:
                self.hard_kill("run-until deadline passed")
            self._escalate(now)
            self._reap()
            if self._done():
                return
            fds = [self.control.fileno(), wake_fd]
            proof_fd = self.proof.fileno() if self.proof else None
            if proof_fd is not None:
                fds.append(proof_fd)
            timeout = max(0.0, min(self.run_until - now, 0.1 if self.stop_started else 1.0))
            readable, _, _ = select.select(fds, [], [], timeout)
            if wake_fd in readable:
                os.read(wake_fd, 512)
            if self.control.fileno() in readable and not self._read_control():
                self.hard_kill("daemon gone (control stream closed)")
            if self.proof is not None and self.proof.broken():
                self.hard_kill("proof-of-life session lost")


def _epoch_env(name: str, epoch: int) -> dict[str, str]:
    return {"FAILOVER_EPOCH": str(epoch), "PGAPPNAME": f"{name}:{epoch}"}


def _child_env(name: str, epoch: int) -> dict[str, str]:
    return {**os.environ, **_epoch_env(name, epoch)}


def _prewarm(args: argparse.Namespace, keeper: Keeper) -> Warm | None:
    if not args.prewarm:
        return None
    python, why = airflow_python(keeper.command, os.environ)
    if python is None:
        keeper.send(f"COLD {why}")
        return None
    return Warm(keeper.send, keeper.command, python, args.prewarm_max_age)


def wait_for_go(keeper: Keeper, wake_fd: int) -> str | None:
    """Warm phase: wait for `GO`; the reason to exit instead, or None to start."""
    keeper.control.setblocking(False)
    while keeper.go is None:
        keeper.beat()
        warm = keeper.warm
        timeout = 5.0 if keeper.alive is None else WAKE_SECONDS
        if warm is not None:
            if not keeper._read_control():  # a GO that is waiting beats a re-warm
                return "daemon gone before go"
            if keeper.stop_started is not None or keeper.reason:
                return "stopped before go"
            if keeper.go is not None:
                break
            now = boottime()
            keeper._reap()
            warm.maintain(now)
            timeout = min(timeout, warm.wait_seconds(now))
        fds = [keeper.control.fileno(), wake_fd]
        proof_fd = keeper.proof.fileno() if keeper.proof else None
        if proof_fd is not None:
            fds.append(proof_fd)
        if warm is not None:
            fds.extend(warm.fds())
        readable, _, _ = select.select(fds, [], [], timeout)
        if wake_fd in readable:
            os.read(wake_fd, 512)
        if warm is not None and set(warm.fds()) & set(readable):
            warm.read()
        if keeper.control.fileno() in readable and not keeper._read_control():
            return "daemon gone before go"
        if keeper.stop_started is not None or keeper.reason:
            return "stopped before go"
        if keeper.proof is not None and keeper.proof.broken():
            return "proof-of-life session lost while warm"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--check"]:
        return check_main(argv[1:])
    args = parse(argv)
    alive = Alive(args.alive_file) if args.alive_file else None
    proctree.prctl(proctree.PR_SET_CHILD_SUBREAPER, 1)
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()
        except PermissionError:
            pass  # a process-group leader already (a shell's job): descent still finds all
    early = b""  # sidecar mode: daemon lines that came with INIT (a GO may)
    if args.connect:
        control = sidecar.connect(args.connect, alive)
        init = sidecar.read_init(control, alive)
        if init is None:
            return 0  # the daemon went away before telling us anything: start over
        args, early = init_args(init[0], argv), init[1]
        daemon_pid = proctree.peer_pid(control)
    else:
        control = socket.socket(fileno=args.control_fd)
        daemon_pid = os.getppid()  # the daemon launched us
    rd, wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wr)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    proof = proof_of_life(args)
    keeper = Keeper(control, args.command, args.stop_timeout, proof)
    keeper.alive = alive
    keeper.daemon_pid = daemon_pid
    keeper.group = Group.of(args.component, keeper.send, args.defer_components)
    keeper.feed(early)
    signal.signal(signal.SIGTERM, lambda *_: keeper.begin_stop("keeper got SIGTERM"))
    if proof is not None and not proof.prepare():
        keeper.send(f"ERROR {proof.error}")
        keeper.send("GONE no proof of life")
        return EXIT_LOCK_BUSY
    keeper.send("READY")
    keeper.warm = _prewarm(args, keeper)
    why = wait_for_go(keeper, rd)
    if why is not None or keeper.go is None:
        if keeper.warm is not None:
            keeper.warm.stop()
        keeper.send(f"GONE {why}")
        if proof is not None:
            proof.release()
        return 0
    epoch, keeper.run_until = keeper.go
    return _start_and_run(keeper, proof, args.name, epoch, rd)


def _start_and_run(keeper: Keeper, proof: Proof | None, name: str, epoch: int, wake_fd: int) -> int:
    """After GO: take the proof of life, start the child, run until its tree is gone."""
    warm, keeper.warm = keeper.warm, None

    def abandon(why: str, code: int) -> int:
        """Nothing was started: make sure the warm process is gone, then say so."""
        if warm is not None:
            warm.stop()
        keeper.send(f"GONE {why}")
        if proof is not None:
            proof.release()
        return code

    if proof is not None:
        if not proof.activate(epoch):
            keeper.send(f"ERROR {proof.error}")
            return abandon("no proof of life", EXIT_LOCK_BUSY)
        keeper.send("LOCKED")
    if boottime() >= keeper.run_until:
        return abandon("run-until deadline passed before start", EXIT_START_FAILED)
    if not keeper._read_control() or keeper.stop_started is not None or keeper.reason:
        return abandon("stopped before start", 0)  # GO and EOF/KILL arrived together
    warm_child = warm.go(_epoch_env(name, epoch)) if warm is not None else None
    if warm_child is not None:
        keeper.child = warm_child  # the pre-warmed scheduler runs from here
    elif not keeper.start(_child_env(name, epoch)):
        return abandon("start failed", EXIT_START_FAILED)
    if keeper.group is not None:
        keeper.group.start_all(_child_env(name, epoch))
    keeper.run(wake_fd)
    ended = keeper.end_daemon_session()
    if ended is not None:
        print(f"failover.keeper: daemon gone, tree gone: {ended}", file=sys.stderr, flush=True)
    keeper.send(f"GONE {keeper.reason or 'child exited'}")
    if proof is not None:
        proof.release()
    return 0
