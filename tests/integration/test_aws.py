"""AWS integration against moto in server mode on loopback: IMDSv2 identity, Secrets Manager
DSNs, RDS IAM tokens refreshed before expiry, clear errors for missing secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("boto3", reason="the aws extra (boto3, moto) is part of the dev extras")

from moto.server import ThreadedMotoServer

from failover import aws
from failover.backends.postgres.session import Session, SessionTimings
from failover.errors import ConfigError
from failover.sources import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_imds_identity_and_node(moto_url: str, aws_env: dict[str, str]) -> None:
    identity = aws.imds_identity(moto_url)
    assert identity == aws.Identity("i-fake", "us-east-1a", "us-east-1")
    s = load_settings(None, env={"FAILOVER_NODE": "imds", "FAILOVER_AWS__IMDS_ENDPOINT": moto_url})
    assert s.node == "i-fake"


def test_imds_unreachable_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"node: \"imds\" needs the EC2 instance metadata"):
        aws.imds_identity("http://127.0.0.1:9", timeout=0.5)
    with pytest.raises(ConfigError, match="not an http URL"):
        aws.imds_identity("file:///etc/passwd")


def test_dsn_from_secrets_manager(aws_env: dict[str, str]) -> None:
    import boto3

    client = boto3.client("secretsmanager")
    plain = client.create_secret(
        Name="failover/plain", SecretString="postgresql://u:pw1@db1:5432/airflow"
    )
    rds = client.create_secret(
        Name="failover/rds",
        SecretString=json.dumps(
            {"username": "u", "password": "p@ss w", "host": "db2", "port": 5433, "dbname": "af"}
        ),
    )
    env = {**aws_env, "FAILOVER_METADATA_DSN": f"secretsmanager:{plain['ARN']}"}
    assert load_settings(None, env=env).metadata_dsn == "postgresql://u:pw1@db1:5432/airflow"
    env["FAILOVER_METADATA_DSN"] = f"secretsmanager:{rds['ARN']}"
    assert load_settings(None, env=env).metadata_dsn == "postgresql://u:p%40ss%20w@db2:5433/af"


def test_missing_secret_is_a_clear_error_without_values(aws_env: dict[str, str]) -> None:
    env = {**aws_env, "FAILOVER_METADATA_DSN": "secretsmanager:failover/nope"}
    with pytest.raises(ConfigError) as err:
        load_settings(None, env=env)
    text = str(err.value)
    assert err.value.field == "metadata_dsn" and "ResourceNotFoundException" in text
    assert "secretsmanager:GetSecretValue" in text and "\n" not in text


def test_iam_tokens_are_refreshed_before_expiry(aws_env: dict[str, str]) -> None:
    now = [0.0]
    tokens = aws.IamTokens(
        "mydb.example.us-east-1.rds.amazonaws.com", 5432, "failover", "us-east-1", lambda: now[0]
    )
    first = tokens.password()
    assert first.startswith("mydb.example.us-east-1.rds.amazonaws.com:5432/?")
    assert "Action=connect" in first and "DBUser=failover" in first and "X-Amz-Signature=" in first
    now[0] = 60.0
    assert tokens.password() == first  # still fresh
    now[0] = aws.TOKEN_REFRESH + 1  # before the 15 min expiry: a new one
    assert aws.TOKEN_REFRESH < aws.TOKEN_LIFETIME
    later = tokens.password()
    assert later and tokens.made_at == now[0]


def test_every_reconnect_asks_for_a_fresh_password(pg_server: Any) -> None:
    """The password provider is called on each new connection (how IAM tokens are used)."""
    calls: list[int] = []

    def password() -> str:
        calls.append(1)
        return "failover-test-pw"

    session = Session(pg_server.dsn(user="failover"), "t", SessionTimings(10, 2), password=password)
    try:
        assert session.query("SELECT 1") == [(1,)]
        session.close()
        assert session.query("SELECT 1") == [(1,)]
        assert len(calls) == 2
    finally:
        session.close()


def test_mysql_dsn_from_secrets_manager(aws_env: dict[str, str]) -> None:
    import boto3

    client = boto3.client("secretsmanager")
    rds = client.create_secret(
        Name="failover/rds-mysql",
        SecretString=json.dumps(
            {"engine": "mysql", "username": "u", "password": "p@ss", "host": "db3", "dbname": "af"}
        ),
    )
    env = {
        **aws_env,
        "FAILOVER_BACKEND": "mysql",
        "FAILOVER_MYSQL__DSN": f"secretsmanager:{rds['ARN']}",
    }
    s = load_settings(None, env=env)
    assert s.lock_dsn == "mysql://u:p%40ss@db3:3306/af"


def test_mysql_every_reconnect_asks_for_a_fresh_password(my_server: Any) -> None:
    """The MySQL session calls the password provider (IAM tokens) on each new connection."""
    from failover.backends.mysql.session import Session as MySession
    from failover.backends.mysql.session import SessionTimings as MyTimings

    calls: list[int] = []

    def password() -> str:
        calls.append(1)
        return "failover-test-pw"

    session = MySession(my_server.dsn(user="failover"), MyTimings(10, 2), password=password)
    try:
        assert session.query("SELECT 1") == [(1,)]
        session.close()
        assert session.query("SELECT 1") == [(1,)]
        assert len(calls) == 2
    finally:
        session.close()
