"""`check-config` warns when the Celery broker URL resolves to an address of the host it runs
on: run in the network namespace that holds the broker's address, in another one, and in the
root namespace (which holds the other end of the veth, not that address).

The broker's name resolves through /etc/netns/<ns>/hosts, which `ip netns exec` mounts over
/etc/hosts inside the namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..netns import Host, namespace_host

pytestmark = pytest.mark.chaos
WARNING = "AIRFLOW__CELERY__BROKER_URL points at this host"


@pytest.fixture
def other_host() -> Iterator[Host]:
    with namespace_host() as h:
        yield h


def check_config(prefix: list[str], broker_url: str, tmp_path: Path) -> str:
    env = {
        **os.environ,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW_HOME": str(tmp_path / "no-airflow"),
    }
    done = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "failover",
            "check-config",
            "--set",
            f"local.dir={tmp_path / 'state'}",
            "--set",
            'command=["true"]',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_broker_on_this_host_is_named_only_where_its_address_is(
    host: Host, other_host: Host, tmp_path: Path
) -> None:
    url = f"redis://:s3cret@{host.ns_ip}:6379/0"
    warned = check_config(host.exec_prefix(), url, tmp_path)
    assert f"{WARNING} ({host.ns_ip})" in warned and "s3cret" not in warned
    assert WARNING not in check_config(other_host.exec_prefix(), url, tmp_path)
    assert WARNING not in check_config([], url, tmp_path)  # root: holds host_ip, not ns_ip


def test_broker_name_resolving_to_this_host(host: Host, other_host: Host, tmp_path: Path) -> None:
    etc = Path("/etc/netns")
    made = []
    try:
        for h in (host, other_host):  # both namespaces resolve the name to `host`
            (etc / h.ns).mkdir(parents=True)
            made.append(etc / h.ns)
            (etc / h.ns / "hosts").write_text(f"127.0.0.1 localhost\n{host.ns_ip} broker.test\n")
        url = "amqp://u:p@rabbit.invalid:5672//;amqp://u:p@broker.test:5672//"
        assert f"{WARNING} (broker.test)" in check_config(host.exec_prefix(), url, tmp_path)
        assert WARNING not in check_config(other_host.exec_prefix(), url, tmp_path)
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
