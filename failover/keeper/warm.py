"""The keeper's warm standby: a pre-warmed `airflow scheduler` that waits for GO.

Standard library only, like the keeper: failover/airflow/prewarm.py runs under Airflow's
interpreter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence

from failover.airflow.prewarm import EXIT_FAILED, EXIT_UNSUPPORTED, identity
from failover.keeper import proctree
from failover.keeper.proof import boottime

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
    SCRIPT = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "airflow", "prewarm.py"
    )

    def __init__(
        self, send: Callable[[str], None], command: Sequence[str], python: str, max_age: float
    ) -> None:
        self.send = send  # a line to the daemon
        self.command = list(command)
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
                [*argv, "--", *self.command],
                stdin=subprocess.DEVNULL,
                pass_fds=(go_r, status_w),
                preexec_fn=proctree.child_preexec,  # noqa: PLW1509 - the keeper has no threads
            )
        except OSError as err:
            self._close_fds()
            self.send(f"COLD cannot start {self.python}: {err.strerror}")
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
        self.send(f"WARMING {self.proc.pid}")

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
            self.send(f"COLD the warm process exited with {code} before GO")
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
                self.send(f"COLD {arg}")

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
            "rss_bytes": proctree.rss_bytes(self.proc.pid),
            "airflow": info.get("airflow"),
            "fingerprint": self.print,
        }
        self.send("WARM " + json.dumps(report))
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
                self.send(f"COLD the warm-up hung for {self.WARMUP_LIMIT:g} s")
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
        self.send(f"REWARM {reason}")
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

    def go(self, env: Mapping[str, str]) -> subprocess.Popen[bytes] | None:
        """Hand the warm process the start: it becomes the keeper's child. None if gone."""
        proc = self.proc
        if proc is None:
            return None
        try:
            os.write(self.control, b"GO " + json.dumps(dict(env)).encode() + b"\n")
        except OSError:
            return None  # it died just now; the reaper reports it
        self.proc = None
        self._close_fds()
        self.send(f"STARTED {proc.pid}")
        return proc
