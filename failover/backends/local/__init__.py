"""The embedded local backend: an fcntl lock file and SQLite on one host, for trying the
controller, demos and tests; the keeper's proof of life is a lock file."""

from __future__ import annotations

import os
from pathlib import Path

from failover.config import Settings
from failover.errors import ConfigError
from failover.interfaces import Backend, MemberStore, Parts


def build(settings: Settings) -> Parts:
    from failover.backends.local.election import LocalElection, LocalMembers, LocalStore

    store = LocalStore(settings.local.dir, settings.cluster, settings.backend_timeout_seconds)
    return Parts(LocalElection(store, settings.node, settings.lease_seconds), LocalMembers(store))


def open_store(settings: Settings, read_only: bool = False) -> MemberStore:
    from failover.backends.local.election import LocalMembers, LocalStore

    return LocalMembers(
        LocalStore(
            settings.local.dir, settings.cluster, settings.backend_timeout_seconds, read_only
        )
    )


def read_store(settings: Settings) -> MemberStore:
    """For `status`: no directory or SQLite file is created; a missing one is an error."""
    return open_store(settings, read_only=True)


def check(settings: Settings) -> None:
    """`[local] dir` is a writable directory, or can be made in its nearest parent."""
    directory = Path(settings.local.dir)
    existing = next((p for p in (directory, *directory.parents) if p.exists()), Path("/"))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        verb = "create" if existing != directory else "write to"
        raise ConfigError(
            "local.dir",
            f"cannot {verb} {directory}: {existing} is not a writable directory",
            "pick another",
        )


BACKEND = Backend("local", build, open_store, read_store=read_store, check=check)
