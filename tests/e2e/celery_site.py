"""A CeleryExecutor site of real parts, each "host" a network namespace: the broker
(redis-server or rabbitmq-server, tests/e2e/brokers.py), one `airflow celery worker`, two
scheduler candidates under the controller.

The metadata DB and the Celery result backend are the PostgreSQL fixture, reached from each
namespace through a forwarder on its veth; the broker likewise (a forwarder per client host to
the broker's namespace), so cutting a host's veth cuts it from both. Used by test_celery.py
and bench/celery.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness import Cluster, wait_until
from ..netns import Forwarder, Host, namespace_host
from .brokers import BROKERS, Broker
from .conftest import DAEMON_SETTINGS, HERE, AirflowDb, migrated_db
from .test_airflow import rows

NODES = ("m1", "m2")
WORKER_CONCURRENCY = 2


@dataclass
class CelerySite:
    db: AirflowDb
    root: Path
    broker: Host
    hosts: dict[str, Host]  # m1, m2, worker
    pg_port: int
    kind: Broker = BROKERS["redis"]
    forwards: dict[str, tuple[Forwarder, Forwarder]] = field(default_factory=dict)
    broker_proc: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    cluster: Cluster | None = None

    def env(self, name: str | None) -> dict[str, str]:
        """Airflow's env on host `name` (None: the root namespace, where the test runs)."""
        if name is None:
            pg = f"127.0.0.1:{self.pg_port}"
            broker = f"{self.broker.ns_ip}:{self.kind.port}"
        else:
            pg_fwd, broker_fwd = self.forwards[name]
            pg = f"{self.hosts[name].host_ip}:{pg_fwd.listen_port}"
            broker = f"{self.hosts[name].host_ip}:{broker_fwd.listen_port}"
        dsn = self.db.dsn.replace(f"127.0.0.1:{self.pg_port}", pg)
        return self.db.env(
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=dsn.replace(
                "postgresql://", "postgresql+psycopg2://", 1
            ),
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__CORE__DAGS_FOLDER=str(HERE / "dags_celery"),
            AIRFLOW__CORE__PARALLELISM="128",  # the `beat` backlog never fills the executor
            AIRFLOW__CELERY__BROKER_URL=self.kind.url(broker),
            AIRFLOW__CELERY__RESULT_BACKEND="db+" + dsn,
            AIRFLOW__CELERY__WORKER_CONCURRENCY=str(WORKER_CONCURRENCY),
            AIRFLOW__CELERY__SYNC_PARALLELISM="1",
            AIRFLOW__CELERY__OPERATION_TIMEOUT="5",
            AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT="3600",
            AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD="10",
            FAILOVER_NODE=name or "test",
        )

    def start_broker(self) -> None:
        argv, env = self.kind.command(self.broker.ns_ip, self.root / self.kind.kind)
        log = open(self.root / f"{self.kind.kind}.log", "ab")
        self.broker_proc = subprocess.Popen(
            [*self.broker.exec_prefix(), *argv],
            env={**os.environ, **env},
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        wait_until(self.broker_up, 90, f"{self.kind.kind} to answer", 0.2)

    def broker_up(self) -> bool:
        return self.kind.answers(self.broker.ns_ip)

    def stop_broker(self) -> None:
        """A broker outage: the server killed (redis: its queue is lost, no persistence)."""
        assert self.broker_proc is not None
        os.killpg(self.broker_proc.pid, signal.SIGKILL)
        self.broker_proc.wait(timeout=10)

    def start_worker(self) -> None:
        log = open(self.root / "worker.log", "ab")
        self.worker = subprocess.Popen(
            [
                *self.hosts["worker"].exec_prefix(),
                self.db.binary,
                "celery",
                "worker",
                "--skip-serve-logs",
                "--without-mingle",
                "--without-gossip",
            ],
            # INFO: the worker's "ready." line (wait_worker_ready)
            env={**os.environ, **self.env("worker"), "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"},
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def make_cluster(self, settings: dict[str, str] | None = None) -> Cluster:
        """The two candidates (not started: `start_nodes`), each in its namespace."""
        c = Cluster(
            self.root / "daemons",
            nodes=NODES,
            cluster=f"cel{os.urandom(3).hex()}",
            settings={**DAEMON_SETTINGS, "backend": "postgres", **(settings or {})},
            command=(self.db.binary, "scheduler", "--skip-serve-logs"),
            env={},
        )
        plain_argv = c.argv
        c.argv = lambda node: self.hosts[node].exec_prefix() + plain_argv(node)  # type: ignore[method-assign]
        self.cluster = c
        return c

    def start_nodes(self) -> None:
        for node in NODES:
            self.restart(node)

    def restart(self, node: str) -> None:
        assert self.cluster is not None
        self.cluster.start(node, env=self.env(node))

    def trigger(self, run_id: str) -> None:
        """A run of the `slow` DAG (once the scheduler has parsed it)."""
        wait_until(
            lambda: rows(self.db.dsn, "SELECT 1 FROM serialized_dag WHERE dag_id = 'slow'"),
            120,
            "the slow DAG parsed",
            0.5,
        )
        done = subprocess.run(
            [self.db.binary, "dags", "trigger", "slow", "-r", run_id],
            env={**os.environ, **self.env(None)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop_all(timeout=40)
        for proc in (self.worker, self.broker_proc):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        for pair in self.forwards.values():
            for fwd in pair:
                fwd.close()


def missing_parts(binary: str, kind: str = "redis") -> str | None:
    """What this machine lacks for a Celery site, or None."""
    if missing := BROKERS[kind].missing():
        return missing
    python = str(Path(binary).with_name("python"))
    probe = [python, "-c", "import airflow.providers.celery, redis"]
    if subprocess.run(probe, capture_output=True, timeout=120, check=False).returncode != 0:
        return f"the Celery provider is not in {python}'s venv: run scripts/test (it installs it)"
    return None


def free_octets(count: int) -> list[int]:
    """`count` distinct octets X of 10.231.X.0/30 that no veth of this host uses now (other
    tests, soak runs among them, make namespaces at the same time)."""
    shown = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    used = {int(m) for m in re.findall(r"inet 10\.231\.(\d+)\.", shown)}
    return random.sample(sorted(set(range(20, 220)) - used), count)


@contextlib.contextmanager
def celery_site(server: Any, root: Path, kind: str = "redis") -> Iterator[CelerySite]:
    """The broker, the worker and two candidates, each in a namespace of its own; the worker
    and the broker are up (the candidates are started by `start_cluster`)."""
    octets = free_octets(4)
    with contextlib.ExitStack() as stack:
        db = migrated_db(server, root)
        broker = stack.enter_context(namespace_host(octets[0]))
        hosts = {
            name: stack.enter_context(namespace_host(octet))
            for name, octet in zip(("m1", "m2", "worker"), octets[1:], strict=True)
        }
        site = CelerySite(db, root, broker, hosts, server.port, BROKERS[kind])
        stack.callback(site.close)
        for name, h in hosts.items():
            site.forwards[name] = (
                Forwarder(h.host_ip, server.port),
                Forwarder(h.host_ip, site.kind.port, target_ip=broker.ns_ip),
            )
        site.start_broker()
        site.start_worker()
        yield site


def wait_worker_ready(site: CelerySite, timeout: float = 120) -> None:
    """The worker has connected to the broker (its log says `ready`)."""
    log = site.root / "worker.log"

    def ready() -> bool:
        assert site.worker is not None and site.worker.poll() is None, log.read_text()[-3000:]
        return log.exists() and " ready." in log.read_text(errors="replace")

    wait_until(ready, timeout, "the Celery worker ready", 0.5)
    time.sleep(0.5)
