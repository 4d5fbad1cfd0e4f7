"""A UDP server that speaks sockperf's protocol, built on recv_batch/send_batch.

sockperf (3.x) messages start with a 14-byte header in network byte order:
u64 sequence number, u16 flags, u32 length. The client sets FLAG_CLIENT on
everything it sends and FLAG_PONG_REQUEST on the messages it wants back;
the server echoes exactly those, with FLAG_CLIENT cleared, to their sender.
Warm-up messages (FLAG_WARMUP) follow the same rule.

Modes: "blocking" (recv_batch sleeps until a datagram comes), "busy-poll"
(BurstSocket.busy_poll, its mechanism "auto" unless busy_poll_mechanism says
otherwise: for the server's one socket, SO_BUSY_POLL, so while nothing is
there each receive polls the NIC queue itself instead of sleeping, with no
epoll_wait before it), and
"busy-poll-suspend" (busy-poll with prefer_busy_poll, and on the NAPI
instance the traffic comes through: defer_hard_irqs, gro_flush_timeout and
irq_suspend_timeout, so interrupts stay off while the server keeps finding
work; the NAPI settings are put back on exit).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _native
from .._busy_policy import SOCKET_MECHANISMS
from .._checks import check_choice
from .._types import Address
from .._udp import BurstSocket
from ..napi.busypoll import napi_id

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

__all__ = ["SockperfServer", "main", "add_arguments", "run", "mark_replies", "MODES", "SUSPEND_NAPI", "HEADER",
           "FLAG_CLIENT", "FLAG_PONG_REQUEST", "FLAG_WARMUP"]

log = logging.getLogger("burstio")
MODES = ("blocking", "busy-poll", "busy-poll-suspend")
#: per-NAPI settings of busy-poll-suspend (ns); see burstio.napi.doctor.RECIPE
SUSPEND_NAPI = {"defer_hard_irqs": 2, "gro_flush_timeout": 200_000, "irq_suspend_timeout": 20_000_000}

HEADER = struct.Struct("!QHI")  # sequence, flags, length
FLAG_CLIENT = 1
FLAG_PONG_REQUEST = 2
FLAG_WARMUP = 4
_FLAGS_LOW = 9  # offset of the flags' low byte in the header
_HEADER_SIZE = HEADER.size
_CLEAR_CLIENT = ~FLAG_CLIENT & 0xFF


def mark_replies(arena: memoryview, offsets: memoryview, lengths: memoryview, mask: bytearray, n: int) -> int:
    """The server's reading of sockperf headers, in place: for each of the
    first ``n`` received messages (``arena[offsets[i]:][:lengths[i]]``), a
    pong request (a whole header, FLAG_PONG_REQUEST set) gets FLAG_CLIENT
    cleared and ``mask[i] = 1``; anything else, ``mask[i] = 0``. Returns how
    many to answer. Only the flags' low byte of pong requests is written."""
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


