"""The TOML configuration file: its data, and where each key is, for errors that name it.

`lease_seconds (/etc/failover/failover.toml line 3): ...` instead of a bare field name.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from failover.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: str) -> tuple[dict[str, Any], str]:
    """The file's data and its text; a one-line `ConfigError` when unreadable or invalid."""
    try:
        text = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(
            "--config", f"cannot read {path}: {err.strerror}", "check the path and permissions"
        ) from err
    try:
        decoded = text.decode("utf-8")
        return tomllib.loads(decoded), decoded
    except UnicodeDecodeError as err:
        raise ConfigError("--config", f"{path} is not UTF-8 text", "save it as UTF-8") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("--config", f"{path} is not valid TOML: {err}", "fix the syntax") from err


TOML_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
TOML_KEY = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*=")


def key_origins(path: str, data: Mapping[str, Any], text: str) -> dict[str, str]:
    """Dotted key -> `key (FILE line N)` for every key of the file (line when found)."""
    lines: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        if found := TOML_TABLE.match(line):
            table = found.group(1)
        elif found := TOML_KEY.match(line):
            lines.setdefault(f"{table}.{found.group(1)}" if table else found.group(1), number)
    origins: dict[str, str] = {}
    for key, value in data.items():
        dotted = [f"{key}.{sub}" for sub in value] if isinstance(value, Mapping) else [key]
        for name in dotted:
            where = f"{path} line {lines[name]}" if name in lines else path
            origins[name] = f"{name} ({where})"
    return origins
