"""Throw-away PostgreSQL and ZooKeeper servers for integration tests.

Plain Python (no pytest import): every server lives in its own temp directory,
listens on 127.0.0.1 on a free port and is started from local binaries:

* PostgreSQL from ``/usr/lib/postgresql/<newest>/bin`` (``FAILOVER_PG_BIN`` overrides);
  when running as root, ``initdb`` and ``postgres`` run as the ``postgres`` OS user.
* ZooKeeper from the Debian ``zookeeper`` package jars (``java -cp ... QuorumPeerMain``
  in the foreground as a child process).

``docker_available()`` and the small ``Docker*`` adapters at the bottom exist for
machines with a Docker engine (``FAILOVER_TEST_SERVERS=docker|auto``); local
binaries are the primary path.

Safety nets against leftovers:

* every wait loop is bounded in iterations and time;
* children are started through ``setpriv --pdeathsig KILL`` (util-linux) from one
  long-lived spawner thread, so they get SIGKILL when the test process dies, even
  on ``os._exit`` or SIGKILL where atexit hooks do not run;
* the first server created in a process removes server dirs left by dead runs;
* every live server is registered and closed by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

__all__ = [
    "FAILOVER_PASSWORD",
    "FAILOVER_USER",
    "DockerPostgresServer",
    "DockerZooKeeperServer",
    "MariaDBServer",
    "PostgresServer",
    "ServerStartError",
    "ServerUnavailable",
    "ZooKeeperEnsemble",
    "ZooKeeperServer",
    "default_base_dir",
    "docker_available",
    "find_pg_bin",
    "free_port",
    "join_hosts",
    "server_mode",
    "zk_four_letter_word",
]

FAILOVER_USER = "failover"
FAILOVER_PASSWORD = "failover-test-pw"

LOG_TAIL_LINES = 40


class ServerUnavailable(RuntimeError):
    """The binaries needed for a server are not installed (run ``scripts/test``)."""


class ServerStartError(RuntimeError):
    """A server process did not become ready; the message ends with its log tail."""


# --------------------------------------------------------------------------- helpers

_registry_lock = threading.Lock()
_live: dict[int, Any] = {}
_handed_out_ports: set[int] = set()


def _register(server: Any) -> None:
    with _registry_lock:
        _live[id(server)] = server


def _unregister(server: Any) -> None:
    with _registry_lock:
        _live.pop(id(server), None)


@atexit.register
def _close_all_servers() -> None:
    with _registry_lock:
        servers = list(_live.values())
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


_swept = False
SHM_MIN_FREE = 2 << 30


def default_base_dir() -> Path:
    """Where server dirs go: ``FAILOVER_TEST_TMPDIR``, else /dev/shm when it is a roomy
    tmpfs (initdb + copies are ~10x faster than on a slow disk), else the temp dir."""
    override = os.environ.get("FAILOVER_TEST_TMPDIR")
    if override:
        return Path(override)
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize >= SHM_MIN_FREE and os.access(shm, os.W_OK | os.X_OK):
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def _make_server_dir(prefix: str, base_dir: str | os.PathLike[str] | None) -> Path:
    """A fresh temp dir tagged with our PID; also sweeps dirs of dead test runs once."""
    global _swept
    base = Path(base_dir) if base_dir else default_base_dir()
    if not _swept:
        _swept = True
        for candidate in {base, Path("/dev/shm"), Path(tempfile.gettempdir())}:
            _sweep_stale_dirs(candidate)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    (path / "owner.pid").write_text(f"{os.getpid()}\n")
    return path


def _sweep_stale_dirs(base: Path) -> None:
    """Remove failover-{pg,zk}-* dirs left by test processes that died hard (SIGKILL)."""
    for path in [
        *base.glob("failover-pg-*"),
        *base.glob("failover-zk-*"),
        *base.glob("failover-my-*"),
    ]:
        try:
            owner = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if owner == os.getpid() or _pid_alive(owner):
            continue
        pidfile = path / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, IndexError, ValueError):
            postmaster = int(pidfile.read_text().split()[0])
            if (
                _pid_alive(postmaster)
                and "postgres" in Path(f"/proc/{postmaster}/comm").read_text()
            ):
                continue  # still serving: leave it alone
        _remove_stale_shm(pidfile)
        shutil.rmtree(path, ignore_errors=True)


def _remove_stale_shm(pidfile: Path) -> None:
    """Drop the SysV segment named in postmaster.pid (left behind after a SIGKILL)."""
    try:
        shmid = int(pidfile.read_text().splitlines()[6].split()[1])
    except (OSError, IndexError, ValueError):
        return
    ipcrm = shutil.which("ipcrm")
    if ipcrm:
        subprocess.run(
            [ipcrm, "-m", str(shmid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free 127.0.0.1 TCP port, never handed out before in this process.

    Ports are taken below the kernel's ephemeral range so that a client's outgoing
    connection cannot grab a server's port while the server is stopped for a restart.
    """
    lo, hi = _ephemeral_range()
    if lo > 16000:
        low, high = 15000, lo - 1
    elif hi < 64000:
        low, high = hi + 1, 65535
    else:
        low, high = 1024, 65535
    for _ in range(500):
        port = random.randint(low, high)
        with _registry_lock:
            if port in _handed_out_ports:
                continue
        if _port_is_free(port):
            with _registry_lock:
                _handed_out_ports.add(port)
            return port
    # Fall back to the kernel's choice.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with _registry_lock:
        _handed_out_ports.add(port)
    return port


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError as exc:
        return f"(no log: {exc})"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join(text)