class SockperfServer:
    """Answer sockperf clients (ping-pong, under-load, throughput) over UDP.

    Each wake-up receives every queued message with one recvmmsg, marks the
    ones to answer, and sends the answers with one sendmmsg (runs of equal
    answers to one client go out as one GSO send).

    ``sock``: serve on this bound UDP socket (the server owns it from then
    on) instead of binding ``(host, port)``.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 11111, *, batch: int = 64,
                 max_message: int = 65507, backend: str = "auto", gso: bool = True,
                 mode: str = "blocking", busy_poll_usecs: int = 50, busy_poll_budget: int = 8,
                 napi_settings: dict[str, int] | None = None, sock: socket.socket | None = None,
                 busy_poll_mechanism: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.busy_poll_usecs, self.busy_poll_budget = mode, busy_poll_usecs, busy_poll_budget
        self.busy_poll_mechanism = check_choice("busy_poll_mechanism", busy_poll_mechanism, SOCKET_MECHANISMS)
        self.napi_settings = dict(SUSPEND_NAPI if napi_settings is None else napi_settings)
        self.sock = (BurstSocket.bind((host, port), backend=backend, gso=gso) if sock is None
                     else BurstSocket(sock, backend=backend, gso=gso))
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
    def address(self) -> Address:
        """The address the server is bound to."""
        return self.sock.getsockname()

    def _mark_replies(self, n: int) -> int:
        return mark_replies(self._arena, self._offsets, self._lengths, self._mask, n)

    def serve_once(self, timeout: float | None = None) -> int:
        """Handle one burst; returns the number of messages received."""
        batch, sock = self.batch, self.sock
        n = sock.recv_batch(batch, timeout)
        if n == 1:  # ping-pong: the latency-critical case, mark_replies inlined
            arena, off = self._arena, self._offsets[0] + _FLAGS_LOW
            if self._lengths[0] >= _HEADER_SIZE and arena[off] & FLAG_PONG_REQUEST:
                arena[off] &= _CLEAR_CLIENT
                sock.send_batch(batch, 0, 1, on_error="skip")
                self.replies += 1
        elif n:
            self._answer_burst(n)
        self.requests += n
        return n

    def _answer_burst(self, n: int) -> None:
        """Answer the pong requests among the ``n`` messages received."""
        replies = self._mark_replies(n)
        if replies:
            if replies < n:
                self.batch.keep(self._mask)
            self.sock.send_batch(self.batch, 0, replies, on_error="skip")
            self.replies += replies

    def _serve_until_stopped(self, poll_interval: float | None) -> None:
        """serve_once until stop(), in one frame: every name the ping-pong
        path uses is bound once, so that between a request's arrival and its
        reply's send (what a ping-pong client waits for) there is no call but
        the send and no attribute lookup."""
        batch, stopped = self.batch, self._stop.is_set
        recv, send = self.sock.recv_batch, self.sock.send_batch
        arena, offsets, lengths = self._arena, self._offsets, self._lengths
        low, size, pong, clear = _FLAGS_LOW, _HEADER_SIZE, FLAG_PONG_REQUEST, _CLEAR_CLIENT
        while not stopped():
            n = recv(batch, poll_interval)
            if n == 1:
                off = offsets[0] + low
                if lengths[0] >= size and (flags := arena[off]) & pong:
                    arena[off] = flags & clear
                    send(batch, 0, 1, on_error="skip")
                    self.replies += 1
            elif n:
                self._answer_burst(n)
            self.requests += n

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until stop() (checked every poll_interval seconds) or a signal."""
        if self.mode != "blocking":
            self._serve_busy_poll(poll_interval)
            return
        self._serve_until_stopped(poll_interval)

    def start_busy_poll(self) -> str:
        """Busy poll as the mode says (the busy-poll modes; serve_forever
        does it when not done yet, and stops it on its way out); returns the
        mechanism ("off" in blocking mode). describe() of the socket says
        which and why."""
        if self.mode == "blocking":
            return "off"
        how = self.sock.busy_poll(self.busy_poll_usecs, self.busy_poll_budget,
                                  prefer=self.mode == "busy-poll-suspend", mechanism=self.busy_poll_mechanism)
        log.info("sockperf server: %s", self.sock.describe())
        return how

    def _serve_busy_poll(self, poll_interval: float | None) -> None:
        suspend = self.mode == "busy-poll-suspend"
        if self.sock.busy_polling == "off":
            self.start_busy_poll()
        with contextlib.ExitStack() as stack:
            stack.callback(self.sock.busy_poll, 0)
            if suspend:  # the NAPI instance to tune is known from the first message on
                serve_once, stopped = self.serve_once, self._stop.is_set
                while not stopped():
                    if serve_once(poll_interval):
                        stack.callback(self._tune_napi(napi_id(self.sock), self.napi_settings))
                        break
            self._serve_until_stopped(poll_interval)

    def _tune_napi(self, nid: int, settings: dict[str, int]) -> Callable[[], None]:
        """Apply `settings` to NAPI `nid` (in the socket's namespace);
        returns the undo."""
        from ..napi import netdev

        if not nid:
            log.warning("busy-poll-suspend: the traffic does not come through NAPI; nothing to tune")
            return lambda: None
        with netdev.netns_of(self.sock):
            before = netdev.napi_settings(nid)
            try:
                how = netdev.configure_napi(nid, **settings)
            except netdev.NetdevError as e:
                if e.errno != errno.EOPNOTSUPP or "irq_suspend_timeout" not in settings:
                    raise
                log.warning("busy-poll-suspend: %s; going on without it", e.strerror)
                settings = {k: v for k, v in settings.items() if k != "irq_suspend_timeout"}
                how = netdev.configure_napi(nid, **settings)
        log.info("busy-poll-suspend: NAPI %d set to %s (%s)", nid, settings, how)
        keep = {k: v for k, v in before.items() if k in settings}
        fd = os.dup(self.sock.fileno())  # the namespace stays known after close()

        def undo() -> None:
            try:
                with netdev.netns_of(fd):
                    netdev.configure_napi(nid, **keep)
            finally:
                os.close(fd)
        return undo

    def stop(self) -> None:
        """End serve_forever() (at its next wake-up: give it a poll_interval)."""
        self._stop.set()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def summary(self) -> str:
        """One line: what was served, at what cost."""
        c = self.sock.counters
        return (f"served {self.requests} messages, {self.replies} replies, "
                f"{c['rx_syscalls'] + c['tx_syscalls']} syscalls, kernel drops {c['kernel_drops']}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(host: str, port: int, batch: int = 64, backend: str = "auto", quiet: bool = False,
         mode: str = "blocking", busy_poll_usecs: int = 50, busy_poll_budget: int = 8,
         napi_settings: dict[str, int] | None = None, busy_poll_mechanism: str = "auto") -> int:
    """Serve on ``(host, port)`` until SIGTERM or Ctrl-C; prints a start and a closing line
    unless ``quiet``."""
    server = SockperfServer(host, port, batch=batch, backend=backend, mode=mode,
                            busy_poll_usecs=busy_poll_usecs, busy_poll_budget=busy_poll_budget,
                            napi_settings=napi_settings, busy_poll_mechanism=busy_poll_mechanism)
    return _serve(server, quiet)


