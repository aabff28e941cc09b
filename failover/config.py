"""One typed, immutable settings object and the rules that make it safe.

Sources, lowest first: defaults, TOML file, env `FAILOVER_*`, CLI flags (see `sources.py`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failover.child.group import main_first, validate_components
from failover.dsn import check_zk_hosts, check_zk_tls
from failover.errors import ConfigError

# The backend names settings accept; each has a package in failover/backends/ (the registry).
BACKENDS = ("local", "postgres", "mysql", "zookeeper")
LOG_FORMATS = ("auto", "json", "console")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
PREFIX_RE = re.compile(r"^[a-z_][a-z0-9_]{0,30}$")


def _doc(text: str) -> dict[str, str]:
    return {"help": text}


def default_local_dir() -> str:
    state = os.environ.get("XDG_STATE_HOME")
    if state:
        return str(Path(state) / "failover")
    if os.geteuid() == 0:
        return "/var/lib/failover"
    return str(Path.home() / ".local" / "state" / "failover")


@dataclass(frozen=True)
class PostgresSettings:
    dsn: str | None = field(
        default=None, metadata=_doc("lock connection DSN (default: metadata_dsn)")
    )
    allow_pooler: bool = field(
        default=False, metadata=_doc("allow a DSN that looks like a pooler (port 6432, pgbouncer)")
    )
    notify: bool = field(default=True, metadata=_doc("LISTEN/NOTIFY so standbys wake at once"))
    iam_auth: bool = field(
        default=False, metadata=_doc("RDS IAM auth: a fresh token as the password (extra aws)")
    )


@dataclass(frozen=True)
class MySQLSettings:
    dsn: str | None = field(
        default=None, metadata=_doc("lock connection DSN mysql://... (default: metadata_dsn)")
    )
    allow_proxy: bool = field(
        default=False,
        metadata=_doc(
            "allow a DSN that looks like RDS Proxy or ProxySQL (named locks need a "
            "direct connection)"
        ),
    )
    iam_auth: bool = field(
        default=False, metadata=_doc("RDS IAM auth: a fresh token as the password (extra aws)")
    )
    ssl_ca: str | None = field(default=None, metadata=_doc("CA bundle: connect with TLS"))
    ssl_verify_identity: bool = field(
        default=False, metadata=_doc("with ssl_ca: check the server's host name too")
    )
    wake: bool = field(
        default=True,
        metadata=_doc(
            "a standby's session waits in GET_LOCK for the leader's wake lock, so standbys act "
            "at once on a release; false saves that connection (standbys see a release at "
            "their next tick)"
        ),
    )


@dataclass(frozen=True)
class ZooKeeperSettings:
    hosts: str | None = field(default=None, metadata=_doc("host:port,...[/chroot]"))
    session_timeout_seconds: float | None = field(
        default=None, metadata=_doc("ZooKeeper session timeout (default: lease_seconds)")
    )
    auth_file: str | None = field(
        default=None, metadata=_doc("file holding digest credentials user:password")
    )
    use_ssl: bool = field(default=False, metadata=_doc("connect with TLS"))
    ca_file: str | None = field(default=None, metadata=_doc("CA bundle for TLS"))
    cert_file: str | None = field(default=None, metadata=_doc("client certificate for TLS"))
    key_file: str | None = field(default=None, metadata=_doc("client key for TLS"))
    retry_max_tries: int = field(
        default=3, metadata=_doc("attempts of one call on connection loss, within the call limit")
    )
    retry_delay_seconds: float = field(
        default=0.1, metadata=_doc("first delay between attempts and reconnects (doubles)")
    )
    retry_max_delay_seconds: float = field(
        default=1.0, metadata=_doc("cap of the delay between attempts and reconnects")
    )
    db_unreachable_resign_seconds: float | None = field(
        default=None,
        metadata=_doc(
            "with a metadata DB: a leader cut off from it this long steps down for a standby "
            "that reaches it (default: 2 x lease_seconds; 0 = never)"
        ),
    )


@dataclass(frozen=True)
class LocalSettings:
    dir: str = field(
        default_factory=default_local_dir,
        metadata=_doc("lock files + SQLite ($XDG_STATE_HOME/failover or /var/lib/failover)"),
    )


@dataclass(frozen=True)
class HttpSettings:
    listen: str = field(default="127.0.0.1:8787", metadata=_doc("host:port; empty disables"))
    token_file: str | None = field(default=None, metadata=_doc("bearer token for POST endpoints"))
    tls_cert_file: str | None = field(
        default=None, metadata=_doc("serve HTTPS with this certificate")
    )
    tls_key_file: str | None = field(default=None, metadata=_doc("private key of tls_cert_file"))


@dataclass(frozen=True)
class LogSettings:
    format: str = field(default="auto", metadata=_doc("auto (console on a TTY), json or console"))
    level: str = field(default="info", metadata=_doc("debug, info, warning or error"))


@dataclass(frozen=True)
class AwsSettings:
    region: str | None = field(default=None, metadata=_doc("default: AWS_REGION, then IMDS"))
    imds_endpoint: str = field(
        default="http://169.254.169.254", metadata=_doc("EC2 instance metadata service")
    )


@dataclass(frozen=True)
class KeeperSettings:
    listen: str = field(
        default="",
        metadata=_doc("sidecar mode: Unix socket the scheduler container's keeper connects to"),
    )


@dataclass(frozen=True)
class AirflowSettings:
    health_check: bool = field(
        default=True, metadata=_doc("judge the scheduler by its job heartbeat (needs metadata DB)")
    )
    health_threshold_seconds: float | None = field(
        default=None, metadata=_doc("default: Airflow's scheduler_health_check_threshold (30)")
    )
    startup_grace_seconds: float | None = field(
        default=None, metadata=_doc("no hang verdict before this (default: max(60, 2 x threshold))")
    )
    release_orphans: bool = field(
        default=True,
        metadata=_doc(
            "before a scheduler starts, mark dead schedulers' running job rows failed "
            "(Airflow then adopts or resets their tasks at once)"
        ),
    )
    prewarm: bool = field(
        default=False,
        metadata=_doc("standbys keep an `airflow scheduler` imported and waiting (~130 MB)"),
    )
    prewarm_max_age_hours: float = field(
        default=6.0, metadata=_doc("re-warm the waiting scheduler after this long (0 = never)")
    )
    components: tuple[tuple[str, tuple[str, ...]], ...] = field(
        default=(), metadata=_doc("the leader-only group, name -> argv; replaces `command`")
    )


@dataclass(frozen=True)
class Settings:
    cluster: str = field(default="airflow", metadata=_doc("election namespace"))
    node: str = field(default_factory=socket.gethostname, metadata=_doc("this candidate's name"))
    backend: str = field(default="local", metadata=_doc("local, postgres, mysql or zookeeper"))
    command: tuple[str, ...] = field(
        default=("airflow", "scheduler"), metadata=_doc("the supervised child")
    )
    metadata_dsn: str | None = field(
        default=None, metadata=_doc("metadata DB (default: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)")
    )
    table_prefix: str = field(default="failover_", metadata=_doc("prefix of the controller tables"))
    lease_seconds: float = field(default=10.0, metadata=_doc("leadership survives this long"))
    loop_seconds: float = field(default=1.0, metadata=_doc("tick period"))
    backend_timeout_seconds: float = field(default=2.0, metadata=_doc("one backend call's limit"))
    self_fence_margin_seconds: float = field(
        default=1.0, metadata=_doc("child is dead this long before the lease could expire")
    )
    stop_timeout_seconds: float = field(default=30.0, metadata=_doc("SIGTERM -> SIGKILL grace"))
    max_fast_failures: int = field(
        default=3, metadata=_doc("give up leadership after this many fast child failures")
    )
    fast_failure_seconds: float = field(
        default=30.0, metadata=_doc("a child exit sooner than this after start is a fast failure")
    )
    backoff_initial_seconds: float = field(default=1.0, metadata=_doc("first crash backoff"))
    backoff_max_seconds: float = field(default=30.0, metadata=_doc("crash backoff cap"))
    allow_insecure_permissions: bool = field(
        default=False, metadata=_doc("accept secret-holding files readable by group/others")
    )
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    mysql: MySQLSettings = field(default_factory=MySQLSettings)
    zookeeper: ZooKeeperSettings = field(default_factory=ZooKeeperSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)
    airflow: AirflowSettings = field(default_factory=AirflowSettings)
    keeper: KeeperSettings = field(default_factory=KeeperSettings)
    aws: AwsSettings = field(default_factory=AwsSettings)
    warnings: tuple[str, ...] = field(default=(), compare=False, metadata={"internal": "1"})

    @property
    def lock_dsn(self) -> str | None:
        if self.backend == "mysql":
            return self.mysql.dsn or self.metadata_dsn
        return self.postgres.dsn or self.metadata_dsn

    @property
    def group(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The leader-only group, main command (the scheduler) first (group.main_first)."""
        return main_first(self.airflow.components, self.command)

    @property
    def self_fence_seconds(self) -> float:
        """How long after a proven renew the child may still run."""
        return self.lease_seconds - self.self_fence_margin_seconds

    @property
    def keeper_answer_seconds(self) -> float:
        """A keeper that leaves the daemon's lines unanswered this long is presumed stuck.

        (lease - loop) / 2: the daemon asks every loop, so a keeper frozen right after its last
        answer is killed by (lease + loop) / 2, within one lease, and at the default timings
        ~3 s before the self-fence deadline even if the backend is down and a renew is hanging
        (margin + backend_timeout + kill < (lease - loop) / 2). A live keeper answers in ms;
        4.5 s of silence at the default lease is not a busy machine but a stopped process.
        """
        return (self.lease_seconds - self.loop_seconds) / 2

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


