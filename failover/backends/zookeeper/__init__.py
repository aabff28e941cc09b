"""The ZooKeeper backend (kazoo): ephemeral sequential contenders, a CAS epoch, breadcrumb
fencing; members and flags in ZooKeeper, or in the metadata DB when there is one."""

from __future__ import annotations

from failover import log
from failover.config import Settings, zookeeper_db_resign_seconds
from failover.interfaces import Backend, MemberStore, Parts


def _warn(text: str) -> None:
    log.get().warning("backend_warning", warning=text)


def build(settings: Settings) -> Parts:
    from failover.backends import open_metadata
    from failover.backends.zookeeper.conn import ZkConnection, zk_options
    from failover.backends.zookeeper.election import ZooKeeperElection
    from failover.backends.zookeeper.reach import ZkReachBoard
    from failover.backends.zookeeper.store import SwitchoverAware, ZkNodes, ZooKeeperMembers

    s = settings
    nodes = ZkNodes(ZkConnection(zk_options(s), _warn))
    renew_window = s.loop_seconds + s.backend_timeout_seconds + s.self_fence_margin_seconds
    try:  # one session for both; members go to the metadata DB when there is one
        if s.metadata_dsn:
            # A new leader ends older epochs' DB sessions on the store's session.
            metadata = open_metadata(s, s.metadata_dsn)
            members, sweep = metadata.members(), metadata.sweep()
        else:
            members, sweep = ZooKeeperMembers(nodes, refresh=s.lease_seconds), None
        zk = ZooKeeperElection(nodes, s.lease_seconds, renew_window, _warn, sweep)
    except BaseException:
        nodes.conn.close()
        raise
    # With a metadata DB, members say on the election's session whether they reach it.
    reach = None
    if s.metadata_dsn and zookeeper_db_resign_seconds(s) > 0:
        reach = ZkReachBoard(nodes, s.node)
    return Parts(zk, SwitchoverAware(members, zk.stand_aside), reach)


def open_store(settings: Settings) -> MemberStore:
    if settings.metadata_dsn:
        from failover.backends import open_metadata

        return open_metadata(settings, settings.metadata_dsn).members()
    from failover.backends.zookeeper.conn import ZkConnection, zk_options
    from failover.backends.zookeeper.store import ZkNodes, ZooKeeperMembers

    conn = ZkConnection(zk_options(settings), _warn, verbose=False)
    conn.start(max(settings.backend_timeout_seconds, 5.0))
    return ZooKeeperMembers(ZkNodes(conn), owns_conn=True)


def check(settings: Settings) -> None:
    """The digest credentials file is readable and holds user:password."""
    if settings.zookeeper.auth_file:
        from failover.backends.zookeeper.conn import read_auth_file

        read_auth_file(settings.zookeeper.auth_file)


BACKEND = Backend("zookeeper", build, open_store, check=check)
