"""Database connection strings: normalize SQLAlchemy URLs, redact secrets, spot poolers
(PostgreSQL) and proxies (MySQL); MySQL URLs also become PyMySQL's connect arguments.

Pure string work: no driver import, so config and CLI stay fast and safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from failover.errors import ConfigError

POSTGRES_SCHEMES = ("postgresql", "postgres")
MYSQL_SCHEMES = ("mysql", "mariadb")  # any driver: +mysqldb, +pymysql, +mysqlconnector
POOLER_PORTS = (6432,)
PROXY_PORTS = (6033,)  # ProxySQL's client port
_KV_SECRET = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_KV_PAIR = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


@dataclass(frozen=True)
class DsnInfo:
    """The parts of a DSN that matter for safety checks (never the password)."""

    host: str
    port: int
    dbname: str
    user: str
    params: dict[str, str]


def normalize_sqlalchemy_url(url: str) -> str | None:
    """Return a libpq DSN for a PostgreSQL URL or key=value DSN, None if not PostgreSQL.

    `postgresql+psycopg2://...` (Airflow's form) becomes `postgresql://...`.
    """
    text = url.strip()
    if "://" not in text:
        return text if _KV_PAIR.search(text) else None
    scheme, _, rest = text.partition("://")
    base = scheme.split("+", 1)[0].lower()
    if base not in POSTGRES_SCHEMES:
        return None
    return f"postgresql://{rest}"


def normalize_mysql_url(url: str) -> str | None:
    """`mysql://...` for a MySQL / MariaDB SQLAlchemy URL (`mysql+mysqldb://`, `+pymysql`,
    `+mysqlconnector`, `mariadb+...://`), None for anything else."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.split("+", 1)[0].lower() not in MYSQL_SCHEMES:
        return None
    return f"mysql://{rest}"


def normalize_metadata_url(url: str) -> str | None:
    """The normalized DSN of a PostgreSQL or MySQL URL, None for other databases."""
    return normalize_mysql_url(url) or normalize_sqlalchemy_url(url)


def is_mysql_dsn(dsn: str | None) -> bool:
    return bool(dsn) and str(dsn).startswith("mysql://")


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by `***` (URI, key=value and query forms)."""
    text = dsn.strip()
    if "://" not in text:
        return _KV_SECRET.sub(r"\1***", text)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<unparseable DSN>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = "&".join(
        f"{k}=***" if k.lower() == "password" else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_dsn(dsn: str, label: str = "dsn") -> DsnInfo:
    """Host, port, database, user and other parameters of a libpq DSN (URI or key=value).

    Raises `ConfigError` naming `label` for a DSN that cannot be read; never shows the password.
    """
    try:
        return _parse_dsn(dsn)
    except ValueError as err:
        raise ConfigError(
            label, f"{redact_dsn(dsn)} is not a valid DSN ({err})", "fix the host, port or quoting"
        ) from None


def has_password(dsn: str) -> bool:
    """True when the DSN carries a password (URI userinfo, query or key=value)."""
    text = dsn.strip()
    if "://" not in text:
        return bool(_KV_SECRET.search(text))
    try:
        parts = urlsplit(text)
        query = dict(parse_qsl(parts.query))
    except ValueError:
        return True  # cannot tell: treat as secret
    return bool(parts.password) or "password" in {k.lower() for k in query}


def _port(value: str, default: int = 5432) -> int:
    port = int(value or default)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return port


def _parse_dsn(dsn: str) -> DsnInfo:
    text = dsn.strip()
    params: dict[str, str] = {}
    if "://" in text:
        parts = urlsplit(text)
        params = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
        netloc_port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        has_port = ":" in parts.netloc.rpartition("@")[2] and not netloc_port.endswith("]")
        host = unquote(parts.hostname or "") or params.get("host", "")
        user = unquote(parts.username or "") or params.get("user", "")
        dbname = unquote(parts.path.lstrip("/")) or params.get("dbname", "")
        default = 3306 if is_mysql_dsn(text) else 5432
        port_value = _port(netloc_port if has_port else params.get("port", ""), default)
    else:
        for key, value in _KV_PAIR.findall(text):
            params[key.lower()] = value.strip("'")
        host = params.get("host", "")
        user = params.get("user", "")
        dbname = params.get("dbname", "")
        port_value = _port(params.get("port", "5432"))
    params.pop("password", None)
    return DsnInfo(
        host=host or "localhost", port=port_value, dbname=dbname, user=user, params=params
    )


def looks_like_pooler(info: DsnInfo) -> bool:
    """True for PgBouncer's default port or a host that names a pooler."""
    host = info.host.lower()
    return info.port in POOLER_PORTS or "pgbouncer" in host or "pooler" in host or "proxy-" in host


def looks_like_proxy(info: DsnInfo) -> bool:
    """True for an RDS Proxy endpoint (`*.proxy-*.rds.amazonaws.com`) or ProxySQL's port:
    a proxy may pin, multiplex or move a session, and a named lock lives in one session."""
    host = info.host.lower()
    return info.port in PROXY_PORTS or ".proxy-" in host or "proxysql" in host


TRUE_WORDS = ("1", "true", "yes", "on", "required", "verify_identity")


def mysql_connect_args(dsn: str) -> dict[str, Any]:
    """PyMySQL's `connect()` arguments of `mysql://user:pw@host:3306/db?...`: host, port,
    user, password, database, charset, and TLS from `ssl_ca`, `ssl_cert`, `ssl_key`,
    `ssl_verify_identity` (also `ssl_mode=VERIFY_IDENTITY`). Other parameters are ignored."""
    parts = urlsplit(dsn.strip())
    params = {k.lower(): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    info = _parse_dsn(dsn)
    args: dict[str, Any] = {
        "host": info.host if info.host != "localhost" else "127.0.0.1",
        "port": info.port,
        "user": info.user,
        "password": unquote(parts.password or "") or params.get("password", ""),
        "database": info.dbname or None,
        "charset": params.get("charset", "utf8mb4"),
    }
    if params.get("unix_socket"):
        args["unix_socket"] = params["unix_socket"]
    # As keyword arguments: given `ssl_verify_cert` / `ssl_verify_identity`, PyMySQL rebuilds
    # its TLS settings from `ssl_ca` / `ssl_cert` / `ssl_key` alone (an `ssl` dict is dropped,
    # and the system's CA store would be trusted instead of the configured bundle).
    files = {key: params[key] for key in ("ssl_ca", "ssl_cert", "ssl_key") if params.get(key)}
    mode = params.get("ssl_mode", "").lower()
    verify = params.get("ssl_verify_identity", "").lower() in TRUE_WORDS
    if files or mode in ("required", "verify_ca", "verify_identity"):
        args.update(files)
        args["ssl_verify_cert"] = "ssl_ca" in files or mode in ("verify_ca", "verify_identity")
        args["ssl_verify_identity"] = verify or mode == "verify_identity"
        if not files and not args["ssl_verify_cert"]:
            args["ssl"] = {"ca": None}  # `ssl_mode=required`: encrypted, not verified
    return args


def with_params(dsn: str, **params: str) -> str:
    """The URL with these query parameters set (empty values are left out)."""
    parts = urlsplit(dsn.strip())
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += [(k, v) for k, v in params.items() if v]
    return urlunsplit(parts._replace(query=urlencode(query)))


def is_loopback(host: str) -> bool:
    return host.startswith(("127.", "/")) or host in ("localhost", "::1", "")


def dsn_with_password(dsn: str, password: str) -> str:
    """The DSN with `password` set (for a child that cannot call us for a fresh token)."""
    text = dsn.strip()
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    if "://" not in text:
        return f"{_KV_SECRET.sub('', text).strip()} password='{escaped}'"
    parts = urlsplit(text)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
    query.append(("password", password))
    return urlunsplit(parts._replace(query=urlencode(query)))


def scrub(text: str, dsn: str) -> str:
    """`text` (a driver's error, say) with every form of the DSN's password replaced by ***."""
    secrets: set[str] = set()
    raw = dsn.strip()
    if "://" in raw:
        netloc = raw.split("://", 1)[1].split("/", 1)[0]
        userinfo = netloc.rpartition("@")[0]
        if ":" in userinfo:
            secrets.add(userinfo.split(":", 1)[1])
        query = raw.partition("?")[2]
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key.lower() == "password":
                secrets.add(value)
    else:
        for key, value in _KV_PAIR.findall(raw):
            if key.lower() == "password":
                secrets.add(value)
                secrets.add(value.strip("'"))
    for secret in sorted(secrets, key=len, reverse=True):
        for form in {secret, unquote(secret)}:
            if len(form) >= 3:
                text = text.replace(form, "***")
    return text


ZK_HOST_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+")


def check_zk_hosts(hosts: str | None) -> None:
    """`[zookeeper] hosts`: `host:port,...[/chroot]` (ConfigError naming the bad part)."""
    example = 'e.g. hosts = "zk1:2181,zk2:2181/airflow"'
    if not hosts or not hosts.strip():
        raise ConfigError("zookeeper.hosts", "the zookeeper backend needs servers", example)
    servers, slash, chroot = hosts.strip().partition("/")
    path = f"/{chroot}"
    odd = any(c.isspace() or not c.isprintable() for c in path)
    if slash and (path.endswith("/") or "//" in path or odd):
        raise ConfigError("zookeeper.hosts", f"bad chroot {path!r}", example)
    for server in (part.strip() for part in servers.split(",")):
        host, colon, port = server.rpartition(":")
        if not colon or server.endswith("]"):
            host, colon, port = server, "", ""
        bad_port = colon and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536)
        if not ZK_HOST_RE.fullmatch(host) or bad_port:
            raise ConfigError("zookeeper.hosts", f"bad server {server!r}", example)


def check_zk_tls(
    use_ssl: bool, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> None:
    """`[zookeeper]` TLS files: only with use_ssl, and a certificate only with its key."""
    files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    for name, value in files.items():
        if value and not use_ssl:
            raise ConfigError(
                f"zookeeper.{name}", "is set but use_ssl is false", "set use_ssl = true or drop it"
            )
    if bool(cert_file) != bool(key_file):
        raise ConfigError(
            "zookeeper.cert_file" if key_file else "zookeeper.key_file",
            "a client certificate needs its key and the key its certificate",
            "set both cert_file and key_file, or neither",
        )
