"""The OS side of `child.Child`: spawn `python -m failover.keeper` on a socket pair.

The keeper leads a new session; the daemon keeps the other end of the socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence

from failover.errors import ChildError, ConfigError
from failover.keeper import proctree
from failover.keeper.proof import boottime

# A keeper that has not said a word yet is importing and opening its proof of life (a DB
# connect may take its 2 s timeout): lines sent meanwhile count as sent this long after launch.
KEEPER_STARTUP_SECONDS = 10.0


def set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


class SocketKeeperLink:
    """A keeper process and our end of its control stream."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes] | None,
        sock: socket.socket,
        pid: int = 0,
        live: set[int] | None = None,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid if proc is not None else pid
        self.live = live  # with orphan adoption: every keeper of ours still alive
        self.sock = sock
        self.buffer = b""
        self.eof = False
        self.launched_at = boottime()
        self.last_sent = self.launched_at
        self.unanswered: deque[float] = deque()  # when each line not yet ACKed was sent
        self.answered = 0
        self.heard_at: float | None = None  # its first line (READY, ERROR, ...)
        # An older sidecar keeper (another image) never answers: check one once it has.
        self.acks = proc is not None

    def send(self, line: str) -> None:
        try:
            self.sock.sendall(line.encode() + b"\n")
        except OSError:
            pass  # the keeper is gone; read_lines reports EOF
        self.last_sent = boottime()
        self.unanswered.append(self.last_sent)

    def ping(self, every: float) -> None:
        """Ask an idle keeper to answer, so its silence is measured even when we say nothing."""
        if not self.unanswered and not self.eof and boottime() - self.last_sent >= every:
            self.send("PING")

    def silence(self) -> float:
        """How long the oldest unanswered line has waited for the keeper's ACK (0: none)."""
        if not self.unanswered or self.eof or not self.acks:
            return 0.0
        heard = self.heard_at
        since = max(self.unanswered[0], heard or self.launched_at + KEEPER_STARTUP_SECONDS)
        return max(0.0, boottime() - since)

    def _answered(self, line: str) -> bool:
        """Record the keeper's answer; True for an `ACK` (no news for the Child)."""
        if self.heard_at is None:
            self.heard_at = boottime()
        word, _, count = line.partition(" ")
        if word != "ACK" or not count.isdigit():
            return False
        self.acks = True
        while self.answered < int(count) and self.unanswered:
            self.unanswered.popleft()
            self.answered += 1
        return True

    def read_lines(self) -> list[str]:
        lines: list[str] = []
        while not self.eof:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.eof = True
                break
            self.buffer += data
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").strip()
            if not self._answered(line):
                lines.append(line)
        if self.eof and not any(line.startswith("GONE") for line in lines):
            lines.append("EOF")
        return lines

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.cleanup()

    def cleanup(self) -> None:
        """Wait for the keeper; if it died abnormally, kill what is left of its session."""
        if self.proc is None:
            self.sock.close()  # sidecar: another container's keeper; EOF is all we can give it
            return
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5.0)  # stuck in the kernel: its tree is killed below
        # The keeper leads its session: its sid is its pid. Anything left there is ours.
        proctree.kill_tree(self.pid, [self.pid], reap_children=False)
        if self.live is not None:
            self.live.discard(self.pid)
            kill_orphans(self.live)
        self.sock.close()

    def kill(self) -> bool:
        """The keeper stopped answering: SIGKILL it and every process of its session and
        descent ourselves; True once none is left (False in sidecar mode: we cannot)."""
        if self.proc is None:
            return False  # another container's keeper: only its liveness probe can end it
        proctree.signal_all([self.pid], signal.SIGSTOP)  # it must not fork or reap meanwhile
        proctree.kill_tree(self.pid, [self.pid], timeout=1.0, reap_children=False)
        self.proc.kill()
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass  # stuck in the kernel (D state): what matters is its tree, checked below
        else:
            if self.live is not None:
                self.live.discard(self.pid)
        # Its escaped descendants are ours now (we are a subreaper): kill them too.
        left = proctree.kill_tree(self.pid, [self.pid], timeout=1.0, reap_children=False)
        if self.live is not None:
            kill_orphans(self.live)
        self.sock.close()
        self.eof = True
        return not left and not _orphans(self.live)


