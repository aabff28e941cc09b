"""The supervised child: a state machine (`core.Child`) driven through its keeper, the
parts it is made of (`parts`), and the side components of an Airflow 3 group (`group`)."""

from failover.child.core import Child, child_env
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

__all__ = [
    "GONE_STATES",
    "PREWARM_WORDS",
    "STOP_SLACK_SECONDS",
    "Child",
    "ChildPolicy",
    "ChildState",
    "KeeperLink",
    "Launcher",
    "Prewarm",
    "child_env",
]
