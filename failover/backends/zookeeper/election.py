"""ZooKeeper election: ephemeral sequential contenders; the lowest leads, others watch one node.

The epoch is a counter bumped by compare-and-set; the breadcrumb names the leader and its proof.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from typing import Any

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import KazooState

from failover.backends.zookeeper.conn import check_granted
from failover.backends.zookeeper.store import (
    PREFIX,
    Breadcrumb,
    Contender,
    ZkNodes,
    as_int,
    dump,
    keeper_deadline_left,
    load,
    pid_alive,
    txn_ok,
)
from failover.errors import BackendUnavailable, DuplicateNode
from failover.interfaces import ClusterFlags, ElectionBackend, FenceReport, LeaderInfo

EPOCH_TRIES = 10
EXPIRY_GRACE = 2.0  # beyond a session timeout, a same-named node must belong to a live session


class ZooKeeperElection(ElectionBackend):
    """Leadership = our contender node is the lowest of the cluster, in our live session."""

    name = "zookeeper"

    def __init__(
        self,
        nodes: ZkNodes,
        lease_seconds: float,
        min_session_seconds: float,
        on_warning: Callable[[str], None] | None = None,
        sweep: Callable[[int], int] | None = None,
    ) -> None:
        self.nodes = nodes
        self.sweep = sweep  # ends older epochs' metadata-DB sessions (see pgfence)
        self.conn = conn = nodes.conn
        self.client = conn.client
        self.node = conn.options.node
        self.cluster = conn.options.cluster
        self.lease = lease_seconds
        self.min_session = min_session_seconds
        self.warn = on_warning or (lambda _: None)
        self.token = secrets.token_hex(8)  # this incarnation: tells our own nodes from others'
        self.host = socket.gethostname()
        self.started_at = time.time()
        self.contender: Contender | None = None
        self.contender_session: int | None = None
        self.given_up: set[str] = set()  # our contender names to delete, never to adopt
        self.leading_session: int | None = None
        self.epoch = 0
        self.crumb_version: int | None = None
        self.previous: Breadcrumb | None = None
        self.bumped_at: tuple[int, float] = (0, 0.0)  # (server ms, monotonic) of the bump
        self.same_name_seen: dict[str, float] = {}
        self.checked_session: float | None = -1.0  # granted timeout last checked
        self.epoch_head: str | None = None  # the queue's head when the epoch was last read
        if conn.start(conn.options.call_timeout):
            try:  # refuse a duplicate node name before the daemon starts
                self._register(self._session())
            except BackendUnavailable:
                pass  # try_acquire registers

    # -- session ----------------------------------------------------------------------------
    def _session(self) -> int:
        """Our live session id (or BackendUnavailable), once its granted timeout is checked."""
        sid = self.conn.session_id()
        if sid is None or self.client.state != KazooState.CONNECTED:
            raise BackendUnavailable(f"not connected to ZooKeeper (state {self.conn.state})")
        if self.conn.negotiated != self.checked_session:
            self.checked_session = self.conn.negotiated
            check_granted(
                self.conn.negotiated, self.conn.options.session_timeout, self.min_session, self.warn
            )
        return sid

    def _drop(self, give_up: bool = False) -> None:
        """Forget our contender and leadership; with `give_up`, delete that node when we can."""
        if give_up and self.contender is not None:
            self.given_up.add(self.contender.name)
        self.contender = self.contender_session = self.leading_session = None
        self.crumb_version = None

    def effective_lease(self) -> float | None:
        return self.conn.negotiated

    # -- contenders -------------------------------------------------------------------------
    def _contenders(self) -> list[Contender]:
        names = self.nodes.children("list contenders", self.conn.base)
        return sorted(filter(None, map(Contender.parse, names)), key=lambda c: c.seq)

    def _register(self, sid: int) -> None:
        """Adopt our contender of session `sid` (a create whose reply was lost) or create one;
        delete our stale ones; refuse or wait for another daemon's node of our name."""
        self.nodes.ensure_layout()
        adopt: Contender | None = None
        for contender in self._contenders():
            if contender.node != self.node:
                continue
            got = self.nodes.read("read contender", self.conn.path(contender.name))
            if got is None:
                continue
            info, stat = load(got[0]), got[1]
            if not isinstance(info, dict) or info.get("token") != self.token:
                self._same_name(contender, info if isinstance(info, dict) else {})
            elif (
                adopt is None and stat.ephemeralOwner == sid and contender.name not in self.given_up
            ):
                adopt = contender
            else:
                self._delete(contender.name)
                self.given_up.discard(contender.name)
        self.contender = adopt or self._create()
        self.contender_session = sid

    def _create(self) -> Contender:
        info = {
            "node": self.node,
            "pid": os.getpid(),
            "host": self.host,
            "started_at": self.started_at,
            "token": self.token,
            "session_timeout": self.conn.negotiated or self.conn.options.session_timeout,
        }
        path = self.nodes.create(
            "register",
            self.conn.path(f"{PREFIX}{self.node}_"),
            dump(info),
            ephemeral=True,
            sequence=True,
        )
        contender = Contender.parse(str(path).rsplit("/", 1)[1])
        assert contender is not None
        return contender

    def _same_name(self, contender: Contender, info: dict[str, Any]) -> None:
        """Another incarnation's node of our name: a live daemon (DuplicateNode) or a dead one
        whose session has yet to expire (BackendUnavailable until it does)."""
        pid, host = info.get("pid"), info.get("host")
        where = f"pid {pid!r} on {host!r}"
        now = time.monotonic()
        first = self.same_name_seen.setdefault(contender.name, now)
        theirs = info.get("session_timeout")
        theirs = min(float(theirs), 300.0) if isinstance(theirs, (int, float)) else 0.0
        limit = max(theirs, self.conn.negotiated or self.conn.options.session_timeout)
        limit += EXPIRY_GRACE
        if (host == self.host and isinstance(pid, int) and pid_alive(pid)) or now - first > limit:
            raise DuplicateNode(
                f"node {self.node!r} already runs in cluster {self.cluster!r} ({where}); "
                "give this daemon another node name"
            )
        raise BackendUnavailable(
            f"a contender named {self.node!r} ({where}) is still registered; waiting up to "
            f"{limit - (now - first):.0f} s for its session to expire"
        )

    def _delete(self, name: str) -> None:
        try:
            self.conn.call("delete", lambda: self.client.delete_async(self.conn.path(name)))
        except NoNodeError:
            pass

    # -- election ---------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        return self._try(None)

    def campaign(self) -> tuple[bool, LeaderInfo | None]:
        """A steady standby's tick is one request, the read of the queue: the watch on its
        predecessor is still pending, and so is the one on the epoch while the head stays."""
        seen: list[list[Contender]] = []
        if self._try(seen):
            return True, None
        line = seen[0] if seen else self._contenders()
        head = line[0].name if line else None
        path = self.conn.path("epoch")
        if head != self.epoch_head:
            self.nodes.watches.forget(path)  # a new leader: its bump may race the watch
            self.epoch_head = head
        # (a new epoch is not worth a tick of its own: it shows at the next one)
        got = self.nodes.watches.read(self.conn, "read the epoch", path, self.lease, wake=False)
        return False, LeaderInfo(line[0].node if line else None, as_int(got[0]) if got else 0)

    def _try(self, seen: list[list[Contender]] | None) -> bool:
        """`try_acquire`; the queue it read goes to `seen`."""
        sid = self._session()
        if self.contender is not None and self.contender_session != sid:
            self._drop()  # the session was lost: its ephemeral node went with it
        if self.contender is None:
            self._register(sid)
        assert self.contender is not None
        line = self._contenders()
        if seen is not None:
            seen.append(line)
        names = [c.name for c in line]
        if self.contender.name not in names:
            self._drop()
            self.conn.wake()  # register again at once
            return False
        mine = names.index(self.contender.name)
        # The leader watches its own node, a standby only its predecessor (no herd), once:
        # the queue just read shows it there, and its watch will tell when it goes.
        watched = self.conn.path(names[mine - 1] if mine else self.contender.name)
        if not self.nodes.watches.exists(self.conn, watched, sid):
            self.conn.wake()  # it vanished meanwhile: look again at once
            return False
        if mine == 0:
            self.leading_session = sid
        return mine == 0

    def renew(self) -> bool:
        if self.leading_session is None or self.contender is None:
            return False
        state = self.client.state
        if state == KazooState.SUSPENDED:
            raise BackendUnavailable(
                "ZooKeeper connection suspended; leadership holds only until the session "
                "could expire"
            )
        sid = self.conn.session_id()
        if state == KazooState.LOST or (sid is not None and sid != self.leading_session):
            self._drop(give_up=True)
            return False
        if sid is None:
            raise BackendUnavailable(f"not connected to ZooKeeper (state {self.conn.state})")
        if not self._prove(reclaim=True):
            self._drop(give_up=True)
            return False
        if self.client.state != KazooState.CONNECTED:
            raise BackendUnavailable("ZooKeeper connection suspended during the renew")
        return True

    def _prove(self, reclaim: bool) -> bool:
        """One atomic proof: our contender exists and the breadcrumb is still ours (its write
        also records, as its mtime, when this proof happened on the server)."""
        assert self.contender is not None
        own = self.conn.path(self.contender.name)
        version = self.crumb_version

        def txn() -> Any:
            t = self.client.transaction()
            t.check(own, -1)
            if version is not None:
                t.set_data(self.conn.path("leader"), self._crumb(self.epoch), version=version)
            return t.commit_async()

        results = self.conn.call("renew", txn)
        if txn_ok(results):
            if version is not None:
                self.crumb_version = results[1].version
            return True
        if isinstance(results[0], NoNodeError) or not reclaim:
            return False
        # The breadcrumb moved: our own write whose reply was lost, or a newer leader's.
        got = self.nodes.read("read the breadcrumb", self.conn.path("leader"))
        info = load(got[0]) if got else {}
        if not got or not isinstance(info, dict) or info.get("token") != self.token:
            return False
        if info.get("epoch") != self.epoch or info.get("released"):
            return False
        self.crumb_version = got[1].version
        return self._prove(reclaim=False)  # prove afresh: that write may be older than now

    def _crumb(self, epoch: int, released: bool = False, by_keeper: bool = False) -> bytes:
        granted = self.conn.negotiated
        bound = min(self.lease, granted) if granted else self.lease
        info = {
            "node": self.node,
            "epoch": epoch,
            "token": self.token,
            "lease_ms": int(bound * 1000),
            "released": released,
            "host": self.host,
            "pid": os.getpid(),
            "before": asdict(self.previous) if self.previous else None,
        }
        if by_keeper:
            info["released_by"] = "keeper"
        return dump(info)

    def keeper_session(self) -> str | None:
        """Our session for the child's keeper: once this daemon died and the tree is gone, it
        marks the breadcrumb released (while our contender exists) and closes the session
        (keeper/zksession.py). While we lead the session cannot change: renew would give
        leadership up."""
        if self.leading_session is None or self.contender is None:
            return None
        released = self._crumb(self.epoch, released=True, by_keeper=True)
        ticket = self.conn.ticket(self.leading_session, self.contender.name, released)
        return ticket.line() if ticket else None

    def _txn(self, own: str, writes: list[tuple[str, bytes, int]]) -> Any:
        """Check that our contender exists, then versioned sets: all or nothing."""
        t = self.client.transaction()
        t.check(own, -1)
        for path, data, version in writes:
            t.set_data(path, data, version=version)
        return t.commit_async()

    def bump_epoch(self) -> int:
        if self.leading_session is None or self.contender is None:
            raise BackendUnavailable("not the leader: cannot take an epoch")
        own = self.conn.path(self.contender.name)
        for _ in range(EPOCH_TRIES):
            epoch_data, epoch_stat = self._read_layout("epoch")
            crumb_data, crumb_stat = self._read_layout("leader")
            epoch = as_int(epoch_data) + 1
            self.previous = self._previous(crumb_data, crumb_stat.mtime)
            writes = [
                (self.conn.path("epoch"), str(epoch).encode(), epoch_stat.version),
                (self.conn.path("leader"), self._crumb(epoch), crumb_stat.version),
            ]
            results = self.conn.call("take the epoch", partial(self._txn, own, writes))
            if txn_ok(results):
                self.nodes.watches.forget(self.conn.path("epoch"))  # what we kept is older
                self.epoch, self.crumb_version = epoch, results[2].version
                self.bumped_at = (results[2].mtime, time.monotonic())
                return epoch
            if isinstance(results[0], NoNodeError):
                self._drop()
                raise BackendUnavailable("lost leadership while taking the epoch")
        raise BackendUnavailable("the epoch kept changing while taking it; will retry")

    def _previous(self, data: bytes, mtime: int) -> Breadcrumb | None:
        """The leader before us: the breadcrumb, or what our own unreleased one recorded (a
        bump of ours whose reply was lost)."""
        info = load(data)
        crumb = Breadcrumb.parse(info, mtime)
        if crumb is None and (data or b"").strip() not in (b"", b"{}"):  # overwritten: assume one
            return Breadcrumb("an unreadable breadcrumb", 0, "", 0, False, mtime)
        if crumb is not None and crumb.token == self.token and not crumb.released:
            before = info.get("before")
            return Breadcrumb.parse(before, 0) if isinstance(before, dict) else None
        return crumb

    def _read_layout(self, name: str) -> tuple[bytes, Any]:
        got = self.nodes.read(f"read {name}", self.conn.path(name))
        if got is None:
            self.nodes.layout_ready = False
            self.nodes.ensure_layout()
            got = self.nodes.read(f"read {name}", self.conn.path(name))
        if got is None:
            raise BackendUnavailable(f"ZooKeeper node {self.conn.path(name)} keeps vanishing")
        return got

    def fence(self, epoch: int, force: bool, sweep: bool = True) -> FenceReport:
        """Wait until the previous leader's keeper deadline has surely passed unless it released
        (its child proven gone); then, with a metadata DB, end older epochs' sessions there."""
        report = self._fence_zk()
        if report.pending or self.sweep is None:
            return report
        try:
            if not sweep:  # the DB failed or was slow in this tick: not waited on again
                raise BackendUnavailable("the metadata DB failed or was slow in this tick")
            ended = self.sweep(epoch)
        except BackendUnavailable as err:
            # The old tree is dead by its keeper deadline: start, but say what was not done.
            text = f"older epochs' metadata DB sessions not checked: {err}"
            self.warn(text)
            return replace(report, detail=f"{report.detail}; {text}")
        if not ended:
            return report
        detail = f"{report.detail}; terminated {ended} older session(s) in the metadata DB"
        return replace(report, terminated=ended, detail=detail)

    def _fence_zk(self) -> FenceReport:
        prev = self.previous
        if prev is None:
            return FenceReport(pending=0, detail="no earlier leader on record")
        who = f"{prev.node} of epoch {prev.epoch}"
        if prev.released and prev.released_by == "keeper":
            # Written by its keeper only after its daemon died and its tree was proven gone.
            return FenceReport(pending=0, detail=f"{who} ended; its keeper saw its tree gone")
        if prev.released:
            return FenceReport(pending=0, detail=f"{who} released after its child exited")
        server_now = self.bumped_at[0] + int((time.monotonic() - self.bumped_at[1]) * 1000)
        left = keeper_deadline_left(prev, server_now, self.lease)
        if left <= 0:
            return FenceReport(
                pending=0, detail=f"{who} ended unreleased; its keeper deadline passed"
            )
        return FenceReport(
            pending=1,
            wait_seconds=left,
            detail=f"{who} ended unreleased {left:.1f} s before its keeper deadline",
        )

    def release(self) -> None:
        contender, version = self.contender, self.crumb_version
        leading = self.leading_session is not None
        self._drop(give_up=True)  # if the delete fails, `tidy()` or `_register` retries it
        if contender is None:
            return
        own = self.conn.path(contender.name)
        if leading and version is not None:
            crumb = self._crumb(self.epoch, released=True)

            def txn() -> Any:
                t = self.client.transaction()
                t.set_data(self.conn.path("leader"), crumb, version=version)
                t.delete(own)
                return t.commit_async()

            if txn_ok(self.conn.call("release", txn)):
                self.given_up.discard(contender.name)
                return
        self._delete(contender.name)
        self.given_up.discard(contender.name)

    def tidy(self) -> None:
        """Delete the contenders we gave up whose deletion failed (a blip within the session
        timeout): in our live session such a node would stay the lowest and block every
        election while we hold back or cool down, never calling `try_acquire`."""
        for name in sorted(self.given_up):
            self._delete(name)  # gone already (NoNode: its session ended) is fine too
            self.given_up.discard(name)

    def member_present(self, node: str) -> bool:
        """It has a contender node: its session lives and it campaigns (a killed daemon's
        node stays until its session expires)."""
        return node == self.node or any(c.node == node for c in self._contenders())

    def leader(self) -> LeaderInfo:
        line = self._contenders()
        got = self.nodes.read("read the epoch", self.conn.path("epoch"))
        return LeaderInfo(line[0].node if line else None, as_int(got[0]) if got else 0)

    def stand_aside(self, flags: ClusterFlags) -> None:
        """Leave the queue while a switchover to a node behind us is pending: standbys only
        hold back, and in a queue the target could otherwise never become the lowest."""
        target, age = flags.switchover_to, flags.switchover_age or 0.0
        if not target or target == self.node or age >= 2 * self.lease:
            return
        if self.contender is None or self.leading_session is not None:
            return
        theirs = [c for c in self._contenders() if c.node == target]
        if theirs and theirs[0].seq > self.contender.seq:
            self.release()

    # -- wake-ups and shutdown --------------------------------------------------------------
    def watch_fd(self) -> int | None:
        return self.conn.wake_rd

    def changed(self) -> bool:
        return self.conn.drain()

    def close(self) -> None:
        if self.leading_session is not None:
            # Not released, so the child is not proven gone: closing the session would free
            # leadership at once. Let it expire instead (after the keeper's deadline).
            self.warn("closing without a release: the ZooKeeper session is left to expire")
        self.conn.close(graceful=self.leading_session is None)
