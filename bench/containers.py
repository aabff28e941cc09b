"""The images and the EKS sidecar pod form under podman: image sizes and build times, and the
kill -9 takeover of the leader's failover container; writes bench/results/containers.md.

    python bench/containers.py [--runs 5]

Two candidate pods of docker/k8s/scheduler-sidecar.yaml (tests/containers/pods.py) on a local
PostgreSQL; each run SIGKILLs the leader's failover container (`podman kill -s KILL`) and
measures, from just before the kill: the old scheduler tree gone (sampled every 20 ms) and the
other pod's child started (its own `start` record). A sampler counts moments with two trees.
The killed container is then started again and must rejoin as standby before the next run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import servers
from tests.containers.podman import (
    CONTROLLER_IMAGE,
    build,
    host_pid,
    image_exists,
    image_size,
    podman,
    setup,
)
from tests.containers.pods import PodPair, boottime
from tests.harness import Sampler, tagged_processes, wait_until

OUT = ROOT / "bench" / "results" / "containers.md"


class Watch(threading.Thread):
    """Every 10 ms: when did the daemon (host pid) die, and when was the old tree gone?"""

    def __init__(self, daemon: int, tree: set[int]) -> None:
        super().__init__(daemon=True)
        self.pid, self.tree = daemon, tree
        self.died = self.gone = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01) and not (self.died and self.gone):
            now = boottime()
            if not self.died and not os.path.exists(f"/proc/{self.pid}"):
                self.died = now
            if not self.gone and not self.tree & set(tagged_processes_fast(self.tree)):
                self.gone = now


def tagged_processes_fast(pids: set[int]) -> set[int]:
    """Those of `pids` still alive and not zombies."""
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X"):
                    alive.add(pid)
        except OSError:
            pass
    return alive


def kill9_run(p: PodPair) -> tuple[float, float, float]:
    """Seconds after the call of `podman kill -s KILL` on the leader's failover container:
    (its daemon dead, the old tree gone, the other pod's child started)."""
    leader, epoch = wait_until(p.one_tree, 90, "one tree")
    standby = p.other(leader)
    wait_until(standby.warm_standby, 60, "the standby's keeper to connect")
    watch = Watch(host_pid(leader.failover), set(tagged_processes(p.tag)))
    watch.start()
    killed_at = boottime()
    podman("kill", "-s", "KILL", leader.failover)
    new = wait_until(lambda: p.started(standby, epoch), 30, "the new child")
    wait_until(lambda: watch.died and watch.gone, 30, "the old tree to go")
    watch.stop.set()
    if float(new["t"]) - killed_at > 2:  # say why: the new leader's sentences of this takeover
        log = podman("logs", "--since", "30s", standby.failover, stderr=True)
        said = [line.split('"sentence": "')[1].split('"')[0] for line in log.splitlines()
                if '"sentence": "' in line and "no action" not in line]  # fmt: skip
        print("slow takeover:", *dict.fromkeys(said), sep="\n  ")
    if podman("inspect", "-f", "{{.State.Running}}", leader.failover).strip() != "true":
        podman("start", leader.failover)
    wait_until(leader.warm_standby, 60, "the killed container back as standby, keeper in")
    return watch.died - killed_at, watch.gone - killed_at, float(new["t"]) - killed_at


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    base = setup(install=False)
    built = build("docker/Dockerfile", CONTROLLER_IMAGE, PYTHON_IMAGE=base)
    sizes = [(base, image_size(base), "-"), (CONTROLLER_IMAGE, image_size(CONTROLLER_IMAGE),
             f"{built:.0f} s (warm cache)")]  # fmt: skip
    airflow = "localhost/airflow-failover:2.11.2"
    if image_exists(airflow):
        sizes.append((airflow, image_size(airflow), "see README"))
    pg = servers.PostgresServer()
    pg.start()
    rows: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-containers-") as tmp:
        records = Path(tmp) / "records" / "records"
        records.parent.mkdir()
        records.parent.chmod(0o777)
        tag = f"bench-{uuid.uuid4().hex[:6]}"
        p = PodPair(dsn=pg.create_database(), tag=tag, workdir=Path(tmp), records=records)
        try:
            p.add(f"{tag}-a")
            p.add(f"{tag}-b")
            wait_until(p.one_tree, 90, "one tree")
            time.sleep(max(0.0, 12 - pg_uptime(pg)))  # a fresh server proves nothing (DESIGN §4)
            with Sampler(tag) as sampler:
                for i in range(args.runs):
                    rows.append(kill9_run(p))
                    print(f"run {i + 1}: dead, gone, started: {rows[-1]}")
            overlap = len(sampler.violations)
            samples = sampler.samples
        finally:
            p.close()
            pg.close()
    write(sizes, rows, overlap, samples)
    return 0


def pg_uptime(pg: servers.PostgresServer) -> float:
    return float(pg.query("SELECT extract(epoch FROM now() - pg_postmaster_start_time())")[0][0])


def write(
    sizes: list[tuple[str, int, str]],
    rows: list[tuple[float, float, float]],
    overlap: int,
    samples: int,
) -> None:
    columns = list(zip(*rows, strict=True))
    after_death = [s - d for d, _, s in rows]
    lines = [
        "# Containers: images and the EKS sidecar pod form under podman",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/containers.py --runs {len(rows)}` "
        f"on {platform.system()} {platform.release()}, {os.cpu_count()} CPUs (shared with other "
        f"test runs), podman {podman('version', '-f', '{{.Client.Version}}').strip()} "
        "(runc, cgroup v1), PostgreSQL backend (lease 10 s, loop 1 s: docker/k8s/config.yaml).",
        "",
        "## Images",
        "",
        "| image | size | build |",
        "|---|---|---|",
        *[f"| `{name}` | {size / 1e6:.0f} MB | {how} |" for name, size, how in sizes],
        "",
        "## kill -9 of the leader's failover container (2 pods, `podman kube play`)",
        "",
        "Seconds from the call of `podman kill -s KILL` (the CLI itself takes part of it): the "
        "daemon (the container's PID 1) dead, the old scheduler tree in the sibling container "
        "gone (both seen from the host every 10 ms), the other pod's child started (its own "
        "start record). The child is tests/probe.py, not Airflow: an Airflow scheduler's own "
        "start-up comes on top (bench/results/airflow.md).",
        "",
        "| run | daemon dead | old tree gone | new child started | started - dead |",
        "|---|---|---|---|---|",
        *[
            f"| {i + 1} | {d:.3f} | {g:.3f} | {s:.3f} | {s - d:.3f} |"
            for i, (d, g, s) in enumerate(rows)
        ],
        "| median | "
        + " | ".join(f"{statistics.median(c):.3f}" for c in [*columns, after_death])
        + " |",
        "| max | " + " | ".join(f"{max(c):.3f}" for c in [*columns, after_death]) + " |",
        "",
        f"Overlap (two trees alive at one 50 ms sample): {overlap} of {samples} samples.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