def _pdeathsig_prefix() -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class _Spawner:
    """Starts server processes from one long-lived daemon thread.

    ``--pdeathsig`` fires when the *thread* that forked the child exits, not the
    process: spawning from a test's short-lived worker thread would SIGKILL the
    server when that thread ends. This thread lives as long as the process.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Future[Any], list[str], dict[str, Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="test-server-spawner", daemon=True
                )
                self._thread.start()
        fut: Future[subprocess.Popen[bytes]] = Future()
        self._queue.put((fut, args, kwargs))
        return fut.result(timeout=60)

    def _run(self) -> None:
        while True:
            fut, args, kwargs = self._queue.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(subprocess.Popen(args, **kwargs))
            except BaseException as exc:
                fut.set_exception(exc)


_spawner = _Spawner()


def _spawn_server_process(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen ``args`` wrapped in ``setpriv --pdeathsig KILL`` (if available)."""
    prefix = _pdeathsig_prefix()
    if not prefix:
        return subprocess.Popen(args, **kwargs)
    return _spawner.popen(prefix + args, **kwargs)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children_of(pid: int) -> list[int]:
    kids = []
    for stat_path in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat_path.split("/")[2]))
    return kids


def _wait_pids_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait (bounded) until ``pids`` have exited; return the ones still alive."""
    pending = list(pids)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        pending = [p for p in pending if _pid_alive(p)]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return pending


def _stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send ``sig``, wait up to ``timeout``, then SIGKILL and reap."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def _wait_until(
    probe: Any, *, what: str, timeout: float, interval: float, alive: Any, log: Path
) -> Any:
    """Call ``probe()`` until it returns a truthy value; bounded in count and time."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    for _ in range(int(timeout / interval) + 1):
        if not alive():
            raise ServerStartError(f"{what} exited during startup; log tail:\n{_tail(log)}")
        try:
            result = probe()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise ServerStartError(
        f"{what} not ready after {timeout:.0f}s (last error: {last_error!r}); "
        f"log tail:\n{_tail(log)}"
    )


def server_mode() -> str:
    """``local`` or ``docker`` according to ``FAILOVER_TEST_SERVERS`` (default ``auto``)."""
    wanted = os.environ.get("FAILOVER_TEST_SERVERS", "auto").strip().lower() or "auto"
    if wanted not in {"auto", "local", "docker"}:
        raise ValueError(f"FAILOVER_TEST_SERVERS must be auto, local or docker, not {wanted!r}")
    if wanted == "local":
        return "local"
    if docker_available():
        return "docker"
    if wanted == "docker":
        raise ServerUnavailable("FAILOVER_TEST_SERVERS=docker but no Docker engine answers")
    return "local"


_docker_cache: bool | None = None


