"""The `failover` command as a user runs it: demo, status, pause/resume, switchover, errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import Cluster, Sampler, tagged_processes, wait_until

pytestmark = pytest.mark.integration


def failover(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "failover", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def test_demo_shows_takeover_and_switchover_and_cleans_up() -> None:
    done = failover("demo", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "took over with epoch" in done.stdout
    assert "s after the kill" in done.stdout  # the takeover: kill -> new child created
    assert "restarting" in done.stdout and "rejoins as a standby" in done.stdout
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
    where = ("--cluster", "empty", "--set", f"local.dir={tmp_path}")
    assert failover("pause", *where).returncode == 0  # a write: creates the store
    done = failover("status", *where)
    assert done.returncode == 1
    assert "no healthy leader" in done.stdout


def test_read_only_commands_create_no_state(tmp_path: Path) -> None:
    """`status` and a refused `switchover` on a cluster no daemon has run: a one-line error,
    and neither the state directory nor its SQLite file appears (the default dir here)."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    for args, code in ((("status",), 2), (("status", "--json"), 2), (("switchover",), 1)):
        done = failover(*args, env=env)
        assert done.returncode == code, done.stderr
        assert done.stderr.startswith("failover: "), done.stderr
        assert "failover/airflow.db does not exist: no daemon of this cluster" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("run", "--set", "lease_seconds=abc"), "lease_seconds: expected float"),
        (("run", "--set", "lease_second=3"), "did you mean 'lease_seconds'"),
        (("run", "--set", "noequals"), "--set: 'noequals' is not KEY=VALUE"),
        (("run", "--config", "/nonexistent.toml"), "cannot read /nonexistent.toml"),
        (("run", "--"), "--: no command after --"),
        (("run", "--backend", "etcd"), "failover: usage error: argument --backend"),
        (("status", "--set", "lease_seconds=x"), "--set lease_seconds: expected float"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], words: str) -> None:
    done = failover(*args)
    assert done.returncode == 2
    assert words in done.stderr
    assert done.stderr.startswith("failover: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_errors_name_env_var_and_file_line(tmp_path: Path) -> None:
    env = {**os.environ, "FAILOVER_LEASE_SECONDS": "abc"}
    done = failover("run", env=env)
    assert done.returncode == 2
    assert done.stderr.startswith(
        "failover: configuration error: FAILOVER_LEASE_SECONDS: expected float, got 'abc'"
    ), done.stderr
    config = tmp_path / "f.toml"
    config.write_text('cluster = "c"\n[local]\ndir = 5\n')
    for cmd, code in (("run", 2), ("check-config", 1), ("status", 2)):
        done = failover(cmd, "--config", str(config))
        assert done.returncode == code, done.stderr
        assert done.stderr.strip() == (
            f"failover: configuration error: local.dir ({config} line 3): expected str, got 5 "
            "(fix the value's type)"
        )


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = failover("check-config", "--set", f"local.dir={tmp_path}", "--set", "command=true")
    assert good.returncode == 0 and '"lease_seconds": 10.0' in good.stdout
    assert good.stderr.strip().endswith("failover: configuration is valid")
    bad = failover("check-config", "--set", "lease_seconds=2")
    assert bad.returncode == 1 and "leaves no time to renew" in bad.stderr
    assert bad.stderr.startswith("failover: configuration error: --set lease_seconds: ")


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("command=no-such-program-22", "command: 'no-such-program-22' is not on PATH"),
        ("http.token_file={tmp}/token", "holds a token shorter than 16 characters"),
        ("local.dir={tmp}/file/state", "is not a writable directory"),
    ],
)
def test_check_config_refuses_what_run_refuses(tmp_path: Path, setting: str, words: str) -> None:
    """Both run the same start-up checks: check-config exits 1 where run exits 2."""
    (tmp_path / "token").write_text("short")
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "file").write_text("")
    args = (
        "--set",
        f"local.dir={tmp_path / 'state'}",
        "--set",
        "http.listen=",
        "--set",
        "command=true",
        "--set",
        setting.format(tmp=tmp_path),
    )
    check = failover("check-config", *args)
    assert check.returncode == 1, check.stderr
    assert words in check.stderr
    run = failover("run", *args, timeout=30)
    assert run.returncode == 2, run.stderr
    refusal = run.stderr.strip().splitlines()[-1]
    assert refusal.startswith("failover: configuration error: ") and words in refusal
    assert refusal in check.stderr  # the same sentence
    assert not (tmp_path / "state").exists()


def test_demo_keep_leaves_a_cluster_to_look_at() -> None:
    """README's `failover status --cluster demo --set local.dir=...` after `demo --keep`."""
    done = failover("demo", "--keep", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    status_line = next(
        line for line in done.stdout.splitlines() if line.strip().startswith("failover status")
    )
    pids = [int(p) for p in re.findall(r"daemons ([\d ]+),", done.stdout)[0].split()]
    root = Path(re.findall(r"rm -rf (\S+)", done.stdout)[0])
    try:
        status = failover(*status_line.split()[1:], "--json")
        assert status.returncode == 0, status.stderr
        table = json.loads(status.stdout)
        assert table["healthy_leader"] and len(table["members"]) == 3
        children = [m["child_pid"] for m in table["members"] if m["child_pid"]]
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not any(_alive(p) for p in pids), 30, "the kept daemons to stop")
        shutil.rmtree(root, ignore_errors=True)
    assert not any(_alive(p) for p in children)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_child_processes_get_the_session_tmpdir() -> None:
    """tests/conftest.py: temp files of processes the tests start (Airflow's `pymp-*`
    directories of a SIGKILLed scheduler) land in a directory removed after the session."""
    code = "import multiprocessing.util as u; print(u.get_temp_dir())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    session = os.environ["TMPDIR"]
    assert Path(session).name.startswith("failover-tests-")
    assert done.stdout.strip().startswith(session + "/pymp-")


def test_help_everywhere() -> None:
    top = failover("--help").stdout
    for cmd in (
        "run",
        "status",
        "switchover",
        "pause",
        "resume",
        "check-config",
        "demo",
        "keeper",
        "version",
    ):
        done = failover(cmd, "--help")
        assert done.returncode == 0 and "usage: failover" in done.stdout, cmd
        summary = done.stdout.split("\n\n")[1].split(".")[0]  # the description's first line
        assert summary and " ".join(summary.split()) in " ".join(top.split()), cmd
    status = " ".join(failover("status", "--help").stdout.split())
    assert "act on the whole cluster (default: host name)" in status  # --node on a client
    assert "section.key" in status and "--set local.dir=" in status
    assert "(default: airflow)" in status and "(default: 1)" in status
    assert failover("version").stdout.startswith("failover ")
