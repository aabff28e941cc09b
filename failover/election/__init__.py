"""Election backends; `open_backend` builds the configured one (drivers imported lazily)."""

from __future__ import annotations

from failover import log
from failover.config import Settings
from failover.election.base import ElectionBackend, MemberStore


def _warn(text: str) -> None:
    log.get().warning("backend_warning", warning=text)


def open_backend(settings: Settings) -> tuple[ElectionBackend, MemberStore]:
    """The election backend and the member store for `settings.backend`."""
    if settings.backend == "local":
        from failover.election.local import LocalElection, LocalMembers, LocalStore

        store = LocalStore(settings.local.dir, settings.cluster, settings.backend_timeout_seconds)
        return LocalElection(store, settings.node, settings.lease_seconds), LocalMembers(store)
    if settings.backend == "postgres":
        from failover.election.postgres import PostgresElection

        assert settings.lock_dsn is not None  # validated
        election = PostgresElection(
            settings.lock_dsn,
            settings.cluster,
            settings.node,
            settings.lease_seconds,
            settings.backend_timeout_seconds,
            settings.table_prefix,
            settings.postgres.notify,
            _warn,
        )
        return election, open_store(settings)
    raise NotImplementedError(f"backend {settings.backend!r} is not available in this version")


def open_store(settings: Settings) -> MemberStore:
    """The member store alone (for `status`, `pause`, `switchover` from any host)."""
    if settings.backend == "local":
        from failover.election.local import LocalMembers, LocalStore

        return LocalMembers(
            LocalStore(settings.local.dir, settings.cluster, settings.backend_timeout_seconds)
        )
    dsn = settings.metadata_dsn or settings.lock_dsn
    if dsn:
        from failover.members import PostgresMembers

        return PostgresMembers(
            dsn,
            settings.cluster,
            settings.node,
            settings.table_prefix,
            settings.lease_seconds,
            settings.backend_timeout_seconds,
            _warn,
        )
    raise NotImplementedError(f"backend {settings.backend!r} is not available in this version")
