"""The loop tick and its leader side: decide from backend, child, clock and flags; end in one
sentence. The standby side is in `standby.py`.

No sleeps, no threads, no drivers: everything it touches is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from failover import __version__
from failover.airflow.health import Health, HealthPolicy, JobSource, Verdict, judge
from failover.child import Child, ChildState, child_env, group
from failover.dbreach import DbReach
from failover.errors import BackendUnavailable, ChildError
from failover.interfaces import ClusterFlags, ElectionBackend, MemberState, MemberStore
from failover.records import Records
from failover.roles import FAST_TICK, SETTLE_TICK, Role, TickResult, Timings
from failover.standby import Standby

KEEPER_STUCK = "keeper stopped answering"

__all__ = ["KEEPER_STUCK", "Controller", "Role", "TickResult", "Timings"]


class Controller(Standby):
    """Pure decisions over injected parts; `tick()` is the whole loop body."""

    def __init__(
        self,
        cluster: str,
        node: str,
        backend: ElectionBackend,
        store: MemberStore,
        child: Child,
        clock: Callable[[], float],
        timings: Timings,
        base_env: Mapping[str, str],
        health: JobSource | None = None,
        health_policy: HealthPolicy | None = None,
        db_reach: DbReach | None = None,
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.backend = backend
        self.child = child
        # The store, the clock and the DB reach live in Records; the properties below forward.
        self.records = Records(store, clock, lambda: self.t.backend_timeout, db_reach)
        self.t = timings
        self.base_env = dict(base_env)
        self.health = health
        self.health_policy = health_policy or HealthPolicy(threshold=30.0, startup_grace=60.0)
        self.verdict = Verdict(Health.UNKNOWN, "no health check")
        self.side_policies: dict[str, HealthPolicy] = {}  # job_type -> its threshold
        self.job_baseline: int | None = None
        self.role = Role.STANDBY
        self.epoch = 0
        self.leader: str | None = None
        self.self_fence_deadline = 0.0
        self.last_renew: float | None = None
        self.fence_deadline: float | None = None
        self.fenced = 0
        self.cooldown_until = 0.0
        self.switch_epoch: int | None = None
        self.stalled_since: float | None = None
        self.switch_note = ""
        self.demote_reason = ""
        self.shutting_down = False
        self.backend_up = True
        self.backend_error = ""
        self.last_sentence = ""

    # -- the tick ---------------------------------------------------------------------------
    def tick(self) -> TickResult:
        now = self.clock()
        self.child.poll(now)
        if self.db_reach is not None:
            self.db_reach.new_tick()
        before = self.role
        if self.role in (Role.LEADER, Role.FENCING, Role.DEMOTING):
            sentence, transition = self._lead(now)
        else:
            sentence, transition = self._stand(now)
        if self.role is Role.STANDBY and self.shutting_down and self.child.gone:
            self.role = Role.STOPPED
            sentence = f"{sentence}; shut down"
        # Right after a change: look again at once. While fencing or demoting: keeper, NOTIFY,
        # watch and wake-up descriptors end the wait early; a short poll covers the rest.
        if self.role is not before:
            wait = FAST_TICK
        elif self.role in (Role.FENCING, Role.DEMOTING):
            wait = min(self.t.loop, SETTLE_TICK)
        else:
            wait = self.t.loop
        result = TickResult(
            sentence=sentence,
            role=self.role,
            epoch=self.epoch,
            leader=self.leader,
            wait=wait,
            paused=self.flags.paused,
            backend_up=self.backend_up,
            transition=transition,
        )
        self._heartbeat(now, sentence)
        if self.db_reach is not None:
            self.db_reach.publish(now, self.role.value, self._ready(now))
        self.last_sentence = sentence
        return result

    def request_shutdown(self) -> None:
        """Stop the child, then release; `tick()` ends in Role.STOPPED when done."""
        self.shutting_down = True
        self.child.discard_warm()
        if self.role in (Role.LEADER, Role.FENCING):
            self._demote("shutdown")

    @property
    def finished(self) -> bool:
        return self.role is Role.STOPPED

    # -- leader side ------------------------------------------------------------------------
    def _lead(self, now: float) -> tuple[str, str | None]:
        held = self._renew(now)
        # Only now the metadata DB: a hang there cannot come between two renews twice.
        # The heartbeat rides on the flags read only after a renew that held: a leader back
        # from a freeze must not show itself as a fresh leader.
        self.records.read_flags(now if held is True else None, self.t.loop)
        if self.role is Role.DEMOTING:
            return self._finish_demote(now)
        if held is False:
            self.child.stop(hard=True)
            self.role = Role.DEMOTING
            self.demote_reason = "leadership lost"
            return (
                f"lost leadership of epoch {self.epoch} (another node holds it); "
                "killing the child at once",
                "lost",
            )
        if held is None:
            return self._lead_unreachable(now)
        if self.role is Role.FENCING:
            return self._fence(now)
        return self._lead_steady(now)

    def _renew(self, now: float) -> bool | None:
        started = self.clock()  # (the tick's start may be older: the deadline counts from here)
        try:
            held = self.backend.renew()
        except BackendUnavailable as err:
            self.backend_up = False
            self.backend_error = str(err)
            return None
        self.backend_up = True
        if held:
            self._proven(started)
            self.child.extend(self.self_fence_deadline)
        return held

    def _proven(self, started: float) -> None:
        """A renew or acquire that began at `started` (our clock, read just before the call)
        proved leadership: the proof itself is later, so counting from here is safe."""
        self.last_renew = started
        self.self_fence_deadline = started + self._self_fence()

    def _self_fence(self) -> float:
        """How long the child may run after a proven renew; shorter if the backend says so."""
        effective = self.backend.effective_lease()
        if effective is None or effective >= self.t.lease:
            return self.t.self_fence
        return effective - (self.t.lease - self.t.self_fence)

    def _lead_unreachable(self, now: float) -> tuple[str, str | None]:
        left = self.self_fence_deadline - now
        if now >= self.self_fence_deadline - self.t.demote_lead:
            self._demote("backend unreachable")
            return (
                f"cannot renew leadership ({self.backend_error}); self-fence deadline in "
                f"{left:.1f} s: stopping the child",
                "backend_unreachable",
            )
        return (
            f"cannot renew leadership ({self.backend_error}); the child may run {left:.1f} s more",
            None,
        )

    def _fence(self, now: float) -> tuple[str, str | None]:
        force = self.fence_deadline is not None and now >= self.fence_deadline
        try:
            report = self.backend.fence(self.epoch, force, sweep=not self.records.failed)
            if report.pending == 0:
                started = self.clock()
                if not self.backend.renew():
                    raise BackendUnavailable("leadership not confirmed after fencing")
                self._proven(started)
        except BackendUnavailable as err:
            self._demote("fencing failed")
            return (
                f"fencing for epoch {self.epoch} failed ({err}); giving leadership up",
                "fence_failed",
            )
        self.fenced += report.terminated
        if report.pending:
            if self.fence_deadline is None:
                self.fence_deadline = now + report.wait_seconds
            return (
                f"leader with epoch {self.epoch}, waiting up to "
                f"{max(0.0, self.fence_deadline - now):.1f} s for older epochs to vanish "
                f"({report.detail})",
                None,
            )
        self.fence_deadline = None
        return self._start_child(now, f"fenced older epochs ({report.detail}), ")

    def _keeper_env(self) -> dict[str, str]:
        env = child_env(self.base_env, self.cluster, self.node)
        env.update(self.backend.keeper_env())
        return env

    def _keeper_args(self) -> list[str]:
        return ["--name", f"failover:{self.cluster}:{self.node}", *self.backend.keeper_args()]

    def _start_child(self, now: float, prefix: str) -> tuple[str, str | None]:
        self.job_baseline = None
        if self.health is not None and self.records.failed:
            # A later baseline could be above the new scheduler's own row: this child runs on
            # process liveness only rather than wait on the DB again between two renews.
            self.verdict = Verdict(Health.UNKNOWN, "no health check: metadata DB failed at start")
        elif self.health is not None:
            started = self.clock()
            try:
                self.job_baseline = self.health.baseline()
            except BackendUnavailable as err:
                self.verdict = Verdict(Health.UNKNOWN, f"no health check: {err}")
            self.records.slow(started)
        try:
            self.child.start(
                now, self.epoch, self.self_fence_deadline, self._keeper_env(), self._keeper_args()
            )
        except (ChildError, BackendUnavailable) as err:
            self._demote("child start failed")
            return f"cannot start the child ({err}); giving leadership up", "child_start_failed"
        self.child.hand_session(self.backend.keeper_session())
        transition = "elected" if self.role is Role.FENCING else None
        self.role = Role.LEADER
        return f"{prefix}leader with epoch {self.epoch}: starting the child", transition

    def _lead_steady(self, now: float) -> tuple[str, str | None]:
        child = self.child
        if self.flags.paused:
            return f"paused: leader with epoch {self.epoch}, child {child.state.value}", None
        if self.shutting_down:
            return self._demote_now("shutdown")
        switch = self._switchover_wanted()
        if switch:
            return switch
        resign = self._resign_for_db(now)
        if resign:
            return resign
        if child.keeper_stuck:
            return self._keeper_stuck(child.keeper_stuck)
        if child.state is ChildState.FAILED:
            return self._demote_now("child crash loop")
        if child.state is ChildState.BACKOFF and not child.may_start(now):
            wait = child.backoff_until - now
            return f"leader with epoch {self.epoch}: child crashed, restart in {wait:.1f} s", None
        if child.may_start(now):
            return self._start_child(now, f"child {child.last_event or 'not running'}; ")
        if child.state is ChildState.STOPPING:
            return f"leader with epoch {self.epoch}: waiting for the old child to exit", None
        if child.state is ChildState.RUNNING and self._check_health(now) is Health.HUNG:
            child.fail(self.verdict.detail)
            return f"leader with epoch {self.epoch}: {self.verdict.detail}: killing the child", None
        if child.state is ChildState.RUNNING and self.verdict.health is not Health.STARTING:
            child.release_sides(now)  # deferred until the scheduler's first heartbeat
        hung = self._check_sides(now) if child.state is ChildState.RUNNING else None
        if hung:
            return f"leader with epoch {self.epoch}: {hung}", None
        return f"no action: I am the leader with epoch {self.epoch}{self._db_note(now)}", None

    def _keeper_stuck(self, why: str) -> tuple[str, str | None]:
        if self.child.gone:  # we killed its tree ourselves: this host cannot vouch for a child
            self._demote(KEEPER_STUCK)
            return f"stepping down from epoch {self.epoch}: {why}; its tree is gone", KEEPER_STUCK
        return (
            f"leader with epoch {self.epoch}: {why}; its tree is not gone yet (sidecar: the "
            "scheduler container's liveness probe restarts it)",
            None,
        )

    def _check_health(self, now: float) -> Health:
        """Judge the running child by its Airflow job heartbeat; UNKNOWN never kills."""
        if self.health is None or self.job_baseline is None:
            self.verdict = Verdict(Health.UNKNOWN, "process liveness only")
            return Health.UNKNOWN
        if self.records.failed:  # the DB just failed us: do not wait on it twice in one tick
            self.verdict = Verdict(Health.UNKNOWN, "metadata DB unreachable")
            return Health.UNKNOWN
        started = self.clock()
        try:
            row = self.health.newest(self.job_baseline)
        except BackendUnavailable as err:
            self.verdict = Verdict(Health.UNKNOWN, f"cannot read the job table: {err}")
            return Health.UNKNOWN
        finally:
            self.records.slow(started)
        running_for = now - (self.child.started_at or now)
        self.verdict = judge(row, running_for, self.health_policy)
        return self.verdict.health

    def _check_sides(self, now: float) -> str | None:
        """Judge each running side component by its own job row; kill a hung one."""
        if self.health is None or self.job_baseline is None or self.records.failed:
            return None
        for side in self.child.sides.values():
            kind = side.job_type
            if kind is None or side.state != "running":
                continue
            started = self.clock()
            try:
                row = self.health.newest(max(self.job_baseline, side.row_floor), kind)
            except BackendUnavailable:
                return None
            finally:
                self.records.slow(started)
            policy = self.side_policies.get(kind, self.health_policy)
            verdict = judge(row, now - (side.started_at or now), policy, kind)
            side.health = verdict.health.value
            side.last_row = row.job_id if row is not None else side.last_row
            if verdict.health is Health.HUNG:
                self.child.fail_component(side.name, verdict.detail)
                return f"component {side.name}: {verdict.detail}: killing it"
        return None

    def _switchover_wanted(self) -> tuple[str, str | None] | None:
        target = self.flags.switchover_to
        if target is None or self.flags.switchover_from not in (None, self.node):
            return None
        if self.records.failed:
            return None  # the DB failed us in this tick: the request is handled next tick
        wanted = target or "another member"
        try:
            if target == self.node:
                self.store.clear_switchover(f"switchover to {wanted}: it leads already")
                return None
            candidates = self._healthy_standbys()
            refused = (target and target not in candidates) or not candidates
            if refused:
                sentence = f"switchover to {wanted} refused: no such healthy standby"
                self.store.clear_switchover(f"{sentence}; {self.node} stays leader")
        except BackendUnavailable:
            return None  # cannot check the request now: no switchover this tick
        if refused:
            return f"{sentence}; staying leader", None
        return self._demote_now("switchover")

    def _healthy_standbys(self) -> list[str]:
        fresh = 3 * self.t.loop + 1
        return [
            m.node
            for m in self.store.members()
            if m.node != self.node and m.role == Role.STANDBY.value and m.heartbeat_age < fresh
        ]

    def _resign_for_db(self, now: float) -> tuple[str, str | None] | None:
        """Step down when the metadata DB has been unreachable from here for `resign_after`
        and a ready standby reaches it (FAULTS.md 6); never when nobody does."""
        reach = self.db_reach
        takers = reach.resign_for(now) if reach is not None else []
        if reach is None or not takers:
            return None
        self._demote("metadata DB unreachable")
        return reach.resign_sentence(now, self.epoch, takers), "db_unreachable"

    def _db_note(self, now: float) -> str:
        return self.db_reach.note(now) if self.db_reach is not None else ""

    def _demote(self, reason: str) -> None:
        self.role = Role.DEMOTING
        self.demote_reason = reason
        self.child.stop()

    def _demote_now(self, reason: str) -> tuple[str, str | None]:
        self._demote(reason)
        return f"stepping down from epoch {self.epoch} ({reason}): stopping the child", reason

    def _finish_demote(self, now: float) -> tuple[str, str | None]:
        if not self.child.gone:
            self.child.stop()
            return f"stepping down from epoch {self.epoch}: waiting for the child to exit", None
        reason = self.demote_reason
        try:
            self.backend.release()
        except BackendUnavailable as err:
            note = f" (release not confirmed: {err}; retried on the next standby ticks)"
        else:
            note = ""
            self.records.call(lambda: self.store.end_term(self.epoch, reason))  # best effort
        self.role = Role.STANDBY
        self.leader = None
        if reason in ("switchover", "child crash loop", "metadata DB unreachable", KEEPER_STUCK):
            self.cooldown_until = now + 2 * self.t.lease
        elif reason in ("fencing failed", "child start failed"):
            self.cooldown_until = now + self.t.lease  # no epoch-burning retry loop
        if self.child.keeper_stuck:
            note = f" ({self.child.keeper_stuck}: the daemon killed its tree){note}"
        return f"released leadership of epoch {self.epoch} after the child exited{note}", None

    # -- records ----------------------------------------------------------------------------
    @property
    def flags(self) -> ClusterFlags:
        return self.records.flags

    @property
    def clock(self) -> Callable[[], float]:
        return self.records.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.records.clock = clock

    @property
    def store(self) -> MemberStore:
        return self.records.store

    @store.setter
    def store(self, store: MemberStore) -> None:
        self.records.store = store

    @property
    def db_reach(self) -> DbReach | None:
        """ZooKeeper mode with a metadata DB: who can reach it (None otherwise)."""
        return self.records.db_reach

    @db_reach.setter
    def db_reach(self, reach: DbReach | None) -> None:
        self.records.db_reach = reach

    def _heartbeat(self, now: float, sentence: str) -> None:
        # A standby whose pre-warmed scheduler waits ([airflow] prewarm) shows "warm".
        warm = self.child.state is ChildState.STOPPED and self.child.prewarm.state == "warm"
        state = MemberState(
            node=self.node,
            role=self.role.value,
            epoch=self.epoch,
            child_state=group.encode(
                "warm" if warm else self.child.state.value,
                list(self.child.sides.values()),
                self.verdict.health.value if self.child.state is ChildState.RUNNING else "unknown",
            ),
            child_pid=self.child.pid,
            version=__version__,
            sentence=sentence,
        )
        self.records.heartbeat(now, self.t.loop, (self.role, state.child_state), state)
