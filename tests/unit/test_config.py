"""Settings: layering, validation errors that name the field and the fix, Airflow DSN reuse."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from failover.dsn import looks_like_pooler, normalize_sqlalchemy_url, parse_dsn, redact_dsn
from failover.errors import ConfigError
from failover.sources import describe, load_settings

BASE: dict[str, str] = {}


def load(tmp_path: Path, toml: str | None = None, env: dict[str, str] | None = None, **cli: object):
    path = None
    if toml is not None:
        path = tmp_path / "f.toml"
        path.write_text(toml)
        path.chmod(0o600)
    return load_settings(str(path) if path else None, env={**BASE, **(env or {})}, overrides=cli)


def test_defaults(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert (s.cluster, s.backend, s.command) == ("airflow", "local", ("airflow", "scheduler"))
    assert (s.lease_seconds, s.loop_seconds, s.stop_timeout_seconds) == (10.0, 1.0, 30.0)
    assert s.http.listen == "127.0.0.1:8787"
    assert s.metadata_dsn is None


def test_layers_file_then_env_then_cli(tmp_path: Path) -> None:
    toml = 'cluster = "file"\nlease_seconds = 20\n[http]\nlisten = ""\n[log]\nlevel = "debug"\n'
    s = load(tmp_path, toml)
    assert (s.cluster, s.lease_seconds, s.http.listen, s.log.level) == ("file", 20.0, "", "debug")
    s = load(tmp_path, toml, env={"FAILOVER_CLUSTER": "env", "FAILOVER_LOG__LEVEL": "error"})
    assert (s.cluster, s.log.level, s.lease_seconds) == ("env", "error", 20.0)
    s = load(tmp_path, toml, env={"FAILOVER_CLUSTER": "env"}, cluster="cli")
    assert s.cluster == "cli"


def test_command_from_env_json_and_shell_forms(tmp_path: Path) -> None:
    assert load(tmp_path, env={"FAILOVER_COMMAND": '["a", "b c"]'}).command == ("a", "b c")
    assert load(tmp_path, env={"FAILOVER_COMMAND": "a 'b c'"}).command == ("a", "b c")


@pytest.mark.parametrize(
    ("toml", "field", "words"),
    [
        ("lease_seconds = 3\n", "lease_seconds", "leaves no time to renew"),
        ("loop_seconds = 0\n", "loop_seconds", "greater than 0"),
        ("stop_timeout_seconds = 0\n", "stop_timeout_seconds", "greater than 0"),
        ("stop_timeout_seconds = -1\n", "stop_timeout_seconds", "greater than 0"),
        ('node = "bad name!"\n', "node", "not a valid name"),
        ('node = "a:b"\n', "node", "not a valid name"),
        ('backend = "etcd"\n', "backend", "unknown backend"),
        ("self_fence_margin_seconds = 7.5\n", "self_fence_margin_seconds", "before the next renew"),
        ("self_fence_margin_seconds = 0.1\n", "self_fence_margin_seconds", "below 0.2"),
        ("command = []\n", "command", "is empty"),
        ('lease_seconds = "ten"\n', "lease_seconds", "expected float"),
        ('backend = "zookeeper"\n', "zookeeper.hosts", "needs servers"),
        ('backend = "postgres"\n', "postgres.dsn", "needs a database"),
        ('table_prefix = "x; drop"\n', "table_prefix", "not a safe SQL prefix"),
        ("max_fast_failures = 0\n", "max_fast_failures", "at least 1"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, toml: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, toml)
    assert err.value.field == field
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_keys_suggest_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'lease_seconds'"):
        load(tmp_path, "lease_second = 5\n")
    with pytest.raises(ConfigError, match="did you mean 'listen'"):
        load(tmp_path, "[http]\nlisen = 'x'\n")
    with pytest.raises(ConfigError, match=r"FAILOVER_LOOP_SECOND.*did you mean 'loop_seconds'"):
        load(tmp_path, env={"FAILOVER_LOOP_SECOND": "1"})
    with pytest.raises(ConfigError, match="did you mean 'zookeeper'"):
        load(tmp_path, env={"FAILOVER_ZOOKEPER__HOSTS": "x"})


def test_bad_toml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load(tmp_path, 'cluster = "a"\nlease_seconds = = 3\n')


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*nope\.toml"):
        load_settings(str(tmp_path / "nope.toml"), env=BASE)


def test_config_from_env_path(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('cluster = "viaenv"\n')
    assert load_settings(None, env={**BASE, "FAILOVER_CONFIG": str(path)}).cluster == "viaenv"


def test_airflow_dsn_forms(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://air:s3cret@db.example:5432/airflow"
    s = load(tmp_path, env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url})
    assert s.metadata_dsn == "postgresql://air:s3cret@db.example:5432/airflow"
    s = load(tmp_path, env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": f"echo {url}"})
    assert s.metadata_dsn == "postgresql://air:s3cret@db.example:5432/airflow"
    s = load(tmp_path, env={"AIRFLOW__CORE__SQL_ALCHEMY_CONN": url})
    assert s.metadata_dsn is not None
    s = load(tmp_path, env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "mssql+pyodbc://u:pw@h/db"})
    assert s.metadata_dsn is None
    assert "neither PostgreSQL nor MySQL" in s.warnings[0] and "pw" not in s.warnings[0]
    # metadata_dsn given explicitly wins over Airflow's.
    s = load(
        tmp_path,
        env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url, "FAILOVER_METADATA_DSN": "postgres://x/y"},
    )
    assert s.metadata_dsn == "postgresql://x/y"


def test_airflow_cmd_failure_and_secret_without_airflow(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CONN_CMD: command exited with 3"):
        load(tmp_path, env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": "exit 3"})
    with pytest.raises(ConfigError, match="CONN_SECRET: needs Airflow"):
        load(tmp_path, env={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET": "key"})


def test_unknown_metadata_dsn_refused_without_leaking(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "metadata_dsn = 'mssql://u:hunter2@h/db'\n")
    assert err.value.field == "metadata_dsn" and "hunter2" not in str(err.value)


def test_describe_redacts(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "metadata_dsn = 'postgresql://u:hunter2@h/db'\n"
        "[postgres]\ndsn = 'host=h password=hunter2'\n",
    )
    text = repr(describe(s))
    assert "hunter2" not in text and "***" in text


def test_dsn_helpers() -> None:
    assert normalize_sqlalchemy_url("postgres://h/db") == "postgresql://h/db"
    assert normalize_sqlalchemy_url("postgresql+asyncpg://h/db") == "postgresql://h/db"
    assert normalize_sqlalchemy_url("sqlite:////x.db") is None
    assert normalize_sqlalchemy_url("host=h dbname=d") == "host=h dbname=d"
    assert redact_dsn("postgresql://u:p%40ss@h:1/d?password=x&sslmode=require") == (
        "postgresql://u:***@h:1/d?password=***&sslmode=require"
    )
    assert redact_dsn("host=h password='a b' user=u") == "host=h password=*** user=u"
    info = parse_dsn("postgresql://u:p@pgbouncer.internal:6432/airflow")
    assert (info.host, info.port, info.dbname, info.user) == (
        "pgbouncer.internal",
        6432,
        "airflow",
        "u",
    )
    assert looks_like_pooler(info)
    assert not looks_like_pooler(parse_dsn("host=db port=5432 dbname=a"))


def test_secret_config_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("metadata_dsn = 'postgresql://u:hunter2@db/airflow'\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        load_settings(str(path), env={})
    assert err.value.field == "--config" and f"chmod 600 {path}" in str(err.value)
    assert "hunter2" not in str(err.value)
    path.chmod(0o600)
    assert load_settings(str(path), env={}).metadata_dsn
    path.chmod(0o640)
    path.write_text(path.read_text() + "allow_insecure_permissions = true\n")
    assert load_settings(str(path), env={}).allow_insecure_permissions
    plain = tmp_path / "p.toml"
    plain.write_text("metadata_dsn = 'postgresql://u@db/airflow'\n")  # no secret: any mode
    plain.chmod(0o644)
    assert load_settings(str(plain), env={}).metadata_dsn


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p@h:99999/d",
        "postgresql://u:p@h:abc/d",
        "host=h port=x password=p",
        "postgresql://u:p@h:0/d",
    ],
)
def test_unreadable_dsn_is_a_config_error_without_the_password(tmp_path: Path, dsn: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, env={"FAILOVER_BACKEND": "postgres", "FAILOVER_POSTGRES__DSN": dsn})
    assert err.value.field == "postgres.dsn" and "not a valid DSN" in str(err.value)
    assert "=p " not in str(err.value) and ":p@" not in str(err.value)


def test_dsn_with_password() -> None:
    from failover.dsn import dsn_with_password

    assert dsn_with_password("postgresql://u@h:5432/d?sslmode=require", "t/k=n") == (
        "postgresql://u@h:5432/d?sslmode=require&password=t%2Fk%3Dn"
    )
    assert (
        dsn_with_password("host=h user=u password=old", "n'ew") == "host=h user=u password='n\\'ew'"
    )
    assert "old" not in dsn_with_password("postgresql://u@h/d?password=old", "new")


def test_infinite_number_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"max_fast_failures \(.*f\.toml line 1\): expected int"):
        load(tmp_path, "max_fast_failures = inf\n")


def test_sslmode_disable_to_a_remote_host_is_warned(tmp_path: Path) -> None:
    remote = load(
        tmp_path, env={"FAILOVER_METADATA_DSN": "postgresql://u@db.example.com/a?sslmode=disable"}
    )
    assert any("sslmode=disable to remote host db.example.com" in w for w in remote.warnings)
    local = load(
        tmp_path, env={"FAILOVER_METADATA_DSN": "postgresql://u@127.0.0.1/a?sslmode=disable"}
    )
    assert local.warnings == ()
    verified = load(
        tmp_path,
        env={"FAILOVER_METADATA_DSN": "postgresql://u@db.example.com/a?sslmode=verify-full"},
    )
    assert verified.warnings == ()


def test_scrub_removes_every_form_of_the_password() -> None:
    from failover.dsn import scrub

    dsn = "postgresql://u:s3cr%zzet@db/a"
    assert (
        scrub('invalid percent-encoded token: "s3cr%zzet"', dsn)
        == 'invalid percent-encoded token: "***"'
    )
    assert "p@ss" not in scrub("auth failed for p@ss", "postgresql://u:p%40ss@db/a")
    assert (
        scrub("bad password=hunter22 here", "host=h password=hunter22") == "bad password=*** here"
    )
    assert scrub("nothing secret", "postgresql://u@db/a") == "nothing secret"


def test_db_unreachable_resign_seconds(tmp_path: Path) -> None:
    from failover.config import zookeeper_db_resign_seconds

    zk = {"FAILOVER_BACKEND": "zookeeper", "FAILOVER_ZOOKEEPER__HOSTS": "zk1:2181"}
    assert zookeeper_db_resign_seconds(load(tmp_path, env=zk)) == 20.0  # 2 x lease
    assert zookeeper_db_resign_seconds(load(tmp_path, env=zk, lease_seconds=6)) == 12.0
    key = "FAILOVER_ZOOKEEPER__DB_UNREACHABLE_RESIGN_SECONDS"
    assert zookeeper_db_resign_seconds(load(tmp_path, env={**zk, key: "0"})) == 0.0  # never
    assert zookeeper_db_resign_seconds(load(tmp_path, env={**zk, key: "45"})) == 45.0
    for value, words in (("5", "below lease_seconds (10 s)"), ("-1", "not 0"), ("inf", "not 0")):
        with pytest.raises(ConfigError) as err:
            load(tmp_path, env={**zk, key: value})
        assert err.value.field == "zookeeper.db_unreachable_resign_seconds"
        assert words in str(err.value) and "\n" not in str(err.value)


def test_prewarm_settings(tmp_path: Path) -> None:
    from failover.daemon import prewarm_args

    s = load(tmp_path)
    assert (s.airflow.prewarm, s.airflow.prewarm_max_age_hours) == (False, 6.0)
    assert prewarm_args(s) == ()
    s = load(tmp_path, env={"FAILOVER_AIRFLOW__PREWARM": "true"})
    assert prewarm_args(s) == ("--prewarm", "--prewarm-max-age", "21600")
    assert not any("prewarm" in w for w in s.warnings)
    s = load(tmp_path, "[airflow]\nprewarm = true\nprewarm_max_age_hours = 0\n")
    assert prewarm_args(s)[-1] == "0"
    with pytest.raises(ConfigError, match=r"airflow\.prewarm_max_age_hours.*negative"):
        load(tmp_path, "[airflow]\nprewarm_max_age_hours = -1\n")
    s = load(tmp_path, "command = ['celery', 'worker']\n[airflow]\nprewarm = true\n")
    assert any("prewarm only pre-warms `airflow scheduler`" in w for w in s.warnings)


def test_health_session_gives_up_within_the_lease(tmp_path: Path) -> None:
    """The health read's tcp_user_timeout is half the lease, so a silent network cannot hold
    a tick past the keeper's self-fence deadline (the session connects lazily: no server)."""
    from failover.daemon import _health_source

    s = load(tmp_path, env={"FAILOVER_METADATA_DSN": "postgresql://u@db.example/af"})
    table = _health_source(s.replace(lease_seconds=6.0))
    assert table is not None and table.session.timings.lease == 6.0
    assert table.release_orphans is not None


