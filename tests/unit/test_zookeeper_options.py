"""ZooKeeper settings: validation, the auth file, and what reaches `KazooClient` (ACL, TLS,
retry policy) - no server needed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st
from kazoo.security import make_digest_acl

from failover.backends.zookeeper.conn import (
    ZkConnection,
    ZkOptions,
    call_retry,
    client_kwargs,
    read_auth_file,
    zk_options,
)
from failover.config import Settings, ZooKeeperSettings, validate, zookeeper_session_seconds
from failover.errors import ConfigError
from failover.sources import load_settings


def zk(**kw: Any) -> Settings:
    top = {k: kw.pop(k) for k in list(kw) if k in ("lease_seconds", "loop_seconds")}
    return Settings(
        backend="zookeeper", zookeeper=ZooKeeperSettings(**{"hosts": "zk1:2181", **kw}), **top
    )


def refused(settings: Settings) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate(settings)
    return info.value


@pytest.mark.parametrize(
    ("kw", "field", "text"),
    [
        ({"hosts": ""}, "zookeeper.hosts", "needs servers"),
        ({"hosts": "zk1:2181,,zk2"}, "zookeeper.hosts", "bad server ''"),
        ({"hosts": "zk1:99999"}, "zookeeper.hosts", "bad server 'zk1:99999'"),
        ({"hosts": "zk1:2181/airflow/"}, "zookeeper.hosts", "bad chroot '/airflow/'"),
        ({"session_timeout_seconds": 500}, "zookeeper.session_timeout_seconds", "at most 300"),
        ({"session_timeout_seconds": 3}, "zookeeper.session_timeout_seconds", "no time to renew"),
        ({"retry_max_tries": 0}, "zookeeper.retry_max_tries", "1 to 100"),
        ({"retry_delay_seconds": 2.0}, "zookeeper.retry_max_delay_seconds", "not below"),
        ({"retry_max_delay_seconds": 4.0}, "zookeeper.retry_max_delay_seconds", "over a third"),
        ({"ca_file": "/ca.pem"}, "zookeeper.ca_file", "use_ssl is false"),
        ({"use_ssl": True, "cert_file": "/c.pem"}, "zookeeper.key_file", "needs its key"),
    ],
)
def test_bad_zookeeper_settings_name_the_field_and_fix(kw: Any, field: str, text: str) -> None:
    err = refused(zk(**kw))
    assert err.field == field and text in str(err) and err.fix, str(err)
    assert "\n" not in str(err)


def test_good_zookeeper_settings() -> None:
    s = validate(zk(hosts="zk1:2181,[::1]:2181,zk3/airflow/prod", lease_seconds=6.0))
    assert zookeeper_session_seconds(s) == 6.0
    s = validate(zk(session_timeout_seconds=8, use_ssl=True, cert_file="c", key_file="k"))
    assert zookeeper_session_seconds(s) == 8.0
    assert validate(Settings(zookeeper=ZooKeeperSettings(retry_max_tries=0))).backend == "local"


def test_zookeeper_settings_from_env(tmp_path: Path) -> None:
    env = {
        "FAILOVER_BACKEND": "zookeeper",
        "FAILOVER_ZOOKEEPER__HOSTS": "zk1:2181/x",
        "FAILOVER_ZOOKEEPER__RETRY_MAX_TRIES": "5",
        "FAILOVER_ZOOKEEPER__RETRY_MAX_DELAY_SECONDS": "0.5",
    }
    s = load_settings(None, env=env)
    assert (s.zookeeper.retry_max_tries, s.zookeeper.retry_max_delay_seconds) == (5, 0.5)


def test_auth_file_is_read_and_never_quoted(tmp_path: Path) -> None:
    good = tmp_path / "auth"
    good.write_text("\n  failover:pa:ss-w0rd \n")
    assert read_auth_file(str(good)) == ("failover", "pa:ss-w0rd")
    bad = tmp_path / "bad"
    bad.write_text("only-a-secret-without-colon\n")
    with pytest.raises(ConfigError) as info:
        read_auth_file(str(bad))
    assert "only-a-secret" not in str(info.value) and "zookeeper.auth_file" in str(info.value)
    with pytest.raises(ConfigError, match=r"cannot read .*missing"):
        read_auth_file(str(tmp_path / "missing"))


def options(tmp_path: Path, **zk_kw: Any) -> ZkOptions:
    auth = tmp_path / "auth"
    auth.write_text("failover:s3cret\n")
    auth.chmod(0o600)
    settings = validate(zk(auth_file=str(auth), **zk_kw))
    return zk_options(settings)


def test_acl_tls_and_retry_reach_the_client(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("key\n")
    key.chmod(0o600)
    opts = options(
        tmp_path,
        use_ssl=True,
        ca_file="/etc/zk/ca.pem",
        cert_file="/etc/zk/client.pem",
        key_file=str(key),
    )
    assert "s3cret" not in repr(opts)
    made: dict[str, Any] = {}

    class FakeClient:
        def __init__(self, **kwargs: Any) -> None:
            made.update(kwargs)

        def add_listener(self, listener: Any) -> None:
            made["listener"] = listener

    conn = ZkConnection(opts, factory=FakeClient)
    assert made["hosts"] == "zk1:2181" and made["timeout"] == 10.0
    assert made["auth_data"] == [("digest", "failover:s3cret")]
    assert made["default_acl"] == [make_digest_acl("failover", "s3cret", all=True)]
    assert conn.acl == made["default_acl"]
    assert (made["use_ssl"], made["ca"], made["certfile"], made["keyfile"]) == (
        True,
        "/etc/zk/ca.pem",
        "/etc/zk/client.pem",
        str(key),
    )
    assert made["verify_certs"] is True
    assert made["connection_retry"]["max_tries"] == -1  # kazoo gives up for good otherwise
    assert made["connection_retry"]["max_delay"] == 1.0
    assert isinstance(made["logger"], logging.Logger)
    conn.closed = True  # nothing was started


def test_plain_connection_has_no_acl_or_tls(tmp_path: Path) -> None:
    kwargs = client_kwargs(zk_options(validate(zk())), logging.getLogger("x"))
    assert "auth_data" not in kwargs and "default_acl" not in kwargs
    assert kwargs["use_ssl"] is False and "ca" not in kwargs


def test_call_retry_is_bounded_by_tries_and_the_backend_timeout(tmp_path: Path) -> None:
    opts = options(tmp_path, retry_max_tries=4)
    policy = call_retry(opts)
    assert (policy.max_tries, policy.deadline, policy.max_delay) == (4, 2.0, 1.0)
    assert call_retry(opts, retry=False).max_tries == 1


@fuzz_settings(max_examples=300, deadline=None)
@given(
    hosts=st.text(max_size=40),
    numbers=st.dictionaries(
        st.sampled_from(
            [
                "session_timeout_seconds",
                "retry_max_tries",
                "retry_delay_seconds",
                "retry_max_delay_seconds",
            ]
        ),
        st.one_of(
            st.integers(-5, 10**6),
            st.floats(allow_nan=False, allow_infinity=False, width=32),
            st.text(max_size=5),
        ),
        max_size=4,
    ),
    flags=st.dictionaries(
        st.sampled_from(["use_ssl", "ca_file", "cert_file", "key_file"]),
        st.one_of(st.booleans(), st.text(max_size=8)),
        max_size=4,
    ),
)
def test_any_zookeeper_section_loads_or_is_a_one_line_config_error(
    hosts: str, numbers: dict[str, Any], flags: dict[str, Any]
) -> None:
    overrides = {"backend": "zookeeper", "zookeeper.hosts": hosts}
    overrides |= {f"zookeeper.{k}": v for k, v in {**numbers, **flags}.items()}
    try:
        s = load_settings(None, env={}, overrides=overrides)
    except ConfigError as err:
        assert err.field and "\n" not in str(err)
    else:
        assert s.zookeeper.hosts and "\n" not in s.zookeeper.hosts


def test_secret_files_must_be_private(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text("failover:s3cret\n")
    auth.chmod(0o644)
    with pytest.raises(ConfigError, match=r"zookeeper.auth_file: .* readable by group or others"):
        zk_options(validate(zk(auth_file=str(auth))))
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o640)
    with pytest.raises(ConfigError, match=r"zookeeper.key_file: .*\(chmod 600 "):
        zk_options(validate(zk(use_ssl=True, cert_file="c.pem", key_file=str(key))))
