"""Load-time checks of the DSNs of the SQL backends beyond PostgreSQL's: the dialect of each
DSN (the lock database must speak its backend's), MySQL's proxy refusal and TLS warning."""

from __future__ import annotations

from failover.config import Settings
from failover.dsn import (
    TRUE_WORDS,
    is_loopback,
    is_mysql_dsn,
    looks_like_proxy,
    normalize_metadata_url,
    normalize_mysql_url,
    parse_dsn,
    redact_dsn,
)
from failover.errors import ConfigError


def check_lock_dsn(settings: Settings) -> None:
    """The lock database must speak the backend's dialect (metadata_dsn may be either)."""
    dsn = settings.lock_dsn
    if settings.backend not in ("postgres", "mysql") or not dsn:
        return
    if (settings.backend == "mysql") != is_mysql_dsn(dsn):
        field = f"{settings.backend}.dsn"
        want = "a MySQL" if settings.backend == "mysql" else "a PostgreSQL"
        raise ConfigError(
            field,
            f"{redact_dsn(dsn)} is not {want} DSN (the {settings.backend} backend locks there)",
            f"set [{settings.backend}] dsn to {want} database, or change backend",
        )


def check_mysql(settings: Settings, warnings: list[str]) -> None:
    """Refuse a proxy for the lock; warn about plain-text connections to remote hosts."""
    if settings.backend == "mysql" and settings.lock_dsn:
        info = parse_dsn(settings.lock_dsn, "mysql.dsn")
        if looks_like_proxy(info) and not settings.mysql.allow_proxy:
            raise ConfigError(
                "mysql.dsn",
                f"{info.host}:{info.port} looks like RDS Proxy or ProxySQL; named locks need "
                "a direct connection",
                "point it at the database itself, or set [mysql] allow_proxy = true",
            )
    if settings.mysql.ssl_verify_identity and not settings.mysql.ssl_ca:
        raise ConfigError(
            "mysql.ssl_verify_identity", "needs ssl_ca", "set [mysql] ssl_ca to the CA bundle"
        )
    for label, dsn in {
        "metadata_dsn": settings.metadata_dsn,
        "mysql.dsn": settings.mysql.dsn,
    }.items():
        if not is_mysql_dsn(dsn):
            continue
        info = parse_dsn(str(dsn), label)
        params = {k.lower(): v.lower() for k, v in info.params.items()}
        identity = (
            params.get("ssl_mode") == "verify_identity"
            or params.get("ssl_verify_identity", "") in TRUE_WORDS
        )
        if identity and not (settings.mysql.ssl_ca or params.get("ssl_ca")):
            raise ConfigError(
                label,
                "asks to verify the server's host name (ssl_mode=VERIFY_IDENTITY or "
                "ssl_verify_identity) without a CA bundle, and PyMySQL would then check no "
                "host name",
                "add ssl_ca=<CA bundle> to the DSN or set [mysql] ssl_ca",
            )
        tls = settings.mysql.ssl_ca or any(k.startswith("ssl") for k in info.params)
        if settings.mysql.iam_auth and not tls:
            raise ConfigError(
                "mysql.iam_auth",
                f"RDS accepts IAM tokens only over TLS, and {label} has none",
                "set [mysql] ssl_ca to the RDS CA bundle",
            )
        if not tls and not is_loopback(info.host):
            warnings.append(
                f"{label}: no verified TLS to remote host {info.host}: credentials and data "
                "travel in clear text, or encrypted to an unverified server where it offers TLS "
                "(set [mysql] ssl_ca)"
            )


def mysql_only(label: str, dsn: str) -> str:
    normalized = normalize_mysql_url(dsn)
    if normalized is None:
        raise ConfigError(
            label,
            f"{redact_dsn(dsn)} is not a MySQL DSN",
            "use mysql://user@host:3306/db (mysql+pymysql:// and mysql+mysqldb:// work too)",
        )
    return normalized


def metadata_only(label: str, dsn: str) -> str:
    normalized = normalize_metadata_url(dsn)
    if normalized is None:
        raise ConfigError(
            label,
            f"{redact_dsn(dsn)} is neither a PostgreSQL nor a MySQL DSN",
            "use postgresql://user@host:5432/db or mysql://user@host:3306/db",
        )
    return normalized