def test_names_that_postgresql_would_cut_are_refused(tmp_path: Path) -> None:
    pg = {"FAILOVER_METADATA_DSN": "postgresql://u@db.example/af"}
    node = "ip-10-0-12-34.eu-west-1.compute.internal"  # 40 characters
    with pytest.raises(ConfigError, match=r"node.*too long for PostgreSQL.*len\(cluster\) \+"):
        load(tmp_path, env={**pg, "FAILOVER_NODE": node})
    assert load(tmp_path, env={"FAILOVER_NODE": node}).node == node  # local: no PG names
    assert load(tmp_path, env={**pg, "FAILOVER_NODE": "i-0123456789abcdef0"}).metadata_dsn


def test_errors_name_the_source_the_user_typed(tmp_path: Path) -> None:
    """Env var, file and line, `--set KEY` or the flag; `field` stays the setting's name."""
    env_error = _raised(lambda: load(tmp_path, env={"FAILOVER_LEASE_SECONDS": "abc"}))
    assert str(env_error).startswith("FAILOVER_LEASE_SECONDS: expected float, got 'abc'")
    env_rule = _raised(lambda: load(tmp_path, env={"FAILOVER_LEASE_SECONDS": "2"}))
    assert str(env_rule).startswith("FAILOVER_LEASE_SECONDS: 2 s leaves no time to renew")
    file_rule = _raised(lambda: load(tmp_path, 'cluster = "a"\n\nlease_seconds = 2\n'))
    assert str(file_rule).startswith(f"lease_seconds ({tmp_path / 'f.toml'} line 3): 2 s leaves")
    section = _raised(lambda: load(tmp_path, "[http]\n# x\nlisten = 5\n"))
    assert str(section).startswith(f"http.listen ({tmp_path / 'f.toml'} line 3): expected str")
    cli = _raised(lambda: load(tmp_path, lease_seconds="abc"))
    assert str(cli).startswith("--set lease_seconds: expected float")
    assert {e.field for e in (env_error, env_rule, file_rule, cli)} == {"lease_seconds"}
    flag = _raised(
        lambda: load_settings(None, env={}, overrides={"node": "bad!"}, labels={"node": "--node"})
    )
    assert str(flag).startswith("--node: 'bad!' is not a valid name") and flag.field == "node"


