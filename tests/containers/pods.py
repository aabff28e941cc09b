"""The EKS sidecar form under `podman kube play`: docker/k8s/scheduler-sidecar.yaml made into
one pod per candidate, with the test's DSN, token, images and ports substituted.

What changes from the manifest, and why (podman 4.3 is not a kubelet):
* the native sidecar (an init container with restartPolicy: Always, Kubernetes >= 1.29) becomes
  the pod's first regular container: podman runs init containers to completion first;
* env from a Secret / fieldRef and the ConfigMap / Secret volumes become literal values and
  host files (the values are the test's own); the emptyDir becomes a host directory per pod
  (podman makes an emptyDir a named volume that every pod of that name would share); `hostNetwork: true` reaches the PostgreSQL
  fixture on loopback, and each pod gets its own HTTP port (one host network);
* the scheduler container runs the controller image with tests/probe.py as its child (a
  stand-in for `airflow scheduler` that starts in ~0.1 s and that the sampler can find).
Everything else (commands, socket path, the shared emptyDir, users, probes) is the manifest's.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..harness import read_records, tagged_processes
from .podman import CONTROLLER_IMAGE, ROOT, podman, remove_pod

MANIFEST = ROOT / "docker" / "k8s" / "scheduler-sidecar.yaml"
CONFIG = ROOT / "docker" / "k8s" / "config.yaml"
PROBE = ROOT / "tests" / "probe.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str) -> int:
    """Status code of GET http://127.0.0.1:PORT/PATH; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def _config_toml() -> str:
    (configmap,) = [
        d for d in yaml.safe_load_all(CONFIG.read_text()) if d and d["kind"] == "ConfigMap"
    ]
    return str(configmap["data"]["failover.toml"])


@dataclass
class CandidatePod:
    """One candidate: a pod of a failover container and a scheduler (keeper) container."""

    name: str
    port: int
    workdir: Path

    @property
    def pod(self) -> str:
        return f"{self.name}-pod-0"  # what podman names a Deployment's (first) pod

    @property
    def run(self) -> Path:
        return self.workdir / "run"  # the pod's emptyDir

    @property
    def failover(self) -> str:
        return f"{self.pod}-failover"

    @property
    def scheduler(self) -> str:
        return f"{self.pod}-scheduler"

    def status(self, path: str = "/leader") -> int:
        return http_status(self.port, path)

    def role(self) -> str:
        """The daemon's role from /status ("down" when it does not answer)."""
        return str(self._status().get("role", "down"))

    def warm_standby(self) -> bool:
        """A standby whose keeper container has connected (only such a standby can lead at
        once: a freshly restarted one may win the lock before its keeper reconnects, and
        then gives leadership up with a cool-down; see bench/results/containers.md)."""
        status = self._status()
        return status.get("role") == "standby" and bool(status["child"]["warm_keeper"])

    def _status(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=2) as r:
                return dict(json.load(r))
        except OSError:
            return {}


