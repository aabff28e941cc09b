"""A ZooKeeper ensemble of three loses one member (nothing changes), then a second (quorum
lost: no child may run anywhere once the self-fence deadline passes), then recovers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ..harness import Cluster, Sampler, wait_until

pytestmark = pytest.mark.chaos
LEASE = 3.0


def test_quorum_loss_and_recovery(zk_factory: Any, tmp_path: Path) -> None:
    ensemble = zk_factory.ensemble(3, max_session_timeout_ms=20000)
    c = Cluster(
        tmp_path,
        nodes=("q1", "q2"),
        settings={
            "backend": "zookeeper",
            "lease_seconds": str(LEASE),
            "zookeeper.hosts": f"{ensemble.hosts}/quorum-{time.monotonic_ns()}",
        },
    )
    try:
        with Sampler(c.tag) as sampler:
            c.start_all()
            leader, epoch = c.leader_child(timeout=30)
            followers = [s for s in ensemble if s is not ensemble.leader()]
            followers[0].stop()  # one member down: quorum kept, nothing changes
            time.sleep(2 * LEASE)
            assert c.leader_child() == (leader, epoch)
            lost_at = time.monotonic()
            ensemble.leader().stop()  # a second member down: no quorum
            wait_until(
                lambda: not c.live_children(), LEASE + 3, "no child while there is no quorum"
            )
            stopped_after = time.monotonic() - lost_at
            time.sleep(LEASE)
            assert not c.live_children()
            for server in ensemble:
                if not server.is_running():
                    server.start()
            recovered = c.leader_child(timeout=60)
            assert recovered[0] in c.nodes
        sampler.assert_clean()
        assert stopped_after <= LEASE + 1.0, stopped_after
    finally:
        c.stop_all()
