"""The kazoo client of one cluster: options, digest ACL, TLS, bounded calls, state, wake-ups.

Its nodes live under `<chroot>/failover/<cluster>` (see zkstore.py for what they hold).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    ConnectionClosedError,
    ConnectionLoss,
    NoAuthError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.hosts import collect_hosts
from kazoo.protocol.states import KazooState
from kazoo.retry import KazooRetry, RetryFailedError
from kazoo.security import make_digest_acl

from failover import log
from failover.config import Settings, zookeeper_session_seconds
from failover.errors import BackendUnavailable, ConfigError
from failover.keeper.zksession import Ticket
from failover.sources import check_private_file

BLATHER = 5  # kazoo's chattiest level; its lines carry session passwords: never forwarded
NEGOTIATED = re.compile(r"negotiated session timeout:\s*(\d+)")
UNAVAILABLE = (
    ConnectionLoss,
    OperationTimeoutError,
    SessionExpiredError,
    ConnectionClosedError,
    RetryFailedError,
    KazooTimeoutError,
)
REPEAT_WARNING_SECONDS = 30.0


@dataclass(frozen=True)
class ZkOptions:
    """What the kazoo client needs; `auth` never shows in a repr."""

    hosts: str
    cluster: str
    node: str
    session_timeout: float  # requested; the server may grant another
    call_timeout: float  # one backend call, retries included
    retry_max_tries: int = 3
    retry_delay: float = 0.1
    retry_max_delay: float = 1.0
    auth: tuple[str, str] | None = field(default=None, repr=False)
    use_ssl: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def zk_options(settings: Settings) -> ZkOptions:
    """The client options of validated settings (reads `auth_file`; secret files must be
    private, as every secret-holding file is)."""
    zk = settings.zookeeper
    assert zk.hosts is not None  # validated
    for label, path in (("zookeeper.auth_file", zk.auth_file), ("zookeeper.key_file", zk.key_file)):
        if path:
            check_private_file(path, label, settings.allow_insecure_permissions)
    return ZkOptions(
        hosts=zk.hosts,
        cluster=settings.cluster,
        node=settings.node,
        session_timeout=zookeeper_session_seconds(settings),
        call_timeout=settings.backend_timeout_seconds,
        retry_max_tries=zk.retry_max_tries,
        retry_delay=zk.retry_delay_seconds,
        retry_max_delay=zk.retry_max_delay_seconds,
        auth=read_auth_file(zk.auth_file) if zk.auth_file else None,
        use_ssl=zk.use_ssl,
        ca_file=zk.ca_file,
        cert_file=zk.cert_file,
        key_file=zk.key_file,
    )


def read_auth_file(path: str) -> tuple[str, str]:
    """(user, password) from the first non-empty line `user:password`; errors never quote it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            "zookeeper.auth_file",
            f"cannot read {path}: {err.strerror}",
            "give a readable file holding user:password",
        ) from err
    except UnicodeDecodeError:
        raise ConfigError(
            "zookeeper.auth_file", f"{path} is not UTF-8 text", "write one line: user:password"
        ) from None
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    user, colon, password = line.partition(":")
    if not (colon and user and password):
        raise ConfigError(
            "zookeeper.auth_file",
            f"{path} does not hold user:password",
            "write one line: user:password",
        )
    return user, password


def client_kwargs(options: ZkOptions, logger: logging.Logger) -> dict[str, Any]:
    """`KazooClient` arguments: session, reconnect policy, digest auth + ACL, TLS."""
    kwargs: dict[str, Any] = {
        "hosts": options.hosts,
        "timeout": options.session_timeout,
        # Reconnect without end but with a bounded delay: when kazoo's tries run out its
        # connection loop stops for good, and the session would be left to expire.
        "connection_retry": {
            "max_tries": -1,
            "delay": options.retry_delay,
            "backoff": 2,
            "max_delay": options.retry_max_delay,
            "max_jitter": 0.2,
        },
        "logger": logger,
        "use_ssl": options.use_ssl,
    }
    if options.auth:
        user, password = options.auth
        kwargs["auth_data"] = [("digest", f"{user}:{password}")]
        kwargs["default_acl"] = [make_digest_acl(user, password, all=True)]
    if options.use_ssl:
        kwargs.update(
            ca=options.ca_file,
            certfile=options.cert_file,
            keyfile=options.key_file,
            verify_certs=True,
        )
    return kwargs


