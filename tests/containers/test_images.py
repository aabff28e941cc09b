"""The controller image (docker/Dockerfile) under podman: what is in it, and the daemon as the
container's PID 1 (reaping, stop within stop_timeout_seconds, HEALTHCHECK)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from failover.keeper import proctree

from ..harness import PROBE, read_records, tagged_processes, wait_until
from .podman import ROOT, host_pid, image_size, inspect, podman, remove_container

pytestmark = pytest.mark.containers

SITE = "/usr/local/lib/python3.11/dist-packages/failover"


def run_in(image: str, *argv: str, entrypoint: str | None = None, user: str = "") -> str:
    opts = ["--entrypoint", entrypoint] if entrypoint else []
    opts += ["--user", user] if user else []
    return podman("run", "--rm", *opts, image, *argv, timeout=120)


def test_image_contents_labels_and_commands(controller_image: str) -> None:
    version = run_in(controller_image, "version").strip()
    assert version.startswith("failover ")
    assert "usage: failover" in run_in(controller_image, "--help")
    assert "--connect" in run_in(controller_image, "keeper", "--help")
    labels = inspect("image", controller_image)["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == version.split()[1]
    assert labels["org.opencontainers.image.source"].startswith("https://")
    image = inspect("image", controller_image)
    assert image["Config"]["User"] == "10001:10001"
    assert "/healthz" in " ".join(image["Healthcheck"]["Test"])  # kept: --format docker
    # Nothing of the build is left: no compiler, no wheel, no pip cache, no apt lists.
    leftovers = run_in(
        controller_image,
        "-c",
        "command -v gcc cc make; ls -A /tmp/wheels /wheels /src /root/.cache/pip "
        "/var/lib/apt/lists/*_Packages 2>/dev/null; true",
        entrypoint="sh",
        user="0",
    )
    assert leftovers.strip() == ""
    # The installed package is this tree's (a stale build-cache layer would differ).
    digest = run_in(
        controller_image, f"{SITE}/keeper/core.py", entrypoint="sha256sum", user="0"
    ).split()[0]
    ours = hashlib.sha256((ROOT / "failover" / "keeper" / "core.py").read_bytes()).hexdigest()
    assert digest == ours
    assert image_size(controller_image) < 250 * 1024 * 1024


@pytest.fixture
def container(tmp_path: Path) -> Iterator[str]:
    name = f"fo-pid1-{uuid.uuid4().hex[:8]}"
    yield name
    remove_container(name)


def test_daemon_as_pid1_reaps_orphans_and_stops_within_stop_timeout(
    controller_image: str, container: str, tmp_path: Path
) -> None:
    records = tmp_path / "rec"
    records.mkdir()
    records.chmod(0o777)
    tag = f"pid1-{uuid.uuid4().hex[:8]}"
    probe = ["python", "/probe/probe.py", "--tag", tag, "--record", "/rec/records"]
    podman(
        "run", "-d", "--name", container, "--network", "none", "--stop-timeout", "60",
        "-e", "FAILOVER_STOP_TIMEOUT_SECONDS=3",
        "-v", f"{PROBE}:/probe/probe.py:ro", "-v", f"{records}:/rec",
        controller_image, "run", "--", *probe, "--fork", "2", "--escape", "session",
        "--ignore-term",
    )  # fmt: skip
    pid1 = host_pid(container)
    first = set(wait_until(lambda: len(tagged_processes(tag)) == 3 and tagged_processes(tag), 60,
                           "the probe and its 2 grandchildren"))  # fmt: skip
    assert proctree.snapshot()[pid1][2] and "failover" in Path(f"/proc/{pid1}/cmdline").read_text()
    # Kill the keeper: the probe dies by PDEATHSIG, its grandchildren (own sessions) orphan
    # to PID 1, the daemon, which must kill and reap them (no zombie stays).
    keepers = [
        p
        for p, (_, ppid, _) in proctree.snapshot().items()
        if ppid == pid1 and b"failover.keeper" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert keepers
    for keeper in keepers:
        os.kill(keeper, signal.SIGKILL)
    wait_until(lambda: not first & set(tagged_processes(tag)), 30, "the orphaned tree to go")

    def zombies() -> list[int]:
        return [p for p, (st, ppid, _) in proctree.snapshot().items() if ppid == pid1 and st == "Z"]

    wait_until(lambda: not zombies(), 15, "PID 1 to reap every zombie")
    # The child comes back (crash restart); `podman stop` waits up to 60 s, the daemon must end
    # a child that ignores SIGTERM after stop_timeout_seconds (3 s) and exit by itself.
    wait_until(lambda: len(tagged_processes(tag)) == 3, 60, "the restarted child")
    started = time.monotonic()
    podman("stop", container, timeout=90)
    took = time.monotonic() - started
    assert took < 3 + 10, took
    assert not tagged_processes(tag)
    state = inspect("container", container)["State"]
    assert state["ExitCode"] == 0, state
    assert any(r["word"] == "term" for r in read_records(records / "records"))


def test_healthcheck_reports_healthy(controller_image: str, container: str) -> None:
    # Its own network namespace: the image's default listen address, as in production.
    podman(
        "run", "-d", "--name", container, "--network", "none",
        controller_image, "run", "--", "sleep", "600",
    )  # fmt: skip

    def healthy() -> bool:
        # podman runs HEALTHCHECKs from systemd timers; without systemd, run it by hand.
        done = subprocess.run(
            ["podman", "healthcheck", "run", container],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    wait_until(healthy, 60, "the HEALTHCHECK to pass", step=1.0)
    status = podman("inspect", "-f", "{{.State.Health.Status}}", container).strip()
    assert status == "healthy"
