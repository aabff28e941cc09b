"""Podman for the container tests: setup (scripts/podman-setup), image builds with the host's
CA bundle and pip settings, and small wrappers over the podman CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "podman-setup"
# What pip in a build needs to reach the package index the way it does on this host.
HOST_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf", "/etc/xdg/pip")
CONTROLLER_IMAGE = "localhost/failover:test"


class PodmanUnavailable(Exception):
    """Podman cannot run containers here; the message says why."""


def setup(install: bool = True) -> str:
    """Run scripts/podman-setup (idempotent) and return the base image it made or found."""
    if not install and shutil.which("podman") is None:
        raise PodmanUnavailable("podman is not installed: run scripts/podman-setup")
    env = {**os.environ, "FAILOVER_PODMAN_NO_INSTALL": "0" if install else "1"}
    try:
        done = subprocess.run(
            [str(SETUP)], capture_output=True, text=True, timeout=900, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PodmanUnavailable(f"scripts/podman-setup did not finish: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PodmanUnavailable(f"scripts/podman-setup failed: {last}")
    return done.stdout.strip().splitlines()[-1]


def podman(*args: str, timeout: float = 120, check: bool = True, stderr: bool = False) -> str:
    """Run `podman ARGS`, return stdout (+ stderr); raise with stderr on failure when `check`."""
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: rc={done.returncode}\n{done.stderr}")
    return done.stdout + done.stderr if stderr else done.stdout


def build_args() -> list[str]:
    """The options that let RUN steps reach the package index as this host does."""
    args = ["--network", "host", "--format", "docker"]  # docker format keeps HEALTHCHECK
    for path in HOST_FILES:
        if os.path.exists(path):
            args += ["-v", f"{path}:{path}:ro"]
    return args


def build(dockerfile: str, tag: str, timeout: float = 600, **build_arg: str) -> float:
    """`podman build` of a Dockerfile from the repository root; returns the seconds it took."""
    extra = [f"--build-arg={k}={v}" for k, v in build_arg.items()]
    started = time.monotonic()
    podman(
        "build", "-q", *build_args(), *extra, "-f", dockerfile, "-t", tag, str(ROOT),
        timeout=timeout,
    )  # fmt: skip
    return time.monotonic() - started


def inspect(kind: str, name: str) -> dict[str, Any]:
    """`podman KIND inspect NAME` as a dict."""
    data: list[dict[str, Any]] = json.loads(podman(kind, "inspect", name))
    return data[0]


def image_size(tag: str) -> int:
    return int(podman("image", "inspect", "-f", "{{.Size}}", tag).strip())


def host_pid(container: str) -> int:
    """PID (in the host's namespace) of the container's PID 1; 0 when it is not running."""
    return int(podman("inspect", "-f", "{{.State.Pid}}", container).strip() or 0)


def remove_pod(name: str) -> None:
    """Remove a pod; retried, since a container restarting (restartPolicy) can race `rm`."""
    for _ in range(3):
        podman("pod", "rm", "-f", "-t", "0", name, check=False, timeout=60)
        done = subprocess.run(["podman", "pod", "exists", name], capture_output=True, check=False)
        if done.returncode != 0:
            return
        time.sleep(1)


def remove_container(name: str) -> None:
    podman("rm", "-f", "-t", "0", name, check=False, timeout=60)


def image_exists(tag: str) -> bool:
    done = subprocess.run(["podman", "image", "exists", tag], capture_output=True, check=False)
    return done.returncode == 0