def _serve(server: SockperfServer, quiet: bool) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends the server like Ctrl-C
    try:
        server.start_busy_poll()  # before the start line, which says how
    except BaseException:
        server.close()
        raise
    try:  # from the start line on, SIGTERM or Ctrl-C ends the server as a stop, however early
        if not quiet:
            host, port = server.address[:2]
            print(f"burstio sockperf server on {host}:{port} ({server.sock.describe()}; {server.mode})", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if not quiet:
            print(server.summary(), flush=True)
        server.close()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``burstio serve sockperf``."""
    from .._cliargs import add_sockperf_arguments

    add_sockperf_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``burstio serve sockperf`` with parsed arguments (``add_arguments``); a bind that
    fails is a ``CommandError`` naming the address."""
    from .._cliargs import bind_failure, say, serve_workers, when_set

    def make(sock: socket.socket | None = None) -> SockperfServer:
        return SockperfServer(args.host, args.port, batch=args.batch, backend=args.backend, mode=args.mode,
                              busy_poll_usecs=args.busy_poll_usecs, busy_poll_budget=args.busy_poll_budget,
                              napi_settings=args.napi_settings, sock=sock,
                              busy_poll_mechanism=args.busy_poll_mechanism)

    if args.workers == 1:
        try:
            server = make()
        except OSError as e:
            raise bind_failure(e, args.host, args.port) from None
        return _serve(server, args.quiet)

    def worker(index: int, sock: socket.socket, stop: Event) -> None:
        server = make(sock)
        when_set(stop, server.stop)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            if not args.quiet:
                say(f"worker {index} (pid {os.getpid()}): {server.summary()}")
            server.close()

    return serve_workers(args, "burstio sockperf server", worker)
