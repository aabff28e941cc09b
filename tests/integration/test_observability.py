"""Two real daemons with HTTP on: /status agrees with `failover status`, POST actions work,
and a real Prometheus server scrapes both and sees exactly one leader."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from failover.ops.metrics import Metrics

from ..harness import Cluster, Sampler, wait_until
from ..servers import free_port

pytestmark = pytest.mark.integration
TOKEN = "observability-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, no proxy


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            body = resp.read()
            code = resp.status
    except urllib.error.HTTPError as err:
        body, code = err.read(), err.code
    except (urllib.error.URLError, OSError):
        return 0, None
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body.decode()


def post(
    port: int, path: str, body: dict[str, Any] | None = None, token: str = TOKEN
) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body or {}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with OPENER.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    c = Cluster(tmp_path, nodes=("n1", "n2"), settings={"http.token_file": str(token)})
    c.ports = {}  # type: ignore[attr-defined]
    yield c
    c.stop_all()


def start_with_http(cluster: Cluster) -> dict[str, int]:
    ports = {}
    for node in cluster.nodes:
        ports[node] = free_port()
        cluster.settings["http.listen"] = f"127.0.0.1:{ports[node]}"
        cluster.start(node)
    for port in ports.values():
        wait_until(lambda p=port: get(p, "/readyz")[0] == 200, 15, "readyz")
    return ports


def test_endpoints_status_agreement_and_actions(cluster: Cluster) -> None:
    with Sampler(cluster.tag) as sampler:
        ports = start_with_http(cluster)
        leader, epoch = cluster.leader_child()
        other = "n2" if leader == "n1" else "n1"
        wait_until(lambda: get(ports[leader], "/leader")[0] == 200, 10, "leader endpoint")
        assert get(ports[other], "/leader")[0] == 503
        assert get(ports[leader], "/healthz")[0] == 200
        code, status = get(ports[leader], "/status")
        assert code == 200 and status["role"] == "leader" and str(status["epoch"]) == epoch
        assert status["child"]["state"] == "running" and status["timings"]["lease_seconds"] == 3.0
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "failover",
                "status",
                "--json",
                "--cluster",
                cluster.cluster,
                "--set",
                f"local.dir={cluster.root / 'state'}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        cli = json.loads(done.stdout)
        assert cli["leader"] == status["node"] == leader
        assert cli["paused"] == status["paused"] is False
        row = next(m for m in cli["members"] if m["node"] == leader)
        assert row["epoch"] == status["epoch"] and row["child_pid"] == status["child"]["pid"]

        assert post(ports[other], "/pause", token="nope")[0] == 401
        assert post(ports[other], "/pause") == (200, {"paused": True})
        wait_until(lambda: get(ports[leader], "/status")[1]["paused"], 10, "paused in /status")
        assert "failover_paused 1.0" in get(ports[leader], "/metrics")[1]
        assert post(ports[leader], "/switchover", {"to": other})[0] == 409  # paused
        assert post(ports[other], "/resume") == (200, {"paused": False})
        wait_until(lambda: not get(ports[leader], "/status")[1]["paused"], 10, "resumed")
        code, body = post(ports[leader], "/switchover", {"to": other})
        assert code == 202, body
        assert cluster.leader_child(exclude=[leader], timeout=15)[0] == other
        assert post(ports[other], "/switchover", {"to": "ghost"})[0] == 409
    sampler.assert_clean()


def test_prometheus_scrapes_two_daemons_and_sees_one_leader(
    cluster: Cluster, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run scripts/test", pytrace=False)
    ports = start_with_http(cluster)
    cluster.leader_child()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports.values())
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{str(ROOT / 'deploy/prometheus/alerts.yml')!r}]\n"
        f"scrape_configs:\n  - job_name: failover\n    static_configs:\n      - targets: [{targets}]\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:

        def leaders() -> Any:
            q = urllib.parse.quote("failover_is_leader")
            code, body = get(prom_port, f"/api/v1/query?query={q}")
            if code != 200 or body.get("status") != "success":
                return None
            series = body["data"]["result"]
            return series if len(series) == 2 else None

        series = wait_until(leaders, 30, "Prometheus to scrape both daemons", step=0.25)
        values = sorted(float(s["value"][1]) for s in series)
        assert values == [0.0, 1.0], series
        q = urllib.parse.quote('ALERTS{alertname="FailoverMoreThanOneLeader"}')
        assert get(prom_port, f"/api/v1/query?query={q}")[1]["data"]["result"] == []
    finally:
        prom.terminate()
        prom.wait(timeout=20)
        log.close()


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run scripts/test", pytrace=False)
    done = subprocess.run(
        [promtool, "check", "rules", str(ROOT / "deploy/prometheus/alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout


def test_dashboard_and_alerts_use_only_real_metric_names() -> None:
    registry = CollectorRegistry()
    Metrics(registry, "v", "local", "n", "c")
    names = set()
    for family in registry.collect():
        for s in family.samples:
            names.add(s.name)
        names.add(family.name)
    names |= {f"{n}_bucket" for n in names} | {
        "failover_leader_transitions_total",
        "failover_child_restarts_total",
        "failover_fenced_sessions_total",
    }
    dashboard = json.loads((ROOT / "deploy/grafana/failover.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append((ROOT / "deploy/prometheus/alerts.yml").read_text())
    used = {m for e in exprs for m in re.findall(r"\bfailover_[a-z_]+", e)}
    assert used, "no metric referenced"
    unknown = used - names
    assert not unknown, f"dashboard/alerts reference metrics the daemon does not export: {unknown}"
    titles = {p["title"] for p in dashboard["panels"]}
    for needed in ("Leader timeline", "Leader transitions", "Child restarts", "Backend up"):
        assert needed in titles
    assert any("tick_duration" in e for e in exprs)
