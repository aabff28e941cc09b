"""Is the supervised Airflow scheduler alive? Verdicts from its `job` row heartbeat.

The interface and the pure verdict live here; a metadata-DB dialect reads the table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Health(enum.Enum):
    UNKNOWN = "unknown"  # no scheduler table to judge by: process liveness only
    STARTING = "starting"  # no heartbeat yet, still within the start-up grace
    HEALTHY = "healthy"
    HUNG = "hung"  # runs but does not heartbeat: kill and restart


@dataclass(frozen=True)
class JobRow:
    """The newest running SchedulerJob row that belongs to our child."""

    job_id: int
    hostname: str
    heartbeat_age: float  # seconds, from the database's now()


@dataclass(frozen=True)
class Verdict:
    health: Health
    detail: str


class JobSource(Protocol):
    """Reads the scheduler's job rows; raises `BackendUnavailable` when it cannot."""

    def baseline(self) -> int:
        """The highest job id now: rows above it were created by a child started after."""
        ...

    def newest(self, after_id: int) -> JobRow | None: ...

    def close(self) -> None:
        """Drop the connection."""
        ...


@dataclass(frozen=True)
class HealthPolicy:
    threshold: float  # Airflow's scheduler_health_check_threshold
    startup_grace: float  # no verdict of "hung" before the first heartbeat is due


def judge(row: JobRow | None, running_for: float, policy: HealthPolicy) -> Verdict:
    """The verdict for a child that has run `running_for` seconds."""
    if row is None:
        if running_for < policy.startup_grace:
            return Verdict(Health.STARTING, f"no scheduler heartbeat yet ({running_for:.0f} s)")
        return Verdict(
            Health.HUNG,
            f"no SchedulerJob row {running_for:.0f} s after the start "
            f"(grace {policy.startup_grace:g} s)",
        )
    if row.heartbeat_age > policy.threshold:
        return Verdict(
            Health.HUNG,
            f"scheduler job {row.job_id} last heartbeat {row.heartbeat_age:.0f} s ago "
            f"(threshold {policy.threshold:g} s)",
        )
    return Verdict(
        Health.HEALTHY, f"scheduler job {row.job_id} heartbeat {row.heartbeat_age:.1f} s ago"
    )
