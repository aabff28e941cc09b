"""The controller's vocabulary: roles, timings and what one tick decided.

Shared by the leader side (`controller.py`), the standby side (`standby.py`) and the daemon.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

FAST_TICK = 0.02
SETTLE_TICK = 0.1


class Role(enum.Enum):
    STANDBY = "standby"
    FENCING = "fencing"  # won leadership; making older epochs harmless before the start
    LEADER = "leader"
    DEMOTING = "demoting"  # stopping the child; leadership is released once it is gone
    STOPPED = "stopped"  # shut down


@dataclass(frozen=True)
class Timings:
    lease: float
    loop: float
    self_fence: float  # child may run this long after the start of a proven renew
    stop_timeout: float
    backend_timeout: float  # a metadata-DB call slower than this failed, for the whole tick

    @property
    def demote_lead(self) -> float:
        """Start a graceful stop this long before the self-fence deadline."""
        return min(self.stop_timeout, self.lease / 2)


@dataclass(frozen=True)
class TickResult:
    sentence: str
    role: Role
    epoch: int
    leader: str | None
    wait: float
    paused: bool
    backend_up: bool
    transition: str | None = None  # reason of a leadership change made by this tick
