"""The ZooKeeper election backend and member store driven directly against a real server.

`ZkProxy` (also used by the cluster tests) sits between a client and the server: it reads
each session's id and password from the ConnectResponse, and can cut the link.
"""

from __future__ import annotations

import re
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.protocol.states import KazooState

from failover.backends import open_backend, open_store
from failover.backends.zookeeper.conn import negotiated_session_timeout
from failover.backends.zookeeper.election import ZooKeeperElection
from failover.backends.zookeeper.store import dump
from failover.config import Settings, ZooKeeperSettings, validate
from failover.errors import BackendUnavailable, ConfigError, DuplicateNode
from failover.interfaces import (
    ClusterFlags,
    ElectionBackend,
    LeaderInfo,
    MemberState,
    MemberStore,
)

from ..harness import wait_until

pytestmark = pytest.mark.integration


class ZkProxy:
    """TCP proxy to one ZooKeeper server; `sessions` lists (session id, password, timeout ms)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sessions: list[tuple[int, bytes, int]] = []
        self.links: list[socket.socket] = []
        self.refuse = False  # close new and current connections at once (a cut with RST/FIN)
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def hosts(self, chroot: str = "") -> str:
        return f"127.0.0.1:{self.port}{chroot}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.links += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        head = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_server and len(head) < 40:
                    head += data
                    if len(head) >= 40:  # len, protocol, timeout, session id, passwd (16)
                        _, _, timeout, sid, size = struct.unpack(">iiiqi", head[:24])
                        self.sessions.append((sid, head[24 : 24 + size], timeout))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.refuse = True
        with self.lock:
            links, self.links = self.links, []
        for s in links:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def heal(self) -> None:
        self.refuse = False

    def close(self) -> None:
        self.listener.close()
        self.cut()


def expire_session(hosts: str, session: tuple[int, bytes, int]) -> None:
    """Close another client's session with its id and password (an injected expiry)."""
    twin = KazooClient(hosts=hosts, client_id=(session[0], session[1]), timeout=session[2] / 1000)
    twin.start(timeout=10)
    twin.stop()
    twin.close()


def zk_settings(hosts: str, node: str, **zk: Any) -> Settings:
    top = ("lease_seconds", "loop_seconds", "backend_timeout_seconds", "self_fence_margin_seconds")
    timing = {k: zk.pop(k) for k in top if k in zk}
    values: dict[str, Any] = {
        "lease_seconds": 3.0,
        "loop_seconds": 0.5,
        "backend_timeout_seconds": 0.5,
        "self_fence_margin_seconds": 0.5,
        **timing,
    }
    return validate(
        Settings(
            cluster="t",
            node=node,
            backend="zookeeper",
            zookeeper=ZooKeeperSettings(hosts=hosts, **zk),
            **values,
        )
    )


Opener = Callable[..., tuple[ZooKeeperElection, MemberStore]]


@pytest.fixture
def zk_open(zk_chroot: str) -> Iterator[Opener]:
    opened: list[tuple[ElectionBackend, MemberStore]] = []

    def make(node: str, hosts: str = zk_chroot, **zk: Any) -> tuple[ZooKeeperElection, MemberStore]:
        parts = open_backend(zk_settings(hosts, node, **zk))
        election, store = parts.election, parts.members
        assert isinstance(election, ZooKeeperElection)
        opened.append((election, store))
        return election, store

    yield make
    for election, store in opened:
        store.close()
        election.close()
        election.client.stop()  # also when close() left the session to expire
        election.client.close()


def admin(hosts: str, auth: tuple[str, str] | None = None) -> KazooClient:
    client = KazooClient(
        hosts=hosts, timeout=10, auth_data=[("digest", ":".join(auth))] if auth else None
    )
    client.start(timeout=10)
    return client


def contenders(hosts: str) -> list[str]:
    client = admin(hosts)
    try:
        names = [n for n in client.get_children("/failover/t") if n.startswith("c_")]
        return sorted(names, key=lambda n: n[-10:])  # queue order: by sequence
    finally:
        client.stop()
        client.close()


