"""The keeper: leads the child's session and kills the whole tree once nobody vouches for it.

Run as `python -m failover.keeper --control-fd N --name failover:C:N -- CMD...`. Standard
library only (psycopg2 in postgres mode). It starts warm: imports done, proof-of-life
session open, `READY` sent; the child starts only on `GO`.

Protocol on the control stream (one line each, ASCII):
  daemon -> keeper  `GO <epoch> <t>`  take the proof of life, start the child, run until t
                    `RUN-UNTIL <t>`   may run until CLOCK_BOOTTIME t (hard kill at t)
                    `STOP`            graceful: SIGTERM main pid, then the rest, SIGKILL later
                    `KILL`            SIGKILL the whole tree now
  keeper -> daemon  `READY`, `LOCKED`, `STARTED <pid>`, `EXITED <code>`, `GONE <reason>`,
                    `ERROR <text>`
End of stream (the daemon died, even by SIGKILL) = SIGKILL the tree now (exit at once if warm).

With `--prewarm` a warm keeper also keeps a pre-warmed `airflow scheduler` waiting
(failover/prewarm.py under Airflow's interpreter); on GO that process becomes the child.
  keeper -> daemon  `WARMING <pid>`   a warm process started
                    `WARM <json>`     ready: {"seconds", "rss_bytes", "airflow", "fingerprint"}
                    `COLD <reason>`   no pre-warm (GO starts the plain command)
                    `REWARM <reason>` replacing it (its inputs changed, or it reached its max age)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from failover import proctree
from failover.prewarm import EXIT_FAILED, EXIT_UNSUPPORTED, identity, parse_with_command
from failover.proof import LockFileProof, PgSessionProof, Proof, boottime

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
EXIT_LOCK_BUSY = 3
EXIT_START_FAILED = 4


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _child_preexec() -> None:
    # The child dies with the keeper even if the keeper is SIGKILLed.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


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
        self.rest_termed = False
        self.reason = ""
        self.warm: Warm | None = None

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
                preexec_fn=_child_preexec,  # noqa: PLW1509 - the keeper has no threads
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
        # Reaping stays here, so the main child's exit status is not lost.
        proctree.kill_tree(os.getpid(), [os.getpid()], reap_children=False)
        self._reap()

    def begin_stop(self, reason: str) -> None:
        if self.stop_started is not None:
            return
        self.reason = self.reason or reason
        self.stop_started = boottime()
        if self.child is not None and self.exit_code is None:
            proctree.signal_all([self.child.pid], signal.SIGTERM)

    def _reap(self) -> None:
        for pid, status in proctree.reap():
            if self.warm is not None and pid == self.warm.pid:
                self.warm.exited(os.waitstatus_to_exitcode(status))
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
        elif word == "KILL":
            self.hard_kill("kill requested")
        elif word:
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
        self.buffer += data
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            self._handle_line(raw.decode("ascii", "replace"))
        return True

    def _escalate(self, now: float) -> None:
        if self.stop_started is None:
            return
        elapsed = now - self.stop_started
        main_done = self.exit_code is not None
        if not self.rest_termed and (main_done or elapsed >= self.stop_timeout / 2):
            self.rest_termed = True
            proctree.signal_all(proctree.tree_members(os.getpid(), [os.getpid()]), signal.SIGTERM)
        limit = min(self.stop_timeout, 5.0) if self.reason == "child exited" else self.stop_timeout
        if elapsed >= limit:
            self.hard_kill("stop timeout")

    def _done(self) -> bool:
        main_done = self.child is None or self.exit_code is not None
        return main_done and not proctree.tree_members(os.getpid(), [os.getpid()])

    def run(self, wake_fd: int) -> None:
        """Loop until the child and every process of its tree are gone."""
        self.control.setblocking(False)
        while True:
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


# The body of a pip/setuptools/uv console script for `airflow`: anything else is a wrapper
# whose own work (env, secrets, sys.path) a pre-warmed start would skip.
CONSOLE_SCRIPT_LINES = {
    "import re",
    "import sys",
    "from airflow.__main__ import main",
    "if __name__ == '__main__':",
    'if __name__ == "__main__":',
    "sys.exit(main())",
}


def airflow_python(command: Sequence[str], env: Mapping[str, str]) -> tuple[str | None, str]:
    """The interpreter of `command[0]` if it is a plain `airflow` console script; or why not."""
    path = shutil.which(command[0], path=env.get("PATH"))
    if path is None:
        return None, f"{command[0]!r} is not on PATH"
    try:
        with open(path, "rb") as f:
            text = f.read(4096).decode("utf-8", "replace")
    except OSError as err:
        return None, f"cannot read {path}: {err.strerror}"
    first, _, body = text.partition("\n")
    if not first.startswith("#!"):
        return None, f"{path} is not a Python console script (no #! line)"
    words = first[2:].split()
    if words and os.path.basename(words[0]) == "env" and len(words) > 1:
        words = [shutil.which(words[1], path=env.get("PATH")) or words[1], *words[2:]]
    if len(words) != 1 or "python" not in os.path.basename(words[0]):
        return None, f"{path} does not run under a plain Python interpreter ({first[:80]})"
    for raw in body.splitlines():
        line = raw.strip()
        plain = not line or line.startswith(("#", "sys.argv[0] = re.sub("))
        if not plain and line not in CONSOLE_SCRIPT_LINES:
            return None, f"{path} is a wrapper, not a plain console script ({line[:60]!r})"
    if not os.access(words[0], os.X_OK):
        return None, f"{path}'s interpreter {words[0]} is not executable"
    return words[0], ""


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def fingerprint(paths: Sequence[str]) -> str:
    """What a warm process was built from: the identity of the files it watches."""
    blob = json.dumps([list(paths), identity(paths)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Warm:
    """A pre-warmed `airflow scheduler` in the keeper's session, waiting for GO on a pipe.

    Re-warmed when the files it was built from change (once they have been still for
    SETTLE seconds: not in the middle of a `pip install`) or at `max_age`; restarted with a
    backoff if its warm-up fails, dies or hangs; output goes where the keeper's goes.
    """

    CHECK_EVERY = 2.0
    SETTLE = 5.0
    WARMUP_LIMIT = 120.0
    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prewarm.py")

    def __init__(self, keeper: Keeper, python: str, max_age: float) -> None:
        self.keeper = keeper
        self.python = python
        self.max_age = max_age
        self.proc: subprocess.Popen[bytes] | None = None
        self.control = -1  # our write end of its GO pipe
        self.status = -1  # our read end of its status pipe
        self.buffer = b""
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.watch: list[str] = []
        self.print = ""
        self.changed: tuple[str, float] | None = None  # a new fingerprint and since when
        self.next_check = 0.0
        self.start_at = 0.0
        self.failures = 0
        self.stopping = False  # we end it ourselves: its exit is no news

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def fds(self) -> list[int]:
        return [self.status] if self.status >= 0 else []

    def start(self) -> None:
        go_r, self.control = os.pipe2(os.O_CLOEXEC)
        self.status, status_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.status, False)
        argv = [self.python, self.SCRIPT, "--control-fd", str(go_r), "--status-fd", str(status_w)]
        try:
            self.proc = subprocess.Popen(
                [*argv, "--", *self.keeper.command],
                stdin=subprocess.DEVNULL,
                pass_fds=(go_r, status_w),
                preexec_fn=_child_preexec,  # noqa: PLW1509 - the keeper has no threads
            )
        except OSError as err:
            self._close_fds()
            self.keeper.send(f"COLD cannot start {self.python}: {err.strerror}")
            self._backoff()
            return
        finally:
            os.close(go_r)
            os.close(status_w)
        self.started_at = boottime()
        self.ready_at = None
        self.changed = None
        self.stopping = False
        self.buffer = b""
        self.keeper.send(f"WARMING {self.proc.pid}")

    def _close_fds(self) -> None:
        for fd in (self.control, self.status):
            if fd >= 0:
                os.close(fd)
        self.control = self.status = -1

    def _backoff(self) -> None:
        self.failures += 1
        self.start_at = boottime() + min(5.0 * 2 ** (self.failures - 1), 300.0)

    def exited(self, code: int) -> None:
        """Reaped before GO: start again after a backoff, unless it cannot be pre-warmed."""
        if self.proc is not None:
            self.proc.returncode = code
        self.proc = None
        self.read()  # its last words (COLD ...)
        self._close_fds()
        if self.stopping:
            return
        if code == EXIT_UNSUPPORTED:
            self.start_at = float("inf")  # GO starts the plain command
            return
        if code != EXIT_FAILED:
            self.keeper.send(f"COLD the warm process exited with {code} before GO")
        self._backoff()

    def read(self) -> None:
        while self.status >= 0:
            try:
                data = os.read(self.status, 65536)
            except BlockingIOError:
                break
            if not data:
                os.close(self.status)
                self.status = -1
                break
            self.buffer += data
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            word, _, arg = raw.decode("utf-8", "replace").strip().partition(" ")
            if word == "READY" and self.proc is not None:
                self._ready(arg)
            elif word == "COLD":
                self.keeper.send(f"COLD {arg}")

    def _ready(self, payload: str) -> None:
        assert self.proc is not None
        try:
            info = json.loads(payload)
            self.watch = [str(p) for p in info.get("watch", [])]
            seen = info.get("seen", [])
        except (ValueError, AttributeError):
            info, self.watch, seen = {}, [], []
        self.print = fingerprint(self.watch)
        self.ready_at = boottime()
        self.next_check = self.ready_at + self.CHECK_EVERY
        self.failures = 0
        report = {
            "seconds": info.get("seconds"),
            "rss_bytes": _rss_bytes(self.proc.pid),
            "airflow": info.get("airflow"),
            "fingerprint": self.print,
        }
        self.keeper.send("WARM " + json.dumps(report))
        if identity(self.watch[: len(seen)]) != seen:
            self.changed = (self.print, self.ready_at)  # read while they changed: re-warm

    def maintain(self, now: float) -> None:
        """Start it when due; replace it when its inputs changed, it hangs or is too old."""
        if self.proc is None:
            if now >= self.start_at:
                self.start()
            return
        if self.ready_at is None:
            if now - self.started_at >= self.WARMUP_LIMIT:
                self.keeper.send(f"COLD the warm-up hung for {self.WARMUP_LIMIT:g} s")
                self.stop()
                self._backoff()
            return
        if now < self.next_check:
            return
        self.next_check = now + self.CHECK_EVERY
        current = fingerprint(self.watch)
        if current != self.print or self.changed is not None:
            if self.changed is None or self.changed[0] != current:
                self.changed = (current, now)  # changing: wait until it is still
            elif now - self.changed[1] >= self.SETTLE:
                self.restart("its inputs changed (Airflow installation or airflow.cfg)")
        elif self.max_age > 0 and now - self.ready_at >= self.max_age:
            self.restart(f"it is {now - self.ready_at:.0f} s old (max age {self.max_age:g} s)")

    def wait_seconds(self, now: float) -> float:
        """Until the next start or check; its READY line or its exit also wakes us."""
        if self.proc is None:
            return max(0.0, min(self.start_at - now, 3600.0))
        if self.ready_at is None:
            return max(0.0, min(5.0, self.started_at + self.WARMUP_LIMIT - now))
        return max(0.0, self.next_check - now)

    def restart(self, reason: str) -> None:
        self.keeper.send(f"REWARM {reason}")
        self.stop()
        self.start()

    def stop(self) -> None:
        """End of file on its GO pipe (a warm process exits at once; one still importing is
        killed), then make sure it is gone."""
        proc, self.proc = self.proc, None
        self._close_fds()
        if proc is None:
            return
        self.stopping = True
        if self.ready_at is None:
            proctree.signal_all([proc.pid], signal.SIGKILL)
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proctree.signal_all([proc.pid], signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)  # else the keeper's own exit path kills its tree

    def go(self, env: Mapping[str, str]) -> bool:
        """Hand the warm process the start: it becomes the keeper's child. False if gone."""
        proc = self.proc
        if proc is None:
            return False
        try:
            os.write(self.control, b"GO " + json.dumps(dict(env)).encode() + b"\n")
        except OSError:
            return False  # it died just now; the reaper reports it
        self.proc = None
        self._close_fds()
        self.keeper.child = proc
        self.keeper.send(f"STARTED {proc.pid}")
        return True


