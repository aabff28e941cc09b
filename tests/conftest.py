"""Shared fixtures that start real PostgreSQL / ZooKeeper servers.

Nothing here is autouse: a server starts only when a test requests its fixture.

* ``pg_server`` / ``zk_server``: one server per session (Docker if available and
  ``FAILOVER_TEST_SERVERS`` is ``auto``/``docker``, otherwise local binaries).
* ``pg_dsn``: a fresh database per test on the session server (superuser DSN).
* ``zk_chroot``: ``"127.0.0.1:PORT/t-<uuid>"``, a fresh (created) chroot per test.
* ``my_server`` / ``my_dsn`` / ``my_factory``: the same for MariaDB (mysql backend).
* ``pg_factory`` / ``zk_factory``: private local servers for tests that stop,
  restart or kill them; closed at test end.

Missing binaries make these fixtures FAIL (telling to run ``scripts/test``),
unless ``FAILOVER_TEST_ALLOW_SKIP=1``, in which case they skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import pytest

try:
    from tests import servers
except ImportError:  # tests/ itself is on sys.path (rootdir conftest import)
    import servers  # type: ignore[no-redef,import-not-found,unused-ignore]

T = TypeVar("T")


_SESSION_TMPDIR: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Every process the tests start gets TMPDIR = one directory of this session, removed at its
    end: a SIGKILLed Airflow scheduler leaves its multiprocessing `pymp-*` directories there,
    not in /tmp. This process keeps /tmp (tempfile caches it first), so pytest's own
    `tmp_path` directories stay where they are."""
    tempfile.gettempdir()
    path = tempfile.mkdtemp(prefix="failover-tests-")
    _SESSION_TMPDIR.append(path)
    os.environ["TMPDIR"] = path


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _SESSION_TMPDIR:
        shutil.rmtree(path, ignore_errors=True)
    _SESSION_TMPDIR.clear()


def _unavailable(exc: Exception) -> NoReturn:
    msg = f"{exc}\nRun scripts/test to install the server binaries and run the tests."
    if os.environ.get("FAILOVER_TEST_ALLOW_SKIP") == "1":
        pytest.skip(msg)
    pytest.fail(msg, pytrace=False)


def _build(make: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``make(*args, **kwargs)``, turning ServerUnavailable into fail/skip."""
    try:
        return make(*args, **kwargs)
    except servers.ServerUnavailable as exc:
        error = exc
    _unavailable(error)  # outside the except block: no chained traceback noise


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One PostgreSQL server for the whole session (PostgresServer or its Docker twin)."""
    if _build(servers.server_mode) == "docker":
        server: Any = _build(servers.DockerPostgresServer)
    else:
        server = _build(servers.PostgresServer)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(pg_server: Any) -> Iterator[str]:
    """Superuser DSN of a fresh database on the session server; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = pg_server.create_database(name)
    yield dsn
    with contextlib.suppress(Exception):
        pg_server.drop_database(name)


class PostgresFactory:
    """``pg_factory(**kwargs)`` -> a started private PostgresServer."""

    def __init__(self) -> None:
        self.servers: list[servers.PostgresServer] = []

    def __call__(self, **kwargs: Any) -> servers.PostgresServer:
        server = _build(servers.PostgresServer, **kwargs)
        self.servers.append(server)
        return server.start()

    def close(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.close()


@pytest.fixture
def pg_factory() -> Iterator[Callable[..., servers.PostgresServer]]:
    factory = PostgresFactory()
    try:
        yield factory
    finally:
        factory.close()


# --------------------------------------------------------------------------- ZooKeeper


@pytest.fixture(scope="session")
def zk_server() -> Iterator[Any]:
    """One ZooKeeper server (tickTime 200 ms) for the whole session."""
    if _build(servers.server_mode) == "docker":
        server: Any = _build(servers.DockerZooKeeperServer)
    else:
        server = _build(servers.ZooKeeperServer)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def zk_chroot(zk_server: Any) -> Iterator[str]:
    """``"127.0.0.1:PORT/t-<uuid>"``: hosts string with a fresh, existing chroot."""
    from kazoo.client import KazooClient

    chroot = f"/t-{uuid.uuid4().hex}"
    admin = KazooClient(hosts=zk_server.hosts, timeout=10)
    admin.start(timeout=15)
    try:
        admin.ensure_path(chroot)
        yield f"{zk_server.hosts}{chroot}"
        with contextlib.suppress(Exception):
            admin.delete(chroot, recursive=True)
    finally:
        admin.stop()
        admin.close()


class ZooKeeperFactory:
    """``zk_factory(**kwargs)`` -> a started private ZooKeeperServer;
    ``zk_factory.ensemble(n=3, **kwargs)`` -> a started ZooKeeperEnsemble."""

    def __init__(self) -> None:
        self.servers: list[servers.ZooKeeperServer] = []

    def __call__(self, **kwargs: Any) -> servers.ZooKeeperServer:
        server = _build(servers.ZooKeeperServer, **kwargs)
        self.servers.append(server)
        return server.start()

    def ensemble(self, n: int = 3, **kwargs: Any) -> servers.ZooKeeperEnsemble:
        members = _build(servers.ZooKeeperServer.ensemble, n, **kwargs)
        self.servers.extend(members)
        return members.start()

    def close(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.close()


@pytest.fixture
def zk_factory() -> Iterator[ZooKeeperFactory]:
    factory = ZooKeeperFactory()
    try:
        yield factory
    finally:
        factory.close()


# --------------------------------------------------------------------------- MariaDB


@pytest.fixture(scope="session")
def my_server() -> Iterator[servers.MariaDBServer]:
    """One MariaDB server (Debian's mariadb-server binaries) for the whole session."""
    server = _build(servers.MariaDBServer)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def my_dsn(my_server: servers.MariaDBServer) -> Iterator[str]:
    """Root DSN (``mysql://root@127.0.0.1:PORT/t_<hex>``) of a fresh database; dropped after."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = my_server.create_database(name)
    yield dsn
    with contextlib.suppress(Exception):
        my_server.drop_database(name)


class MariaDBFactory:
    """``my_factory(**kwargs)`` -> a started private MariaDBServer (restart / kill tests)."""

    def __init__(self) -> None:
        self.servers: list[servers.MariaDBServer] = []

    def __call__(self, **kwargs: Any) -> servers.MariaDBServer:
        server = _build(servers.MariaDBServer, **kwargs)
        self.servers.append(server)
        return server.start()

    def close(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.close()


@pytest.fixture
def my_factory() -> Iterator[MariaDBFactory]:
    factory = MariaDBFactory()
    try:
        yield factory
    finally:
        factory.close()