def lead(e: ZooKeeperElection) -> int:
    assert e.try_acquire()
    epoch = e.bump_epoch()
    assert e.fence(epoch, False).pending == 0
    assert e.renew()
    return epoch


@dataclass
class Proxied:
    """a leads through a proxy the test can cut; b reaches the server directly."""

    proxy: ZkProxy
    chroot: str
    a: ZooKeeperElection
    b: ZooKeeperElection

    def suspend_a(self) -> None:
        self.proxy.cut()
        wait_until(lambda: self.a.client.state == KazooState.SUSPENDED, 5, "SUSPENDED")


@pytest.fixture
def proxied(zk_open: Opener, zk_server: Any) -> Iterator[Proxied]:
    proxy = ZkProxy(zk_server.hosts)
    chroot = f"/t-{uuid.uuid4().hex}"
    try:
        a, _ = zk_open("a", proxy.hosts(chroot))
        b, _ = zk_open("b", zk_server.hosts + chroot)
        lead(a)
        yield Proxied(proxy, chroot, a, b)
    finally:
        proxy.close()


# --------------------------------------------------------------------------- election


def test_queue_epoch_watch_and_release(zk_open: Opener, zk_chroot: str) -> None:
    a, _ = zk_open("a")
    b, _ = zk_open("b")
    c, _ = zk_open("c")
    assert lead(a) == 1
    assert not b.try_acquire() and not c.try_acquire()
    assert b.leader().node == "a" and c.leader().epoch == 1
    names = contenders(zk_chroot)
    assert [n[:4] for n in names] == ["c_a_", "c_b_", "c_c_"]
    b.changed(), c.changed()
    a.release()
    # Only the direct successor of the released node is woken (no herd).
    assert select.select([b.watch_fd()], [], [], 2)[0] and b.changed()
    assert not select.select([c.watch_fd()], [], [], 0.3)[0]
    assert b.try_acquire() and b.bump_epoch() == 2
    assert b.fence(2, False).detail == "a of epoch 1 released after its child exited"
    assert b.renew() and not a.renew()
    assert not a.try_acquire() and a.leader() == b.leader()
    assert contenders(zk_chroot)[-1].startswith("c_a_")  # a queued again, at the back