@dataclass
class PodPair:
    """Two candidate pods of one cluster on the PostgreSQL fixture."""

    dsn: str
    tag: str
    workdir: Path
    records: Path
    pods: list[CandidatePod] = field(default_factory=list)

    def manifest(self, pod: CandidatePod, image: str = CONTROLLER_IMAGE) -> dict[str, Any]:
        """The Deployment of docker/k8s/scheduler-sidecar.yaml, made playable for `pod`."""
        (deployment,) = [
            d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "Deployment"
        ]
        deployment = copy.deepcopy(deployment)
        deployment["metadata"]["name"] = pod.name
        deployment["spec"]["replicas"] = 1
        spec = deployment["spec"]["template"]["spec"]
        spec["hostNetwork"] = True
        (sidecar,) = spec.pop("initContainers")
        sidecar.pop("restartPolicy")
        sidecar["image"] = image
        sidecar.pop("ports")  # no port mappings on the host network: the probes name the port
        for probe_kind in ("livenessProbe", "readinessProbe"):
            sidecar[probe_kind]["httpGet"]["port"] = pod.port
        sidecar["env"] = [_literal(e, pod, self.dsn) for e in sidecar["env"]]
        # The image's ENV FAILOVER_HTTP__LISTEN beats the config file: one port per pod here.
        sidecar["env"].append({"name": "FAILOVER_HTTP__LISTEN", "value": f"127.0.0.1:{pod.port}"})
        (scheduler,) = spec["containers"]
        keeper = scheduler["command"][: scheduler["command"].index("--") + 1]
        probe = ["python", "/probe/probe.py", "--tag", self.tag, "--record", "/records/records"]
        scheduler["command"] = [*keeper, *probe, "--fork", "1"]
        scheduler["image"] = image
        scheduler.pop("resources", None)
        spec["containers"] = [sidecar, scheduler]
        scheduler["volumeMounts"] += [
            {"name": "probe", "mountPath": "/probe/probe.py", "readOnly": True},
            {"name": "records", "mountPath": "/records"},
        ]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["failover-run"]  # podman: a named volume, shared by pods
        volumes["failover-run"] = {"name": "failover-run", "hostPath": {"path": str(pod.run)}}
        toml = {"path": str(pod.workdir / "failover.toml"), "type": "File"}
        volumes["config"] = {"name": "config", "hostPath": toml}
        volumes["secret"] = {"name": "secret", "hostPath": {"path": str(pod.workdir / "secret")}}
        volumes["probe"] = {"name": "probe", "hostPath": {"path": str(PROBE), "type": "File"}}
        volumes["records"] = {"name": "records", "hostPath": {"path": str(self.records.parent)}}
        spec["volumes"] = list(volumes.values())
        for mount in sidecar["volumeMounts"]:
            mount.pop("subPath", None)  # the hostPath is the file itself
        return deployment

    def add(self, name: str, image: str = CONTROLLER_IMAGE) -> CandidatePod:
        """Write the pod's files and `podman kube play` it."""
        pod = CandidatePod(name=name, port=free_port(), workdir=self.workdir / name)
        (pod.workdir / "secret").mkdir(parents=True)
        (pod.workdir / "failover.toml").write_text(_config_toml())
        token = pod.workdir / "secret" / "token"
        token.write_text(f"{uuid.uuid4().hex}\n")
        uid = self.manifest(pod, image)["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
        pod.run.mkdir()
        for path in (pod.workdir / "secret", token, pod.run):
            os.chown(path, uid, 0)
        token.chmod(0o400)
        played = pod.workdir / "pod.yaml"
        played.write_text(yaml.safe_dump(self.manifest(pod, image), sort_keys=False))
        self.pods.append(pod)
        podman("kube", "play", str(played), timeout=120)
        return pod

    def leader(self) -> CandidatePod | None:
        """The one pod whose /leader answers 200 (None when none or both do)."""
        leaders = [p for p in self.pods if p.status("/leader") == 200]
        return leaders[0] if len(leaders) == 1 else None

    def one_tree(self) -> tuple[CandidatePod, str] | None:
        """(leader pod, epoch) when exactly one pod leads and only its probe tree is alive."""
        leader = self.leader()
        procs = tagged_processes(self.tag)
        owners = {(v["node"], v["epoch"]) for v in procs.values()}
        if leader is None or len(procs) != 2 or len(owners) != 1:  # probe + its grandchild
            return None
        ((node, epoch),) = owners
        return (leader, epoch) if node == leader.pod else None

    def started(self, pod: CandidatePod, after_epoch: str) -> dict[str, str] | None:
        """The probe's `start` record in `pod` with an epoch newer than `after_epoch`."""
        for r in read_records(self.records):
            if r["word"] == "start" and r["node"] == pod.pod and int(r["epoch"]) > int(after_epoch):
                return r
        return None

    def other(self, pod: CandidatePod) -> CandidatePod:
        (other,) = [p for p in self.pods if p is not pod]
        return other

    def close(self) -> None:
        for pod in self.pods:
            remove_pod(pod.pod)

    def logs(self) -> str:
        out = []
        for pod in self.pods:
            for ctr in (pod.failover, pod.scheduler):
                text = podman("logs", "--tail", "40", ctr, check=False, timeout=30, stderr=True)
                out.append(f"--- {ctr}\n{text}")
        return "\n".join(out)


def _literal(env: dict[str, Any], pod: CandidatePod, dsn: str) -> dict[str, Any]:
    """An env entry with its valueFrom (Secret, fieldRef) replaced by the test's value."""
    if "valueFrom" not in env:
        return env
    ref = env["valueFrom"]
    if ref.get("fieldRef", {}).get("fieldPath") == "metadata.name":
        return {"name": env["name"], "value": pod.pod}
    if ref.get("secretKeyRef", {}).get("key") == "metadata_dsn":
        return {"name": env["name"], "value": dsn}
    raise AssertionError(f"the test does not know how to fill env {env['name']}: {ref}")


def boottime() -> float:
    """The clock tests/probe.py stamps its records with (same kernel inside containers)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
