"""What the ZooKeeper backend keeps in its nodes: contenders, the breadcrumb, and the member
store (heartbeats, history, flags) for clusters without a metadata DB.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import ZnodeStat

from failover.backends.zookeeper.conn import ZkConnection
from failover.backends.zookeeper.watches import Watches
from failover.errors import BackendUnavailable
from failover.interfaces import ClusterFlags, MemberRecord, MemberState, MemberStore

PREFIX = "c_"  # contender nodes: c_<node>_<10-digit sequence>
SEQ_DIGITS = 10
HISTORY_KEEP = 20
ANCHOR_MAX_AGE = 5.0  # seconds a server-time anchor from our own last write stays usable
CAS_TRIES = 10
MAX_LEASE_MS = 300_000  # lease_seconds is at most 300


def dump(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def load(data: bytes | None) -> Any:
    """JSON of a node, or {} for an empty or foreign value."""
    try:
        return json.loads(data or b"{}")
    except ValueError:
        return {}


def txn_ok(results: list[Any]) -> bool:
    return not any(isinstance(r, Exception) for r in results)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def as_int(data: bytes | None) -> int:
    try:
        return int(data or b"0")
    except ValueError:
        return 0


@dataclass(frozen=True)
class Contender:
    name: str
    node: str
    seq: int

    @classmethod
    def parse(cls, name: str) -> Contender | None:
        seq, sep = name[-SEQ_DIGITS:], name[-SEQ_DIGITS - 1 : -SEQ_DIGITS]
        if not name.startswith(PREFIX) or sep != "_" or not (seq.isascii() and seq.isdigit()):
            return None
        node = name[len(PREFIX) : -SEQ_DIGITS - 1]
        return cls(name, node, int(seq)) if node else None


@dataclass(frozen=True)
class Breadcrumb:
    """A leader on record, and when (server ms) it last proved its lease."""

    node: str | None
    epoch: int
    token: str
    lease_ms: int  # its child was dead by proved_at_ms + lease_ms if it did not renew
    released: bool
    proved_at_ms: int
    released_by: str = ""  # "keeper": its keeper released it after the daemon died

    @classmethod
    def parse(cls, info: Any, proved_at_ms: int) -> Breadcrumb | None:
        """The breadcrumb of a node's JSON; None if it names nobody or is malformed."""
        if not isinstance(info, dict) or not info.get("node"):
            return None
        try:
            return cls(
                node=str(info["node"]),
                epoch=int(info.get("epoch", 0)),
                token=str(info.get("token", "")),
                lease_ms=min(int(info.get("lease_ms", 0)), MAX_LEASE_MS),
                released=info.get("released") is True,
                proved_at_ms=int(info.get("proved_at_ms", proved_at_ms)),
                released_by=str(info.get("released_by", "")),
            )
        except (TypeError, ValueError, OverflowError):
            return None


def keeper_deadline_left(previous: Breadcrumb, server_now_ms: int, fallback_lease: float) -> float:
    """Seconds until the previous leader's keeper deadline surely passed (<= 0: it has).

    That child ran at most until its last proof (the breadcrumb write) + its lease bound;
    the proof precedes now, so never more than one lease from now (guards clock steps)."""
    lease_ms = previous.lease_ms if previous.lease_ms > 0 else int(fallback_lease * 1000)
    left = (previous.proved_at_ms + lease_ms - server_now_ms) / 1000
    return min(left, lease_ms / 1000)