def docker_available() -> bool:
    """True only if a Docker engine answers ``docker info`` (exit 0) within 5 s."""
    global _docker_cache
    if _docker_cache is None:
        docker = shutil.which("docker")
        if docker is None:
            _docker_cache = False
        else:
            try:
                rc = subprocess.run(
                    [docker, "info"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=5,
                    check=False,
                ).returncode
            except (OSError, subprocess.TimeoutExpired):
                rc = 1
            _docker_cache = rc == 0
    return _docker_cache


# --------------------------------------------------------------------------- PostgreSQL


class _PostgresClientMixin:
    """dsn/execute/query/create_database on top of ``host``, ``port``, superuser creds."""

    host = "127.0.0.1"
    port: int
    superuser = "postgres"
    superuser_password: str | None = None

    def dsn(
        self,
        dbname: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        **params: Any,
    ) -> str:
        """libpq URI ``postgresql://user[:password]@127.0.0.1:port/db[?params]``."""
        if user is None:
            user = self.superuser
            if password is None:
                password = self.superuser_password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        uri = f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"
        if params:
            uri += "?" + urlencode({k: str(v) for k, v in params.items()})
        return uri

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg2 connection as the superuser (autocommit on)."""
        import psycopg2

        kwargs.setdefault("connect_timeout", 10)
        conn = psycopg2.connect(self.dsn(dbname), **kwargs)
        conn.autocommit = True
        return conn

    def execute(self, sql: Any, params: Any = None, dbname: str = "postgres") -> None:
        """Run one statement as the superuser in autocommit mode."""
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
        finally:
            conn.close()

    def query(
        self, sql: Any, params: Any = None, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser and return all rows."""
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (random name if None) and return its superuser DSN."""
        from psycopg2 import sql

        name = name or f"t_{uuid.uuid4().hex[:16]}"
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, terminating its connections first (PostgreSQL 13+)."""
        from psycopg2 import sql

        self.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def _create_failover_role(self) -> None:
        from psycopg2 import sql

        exists = self.query("SELECT 1 FROM pg_roles WHERE rolname = %s", (FAILOVER_USER,))
        verb = "ALTER" if exists else "CREATE"
        self.execute(
            sql.SQL(verb + " ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(FAILOVER_USER), sql.Literal(FAILOVER_PASSWORD)
            )
        )
        self.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(FAILOVER_USER)))

    def _ping(self) -> bool:
        import psycopg2

        conn = psycopg2.connect(self.dsn(), connect_timeout=2)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        finally:
            conn.close()


def find_pg_bin() -> Path:
    """Directory with ``initdb`` and ``postgres``; raises ServerUnavailable if missing."""
    override = os.environ.get("FAILOVER_PG_BIN")
    candidates = [Path(override)] if override else []
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")

    def version_key(path: str) -> tuple[int, ...]:
        ver = Path(path).parent.parent.name
        return tuple(int(p) for p in ver.split(".") if p.isdigit())

    candidates += [Path(p).parent for p in sorted(found, key=version_key, reverse=True)]
    for on_path in (shutil.which("postgres"),):
        if on_path:
            candidates.append(Path(on_path).parent)
    for cand in candidates:
        if (cand / "postgres").is_file() and (cand / "initdb").is_file():
            return cand
    raise ServerUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin; "
        "run scripts/test to install them (or set FAILOVER_PG_BIN)"
    )


