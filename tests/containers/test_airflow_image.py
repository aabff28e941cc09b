"""docker/Dockerfile.airflow under podman, for each Airflow version it supports (slow: it installs
Airflow; `-m containers_airflow`, see README "Build and run the images")."""

from __future__ import annotations

import pytest

from .podman import build, image_exists, inspect, podman

pytestmark = [pytest.mark.containers, pytest.mark.containers_airflow]

AIRFLOW_VERSIONS = ["2.11.2"]  # + "3.3.2" when the Airflow 3 work lands


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("version", AIRFLOW_VERSIONS)
def test_airflow_image_builds_and_runs_both_programs(base_image: str, version: str) -> None:
    official = f"docker.io/apache/airflow:{version}-python3.11"
    airflow_image = official
    if not image_exists(official):  # no registry here: the stand-in, built from PyPI
        airflow_image = f"localhost/airflow-standin:{version}"
        build(
            "tests/containers/airflow-standin.Containerfile", airflow_image, timeout=1800,
            PYTHON_IMAGE=base_image, AIRFLOW_VERSION=version,
        )  # fmt: skip
    tag = f"localhost/airflow-failover:{version}"
    build(
        "docker/Dockerfile.airflow", tag, timeout=1800,
        PYTHON_IMAGE=base_image, AIRFLOW_VERSION=version, AIRFLOW_IMAGE=airflow_image,
    )  # fmt: skip
    run = ("run", "--rm", "--entrypoint")
    assert podman(*run, "airflow", tag, "version").strip() == version  # pip left Airflow alone
    assert podman("run", "--rm", tag, "version").startswith("failover ")
    assert podman(*run, "id", tag, "-u").strip() == "50000"
    labels = inspect("image", tag)["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"].endswith(f"-airflow{version}")
    cmd = inspect("image", tag)["Config"]["Cmd"]
    assert cmd == ["run", "--", "airflow", "scheduler"]