class ZkNodes:
    """Node operations on one connection: read, write, compare-and-set, server time, layout."""

    def __init__(self, conn: ZkConnection) -> None:
        self.conn = conn
        self.anchor: tuple[int, float] | None = None  # (server ms, monotonic) of our last write
        self.layout_ready = False
        self.watches = Watches(conn.wake)

    def read(self, what: str, path: str, watch: Any = None) -> tuple[bytes, ZnodeStat] | None:
        try:
            got: tuple[bytes, ZnodeStat] = self.conn.call(
                what, lambda: self.conn.client.get_async(path, watch=watch)
            )
        except NoNodeError:
            return None
        return got

    def children(self, what: str, path: str) -> list[str]:
        try:
            return list(self.conn.call(what, lambda: self.conn.client.get_children_async(path)))
        except NoNodeError:
            return []

    def create(self, what: str, path: str, data: bytes, **kw: Any) -> Any:
        """Create with the ACL (and missing parents); never retried: a lost reply may hide
        a created node, which its creator must recognise by the node's data."""
        created: Any = self.conn.call(
            what,
            lambda: self.conn.client.create_async(
                path, data, acl=self.conn.acl, makepath=True, **kw
            ),
            retry=False,
        )
        return created

    def write(self, what: str, path: str, data: bytes, ephemeral: bool = False) -> ZnodeStat:
        """Set a node's data, creating it if missing (in our session with `ephemeral`); the
        reply's mtime anchors server time."""
        for _ in range(CAS_TRIES):
            try:
                stat: ZnodeStat = self.conn.call(
                    what, lambda: self.conn.client.set_async(path, data)
                )
            except NoNodeError:
                try:
                    stat = self.create(what, path, data, include_data=True, ephemeral=ephemeral)[1]
                except NodeExistsError:
                    continue
            self.anchor = (stat.mtime, time.monotonic())
            self.watches.forget(path)  # read our own write afresh, not its watch's echo
            return stat
        raise BackendUnavailable(f"ZooKeeper {what}: {path} keeps vanishing")

    def write_checked(self, what: str, path: str, data: bytes) -> ZnodeStat:
        """`write`, in one request with a check that every read kept by a watch is current
        (`Watches.set_checked`)."""
        stat = self.watches.set_checked(self.conn, what, path, data)
        if stat is None:
            return self.write(what, path, data)
        self.anchor = (stat.mtime, time.monotonic())
        return stat

    def update(self, what: str, path: str, change: Callable[[Any], Any]) -> None:
        """Read-modify-write of a JSON node with a versioned set (compare and set)."""
        for _ in range(CAS_TRIES):
            got = self.read(what, path)
            if got is None:
                try:
                    self.create(what, path, dump(change(load(None))))
                    self.watches.forget(path)
                    return
                except NodeExistsError:
                    continue
            new, version = dump(change(load(got[0]))), got[1].version
            try:
                self.conn.call(
                    what, partial(self.conn.client.set_async, path, new, version=version)
                )
                self.watches.forget(path)  # read our own write afresh, not its watch's echo
                return
            except BadVersionError:
                continue
        raise BackendUnavailable(f"ZooKeeper {what}: {path} kept changing; try again")

    def server_now_ms(self, fresh: bool = False) -> int:
        """The server's clock in ms: from our last write, or from a fresh write."""
        if self.anchor and not fresh and time.monotonic() - self.anchor[1] < ANCHOR_MAX_AGE:
            return self.anchor[0] + int((time.monotonic() - self.anchor[1]) * 1000)
        return int(self.write("read the server clock", self.conn.path("clock"), b"").mtime)

    def ensure_layout(self) -> None:
        """The cluster's persistent nodes (epoch, breadcrumb, members, flags), with the ACL."""
        if self.layout_ready:
            return
        self.conn.call(
            self.conn.base,
            lambda: self.conn.client.ensure_path_async(self.conn.base, acl=self.conn.acl),
        )
        for name, data in (("epoch", b"0"), ("leader", b"{}"), ("members", b""), ("flags", b"{}")):
            try:
                self.create(f"create {name}", self.conn.path(name), data)
            except NodeExistsError:
                pass
        self.layout_ready = True


def _terms(value: Any) -> list[dict[str, Any]]:
    return [t for t in value if isinstance(t, dict)] if isinstance(value, list) else []


