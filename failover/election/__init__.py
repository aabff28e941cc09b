"""Election backends; `open_backend` builds the configured one (drivers imported lazily)."""

from __future__ import annotations

from failover.config import Settings
from failover.election.base import ElectionBackend, MemberStore


def open_backend(settings: Settings) -> tuple[ElectionBackend, MemberStore]:
    """The election backend and the member store for `settings.backend`."""
    if settings.backend == "local":
        from failover.election.local import LocalElection, LocalMembers, LocalStore

        store = LocalStore(settings.local.dir, settings.cluster, settings.backend_timeout_seconds)
        return LocalElection(store, settings.node, settings.lease_seconds), LocalMembers(store)
    raise NotImplementedError(f"backend {settings.backend!r} is not available in this version")


def open_store(settings: Settings) -> MemberStore:
    """The member store alone (for `status`, `pause`, `switchover` from any host)."""
    if settings.backend == "local":
        from failover.election.local import LocalMembers, LocalStore

        return LocalMembers(
            LocalStore(settings.local.dir, settings.cluster, settings.backend_timeout_seconds)
        )
    raise NotImplementedError(f"backend {settings.backend!r} is not available in this version")