class PostgresServer(_PostgresClientMixin):
    """A private PostgreSQL cluster in a temp dir, listening on 127.0.0.1:<free port>.

    Auth: trust for the ``postgres`` superuser over TCP and the unix socket, and a
    scram-sha-256 password role ``failover`` (password ``failover-test-pw``,
    CREATEDB, member of ``pg_signal_backend``).
    """

    START_TIMEOUT = 60.0
    STOP_TIMEOUT = 30.0

    def __init__(
        self,
        port: int | None = None,
        settings: dict[str, Any] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        use_template: bool = True,
    ) -> None:
        self.bin_dir = find_pg_bin()
        self.use_template = use_template
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.dir = _make_server_dir("failover-pg-", base_dir)
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._initdb_done = False
        self._initialized = False
        self._run_as_postgres = os.geteuid() == 0
        _register(self)
        if self._run_as_postgres:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                self.close()
                raise ServerUnavailable(
                    "no 'postgres' OS user to run initdb/postgres as root; "
                    "run scripts/test (installs the postgresql package)"
                ) from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    # -- process plumbing -------------------------------------------------------------

    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"cwd": self.dir, "stdin": subprocess.DEVNULL}
        if self._run_as_postgres:
            kwargs.update(user="postgres", group="postgres", extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if self._run_as_postgres:
            env.update(HOME=str(self.dir), USER="postgres", LOGNAME="postgres")
        kwargs["env"] = env
        return kwargs

    def _initdb(self) -> None:
        with open(self.log_path, "ab") as log:
            rc = subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
                **self._popen_kwargs(),
            ).returncode
        if rc != 0:
            raise ServerStartError(f"initdb failed (rc={rc}); log tail:\n{_tail(self.log_path)}")
        (self.data_dir / "pg_hba.conf").write_text(
            "# written by tests/servers.py\n"
            "local all all trust\n"
            f"host all {FAILOVER_USER} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        conf = {
            "listen_addresses": "127.0.0.1",
            # fsync=off survives process kills (the OS page cache keeps the WAL), but
            # synchronous_commit=off would NOT: commits younger than wal_writer_delay
            # are lost on a SIGKILL, which breaks crash tests. Keep it on.
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": 200,
            "shared_buffers": "64MB",
            "password_encryption": "scram-sha-256",
            "logging_collector": "off",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "log_min_messages": "warning",
            "timezone": "UTC",
        }
        with open(self.data_dir / "postgresql.conf", "a") as fh:
            fh.write("\n# written by tests/servers.py\n")
            for key, value in conf.items():
                fh.write(f"{key} = {_pg_conf_value(value)}\n")

    def _copy_template(self, template: Path) -> None:
        rc = subprocess.run(
            ["cp", "-a", str(template), str(self.data_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
        if rc.returncode != 0:
            raise ServerStartError(f"copying the initdb template failed: {rc.stderr!r}")

    def _spawn(self) -> None:
        args = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"unix_socket_directories={self.dir}",
        ]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            self._proc = _spawn_server_process(
                args, stdout=log, stderr=subprocess.STDOUT, **self._popen_kwargs()
            )

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the postmaster (None when not running)."""
        return self._proc.pid if self.is_running() and self._proc else None

    def start(self) -> PostgresServer:
        """initdb (first time only), start the postmaster, wait until it answers."""
        if self.is_running():
            return self
        if not self._initdb_done:
            template = _pg_template(self.bin_dir) if self.use_template else None
            if template is not None:
                self._copy_template(template)
                self._initialized = True  # the template already has the failover role
            else:
                self._initdb()
            self._initdb_done = True
        self._spawn()
        _wait_until(
            self._ping,
            what=f"postgres on port {self.port}",
            timeout=self.START_TIMEOUT,
            interval=0.05,
            alive=self.is_running,
            log=self.log_path,
        )
        if not self._initialized:
            self._create_failover_role()
            self._initialized = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Shut down with pg_ctl semantics: ``smart``, ``fast`` or ``immediate``."""
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        if self._proc is None:
            return
        children = _children_of(self._proc.pid) if self._proc.poll() is None else []
        _stop_process(self._proc, sig, self.STOP_TIMEOUT)
        self._reap_orphans(children)

    def restart(self, mode: str = "fast") -> PostgresServer:
        """Stop (``mode``) and start again on the same port and data dir."""
        self.stop(mode)
        return self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster, like a crash; its backends exit on their own.

        Returns once no process of this server remains (stragglers are SIGKILLed
        after 10 s), so ``start()`` can recover the cluster right away.
        """
        if self._proc is None or self._proc.poll() is not None:
            return
        children = _children_of(self._proc.pid)
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait(timeout=10)
        self._reap_orphans(children)

    def _reap_orphans(self, pids: list[int]) -> None:
        left = _wait_pids_gone(pids, timeout=10)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_pids_gone(left, timeout=5)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Stop the server (immediate) and remove its directory."""
        try:
            if self.is_running():
                self.stop("immediate")
            _remove_stale_shm(self.data_dir / "postmaster.pid")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            _unregister(self)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PostgresServer 127.0.0.1:{self.port} {state} dir={self.dir}>"


_template_lock = threading.Lock()
_templates: dict[Path, PostgresServer] = {}


def _pg_template(bin_dir: Path) -> Path | None:
    """A cleanly stopped, initialized data dir (failover role included), made once per
    process: copying it takes ~0.05 s where initdb takes ~1.5 s. None if it failed."""
    with _template_lock:
        tmpl = _templates.get(bin_dir)
        if tmpl is None or not (tmpl.data_dir / "PG_VERSION").exists():
            tmpl = PostgresServer(use_template=False)
            try:
                tmpl.start()
                tmpl.stop("fast")
            except ServerStartError:
                tmpl.close()
                return None
            _templates[bin_dir] = tmpl
        return tmpl.data_dir


def _pg_conf_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


# --------------------------------------------------------------------------- MariaDB


def find_mariadbd() -> tuple[str, str]:
    """(mariadbd, mariadb-install-db) of Debian's mariadb-server; ServerUnavailable if missing."""
    server = shutil.which("mariadbd") or (
        "/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").exists() else None
    )
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if not server or not install:
        raise ServerUnavailable(
            "MariaDB server binaries (mariadbd, mariadb-install-db) not found; "
            "run scripts/test (installs the mariadb-server package)"
        )
    return server, install


class MariaDBServer:
    """A private MariaDB server in a temp dir on 127.0.0.1:<free port>, its socket in that dir.

    Never the system's own service: its own datadir (copied from a per-process template made
    by ``mariadb-install-db``), ``--no-defaults``, run as the ``mysql`` OS user when root.
    Accounts: ``root`` without password (TCP from 127.0.0.1), and ``failover`` (password
    ``failover-test-pw``) with every privilege on databases ``t\\_%`` and nothing global.
    """

    START_TIMEOUT = 60.0
    STOP_TIMEOUT = 30.0
    host = "127.0.0.1"

    def __init__(
        self,
        port: int | None = None,
        settings: dict[str, Any] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        use_template: bool = True,
    ) -> None:
        self.server_bin, self.install_bin = find_mariadbd()
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.use_template = use_template
        self.dir = _make_server_dir("failover-my-", base_dir)
        self.data_dir = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        self.log_path = self.dir / "mariadb.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._as_mysql = os.geteuid() == 0
        _register(self)
        if self._as_mysql:
            import pwd

            try:
                pw = pwd.getpwnam("mysql")
            except KeyError:
                self.close()
                raise ServerUnavailable("no 'mysql' OS user: run scripts/test") from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"cwd": self.dir, "stdin": subprocess.DEVNULL}
        if self._as_mysql:
            kwargs.update(user="mysql", group="mysql", extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC", HOME=str(self.dir), TMPDIR=str(self.dir))
        kwargs["env"] = env
        return kwargs

    def _install(self) -> None:
        with open(self.log_path, "ab") as log:
            rc = subprocess.run(
                [
                    self.install_bin,
                    "--no-defaults",
                    f"--datadir={self.data_dir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    f"--tmpdir={self.dir}",
                    "--skip-name-resolve",
                    "--innodb-buffer-pool-size=16M",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=180,
                check=False,
                **self._popen_kwargs(),
            ).returncode
        if rc != 0:
            raise ServerStartError(
                f"mariadb-install-db failed (rc={rc}); log:\n{_tail(self.log_path)}"
            )

    def _spawn(self) -> None:
        args = [
            self.server_bin,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.dir / 'mariadbd.pid'}",
            f"--log-error={self.log_path}",
            "--skip-name-resolve",
            "--skip-log-bin",
            f"--tmpdir={self.dir}",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=2",  # the page cache survives process kills
            "--max-connections=300",
            "--default-time-zone=+00:00",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]
        args += [f"--{k.replace('_', '-')}={v}" for k, v in self.settings.items()]
        self._proc = _spawn_server_process(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self._popen_kwargs()
        )

    def dsn(
        self, dbname: str = "", user: str = "root", password: str | None = None, **params: Any
    ) -> str:
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        query = f"?{urlencode(params)}" if params else ""
        return f"mysql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}{query}"

    def connect(
        self, dbname: str = "", user: str = "root", password: str = "", **kwargs: Any
    ) -> Any:
        import pymysql

        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password,
            database=dbname or None,
            autocommit=True,
            connect_timeout=5,
            **kwargs,
        )

    def query(self, sql: str, params: Any = None, dbname: str = "") -> list[tuple[Any, ...]]:
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def create_database(self, name: str | None = None) -> str:
        """A fresh database (``t_<hex>`` by default); returns its root DSN."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        self.query(f"CREATE DATABASE `{name}`")
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.query(f"DROP DATABASE IF EXISTS `{name}`")

    def _ping(self) -> bool:
        conn = self.connect()
        conn.close()
        return True

    def _create_accounts(self) -> None:
        for sql in (
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''",
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
            f"CREATE USER IF NOT EXISTS '{FAILOVER_USER}'@'%' IDENTIFIED BY '{FAILOVER_PASSWORD}'",
            f"GRANT ALL PRIVILEGES ON `t\\_%`.* TO '{FAILOVER_USER}'@'%'",
            "GRANT PROCESS ON *.* TO 'failover'@'%'",
        ):
            self._query_socket(sql)

    def _query_socket(self, sql: str) -> None:
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() and self._proc else None

    def start(self) -> MariaDBServer:
        if self.is_running():
            return self
        fresh = not (self.data_dir / "mysql").exists()
        if fresh:
            template = _my_template() if self.use_template else None
            if template is not None:
                subprocess.run(
                    ["cp", "-a", str(template), str(self.data_dir)], check=True, timeout=120
                )
            else:
                self._install()
        self._spawn()
        _wait_until(
            (lambda: self._query_socket("SELECT 1") or True)
            if fresh and not self._ready
            else self._ping,
            what=f"mariadbd on port {self.port}",
            timeout=self.START_TIMEOUT,
            interval=0.05,
            alive=self.is_running,
            log=self.log_path,
        )
        if not self._ready:
            self._create_accounts()
            self._ready = True
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._proc is not None:
            _stop_process(self._proc, sig, self.STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL the server, like a crash (InnoDB recovers at the next start)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def restart(self) -> MariaDBServer:
        self.stop()
        return self.start()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        try:
            if self.is_running():
                self.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            _unregister(self)

    def __enter__(self) -> MariaDBServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<MariaDBServer 127.0.0.1:{self.port} {state} dir={self.dir}>"


_my_templates: list[MariaDBServer] = []


def _my_template() -> Path | None:
    """A cleanly stopped, installed datadir with the test accounts, made once per process:
    copying it takes well under a second where mariadb-install-db takes several."""
    with _template_lock:
        if not _my_templates or not (_my_templates[0].data_dir / "mysql").exists():
            tmpl = MariaDBServer(use_template=False)
            try:
                tmpl.start()
                tmpl.stop()
            except ServerStartError:
                tmpl.close()
                return None
            _my_templates[:] = [tmpl]
        return _my_templates[0].data_dir


# --------------------------------------------------------------------------- ZooKeeper

_ZK_LOG4J = """\
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n
"""


def zk_classpath() -> list[str]:
    """Jars for QuorumPeerMain, as the Debian zkEnv.sh builds it, plus a log4j binding.

    Debian's zookeeper.jar carries a manifest Class-Path for its dependencies; we add
    slf4j-log4j12 + log4j-1.2 so the server log is not swallowed by slf4j's NOP logger.
    """
    override = os.environ.get("FAILOVER_ZK_CLASSPATH")
    if override:
        return override.split(":")
    main = Path("/usr/share/java/zookeeper.jar")
    if not main.is_file():
        jars = sorted(glob.glob("/usr/share/zookeeper/zookeeper-3*.jar"))
        if not jars:
            raise ServerUnavailable(
                "ZooKeeper jars not found (/usr/share/java/zookeeper.jar); "
                "run scripts/test to install the Debian 'zookeeper' package"
            )
        main = Path(jars[-1])
    cp = [str(main)]
    for name in ("slf4j-log4j12.jar", "log4j-1.2.jar"):
        jar = Path("/usr/share/java") / name
        if jar.is_file():
            cp.append(str(jar))
    # Netty (unversioned jar names), for the Netty connection factory that TLS needs.
    cp += sorted(
        j for j in glob.glob("/usr/share/java/netty-*.jar") if not re.search(r"-\d", Path(j).name)
    )
    return cp


def find_java() -> str:
    java = os.environ.get("FAILOVER_JAVA") or shutil.which("java")
    if java is None and Path("/usr/bin/java").exists():
        java = "/usr/bin/java"
    if java is None:
        raise ServerUnavailable(
            "java not found; run scripts/test to install default-jre-headless and zookeeper"
        )
    return java


def zk_four_letter_word(host: str, port: int, word: str, timeout: float = 2.0) -> str:
    """Send a ZooKeeper four-letter word (``ruok``, ``srvr``, ``mntr``...) and read the reply."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(word.encode("ascii"))
        chunks = []
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            chunk = sock.recv(65536)
            if not chunk or time.monotonic() > deadline:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


