"""The PostgreSQL backend: a session advisory lock on a dedicated connection, the keeper's
proof-of-life session, fencing by `pg_terminate_backend`; also the PostgreSQL dialect of the
metadata DB. psycopg2 is imported only when something here is built."""

from __future__ import annotations

from failover.config import Settings
from failover.interfaces import Backend, MemberStore, MetadataDB, Parts


def metadata(settings: Settings, dsn: str) -> MetadataDB:
    from failover.backends.postgres.metadb import PostgresMetadata

    return PostgresMetadata(settings, dsn)


def build(settings: Settings) -> Parts:
    from failover.backends.postgres.election import PostgresElection
    from failover.backends.postgres.metadb import password_for, warn

    dsn = settings.lock_dsn
    assert dsn is not None  # validated
    election = PostgresElection(
        dsn,
        settings.cluster,
        settings.node,
        settings.lease_seconds,
        settings.backend_timeout_seconds,
        settings.table_prefix,
        settings.postgres.notify,
        warn,
        password_for(settings, dsn),
    )
    return Parts(election, open_store(settings))


def open_store(settings: Settings) -> MemberStore:
    dsn = settings.metadata_dsn or settings.lock_dsn
    assert dsn is not None  # validated
    from failover.backends import open_metadata

    return open_metadata(settings, dsn).members()


BACKEND = Backend("postgres", build, open_store, metadata, schemes=("postgresql", "postgres"))
