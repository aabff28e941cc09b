"""Build `Settings` from defaults, a TOML file, `FAILOVER_*` env and CLI overrides.

Also reuses Airflow's own metadata DB setting when `metadata_dsn` is not given.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shlex
import subprocess
import types
import typing
from collections.abc import Mapping
from typing import Any

from failover.config import SECTIONS, Settings, validate
from failover.dsn import (
    has_password,
    is_loopback,
    is_mysql_dsn,
    looks_like_pooler,
    normalize_metadata_url,
    normalize_sqlalchemy_url,
    parse_dsn,
    redact_dsn,
)
from failover.dsncheck import check_lock_dsn, check_mysql, metadata_only, mysql_only
from failover.errors import ConfigError
from failover.tomlfile import key_origins, read_toml

ENV_PREFIX = "FAILOVER_"
# Env names that are not settings: set for children, or read by other tools (scripts/test).
ENV_IGNORED = {
    "FAILOVER_CONFIG",
    "FAILOVER_EPOCH",
    "FAILOVER_NODE_ROLE",
    "FAILOVER_CLUSTER_ROLE",
    "FAILOVER_SKIP_SETUP",
    "FAILOVER_VENV",
}
ENV_IGNORED_PREFIXES = ("FAILOVER_TEST_", "FAILOVER_KEEPER_")
AIRFLOW_CONN_VARS = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__SQL_ALCHEMY_CONN")


def settings_fields(cls: type[Any]) -> dict[str, Any]:
    """Public field name -> resolved type of a settings dataclass."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name] for f in dataclasses.fields(cls) if not f.metadata.get("internal")
    }


def load_settings(
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Settings:
    """Layer the sources, resolve the metadata DSN, validate, return the settings.

    An error names the setting as the user wrote it: its env var, file and line, or its
    override's label (`labels[key]`, e.g. `--node`; default `--set KEY`)."""
    env = os.environ if env is None else env
    origins: dict[str, str] = {}
    try:
        return _load(config_path, env, overrides or {}, labels or {}, origins)
    except ConfigError as err:
        if err.source != err.field or err.field not in origins:
            raise
        raise err.from_source(origins[err.field]) from err


def _load(
    config_path: str | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Any],
    labels: Mapping[str, str],
    origins: dict[str, str],
) -> Settings:
    raw: dict[str, Any] = {}
    path = config_path or env.get("FAILOVER_CONFIG")
    from_file: dict[str, Any] = {}
    if path:
        from_file, text = read_toml(path)
        origins.update(key_origins(path, from_file, text))
        _merge(raw, from_file, "file")
    _merge(raw, _from_env(env, origins), "env")
    for key, value in overrides.items():
        origins[key] = labels.get(key, f"--set {key}")
        _merge(raw, _nest(key, value), "cli")
    warnings: list[str] = []
    settings = _resolve_aws(_build(raw), env)
    if settings.metadata_dsn is None:
        settings = settings.replace(metadata_dsn=_airflow_dsn(env, warnings))
    else:
        settings = settings.replace(
            metadata_dsn=metadata_only("metadata_dsn", settings.metadata_dsn)
        )
    if settings.postgres.dsn:
        pg = dataclasses.replace(
            settings.postgres, dsn=_postgres_only("postgres.dsn", settings.postgres.dsn)
        )
        settings = settings.replace(postgres=pg)
    if settings.mysql.dsn:
        my = dataclasses.replace(settings.mysql, dsn=mysql_only("mysql.dsn", settings.mysql.dsn))
        settings = settings.replace(mysql=my)
    check_lock_dsn(settings)
    _check_postgres(settings, warnings)
    check_mysql(settings, warnings)
    _check_prewarm(settings, warnings)
    if path and _file_has_secret(from_file):
        check_private_file(path, "--config", settings.allow_insecure_permissions)
    return validate(settings.replace(warnings=tuple(warnings)))


def _check_prewarm(settings: Settings, warnings: list[str]) -> None:
    if not settings.airflow.prewarm:
        return
    cmd = settings.command
    if len(cmd) < 2 or os.path.basename(cmd[0]) != "airflow" or cmd[1] != "scheduler":
        warnings.append(
            "[airflow] prewarm only pre-warms `airflow scheduler`; "
            f"the command {' '.join(cmd)!r} is started cold"
        )


def _file_has_secret(data: Mapping[str, Any]) -> bool:
    for key, value in data.items():
        if isinstance(value, Mapping) and _file_has_secret(value):
            return True
        if (
            isinstance(value, str)
            and (key == "dsn" or key.endswith("_dsn"))
            and has_password(value)
        ):
            return True
    return False


