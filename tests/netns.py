"""Network namespaces for chaos tests and benchmarks: a "host" joined to the root namespace by
a veth pair, a TCP forwarder so a server bound to loopback can be reached from it, and netem
delays on the link. Needs root and iproute2 (`ip`, `tc`)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

NETDELAY = str(Path(__file__).with_name("netdelay.py"))


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Host:
    """A network namespace joined to the root namespace by a veth pair (a /30 of its own)."""

    ns: str
    host_if: str  # the root namespace's end of the veth
    host_ip: str
    ns_ip: str
    ns_if: str = ""  # the namespace's end
    delayer: subprocess.Popen[str] | None = None
    delay_rule: list[str] = field(default_factory=list)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def cut(self) -> None:
        ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        ip("link", "set", self.host_if, "up")

    def delay(self, ms: int, dport: int | None = None) -> None:
        """Delay every packet the host sends through the veth by `ms` (TCP acknowledgements
        included; only those to TCP port `dport` if given): each round trip takes `ms` longer,
        nothing is lost.

        netem would do it, but not every kernel has `sch_netem`; an NFQUEUE rule (iptables
        in the namespace) and tests/netdelay.py holding each packet do the same."""
        self.undelay()
        self.delayer = subprocess.Popen(
            [*self.exec_prefix(), sys.executable, NETDELAY, "--queue", "0", "--ms", str(ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.delayer.stdout is not None
        ready = self.delayer.stdout.readline().strip()  # bounded: it binds or exits at once
        if ready != "ready":
            self.delayer.kill()
            self.delayer.wait(timeout=5)
            raise RuntimeError(f"tests/netdelay.py did not start (printed {ready!r})")
        self.delay_rule = ["OUTPUT", "-o", self.ns_if]
        if dport is not None:
            self.delay_rule += ["-p", "tcp", "--dport", str(dport)]
        self.delay_rule += ["-j", "NFQUEUE", "--queue-num", "0"]
        ip("netns", "exec", self.ns, "iptables-legacy", "-w", "-A", *self.delay_rule)

    def undelay(self) -> None:
        """Stop delaying: packets still held are let through at once."""
        if self.delayer is None:
            return
        ip("netns", "exec", self.ns, "iptables-legacy", "-w", "-D", *self.delay_rule)
        self.delayer.terminate()
        self.delayer.wait(timeout=10)
        self.delayer = None


@contextlib.contextmanager
def namespace_host(octet: int | None = None) -> Iterator[Host]:
    """A fresh namespace host on 10.231.<octet>.0/30 (random octet unless given); every
    process left in it is killed and it is deleted after."""
    tag = uuid.uuid4().hex[:6]
    if octet is None:
        octet = int(tag[:2], 16) % 200 + 20
    h = Host(f"fo-{tag}", f"fo-h{tag}", f"10.231.{octet}.1", f"10.231.{octet}.2", f"fo-n{tag}")
    ip("netns", "add", h.ns)
    try:
        ip("link", "add", h.host_if, "type", "veth", "peer", "name", h.ns_if)
        ip("link", "set", h.ns_if, "netns", h.ns)
        ip("addr", "add", f"{h.host_ip}/30", "dev", h.host_if)
        ip("link", "set", h.host_if, "up")
        ip("netns", "exec", h.ns, "ip", "addr", "add", f"{h.ns_ip}/30", "dev", h.ns_if)
        ip("netns", "exec", h.ns, "ip", "link", "set", h.ns_if, "up")
        ip("netns", "exec", h.ns, "ip", "link", "set", "lo", "up")
        yield h
    finally:
        if h.delayer is not None:
            h.delayer.kill()
            h.delayer.wait(timeout=10)
        pids = subprocess.run(
            ["ip", "netns", "pids", h.ns], capture_output=True, text=True, check=False
        )
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "link", "del", h.host_if], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", h.ns], check=False, capture_output=True)


@dataclass
class Forwarder:
    """Listens on `listen_ip` (the veth's root side) and relays to 127.0.0.1:`port`; a cut
    veth black-holes the packets, so clients see a real partition, not a closed socket."""

    listen_ip: str
    port: int
    listen_port: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.server = socket.create_server((self.listen_ip, 0))
        self.server.settimeout(0.2)
        self.listen_port = self.server.getsockname()[1]
        self._spawn(self._accept)

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:  # the server is down (restarting): the client sees a reset
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                self._spawn(self._pipe, a, b)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.5)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        for t in self._threads:
            t.join(timeout=2)
