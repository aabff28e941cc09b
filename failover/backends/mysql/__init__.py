"""The MySQL / MariaDB backend: a named lock (GET_LOCK) on a dedicated connection, the keeper's
proof-of-life lock per epoch, fencing by KILL (or mysql.rds_kill); also the MySQL dialect of
the metadata DB. PyMySQL is imported only when something here is built."""

from __future__ import annotations

from failover.config import Settings
from failover.interfaces import Backend, MemberStore, MetadataDB, Parts


def metadata(settings: Settings, dsn: str) -> MetadataDB:
    from failover.backends.mysql.metadb import MySQLMetadata

    return MySQLMetadata(settings, dsn)


def build(settings: Settings) -> Parts:
    from failover.backends.mysql.election import MySQLElection
    from failover.backends.mysql.members import MySQLMembers
    from failover.backends.mysql.metadb import full_dsn, password_for, warn

    dsn = settings.lock_dsn
    assert dsn is not None  # validated
    dsn = full_dsn(settings, dsn)
    election = MySQLElection(
        dsn,
        settings.cluster,
        settings.node,
        settings.lease_seconds,
        settings.backend_timeout_seconds,
        settings.table_prefix,
        warn,
        password_for(settings, dsn),
        wake=settings.mysql.wake,
    )
    store = open_store(settings)
    if isinstance(store, MySQLMembers) and store.own.dsn == dsn:
        store.partner = election  # one session fewer a standby, its flags read is its campaign
    return Parts(election, store)


def open_store(settings: Settings) -> MemberStore:
    dsn = settings.metadata_dsn or settings.lock_dsn
    assert dsn is not None  # validated
    from failover.backends import open_metadata

    return open_metadata(settings, dsn).members()


BACKEND = Backend("mysql", build, open_store, metadata, schemes=("mysql", "mariadb"))
