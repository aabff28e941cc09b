"""The report board of `dbreach` in ZooKeeper: one ephemeral node per member,
`failover/<cluster>/reach/<node>`, saying whether it reaches the metadata DB.

ZooKeeper, because the DB is exactly what a cut-off leader cannot read. Ages are server-side:
a node's mtime against the server clock; a member whose session ends takes its node along.
"""

from __future__ import annotations

from typing import Any

from failover.backends.zookeeper.store import ZkNodes, dump, load
from failover.dbreach import ReachReport


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class ZkReachBoard:
    """`ReachBoard` on the election's own connection (one session for everything)."""

    def __init__(self, nodes: ZkNodes, node: str) -> None:
        self.nodes = nodes
        self.conn = nodes.conn
        self.node = node

    def publish(self, role: str, db_ok: bool, ready: bool, ok_for: float) -> None:
        info = {"role": role, "db_ok": db_ok, "ready": ready, "ok_for": ok_for}
        path = self.conn.path("reach", self.node)
        self.nodes.write("publish DB reachability", path, dump(info), ephemeral=True)

    def reports(self) -> list[ReachReport]:
        names = self.nodes.children("list DB reachability", self.conn.path("reach"))
        now = self.nodes.server_now_ms()
        out = []
        for name in sorted(names):
            got = self.nodes.read("read DB reachability", self.conn.path("reach", name))
            if got is None:
                continue
            info, stat = load(got[0]), got[1]
            if not isinstance(info, dict):
                continue
            out.append(
                ReachReport(
                    node=name,
                    role=str(info.get("role", "unknown")),
                    db_ok=info.get("db_ok") is True,
                    ready=info.get("ready") is True,
                    ok_for=_number(info.get("ok_for")),
                    age=max(0.0, (now - stat.mtime) / 1000),
                )
            )
        return out
