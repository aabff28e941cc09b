"""The mysql backend's settings: Airflow's MySQL URLs, `[mysql]` options, proxy refusal, TLS,
Secrets Manager JSON, and the registry's MySQL dialect (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from failover.aws import dsn_from_secret
from failover.backends import dsn_scheme, open_metadata
from failover.dsn import mysql_connect_args, parse_dsn, redact_dsn
from failover.errors import ConfigError
from failover.sources import describe, load_settings


def load(env: dict[str, str] | None = None, **cli: object):
    return load_settings(None, env=env or {}, overrides=cli)


@pytest.mark.parametrize("driver", ["mysqldb", "pymysql", "mysqlconnector"])
def test_airflow_mysql_urls_become_the_metadata_and_lock_dsn(driver: str) -> None:
    url = f"mysql+{driver}://air:s3cret@127.0.0.1:3306/airflow?charset=utf8mb4"
    s = load({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url}, backend="mysql")
    assert s.metadata_dsn == "mysql://air:s3cret@127.0.0.1:3306/airflow?charset=utf8mb4"
    assert s.lock_dsn == s.metadata_dsn
    assert "s3cret" not in str(describe(s))
    assert dsn_scheme(url) == "mysql"


def test_env_dsn_wins_and_defaults() -> None:
    s = load(
        {
            "FAILOVER_MYSQL__DSN": "mysql+pymysql://u:pw@127.0.0.1/lockdb",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "mysql://u:pw@127.0.0.1/airflow",
        },
        backend="mysql",
    )
    assert s.lock_dsn == "mysql://u:pw@127.0.0.1/lockdb"
    assert parse_dsn(s.lock_dsn).port == 3306
    assert (s.mysql.allow_proxy, s.mysql.iam_auth, s.mysql.ssl_ca) == (False, False, None)


def test_backend_needs_a_mysql_database() -> None:
    with pytest.raises(ConfigError) as err:
        load(backend="mysql")
    assert err.value.field == "mysql.dsn"
    with pytest.raises(ConfigError) as err:
        load({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://u:pw@h/db"}, backend="mysql")
    assert err.value.field == "mysql.dsn" and "pw@" not in str(err.value)
    with pytest.raises(ConfigError) as err:  # the postgres backend cannot lock in MySQL
        load({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "mysql://u:pw@h/db"}, backend="postgres")
    assert err.value.field == "postgres.dsn"


def test_proxy_refused_unless_allowed() -> None:
    dsn = "mysql://u:pw@air.proxy-c1x2.eu-west-1.rds.amazonaws.com:3306/airflow?ssl_ca=/ca.pem"
    with pytest.raises(ConfigError) as err:
        load(backend="mysql", **{"mysql.dsn": dsn})
    assert err.value.field == "mysql.dsn" and "allow_proxy" in str(err.value)
    s = load(backend="mysql", **{"mysql.dsn": dsn, "mysql.allow_proxy": "true"})
    assert s.mysql.allow_proxy


def test_tls_options_and_plain_text_warning() -> None:
    s = load(backend="mysql", **{"mysql.dsn": "mysql://u:pw@db.example/airflow"})
    assert any("no verified TLS" in w for w in s.warnings)
    s = load(
        backend="mysql",
        **{
            "mysql.dsn": "mysql://u:pw@db.example/airflow",
            "mysql.ssl_ca": "/etc/ssl/rds.pem",
            "mysql.ssl_verify_identity": "true",
        },
    )
    assert not any("no verified TLS" in w for w in s.warnings)
    with pytest.raises(ConfigError) as err:
        load(
            backend="mysql",
            **{"mysql.dsn": "mysql://u@127.0.0.1/a", "mysql.ssl_verify_identity": "true"},
        )
    assert err.value.field == "mysql.ssl_verify_identity"
    args = mysql_connect_args("mysql://u:p%40ss@db:3307/a?ssl_ca=/ca.pem&ssl_verify_identity=1")
    assert args["password"] == "p@ss" and args["port"] == 3307
    assert args["ssl_ca"] == "/ca.pem" and args["ssl_verify_identity"] is True


def test_host_name_verification_without_a_ca_bundle_is_refused() -> None:
    """PyMySQL checks no host name when no CA is given: asking for it in the DSN alone would
    accept any publicly trusted certificate for any name."""
    for query in ("ssl_mode=VERIFY_IDENTITY", "ssl_verify_identity=true"):
        with pytest.raises(ConfigError) as err:
            load(backend="mysql", **{"mysql.dsn": f"mysql://u:pw@db.example/a?{query}"})
        assert err.value.field == "mysql.dsn" and "ssl_ca" in str(err.value)
    load(
        backend="mysql",
        **{"mysql.dsn": "mysql://u:pw@db.example/a?ssl_mode=VERIFY_IDENTITY&ssl_ca=/ca.pem"},
    )
    load(
        backend="mysql",
        **{"mysql.dsn": "mysql://u:pw@db.example/a?ssl_verify_identity=1", "mysql.ssl_ca": "/c"},
    )


def test_the_configured_ca_bundle_is_the_one_trusted() -> None:
    """PyMySQL builds its TLS context from our arguments: the DSN's `ssl_ca` (one CA here),
    not the system's whole store; `ssl_mode=required` alone encrypts without verifying."""
    import ssl
    from pathlib import Path

    import pymysql

    one_ca = sorted(Path("/etc/ssl/certs").glob("*.pem"))[0]
    dsn = f"mysql://u@db.example/a?ssl_ca={one_ca}&ssl_verify_identity=1"
    conn = pymysql.connections.Connection(**mysql_connect_args(dsn), defer_connect=True)
    assert conn.ctx.cert_store_stats()["x509_ca"] == 1
    assert conn.ctx.verify_mode == ssl.CERT_REQUIRED and conn.ctx.check_hostname
    args = mysql_connect_args("mysql://u@db.example/a?ssl_mode=REQUIRED")
    conn = pymysql.connections.Connection(**args, defer_connect=True)
    assert conn.ssl and conn.ctx.verify_mode == ssl.CERT_NONE


