"""Least privilege and secrets: a cluster on the role of deploy/postgres/grants.sql, with a
sentinel password and token that must appear in no output channel."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from ..harness import Cluster, DbSampler, Sampler, wait_until
from ..servers import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Sentinel-Pw-7f3a9c21"
TOKEN = "Sentinel-Token-0b8e55d1c4"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def admin(pg_dsn: str, sql: str) -> None:
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


@pytest.fixture
def least_privilege_dsn(pg_server: Any, pg_dsn: str) -> Iterator[str]:
    dbname = pg_dsn.rsplit("/", 1)[1]
    admin(pg_dsn, "DROP ROLE IF EXISTS failover_lp")
    admin(pg_dsn, "DROP ROLE IF EXISTS airflow_app")
    admin(pg_dsn, "CREATE ROLE airflow_app LOGIN PASSWORD 'app-pw'")
    admin(pg_dsn, f'GRANT CONNECT ON DATABASE "{dbname}" TO airflow_app')
    admin(
        pg_dsn,
        "CREATE TABLE public.job (id serial PRIMARY KEY, job_type text, state text, "
        "hostname text, latest_heartbeat timestamptz)",
    )
    grants = (ROOT / "deploy/postgres/grants.sql").read_text()
    grants = grants.replace("ROLE failover", "ROLE failover_lp").replace(
        "TO failover;", "TO failover_lp;"
    )
    grants = grants.replace(
        "SCHEMA IF NOT EXISTS failover AUTHORIZATION failover",
        "SCHEMA failover AUTHORIZATION failover_lp",
    )
    grants = grants.replace(":password", f"'{PASSWORD}'").replace(':"dbname"', f'"{dbname}"')
    admin(pg_dsn, grants)
    yield pg_server.dsn(dbname=dbname, user="failover_lp", password=PASSWORD)
    admin(pg_dsn, "DROP OWNED BY airflow_app")
    admin(pg_dsn, "DROP SCHEMA failover CASCADE")


def test_least_privilege_cluster_leaks_no_secret(
    tmp_path: Path, least_privilege_dsn: str, pg_dsn: str, pg_server: Any
) -> None:
    # Airflow's own sessions belong to Airflow's role, never to a superuser.
    app_dsn = pg_server.dsn(dbname=pg_dsn.rsplit("/", 1)[1], user="airflow_app", password="app-pw")
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    config = tmp_path / "failover.toml"
    config.write_text(f'metadata_dsn = "{least_privilege_dsn}"\n[http]\ntoken_file = "{token}"\n')
    config.chmod(0o600)
    c = Cluster(
        tmp_path / "run",
        nodes=("s1", "s2"),
        settings={"backend": "postgres"},
        probe_args=("--pg-dsn", app_dsn),
    )
    c.env = {"FAILOVER_CONFIG": str(config)}
    outputs: list[str] = []
    try:
        with Sampler(c.tag) as sampler, DbSampler(pg_dsn, c.cluster) as db:
            ports = {}
            for node in c.nodes:
                ports[node] = free_port()
                c.settings["http.listen"] = f"127.0.0.1:{ports[node]}"
                c.start(node)
            leader, epoch = c.leader_child()
            port = ports["s2" if leader == "s1" else "s1"]  # the survivor's endpoint
            # Fencing with the least-privilege role: a leaked session of this epoch, owned by
            # Airflow's role, must be terminated by the next leader before its child starts.
            straggler = psycopg2.connect(
                app_dsn, application_name=f"failover:{c.cluster}:ghost:{epoch}"
            )
            c.signal(leader, 9)
            c.leader_child(exclude=[leader], timeout=20)
            wait_until(lambda: straggler.closed or _dead(straggler), 10, "the straggler terminated")
            for path in ("/status", "/metrics", "/healthz"):
                with OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                    outputs.append(resp.read().decode())
            for args in (["status", "--json"], ["check-config"]):
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "failover",
                        *args,
                        "--cluster",
                        c.cluster,
                        "--backend",
                        "postgres",
                    ],
                    env={**c.env, "PATH": "/usr/bin:/bin"},
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                outputs += [done.stdout, done.stderr]
            assert json.loads(outputs[-4])["cluster"] == c.cluster
        sampler.assert_clean()
        db.assert_clean()
    finally:
        c.stop_all()
    bad = tmp_path / "bad.toml"
    bad.write_text(f'metadata_dsn = "{least_privilege_dsn.replace(PASSWORD, PASSWORD + "x")}"\n')
    bad.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "failover", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "chmod 600" in done.stderr
    outputs += [done.stdout, done.stderr]
    outputs += [(c.root / f"{n}.log").read_text() for n in c.nodes]
    for text in outputs:
        assert PASSWORD not in text and TOKEN not in text


def _dead(conn: Any) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return False
    except psycopg2.Error:
        return True