SECTIONS: dict[str, type[Any]] = {
    "postgres": PostgresSettings,
    "mysql": MySQLSettings,
    "zookeeper": ZooKeeperSettings,
    "local": LocalSettings,
    "http": HttpSettings,
    "log": LogSettings,
    "airflow": AirflowSettings,
    "keeper": KeeperSettings,
    "aws": AwsSettings,
}


PG_NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: longer application_names are cut


def validate(settings: Settings) -> Settings:
    """Refuse unsafe or meaningless settings; return them unchanged when sound."""
    s = settings
    for name in ("cluster", "node"):
        value = getattr(s, name)
        if not NAME_RE.match(value):
            raise ConfigError(
                name,
                f"{value!r} is not a valid name",
                "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
    if s.backend not in BACKENDS:
        raise ConfigError(
            "backend", f"unknown backend {s.backend!r}", f"use one of {', '.join(BACKENDS)}"
        )
    longest = f"failover:{s.cluster}:{s.node}:{10**9 - 1}:keeper"  # an epoch of 9 digits
    room = PG_NAME_BYTES - len(longest.encode()) + len(s.cluster) + len(s.node)
    pg_metadata = bool(s.metadata_dsn) and not str(s.metadata_dsn).startswith("mysql://")
    if (s.backend == "postgres" or pg_metadata) and len(longest.encode()) > PG_NAME_BYTES:
        # PostgreSQL cuts application_name to 63 bytes: fencing would not see the session.
        raise ConfigError(
            "node",
            f"cluster and node are too long for PostgreSQL session names ({longest!r} is "
            f"{len(longest.encode())} bytes, the limit {PG_NAME_BYTES})",
            f'keep len(cluster) + len(node) <= {room}; on EC2 node = "imds" (the instance id)',
        )
    if not s.command or not s.command[0]:
        raise ConfigError("command", "is empty", 'give the child, e.g. ["airflow", "scheduler"]')
    validate_components(s.airflow.components, s.command)
    if not PREFIX_RE.match(s.table_prefix):
        raise ConfigError(
            "table_prefix", f"{s.table_prefix!r} is not a safe SQL prefix", "use [a-z_]"
        )
    _validate_timings(s)
    if s.max_fast_failures < 1:
        raise ConfigError("max_fast_failures", "must be at least 1", "set it to 3")
    if s.backoff_initial_seconds <= 0 or s.backoff_max_seconds < s.backoff_initial_seconds:
        raise ConfigError(
            "backoff_max_seconds",
            "backoff must be positive and the cap not below the first step",
            "e.g. backoff_initial_seconds = 1, backoff_max_seconds = 30",
        )
    if s.backend == "postgres" and not s.lock_dsn:
        raise ConfigError(
            "postgres.dsn",
            "the postgres backend needs a database",
            "set [postgres] dsn, metadata_dsn or AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        )
    if s.backend == "mysql" and not s.lock_dsn:
        raise ConfigError(
            "mysql.dsn",
            "the mysql backend needs a database",
            "set [mysql] dsn, metadata_dsn or AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        )
    if s.backend == "zookeeper":
        _validate_zookeeper(s)
    for name in ("health_threshold_seconds", "startup_grace_seconds"):
        value = getattr(s.airflow, name)
        if value is not None and value <= 0:
            raise ConfigError(
                f"airflow.{name}", "must be greater than 0", "give seconds, or omit it"
            )
    if s.airflow.prewarm_max_age_hours < 0:
        raise ConfigError(
            "airflow.prewarm_max_age_hours", "must not be negative", "give hours, or 0 for never"
        )
    if bool(s.http.tls_cert_file) != bool(s.http.tls_key_file):
        raise ConfigError(
            "http.tls_key_file", "TLS needs both a certificate and its key", "set both or neither"
        )
    if s.log.format not in LOG_FORMATS:
        raise ConfigError(
            "log.format", f"unknown format {s.log.format!r}", f"use one of {', '.join(LOG_FORMATS)}"
        )
    if s.log.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(
            "log.level", f"unknown level {s.log.level!r}", "use debug/info/warning/error"
        )
    return s


def _validate_timings(s: Settings) -> None:
    for name in (
        "lease_seconds",
        "loop_seconds",
        "backend_timeout_seconds",
        "self_fence_margin_seconds",
        "stop_timeout_seconds",
        "fast_failure_seconds",
    ):
        if getattr(s, name) <= 0:
            raise ConfigError(name, "must be greater than 0", "give a positive number of seconds")
    if s.lease_seconds > 300:
        raise ConfigError(
            "lease_seconds", "is above 300 s", "a leader must be replaceable: use <= 300"
        )
    renew_window = s.loop_seconds + 2 * s.backend_timeout_seconds
    if renew_window >= s.lease_seconds:
        raise ConfigError(
            "lease_seconds",
            f"{s.lease_seconds:g} s leaves no time to renew: loop_seconds + 2 x "
            f"backend_timeout_seconds = {renew_window:g} s",
            "raise lease_seconds or lower loop_seconds / backend_timeout_seconds",
        )
    if s.self_fence_margin_seconds < 0.2:
        raise ConfigError(
            "self_fence_margin_seconds",
            "is below 0.2 s",
            "killing a process tree needs time: use >= 0.2",
        )
    if s.self_fence_seconds <= s.loop_seconds + s.backend_timeout_seconds:
        raise ConfigError(
            "self_fence_margin_seconds",
            f"the child would be killed {s.self_fence_seconds:g} s after a renew, before the next "
            f"renew can finish ({s.loop_seconds + s.backend_timeout_seconds:g} s)",
            "lower self_fence_margin_seconds or raise lease_seconds",
        )


def zookeeper_session_seconds(s: Settings) -> float:
    """The session timeout to request from ZooKeeper (the server may grant another)."""
    return s.zookeeper.session_timeout_seconds or s.lease_seconds


def zookeeper_db_resign_seconds(s: Settings) -> float:
    """How long a ZooKeeper leader may be cut off from the metadata DB before it steps down
    for a standby that reaches it (0: never)."""
    value = s.zookeeper.db_unreachable_resign_seconds
    return 2 * s.lease_seconds if value is None else value


def _validate_zookeeper(s: Settings) -> None:
    zk = s.zookeeper
    check_zk_hosts(zk.hosts)
    session = zookeeper_session_seconds(s)
    if zk.session_timeout_seconds is not None and not 0 < session <= 300:
        raise ConfigError(
            "zookeeper.session_timeout_seconds", "must be above 0 and at most 300", "e.g. 10"
        )
    renew_window = s.loop_seconds + s.backend_timeout_seconds + s.self_fence_margin_seconds
    if session <= renew_window:
        raise ConfigError(
            "zookeeper.session_timeout_seconds",
            f"a {session:g} s session leaves no time to renew: loop_seconds + "
            f"backend_timeout_seconds + self_fence_margin_seconds = {renew_window:g} s",
            "raise it (or lease_seconds), or lower those",
        )
    _validate_db_resign(s)
    if zk.retry_max_tries < 1 or zk.retry_max_tries > 100:
        raise ConfigError("zookeeper.retry_max_tries", "must be 1 to 100", "e.g. 3")
    if zk.retry_delay_seconds <= 0 or zk.retry_max_delay_seconds < zk.retry_delay_seconds:
        raise ConfigError(
            "zookeeper.retry_max_delay_seconds",
            "delays must be positive and the cap not below the first delay",
            "e.g. retry_delay_seconds = 0.1, retry_max_delay_seconds = 1",
        )
    if zk.retry_max_delay_seconds > session / 3:
        raise ConfigError(
            "zookeeper.retry_max_delay_seconds",
            f"{zk.retry_max_delay_seconds:g} s between reconnects is over a third of the "
            f"{session:g} s session: the session could expire while the client waits",
            f"use <= {session / 3:.2f}",
        )
    check_zk_tls(zk.use_ssl, zk.ca_file, zk.cert_file, zk.key_file)


def _validate_db_resign(s: Settings) -> None:
    name = "zookeeper.db_unreachable_resign_seconds"
    resign = zookeeper_db_resign_seconds(s)
    if not 0 <= resign <= 3600:
        raise ConfigError(
            name, f"{resign:g} s is not 0 (never) or up to 3600 s", "e.g. 2 x lease_seconds"
        )
    if 0 < resign < s.lease_seconds:
        raise ConfigError(
            name,
            f"{resign:g} s is below lease_seconds ({s.lease_seconds:g} s): a blip of the "
            "metadata DB would move the scheduler",
            f"use at least {s.lease_seconds:g}, or 0 to never resign for it",
        )