def _raised(call: Callable[[], object]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        call()
    return err.value


def _error(tmp_path: Path, toml: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, toml)
    return err.value


def test_choices_are_listed_as_words_not_a_tuple(tmp_path: Path) -> None:
    text = str(_error(tmp_path, 'backend = "etcd"\n'))
    assert (
        "use one of local, postgres, mysql, zookeeper" in text and "(" not in text.split("use")[1]
    )
    assert "use one of auto, json, console" in str(_error(tmp_path, '[log]\nformat = "x"\n'))


def test_startup_checks_refuse_without_creating_anything(tmp_path: Path) -> None:
    """What `failover run` refuses at start, `check-config` refuses too (same function)."""
    from failover.preflight import startup_checks

    ok = load(tmp_path, local={"dir": str(tmp_path / "new" / "state")}, command=["true"])
    assert startup_checks(ok, {"PATH": "/usr/bin:/bin"}) is None
    assert not (tmp_path / "new").exists()
    missing = ok.replace(command=("no-such-program-22",))
    with pytest.raises(ConfigError, match=r"^command: 'no-such-program-22' is not on PATH"):
        startup_checks(missing, {"PATH": "/usr/bin:/bin"})
    (tmp_path / "file").write_text("")
    blocked = load(tmp_path, command=["true"], **{"local.dir": str(tmp_path / "file" / "s")})
    with pytest.raises(ConfigError, match=r"^local.dir: cannot create .*not a writable directory"):
        startup_checks(blocked, {"PATH": "/usr/bin:/bin"})
    token = tmp_path / "token"
    token.write_text("short")
    token.chmod(0o600)
    short = ok.replace(http=dataclasses.replace(ok.http, token_file=str(token)))
    with pytest.raises(ConfigError, match="shorter than 16 characters"):
        startup_checks(short, {"PATH": "/usr/bin:/bin"})


def test_variables_of_scripts_test_are_not_settings(tmp_path: Path) -> None:
    env = {"FAILOVER_SKIP_SETUP": "1", "FAILOVER_VENV": ".venv", "FAILOVER_TEST_AIRFLOW": "x"}
    assert load(tmp_path, env=env).cluster == "airflow"


def test_keeper_section_env_is_read_while_keeper_internal_env_is_ignored(tmp_path: Path) -> None:
    """FAILOVER_KEEPER__LISTEN (the sidecar manifests' setting) was swallowed by the ignored
    FAILOVER_KEEPER_ prefix: the daemon never listened and the pod form could not start."""
    env = {"FAILOVER_KEEPER__LISTEN": "/run/failover/keeper.sock", "FAILOVER_KEEPER_DSN": "x"}
    assert load(tmp_path, env=env).keeper.listen == "/run/failover/keeper.sock"
