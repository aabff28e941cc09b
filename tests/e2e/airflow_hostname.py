"""AIRFLOW__CORE__HOSTNAME_CALLABLE for the e2e tests: each candidate its own hostname."""

import os
import socket


def hostname() -> str:
    return os.environ.get("FAILOVER_NODE") or socket.getfqdn()
