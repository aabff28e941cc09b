"""Find and kill a process tree by session id and by descent, from /proc.

Standard library only: the keeper imports it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable


def _read(path: str) -> bytes | None:
    """A small /proc file's bytes in one read (no buffered file object: scans read hundreds),
    None if it cannot be read (its process is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, sid) of a process, None if it is gone."""
    data = _read(f"/proc/{pid}/stat")
    if not data:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split(None, 5)
    return rest[0].decode("ascii", "replace"), int(rest[1]), int(rest[3])


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def exited(pid: int, wait: float) -> bool:
    """Whether `pid` has exited (gone, or a zombie), waiting up to `wait` s for it."""
    end = time.monotonic() + wait
    while True:
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X"):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.005)


def peer_pid(sock: socket.socket) -> int:
    """The pid of a Unix socket's peer as this PID namespace sees it (0: not visible)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def snapshot() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, sid) for every process visible now: a read per process on the
    host (~10 us each), so callers on a takeover's path use `descendants` instead."""
    procs: dict[int, tuple[str, int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                procs[int(name)] = st
    return procs


def _children_files() -> bool:
    """Whether this kernel has /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN)."""
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


CHILDREN_FILES = _children_files()


def descendants(root: int) -> set[int]:
    """Descendants of `root` (zombies too), read from the children files of its tree only,
    not from every process on the host; the full scan where the kernel has no such files.
    Not precise while processes of the tree exit (the kernel may skip one): callers that must
    know that nothing is left ask the kernel another way (`has_children`)."""
    if not CHILDREN_FILES:
        return tree_members(root)
    found: set[int] = set()
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # gone
        for tid in tids:
            for kid in (_read(f"/proc/{pid}/task/{tid}/children") or b"").split():
                if int(kid) not in found:
                    found.add(int(kid))
                    stack.append(int(kid))
    found.discard(root)
    return found


def has_children() -> bool:
    """Whether this process has a child, live or not yet reaped (nothing is reaped here)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def kill_descendants(reap: Callable[[], object], timeout: float = 5.0) -> bool:
    """For a subreaper: SIGSTOP then SIGKILL every descendant, `reap`ing as they exit, until
    it has no child left; whether none is left. The proof is the kernel's: a subreaper's
    live or unreaped descendant always leaves it a child (orphans reparent to it, and a
    subreaper that is its session's leader has no session member that is not its
    descendant). A process the children files skipped only costs another turn."""
    me = os.getpid()
    end = time.monotonic() + timeout
    while True:
        reap()
        if not has_children():
            return True
        if time.monotonic() >= end:
            return False
        left = descendants(me)
        signal_all(left, signal.SIGSTOP)  # freeze first: nothing forks between scan and kill
        left |= descendants(me)
        signal_all(left, signal.SIGKILL)
        time.sleep(0.001)


def tree_members(root: int, sids: Iterable[int] = ()) -> set[int]:
    """Live (non-zombie) descendants of `root` plus every process in the sessions `sids`."""
    procs = snapshot()
    wanted_sids = set(sids)
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for kid in children.get(stack.pop(), []):
            if kid not in found:
                found.add(kid)
                stack.append(kid)
    found.update(pid for pid, (_, _, sid) in procs.items() if sid in wanted_sids)
    found.discard(root)
    found.discard(os.getpid())
    return {pid for pid in found if procs.get(pid, ("Z",))[0] not in ("Z", "X")}


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def reap() -> list[tuple[int, int]]:
    """Reap every exited child of this process; (pid, wait status) of each."""
    reaped: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def kill_tree(
    root: int, sids: Iterable[int] = (), timeout: float = 5.0, reap_children: bool = True
) -> set[int]:
    """SIGSTOP then SIGKILL the tree until nothing of it is left; return what survived.

    `reap_children` only where the caller owns the tree (the keeper, a subreaper).
    """
    sid_set = set(sids)
    end = time.monotonic() + timeout
    left = tree_members(root, sid_set)
    while left and time.monotonic() < end:
        # Freeze first so nothing forks between the scan and the kill.
        signal_all(left, signal.SIGSTOP)
        left |= tree_members(root, sid_set)
        signal_all(left, signal.SIGKILL)
        time.sleep(0.005)
        if reap_children:
            reap()
        left = tree_members(root, sid_set)
    return left


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def child_preexec() -> None:
    # The child dies with the keeper even if the keeper is SIGKILLed.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
