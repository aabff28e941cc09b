"""`check-config` on Airflow 3: the major from the venv, the shared JWT secret, the execution
API listener, 2.x leftovers, and the group's commands."""

from __future__ import annotations

import socket
from pathlib import Path

from failover.airflow.airflow3 import airflow_major, execution_api_url, warnings


def fake_airflow(root: Path, version: str) -> dict[str, str]:
    """A venv layout with an `airflow` console script and its package metadata."""
    (root / "bin").mkdir(parents=True)
    python = root / "bin" / "python"
    python.write_text("")
    script = root / "bin" / "airflow"
    script.write_text(f"#!{python}\nimport sys\n")
    script.chmod(0o755)
    (root / "lib" / "python3.11" / "site-packages" / f"apache_airflow-{version}.dist-info").mkdir(
        parents=True
    )
    return {"PATH": str(root / "bin"), "AIRFLOW_HOME": str(root / "home")}


GROUP = [("scheduler", ["airflow", "scheduler"]), ("dag-processor", ["airflow", "dag-processor"])]


def test_major_from_the_venv(tmp_path: Path) -> None:
    assert airflow_major(["airflow"], fake_airflow(tmp_path / "a", "3.3.2")) == 3
    assert airflow_major(["airflow"], fake_airflow(tmp_path / "b", "2.11.2")) == 2
    assert airflow_major(["airflow"], {"PATH": str(tmp_path)}) is None


def test_airflow3_without_shared_secret_or_listener_warns(tmp_path: Path) -> None:
    env = fake_airflow(tmp_path, "3.3.2")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{port}"
    env["AIRFLOW__WEBSERVER__WEB_SERVER_PORT"] = "8080"
    out = "\n".join(warnings([GROUP[0]], env))
    assert "without `airflow dag-processor`" in out
    assert "jwt_secret is set nowhere" in out and "Invalid auth token" in out
    assert f"execution API http://127.0.0.1:{port}/execution/" in out and "nothing listens" in out
    assert "AIRFLOW__WEBSERVER__WEB_SERVER_PORT" in out


def test_airflow3_set_up_right_has_no_warning(tmp_path: Path) -> None:
    env = fake_airflow(tmp_path, "3.3.2")
    env["AIRFLOW__API_AUTH__JWT_SECRET_CMD"] = "cat /run/secrets/jwt"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        env["AIRFLOW__WORKERS__EXECUTION_API_SERVER_URL"] = (
            f"http://127.0.0.1:{listener.getsockname()[1]}/execution/"
        )
        assert execution_api_url(env) == env["AIRFLOW__WORKERS__EXECUTION_API_SERVER_URL"]
        assert warnings(GROUP, env) == []


def test_airflow2_and_webserver(tmp_path: Path) -> None:
    env = fake_airflow(tmp_path, "2.11.2")
    assert warnings([GROUP[0]], env) == []
    web = warnings([GROUP[0], ("web", ["airflow", "webserver"])], env)
    assert len(web) == 1 and "api-server" in web[0]


def test_default_group_on_airflow3_is_scheduler_and_dag_processor(tmp_path: Path) -> None:
    from failover.sources import load_settings

    three = fake_airflow(tmp_path / "3", "3.3.2")
    assert [n for n, _ in load_settings(env=three).group] == ["scheduler", "dag-processor"]
    two = fake_airflow(tmp_path / "2", "2.11.2")
    assert [n for n, _ in load_settings(env=two).group] == ["scheduler"]
    own = load_settings(env={**three, "FAILOVER_COMMAND": "airflow scheduler -n 5"})
    assert [n for n, _ in own.group] == ["scheduler"]  # an explicit command stays alone
