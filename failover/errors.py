"""The one error hierarchy of failover.

Every error a user can see says what was wrong and how to fix it, in one line.
"""

from __future__ import annotations


class FailoverError(Exception):
    """Base of every error raised on purpose by failover."""

    exit_code = 1


class ConfigError(FailoverError):
    """The configuration is invalid: names the field (as the user wrote it: env var, file and
    line, `--set`, when known as `source`) and the fix."""

    exit_code = 2

    def __init__(self, field: str, problem: str, fix: str = "", source: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        self.source = source or field
        text = f"{self.source}: {problem}"
        if fix:
            text += f" ({fix})"
        super().__init__(text)

    def from_source(self, source: str) -> ConfigError:
        """The same error, naming where the user set the field."""
        return ConfigError(self.field, self.problem, self.fix, source)


class BackendUnavailable(FailoverError):
    """The election backend could not be asked; says nothing about who leads."""


class DuplicateNode(FailoverError):
    """Another live daemon already uses this node name in the cluster."""

    exit_code = 3


class ChildError(FailoverError):
    """The supervised child or its keeper could not be started or stopped."""


class StoreError(FailoverError):
    """The member / history store could not be read or written."""