def call_retry(options: ZkOptions, retry: bool = True) -> KazooRetry:
    """The policy of one backend call: bounded tries and backoff inside `call_timeout`."""
    return KazooRetry(
        max_tries=options.retry_max_tries if retry else 1,
        delay=options.retry_delay,
        backoff=2,
        max_jitter=0.2,
        max_delay=options.retry_max_delay,
        ignore_expire=False,
        deadline=options.call_timeout,
    )


class KazooLog(logging.Logger):
    """kazoo's logger: keeps the negotiated session timeout (kazoo logs it, never exposes it),
    forwards INFO and above to the daemon's log, drops DEBUG/BLATHER (passwords, credentials)."""

    def __init__(
        self, on_negotiated: Callable[[float], None], context: dict[str, str] | None
    ) -> None:
        super().__init__("kazoo")
        self.on_negotiated = on_negotiated
        self.context = context  # None: forward nothing (one-shot commands keep stdout clean)
        self.last_warned: dict[str, float] = {}

    def isEnabledFor(self, level: int) -> bool:
        return level == BLATHER or level >= logging.INFO

    def handle(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.INFO:
            if str(record.msg).startswith("Session created"):
                match = NEGOTIATED.search(record.getMessage())
                if match:
                    self.on_negotiated(int(match.group(1)) / 1000)
            return
        if self.context is None:
            return
        text = record.getMessage().splitlines()[0][:300]
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__})"
        if record.levelno < logging.WARNING:
            log.get().debug("zookeeper_client", message=text, **self.context)
            return
        now = time.monotonic()
        if now - self.last_warned.get(text, -REPEAT_WARNING_SECONDS) >= REPEAT_WARNING_SECONDS:
            self.last_warned[text] = now
            log.get().warning("zookeeper_client", message=text, **self.context)


