"""Network namespaces for chaos tests: the `host` fixture (a namespace joined to the root
namespace by a veth pair). `Host` and `Forwarder` live in tests/netns.py (the bench uses
them too) and are re-exported here for the tests that import them from this module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from ..netns import Forwarder, Host, namespace_host

__all__ = ["Forwarder", "Host", "host"]


@pytest.fixture
def host() -> Iterator[Host]:
    if shutil.which("ip") is None:
        pytest.fail("iproute2 is needed (scripts/test installs it)", pytrace=False)
    with namespace_host() as h:
        yield h
