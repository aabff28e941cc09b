"""Election backends; `open_backend` builds the configured one (drivers imported lazily)."""

from __future__ import annotations

from collections.abc import Callable

from failover import log
from failover.config import Settings
from failover.dbreach import ReachBoard
from failover.election.base import ElectionBackend, MemberStore


def _warn(text: str) -> None:
    log.get().warning("backend_warning", warning=text)


def password_for(settings: Settings, dsn: str) -> Callable[[], str] | None:
    """With `[postgres] iam_auth`, a provider of fresh RDS IAM tokens for this DSN's host."""
    if not settings.postgres.iam_auth:
        return None
    from failover.aws import IamTokens
    from failover.dsn import parse_dsn

    info = parse_dsn(dsn)
    return IamTokens(info.host, info.port, info.user, settings.aws.region).password


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
            password_for(settings, settings.lock_dsn),
        )
        return election, open_store(settings)
    if settings.backend == "zookeeper":
        from failover.election.zookeeper import ZooKeeperElection
        from failover.members import PostgresMembers
        from failover.pgfence import OlderEpochSweep
        from failover.zkconn import ZkConnection, zk_options
        from failover.zkstore import SwitchoverAware, ZkNodes, ZooKeeperMembers

        nodes = ZkNodes(ZkConnection(zk_options(settings), _warn))
        s = settings
        renew_window = s.loop_seconds + s.backend_timeout_seconds + s.self_fence_margin_seconds
        try:  # one session for both; members go to the metadata DB when there is one
            members = open_store(s) if s.metadata_dsn else ZooKeeperMembers(nodes)
            sweep = None  # a new leader ends older epochs' DB sessions on the store's session
            if isinstance(members, PostgresMembers):
                sweep = OlderEpochSweep(members.session, s.cluster)
            zk = ZooKeeperElection(nodes, s.lease_seconds, renew_window, _warn, sweep)
        except BaseException:
            nodes.conn.close()
            raise
        return zk, SwitchoverAware(members, zk.stand_aside)
    raise NotImplementedError(f"backend {settings.backend!r} is not available in this version")


def open_reach(settings: Settings, backend: ElectionBackend) -> ReachBoard | None:
    """ZooKeeper mode with a metadata DB: where members say whether they reach the DB (on the
    election's session); None when there is no DB or the rule is off."""
    from failover.config import zookeeper_db_resign_seconds

    if settings.backend != "zookeeper" or not settings.metadata_dsn:
        return None
    if zookeeper_db_resign_seconds(settings) <= 0:
        return None
    from failover.election.zookeeper import ZooKeeperElection
    from failover.zkreach import ZkReachBoard

    assert isinstance(backend, ZooKeeperElection)
    return ZkReachBoard(backend.nodes, settings.node)


def open_store(settings: Settings, read_only: bool = False) -> MemberStore:
    """The member store alone (for `status`, `pause`, `switchover` from any host);
    `read_only`: the local store creates nothing (no directory, no SQLite file)."""
    if settings.backend == "local":
        from failover.election.local import LocalMembers, LocalStore

        return LocalMembers(
            LocalStore(
                settings.local.dir, settings.cluster, settings.backend_timeout_seconds, read_only
            )
        )
    if settings.backend == "zookeeper" and not settings.metadata_dsn:
        from failover.zkconn import ZkConnection, zk_options
        from failover.zkstore import ZkNodes, ZooKeeperMembers

        conn = ZkConnection(zk_options(settings), _warn, verbose=False)
        conn.start(max(settings.backend_timeout_seconds, 5.0))
        return ZooKeeperMembers(ZkNodes(conn), owns_conn=True)
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
            password_for(settings, dsn),
        )
    raise NotImplementedError(f"backend {settings.backend!r} is not available in this version")
