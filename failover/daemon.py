"""The daemon: loop timing, signals, config reload and the shutdown order.

SIGTERM/SIGINT: stop the child, then release leadership, exit 0. SIGHUP: reload or refuse.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

from failover import __version__, log
from failover.airflow import settings as airflow_settings
from failover.airflow.health import HealthPolicy, JobSource
from failover.backends import open_backend, open_metadata
from failover.child import Child, ChildPolicy
from failover.child.group import components
from failover.config import Settings, zookeeper_db_resign_seconds
from failover.controller import Controller, Role, TickResult, Timings
from failover.dbreach import DbReach, ReachPolicy
from failover.errors import ConfigError, FailoverError
from failover.interfaces import RECONNECT_MAX_SECONDS
from failover.keeper import proctree
from failover.keeper.launcher import KeeperLauncher, SidecarLauncher
from failover.keeper.proof import boottime
from failover.ops import publish
from failover.ops.http import Board, Server
from failover.ops.metrics import Metrics
from failover.ops.sdnotify import Notifier
from failover.preflight import startup_checks

REPEAT_SENTENCE_SECONDS = 60.0


def timings(settings: Settings) -> Timings:
    return Timings(
        lease=settings.lease_seconds,
        loop=settings.loop_seconds,
        self_fence=settings.self_fence_seconds,
        stop_timeout=settings.stop_timeout_seconds,
        backend_timeout=settings.backend_timeout_seconds,
    )


def child_policy(settings: Settings) -> ChildPolicy:
    return ChildPolicy(
        stop_timeout=settings.stop_timeout_seconds,
        max_fast_failures=settings.max_fast_failures,
        fast_failure_seconds=settings.fast_failure_seconds,
        backoff_initial=settings.backoff_initial_seconds,
        backoff_max=settings.backoff_max_seconds,
        answer_seconds=settings.keeper_answer_seconds,
        ping_seconds=settings.loop_seconds,
        defer_sides=settings.airflow.health_check and bool(settings.metadata_dsn),
    )


def watchdog_ok(role: Role, self_fence_deadline: float, now: float, period: float) -> bool:
    """Ping systemd's watchdog only while a missed ping could not outlive the lease: as a
    standby, or as a leader whose self-fence deadline is at least one period away."""
    if role in (Role.STANDBY, Role.STOPPED):
        return True
    return self_fence_deadline - now >= period


def check_watchdog(period: float | None, settings: Settings) -> None:
    """WatchdogSec must let a frozen leader die before its lease could expire."""
    if period is None:
        return
    if period >= settings.self_fence_seconds:
        raise ConfigError(
            "WatchdogSec",
            f"{period:g} s is not below lease_seconds - self_fence_margin_seconds = "
            f"{settings.self_fence_seconds:g} s",
            "lower WatchdogSec in the unit or raise lease_seconds",
        )
    if period < 2 * settings.loop_seconds:
        raise ConfigError(
            "WatchdogSec",
            f"{period:g} s is shorter than two ticks ({2 * settings.loop_seconds:g} s)",
            "raise WatchdogSec or lower loop_seconds",
        )


def health_policy(settings: Settings) -> HealthPolicy:
    threshold = settings.airflow.health_threshold_seconds or airflow_settings.health_threshold(
        os.environ
    )
    grace = settings.airflow.startup_grace_seconds or max(60.0, 2 * threshold)
    return HealthPolicy(threshold=threshold, startup_grace=grace)


def reach_policy(settings: Settings) -> ReachPolicy:
    """ZooKeeper mode: when DB reachability moves leadership. A taker must have reached the
    DB longer than a reconnect backoff, so the first of several members to heal after an
    outage of everybody's is not handed a leader that was about to reconnect too."""
    loop, timeout = settings.loop_seconds, settings.backend_timeout_seconds
    return ReachPolicy(
        resign_after=zookeeper_db_resign_seconds(settings),
        fresh=3 * loop + timeout + 1,
        steady=max(settings.lease_seconds, RECONNECT_MAX_SECONDS + loop + timeout),
        timeout=timeout,
        publish_every=loop,
    )


def _health_source(settings: Settings) -> JobSource | None:
    if not settings.airflow.health_check or not settings.metadata_dsn:
        return None
    return open_metadata(settings, settings.metadata_dsn).jobs(
        airflow_settings.expected_hostname(os.environ),
        _log_released if settings.airflow.release_orphans else None,
    )


def _log_released(jobs: int) -> None:
    log.get().info(
        "orphans_released",
        jobs=jobs,
        detail="dead schedulers' running job rows marked failed: "
        "the new scheduler adopts or resets their tasks at its start",
    )


