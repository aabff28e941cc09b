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
from collections.abc import Mapping, Sequence

from failover.errors import ChildError, ConfigError
from failover.keeper import proctree


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

    def send(self, line: str) -> None:
        try:
            self.sock.sendall(line.encode() + b"\n")
        except OSError:
            pass  # the keeper is gone; read_lines reports EOF

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
            lines.append(raw.decode("utf-8", "replace").strip())
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
            self.proc.wait(timeout=5.0)
        # The keeper leads its session: its sid is its pid. Anything left there is ours.
        proctree.kill_tree(self.pid, [self.pid], reap_children=False)
        if self.live is not None:
            self.live.discard(self.pid)
            kill_orphans(self.live)
        self.sock.close()


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