def _wait_for_go(keeper: Keeper, wake_fd: int) -> str | None:
    """Warm phase: wait for `GO`; the reason to exit instead, or None to start."""
    keeper.control.setblocking(False)
    while keeper.go is None:
        warm = keeper.warm
        timeout = 5.0
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


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m failover.keeper",
        description="Run CMD in this session; kill its whole tree when the daemon stops vouching.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--control-fd", type=int, help="connected stream socket fd")
    where.add_argument(
        "--connect", metavar="PATH", help="sidecar mode: connect to the daemon's Unix socket"
    )
    p.add_argument("--name", default="failover:keeper", help="failover:<cluster>:<node>")
    p.add_argument("--stop-timeout", type=float, default=30.0, help="SIGTERM -> SIGKILL grace")
    p.add_argument("--lock-file", help="hold this flock as proof of life (local backend)")
    p.add_argument("--lock-wait", type=float, default=5.0, help="how long to wait for the lock")
    p.add_argument("--pg-dsn-env", help="env var with the DSN of the proof-of-life session")
    p.add_argument("--pg-channel", help="NOTIFY this channel when the tree is gone")
    p.add_argument("--pg-epoch-table", help="<table>:<cluster>: refuse GO for a superseded epoch")
    p.add_argument(
        "--prewarm", action="store_true", help="keep `airflow scheduler` imported while warm"
    )
    p.add_argument(
        "--prewarm-max-age", type=float, default=0.0, help="re-warm after this many seconds"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parse_with_command(p, argv)


def _proof(args: argparse.Namespace) -> Proof | None:
    if args.pg_dsn_env:
        # The DSN (with its password) reaches us by env, never argv, and not the child.
        dsn = os.environ.pop(args.pg_dsn_env, "")
        return PgSessionProof(dsn, args.name, args.pg_channel, args.pg_epoch_table)
    if args.lock_file:
        return LockFileProof(args.lock_file, args.lock_wait)
    return None


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
    return Warm(keeper, python, args.prewarm_max_age)


def _connect(path: str) -> socket.socket:
    """Sidecar mode: connect to the daemon, waiting for it to listen (it may start later)."""
    delay = 0.1
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _read_init(sock: socket.socket, argv: Sequence[str]) -> argparse.Namespace | None:
    """Sidecar mode: the daemon's first line, `INIT <json>`, carries our options and env."""
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    line, _, rest = data.partition(b"\n")
    word, _, payload = line.decode("utf-8", "replace").partition(" ")
    if word != "INIT" or rest:
        return None
    init = json.loads(payload)
    os.environ.update({str(k): str(v) for k, v in init.get("env", {}).items()})
    command = list(argv[argv.index("--") :]) if "--" in argv else []
    return _parse(["--control-fd", "-1", *[str(a) for a in init.get("args", [])], *command])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()
        except PermissionError:
            pass  # a process-group leader already (a shell's job): descent still finds all
    if args.connect:
        control = _connect(args.connect)
        init = _read_init(control, argv)
        if init is None:
            return 0  # the daemon went away before telling us anything: start over
        args = init
    else:
        control = socket.socket(fileno=args.control_fd)
    rd, wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wr)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    proof = _proof(args)
    keeper = Keeper(control, args.command, args.stop_timeout, proof)
    signal.signal(signal.SIGTERM, lambda *_: keeper.begin_stop("keeper got SIGTERM"))
    if proof is not None and not proof.prepare():
        keeper.send(f"ERROR {proof.error}")
        keeper.send("GONE no proof of life")
        return EXIT_LOCK_BUSY
    keeper.send("READY")
    keeper.warm = _prewarm(args, keeper)
    why = _wait_for_go(keeper, rd)
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
    if warm is not None and warm.go(_epoch_env(name, epoch)):
        pass  # the pre-warmed scheduler runs from here
    elif not keeper.start(_child_env(name, epoch)):
        return abandon("start failed", EXIT_START_FAILED)
    keeper.run(wake_fd)
    keeper.send(f"GONE {keeper.reason or 'child exited'}")
    if proof is not None:
        proof.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