def check_private_file(path: str, label: str, allow: bool) -> None:
    """Refuse a file holding secrets that group or others can read (unless allowed)."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError as err:
        raise ConfigError(label, f"cannot read {path}: {err.strerror}", "check the path") from err
    if mode & 0o077 and not allow:
        raise ConfigError(
            label,
            f"{path} holds secrets but is readable by group or others (mode {mode:04o})",
            f"chmod 600 {path}, or set allow_insecure_permissions = true",
        )


def _resolve_aws(settings: Settings, env: Mapping[str, str]) -> Settings:
    """`node = "imds"` and `secretsmanager:` DSNs, resolved once at load time."""
    wants_secret = [
        dsn
        for dsn in (settings.metadata_dsn, settings.postgres.dsn, settings.mysql.dsn)
        if dsn and dsn.startswith("secretsmanager:")
    ]
    iam = settings.postgres.iam_auth or settings.mysql.iam_auth
    if settings.node != "imds" and not wants_secret and not iam:
        return settings
    from failover import aws

    region = settings.aws.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if settings.node == "imds":
        identity = aws.imds_identity(settings.aws.imds_endpoint)
        settings = settings.replace(node=identity.instance_id)
        region = region or identity.region
    settings = settings.replace(aws=dataclasses.replace(settings.aws, region=region))
    if settings.metadata_dsn and settings.metadata_dsn.startswith("secretsmanager:"):
        settings = settings.replace(
            metadata_dsn=aws.resolve_secret("metadata_dsn", settings.metadata_dsn, region)
        )
    if settings.postgres.dsn and settings.postgres.dsn.startswith("secretsmanager:"):
        pg = dataclasses.replace(
            settings.postgres, dsn=aws.resolve_secret("postgres.dsn", settings.postgres.dsn, region)
        )
        settings = settings.replace(postgres=pg)
    if settings.mysql.dsn and settings.mysql.dsn.startswith("secretsmanager:"):
        my = dataclasses.replace(
            settings.mysql, dsn=aws.resolve_secret("mysql.dsn", settings.mysql.dsn, region)
        )
        settings = settings.replace(mysql=my)
    return settings


def _check_postgres(settings: Settings, warnings: list[str]) -> None:
    """Refuse a pooler for the lock; warn about plain-text connections to remote hosts."""
    dsns = {
        label: dsn
        for label, dsn in (
            ("metadata_dsn", settings.metadata_dsn),
            ("postgres.dsn", settings.lock_dsn),
        )
        if not is_mysql_dsn(dsn)
    }
    if settings.backend == "postgres" and settings.lock_dsn:
        info = parse_dsn(settings.lock_dsn, "postgres.dsn")
        if looks_like_pooler(info) and not settings.postgres.allow_pooler:
            raise ConfigError(
                "postgres.dsn",
                f"{info.host}:{info.port} looks like a connection pooler; session advisory "
                "locks need a direct connection",
                "point it at the database itself, or set [postgres] allow_pooler = true",
            )
    for label, dsn in dsns.items():
        if not dsn:
            continue
        info = parse_dsn(dsn, label)
        if info.params.get("sslmode") == "disable" and not is_loopback(info.host):
            warnings.append(
                f"{label}: sslmode=disable to remote host {info.host}: credentials and data "
                "travel in clear text (use sslmode=verify-full)"
            )


def _from_env(env: Mapping[str, str], origins: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_IGNORED:
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        # FAILOVER_KEEPER_DSN is the keeper's own; FAILOVER_KEEPER__LISTEN is [keeper] listen.
        if name.startswith(ENV_IGNORED_PREFIXES) and key.partition(".")[0] not in SECTIONS:
            continue
        section, _, sub = key.rpartition(".")
        if section and section not in SECTIONS:
            raise _unknown(name, section, list(SECTIONS))
        known = settings_fields(SECTIONS[section] if section else Settings)
        if sub not in known or sub in SECTIONS:
            raise _unknown(name, sub, [k for k in known if k not in SECTIONS])
        _merge(out, _nest(key, value, env_name=name), "env")
        origins[key] = name
    return out


def _nest(key: str, value: Any, env_name: str | None = None) -> dict[str, Any]:
    label = env_name or key
    if "." in key:
        section, _, sub = key.partition(".")
        if section not in SECTIONS:
            raise _unknown(label, section, list(SECTIONS))
        return {section: {sub: value}}
    return {key: value}


def _merge(into: dict[str, Any], new: Mapping[str, Any], source: str) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value, source)
        elif isinstance(value, Mapping):
            into[key] = dict(value)
        else:
            into[key] = value


def _unknown(label: str, name: str, choices: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    fix = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(choices))}"
    return ConfigError(label, f"unknown setting {name!r}", fix)


def _build(raw: Mapping[str, Any]) -> Settings:
    top = settings_fields(Settings)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in top:
            raise _unknown(key, key, list(top))
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    key, "must be a [section] table", f"write [{key}] with keys under it"
                )
            values[key] = _build_section(key, SECTIONS[key], value)
        else:
            values[key] = coerce(key, top[key], value)
    return Settings(**values)


def _build_section(section: str, cls: type[Any], raw: Mapping[str, Any]) -> Any:
    known = settings_fields(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        label = f"{section}.{key}"
        if key not in known:
            raise _unknown(label, key, list(known))
        values[key] = coerce(label, known[key], value)
    return cls(**values)


def coerce(label: str, kind: Any, value: Any) -> Any:
    """Turn a TOML or env value into the field's type, or say what is expected."""
    optional = False
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional, kind = True, args[0]
    if optional and (value is None or value == ""):
        return None
    try:
        if kind is bool:
            return _to_bool(value)
        if kind is int and not isinstance(value, bool):
            return int(value)
        if kind is float and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
        if typing.get_origin(kind) is tuple:
            return _to_argv(value)
    except (TypeError, ValueError, OverflowError):
        pass
    expected = getattr(kind, "__name__", str(kind))
    if typing.get_origin(kind) is tuple:
        expected = "a list of strings"
    raise ConfigError(label, f"expected {expected}, got {value!r}", "fix the value's type")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _to_argv(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        text = value.strip()
        parsed = json.loads(text) if text.startswith("[") else shlex.split(text)
        value = parsed
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(value)


def _postgres_only(label: str, dsn: str) -> str:
    normalized = normalize_sqlalchemy_url(dsn)
    if normalized is None:
        raise ConfigError(
            label,
            f"{redact_dsn(dsn)} is not a PostgreSQL DSN",
            "use postgresql://user@host:5432/db or key=value libpq form",
        )
    return normalized


def _airflow_dsn(env: Mapping[str, str], warnings: list[str]) -> str | None:
    """The metadata DB from Airflow's own settings (plain, `_CMD` or `_SECRET`)."""
    for var in AIRFLOW_CONN_VARS:
        value = env.get(var)
        if not value and env.get(var + "_CMD"):
            value = _run_conn_cmd(var + "_CMD", env[var + "_CMD"])
        if not value and env.get(var + "_SECRET"):
            value = _airflow_secret(var + "_SECRET", env)
        if not value:
            continue
        normalized = normalize_metadata_url(value)
        if normalized is None:
            warnings.append(
                f"{var} is {redact_dsn(value)}, neither PostgreSQL nor MySQL: no metadata DB for "
                "member tables and health (set metadata_dsn to enable them)"
            )
            return None
        return normalized
    return None


def _run_conn_cmd(var: str, command: str) -> str:
    try:
        done = subprocess.run(  # noqa: S602 - Airflow's _CMD contract is a shell command
            command, shell=True, capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise ConfigError(
            var, "command took longer than 30 s", "make it print the DSN quickly"
        ) from err
    if done.returncode != 0:
        raise ConfigError(
            var, f"command exited with {done.returncode}", "run it by hand and fix it"
        )
    return done.stdout.strip()


def _airflow_secret(var: str, env: Mapping[str, str]) -> str:
    """`_SECRET` names a key in Airflow's secrets backend: only Airflow can resolve it."""
    try:
        from airflow.configuration import conf
    except ImportError as err:
        raise ConfigError(
            var,
            "needs Airflow's secrets backend, but Airflow is not importable here",
            "install apache-airflow beside failover or set metadata_dsn",
        ) from err
    section = "database" if "DATABASE" in var else "core"
    value = conf.get(section, "sql_alchemy_conn", fallback=None)
    if not value:
        raise ConfigError(var, "Airflow returned no value", "check the secrets backend and key")
    return str(value)


def describe(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret redacted."""
    data: dict[str, Any] = {}
    for key in settings_fields(Settings):
        value = getattr(settings, key)
        if dataclasses.is_dataclass(value):
            section = {k: getattr(value, k) for k in settings_fields(type(value))}
            if section.get("dsn"):
                section["dsn"] = redact_dsn(section["dsn"])
            data[key] = section
        elif key == "metadata_dsn" and value:
            data[key] = redact_dsn(value)
        elif isinstance(value, tuple):
            data[key] = list(value)
        else:
            data[key] = value
    return data
