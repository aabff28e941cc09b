"""What a tick publishes: the /status document, the metrics sample, the HTTP actions.

Reads the controller and child; changes nothing but the store (for operator actions).
"""

from __future__ import annotations

import time
from typing import Any

from failover import __version__
from failover.child import Child, ChildState
from failover.config import Settings
from failover.controller import Controller, TickResult
from failover.errors import FailoverError
from failover.ops import status
from failover.ops.http import Action
from failover.ops.metrics import Sample


def wall(boot_now: float, boot_t: float | None) -> float | None:
    return None if boot_t is None else time.time() - (boot_now - boot_t)


def snapshot(
    settings: Settings, c: Controller, child: Child, result: TickResult, now: float
) -> dict[str, Any]:
    running = child.state is ChildState.RUNNING and child.started_at is not None
    lead = result.role.value == "leader"
    effective = c.backend.effective_lease()
    return {
        "node": settings.node,
        "cluster": settings.cluster,
        "backend": settings.backend,
        "version": __version__,
        "role": result.role.value,
        "epoch": result.epoch,
        "leader": result.leader,
        "paused": result.paused,
        "switchover_to": c.flags.switchover_to,
        "switchover_result": c.flags.switchover_result,
        "backend_up": result.backend_up,
        "sentence": result.sentence,
        "last_renew_unix": wall(now, c.last_renew) if lead else None,
        "self_fence_in_seconds": round(c.self_fence_deadline - now, 3) if lead else None,
        "child": {
            "state": child.state.value,
            "pid": child.pid,
            "uptime_seconds": round(now - child.started_at, 1)
            if running and child.started_at
            else None,
            "restarts": child.restarts,
            "fast_failures": child.fast_failures,
            "last_exit_code": child.exit_code,
            "last_event": child.last_event,
            "warm_keeper": child.warm is not None,
            "keeper_silent_seconds": round(child.link.silence(), 3) if child.link else None,
            "keeper_unresponsive": {"child": child.keeper_kills, "warm": child.warm_kills},
            "prewarm": {
                "state": child.prewarm.state,
                "pid": child.prewarm.pid,
                "warmup_seconds": child.prewarm.seconds,
                "rss_bytes": child.prewarm.rss_bytes,
                "airflow": child.prewarm.airflow or None,
                "fingerprint": child.prewarm.fingerprint or None,
                "restarts": child.prewarm.restarts,
                "detail": child.prewarm.detail,
            },
            "health": c.verdict.health.value,
            "health_detail": c.verdict.detail,
        },
        "components": [
            {
                "name": child.name,
                "state": child.state.value,
                "pid": child.pid,
                "restarts": child.restarts,
                "health": c.verdict.health.value,
            },
            *[side.describe() for side in child.sides.values()],
        ],
        "timings": {
            "lease_seconds": settings.lease_seconds,
            "effective_lease_seconds": effective
            if effective is not None
            else settings.lease_seconds,
            "loop_seconds": settings.loop_seconds,
            "backend_timeout_seconds": settings.backend_timeout_seconds,
            "self_fence_margin_seconds": settings.self_fence_margin_seconds,
            "stop_timeout_seconds": settings.stop_timeout_seconds,
        },
    }


def sample(c: Controller, child: Child, result: TickResult, now: float, took: float) -> Sample:
    return Sample(
        role=result.role.value,
        epoch=result.epoch,
        transition=result.transition,
        child_up=child.state is ChildState.RUNNING,
        child_restarts=child.restarts,
        backend_up=result.backend_up,
        last_renew_wall=wall(now, c.last_renew),
        fenced_total=c.fenced,
        paused=result.paused,
        tick_seconds=took,
        standby_warm=child.prewarm.state == "warm",
        warmup_seconds=child.prewarm.seconds,
        warm_restarts=child.prewarm.restarts,
        warm_rss_bytes=child.prewarm.rss_bytes,
        components=tuple(
            (side.name, side.state == "running", side.restarts) for side in child.sides.values()
        ),
        keeper_kills=child.keeper_kills,
        warm_keeper_kills=child.warm_kills,
    )


def actions(settings: Settings) -> dict[str, Action]:
    """POST handlers; each opens its own store connection (request threads share nothing)."""

    def set_paused(paused: bool) -> Action:
        def run(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            try:
                status.set_paused(settings, paused)
            except FailoverError as err:
                return 503, {"error": str(err)}
            return 200, {"paused": paused}

        return run

    def switchover(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        target = body.get("to")
        if target is not None and not isinstance(target, str):
            return 400, {"error": "'to' must be a node name"}
        try:
            leader = status.ask_switchover(settings, target)
        except FailoverError as err:
            return 409, {"error": str(err)}
        return 202, {"switchover": {"from": leader, "to": target}}

    return {"/pause": set_paused(True), "/resume": set_paused(False), "/switchover": switchover}
