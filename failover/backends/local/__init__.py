"""The embedded local backend: an fcntl lock file and SQLite on one host, for trying the
controller, demos and tests; the keeper's proof of life is a lock file."""

from __future__ import annotations

from failover.config import Settings
from failover.interfaces import Backend, MemberStore, Parts


def build(settings: Settings) -> Parts:
    from failover.backends.local.election import LocalElection, LocalMembers, LocalStore

    store = LocalStore(settings.local.dir, settings.cluster, settings.backend_timeout_seconds)
    return Parts(LocalElection(store, settings.node, settings.lease_seconds), LocalMembers(store))


def open_store(settings: Settings) -> MemberStore:
    from failover.backends.local.election import LocalMembers, LocalStore

    return LocalMembers(
        LocalStore(settings.local.dir, settings.cluster, settings.backend_timeout_seconds)
    )


BACKEND = Backend("local", build, open_store)
