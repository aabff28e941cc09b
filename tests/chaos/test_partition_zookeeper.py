"""The leader's host cut off from ZooKeeper (network namespace, veth cut: packets vanish).

kazoo goes SUSPENDED and cannot renew; the keeper kills the tree by last proof + session -
margin; the server expires the session and the next contender leads; on heal the old
leader's session is gone (LOST) and it rejoins as a standby.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, Sampler, wait_until
from ..netns import Forwarder, Host

pytestmark = pytest.mark.chaos
LEASE = 3.0


def test_leader_partitioned_from_zookeeper(host: Host, zk_factory: Any, tmp_path: Path) -> None:
    zk = zk_factory(max_session_timeout_ms=20000)
    forward = Forwarder(host.host_ip, zk.port)
    chroot = f"/partition-{time.monotonic_ns()}"
    c = Cluster(
        tmp_path,
        nodes=("cut", "free"),
        settings={"backend": "zookeeper", "lease_seconds": str(LEASE)},
        probe_args=("--fork", "1", "--escape", "session"),
    )
    real_argv = c.argv

    def argv(node: str) -> list[str]:
        hosts = f"{host.host_ip}:{forward.listen_port}" if node == "cut" else zk.hosts
        c.settings["zookeeper.hosts"] = hosts + chroot
        return (host.exec_prefix() if node == "cut" else []) + real_argv(node)

    c.argv = argv  # type: ignore[method-assign]
    try:
        with Sampler(c.tag) as sampler:
            c.start("cut")
            leader, epoch = c.leader_child(timeout=30)
            assert leader == "cut"
            c.start("free")
            time.sleep(1.0)
            t0 = time.monotonic()
            host.cut()
            wait_until(
                lambda: all(p["node"] != "cut" for p in c.live_children().values()),
                LEASE + 3,
                "the cut-off leader's tree to die by its self-fence deadline",
            )
            died = time.monotonic() - t0
            new_leader, new_epoch = c.leader_child(exclude=["cut"], timeout=4 * LEASE)
            took = time.monotonic() - t0
            assert new_leader == "free" and int(new_epoch) > int(epoch)
            host.heal()
            time.sleep(2 * LEASE)
            assert c.leader_child() == (new_leader, new_epoch)
        sampler.assert_clean()
        assert died <= LEASE + 1.0, died
        print(
            f"\nzookeeper partition: old tree dead after {died:.2f} s, takeover after {took:.2f} s"
        )
    finally:
        c.stop_all()
        forward.close()