def _reason(err: Exception, timeout: float) -> str:
    if isinstance(err, KazooTimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(err, SessionExpiredError):
        return "session expired"
    if isinstance(err, ConnectionClosedError):
        return "client closed"
    return "not connected" if isinstance(err, RetryFailedError) else "connection lost"


class ZkConnection:
    """One kazoo client for one cluster: bounded calls, the ACL, and a pipe that turns
    readable when a watch or a state change fired (written from kazoo's threads)."""

    def __init__(
        self,
        options: ZkOptions,
        on_warning: Callable[[str], None] | None = None,
        factory: Callable[..., Any] = KazooClient,
        verbose: bool = True,
    ) -> None:
        self.options = options
        self.base = f"/failover/{options.cluster}"
        self.warn = on_warning or (lambda _: None)
        self.negotiated: float | None = None  # seconds the server granted, once connected
        self.closed = False
        self.wake_rd, self.wake_wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.verbose = verbose  # log connection events (the daemon); not for one-shot commands
        context = {"node": options.node, "cluster": options.cluster}
        self.logger = KazooLog(self._on_negotiated, context if verbose else None)
        kwargs = client_kwargs(options, self.logger)
        self.acl: list[Any] | None = kwargs.get("default_acl")
        self.client = factory(**kwargs)
        self.client.add_listener(self._on_state)
        self.started: Any = None

    # -- connection -------------------------------------------------------------------------
    def start(self, wait: float) -> bool:
        """Connect in the background (kazoo keeps trying); wait up to `wait` s for it."""
        if self.started is None:
            self.started = self.client.start_async()
        self.started.wait(wait)
        return self.connected

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    @property
    def state(self) -> str:
        return str(self.client.state)

    def session_id(self) -> int | None:
        client_id = self.client.client_id
        return int(client_id[0]) if client_id else None

    def ticket(self, session_id: int, contender: str, released: bytes) -> Ticket | None:
        """What a keeper needs to end session `session_id` (if it is still ours) and mark
        the breadcrumb `released` while node `contender` exists; paths under our base."""
        client_id = self.client.client_id
        if not client_id or int(client_id[0]) != session_id:
            return None
        o = self.options
        hosts, chroot = collect_hosts(o.hosts)
        return Ticket(
            hosts=tuple((str(h), int(p)) for h, p in hosts),
            session_id=session_id,
            password=bytes(client_id[1]),
            timeout_ms=int((self.negotiated or o.session_timeout) * 1000),
            contender=(chroot or "") + self.path(contender),
            breadcrumb=(chroot or "") + self.path("leader"),
            released=released,
            auth=o.auth,
            use_ssl=o.use_ssl,
            ca_file=o.ca_file,
            cert_file=o.cert_file,
            key_file=o.key_file,
        )

    def _on_negotiated(self, seconds: float) -> None:
        self.negotiated = seconds

    def _on_state(self, state: KazooState) -> None:
        """kazoo's listener (its thread, must not block): log and wake the daemon."""
        if self.verbose:
            log.get().info(
                "zookeeper_state",
                state=str(state),
                node=self.options.node,
                cluster=self.options.cluster,
            )
        self.wake()

    def wake(self, *_: object) -> None:
        """Make `wake_rd` readable (watches and listeners call this on kazoo's threads)."""
        if self.closed:
            return
        try:
            os.write(self.wake_wr, b"!")
        except OSError:
            pass  # full pipe: the daemon wakes anyway

    def drain(self) -> bool:
        woke = False
        try:
            while os.read(self.wake_rd, 4096):
                woke = True
        except (BlockingIOError, OSError):
            pass
        return woke

    # -- calls ------------------------------------------------------------------------------
    def call(self, what: str, op: Callable[[], Any], retry: bool = True) -> Any:
        """Run one kazoo async operation within `call_timeout`, retried on connection loss.

        Answers (NoNode, NodeExists, BadVersion, ...) pass through; "could not ask" becomes
        `BackendUnavailable` with a one-line reason. Nothing is queued while disconnected."""
        limit = self.options.call_timeout
        end = time.monotonic() + limit

        def once() -> Any:
            left = end - time.monotonic()
            if not self.client.connected:
                raise ConnectionLoss("not connected")
            if left <= 0:
                raise KazooTimeoutError("no time left")
            return op().get(timeout=left)

        try:
            return call_retry(self.options, retry)(once)
        except UNAVAILABLE as err:
            detail = _reason(err, limit)
            if not self.client.connected:
                detail = f"not connected (state {self.state})"
            raise BackendUnavailable(f"ZooKeeper {what}: {detail}") from err
        except (NoAuthError, AuthFailedError) as err:
            raise BackendUnavailable(
                f"ZooKeeper refused {what}: not authorised (check zookeeper.auth_file and "
                f"the ACL of {self.base})"
            ) from err

    def path(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    def close(self, graceful: bool = True) -> None:
        """Stop the client: the session closes and its ephemeral nodes vanish at once. With
        `graceful=False` the session is left to expire by itself (T after the last touch)."""
        if self.closed:
            return
        self.closed = True
        self.client.remove_listener(self._on_state)
        if not graceful:
            return  # kazoo's daemon threads end with the process; the pipe stays for them
        try:
            self.client.stop()
            self.client.close()
        except Exception as err:
            self.warn(f"ZooKeeper client did not stop cleanly: {type(err).__name__}")
        os.close(self.wake_rd)
        os.close(self.wake_wr)


def negotiated_session_timeout(settings: Settings, wait: float = 5.0) -> float | None:
    """Connect once and return the session timeout the servers grant (None: unreachable).

    A running daemon reports it as `ZooKeeperElection.effective_lease()` (`/status`)."""
    conn = ZkConnection(zk_options(settings), verbose=False)
    try:
        conn.start(wait)
        return conn.negotiated
    finally:
        conn.close()


def check_granted(
    granted: float | None, requested: float, min_session: float, warn: Callable[[str], None]
) -> None:
    """Refuse a session too short to lead with; warn when it differs from the request."""
    if granted is None:
        warn(
            "cannot learn the session timeout ZooKeeper granted; assuming the requested "
            f"{requested:g} s: make sure the servers' maxSessionTimeout is not below it"
        )
    elif granted <= min_session:
        raise ConfigError(
            "zookeeper.session_timeout_seconds",
            f"the servers granted a {granted:g} s session (asked {requested:g} s): no time "
            f"to renew within loop + backend timeout + margin = {min_session:g} s",
            "ask for a session inside the servers' minSessionTimeout..maxSessionTimeout",
        )
    elif abs(granted - requested) > 0.001:
        warn(
            f"ZooKeeper granted a {granted:g} s session instead of {requested:g} s (server "
            f"minSessionTimeout/maxSessionTimeout); takeover after a crash takes {granted:g} s"
        )