def test_secrets_manager_json_for_mysql() -> None:
    secret = (
        '{"engine": "mysql", "username": "air", "password": "p/w", "host": "db", "dbname": "af"}'
    )
    dsn = dsn_from_secret("metadata_dsn", secret)
    assert dsn == "mysql://air:p%2Fw@db:3306/af"
    assert redact_dsn(dsn) == "mysql://air:***@db:3306/af"
    no_engine = '{"username": "a", "password": "b", "host": "h"}'
    assert dsn_from_secret("mysql.dsn", no_engine).startswith("mysql://")
    assert dsn_from_secret("postgres.dsn", no_engine).startswith("postgresql://")


def test_registry_gives_the_mysql_dialect_without_connecting() -> None:
    s = load(
        {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "mysql+mysqldb://u:pw@127.0.0.1:1/a"},
        backend="zookeeper",
        **{"zookeeper.hosts": "127.0.0.1:2181"},
    )
    meta = open_metadata(s, str(s.metadata_dsn))
    assert type(meta).__name__ == "MySQLMetadata"


def test_long_names_allowed_with_a_mysql_metadata_db(tmp_path: Path) -> None:
    node = "n" * 60  # too long for PostgreSQL application names, hashed in MySQL lock names
    s = load(backend="mysql", node=node, **{"mysql.dsn": "mysql://u@127.0.0.1/a"})
    assert s.node == node


def test_iam_auth_needs_tls() -> None:
    with pytest.raises(ConfigError) as err:
        load(backend="mysql", **{"mysql.dsn": "mysql://u@db.example/a", "mysql.iam_auth": "true"})
    assert err.value.field == "mysql.iam_auth" and "ssl_ca" in str(err.value)
