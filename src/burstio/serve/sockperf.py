"""A UDP server that speaks sockperf's protocol, built on recv_batch/send_batch.

sockperf (3.x) messages start with a 14-byte header in network byte order:
u64 sequence number, u16 flags, u32 length. The client sets FLAG_CLIENT on
everything it sends and FLAG_PONG_REQUEST on the messages it wants back;
the server echoes exactly those, with FLAG_CLIENT cleared, to their sender.
Warm-up messages (FLAG_WARMUP) follow the same rule.
"""
from __future__ import annotations

import signal
import struct
import threading

from .. import _native
from ..udp import BurstSocket

HEADER = struct.Struct("!QHI")  # sequence, flags, length
FLAG_CLIENT = 1
FLAG_PONG_REQUEST = 2
FLAG_WARMUP = 4
_FLAGS_LOW = 9  # offset of the flags' low byte in the header


class SockperfServer:
    """Answer sockperf clients (ping-pong, under-load, throughput) over UDP.

    Each wake-up receives every queued message with one recvmmsg, marks the
    ones to answer, and sends the answers with one sendmmsg (runs of equal
    answers to one client go out as one GSO send).
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 11111, *, batch: int = 64,
                 max_message: int = 65507, backend: str = "auto", gso: bool = True):
        self.sock = BurstSocket.bind((host, port), backend=backend, gso=gso)
        self.batch = _native.PacketBatch(batch, max_message)
        self._mask = bytearray(batch)
        # views over the batch's memory, made once (they stay valid)
        self._arena = self.batch.arena
        self._offsets = self.batch.offsets
        self._lengths = self.batch.lengths
        self._stop = threading.Event()
        self.requests = 0
        self.replies = 0

    @property
    def address(self) -> tuple:
        return self.sock.getsockname()

    def _mark_replies(self, n: int) -> int:
        """Clear the client flag of every pong request and mark it for reply;
        returns how many to answer."""
        arena, offsets, lengths, mask = self._arena, self._offsets, self._lengths, self._mask
        replies = 0
        for i in range(n):
            off = offsets[i] + _FLAGS_LOW
            if lengths[i] >= HEADER.size and arena[off] & FLAG_PONG_REQUEST:
                arena[off] &= ~FLAG_CLIENT & 0xFF
                mask[i] = 1
                replies += 1
            else:
                mask[i] = 0
        return replies

    def serve_once(self, timeout: float | None = None) -> int:
        """Handle one burst; returns the number of messages received."""
        batch, sock = self.batch, self.sock
        n = sock.recv_batch(batch, timeout)
        if n == 1:  # ping-pong: the latency-critical case, kept short
            off = self._offsets[0] + _FLAGS_LOW
            if self._lengths[0] >= HEADER.size and self._arena[off] & FLAG_PONG_REQUEST:
                self._arena[off] &= ~FLAG_CLIENT & 0xFF
                sock.send_batch(batch, 0, 1, on_error="skip")
                self.replies += 1
        elif n:
            replies = self._mark_replies(n)
            if replies:
                if replies < n:
                    batch.keep(self._mask)
                sock.send_batch(batch, 0, replies, on_error="skip")
                self.replies += replies
        self.requests += n
        return n

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until stop() (checked every poll_interval seconds) or a signal."""
        serve_once, stopped = self.serve_once, self._stop.is_set
        while not stopped():
            serve_once(poll_interval)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.sock.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(host: str, port: int, batch: int = 64, backend: str = "auto", quiet: bool = False) -> int:
    server = SockperfServer(host, port, batch=batch, backend=backend)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends the server like Ctrl-C
    if not quiet:
        print(f"burstio sockperf server on {server.address} ({server.sock.describe()})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        c = server.sock.counters
        if not quiet:
            print(f"served {server.requests} messages, {server.replies} replies, "
                  f"{c['rx_syscalls'] + c['tx_syscalls']} syscalls, kernel drops {c['kernel_drops']}",
                  flush=True)
        server.close()
    return 0
