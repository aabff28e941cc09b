"""The ZooKeeper connection of one cluster (bounded calls, digest ACL, TLS) and its member store.

Nodes live under `<chroot>/failover/<cluster>`; every node created here carries the ACL.
"""

from __future__ import annotations

import json
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
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState, ZnodeStat
from kazoo.retry import KazooRetry, RetryFailedError
from kazoo.security import make_digest_acl

from failover import log
from failover.config import Settings, zookeeper_session_seconds
from failover.election.base import ClusterFlags, MemberRecord, MemberState, MemberStore
from failover.errors import BackendUnavailable, ConfigError

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
ANCHOR_MAX_AGE = 5.0  # seconds a server-time anchor from our own last write stays usable
REPEAT_WARNING_SECONDS = 30.0
HISTORY_KEEP = 20
CAS_TRIES = 10


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
    """The client options of validated settings (reads `auth_file`)."""
    zk = settings.zookeeper
    assert zk.hosts is not None  # validated
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

    def __init__(self, on_negotiated: Callable[[float], None], context: dict[str, str]) -> None:
        super().__init__("kazoo")
        self.on_negotiated = on_negotiated
        self.context = context
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


def dump(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def load(data: bytes | None) -> Any:
    """JSON of a node, or {} for an empty or foreign value."""
    try:
        return json.loads(data or b"{}")
    except ValueError:
        return {}


class ZkStore:
    """One kazoo client for one cluster: bounded calls, the ACL, server time, and a pipe that
    turns readable when a watch or a state change fired (written from kazoo's threads)."""

    def __init__(
        self,
        options: ZkOptions,
        on_warning: Callable[[str], None] | None = None,
        factory: Callable[..., Any] = KazooClient,
    ) -> None:
        self.options = options
        self.base = f"/failover/{options.cluster}"
        self.warn = on_warning or (lambda _: None)
        self.negotiated: float | None = None  # seconds the server granted, once connected
        self.anchor: tuple[int, float] | None = None  # (server ms, monotonic) of our last write
        self.layout_ready = False
        self.closed = False
        self.wake_rd, self.wake_wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        context = {"node": options.node, "cluster": options.cluster}
        self.logger = KazooLog(self._on_negotiated, context)
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

    def _on_negotiated(self, seconds: float) -> None:
        self.negotiated = seconds

    def _on_state(self, state: KazooState) -> None:
        """kazoo's listener (its thread, must not block): log and wake the daemon."""
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

    def read(self, what: str, path: str, watch: Any = None) -> tuple[bytes, ZnodeStat] | None:
        try:
            got: tuple[bytes, ZnodeStat] = self.call(
                what, lambda: self.client.get_async(path, watch=watch)
            )
        except NoNodeError:
            return None
        return got

    def children(self, what: str, path: str) -> list[str]:
        try:
            return list(self.call(what, lambda: self.client.get_children_async(path)))
        except NoNodeError:
            return []

    def create(self, what: str, path: str, data: bytes, **kw: Any) -> Any:
        """Create with the ACL (and missing parents); never retried: a lost reply may hide
        a created node, which its creator must recognise by the node's data."""
        created: Any = self.call(
            what,
            lambda: self.client.create_async(path, data, acl=self.acl, makepath=True, **kw),
            retry=False,
        )
        return created

    def write(self, what: str, path: str, data: bytes) -> ZnodeStat:
        """Set a node's data, creating it if missing; the reply's mtime anchors server time."""
        for _ in range(CAS_TRIES):
            try:
                stat: ZnodeStat = self.call(what, lambda: self.client.set_async(path, data))
            except NoNodeError:
                try:
                    stat = self.create(what, path, data, include_data=True)[1]
                except NodeExistsError:
                    continue
            self.anchor = (stat.mtime, time.monotonic())
            return stat
        raise BackendUnavailable(f"ZooKeeper {what}: {path} keeps vanishing")

    def update(self, what: str, path: str, change: Callable[[Any], Any]) -> None:
        """Read-modify-write of a JSON node with a versioned set (compare and set)."""
        for _ in range(CAS_TRIES):
            got = self.read(what, path)
            if got is None:
                try:
                    self.create(what, path, dump(change(load(None))))
                    return
                except NodeExistsError:
                    continue
            data, stat = got
            new = dump(change(load(data)))
            try:
                self.call(what, lambda: self.client.set_async(path, new, version=stat.version))
                return
            except BadVersionError:
                continue
        raise BackendUnavailable(f"ZooKeeper {what}: {path} kept changing; try again")

    def server_now_ms(self, fresh: bool = False) -> int:
        """The server's clock in ms: from our last write, or from a fresh write."""
        if self.anchor and not fresh and time.monotonic() - self.anchor[1] < ANCHOR_MAX_AGE:
            return self.anchor[0] + int((time.monotonic() - self.anchor[1]) * 1000)
        return int(self.write("read the server clock", self.path("clock"), b"").mtime)

    def ensure_layout(self) -> None:
        """The cluster's persistent nodes (epoch, breadcrumb, members, flags), with the ACL."""
        if self.layout_ready:
            return
        self.call(self.base, lambda: self.client.ensure_path_async(self.base, acl=self.acl))
        for name, data in (("epoch", b"0"), ("leader", b"{}"), ("members", b""), ("flags", b"{}")):
            try:
                self.create(f"create {name}", self.path(name), data)
            except NodeExistsError:
                pass
        self.layout_ready = True

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
        except Exception as err:  # noqa: BLE001 - closing must not fail the shutdown
            self.warn(f"ZooKeeper client did not stop cleanly: {type(err).__name__}")
        os.close(self.wake_rd)
        os.close(self.wake_wr)


class ZooKeeperMembers(MemberStore):
    """Member heartbeats (`members/<node>`), a short history and the operator flags (`flags`)
    as JSON nodes; heartbeat ages are server-side: node mtime against a fresh write's mtime."""

    def __init__(self, store: ZkStore, owns_store: bool = False) -> None:
        self.store = store
        self.owns_store = owns_store

    def heartbeat(self, state: MemberState) -> None:
        info = {
            "role": state.role,
            "epoch": state.epoch,
            "child_state": state.child_state,
            "child_pid": state.child_pid,
            "version": state.version,
            "sentence": state.sentence[:500],
        }
        self.store.write("heartbeat", self.store.path("members", state.node), dump(info))

    def members(self) -> list[MemberRecord]:
        names = self.store.children("list members", self.store.path("members"))
        now = self.store.server_now_ms(fresh=True)
        out = []
        for name in sorted(names):
            got = self.store.read("read member", self.store.path("members", name))
            if got is None:
                continue
            info, stat = load(got[0]), got[1]
            if not isinstance(info, dict):
                continue
            pid = info.get("child_pid")
            out.append(
                MemberRecord(
                    node=name,
                    role=str(info.get("role", "unknown")),
                    epoch=int(info.get("epoch", 0)),
                    child_state=str(info.get("child_state", "unknown")),
                    child_pid=int(pid) if isinstance(pid, int) else None,
                    version=str(info.get("version", "")),
                    heartbeat_age=max(0.0, (now - stat.mtime) / 1000),
                    sentence=str(info.get("sentence", "")),
                )
            )
        return out

    def begin_term(self, epoch: int, node: str, reason: str) -> None:
        term = {"epoch": epoch, "node": node, "reason": reason, "started_at": time.time()}

        def add(terms: Any) -> list[Any]:
            kept = [t for t in terms if t.get("epoch") != epoch] if isinstance(terms, list) else []
            return [*kept, term][-HISTORY_KEEP:]

        self.store.update("begin term", self.store.path("history"), add)

    def end_term(self, epoch: int, reason: str) -> None:
        def end(terms: Any) -> list[Any]:
            terms = terms if isinstance(terms, list) else []
            for term in terms:
                if term.get("epoch") == epoch and term.get("ended_at") is None:
                    term.update(ended_at=time.time(), end_reason=reason)
            return terms

        self.store.update("end term", self.store.path("history"), end)

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        got = self.store.read("read history", self.store.path("history"))
        terms = load(got[0]) if got else []
        return list(reversed(terms))[:limit] if isinstance(terms, list) else []

    def flags(self) -> ClusterFlags:
        got = self.store.read("read flags", self.store.path("flags"), watch=self.store.wake)
        info = load(got[0]) if got else {}
        if not got or not isinstance(info, dict):
            return ClusterFlags()
        target = info.get("switchover_to")
        age = None
        if target is not None:
            age = max(0.0, (self.store.server_now_ms() - got[1].mtime) / 1000)
        return ClusterFlags(
            paused=bool(info.get("paused")),
            switchover_to=target,
            switchover_from=info.get("switchover_from") or None,
            switchover_age=age,
        )

    def _set_flags(self, **changes: Any) -> None:
        def apply(info: Any) -> dict[str, Any]:
            merged = {**(info if isinstance(info, dict) else {}), **changes}
            return {k: v for k, v in merged.items() if v is not None}

        self.store.update("write flags", self.store.path("flags"), apply)

    def set_paused(self, paused: bool) -> None:
        self._set_flags(paused=paused or None)

    def request_switchover(self, from_node: str | None, to_node: str | None) -> None:
        self._set_flags(switchover_to=to_node or "", switchover_from=from_node or "")

    def clear_switchover(self) -> None:
        self._set_flags(switchover_to=None, switchover_from=None)

    def close(self) -> None:
        if self.owns_store:
            self.store.close()