def side_health_policies(settings: Settings) -> dict[str, HealthPolicy]:
    """Each side component's threshold from Airflow's own config (30 s by default)."""
    out: dict[str, HealthPolicy] = {}
    for kind, section, key in (
        ("DagProcessorJob", "dag_processor", "health_check_threshold"),
        ("TriggererJob", "triggerer", "triggerer_health_check_threshold"),
    ):
        threshold = airflow_settings.threshold(os.environ, section, key)
        grace = settings.airflow.startup_grace_seconds or max(60.0, 2 * threshold)
        out[kind] = HealthPolicy(threshold=threshold, startup_grace=grace)
    return out


def prewarm_args(settings: Settings) -> tuple[str, ...]:
    """Keeper options for a standby's warm keeper: keep `airflow scheduler` pre-warmed."""
    if not settings.airflow.prewarm:
        return ()
    max_age = settings.airflow.prewarm_max_age_hours * 3600
    return ("--prewarm", "--prewarm-max-age", f"{max_age:g}")


# Settings a running daemon cannot take over without a restart.
RESTART_ONLY = (
    "cluster",
    "node",
    "backend",
    "metadata_dsn",
    "table_prefix",
    "postgres",
    "zookeeper",
    "local",
    "http",
    "airflow",
    "keeper",
    "lease_seconds",  # the backend's session settings and every fence wait assume it
    "self_fence_margin_seconds",
)


