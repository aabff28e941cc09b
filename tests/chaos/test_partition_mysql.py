"""The leader's host cut off from MariaDB (mysql backend): a network namespace with a veth
pair to the server, cut with `ip link set down` (no FIN, no RST: packets just vanish).

The leader's keeper kills its tree by the self-fence deadline; the server drops the silent
lock session after wait_timeout (= lease); a standby takes over once the old keeper's lock
is freed or killed; on heal the old leader rejoins as a standby.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, Sampler, wait_until
from ..integration.test_mysql_cluster import KeeperLockSampler
from ..netns import Host
from ..servers import FAILOVER_PASSWORD, FAILOVER_USER

pytestmark = pytest.mark.chaos
LEASE = 3.0


def test_leader_partitioned_from_mysql(host: Host, my_factory: Any, tmp_path: Path) -> None:
    server = my_factory(settings={"bind_address": f"127.0.0.1,{host.host_ip}"})
    server.create_database("t_partition")
    dsn = server.dsn("t_partition", user=FAILOVER_USER, password=FAILOVER_PASSWORD)
    remote = dsn.replace("127.0.0.1", host.host_ip)
    c = Cluster(
        tmp_path,
        nodes=("cut", "free"),
        settings={"backend": "mysql", "mysql.dsn": remote, "lease_seconds": str(LEASE)},
        probe_args=("--fork", "1", "--escape", "session"),
    )
    try:
        with Sampler(c.tag) as sampler, KeeperLockSampler(server.dsn(), c.cluster) as locks:
            real_argv = c.argv
            c.argv = lambda node: (host.exec_prefix() if node == "cut" else []) + real_argv(node)  # type: ignore[method-assign]
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
            new_leader, new_epoch = c.leader_child(exclude=["cut"], timeout=5 * LEASE)
            took = time.monotonic() - t0
            assert new_leader == "free" and int(new_epoch) > int(epoch)
            host.heal()
            wait_until(
                lambda: any("following" in s or "lost" in s for s in c.sentences("cut")[-5:]),
                6 * LEASE,
                "the healed node to rejoin as a standby",
            )
            time.sleep(1.0)
            assert c.leader_child() == (new_leader, new_epoch)
        sampler.assert_clean()
        locks.assert_clean()
        assert died <= LEASE + 1.0, died
        assert took <= 2 * LEASE + 2.0, (took, c.dump_logs())
        print(f"\npartition: old tree dead after {died:.2f} s, takeover after {took:.2f} s")
    finally:
        c.stop_all()
