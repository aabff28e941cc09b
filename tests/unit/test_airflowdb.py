"""Airflow settings and warnings read by failover (no Airflow needed)."""

from __future__ import annotations

from pathlib import Path

from failover.airflow.broker import bindable, broker_hosts, local_brokers
from failover.airflow.settings import (
    airflow_on_path,
    airflow_setting,
    environment_warnings,
    expected_hostname,
    health_threshold,
)


def test_settings_from_env_then_airflow_cfg(tmp_path: Path) -> None:
    (tmp_path / "airflow.cfg").write_text("[scheduler]\nscheduler_health_check_threshold = 45\n")
    env = {"AIRFLOW_HOME": str(tmp_path)}
    assert health_threshold(env) == 45.0
    env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD"] = "12"
    assert health_threshold(env) == 12.0
    assert health_threshold({"AIRFLOW_HOME": str(tmp_path / "none")}) == 30.0
    assert health_threshold({"AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "x"}) == 30.0
    assert airflow_setting(env, "core", "missing") is None


def test_warnings_for_local_broker_and_row_locking() -> None:
    env = {"AIRFLOW__CELERY__BROKER_URL": "redis://:s3cret@localhost:6379/0"}
    warnings = environment_warnings(env, has_metadata_db=True)
    assert any("brokers belong on their own cluster" in w for w in warnings)
    assert any("(localhost)" in w for w in warnings) and not any("s3cret" in w for w in warnings)
    assert any("could run several schedulers" in w for w in warnings)
    quiet = {
        "AIRFLOW__CELERY__BROKER_URL": "redis://redis.internal:6379/0",
        "AIRFLOW__SCHEDULER__USE_ROW_LEVEL_LOCKING": "False",
        "AIRFLOW_HOME": "/nonexistent",
    }
    assert environment_warnings(quiet, has_metadata_db=True, broker_at_home=lambda u: []) == []


def test_broker_hosts_of_every_url_form() -> None:
    assert broker_hosts("redis://:pw@redis-a:6379/0") == ["redis-a"]
    assert broker_hosts("amqp://u:p@rabbit1:5672//;amqp://u:p@rabbit2:5672//") == [
        "rabbit1",
        "rabbit2",
    ]
    assert broker_hosts("sentinel://s1:26379;sentinel://s2:26379") == ["s1", "s2"]
    assert broker_hosts("redis+socket:///run/redis.sock") == ["localhost"]
    assert broker_hosts("rediss://[::1]:6380/0") == ["::1"]
    assert broker_hosts("sqla+postgresql://db/airflow") == ["db"]
    assert broker_hosts("filesystem://") == [] and broker_hosts("") == []


def test_local_brokers_by_resolved_address() -> None:
    addresses = {"here": ["10.0.0.5"], "there": ["10.0.0.9"], "both": ["10.0.0.9", "10.0.0.5"]}
    mine = {"10.0.0.5"}

    def check(url: str) -> list[str]:
        return local_brokers(url, lambda h: addresses.get(h, []), mine.__contains__)

    assert check("redis://here:6379/0;redis://there:6379/0") == ["here"]
    assert check("amqp://both//") == ["both"]
    assert check("redis://unknown:6379/0") == []  # does not resolve: no warning
    assert local_brokers("redis://127.0.0.1:6379/0") == ["127.0.0.1"]  # real bind, loopback
    assert not bindable("192.0.2.1")  # TEST-NET-1: never an address of this host


def test_airflow_on_path(tmp_path: Path) -> None:
    assert airflow_on_path(["sh"], {"PATH": "/bin:/usr/bin"}) is None
    error = airflow_on_path(["airflow", "scheduler"], {"PATH": "/nonexistent"})
    assert error is not None and "not on PATH" in error and "pip install apache-airflow" in error
    plain = tmp_path / "plain"
    plain.write_text("x")
    plain.chmod(0o644)
    assert "not an executable" in (airflow_on_path([str(plain)], {}) or "")


def test_expected_hostname() -> None:
    assert expected_hostname({"AIRFLOW_HOME": "/nonexistent"})
    assert expected_hostname({"AIRFLOW__CORE__HOSTNAME_CALLABLE": "mymod.name"}) is None
    assert expected_hostname({"AIRFLOW__CORE__HOSTNAME_CALLABLE": "socket.getfqdn"})
