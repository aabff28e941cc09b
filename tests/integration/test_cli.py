"""The `failover` command as a user runs it: demo, status, pause/resume, switchover, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import Cluster, Sampler, tagged_processes

pytestmark = pytest.mark.integration


def failover(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "failover", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_shows_takeover_and_switchover_and_cleans_up() -> None:
    done = failover("demo", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "took over with epoch" in done.stdout
    assert "old child" in done.stdout and "gone: True" in done.stdout
    assert "switched over:" in done.stdout
    assert "children left running: 0" in done.stdout
    assert not tagged_processes("failover.demo.standin")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, nodes=("n1", "n2"))
    yield c
    c.stop_all()


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return failover(
        *args,
        "--cluster",
        cluster.cluster,
        "--set",
        f"local.dir={cluster.root / 'state'}",
        "--set",
        "lease_seconds=3",
        "--set",
        "loop_seconds=0.5",
        "--set",
        "backend_timeout_seconds=0.5",
        "--set",
        "self_fence_margin_seconds=0.5",
    )


def test_status_pause_resume_switchover(cluster: Cluster) -> None:
    with Sampler(cluster.tag) as sampler:
        cluster.start_all()
        leader, _ = cluster.leader_child()
        done = cli(cluster, "status", "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["leader"] == leader and status["healthy_leader"]
        assert {m["node"] for m in status["members"]} == {"n1", "n2"}

        assert cli(cluster, "pause").returncode == 0
        assert json.loads(cli(cluster, "status", "--json").stdout)["paused"] is True
        assert "PAUSED" in cli(cluster, "status").stdout
        assert cli(cluster, "resume").returncode == 0
        assert json.loads(cli(cluster, "status", "--json").stdout)["paused"] is False

        other = "n2" if leader == "n1" else "n1"
        done = cli(cluster, "switchover", "--to", other)
        assert done.returncode == 0, done.stderr
        assert f"{leader} -> {other}" in done.stdout
        assert cluster.leader_child()[0] == other

        done = cli(cluster, "switchover", "--to", "ghost")
        assert done.returncode == 1
        assert "ghost is not a healthy standby" in done.stderr
    sampler.assert_clean()


def test_status_without_leader_exits_1(tmp_path: Path) -> None:
    done = failover("status", "--cluster", "empty", "--set", f"local.dir={tmp_path}")
    assert done.returncode == 1
    assert "no healthy leader" in done.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("run", "--set", "lease_seconds=abc"), "lease_seconds: expected float"),
        (("run", "--set", "lease_second=3"), "did you mean 'lease_seconds'"),
        (("run", "--set", "noequals"), "--set: 'noequals' is not KEY=VALUE"),
        (("run", "--config", "/nonexistent.toml"), "cannot read /nonexistent.toml"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], words: str) -> None:
    done = failover(*args)
    assert done.returncode == 2
    assert words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = failover("check-config", "--set", f"local.dir={tmp_path}")
    assert good.returncode == 0 and '"lease_seconds": 10.0' in good.stdout
    bad = failover("check-config", "--set", "lease_seconds=2")
    assert bad.returncode == 1 and "leaves no time to renew" in bad.stderr


def test_help_everywhere() -> None:
    for cmd in (
        "run",
        "status",
        "switchover",
        "pause",
        "resume",
        "check-config",
        "demo",
        "version",
    ):
        done = failover(cmd, "--help")
        assert done.returncode == 0 and "usage: failover" in done.stdout, cmd
    assert failover("version").stdout.startswith("failover ")
