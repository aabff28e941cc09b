"""The supervised child as an explicit state machine, driven through its keeper.

The OS side (spawning the keeper, the control socket) is injected as a `Launcher`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from failover.child.group import Component, due_restarts, group_args
from failover.child.parts import (
    GONE_STATES,
    PREWARM_WORDS,
    STOP_SLACK_SECONDS,
    ChildPolicy,
    ChildState,
    KeeperLink,
    Launcher,
    Prewarm,
)
from failover.errors import ChildError


class Child:
    """One supervised command; at most one keeper (hence one child tree) at a time."""

    def __init__(
        self,
        launcher: Launcher,
        command: Sequence[str],
        policy: ChildPolicy,
        warm_args: Sequence[str] = (),
        sides: Sequence[Component] = (),
        name: str = "scheduler",
    ) -> None:
        self.launcher = launcher
        self.name = name  # the main component's name (the scheduler in a group)
        self.sides = {c.name: c for c in sides}  # side components, in group order
        self.command = tuple(command)
        self.policy = policy
        self.warm_args = tuple(warm_args)  # extra keeper options for warm keepers (--prewarm)
        self.prewarm = Prewarm()
        self.state = ChildState.STOPPED
        self.link: KeeperLink | None = None
        self.pid: int | None = None
        self.epoch: int | None = None
        self.started_at: float | None = None
        self.exit_code: int | None = None
        self.fast_failures = 0
        self.restarts = 0
        self.backoff_until = 0.0
        self.stop_requested = False
        self.stop_sent = ""
        self.failing = ""
        self.last_event = ""
        self.warm: KeeperLink | None = None  # a keeper started in advance, waiting for GO
        self.warm_ready = False
        self.warm_failures = 0
        self.warm_retry_at = 0.0
        self.warm_error = ""
        self.give_up = ""  # a side component's crash loop: the group counts as FAILED
        self.stop_by: float | None = None  # the keeper must have ended the tree by then
        self.stop_timed = ""  # the stop request stop_by was set for
        self.keeper_stuck = ""  # why the daemon presumed the child's keeper stuck
        self.keeper_kills = 0  # child keepers the daemon killed itself
        self.warm_kills = 0  # warm keepers it replaced for not answering
        # Not yet logged: (level, event, fields); the daemon drains it.
        self.events: list[tuple[str, str, dict[str, object]]] = []

    @property
    def gone(self) -> bool:
        """Proven: no process of ours runs (the keeper confirmed its tree empty)."""
        return self.state in GONE_STATES

    def may_start(self, now: float) -> bool:
        if self.state is ChildState.BACKOFF:
            return now >= self.backoff_until
        return self.state is ChildState.STOPPED

    @property
    def keeper_at_hand(self) -> bool:
        """A promotion now could get a keeper: one is waiting, or we can start one."""
        return self.launcher.on_demand or self.warm is not None

    def wants_warm(self, now: float) -> bool:
        """No keeper at all, and not backing off after a warm keeper died."""
        return self.warm is None and self.gone and now >= self.warm_retry_at

    def prepare(self, now: float, env: Mapping[str, str], keeper_args: Sequence[str]) -> None:
        """Start a warm keeper (imports done, proof session open) so a start costs ~1 ms."""
        if not self.wants_warm(now):
            return
        args = (*keeper_args, *group_args(self.sides, self.policy.defer_sides), *self.warm_args)
        self.warm = self.launcher.launch(self.command, env, self.policy.stop_timeout, args)
        self.warm_ready = False

    def discard_warm(self, reason: str = "") -> None:
        """Close the warm keeper; with a `reason`, its pre-warmed scheduler counts as replaced."""
        if self.warm is not None:
            if reason and self.prewarm.state != "off":
                self.prewarm.restarts += 1
                fields: dict[str, object] = {"pid": self.prewarm.pid, "reason": reason}
                self.prewarm.events.append(("info", "prewarm_restart", fields))
            self.warm.close()
            self.warm = None
            self.warm_ready = False
            self.prewarm.gone()

    def _poll_warm(self, now: float) -> None:
        if self.warm is None:
            return
        silent = self.warm.silence()
        if self.policy.answer_seconds and silent >= self.policy.answer_seconds:
            self._replace_stuck_warm(now, silent)
            return
        for line in self.warm.read_lines():
            word, _, arg = line.partition(" ")
            if word == "READY":
                self.warm_ready = True
                self.warm_failures = 0
            elif word == "ERROR":
                self.warm_error = arg
            elif word in PREWARM_WORDS:
                self.prewarm.on_line(word, arg)
            elif word in ("GONE", "EOF"):
                self.warm.cleanup()
                self.warm = None
                self.warm_ready = False
                self.prewarm.gone()
                self.warm_failures += 1
                self.warm_retry_at = now + min(0.5 * 2**self.warm_failures, 30.0)
                return
        self.warm.ping(self.policy.ping_seconds)

    def _replace_stuck_warm(self, now: float, silent: float) -> None:
        """A standby's keeper that stopped answering: kill it (nothing of it runs a child) and
        start another after a backoff; the leader is not touched."""
        assert self.warm is not None
        pid = self.warm.pid
        if not self.warm.kill():
            self.warm.close()  # sidecar: EOF ends it once it thaws; its probe restarts it
        self.warm = None
        self.warm_ready = False
        self.prewarm.gone()
        self.warm_kills += 1
        self.warm_failures += 1
        self.warm_retry_at = now + min(0.5 * 2**self.warm_failures, 30.0)
        fields: dict[str, object] = {"pid": pid, "silent_seconds": round(silent, 2)}
        self.events.append(("warning", "warm_keeper_unresponsive", fields))

    def start(
        self,
        now: float,
        epoch: int,
        run_until: float,
        env: Mapping[str, str],
        keeper_args: Sequence[str] = (),
    ) -> None:
        if not self.may_start(now):
            raise ChildError(f"cannot start the child while it is {self.state.value}")
        if self.started_at is not None:
            self.restarts += 1
        self._poll_warm(now)
        link = self.warm
        self.warm = None
        self.warm_ready = False
        self.prewarm.gone()  # promoted (or never there): no warm process any more
        if link is None:
            args = (*keeper_args, *group_args(self.sides, self.policy.defer_sides))
            link = self.launcher.launch(self.command, env, self.policy.stop_timeout, args)
        link.send(f"GO {epoch} {run_until:.6f}")
        for side in self.sides.values():
            if self.policy.defer_sides:
                side.state, side.pid, side.started_at = "deferred", None, None
            else:
                side.launched(now)
        self.link = link
        self.state = ChildState.STARTING
        self.epoch = epoch
        self.pid = None
        self.exit_code = None
        self.started_at = now
        self.stop_requested = False
        self.stop_sent = ""
        self.stop_by = None
        self.stop_timed = ""
        self.keeper_stuck = ""
        self.failing = ""
        self.last_event = "keeper launched"

    def hand_session(self, line: str | None) -> None:
        """Give the running child's keeper the backend session to end once the daemon died
        and the tree is gone (ZooKeeper: keeper/zksession.py); never a warm keeper's."""
        if line and self.link is not None and not self.gone:
            self.link.send(line)

    def extend(self, run_until: float) -> None:
        """Let the child run until `run_until` (only ever after a proven renew)."""
        if self.link is not None and self.state in (
            ChildState.STARTING,
            ChildState.RUNNING,
            ChildState.STOPPING,  # a graceful stop keeps its stop_timeout while the lease holds
        ):
            self.link.send(f"RUN-UNTIL {run_until:.6f}")

    def stop(self, hard: bool = False) -> None:
        """Ask the keeper to stop the tree (SIGTERM first, or SIGKILL when `hard`)."""
        if self.link is None or self.gone:
            return
        word = "KILL" if hard else "STOP"
        if self.stop_sent in (word, "KILL"):
            return  # already asked; the keeper enforces it
        self.stop_requested = True
        self.stop_sent = word
        self.link.send(word)
        self.state = ChildState.STOPPING

    def release_sides(self, now: float) -> None:
        """Start the deferred side components (the main command is healthy, or cannot be
        judged): `RESTART <name>` to the keeper, which starts them in its session."""
        if self.link is None or self.state is not ChildState.RUNNING or self.stop_sent:
            return
        for side in self.sides.values():
            if side.state == "deferred":
                side.launched(now)
                self.link.send(f"RESTART {side.name}")

    def fail(self, reason: str) -> None:
        """Kill a child that runs but is unhealthy; it counts toward the crash-loop limit."""
        if self.link is None or self.gone:
            return
        self.failing = reason
        self.stop(hard=True)
        self.stop_requested = False  # not an orderly stop: _gone() accounts it as a failure

    def fail_component(self, name: str, reason: str) -> None:
        """Kill one hung side component; it is restarted after its backoff (or, when it
        keeps failing, the group is given up); the main command goes through `fail`."""
        side = self.sides.get(name)
        if side is None:
            self.fail(reason)
        elif self.link is not None and side.state == "running" and not self.stop_sent:
            side.failing = reason
            self.link.send(f"KILL {name}")

    def _side_line(self, now: float, word: str, arg: str, name: str) -> None:
        ending = bool(self.stop_sent) or self.exit_code is not None
        ending = ending or self.state is not ChildState.RUNNING  # the group ends: not its failure
        p = self.policy
        rule = (p.fast_failure_seconds, p.backoff_initial, p.backoff_max, p.max_fast_failures)
        event, give_up = self.sides[name].on_line(now, word, arg, ending, rule)
        self.last_event = event or self.last_event
        if give_up:
            self.give_up = give_up
            self.fail(give_up)

    def reset_failures(self) -> None:
        """Forget the crash history (after leadership was given up and regained)."""
        self.fast_failures = 0
        for side in self.sides.values():
            side.fast_failures = 0
        self.keeper_stuck = ""
        if self.state in (ChildState.FAILED, ChildState.BACKOFF):
            self.state = ChildState.STOPPED

    def poll(self, now: float) -> list[str]:
        """Take in what the keepers said; return the protocol lines of the child's keeper."""
        self._poll_warm(now)
        if self.link is None:
            return []
        lines = self.link.read_lines()
        for line in lines:
            self._on_line(now, line)
        if self.link is not None:
            self._check_keeper(now)
        if self.link is not None:
            self.link.ping(self.policy.ping_seconds)
        if self.link is not None and self.state is ChildState.RUNNING and not self.stop_sent:
            for name in due_restarts(self.sides, now):
                self.link.send(f"RESTART {name}")
        return lines

    def check_at(self, now: float) -> float | None:
        """When `poll` must run again to keep the bounds on the keepers (None: no bound)."""
        due: list[float] = []
        links = [self.warm] if self.warm is not None else []
        if self.link is not None and not self.keeper_stuck:  # (stuck: acted on; see the tick)
            due += [self.stop_by] if self.stop_by is not None else []
            links.append(self.link)
        for link in links:
            silent = link.silence()
            if silent > 0 and self.policy.answer_seconds:
                due.append(now + self.policy.answer_seconds - silent)
        return min(due, default=None)

    def _check_keeper(self, now: float) -> None:
        """Every stop is bounded, whatever the keeper does: kill its tree ourselves when it
        stops answering or does not finish a stop in time."""
        assert self.link is not None
        if self.stop_sent != self.stop_timed:  # a new STOP or KILL since the last poll
            grace = self.policy.stop_timeout if self.stop_sent == "STOP" else 0.0
            deadline = now + grace + STOP_SLACK_SECONDS
            self.stop_by = min(self.stop_by or deadline, deadline)
            self.stop_timed = self.stop_sent
        silent = self.link.silence()
        if self.policy.answer_seconds and silent >= self.policy.answer_seconds:
            why = f"the keeper did not answer for {silent:.1f} s"
        elif self.stop_by is not None and now >= self.stop_by:
            why = f"the keeper did not finish its {self.stop_sent} in time"
        else:
            return
        if not self.keeper_stuck:
            self.keeper_kills += 1
            self.events.append(("error", "keeper_unresponsive", {"pid": self.link.pid, "why": why}))
        self.keeper_stuck = why
        if not self.link.kill():
            return  # sidecar mode, or a process that survives SIGKILL: no release until gone
        stopping = self.stop_requested
        self._gone(now, f"{why}: the daemon killed it and its whole tree", cleanup=False)
        if not stopping and not self.failing:
            self.state = ChildState.FAILED  # step down: this host cannot vouch for a child

    def _on_line(self, now: float, line: str) -> None:
        word, _, arg = line.partition(" ")
        value, _, name = arg.partition(" ")
        if word in ("STARTED", "EXITED") and name in self.sides:
            self._side_line(now, word, value, name)
            return
        if word == "STARTED" and self.state is ChildState.STARTING:
            self.pid = int(arg)
            self.state = ChildState.RUNNING
        elif word == "EXITED":
            self.exit_code = int(arg)
        elif word in ("GONE", "EOF"):
            self._gone(now, arg if word == "GONE" else "keeper died")
            return
        elif word == "ERROR":
            self.last_event = arg
            return
        elif word in PREWARM_WORDS:
            return  # a warm keeper's last words about its warm process, just before GO
        self.last_event = line

    def _gone(self, now: float, reason: str, cleanup: bool = True) -> None:
        assert self.link is not None
        if cleanup:  # (not after kill(): it did all of it, and waited no longer than it may)
            self.link.cleanup()
        self.link = None
        self.pid = None
        self.last_event = f"child tree gone: {reason}"
        for side in self.sides.values():
            side.state, side.pid, side.health = "stopped", None, "unknown"
        if self.give_up:
            self.last_event, self.give_up = f"child killed: {self.give_up}", ""
            self.state = ChildState.FAILED
            return
        if self.stop_requested:
            self.state = ChildState.STOPPED
            return
        ran = now - (self.started_at or now)
        if self.failing:
            self.last_event = f"child killed: {self.failing}"
            self.fast_failures += 1  # a hang counts however long the child had run
        elif ran < self.policy.fast_failure_seconds:
            self.fast_failures += 1
        else:
            self.fast_failures = 0  # it ran long enough: a fresh crash, not a loop
        if self.fast_failures >= self.policy.max_fast_failures:
            self.state = ChildState.FAILED
            return
        delay = self.policy.backoff_initial * 2 ** max(0, self.fast_failures - 1)
        self.backoff_until = now + min(delay, self.policy.backoff_max)
        self.state = ChildState.BACKOFF


def child_env(base: Mapping[str, str], cluster: str, node: str) -> dict[str, str]:
    """The keeper's and child's environment: inherited, plus who it runs for.

    The keeper adds `FAILOVER_EPOCH` and `PGAPPNAME=failover:<cluster>:<node>:<epoch>` on GO.
    """
    env = dict(base)
    env["FAILOVER_NODE"] = node
    env["FAILOVER_CLUSTER"] = cluster
    for name in ("FAILOVER_EPOCH", "PGAPPNAME"):
        env.pop(name, None)
    return env
