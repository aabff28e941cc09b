"""Airflow settings and warnings read by failover (no Airflow needed)."""

from __future__ import annotations

from pathlib import Path

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
    env = {"AIRFLOW__CELERY__BROKER_URL": "redis://localhost:6379/0"}
    warnings = environment_warnings(env, has_metadata_db=True)
    assert any("brokers belong on their own cluster" in w for w in warnings)
    assert any("could run several schedulers" in w for w in warnings)
    quiet = {
        "AIRFLOW__CELERY__BROKER_URL": "redis://redis.internal:6379/0",
        "AIRFLOW__SCHEDULER__USE_ROW_LEVEL_LOCKING": "False",
        "AIRFLOW_HOME": "/nonexistent",
    }
    assert environment_warnings(quiet, has_metadata_db=True) == []


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