class Daemon:
    """Runs `Controller.tick()` until shut down; wakes early on anything that matters."""

    def __init__(
        self,
        settings: Settings,
        reload: Callable[[], Settings] | None = None,
        on_tick: Callable[[TickResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.reload_settings = reload
        self.on_tick = on_tick
        self.notify = Notifier()
        check_watchdog(self.notify.watchdog_seconds, settings)
        token = startup_checks(settings, os.environ)
        self.registry = CollectorRegistry()
        self.metrics = Metrics(
            self.registry, __version__, settings.backend, settings.node, settings.cluster
        )
        self.board = Board(settings.loop_seconds)
        self.http: Server | None = None
        if settings.http.listen:
            tls = None
            if settings.http.tls_cert_file and settings.http.tls_key_file:
                tls = (settings.http.tls_cert_file, settings.http.tls_key_file)
            self.http = Server(
                settings.http.listen,
                self.board,
                self.registry,
                token,
                publish.actions(settings),
                tls,
            )
        parts = open_backend(settings)
        self.backend, self.store = parts.election, parts.members
        self.health = _health_source(settings)
        board = parts.reach
        reach = DbReach(board, reach_policy(settings), settings.node) if board else None
        self.sidecar = SidecarLauncher(settings.keeper.listen) if settings.keeper.listen else None
        launcher: KeeperLauncher | SidecarLauncher = self.sidecar or KeeperLauncher(
            adopt_orphans=True
        )
        (main, command), *_ = settings.group
        self.child = Child(
            launcher,
            command,
            child_policy(settings),
            prewarm_args(settings),
            components(settings.group),
            main,
        )
        self.controller = Controller(
            cluster=settings.cluster,
            node=settings.node,
            backend=self.backend,
            store=self.store,
            child=self.child,
            clock=boottime,
            timings=timings(settings),
            base_env=os.environ,
            health=self.health,
            health_policy=health_policy(settings),
            db_reach=reach,
        )
        self.controller.side_policies = side_health_policies(settings)
        self.log = log.get()
        self.signals: list[int] = []
        self.ready_sent = False
        self.last_logged = ("", 0.0)
        self.last_tick_at = 0.0

    def run(self) -> int:
        rd, wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_fd = signal.set_wakeup_fd(wr)
        handlers = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        self.log.info(
            "daemon_started",
            pid=os.getpid(),
            backend=self.backend.name,
            http=f"{self.settings.http.listen} (port {self.http.port})" if self.http else "off",
        )
        if self.http is not None:
            self.http.start()
        try:
            while True:
                self._handle_signals()
                started = boottime()
                result = self.controller.tick()
                self.last_tick_at = boottime()
                self._publish(result, self.last_tick_at - started)
                self._notify(result)
                if os.getpid() == 1:
                    self._reap_orphans()  # as PID 1 also strangers' orphans come to us
                if self.controller.finished:
                    return 0
                self._wait(result.wait, rd)
        finally:
            self._close()
            signal.set_wakeup_fd(old_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            os.close(rd)
            os.close(wr)

    def _reap_orphans(self) -> None:
        """As PID 1 (a container without tini) orphans reparent to us: reap every zombie
        child that is not one of our keepers (their exit status belongs to the Child)."""
        ours = {link.pid for link in (self.child.link, self.child.warm) if link is not None}
        for pid, (state, ppid, _) in proctree.snapshot().items():
            if ppid == 1 and state == "Z" and pid not in ours:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def _notify(self, result: TickResult) -> None:
        if not self.notify.enabled:
            return
        if not self.ready_sent:
            self.notify.ready(result.sentence)
            self.ready_sent = True
        else:
            self.notify.status(result.sentence)
        period = self.notify.watchdog_seconds
        if period is not None and watchdog_ok(
            result.role, self.controller.self_fence_deadline, boottime(), period
        ):
            self.notify.watchdog()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGHUP:
                self._reload()
            elif self.controller.shutting_down:
                self.log.warning("second_stop_signal", action="killing the child now")
                self.child.stop(hard=True)
            else:
                self.log.info("shutdown_requested", signal=signal.Signals(signum).name)
                self.notify.stopping()
                self.controller.request_shutdown()

    def _reload(self) -> None:
        if self.reload_settings is None:
            self.log.warning("reload_refused", reason="no configuration source to reload")
            return
        try:
            new = self.reload_settings()
        except FailoverError as err:
            self.log.error("reload_refused", reason=str(err), keeping="the running configuration")
            return
        changed = [k for k in RESTART_ONLY if getattr(new, k) != getattr(self.settings, k)]
        if changed:
            self.log.error(
                "reload_refused",
                reason=f"{', '.join(changed)} changed: restart the daemon to apply",
                keeping="the running configuration",
            )
            return
        if new != self.settings:
            self.child.discard_warm("configuration reloaded")  # started with the old one
        self.settings = new
        self.controller.t = timings(new)
        if self.controller.db_reach is not None:
            self.controller.db_reach.policy = reach_policy(new)
        self.child.command = new.group[0][1]
        self.child.policy = child_policy(new)
        log.configure(new.log.format, new.log.level)
        self.log.info("config_reloaded", lease_seconds=new.lease_seconds, command=list(new.command))

    def _publish(self, result: TickResult, took: float) -> None:
        log.bind(epoch=result.epoch, role=result.role.value)
        now = boottime()
        c, child = self.controller, self.child
        self.board.loop_seconds = self.settings.loop_seconds
        self.board.publish(publish.snapshot(self.settings, c, child, result, now))
        self.metrics.observe(publish.sample(c, child, result, now, took))
        for level, event, fields in [*child.prewarm.events, *child.events]:
            getattr(self.log, level)(event, **fields)
        child.prewarm.events.clear()
        child.events.clear()
        sentence, at = self.last_logged
        if result.sentence != sentence or now - at >= REPEAT_SENTENCE_SECONDS or result.transition:
            self.log.info("tick", sentence=result.sentence, transition=result.transition)
            self.last_logged = (result.sentence, now)
        if self.on_tick is not None:
            self.on_tick(result)

    def _wait(self, seconds: float, signal_fd: int) -> None:
        end = boottime() + seconds
        due = self.child.check_at(boottime())  # a keeper's answer or stop is due: look then
        end = min(end, due + 0.005) if due is not None else end
        while not self.signals:
            remaining = end - boottime()
            if remaining <= 0:
                return
            fds = [signal_fd]
            if self.child.link is not None:
                fds.append(self.child.link.fileno())
            if self.child.warm is not None:
                fds.append(self.child.warm.fileno())
            if self.sidecar is not None and self._may_accept():
                fds.append(self.sidecar.fileno())  # a keeper container (re)connecting
            watch = self.backend.watch_fd()
            if watch is not None:
                fds.append(watch)
            poll = self.backend.poll_interval()  # after watch_fd: its LISTEN may bring a NOTIFY
            timeout = min(remaining, poll) if poll else remaining
            readable, _, _ = select.select(fds, [], [], timeout)
            if signal_fd in readable:
                _drain(signal_fd)
            link = self.child.link
            if link is not None and link.fileno() in readable and self._keeper_news():
                return  # news from the keeper (not only its ACKs): tick at once
            if self.child.warm is not None and self.child.warm.fileno() in readable:
                self.child.poll(boottime())
            if self.sidecar is not None and self.sidecar.fileno() in readable:
                return
            if (watch in readable or poll) and self.backend.changed():
                return

    def _keeper_news(self) -> bool:
        """Take in what the child's keeper said; True unless it was only ACKs."""
        return bool(self.child.poll(boottime())) or self.child.link is None

    def _may_accept(self) -> bool:
        """Only a standby that would take a warm keeper now: else a pending connection would
        make every select return at once."""
        return self.controller.role is Role.STANDBY and self.child.wants_warm(boottime())

    def _close(self) -> None:
        if self.http is not None:
            self.http.close()
        self.child.discard_warm()
        if not self.child.gone:
            # Only reached on an unexpected error: never leave a child behind.
            self.child.stop(hard=True)
            for _ in range(500):
                self.child.poll(boottime())
                if self.child.gone:
                    break
                time.sleep(0.01)
        if self.controller.role in (Role.LEADER, Role.FENCING, Role.DEMOTING) and self.child.gone:
            try:
                self.backend.release()
            except FailoverError:
                pass
        if self.health is not None:
            self.health.close()
        self.store.close()
        self.backend.close()
        self.notify.close()
        if self.sidecar is not None:
            self.sidecar.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def run_daemon(settings: Settings, reload: Callable[[], Settings] | None = None, **kw: Any) -> int:
    log.bind(node=settings.node, cluster=settings.cluster, epoch=0, role="standby")
    return Daemon(settings, reload, **kw).run()
