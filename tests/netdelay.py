"""Delay every packet of an NFQUEUE queue by a fixed time: a netem stand-in for kernels built
without `sch_netem` (tc's netem is not in every kernel; NFQUEUE usually is).

    ip netns exec NS python tests/netdelay.py --queue 0 --ms 2000

Speaks nfnetlink_queue directly (standard library only): binds the queue, takes packet ids
(metadata only, no payload), and gives each its ACCEPT verdict `ms` after it arrived, in
order. Prints "ready" once bound. SIGTERM: accept everything still held at once, then exit.
An iptables rule sends the packets here: `-j NFQUEUE --queue-num N` (see netns.Host.delay).
"""

from __future__ import annotations

import argparse
import collections
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
QUEUE_MAXLEN = 65536


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, 0, 0) + body


def messages(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload after the netlink header) of each message in one datagram."""
    out = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        out.append((kind, data[offset + 16 : offset + length]))
        offset += (length + 3) & ~3
    return out


def packet_id(payload: bytes) -> int | None:
    offset = 4  # nfgenmsg
    while offset + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, offset)
        if length < 4:
            return None
        if kind & 0x7FFF == NFQA_PACKET_HDR:
            return int(struct.unpack_from("!I", payload, offset + 4)[0])
        offset += (length + 3) & ~3
    return None


def configure(sock: socket.socket, queue: int) -> None:
    for attrs in (
        attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)),
        attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)),
        attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)),
    ):
        sock.send(message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        for kind, payload in messages(sock.recv(65536)):
            errno = struct.unpack_from("=i", payload)[0] if kind == NLMSG_ERROR else 0
            if errno:
                raise OSError(-errno, f"nfnetlink_queue config of queue {queue} refused")


def verdict(sock: socket.socket, queue: int, pid: int) -> None:
    sock.send(
        message(
            NFQNL_MSG_VERDICT, queue, attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid))
        )
    )


def run(queue: int, delay: float) -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    configure(sock, queue)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    held: collections.deque[tuple[float, int]] = collections.deque()
    print("ready", flush=True)
    while not stopping:
        now = time.monotonic()
        while held and held[0][0] <= now:
            verdict(sock, queue, held.popleft()[1])
        wait = max(0.0, held[0][0] - now) if held else 0.5
        try:
            readable, _, _ = select.select([sock], [], [], wait)
        except InterruptedError:
            continue
        if not readable:
            continue
        try:
            data = sock.recv(65536)
        except OSError:  # ENOBUFS: the kernel dropped messages; TCP will retransmit
            continue
        arrived = time.monotonic()
        for kind, payload in messages(data):
            pid = (
                packet_id(payload) if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET else None
            )
            if pid is not None:
                held.append((arrived + delay, pid))
    for _, pid in held:
        verdict(sock, queue, pid)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--queue", type=int, default=0)
    p.add_argument("--ms", type=float, required=True)
    args = p.parse_args()
    return run(args.queue, args.ms / 1000)


if __name__ == "__main__":
    sys.exit(main())
