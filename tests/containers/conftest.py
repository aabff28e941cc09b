"""Session fixtures of the container tests: podman prepared (or the tests skipped, saying why)
and the controller image built once from docker/Dockerfile."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .podman import CONTROLLER_IMAGE, PodmanUnavailable, build, setup

BUILD_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="session")
def base_image() -> str:
    """The Python base image (scripts/podman-setup); skips the container tests without podman."""
    try:
        return setup(install=os.environ.get("FAILOVER_SKIP_SETUP") != "1")
    except PodmanUnavailable as exc:
        pytest.skip(f"containers: {exc}")


@pytest.fixture(scope="session")
def controller_image(base_image: str) -> Iterator[str]:
    """docker/Dockerfile built on the base image, tagged localhost/failover:test."""
    BUILD_SECONDS[CONTROLLER_IMAGE] = build(
        "docker/Dockerfile", CONTROLLER_IMAGE, PYTHON_IMAGE=base_image
    )
    yield CONTROLLER_IMAGE
