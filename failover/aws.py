"""AWS integration (extra `aws`, boto3): IMDSv2 identity, RDS IAM auth tokens, Secrets Manager.

Every call is bounded in time; failures are one-line `ConfigError`s without secret values.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from failover.errors import BackendUnavailable, ConfigError

IMDS = "http://169.254.169.254"
SECRET_PREFIX = "secretsmanager:"
TOKEN_LIFETIME = 15 * 60.0  # RDS IAM tokens are valid for 15 minutes
TOKEN_REFRESH = 10 * 60.0  # use a fresh one well before that


@dataclass(frozen=True)
class Identity:
    instance_id: str
    zone: str
    region: str


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # IMDS is link-local


def imds_identity(endpoint: str = IMDS, timeout: float = 2.0) -> Identity:
    """Instance id, AZ and region from IMDSv2 (token first, then the metadata)."""
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError("aws.imds_endpoint", f"{endpoint!r} is not an http URL", "use http://...")
    opener = _opener()
    try:
        put = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
            f"{endpoint}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
        )
        with opener.open(put, timeout=timeout) as resp:
            token = resp.read().decode()

        def get(path: str) -> str:
            req = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
                f"{endpoint}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
            )
            with opener.open(req, timeout=timeout) as resp:
                return str(resp.read().decode().strip())

        zone = get("placement/availability-zone")
        return Identity(get("instance-id"), zone, get("placement/region"))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise ConfigError(
            "node",
            f'"imds" needs the EC2 instance metadata service at {endpoint} ({err})',
            "run on EC2 with IMDSv2 enabled, or set node to a name",
        ) from None


def _client(service: str, region: str | None) -> Any:
    try:
        import boto3
    except ImportError as err:
        raise ConfigError(service, "needs boto3", "pip install 'failover[aws]'") from err
    return boto3.client(service, region_name=region)


def resolve_secret(label: str, reference: str, region: str | None) -> str:
    """`secretsmanager:<arn or name>` -> a DSN (plain string or an RDS-style JSON secret)."""
    secret_id = reference[len(SECRET_PREFIX) :]
    client = _client("secretsmanager", region)
    try:
        value = client.get_secret_value(SecretId=secret_id)["SecretString"]
    except Exception as err:
        code = getattr(err, "response", {}).get("Error", {}).get("Code", type(err).__name__)
        raise ConfigError(
            label,
            f"cannot read secret {secret_id!r} from Secrets Manager ({code})",
            "check the ARN, the region and the IAM policy (secretsmanager:GetSecretValue)",
        ) from None
    return dsn_from_secret(label, value)


def dsn_from_secret(label: str, value: str) -> str:
    text = value.strip()
    if not text.startswith("{"):
        return text
    try:
        data = json.loads(text)
        user, password, host = data["username"], data["password"], data["host"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            label, "the secret is JSON without username/password/host", "store a DSN or RDS JSON"
        ) from None
    # RDS secrets name their engine; without one, the label tells ([mysql] dsn).
    engine = str(data.get("engine", "mysql" if label.startswith("mysql") else "postgres"))
    mysql = engine.lower() in ("mysql", "mariadb", "aurora-mysql")
    port = data.get("port", 3306 if mysql else 5432)
    dbname = data.get("dbname", "airflow")
    userinfo = f"{quote(str(user), safe='')}:{quote(str(password), safe='')}"
    return f"{'mysql' if mysql else 'postgresql'}://{userinfo}@{host}:{port}/{dbname}"


class IamTokens:
    """RDS IAM authentication tokens as the DB password, regenerated before they expire.

    Tokens are signed locally by boto3 (no call to RDS); a connection only needs a valid one
    when it is opened, so every (re)connect asks for `password()`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        region: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host, self.port, self.user, self.region = host, port, user, region
        self.clock = clock
        self.client = _client("rds", region)
        self.token = ""
        self.made_at = -1e18

    @classmethod
    def for_dsn(cls, dsn: str, region: str | None) -> IamTokens:
        """Tokens for the host, port and user of a DSN."""
        from failover.dsn import parse_dsn

        info = parse_dsn(dsn)
        return cls(info.host, info.port, info.user, region)

    def password(self) -> str:
        now = self.clock()
        if now - self.made_at >= TOKEN_REFRESH:
            try:
                self.token = str(
                    self.client.generate_db_auth_token(
                        DBHostname=self.host,
                        Port=self.port,
                        DBUsername=self.user,
                        Region=self.region,
                    )
                )
            except Exception as err:
                raise BackendUnavailable(
                    f"cannot make an RDS IAM token: {type(err).__name__}"
                ) from None
            self.made_at = now
        return self.token