class ZooKeeperServer:
    """A ZooKeeper server (standalone or ensemble member) in a temp dir.

    ``tick_time_ms`` defaults to 200 so sessions expire fast. ZooKeeper clamps every
    client's session timeout into [min_session_timeout_ms, max_session_timeout_ms],
    which default to 2x and 20x tickTime (400 ms .. 4 s with tickTime=200).
    """

    START_TIMEOUT = 60.0
    STOP_TIMEOUT = 10.0
    JVM_OPTS = (
        "-Xmx256m",
        "-Xms32m",
        "-Xss512k",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-XX:-UsePerfData",
        "-Xshare:auto",
        "-Djava.awt.headless=true",
        "-Djava.net.preferIPv4Stack=true",
        "-Dzookeeper.jmx.log4j.disable=true",
        "-Dzookeeper.admin.enableServer=false",
        "-Dzookeeper.snapshot.trust.empty=true",
    )

    def __init__(
        self,
        tick_time_ms: int = 200,
        min_session_timeout_ms: int | None = None,
        max_session_timeout_ms: int | None = None,
        *,
        port: int | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        extra_config: dict[str, Any] | None = None,
        _myid: int | None = None,
        _peers: dict[int, tuple[int, int, int]] | None = None,
    ) -> None:
        self.java = find_java()
        self.classpath = zk_classpath()
        self.tick_time_ms = tick_time_ms
        self.min_session_timeout_ms = min_session_timeout_ms
        self.max_session_timeout_ms = max_session_timeout_ms
        self.extra_config = dict(extra_config or {})
        self.myid = _myid
        self.peers = _peers or {}  # myid -> (client port, quorum port, election port)
        if self.myid is not None:
            port = self.peers[self.myid][0]
        self.port = port or free_port()
        self.dir = _make_server_dir("failover-zk-", base_dir)
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "zookeeper.log"
        self.cfg_path = self.dir / "zoo.cfg"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()
        _register(self)

    @classmethod
    def ensemble(cls, n: int = 3, **kwargs: Any) -> ZooKeeperEnsemble:
        """``n`` servers configured as one quorum (not started; call ``.start()``)."""
        if n < 1:
            raise ValueError("an ensemble needs at least one server")
        peers = {i: (free_port(), free_port(), free_port()) for i in range(1, n + 1)}
        return ZooKeeperEnsemble(cls(_myid=i, _peers=peers, **kwargs) for i in peers)

    @property
    def effective_min_session_timeout_ms(self) -> int:
        return self.min_session_timeout_ms or 2 * self.tick_time_ms

    @property
    def effective_max_session_timeout_ms(self) -> int:
        return self.max_session_timeout_ms or 20 * self.tick_time_ms

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self.tick_time_ms}",
            f"dataDir={self.data_dir}",
            f"clientPort={self.port}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            "maxClientCnxns=0",
            "autopurge.purgeInterval=0",
        ]
        if self.min_session_timeout_ms is not None:
            lines.append(f"minSessionTimeout={self.min_session_timeout_ms}")
        if self.max_session_timeout_ms is not None:
            lines.append(f"maxSessionTimeout={self.max_session_timeout_ms}")
        if self.myid is not None:
            # initLimit/syncLimit are in ticks: keep them generous in wall-clock terms.
            init_ticks = max(10, 10_000 // self.tick_time_ms)
            sync_ticks = max(5, 2_000 // self.tick_time_ms)
            lines += [f"initLimit={init_ticks}", f"syncLimit={sync_ticks}", "cnxTimeout=1000"]
            for sid, (client, quorum, election) in sorted(self.peers.items()):
                lines.append(f"server.{sid}=127.0.0.1:{quorum}:{election};127.0.0.1:{client}")
            (self.data_dir / "myid").write_text(f"{self.myid}\n")
        lines += [f"{k}={v}" for k, v in self.extra_config.items()]
        self.cfg_path.write_text("\n".join(lines) + "\n")
        (self.dir / "log4j.properties").write_text(_ZK_LOG4J)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() and self._proc else None

    def spawn(self) -> None:
        """Start the JVM without waiting for readiness (used by ensembles)."""
        if self.is_running():
            return
        args = [
            self.java,
            *self.JVM_OPTS,
            f"-Dzookeeper.log.dir={self.dir}",
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            "-cp",
            ":".join([str(self.dir), *self.classpath]),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(self.cfg_path),
        ]
        env = dict(os.environ)
        for var in ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH"):
            env.pop(var, None)
        with open(self.log_path, "ab") as log:
            self._proc = _spawn_server_process(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                env=env,
            )

    def four_letter_word(self, word: str, timeout: float = 2.0) -> str:
        """Reply to a four-letter word (``srvr``, ``cons``, ``mntr``, ``dump``...)."""
        return zk_four_letter_word("127.0.0.1", self.port, word, timeout)

    def srvr(self, timeout: float = 2.0) -> str:
        return self.four_letter_word("srvr", timeout)

    def mode(self) -> str | None:
        """``standalone``, ``leader``, ``follower``... or None if not serving."""
        try:
            reply = self.srvr(timeout=1.0)
        except OSError:
            return None
        for line in reply.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def _probe_ready(self) -> bool:
        if zk_four_letter_word("127.0.0.1", self.port, "ruok", 1.0) != "imok":
            return False
        return self.mode() is not None

    def wait_ready(self, timeout: float | None = None) -> None:
        _wait_until(
            self._probe_ready,
            what=f"zookeeper on port {self.port}",
            timeout=timeout or self.START_TIMEOUT,
            interval=0.05,
            alive=self.is_running,
            log=self.log_path,
        )

    def start(self, wait: bool = True) -> ZooKeeperServer:
        """Start the JVM and (by default) wait until it serves clients.

        An ensemble member only serves once a quorum is up, so for a fresh ensemble
        use ``ZooKeeperEnsemble.start()`` (or ``start(wait=False)`` on each member).
        """
        self.spawn()
        if wait:
            self.wait_ready()
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT seconds."""
        if self._proc is not None:
            _stop_process(self._proc, signal.SIGTERM, self.STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL the JVM."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait(timeout=10)

    def restart(self, wait: bool = True) -> ZooKeeperServer:
        self.stop()
        return self.start(wait=wait)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            _unregister(self)

    def __enter__(self) -> ZooKeeperServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        role = f" myid={self.myid}" if self.myid is not None else ""
        return f"<ZooKeeperServer {self.hosts}{role} {state} dir={self.dir}>"


def join_hosts(servers: Sequence[Any]) -> str:
    """``"127.0.0.1:p1,127.0.0.1:p2,..."`` for a kazoo ``hosts=`` argument."""
    return ",".join(s.hosts for s in servers)


class ZooKeeperEnsemble(list[ZooKeeperServer]):
    """A list of ZooKeeperServer members of one quorum, with group operations."""

    @property
    def hosts(self) -> str:
        return join_hosts(self)

    def start(self, timeout: float = ZooKeeperServer.START_TIMEOUT) -> ZooKeeperEnsemble:
        """Start all members, then wait until every one of them serves."""
        for server in self:
            server.spawn()
        for server in self:
            server.wait_ready(timeout)
        return self

    def leader(self) -> ZooKeeperServer | None:
        for server in self:
            if server.is_running() and server.mode() == "leader":
                return server
        return None

    def stop(self) -> None:
        for server in self:
            server.stop()

    def kill(self) -> None:
        for server in self:
            server.kill()

    def close(self) -> None:
        for server in self:
            with contextlib.suppress(Exception):
                server.close()

    def __enter__(self) -> ZooKeeperEnsemble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- Docker path
# Only used when a Docker engine answers and FAILOVER_TEST_SERVERS is auto/docker, and
# only for the shared session servers: restart/kill tests always use local binaries
# (the factories), because a restarted container gets a new host port.


class DockerPostgresServer(_PostgresClientMixin):
    superuser_password = "postgres-test-pw"

    def __init__(self, image: str = "postgres:15") -> None:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer
        self._container = PostgresContainer(
            image, username="postgres", password=self.superuser_password, dbname="postgres"
        )
        self._container.with_command("postgres -c fsync=off -c max_connections=200")
        self.port = 0
        _register(self)

    def start(self) -> DockerPostgresServer:
        self._container.start()
        self.host = self._container.get_container_host_ip()
        self.port = int(self._container.get_exposed_port(5432))
        self._create_failover_role()
        return self

    def is_running(self) -> bool:
        return self.port != 0

    def close(self) -> None:
        try:
            if self.port:
                self._container.stop()
        finally:
            self.port = 0
            _unregister(self)


class DockerZooKeeperServer:
    def __init__(self, image: str = "zookeeper:3.8", tick_time_ms: int = 200) -> None:
        from testcontainers.core.container import DockerContainer

        self.tick_time_ms = tick_time_ms
        self._container = (
            DockerContainer(image)
            .with_exposed_ports(2181)
            .with_env("ZOO_TICK_TIME", str(tick_time_ms))
            .with_env("ZOO_4LW_COMMANDS_WHITELIST", "*")
            .with_env("ZOO_ADMINSERVER_ENABLED", "false")
        )
        self.host = "127.0.0.1"
        self.port = 0
        _register(self)

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    def four_letter_word(self, word: str, timeout: float = 2.0) -> str:
        return zk_four_letter_word(self.host, self.port, word, timeout)

    def start(self) -> DockerZooKeeperServer:
        self._container.start()
        self.host = self._container.get_container_host_ip()
        self.port = int(self._container.get_exposed_port(2181))
        deadline = time.monotonic() + 60
        for _ in range(600):
            with contextlib.suppress(OSError):
                if "Mode:" in zk_four_letter_word(self.host, self.port, "srvr", 1.0):
                    return self
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.close()
        raise ServerStartError(f"zookeeper container on {self.hosts} not ready after 60s")

    def is_running(self) -> bool:
        return self.port != 0

    def close(self) -> None:
        try:
            if self.port:
                self._container.stop()
        finally:
            self.port = 0
            _unregister(self)
