"""The leader's host cut off from PostgreSQL: a network namespace with a veth pair to the
server, cut with `ip link set down` (no FIN, no RST: packets just vanish).

The leader's keeper must kill its tree by the self-fence deadline although its daemon never
hears from the database again; a standby takes over; on heal the old leader rejoins as a
standby. Samplers: one child tree and one epoch's DB sessions at every 50 ms sample.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, DbSampler, Sampler, wait_until
from ..netns import Host

pytestmark = pytest.mark.chaos
LEASE = 3.0


def test_leader_partitioned_from_postgres(host: Host, pg_factory: Any, tmp_path: Path) -> None:
    server = pg_factory(settings={"listen_addresses": f"127.0.0.1,{host.host_ip}"})
    with open(server.data_dir / "pg_hba.conf", "a") as f:
        f.write("host all all 10.231.0.0/16 trust\n")
    server.execute("SELECT pg_reload_conf()")
    dsn = server.create_database("partition").replace("127.0.0.1", host.host_ip)
    c = Cluster(
        tmp_path,
        nodes=("cut", "free"),
        settings={"backend": "postgres", "postgres.dsn": dsn, "lease_seconds": str(LEASE)},
        probe_args=("--fork", "1", "--escape", "session", "--pg-dsn", dsn),
    )
    admin_dsn = dsn.replace(host.host_ip, "127.0.0.1")
    try:
        with Sampler(c.tag) as sampler, DbSampler(admin_dsn, c.cluster) as db:
            real_argv = c.argv
            c.argv = lambda node: (host.exec_prefix() if node == "cut" else []) + real_argv(node)  # type: ignore[method-assign]
            c.start("cut")
            leader, epoch = c.leader_child(timeout=30)
            assert leader == "cut"
            c.start("free")
            time.sleep(1.0)  # the standby is warm and following
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
            wait_until(
                lambda: any("following" in s or "lost" in s for s in c.sentences("cut")[-5:]),
                6 * LEASE,
                "the healed node to rejoin as a standby",
            )
            time.sleep(1.0)
            assert c.leader_child() == (new_leader, new_epoch)
        sampler.assert_clean()
        db.assert_clean()
        assert died <= LEASE + 1.0, died  # the keeper's deadline: last renew + lease - margin
        print(f"\npartition: old tree dead after {died:.2f} s, takeover after {took:.2f} s")
    finally:
        c.stop_all()
