"""ZooKeeper crash takeover: the killed daemon's keeper ends its session once the tree is gone,
so the successor starts at once (plain: test_zookeeper_cluster; TLS: test_zookeeper_tls).

Real daemons on the real server; the sampler checks the old tree is gone before the new one.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path

import pytest

from ..harness import Cluster, Sampler, read_records
from .test_zookeeper_backend import admin
from .test_zookeeper_cluster import LEASE, start_time, wait_for, zk_cluster

pytestmark = pytest.mark.integration


def zk_password(session_id: int) -> bytes:
    """The password ZooKeeper gives session `session_id` (ZooKeeperServer.generatePasswd:
    java.util.Random(id ^ 0xB3415C00).nextBytes(16)): so the test knows what must not leak."""
    mask = (1 << 48) - 1
    seed = (session_id ^ 0xB3415C00 ^ 0x5DEECE66D) & mask
    out = bytearray()
    while len(out) < 16:
        seed = (seed * 0x5DEECE66D + 0xB) & mask
        word = seed >> 16
        for _ in range(min(4, 16 - len(out))):
            out.append(word & 0xFF)
            word >>= 8
    return bytes(out)


def test_zk_password_is_what_the_server_hands_out(zk_server: object) -> None:
    client = admin(zk_server.hosts)  # type: ignore[attr-defined]
    try:
        session_id, password = client.client_id
        assert zk_password(session_id) == password
    finally:
        client.stop()
        client.close()


def leader_session(hosts: str, node: str, auth: tuple[str, str] | None = None) -> int:
    """The session id owning `node`'s contender node (read by the test, not from any log)."""
    client = admin(hosts, auth)
    try:
        names = [n for n in client.get_children("/failover/t") if n.startswith(f"c_{node}_")]
        stat = client.exists(f"/failover/t/{names[0]}")
        return int(stat.ephemeralOwner)
    finally:
        client.stop()
        client.close()


def secret_forms(session_id: int, extra: tuple[str, ...] = ()) -> list[str]:
    password = zk_password(session_id)
    return [
        password.hex(),
        base64.b64encode(password).decode(),
        repr(password)[2:-1],
        f"{session_id:x}",
        str(session_id),
        *extra,
    ]


def proc_text(pid: int) -> str:
    parts = []
    for name in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                parts.append(f.read().decode("utf-8", "replace"))
        except OSError:
            pass
    return "\n".join(parts)


def keeper_pid(c: Cluster, node: str) -> int:
    """The keeper of `node`'s child: the parent of its probe."""
    mine = [r for r in read_records(c.records) if r["word"] == "start" and r["node"] == node]
    with open(f"/proc/{mine[-1]['pid']}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def kill9_takeover(c: Cluster, hosts: str, auth: tuple[str, str] | None = None) -> float:
    """Kill -9 the leader daemon; the successor's start, seconds after the kill. Checks that
    no session secret is in any argv, environ or log."""
    with Sampler(c.tag) as sampler:
        c.start_all()
        leader, epoch = c.leader_child()
        session = leader_session(hosts, leader, auth)
        secrets = secret_forms(session, (auth[1],) if auth else ())
        keeper = keeper_pid(c, leader)
        for pid in (keeper, c.procs[leader].pid, *c.live_children()):
            assert not [s for s in secrets if s in proc_text(pid)], pid
        killed_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        c.signal(leader, signal.SIGKILL)
        new_leader, new_epoch = c.leader_child(exclude=[leader], timeout=15)
        took = start_time(c, new_leader, new_epoch) - killed_at
        assert int(new_epoch) > int(epoch)
    sampler.assert_clean()  # zero samples with two trees: the old one was gone first
    fenced = [s for s in c.sentences(new_leader) if "fenced older epochs" in s]
    assert fenced and "its keeper saw its tree gone" in fenced[0], c.dump_logs()
    wait_for(c, lambda: "closed the session" in (c.root / f"{leader}.log").read_text(), 5, "log")
    for log in c.root.glob("*.log"):
        text = log.read_text(errors="replace")
        assert not [s for s in secrets if s in text], log
    return took


def test_kill9_with_digest_acl_is_taken_over_at_once(tmp_path: Path, zk_chroot: str) -> None:
    auth_file = tmp_path / "zk-auth"
    auth_file.write_text("failover:s3cret-pw-18\n")
    auth_file.chmod(0o600)
    c = zk_cluster(tmp_path, zk_chroot, **{"zookeeper.auth_file": str(auth_file)})
    try:
        took = kill9_takeover(c, zk_chroot, ("failover", "s3cret-pw-18"))
    finally:
        c.stop_all()
    print(f"\nkill -9 takeover with a digest ACL: {took:.3f} s")
    assert took < 1.0, c.dump_logs()


def test_daemon_and_keeper_both_killed_keep_the_session_timeout(
    tmp_path: Path, zk_chroot: str
) -> None:
    """Nobody is left to end the session: it expires, the successor waits the old keeper's
    deadline, as before (the child died with its keeper: PDEATHSIG)."""
    c = Cluster(tmp_path, settings={"backend": "zookeeper", "zookeeper.hosts": zk_chroot})
    try:
        with Sampler(c.tag) as sampler:
            c.start_all()
            leader, _ = c.leader_child()
            keeper = keeper_pid(c, leader)
            killed_at = time.clock_gettime(time.CLOCK_BOOTTIME)
            os.kill(keeper, signal.SIGKILL)
            c.signal(leader, signal.SIGKILL)
            new_leader, new_epoch = c.leader_child(exclude=[leader], timeout=15)
            took = start_time(c, new_leader, new_epoch) - killed_at
        sampler.assert_clean()
        fenced = [s for s in c.sentences(new_leader) if "fenced older epochs" in s]
        assert fenced and "keeper deadline passed" in fenced[0], fenced
        print(f"\nkill -9 of daemon and keeper: {took:.2f} s (session timeout {LEASE:g} s)")
        assert LEASE - 1.0 < took < LEASE + 1.5, c.dump_logs()
    finally:
        c.stop_all()
