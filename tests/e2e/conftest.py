"""The real Airflow (2.11.2, and 3.3.2 for test_airflow3.py) for end-to-end tests: its binary,
a migrated metadata DB, an env."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


AIRFLOW_VERSIONS = {2: ("2.11.2", "FAILOVER_TEST_AIRFLOW"), 3: ("3.3.2", "FAILOVER_TEST_AIRFLOW3")}


def airflow_binary(major: int = 2) -> str:
    version, var = AIRFLOW_VERSIONS[major]
    candidates = [
        os.environ.get(var, ""),
        str(
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            / "failover"
            / f"airflow-{version}"
            / "bin"
            / "airflow"
        ),
        str(REPO / ".venv-airflow" / "bin" / "airflow") if major == 2 else "",
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    message = f"apache-airflow {version} is not installed: run scripts/test (it installs it once)"
    if os.environ.get("FAILOVER_TEST_ALLOW_SKIP") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


@dataclass
class AirflowDb:
    binary: str
    dsn: str
    home: Path
    records: Path
    major: int = 2
    api_port: int = 0  # Airflow 3: the api-server's port (see test_airflow3.py)

    def env(self, **extra: str) -> dict[str, str]:
        env = (
            airflow3_env(self)
            if self.major == 3
            else {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.dsn.replace(
                    "postgresql://", "postgresql+psycopg2://", 1
                ),
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(HERE / "dags"),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_hostname.hostname",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "6",
                "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "2",
                "AIRFLOW__SCHEDULER__PARSING_PROCESSES": "1",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
                "PYTHONPATH": str(HERE),
                "E2E_RECORDS": str(self.records),
            }
        )
        env.update(extra)
        return env


def airflow3_env(db: AirflowDb) -> dict[str, str]:
    """Airflow 3's names for the same quick e2e settings; one shared JWT secret for every
    host, and the execution API of the api-server that the test starts outside the group."""
    return {
        "AIRFLOW_HOME": str(db.home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db.dsn.replace(
            "postgresql://", "postgresql+psycopg2://", 1
        ),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(HERE / "dags3"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_hostname.hostname",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API_AUTH__JWT_SECRET": "e2e-shared-secret-" + db.home.parent.name,
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{db.api_port}",
        "AIRFLOW__WORKERS__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{db.api_port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "6",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "2",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__HEALTH_CHECK_THRESHOLD": "10",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "PYTHONPATH": str(HERE),
        "E2E_RECORDS": str(db.records),
    }


# Daemon settings of the e2e clusters (and bench/airflow_takeover.py): lease 5 s, quick
# loops, a start-up grace long enough for Airflow on a busy 2-core machine.
DAEMON_SETTINGS = {
    "lease_seconds": "5",
    "loop_seconds": "0.5",
    "backend_timeout_seconds": "1",
    "self_fence_margin_seconds": "1",
    "stop_timeout_seconds": "20",
    "airflow.startup_grace_seconds": "40",
    "max_fast_failures": "3",
}


def migrated_db(server: Any, root: Path, major: int = 2) -> AirflowDb:
    """A new database on `server`, migrated by `airflow db migrate`, with its own AIRFLOW_HOME."""
    binary = airflow_binary(major)
    name = f"af_{uuid.uuid4().hex[:10]}"
    dsn = server.create_database(name)
    db = AirflowDb(binary, dsn, root / "airflow_home", root / "records.log", major)
    db.home.mkdir()
    done = subprocess.run(
        [binary, "db", "migrate"],
        env={**os.environ, **db.env()},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return db


@contextlib.contextmanager
def api_server(db: AirflowDb, root: Path) -> Iterator[None]:
    """Airflow 3's `airflow api-server --apps execution` on a free port (db.api_port), outside
    the controller as on every host; ready once GET /execution/health answers 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        db.api_port = int(s.getsockname()[1])
    log = open(root / "api-server.log", "ab")
    api = subprocess.Popen(
        [db.binary, "api-server", "--apps", "execution", "--port", str(db.api_port), "-w", "1"],
        env={**os.environ, **db.env(FAILOVER_NODE="api")},
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()

    def healthy() -> bool:
        url = f"http://127.0.0.1:{db.api_port}/execution/health"  # the LB's health check
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            assert api.poll() is None, (root / "api-server.log").read_text()[-2000:]
            return False

    try:
        end = time.monotonic() + 120
        while not healthy():
            assert time.monotonic() < end, "the api-server did not become healthy in 120 s"
            time.sleep(0.5)
        yield
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        try:
            api.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=5)


@pytest.fixture
def airflow_db(pg_server: Any, tmp_path: Path) -> Iterator[AirflowDb]:
    yield migrated_db(pg_server, tmp_path)
