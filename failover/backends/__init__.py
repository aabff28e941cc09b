"""The backend registry: `backend = "<name>"` -> the package that knows it.

Adding a backend is one package with a `BACKEND` entry (`interfaces.Backend`) and one line in
`BACKENDS`. Packages are imported only when used, and import their drivers only when built.
"""

from __future__ import annotations

import importlib

from failover.config import Settings
from failover.errors import ConfigError
from failover.interfaces import Backend, MemberStore, MetadataDB, Parts

BACKENDS = {
    "local": "failover.backends.local",
    "postgres": "failover.backends.postgres",
    "mysql": "failover.backends.mysql",
    "zookeeper": "failover.backends.zookeeper",
}


def backend(name: str) -> Backend:
    """The registered entry of backend `name`."""
    if name not in BACKENDS:
        raise NotImplementedError(f"backend {name!r} is not available in this version")
    entry = importlib.import_module(BACKENDS[name]).BACKEND
    assert isinstance(entry, Backend), f"{BACKENDS[name]}.BACKEND is not a Backend"
    return entry


def open_backend(settings: Settings) -> Parts:
    """The election, member store and reach board of `settings.backend`."""
    return backend(settings.backend).build(settings)


def open_store(settings: Settings, read_only: bool = False) -> MemberStore:
    """The member store alone (for `status`, `pause`, `switchover` from any host);
    `read_only`: one that creates nothing (the local backend: no directory, no SQLite file)."""
    entry = backend(settings.backend)
    if read_only and entry.read_store is not None:
        return entry.read_store(settings)
    return entry.open_store(settings)


def startup_check(settings: Settings) -> None:
    """The backend's own start-up checks of `failover run`, without side effects."""
    entry = backend(settings.backend)
    if entry.check is not None:
        entry.check(settings)


def dsn_scheme(dsn: str) -> str:
    """`postgresql` of `postgresql+psycopg2://...`; a DSN without `://` is libpq's
    `key=value` form, which only PostgreSQL speaks."""
    scheme, sep, _ = dsn.partition("://")
    return scheme.split("+", 1)[0].lower() if sep else "postgresql"


def open_metadata(settings: Settings, dsn: str) -> MetadataDB:
    """The metadata-DB dialect for `dsn`, chosen by its scheme."""
    scheme = dsn_scheme(dsn)
    for name in BACKENDS:
        entry = backend(name)
        if entry.metadata is not None and scheme in entry.schemes:
            return entry.metadata(settings, dsn)
    known = sorted({s for n in BACKENDS for s in backend(n).schemes})
    raise ConfigError(
        "metadata_dsn",
        f"no metadata-DB dialect for scheme {scheme!r}",
        f"use one of: {', '.join(known)}",
    )
