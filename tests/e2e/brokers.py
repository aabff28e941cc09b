"""The Celery brokers of the e2e site, Debian's own servers run by hand in a namespace:
redis-server (no persistence) and rabbitmq-server (a node of its own, `guest` allowed
from other hosts). How to start each, its URL, and when it answers."""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the wrapper in /usr/sbin su's


@dataclass(frozen=True)
class Broker:
    kind: str  # redis or rabbitmq
    port: int

    def url(self, address: str) -> str:
        if self.kind == "redis":
            return f"redis://{address}/0"
        return f"amqp://guest:guest@{address}//"

    def missing(self) -> str | None:
        if self.kind == "redis" and shutil.which("redis-server") is None:
            return "redis-server is not installed: run scripts/test (apt-get install redis-server)"
        if self.kind == "rabbitmq" and not Path(RABBITMQ_SERVER).exists():
            return "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
        return None

    def command(self, ip: str, workdir: Path) -> tuple[list[str], dict[str, str]]:
        """argv and extra env of the server bound to `ip`, its state under `workdir`."""
        workdir.mkdir(parents=True, exist_ok=True)
        if self.kind == "redis":
            argv = [shutil.which("redis-server") or "redis-server", "--bind", ip]
            argv += ["--port", str(self.port), "--save", "", "--appendonly", "no"]
            return [*argv, "--protected-mode", "no", "--dir", str(workdir)], {}
        conf = workdir / "rabbitmq.conf"
        conf.write_text(f"loopback_users = none\nlisteners.tcp.1 = {ip}:{self.port}\n")
        (workdir / "enabled_plugins").write_text("[].\n")
        env = {
            "HOME": str(workdir),  # the Erlang cookie
            "RABBITMQ_NODENAME": "rabbit@localhost",  # epmd on the namespace's loopback
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_PID_FILE": str(workdir / "pid"),
        }
        return [RABBITMQ_SERVER], env

    def answers(self, ip: str) -> bool:
        """The server speaks its protocol at ip:port (PING -> +PONG; AMQP header -> a frame)."""
        hello = b"PING\r\n" if self.kind == "redis" else b"AMQP\x00\x00\x09\x01"
        try:
            with socket.create_connection((ip, self.port), timeout=1) as s:
                s.settimeout(2)
                s.sendall(hello)
                answer = s.recv(16)
        except OSError:
            return False
        return answer.startswith(b"+PONG") if self.kind == "redis" else answer[:1] == b"\x01"


BROKERS = {"redis": Broker("redis", 6379), "rabbitmq": Broker("rabbitmq", 5672)}
