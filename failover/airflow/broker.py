"""Where Airflow's Celery broker is: the hosts of `[celery] broker_url`, and which of them are
an address of this host (a broker belongs on its own cluster, never on a candidate)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

RESOLVE_SECONDS = 2.0  # check-config must not hang on a dead resolver
LOCAL_SCHEMES = ("socket", "unix")  # redis+socket://, unix:// are on this host by definition


def broker_hosts(url: str) -> list[str]:
    """The host names of a broker URL; Celery's failover form `url1;url2` gives several.
    A Unix-socket URL gives `localhost`; a URL without a host (sqla+, filesystem) nothing."""
    hosts: list[str] = []
    for part in (p.strip() for p in url.split(";")):
        if not part:
            continue
        try:
            parsed = urlsplit(part)
            host = parsed.hostname
        except ValueError:
            continue
        if any(word in parsed.scheme for word in LOCAL_SCHEMES):
            hosts.append("localhost")
        elif host:
            hosts.append(host)
    return hosts


def resolve(host: str, timeout: float = RESOLVE_SECONDS) -> list[str]:
    """The addresses of `host` (empty when it does not resolve within `timeout`)."""
    found: list[str] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return
        found.extend(str(info[4][0]) for info in infos)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    return list(dict.fromkeys(found)) if not worker.is_alive() else []


def bindable(address: str) -> bool:
    """True when `address` belongs to this host (network namespace): only a local address,
    loopback included, can be bound without IP_FREEBIND."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
    except OSError:
        return False
    return True


def local_brokers(
    url: str,
    resolver: Callable[[str], Iterable[str]] = resolve,
    is_local: Callable[[str], bool] = bindable,
) -> list[str]:
    """The broker hosts of `url` that resolve to an address of this host."""
    return [h for h in broker_hosts(url) if any(is_local(a) for a in resolver(h))]
