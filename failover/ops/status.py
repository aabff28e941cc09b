"""Cluster status from the member store, and operator requests (switchover).

Works from any host that can reach the store; no HTTP needed.
"""

from __future__ import annotations

import time
from typing import Any

from failover.backends import open_store
from failover.child.group import decode
from failover.config import Settings
from failover.errors import FailoverError


def cluster_status(settings: Settings) -> dict[str, Any]:
    """The cluster table; reads only (a local store that does not exist is an error)."""
    store = open_store(settings, read_only=True)
    try:
        members = store.members()
        flags = store.flags()
    finally:
        store.close()
    stale_after = settings.lease_seconds
    rows = [
        {
            "node": m.node,
            "role": m.role if m.heartbeat_age < stale_after or m.role == "stopped" else "unknown",
            "epoch": m.epoch,
            "heartbeat_age": round(m.heartbeat_age, 2),
            "child": child,
            "child_pid": m.child_pid,
            "components": sides,
            **({"child_health": health} if sides else {}),
            "version": m.version,
            "last": m.sentence,
        }
        for m in members
        for child, sides, health in [decode(m.child_state)]
    ]
    leaders = [r for r in rows if r["role"] == "leader"]
    healthy = len(leaders) == 1 and leaders[0]["child"] == "running"
    return {
        "cluster": settings.cluster,
        "backend": settings.backend,
        "paused": flags.paused,
        "switchover_to": flags.switchover_to,
        "switchover_result": flags.switchover_result,
        "leader": leaders[0]["node"] if len(leaders) == 1 else None,
        "healthy_leader": healthy,
        "members": rows,
    }


def render(status: dict[str, Any]) -> str:
    head: tuple[str, ...] = ("NODE", "ROLE", "EPOCH", "HEARTBEAT", "CHILD", "PID")
    rows: list[tuple[str, ...]] = [
        (
            m["node"],
            m["role"],
            str(m["epoch"]),
            f"{m['heartbeat_age']:.1f}s ago",
            m["child"],
            str(m["child_pid"] or "-"),
        )
        for m in status["members"]
    ]
    if any(m.get("components") for m in status["members"]):
        head = (*head, "HEALTH", "COMPONENTS")
        rows = [
            (*r, m.get("child_health", "-"), _components(m))
            for r, m in zip(rows, status["members"], strict=True)
        ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        f"cluster {status['cluster']} ({status['backend']})"
        f"{'  PAUSED' if status['paused'] else ''}"
        f"{'  switchover pending' if status['switchover_to'] is not None else ''}"
    ]
    for r in [head, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if not status["healthy_leader"]:
        lines.append("no healthy leader")
    if status.get("switchover_result"):
        lines.append(f"last switchover: {status['switchover_result']}")
    return "\n".join(lines)


def _components(member: dict[str, Any]) -> str:
    """`dag-processor running 4242 healthy (1 restarts)`, one per side component, for the
    table (the main command's state, pid and health have their own columns)."""
    out = []
    for c in member.get("components") or []:
        restarts = f" ({c['restarts']} restarts)" if c["restarts"] else ""
        health = c.get("health", "unknown")
        out.append(f"{c['name']} {c['state']} {c['pid'] or '-'} {health}{restarts}")
    return "; ".join(out) or "-"


def set_paused(settings: Settings, paused: bool) -> None:
    """Pause or resume the whole cluster (from any host; survives daemon restarts)."""
    store = open_store(settings)
    try:
        store.set_paused(paused)
    finally:
        store.close()


def ask_switchover(settings: Settings, to: str | None) -> str:
    """Check the request and record it for the leader; return the current leader."""
    before = cluster_status(settings)
    leader = before["leader"]
    if leader is None:
        raise FailoverError("no leader to switch over from; nothing to do")
    if before["paused"]:
        raise FailoverError("the cluster is paused; resume it first")
    if to == leader:
        raise FailoverError(f"{to} already leads; pick a standby with --to")
    standbys = [m["node"] for m in before["members"] if m["role"] == "standby"]
    if to is not None and to not in standbys:
        raise FailoverError(
            f"{to} is not a healthy standby (standbys: {', '.join(standbys) or 'none'})"
        )
    if not standbys:
        raise FailoverError("no healthy standby to hand over to")
    store = open_store(settings)
    try:
        store.request_switchover(leader, to)
    finally:
        store.close()
    return str(leader)


def request_switchover(settings: Settings, to: str | None, wait: float) -> str:
    """Ask the leader to hand over, then wait until the request is decided and a healthy
    leader runs. FailoverError when the named target (or, without one, another member) did
    not end up leading: the message says why ("switchover to b abandoned: ...; c elected")."""
    leader = ask_switchover(settings, to)
    end = time.monotonic() + wait
    result: str | None = None
    while time.monotonic() < end:
        status = cluster_status(settings)
        new = status["leader"] if status["healthy_leader"] else None
        if status["switchover_to"] is None:
            result = status["switchover_result"] or result
        if new is not None and new != leader and to in (None, new):
            return f"switched over: {leader} -> {new}"
        if result is not None and new is not None and ("refused" in result or new != leader):
            raise FailoverError(result if "refused" in result else f"{result}; {new} elected")
        if result is not None and new == leader and "abandoned" in result:
            raise FailoverError(f"{result}; {leader} leads again")
        time.sleep(0.1)
    if result is not None:
        raise FailoverError(f"{result}; no healthy leader within {wait:g} s")
    raise FailoverError(f"no new healthy leader within {wait:g} s; see `failover status`")
