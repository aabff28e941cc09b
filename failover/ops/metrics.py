"""Prometheus metrics, prefix `failover_`, on a registry that is passed in.

`Metrics.observe()` turns one tick's outcome into gauge and counter updates.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info

ROLES = ["standby", "fencing", "leader", "demoting", "stopped"]


@dataclass(frozen=True)
class Sample:
    """What one tick left behind, as the metrics need it."""

    role: str
    epoch: int
    transition: str | None
    child_up: bool
    child_restarts: int
    backend_up: bool
    last_renew_wall: float | None
    fenced_total: int
    paused: bool
    tick_seconds: float
    standby_warm: bool = False
    warmup_seconds: float | None = None
    warm_restarts: int = 0
    warm_rss_bytes: int = 0
    components: tuple[tuple[str, bool, int], ...] = ()  # side components: name, up, restarts
    keeper_kills: int = 0
    warm_keeper_kills: int = 0


class Metrics:
    def __init__(
        self, registry: CollectorRegistry, version: str, backend: str, node: str, cluster: str
    ) -> None:
        self.registry = registry
        r = registry
        self.is_leader = Gauge("failover_is_leader", "1 while this node leads", registry=r)
        self.role = Enum("failover_role", "This node's role", states=ROLES, registry=r)
        self.epoch = Gauge("failover_epoch", "Epoch this node last saw or led", registry=r)
        self.transitions = Counter(
            "failover_leader_transitions",
            "Leadership changes made by this node, by reason",
            ["reason"],
            registry=r,
        )
        self.child_restarts = Counter(
            "failover_child_restarts", "Restarts of the supervised child", registry=r
        )
        self.child_up = Gauge("failover_child_up", "1 while the supervised child runs", registry=r)
        self.tick_duration = Histogram(
            "failover_tick_duration_seconds",
            "Duration of one loop tick",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.backend_up = Gauge(
            "failover_backend_up", "1 while the election backend answers", registry=r
        )
        self.last_renew = Gauge(
            "failover_last_successful_renew_timestamp",
            "Unix time of the last proven renew of leadership",
            registry=r,
        )
        self.fenced = Counter(
            "failover_fenced_sessions",
            "Sessions or processes of older epochs terminated",
            registry=r,
        )
        self.paused = Gauge("failover_paused", "1 while the cluster is paused", registry=r)
        self.standby_warm = Gauge(
            "failover_standby_warm",
            "1 while a pre-warmed scheduler waits on this standby ([airflow] prewarm)",
            registry=r,
        )
        self.warmup_seconds = Gauge(
            "failover_standby_warmup_seconds",
            "How long the last pre-warm of the standby's scheduler took",
            registry=r,
        )
        self.warm_restarts = Counter(
            "failover_standby_warm_restarts",
            "Pre-warmed schedulers replaced (inputs changed, max age, died, reload)",
            registry=r,
        )
        self.warm_rss = Gauge(
            "failover_standby_warm_rss_bytes",
            "Resident memory of the pre-warmed scheduler when it became ready",
            registry=r,
        )
        self.component_up = Gauge(
            "failover_component_up",
            "1 while this side component of the group runs (the main one: failover_child_up)",
            ["component"],
            registry=r,
        )
        self.component_restarts = Counter(
            "failover_component_restarts",
            "Restarts of a side component on its own",
            ["component"],
            registry=r,
        )
        self._component_restarts_seen: dict[str, int] = {}
        self.keeper_unresponsive = Counter(
            "failover_keeper_unresponsive",
            "Keepers that stopped answering and were killed with their tree by the daemon "
            "(keeper: child = the leader's, warm = a standby's)",
            ["keeper"],
            registry=r,
        )
        for which in ("child", "warm"):
            self.keeper_unresponsive.labels(keeper=which)
        self._kills_seen = {"child": 0, "warm": 0}
        self.info = Info("failover", "Build and identity", registry=r)
        self.info.info({"version": version, "backend": backend, "node": node, "cluster": cluster})
        self._restarts_seen = 0
        self._fenced_seen = 0
        self._warm_restarts_seen = 0

    def observe(self, s: Sample) -> None:
        self.is_leader.set(1 if s.role == "leader" else 0)
        self.role.state(s.role)
        self.epoch.set(s.epoch)
        if s.transition:
            self.transitions.labels(reason=s.transition).inc()
        if s.child_restarts > self._restarts_seen:
            self.child_restarts.inc(s.child_restarts - self._restarts_seen)
            self._restarts_seen = s.child_restarts
        if s.fenced_total > self._fenced_seen:
            self.fenced.inc(s.fenced_total - self._fenced_seen)
            self._fenced_seen = s.fenced_total
        self.child_up.set(1 if s.child_up else 0)
        self.backend_up.set(1 if s.backend_up else 0)
        if s.last_renew_wall is not None:
            self.last_renew.set(s.last_renew_wall)
        self.paused.set(1 if s.paused else 0)
        self.tick_duration.observe(s.tick_seconds)
        self.standby_warm.set(1 if s.standby_warm else 0)
        if s.warmup_seconds is not None:
            self.warmup_seconds.set(s.warmup_seconds)
        self.warm_rss.set(s.warm_rss_bytes if s.standby_warm else 0)
        for name, up, restarts in s.components:
            self.component_up.labels(component=name).set(1 if up else 0)
            seen = self._component_restarts_seen.get(name, 0)
            if restarts > seen:
                self.component_restarts.labels(component=name).inc(restarts - seen)
                self._component_restarts_seen[name] = restarts
        for which, total in (("child", s.keeper_kills), ("warm", s.warm_keeper_kills)):
            if total > self._kills_seen[which]:
                self.keeper_unresponsive.labels(keeper=which).inc(total - self._kills_seen[which])
                self._kills_seen[which] = total
        if s.warm_restarts > self._warm_restarts_seen:
            self.warm_restarts.inc(s.warm_restarts - self._warm_restarts_seen)
            self._warm_restarts_seen = s.warm_restarts
