"""Deployment files: Dockerfiles, Kubernetes manifests, Helm values, linted and checked for
what the design asks of them (no cluster or Docker engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_yaml_lints() -> None:
    yamllint = shutil.which("yamllint")
    if yamllint is None:
        pytest.fail("yamllint is missing: pip install -e '.[dev]'", pytrace=False)
    done = subprocess.run(
        [
            yamllint,
            "-c",
            str(ROOT / ".yamllint.yaml"),
            "-f",
            "parsable",
            "docker",
            "deploy/prometheus",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_dockerfiles() -> None:
    for name in ("Dockerfile", "Dockerfile.airflow"):
        text = (DOCKER / name).read_text()
        assert "\nUSER 10001" in text or "\nUSER 50000" in text, name  # never root
        assert "HEALTHCHECK" in text and "/healthz" in text, name
        assert 'ENTRYPOINT ["failover"]' in text, name
        assert "tini" not in text.split("No tini")[-1].lower() or "No tini" in text
    assert (
        'CMD ["run", "--", "airflow", "scheduler"]' in (DOCKER / "Dockerfile.airflow").read_text()
    )


def pod_spec(path: Path) -> dict[str, Any]:
    (deployment,) = [d for d in docs(path) if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    spec = deployment["spec"]["template"]["spec"]
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert "shareProcessNamespace" not in spec
    return spec


def probes_of(container: dict[str, Any]) -> tuple[str, str]:
    return container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"][
        "path"
    ]


def test_single_container_form() -> None:
    spec = pod_spec(DOCKER / "k8s" / "scheduler.yaml")
    (scheduler,) = spec["containers"]
    assert scheduler["args"][0] == "run" and scheduler["args"][-2:] == ["airflow", "scheduler"]
    assert probes_of(scheduler) == ("/healthz", "/leader")
    assert spec["terminationGracePeriodSeconds"] >= 60  # room for stop_timeout_seconds


def test_sidecar_form_shares_only_a_socket_directory() -> None:
    spec = pod_spec(DOCKER / "k8s" / "scheduler-sidecar.yaml")
    (sidecar,) = spec["initContainers"]
    (scheduler,) = spec["containers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar
    assert probes_of(sidecar) == ("/healthz", "/leader")
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    sock = env["FAILOVER_KEEPER__LISTEN"]
    assert scheduler["command"][:4] == ["failover", "keeper", "--connect", sock]
    assert scheduler["command"][-2:] == ["airflow", "scheduler"]
    # The keeper writes an alive file the scheduler container's liveness probe checks.
    alive = scheduler["command"][scheduler["command"].index("--alive-file") + 1]
    live = scheduler["livenessProbe"]
    assert live["exec"]["command"][:4] == ["failover", "keeper", "--check", alive]
    max_age = float(live["exec"]["command"][live["exec"]["command"].index("--max-age") + 1])
    worst = max_age + live["periodSeconds"] * live["failureThreshold"] + live["timeoutSeconds"]
    worst += live["terminationGracePeriodSeconds"]
    assert worst < 10 - 1  # restarted within the default lease - margin
    assert str(Path(alive).parent) == str(Path(sock).parent)  # on the shared emptyDir
    mount_of = {m["name"]: m["mountPath"] for m in scheduler["volumeMounts"]}
    sidecar_mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    shared = set(mount_of) & set(sidecar_mounts)
    assert shared == {"failover-run"} and str(Path(sock).parent) == mount_of["failover-run"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["failover-run"]


def test_policy_and_config() -> None:
    kinds = {d["kind"]: d for d in docs(DOCKER / "k8s" / "policy.yaml")}
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert kinds["ServiceMonitor"]["spec"]["endpoints"][0]["path"] == "/metrics"
    config = {d["kind"]: d for d in docs(DOCKER / "k8s" / "config.yaml")}
    toml = config["ConfigMap"]["data"]["failover.toml"]
    import tomllib

    parsed = tomllib.loads(toml)
    assert parsed["backend"] == "postgres" and parsed["http"]["token_file"].startswith(
        "/etc/failover/secret"
    )
    assert set(config["Secret"]["stringData"]) == {"metadata_dsn", "token"}


def test_helm_values() -> None:
    values = yaml.safe_load((DOCKER / "helm-values.yaml").read_text())
    scheduler = values["scheduler"]
    assert scheduler["replicas"] >= 2
    assert scheduler["command"][:3] == ["failover", "keeper", "--connect"]
    (sidecar,) = scheduler["extraInitContainers"]
    assert sidecar["restartPolicy"] == "Always" and probes_of(sidecar) == ("/healthz", "/leader")
    # Not `airflow jobs check` (a standby has no SchedulerJob): the keeper's alive file.
    alive = scheduler["command"][scheduler["command"].index("--alive-file") + 1]
    assert scheduler["livenessProbe"]["command"][:4] == ["failover", "keeper", "--check", alive]
