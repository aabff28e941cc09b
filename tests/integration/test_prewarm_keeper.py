"""The keeper's pre-warmed scheduler ([airflow] prewarm) with the real Airflow 2.11.2.

No database: the warm-up must not need one. Its DSN points at a closed port, so a warm-up
that connected would fail. What a promoted warm scheduler does with a real database is in
tests/e2e/test_prewarm.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from failover.keeper.core import boottime
from failover.keeper.launcher import KeeperLauncher, SocketKeeperLink

from ..e2e.conftest import airflow_binary
from ..harness import alive, wait_until
from ..servers import free_port

pytestmark = pytest.mark.e2e


def airflow_env(home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    closed = free_port()  # nothing listens there
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://nobody@127.0.0.1:{closed}/x",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "FAILOVER_NODE": "w",
    }


class Lines:
    """Everything a keeper said, read as it arrives."""

    def __init__(self, link: SocketKeeperLink) -> None:
        self.link = link
        self.seen: list[str] = []

    def wait(self, word: str, timeout: float = 60.0, after: int = 0) -> str:
        """The first line starting with `word` at index >= `after`."""

        def find() -> str | None:
            self.seen.extend(self.link.read_lines())
            return next((x for x in self.seen[after:] if x.split(" ", 1)[0] == word), None)

        line: str = wait_until(find, timeout, f"keeper line {word} (seen {self.seen})", 0.05)
        return line

    def words(self) -> list[str]:
        self.seen.extend(self.link.read_lines())
        return [x.split(" ", 1)[0] for x in self.seen]


def warm_keeper(
    command: list[str], env: dict[str, str], *extra: str
) -> tuple[SocketKeeperLink, Lines]:
    link = KeeperLauncher().launch(
        command, env, 10.0, ("--name", "failover:t:w", "--prewarm", *extra)
    )
    return link, Lines(link)


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().rstrip(b"\0")


def test_warm_scheduler_waits_without_a_database_and_dies_on_eof(tmp_path: Path) -> None:
    binary = airflow_binary()
    link, lines = warm_keeper([binary, "scheduler", "--skip-serve-logs"], airflow_env(tmp_path))
    try:
        pid = int(lines.wait("WARMING").split()[1])
        info = json.loads(lines.wait("WARM").split(" ", 1)[1])
        assert info["airflow"] == "2.11.2"
        assert 0 < info["seconds"] < 60
        assert info["rss_bytes"] > 50 * 2**20  # Airflow imported: ~130 MB
        assert len(info["fingerprint"]) == 16
        assert cmdline(pid).endswith(b"[warm standby]")
        with open(f"/proc/{pid}/comm", "rb") as f:
            assert f.read().strip() == b"failover-warm"
        time.sleep(1.0)
        assert alive(pid), "a warm scheduler must wait, not exit"
        assert "STARTED" not in lines.words()
    finally:
        t0 = time.monotonic()
        link.close()  # end of file: the keeper and the warm process exit at once
    wait_until(lambda: not alive(pid), 5, "the warm process to exit on EOF")
    gone = time.monotonic() - t0
    assert gone < 5, gone
    print(
        f"\nwarm-up {info['seconds']:.2f} s, RSS {info['rss_bytes'] >> 20} MB; EOF -> gone "
        f"{gone:.2f} s",
        file=sys.stderr,
    )


def test_changed_airflow_cfg_rewarms(tmp_path: Path) -> None:
    binary = airflow_binary()
    env = airflow_env(tmp_path / "home")
    link, lines = warm_keeper([binary, "scheduler", "--skip-serve-logs"], env)
    try:
        first = int(lines.wait("WARMING").split()[1])
        print1 = json.loads(lines.wait("WARM").split(" ", 1)[1])["fingerprint"]
        n = len(lines.seen)
        (tmp_path / "home" / "airflow.cfg").write_text("[core]\nparallelism = 8\n")
        reason = lines.wait("REWARM", 20, after=n)
        assert "inputs changed" in reason
        second = int(lines.wait("WARMING", 20, after=n).split()[1])
        print2 = json.loads(lines.wait("WARM", 60, after=n).split(" ", 1)[1])["fingerprint"]
        assert second != first and print2 != print1
        wait_until(lambda: not alive(first), 5, "the outdated warm process to be gone")
        assert alive(second)
    finally:
        link.close()


def test_warm_scheduler_is_replaced_at_its_max_age(tmp_path: Path) -> None:
    binary = airflow_binary()
    env = airflow_env(tmp_path)
    link, lines = warm_keeper([binary, "scheduler"], env, "--prewarm-max-age", "1")
    try:
        first = int(lines.wait("WARMING").split()[1])
        lines.wait("WARM")
        n = len(lines.seen)
        assert "max age" in lines.wait("REWARM", 20, after=n)
        assert int(lines.wait("WARMING", 20, after=n).split()[1]) != first
    finally:
        link.close()


def fake_airflow(
    tmp_path: Path, shebang: str, version: str = "9.0.0"
) -> tuple[str, dict[str, str]]:
    """An `airflow` console script (as pip writes it, after `shebang`) whose `main()` records
    how it was run, and an `airflow` package of `version`."""
    bin_dir, pkgs = tmp_path / "bin", tmp_path / "pkgs"
    (pkgs / "airflow").mkdir(parents=True)
    (pkgs / "airflow" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    out = tmp_path / "ran.txt"
    (pkgs / "airflow" / "__main__.py").write_text(
        "import os, sys\n"
        "def main():\n"
        f"    open({str(out)!r}, 'w').write(' '.join(sys.argv[1:]) + ' epoch='"
        " + os.environ.get('FAILOVER_EPOCH', '?'))\n"
        "    return 0\n"
    )
    bin_dir.mkdir()
    script = bin_dir / "airflow"
    if "python" in shebang:
        body = (
            "# -*- coding: utf-8 -*-\nimport re\nimport sys\n"
            "from airflow.__main__ import main\n"
            "if __name__ == '__main__':\n"
            "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
            "    sys.exit(main())\n"
        )
    else:
        body = f'echo "$* epoch=$FAILOVER_EPOCH" > {out}\n'
    script.write_text(f"#!{shebang}\n{body}")
    script.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(pkgs), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return str(script), env


@pytest.mark.parametrize(
    ("shebang", "reason"),
    [
        (sys.executable, "Airflow 9.0.0 is not one prewarm knows"),
        ("/bin/sh", "does not run under a plain Python interpreter"),
        (f"{sys.executable}\nimport os\nos.environ['X'] = '1'", "is a wrapper"),
    ],
)
def test_unknown_airflow_starts_the_plain_command(
    tmp_path: Path, shebang: str, reason: str
) -> None:
    script, env = fake_airflow(tmp_path, shebang)
    link, lines = warm_keeper(["airflow", "scheduler", "--skip-serve-logs"], env)
    try:
        assert reason in lines.wait("COLD")
        link.send(f"GO 7 {boottime() + 30:.6f}")
        lines.wait("STARTED")
        assert lines.wait("EXITED") == "EXITED 0"
        lines.wait("GONE")
    finally:
        link.close()
    assert (tmp_path / "ran.txt").read_text().strip() == "scheduler --skip-serve-logs epoch=7"
    assert script


def test_failed_warm_up_is_retried(tmp_path: Path) -> None:
    """A warm-up that fails (here: an executor that does not exist) is tried again after a
    backoff, and succeeds once the configuration is fixed."""
    binary = airflow_binary()
    env = airflow_env(tmp_path / "home")
    cfg = tmp_path / "home" / "airflow.cfg"
    cfg.write_text("[core]\nexecutor = NoSuchExecutor\n")
    env.pop("AIRFLOW__CORE__EXECUTOR")
    link, lines = warm_keeper([binary, "scheduler"], env)
    try:
        first = int(lines.wait("WARMING").split()[1])
        assert "warm-up failed" in lines.wait("COLD")
        cfg.write_text("[core]\nexecutor = LocalExecutor\n")
        second = int(lines.wait("WARMING", 30, after=len(lines.seen)).split()[1])
        assert second != first and not alive(first)
        lines.wait("WARM", 60)
    finally:
        link.close()


def test_go_at_launch_starts_cold_without_warming(tmp_path: Path) -> None:
    """A keeper launched for an immediate start (no warm keeper was ready) does not pre-warm."""
    script, env = fake_airflow(tmp_path, sys.executable, version="2.11.2")
    link = KeeperLauncher().launch(
        ["airflow", "scheduler"], env, 10.0, ("--name", "failover:t:w", "--prewarm")
    )
    link.send(f"GO 3 {boottime() + 30:.6f}")
    lines = Lines(link)
    try:
        lines.wait("GONE", 30)
    finally:
        link.close()
    assert "WARMING" not in lines.words()
    assert (tmp_path / "ran.txt").read_text().strip() == "scheduler epoch=3"