def _orphans(keepers: set[int] | None) -> list[int]:
    """Live children of ours that are not keepers (escaped from a killed keeper's tree)."""
    if keepers is None:
        return []
    me = os.getpid()
    return [
        pid
        for pid, (state, ppid, _) in proctree.snapshot().items()
        if ppid == me and pid not in keepers and state not in ("Z", "X")
    ]


def kill_orphans(keepers: set[int]) -> None:
    """We are a subreaper: a keeper that died abnormally left its escaped descendants to us.
    Kill every child of ours that is not a live keeper, with its tree, and reap it."""
    me = os.getpid()
    for pid, (state, ppid, _) in proctree.snapshot().items():
        if ppid != me or pid in keepers:
            continue
        if state != "Z":
            proctree.kill_tree(pid, [], reap_children=False)
            proctree.signal_all([pid], signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


class KeeperLauncher:
    """Launch keepers with this interpreter; their output goes where ours goes."""

    on_demand = True

    def __init__(self, python: str = sys.executable, adopt_orphans: bool = False) -> None:
        self.python = python
        self.live: set[int] = set()
        self.adopt_orphans = adopt_orphans
        if adopt_orphans:
            # Orphans of a keeper that died abnormally come to us, not to init; only for a
            # process whose every other child is a keeper (the daemon), never a library user.
            set_subreaper()

    def launch(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        stop_timeout: float,
        keeper_args: Sequence[str],
    ) -> SocketKeeperLink:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [
            self.python,
            "-m",
            "failover.keeper",
            "--control-fd",
            str(theirs.fileno()),
            "--stop-timeout",
            str(stop_timeout),
            *keeper_args,
            "--",
            *command,
        ]
        try:
            proc = subprocess.Popen(
                argv,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except OSError as err:
            ours.close()
            raise ChildError(f"cannot start the keeper ({self.python}): {err.strerror}") from err
        finally:
            theirs.close()
        ours.setblocking(False)
        self.live.add(proc.pid)
        return SocketKeeperLink(proc, ours, live=self.live if self.adopt_orphans else None)


class SidecarLauncher:
    """Sidecar mode: keepers are started by someone else (the scheduler container's command,
    `failover keeper --connect PATH -- airflow scheduler`) and connect to our Unix socket."""

    on_demand = False

    def __init__(self, path: str) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.server.bind(path)
        except OSError as err:
            raise ConfigError(
                "keeper.listen", f"cannot listen on {path}: {err.strerror}", "check the directory"
            ) from err
        os.chmod(path, 0o660)
        self.server.listen(4)
        self.server.setblocking(False)

    def fileno(self) -> int:
        return self.server.fileno()

    def launch(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        stop_timeout: float,
        keeper_args: Sequence[str],
    ) -> SocketKeeperLink:
        try:
            sock, _ = self.server.accept()
        except BlockingIOError:
            raise ChildError(f"no keeper has connected to {self.path} yet") from None
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
            shared = {k: v for k, v in env.items() if k.startswith("FAILOVER_")}
            init = {"args": [*keeper_args, "--stop-timeout", str(stop_timeout)], "env": shared}
            sock.sendall(b"INIT " + json.dumps(init).encode() + b"\n")
        except OSError as err:
            sock.close()  # the keeper went away between connect and accept
            raise ChildError(f"keeper on {self.path} left before INIT: {err.strerror}") from None
        sock.setblocking(False)
        return SocketKeeperLink(None, sock, pid)

    def close(self) -> None:
        self.server.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
