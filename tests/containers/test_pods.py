"""The EKS sidecar form for real: two candidate pods of docker/k8s/scheduler-sidecar.yaml under
`podman kube play` on the PostgreSQL fixture (tests/containers/pods.py says what is substituted)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import Sampler, read_records, wait_until
from .podman import podman
from .pods import PodPair, boottime

pytestmark = pytest.mark.containers


@pytest.fixture
def pair(controller_image: str, pg_dsn: str, tmp_path: Path) -> Iterator[PodPair]:
    records = tmp_path / "records" / "records"
    records.parent.mkdir()
    records.parent.chmod(0o777)  # the pods run as uid 50000
    tag = f"ctr-{uuid.uuid4().hex[:8]}"
    p = PodPair(dsn=pg_dsn, tag=tag, workdir=tmp_path, records=records)
    try:
        yield p
    finally:
        p.close()


@contextlib.contextmanager
def logs_on_failure(p: PodPair) -> Iterator[None]:
    try:
        yield
    except BaseException:
        print(p.logs())
        raise


def test_sidecar_pods_kill9_takeover_restart_and_graceful_switchover(pair: PodPair) -> None:
    p = pair
    a = p.add(f"{p.tag}-a")
    b = p.add(f"{p.tag}-b")
    with logs_on_failure(p), Sampler(p.tag) as sampler:
        leader, epoch = wait_until(p.one_tree, 90, "one scheduler in the two pods")
        standby = p.other(leader)
        assert leader.status("/leader") == 200 and standby.status("/leader") == 503
        assert standby.status("/healthz") == 200
        wait_until(standby.warm_standby, 30, "the standby's keeper to connect")

        # kill -9 of the leader's failover container: its keeper ends the scheduler tree in the
        # sibling container, the other pod's scheduler starts.
        killed_at = boottime()
        podman("kill", "-s", "KILL", leader.failover)
        new = wait_until(lambda: p.started(standby, epoch), 30, "the other pod's scheduler")
        takeover = float(new["t"]) - killed_at
        assert takeover < 10, takeover  # typically 0.2-0.4 s: bench/results/containers.md
        wait_until(p.one_tree, 30, "only the new tree")
        assert p.leader() is standby

        # The killed container comes back (restartPolicy) or is started: it rejoins as standby.
        if podman("inspect", "-f", "{{.State.Running}}", leader.failover).strip() != "true":
            podman("start", leader.failover)
        wait_until(leader.warm_standby, 60, "the restarted container as standby, keeper in")
        assert leader.status("/leader") == 503 and standby.status("/leader") == 200

        # `podman pod stop` of the leader pod: graceful switchover back.
        _, epoch2 = wait_until(p.one_tree, 30, "one tree before the switchover")
        stopped_at = boottime()
        podman("pod", "stop", "-t", "60", standby.pod, timeout=90)
        back = wait_until(lambda: p.started(leader, epoch2), 30, "the switchover")
        switchover = float(back["t"]) - stopped_at
        assert switchover < 10, switchover
        wait_until(p.one_tree, 30, "only the switched-over tree")
        assert p.leader() is leader
        terms = [r for r in read_records(p.records) if r["word"] == "term"]
        assert any(r["node"] == standby.pod and r["epoch"] == epoch2 for r in terms)

        # The stopped pod started again rejoins as standby.
        podman("pod", "start", standby.pod, timeout=90)
        wait_until(standby.warm_standby, 60, "the restarted pod as standby, keeper in")
        assert standby.status("/leader") == 503 and p.leader() is leader
    sampler.assert_clean()
    print(f"pods: kill -9 takeover {takeover:.3f} s, pod stop switchover {switchover:.3f} s")
    del a, b