class ZooKeeperMembers(MemberStore):
    """Member heartbeats (`members/<node>`), a short history and the operator flags (`flags`)
    as JSON nodes; heartbeat ages are server-side: node mtime against a fresh write's mtime."""

    def __init__(self, nodes: ZkNodes, owns_conn: bool = False, refresh: float = 10.0) -> None:
        self.nodes = nodes
        self.conn = nodes.conn
        self.owns_conn = owns_conn
        self.refresh = refresh  # re-read the flags if no heartbeat found them current so long

    def heartbeat(self, state: MemberState) -> None:
        info = {
            "role": state.role,
            "epoch": state.epoch,
            "child_state": state.child_state,
            "child_pid": state.child_pid,
            "version": state.version,
            "sentence": state.sentence[:500],
        }
        # (also checks that the flags and the epoch we keep are current)
        self.nodes.write_checked("heartbeat", self.conn.path("members", state.node), dump(info))

    def members(self) -> list[MemberRecord]:
        names = self.nodes.children("list members", self.conn.path("members"))
        now = self.nodes.server_now_ms(fresh=True)
        out = []
        for name in sorted(names):
            got = self.nodes.read("read member", self.conn.path("members", name))
            if got is None:
                continue
            info, stat = load(got[0]), got[1]
            if not isinstance(info, dict):
                continue
            pid, epoch = info.get("child_pid"), info.get("epoch")
            out.append(
                MemberRecord(
                    node=name,
                    role=str(info.get("role", "unknown")),
                    epoch=epoch if isinstance(epoch, int) else 0,
                    child_state=str(info.get("child_state", "unknown")),
                    child_pid=int(pid) if isinstance(pid, int) else None,
                    version=str(info.get("version", "")),
                    heartbeat_age=max(0.0, (now - stat.mtime) / 1000),
                    sentence=str(info.get("sentence", "")),
                )
            )
        return out

    def begin_term(self, epoch: int, node: str, reason: str) -> None:
        term = {"epoch": epoch, "node": node, "reason": reason, "started_at": time.time()}

        def add(terms: Any) -> list[Any]:
            kept = [t for t in _terms(terms) if t.get("epoch") != epoch]
            return [*kept, term][-HISTORY_KEEP:]

        self.nodes.update("begin term", self.conn.path("history"), add)

    def end_term(self, epoch: int, reason: str) -> None:
        def end(terms: Any) -> list[dict[str, Any]]:
            kept = _terms(terms)
            for term in kept:
                if term.get("epoch") == epoch and term.get("ended_at") is None:
                    term.update(ended_at=time.time(), end_reason=reason)
            return kept

        self.nodes.update("end term", self.conn.path("history"), end)

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        got = self.nodes.read("read history", self.conn.path("history"))
        return list(reversed(_terms(load(got[0]) if got else [])))[:limit]

    def flags(self) -> ClusterFlags:
        # Read again only when its watch fired (a pause or a switchover request wakes the
        # loop at once), after a session change, or when a heartbeat's check of its version
        # failed (a lost watch), or if no heartbeat checked it for `refresh` s.
        got = self.nodes.watches.read(
            self.conn, "read flags", self.conn.path("flags"), self.refresh
        )
        info = load(got[0]) if got else {}
        if not got or not isinstance(info, dict):
            return ClusterFlags()
        target, source = info.get("switchover_to"), info.get("switchover_from")
        target = target if isinstance(target, str) else None
        result = info.get("switchover_result")
        result = result if isinstance(result, str) and result else None
        age = None
        if target is not None or result is not None:
            age = max(0.0, (self.nodes.server_now_ms() - got[1].mtime) / 1000)
        return ClusterFlags(
            paused=info.get("paused") is True,
            switchover_to=target,
            switchover_from=source if isinstance(source, str) and source else None,
            switchover_age=age,
            switchover_result=result,
        )

    def _set_flags(self, **changes: Any) -> None:
        def apply(info: Any) -> dict[str, Any]:
            merged = {**(info if isinstance(info, dict) else {}), **changes}
            return {k: v for k, v in merged.items() if v is not None}

        self.nodes.update("write flags", self.conn.path("flags"), apply)

    def set_paused(self, paused: bool) -> None:
        self._set_flags(paused=paused or None)

    def request_switchover(self, from_node: str | None, to_node: str | None) -> None:
        self._set_flags(
            switchover_to=to_node or "", switchover_from=from_node or "", switchover_result=None
        )

    def clear_switchover(self, result: str = "") -> None:
        self._set_flags(switchover_to=None, switchover_from=None, switchover_result=result or None)

    def close(self) -> None:
        if self.owns_conn:
            self.conn.close()


class SwitchoverAware(MemberStore):
    """A member store whose `flags()` also lets the election step aside for a switchover
    target behind it in the queue (see `ZooKeeperElection.stand_aside`)."""

    def __init__(self, inner: MemberStore, stand_aside: Callable[[ClusterFlags], None]) -> None:
        self.inner = inner
        self.stand_aside = stand_aside
        self.one_statement_heartbeat = inner.one_statement_heartbeat

    def heartbeat(self, state: MemberState) -> None:
        self.inner.heartbeat(state)

    def members(self) -> list[MemberRecord]:
        return self.inner.members()

    def begin_term(self, epoch: int, node: str, reason: str) -> None:
        self.inner.begin_term(epoch, node, reason)

    def end_term(self, epoch: int, reason: str) -> None:
        self.inner.end_term(epoch, reason)

    def flags(self) -> ClusterFlags:
        return self._seen(self.inner.flags())

    def heartbeat_and_flags(self, state: MemberState) -> ClusterFlags:
        return self._seen(self.inner.heartbeat_and_flags(state))

    def _seen(self, flags: ClusterFlags) -> ClusterFlags:
        try:
            self.stand_aside(flags)
        except BackendUnavailable:
            pass  # the next tick tries again
        return flags

    def set_paused(self, paused: bool) -> None:
        self.inner.set_paused(paused)

    def request_switchover(self, from_node: str | None, to_node: str | None) -> None:
        self.inner.request_switchover(from_node, to_node)

    def clear_switchover(self, result: str = "") -> None:
        self.inner.clear_switchover(result)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)  # e.g. history()