def counted_calls(e: ZooKeeperElection) -> list[str]:
    """From now on, every request `e`'s connection makes (its member store's too) is listed."""
    sent: list[str] = []
    call = e.conn.call

    def counted(what: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(what)
        return call(what, *args, **kwargs)

    e.conn.call = counted  # type: ignore[method-assign]
    return sent


def standby_tick(e: ZooKeeperElection, store: MemberStore) -> tuple[bool, LeaderInfo | None]:
    """What a steady standby's tick asks of ZooKeeper (failover/standby.py, controller.py)."""
    flags = store.flags()
    result = e.campaign()
    store.heartbeat(MemberState(e.node, "standby", 0, "stopped", None, "v", str(flags)))
    return result


def test_a_steady_standby_tick_is_two_requests(zk_open: Opener) -> None:
    """The queue and the heartbeat: the watches on its predecessor, the epoch and the flags
    are set once and read again only when they fire (bench/scale.py: five a tick before)."""
    a, _ = zk_open("a")
    b, store_b = zk_open("b")
    assert lead(a) == 1
    assert standby_tick(b, store_b) == (False, LeaderInfo("a", 1))  # sets the watches
    sent = counted_calls(b)
    for _ in range(5):
        assert standby_tick(b, store_b) == (False, LeaderInfo("a", 1))
    assert sent == ["list contenders", "heartbeat"] * 5, sent
    # A new epoch is seen at the next tick: its watch fired (without a wake-up of its own).
    b.changed()
    a.bump_epoch()
    epoch = b.conn.path("epoch")
    wait_until(lambda: epoch not in b.nodes.watches.cache, 2, "the epoch's watch to fire")
    assert not b.changed()
    assert standby_tick(b, store_b) == (False, LeaderInfo("a", 2))
    # The leader goes: the watch on the predecessor wakes b, which wins at once.
    b.changed()
    a.release()
    assert select.select([b.watch_fd()], [], [], 2)[0] and b.changed()
    assert b.campaign() == (True, None)
    assert b.bump_epoch() == 3


def test_a_lost_connection_sets_the_watches_again(
    zk_open: Opener, zk_server: Any, zk_chroot: str
) -> None:
    """kazoo drops every watch when the connection breaks, even if the session survives: the
    next tick asks for each again (the standby would otherwise miss its predecessor's end)."""
    proxy = ZkProxy(zk_server.hosts)
    try:
        a, _ = zk_open("a")
        b, store_b = zk_open("b", proxy.hosts(zk_chroot[zk_chroot.index("/") :]))
        assert lead(a) == 1
        assert standby_tick(b, store_b) == (False, LeaderInfo("a", 1))
        sid, states = b.conn.session_id(), []
        b.client.add_listener(states.append)
        assert b.nodes.watches.pending
        proxy.cut()
        proxy.heal()
        wait_until(lambda: states[-2:] == [KazooState.SUSPENDED, KazooState.CONNECTED], 10, "")
        wait_until(lambda: not b.nodes.watches.pending, 5, "kazoo to drop the watches")
        assert b.conn.session_id() == sid
        sent = counted_calls(b)
        assert standby_tick(b, store_b) == (False, LeaderInfo("a", 1))
        expected = ["read flags", "list contenders", "watch", "read the epoch", "heartbeat"]
        assert sent == expected, sent
        b.changed()
        a.release()
        assert select.select([b.watch_fd()], [], [], 2)[0]
        assert b.campaign() == (True, None)
    finally:
        proxy.close()


def test_a_lost_watch_costs_at_most_a_tick(zk_open: Opener, zk_chroot: str) -> None:
    """Should a watch never fire, the heartbeat's check of the kept reads' versions (in the
    same request) finds them stale, and the next tick reads them anew."""
    a, _ = zk_open("a")
    b, store_b = zk_open("b")
    lead(a)
    standby_tick(b, store_b)
    standby_tick(b, store_b)
    watchers = b.client._data_watchers  # by path, chroot included
    lost = [path for path in watchers if path.endswith(b.conn.path("flags"))]
    assert len(lost) == 1
    watchers.pop(lost[0])  # kazoo forgets it: the event reaches nobody
    status = open_store(zk_settings(zk_chroot, "x"))
    try:
        status.set_paused(True)
        time.sleep(0.3)
        sent = counted_calls(b)
        assert not store_b.flags().paused  # what it kept
        standby_tick(b, store_b)  # its heartbeat's check fails: read anew next tick
        assert store_b.flags().paused
        assert sent == ["list contenders", "heartbeat", "heartbeat", "read flags"], sent
    finally:
        status.close()


def test_a_flags_change_wakes_a_standby(zk_open: Opener, zk_chroot: str) -> None:
    """The flags are read again only when their watch fired: a pause or a switchover request
    wakes the standby's loop at once and shows at its next tick."""
    a, _ = zk_open("a")
    b, store_b = zk_open("b")
    lead(a)
    assert store_b.flags() == ClusterFlags()
    sent = counted_calls(b)
    status = open_store(zk_settings(zk_chroot, "x"))
    try:
        changes: list[tuple[Callable[[], None], Callable[[ClusterFlags], bool]]] = [
            (lambda: status.set_paused(True), lambda f: f.paused),
            (lambda: status.request_switchover("a", ""), lambda f: f.switchover_to == ""),
            (lambda: status.set_paused(False), lambda f: not f.paused),
        ]
        for change, seen in changes:
            standby_tick(b, store_b)  # (its heartbeat anchors the server clock for the age)
            b.changed()
            sent.clear()
            store_b.flags(), store_b.flags()
            assert sent == []  # no request while nothing changed
            change()
            started = time.monotonic()
            assert select.select([b.watch_fd()], [], [], 2)[0] and b.changed()
            assert time.monotonic() - started < 1.0
            assert seen(store_b.flags()) and sent == ["read flags"], sent
    finally:
        status.close()


def test_negotiated_session_timeout_is_captured(
    zk_open: Opener, zk_server: Any, zk_chroot: str
) -> None:
    a, _ = zk_open("a")
    assert a.effective_lease() == 3.0
    settings = zk_settings(
        zk_chroot, "x", lease_seconds=30.0, loop_seconds=1.0, backend_timeout_seconds=2.0
    )
    assert negotiated_session_timeout(settings) == 4.0  # clamped to 20 x tickTime (200 ms)
    cons = zk_server.four_letter_word("cons")
    sid = f"sid=0x{a.conn.session_id():x},"
    line = next(line for line in cons.splitlines() if sid in line)
    assert re.search(r"[(,]to=(\d+)", line).group(1) == "3000"


def test_granted_session_too_short_to_lead_is_refused(zk_server: Any, zk_open: Opener) -> None:
    # lease 10 asks for 10 s; the server grants 4 s <= loop 1 + backend 2 + margin 1.
    hosts = zk_server.hosts
    with pytest.raises(
        ConfigError, match=r"zookeeper.session_timeout_seconds: the servers granted a 4 s"
    ):
        zk_open(
            "a",
            hosts,
            lease_seconds=10.0,
            loop_seconds=1.0,
            backend_timeout_seconds=2.0,
            self_fence_margin_seconds=1.0,
        )


def test_duplicate_node_name_is_refused(zk_open: Opener) -> None:
    zk_open("a")
    with pytest.raises(
        DuplicateNode, match=r"node 'a' already runs in cluster 't' \(pid \d+ on .+\); give"
    ):
        zk_open("a")


def test_dead_incarnations_node_is_awaited_then_a_live_one_refused(
    zk_open: Opener, zk_chroot: str
) -> None:
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # never runs
    info = {"node": "a", "pid": dead_pid, "host": socket.gethostname(), "token": "x"}
    other = admin(zk_chroot)
    try:
        other.ensure_path("/failover/t")
        other.create("/failover/t/c_a_", dump(info), ephemeral=True, sequence=True)
        a, _ = zk_open("a")  # not refused: that node may be a crashed daemon's, awaiting expiry
        with pytest.raises(BackendUnavailable, match=r"still registered; waiting up to \d+ s"):
            a.try_acquire()
        name = next(iter(a.same_name_seen))
        a.same_name_seen[name] -= 10  # it outlived any session timeout: a live daemon
        with pytest.raises(DuplicateNode, match="already runs in cluster 't'"):
            a.try_acquire()
        a.same_name_seen.clear()
    finally:
        other.stop()  # the session closes: the node vanishes
        other.close()
    assert lead(a) == 1


def test_orphaned_contenders_of_this_incarnation_are_cleaned(
    zk_open: Opener, zk_chroot: str
) -> None:
    b, _ = zk_open("b")
    a, _ = zk_open("a")
    assert lead(b) == 1
    # Creates whose replies were lost (kazoo #732): nodes with our token in our session.
    a.release()
    for _ in range(2):
        a.client.create("/failover/t/c_a_", dump({"token": a.token}), ephemeral=True, sequence=True)
    assert sum(n.startswith("c_a_") for n in contenders(zk_chroot)) == 2
    assert not a.try_acquire()
    assert sum(n.startswith("c_a_") for n in contenders(zk_chroot)) == 1


def test_epoch_is_compare_and_set(zk_open: Opener, zk_chroot: str) -> None:
    a, _ = zk_open("a")
    client = admin(zk_chroot)
    try:
        client.set("/failover/t/epoch", b"41")
        assert lead(a) == 42
        assert client.get("/failover/t/epoch")[0] == b"42"
        crumb = client.get("/failover/t/leader")[0]
        assert b'"node":"a"' in crumb and b'"epoch":42' in crumb
        # Our contender vanishes (an admin deleted it): no epoch, no renew.
        client.delete(f"/failover/t/{a.contender.name}")
        assert not a.renew()
        assert a.try_acquire()
        with_node = a.contender.name
        client.delete(f"/failover/t/{with_node}")
        with pytest.raises(BackendUnavailable, match="lost leadership while taking the epoch"):
            a.bump_epoch()
    finally:
        client.stop()
        client.close()


def test_injected_expiry_loses_leadership_and_the_successor_waits(
    proxied: Proxied, zk_server: Any
) -> None:
    proxy, chroot, a, b = proxied.proxy, proxied.chroot, proxied.a, proxied.b
    assert not b.try_acquire()
    proved = time.monotonic()
    assert a.renew()
    expire_session(zk_server.hosts, proxy.sessions[-1])
    wait_until(b.try_acquire, 5, "b to become the lowest contender")
    b.bump_epoch()
    report = b.fence(2, False)
    # a's node vanished early: its keeper may run until its last proof + 3 s.
    assert report.pending == 1 and 0 < report.wait_seconds <= 3.0, report
    assert "a of epoch 1 ended unreleased" in report.detail
    wait_until(
        lambda: a.client.state == KazooState.CONNECTED and a.conn.session_id(),
        10,
        "a reconnected",
    )
    assert not a.renew()  # LOST: a new session, the old contender is gone
    wait_until(lambda: b.fence(2, True).pending == 0, 4, "a's keeper deadline to pass")
    assert time.monotonic() - proved >= 2.4
    assert not a.try_acquire()  # registered from scratch, behind b
    assert len([n for n in contenders(zk_server.hosts + chroot) if n.startswith("c_a_")]) == 1


def test_suspended_is_not_leadership_and_a_surviving_session_keeps_it(proxied: Proxied) -> None:
    proxy, a, b = proxied.proxy, proxied.a, proxied.b
    proxied.suspend_a()
    with pytest.raises(BackendUnavailable, match="suspended"):
        a.renew()
    assert not b.try_acquire()
    proxy.heal()
    wait_until(lambda: a.client.state == KazooState.CONNECTED, 5, "reconnected")
    assert a.renew() and a.leader().node == "a"  # same session, still the lowest


def test_a_release_failed_in_a_blip_is_finished_by_tidy_without_campaigning(
    proxied: Proxied, zk_server: Any
) -> None:
    proxy, chroot, a, b = proxied.proxy, proxied.chroot, proxied.a, proxied.b
    sid = a.conn.session_id()
    proxied.suspend_a()
    with pytest.raises(BackendUnavailable):
        a.release()
    assert a.contender is None and len(a.given_up) == 1
    proxy.heal()
    wait_until(lambda: a.client.state == KazooState.CONNECTED, 5, "reconnected")
    assert a.conn.session_id() == sid  # the same session: its node is still the lowest
    assert not b.try_acquire() and b.leader().node == "a"
    a.tidy()  # what a standby tick that does not campaign does
    assert not a.given_up
    wait_until(b.try_acquire, 2, "b to become the lowest contender")
    assert [n[:4] for n in contenders(zk_server.hosts + chroot)] == ["c_b_"]
    a.tidy()  # nothing left to do: no call


def test_close_without_release_does_not_hand_over(zk_open: Opener) -> None:
    a, _ = zk_open("a")
    b, _ = zk_open("b")
    lead(a)
    a.close()  # leading, not released: no closeSession (the child is not proven gone)
    assert a.conn.closed and a.client.connected
    time.sleep(0.5)
    assert not b.try_acquire() and b.leader().node == "a"
    a.client.stop()  # the process exit of a daemon (here: a clean stop, for the test)
    wait_until(b.try_acquire, 5, "b to lead")
    b.bump_epoch()
    b.release()
    b.close()  # released: the session closes at once
    assert not b.client.connected


# --------------------------------------------------------------------------- ACL


def test_digest_acl_keeps_others_from_deleting_the_leader(
    zk_open: Opener, zk_chroot: str, tmp_path: Path
) -> None:
    auth = tmp_path / "zk-auth"
    auth.write_text("failover:s3cret-pw\n")
    auth.chmod(0o600)
    a, store = zk_open("a", auth_file=str(auth))
    lead(a)
    store.heartbeat(MemberState("a", "leader", 1, "running", 42, "v"))
    path = f"/failover/t/{a.contender.name}"
    for creds in (None, ("failover", "wrong")):
        other = admin(zk_chroot, creds)
        try:
            with pytest.raises(NoAuthError):
                other.delete(path)
            with pytest.raises(NoAuthError):
                other.get("/failover/t/members/a")
            with pytest.raises(NoAuthError):
                other.set("/failover/t/epoch", b"99")
        finally:
            other.stop()
            other.close()
    assert a.renew()
    b, _ = zk_open("b", auth_file=str(auth))  # same credentials: joins
    assert not b.try_acquire() and b.leader().node == "a"


# --------------------------------------------------------------------------- members


def test_members_flags_and_switchover_in_zookeeper(zk_open: Opener, zk_chroot: str) -> None:
    a, store_a = zk_open("a")
    b, store_b = zk_open("b")
    c, store_c = zk_open("c")
    lead(a)
    for node, store in (("a", store_a), ("b", store_b), ("c", store_c)):
        store.heartbeat(
            MemberState(node, "leader" if node == "a" else "standby", 1, "running", None, "v", "hi")
        )
    status = open_store(zk_settings(zk_chroot, "x"))
    try:
        time.sleep(0.3)
        rows = {m.node: m for m in status.members()}
        assert set(rows) == {"a", "b", "c"} and rows["a"].role == "leader"
        assert all(0.25 <= m.heartbeat_age < 2 for m in rows.values())
        status.set_paused(True)
        assert store_b.flags().paused
        status.request_switchover("a", "c")
        # b sees it once its flags watch fired; b is ahead of c in the queue: it leaves it.
        flags = wait_until(
            lambda: (f := store_b.flags()).switchover_to is not None and f, 2, "the request"
        )
        assert (flags.switchover_to, flags.switchover_from) == ("c", "a")
        assert flags.switchover_age is not None and flags.switchover_age < 1
        assert b.contender is None
        assert [n[:4] for n in contenders(zk_chroot)] == ["c_a_", "c_c_"]
        a.release()
        assert c.try_acquire()
        store_c.clear_switchover()
        status.set_paused(False)
        assert store_a.flags() == ClusterFlags()
        store_c.begin_term(2, "c", "elected")
        store_c.end_term(2, "shutdown")
        assert store_a.history()[0]["end_reason"] == "shutdown"
    finally:
        status.close()


def test_garbage_in_our_nodes_is_survived(zk_open: Opener, zk_chroot: str) -> None:
    a, store = zk_open("a")
    client = admin(zk_chroot)
    try:
        client.set("/failover/t/leader", b"not json")
        client.set("/failover/t/flags", b'{"switchover_to": 5, "paused": "yes"}')
        client.create("/failover/t/members/zz", b"[1, 2]")
        client.create("/failover/t/members/yy", b'{"epoch": "x", "child_pid": "y"}')
        client.create("/failover/t/c_x_00000x0001", b"")
    finally:
        client.stop()
        client.close()
    assert a.try_acquire() and a.bump_epoch() == 1
    report = a.fence(1, False)  # an overwritten breadcrumb: wait out one lease to be safe
    assert report.pending == 1 and 0 < report.wait_seconds <= 3.0
    assert "unreadable breadcrumb" in report.detail
    assert store.flags() == ClusterFlags()
    rows = {m.node: m for m in store.members()}
    assert set(rows) == {"yy"} and rows["yy"].epoch == 0 and rows["yy"].child_pid is None
