"""The burstio datagram transport for asyncio (implementation; use ``burstio.aio``).

Where a datagram goes:

- In: the loop sees the socket readable -> ``_read_ready`` -> one
  ``recv_batch`` (recvmmsg, GRO split; up to ``rx_slots`` datagrams) ->
  ``protocol.datagrams_received(batch)`` for a batch protocol, else
  ``protocol.datagram_received(bytes, addr)`` for each entry -> the
  answers sent; then, while each receive filled the batch (more is
  likely queued), another receive in the same callback, up to
  ``READS_PER_WAKEUP`` in all, unless reading was paused or stopped or
  the socket refused sends meanwhile.
- Out: ``sendto`` -> ``PacketBatch.append`` (one copy into the batch) ->
  one ``send_batch`` (sendmmsg; equal runs to one destination as one UDP
  GSO send) at the end of the receive callback that produced the datagram,
  or once per loop iteration (``call_soon``) for datagrams sent elsewhere.
  Only what the kernel refuses (EAGAIN) waits for the socket to become
  writable: that, as in asyncio, is what ``get_write_buffer_size()`` counts
  and what ``pause_writing()``/``resume_writing()`` are about.

Readiness: the transport asks the loop for readiness with ``add_reader`` /
``add_writer`` on the descriptor it reads and writes, the BurstSocket's own
duplicate (so the caller closing the socket object it passed in, or that
number being reused, changes nothing for the transport), and keeps its own
record of what it asked for. asyncio's
selector loops report a pending socket error (an ICMP refusal sets one:
EPOLLERR) as readable and keep watching. Other loops may not: uvloop's
watch (a libuv ``uv_poll``) is stopped and closed on EPOLLERR after running
the callbacks once, and stays registered, dead, for the descriptor, so the
transport would never read or write again. On such loops, a callback that
saw the socket report an error (or an empty wakeup) watches the socket
afresh on the next iteration: remove, then add what it asked for.

Per-datagram metadata (``pktinfo``, ``ecn``, ``paced``; see BurstSocket):
a batch protocol gets the arrays in the batch; a plain protocol reads the
datagram being delivered with ``get_extra_info("local_address")`` (and
"ifindex", "ecn") inside ``datagram_received``; ``sendto`` takes
``local_addr``, ``ecn`` and ``txtime`` keywords. A paced transport's sends go
to the pacer thread: the loop watches the pacer's eventfd (``pacer_fd``) for
refused datagrams, and for room when the pacer is full, instead of the
socket's writability; ``close()`` waits for the pacer to drain.

Why defer a send at all: the stdlib pays one ``sendto`` system call per
datagram. A protocol answering a burst of requests, or aioquic transmitting
a congestion window, calls ``sendto`` many times in one callback; holding
those datagrams until the callback returns lets one ``sendmmsg`` carry them
all, and lets runs to one peer leave as one GSO send. The held datagrams are
bounded by the batch capacity: a full batch is sent there and then.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import sys
import warnings
from asyncio import trsock
from collections.abc import Callable
from typing import Any, cast

from .. import _native
from .._busy_policy import BUDGET_DEFAULT, BusyPollChoice
from .._caps import capabilities
from .._checks import check_int
from .._types import Address
from .._udp import PACER_SLACK, BurstSocket
from . import _busypoll

__all__ = ["BurstDatagramTransport"]

log = logging.getLogger("burstio")

#: receive slots are this large, so any UDP datagram arrives whole (asyncio's contract)
RX_SLOT = _native.GRO_SLOT_MIN
#: send slots; a larger datagram travels in a batch of its own
TX_SLOT = 2048
BIG_SLOT = 65535
#: entries one GRO receive slot may split into (at least)
GRO_ENTRIES_PER_SLOT = 64
#: asyncio warns after this many writes to a lost connection (asyncio.constants)
LOG_THRESHOLD_FOR_CONNLOST_WRITES = 5
#: Python 3.13 sends empty datagrams and counts 8 bytes of header per buffered
#: datagram (cpython gh-113812); earlier versions drop empty ones. Follow the
#: stdlib of the running interpreter, which the tests use as the oracle.
SEND_EMPTY = sys.version_info >= (3, 13)
DATAGRAM_OVERHEAD = getattr(asyncio.selector_events._SelectorDatagramTransport,  # type: ignore[attr-defined]
                            "_header_size", 0)  # (private, so not in typeshed's stubs)
_AGAIN = (BlockingIOError, InterruptedError)
#: receives one readiness callback makes at most, while each fills the receive batch (libuv
#: reads up to 32 datagrams per readiness event): the loop's wake-up and its poll are paid
#: once per this many bursts under load, and other callbacks wait at most this many bursts
READS_PER_WAKEUP = 4
#: get_extra_info names of the datagram being delivered
_DATAGRAM_INFO = ("local_address", "ifindex", "ecn")


def _metadata(local_addr: str | None, ecn: int, txtime: int) -> dict[str, Any] | None:
    """append()'s keywords for sendto()'s metadata; None when there is none."""
    if local_addr is None and not ecn and not txtime:
        return None
    return {"local": local_addr, "ecn": ecn, "txtime": txtime}


def _entry_metadata(batch: _native.PacketBatch, i: int) -> dict[str, Any]:
    """sendto()'s metadata keywords for entry i of a batch ({} when it has none)."""
    if not batch.has_metadata:
        return {}
    return {"local_addr": batch.local_addr(i), "ecn": batch.ecn[i], "txtime": batch.txtimes[i]}


def _set_result_unless_cancelled(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.cancelled():
        fut.set_result(result)


class BurstDatagramTransport(asyncio.DatagramTransport):
    """An ``asyncio.DatagramTransport`` that moves datagrams a batch at a time.

    Made by ``burstio.aio.create_datagram_endpoint``; the contract is
    asyncio's (see ``burstio.aio`` for the differences, which are few).
    """

    _sock: socket.socket | None = None  # set once the socket is ours (__del__ may meet a half-made transport)
    _protocol: Any = None  # set_protocol() sets it: any asyncio protocol, duck-typed
    _extra: dict[str, Any]  # asyncio.BaseTransport's (not in typeshed's stubs)

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: asyncio.BaseProtocol, address: Address | None = None,
                 waiter: asyncio.Future[None] | None = None, extra: dict[str, Any] | None = None, *,
                 gro: bool = False, backend: str = "auto", rx_slots: int = 16,
                 tx_batch: int = 128, pktinfo: bool = False, ecn: bool = False,
                 dont_fragment: bool = False, paced: bool = False, pacer_queue: int = 4096,
                 pacer_slack: float = PACER_SLACK):
        super().__init__(extra)
        check_int("rx_slots", rx_slots, 1, 1 << 20)
        check_int("tx_batch", tx_batch, 1, 1 << 20)
        sock.setblocking(False)
        self._bsock = BurstSocket(sock, gro=gro, backend=backend, pktinfo=pktinfo, ecn=ecn,
                                  dont_fragment=dont_fragment, paced=paced, pacer_queue=pacer_queue,
                                  pacer_slack=pacer_slack)  # owns sock
        self._sock = sock
        # the loop watches the descriptor burstio reads and writes (the
        # BurstSocket's own dup), not the caller's: a socket object closed
        # by its caller, or its number reused, cannot move or steal the watch
        self._sock_fd = self._bsock._io.fd
        self._loop = loop
        self._extra["socket"] = trsock.TransportSocket(sock)
        self._extra["burst_socket"] = self._bsock
        for key, get in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
            if key not in self._extra:
                try:
                    self._extra[key] = get()
                except OSError:
                    self._extra[key] = None
        self._address = address
        # a connected socket sends to its peer whatever address sendto names (as asyncio)
        self._to_peer = address is not None or self._extra["peername"] is not None
        self._batch_protocol = False
        self.set_protocol(protocol)
        # receive side
        # with GRO, one slot may split into as many datagrams as the kernel coalesces
        per_slot = max(GRO_ENTRIES_PER_SLOT, capabilities().gso_max_segments) if self._bsock.gro else 1
        self._rx = _native.PacketBatch(rx_slots * per_slot, RX_SLOT, slots=rx_slots)
        self._recv = self._bsock.recv_batch
        self._rest: tuple[int, int] | None = None  # (next, end) of a batch cut short by pause_reading
        self._delivering = False
        self._hold = False  # stop delivering the current batch (pause, close, new protocol)
        # send side: batches in order; _out takes appends; _head entries of the first are sent
        self._tx_batch = tx_batch
        self._send = self._bsock.send_batch
        self._out = _native.PacketBatch(self._tx_batch, TX_SLOT)
        self._queue: collections.deque[_native.PacketBatch] = collections.deque()
        self._spares: list[_native.PacketBatch] = []
        self._probe = _native.PacketBatch(1, 1)  # tells an address problem from a full batch
        self._head = 0
        self._queued_bytes = 0
        self._blocked = False  # the kernel said EAGAIN: waiting for writability
        self._flushing = False
        self._flush_handle: asyncio.Handle | None = None
        # what the transport asked the loop to watch, and whether the loop's
        # watch may die with a socket error (any loop but asyncio's selector loops)
        self._reading = False
        self._rearm_on_error = not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
        self._rearm_handle: asyncio.Handle | None = None
        # state, as asyncio's _SelectorTransport
        self._closing = False
        self._conn_lost = 0
        self._paused = False
        self._protocol_paused = False
        self._high_water = 64 * 1024
        self._low_water = 16 * 1024
        self._watch_pacer_events(loop)
        loop.call_soon(self._protocol.connection_made, self)
        loop.call_soon(self._start_reading)  # only after connection_made
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    # ---- asyncio.BaseTransport -------------------------------------------

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append("read=" + ("idle" if self._paused or self._closing else "polling"))
            info.append(f"write=<{'polling' if self._blocked else 'idle'}, "
                        f"bufsize={self.get_write_buffer_size()}>")
        return f"<{' '.join(info)}>"

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """asyncio's extra info, and inside ``datagram_received`` the
        datagram's own: "local_address" (where it arrived, with pktinfo on),
        "ifindex" (its interface), "ecn" (its codepoint, with ecn on)."""
        if name in _DATAGRAM_INFO:
            i, rx = self._current, self._rx
            if i < 0 or not rx.has_metadata:
                return default
            if name == "local_address":
                return rx.local_addr(i)
            return rx.ifindexes[i] if name == "ifindex" else rx.ecn[i]
        return super().get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Give the transport's callbacks to ``protocol`` from now on (as asyncio's)."""
        self._protocol = protocol
        self._batch_protocol = callable(getattr(protocol, "datagrams_received", None))
        if getattr(self, "_delivering", False):
            self._hold = True  # the rest of the burst goes to the new protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol the transport calls."""
        protocol: asyncio.BaseProtocol = self._protocol
        return protocol

    def is_closing(self) -> bool:
        """True once ``close()`` or ``abort()`` was called."""
        return self._closing

    def is_reading(self) -> bool:
        """False while reading is paused."""
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        """Stop reading until ``resume_reading()``: datagrams wait in the socket
        (the kernel drops what does not fit)."""
        if not self.is_reading():
            return
        self._paused = True
        self._watch_reading(False)
        if self._delivering:
            self._hold = True

    def resume_reading(self) -> None:
        """Read again after ``pause_reading()``."""
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._rest is not None:
            self._loop.call_soon(self._deliver_rest)  # then reads again
        else:
            self._watch_reading(True)

    def close(self) -> None:
        """Close once the datagrams held for writability are sent (or fail); ``connection_lost(None)`` follows."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._blocked and not self._flushing and self._has_queued():
            self._flush_now()  # what was sent before close() goes out
        if not self._has_queued() and not self._conn_lost and not self._flushing:
            self._lose_connection_after_writes()
        # else: the flush under way, or the writer, finishes and then loses the connection

    def abort(self) -> None:
        """Close now, dropping the datagrams held for writability; ``connection_lost(None)`` follows."""
        self._force_close(None)

    # ---- busy polling (the loop's epoll instance: see burstio.aio._busypoll) --

    _busy: BusyPollChoice | None = None

    def busy_poll(self, usecs: int, budget: int = BUDGET_DEFAULT, prefer: bool = False, *,
                  mechanism: str = "auto") -> str:
        """Make the event loop busy poll the NAPI instance of its sockets for
        up to ``usecs`` while it waits (0: stop), ``budget`` packets per poll,
        ``prefer`` as prefer_busy_poll. The loop waits in its epoll instance,
        never in this socket's receive, so that is where busy polling goes:
        "epoll" (EPIOCSPARAMS on the loop's instance, Linux >= 6.9), which
        ``mechanism="auto"`` takes; "off" after busy_poll(0). The parameters
        are the loop's, shared by every transport on it (the most recent call
        is in force), and stay until the last transport that asked stops or
        loses its connection. A loop that keeps its epoll instance out of
        reach (uvloop's is libuv's) raises OSError(EOPNOTSUPP) saying so."""
        if self._closing:
            raise OSError(errno.EBADF, "Bad file descriptor (the transport is closing)")
        self._busy = _busypoll.start(self._loop, self, usecs, budget, prefer, mechanism)
        return self._busy.mechanism if self._busy else "off"

    @property
    def busy_polling(self) -> str:
        """How the loop busy polls for this transport: "epoll" or "off"."""
        return self._busy.mechanism if self._busy else "off"

    def describe(self) -> str:
        """One line: the BurstSocket's mechanisms, and how the loop busy polls."""
        line = self._bsock.describe()
        return line if self._busy is None else f"{line}, {self._busy.describe()}"

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._bsock.close()
            self._sock = None

    # ---- flow control (asyncio's _FlowControlMixin, same numbers) ----------

    def get_write_buffer_size(self) -> int:
        """Bytes the kernel has refused for now (EAGAIN) and the transport
        holds until the socket is writable. Datagrams held only until the
        end of the current loop iteration are not counted."""
        return self._queued_bytes if self._blocked else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """(low, high): the water marks of ``pause_writing()``/``resume_writing()``, in bytes."""
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks (asyncio's defaults: high 64 KiB, low a quarter of it)."""
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self.get_write_buffer_size() <= self._high_water or self._protocol_paused:
            return
        self._protocol_paused = True
        self._call_protocol("pause_writing")

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self.get_write_buffer_size() <= self._low_water:
            self._protocol_paused = False
            self._call_protocol("resume_writing")

    def _call_protocol(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed", "exception": exc,
                "transport": self, "protocol": self._protocol})

    # ---- receive ----------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._closing and not self._paused:
            self._watch_reading(True)

    def _stop_reading(self) -> None:
        self._watch_reading(False)
        if self._delivering:
            self._hold = True
        self._rest = None

    def _read_ready(self) -> None:
        """The socket is readable: receive a burst and deliver it; while
        bursts fill the batch (more is likely waiting), up to
        ``READS_PER_WAKEUP`` of them in this one callback."""
        rx, slots = self._rx, self._rx.slots
        for burst in range(READS_PER_WAKEUP):
            if self._conn_lost:
                return
            try:
                n = self._recv(rx, 0)
            except _AGAIN:
                if not burst:
                    self._rearm_soon()  # woken with nothing to read: perhaps by an error (see above)
                return
            except OSError as exc:
                self._rearm_soon()
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal read error on datagram transport")
                return
            if n:
                self._deliver(0, n)
            if n < slots or not self._reading or self._rest is not None or self._blocked:
                return

    def _deliver(self, start: int, end: int) -> None:
        """Hand entries [start, end) of the receive batch to the protocol,
        then send what it answered in one go."""
        batch = self._rx
        self._delivering = True
        self._hold = False
        try:
            if self._batch_protocol and start == 0:
                try:
                    self._protocol.datagrams_received(batch)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._callback_failed(exc, "datagrams_received")
                return
            addrs = batch.addresses()
            received = self._protocol.datagram_received
            for i in range(start, end):
                if self._hold:
                    self._cut_short(i, end)
                    return
                self._current = i
                try:
                    received(bytes(batch[i]), addrs[i])
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # the next datagram still goes (as in asyncio)
                    self._callback_failed(exc, "datagram_received")
        finally:
            self._delivering = False
            self._current = -1
            if not (self._blocked or self._conn_lost or self._flushing) and self._has_queued():
                self._flush_now()

    def _cut_short(self, i: int, end: int) -> None:
        """Delivery stopped at entry i (pause_reading, close, set_protocol).
        The rest of the burst goes before anything read later."""
        if self._closing:
            return  # asyncio would not have read these: they are dropped with the socket
        self._rest = (i, end)
        if not self._paused:  # a new protocol: it takes the rest on the next iteration
            self._watch_reading(False)
            self._loop.call_soon(self._deliver_rest)

    def _deliver_rest(self) -> None:
        if self._rest is None or self._closing or self._paused:
            return
        rest, self._rest = self._rest, None
        self._deliver(*rest)
        if self._rest is None and not self._closing and not self._paused:
            self._watch_reading(True)

    def _callback_failed(self, exc: BaseException, name: str) -> None:
        self._loop.call_exception_handler({
            "message": f"Exception in {name}() of {self._protocol!r}", "exception": exc,
            "transport": self, "protocol": self._protocol})

    # ---- readiness -----------------------------------------------------------

    def _watch_reading(self, on: bool) -> None:
        """Ask the loop to call _read_ready when the socket is readable, or stop."""
        if on == self._reading:
            return
        self._reading = on
        if not on:
            if self._sock is not None:
                self._loop.remove_reader(self._sock_fd)
        elif self._rearm_handle is None:  # else the pending re-arm adds it
            self._loop.add_reader(self._sock_fd, self._read_ready)

    def _rearm_soon(self) -> None:
        """The socket reported an error, or woke the loop with nothing to
        read: on loops whose watch may have died of it (see the module's
        docstring), watch afresh on the next iteration, once the loop is done
        with the dead watch. Until then nothing is added to the loop."""
        if self._rearm_on_error and self._rearm_handle is None and not self._conn_lost:
            self._rearm_handle = self._loop.call_soon(self._rearm)

    def _rearm(self) -> None:
        self._rearm_handle = None
        if self._sock is None or self._conn_lost:
            return
        # removing drops the loop's watch, dead or alive; adding makes a new one
        self._loop.remove_reader(self._sock_fd)
        self._loop.remove_writer(self._sock_fd)
        if self._reading:
            self._loop.add_reader(self._sock_fd, self._read_ready)
        if self._blocked and self._pacer_fd is None:
            self._loop.add_writer(self._sock_fd, self._write_ready)

    # ---- send -------------------------------------------------------------

    def sendto(self, data: Any, addr: Any = None, *, local_addr: str | None = None, ecn: int = 0,
               txtime: int = 0) -> None:
        """asyncio's sendto; burstio's keywords: ``local_addr`` the address
        to send from (a wildcard-bound server answering from where a request
        arrived), ``ecn`` the codepoint, ``txtime`` when to send
        (time.monotonic_ns(); a paced transport honours it)."""
        self._meta = _metadata(local_addr, ecn, txtime)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if not data and not SEND_EMPTY:
            return
        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = None
        elif self._to_peer:
            addr = None
        if self._conn_lost:
            self._write_after_loss()
            self._meta = None
            return
        try:
            self._append_meta(self._out, data, addr)
        except ValueError:
            if not self._append_slow(data, addr):
                self._meta = None
                return
        self._meta = None
        self._queued_bytes += len(data) + DATAGRAM_OVERHEAD
        if self._blocked:
            self._maybe_pause_protocol()
        elif not self._delivering:
            self._flush_later()

    def sendto_many(self, datagrams: Any, addr: Any = None) -> None:
        """Send several datagrams with as few system calls as possible.

        ``datagrams`` is a ``PacketBatch`` (each entry goes to its own
        address; ``addr`` must be None) or an iterable of bytes-like objects
        (all to ``addr``). A batch is sent before this returns, straight from
        its memory (what the kernel refuses for now is copied and sent when
        the socket is writable), so it may be the batch just received: change
        entries in place and send them back. Errors go to error_received().
        """
        if not isinstance(datagrams, _native.PacketBatch):
            for data in datagrams:
                self.sendto(data, addr)
            return
        if addr is not None:
            raise ValueError("sendto_many(batch): the batch entries carry their addresses; "
                             "addr must be None")
        n = len(datagrams)
        if not n:
            return
        if self._address is not None or self._to_peer:
            self._check_peer_entries(datagrams)
        if self._conn_lost:
            self._write_after_loss()
            return
        if self._has_queued() and not self._blocked and not self._flushing:
            self._flush_now()  # in order: what sendto() queued goes first
        sent = 0
        if not self._has_queued() and not self._flushing and not self._conn_lost:
            sent = self._send_now(datagrams, n)
            if sent < n and not self._conn_lost:
                self._block()  # the kernel refused the rest for now
        for i in range(sent, n):  # copy what waits (with its metadata): the caller may reuse its batch
            self.sendto(datagrams[i], datagrams.addr(i), **_entry_metadata(datagrams, i))
        if self._closing and not self._blocked:
            self._lose_connection_after_writes()

    def _check_peer_entries(self, batch: _native.PacketBatch) -> None:
        peer = self._address or self._extra["peername"]
        for a in batch.addresses():
            if a is not None and a != peer:
                raise ValueError(f"Invalid address {a}: the transport is connected to {peer}; "
                                 f"entries must carry None or that address")

    def _send_now(self, batch: _native.PacketBatch, n: int) -> int:
        """Send a caller's batch directly; returns how many entries are done."""
        self._flushing = True
        try:
            k = self._send_guarded(batch, 0, n)
        finally:
            self._flushing = False
        if k:
            self._report_send_errors(batch, 0, k)
        return k

    def _append_slow(self, data: Any, addr: Any) -> bool:
        """append() refused: the batch is full, the datagram is large, or
        the address needs resolving. Returns True once the datagram is queued."""
        size = memoryview(data).nbytes
        if addr is not None:
            addr = self._resolve(addr)
            if addr is None:
                return False
        if size > TX_SLOT:
            return self._queue_big(data, addr, size)
        if len(self._out) >= self._tx_batch:
            self._rotate()
        self._append_meta(self._out, data, addr)
        return True

    def _resolve(self, addr: Any) -> Address | None:
        """A numeric address for ``addr`` (asyncio resolves names in
        sock.sendto the same blocking way); None after reporting an error."""
        probe = self._probe
        try:
            probe.append(b"", addr)
            numeric: Address = addr  # the C parser took it
            return numeric
        except ValueError as exc:
            if not (isinstance(addr, tuple) and len(addr) in (2, 4) and isinstance(addr[0], str)
                    and "numeric" in str(exc)):
                raise
        finally:
            probe.clear()
        try:
            infos = socket.getaddrinfo(addr[0], addr[1], cast(socket.socket, self._sock).family, socket.SOCK_DGRAM)
        except OSError as exc:  # socket.gaierror: what asyncio's sendto reports
            self._protocol.error_received(exc)
            return None
        resolved = infos[0][4]
        return resolved if len(addr) == 2 else (resolved[0], resolved[1], *addr[2:])

    def _queue_big(self, data: Any, addr: Any, size: int) -> bool:
        if size > BIG_SLOT:
            err = errno.EMSGSIZE
            self._protocol.error_received(OSError(err, os.strerror(err)))
            return False
        big = _native.PacketBatch(1, size)
        self._append_meta(big, data, addr)
        if len(self._out) > (self._head if not self._queue else 0):
            self._queue.append(self._out)
            self._out = self._spare()
        elif not self._queue:
            self._out.clear()
            self._head = 0
        self._queue.append(big)
        return True

    def _rotate(self) -> None:
        """_out is full: send what is queued now, else queue _out behind it."""
        if not self._blocked and not self._flushing:
            self._flush_now()
        if len(self._out) >= self._tx_batch:
            self._queue.append(self._out)
            self._out = self._spare()

    def _spare(self) -> _native.PacketBatch:
        return self._spares.pop() if self._spares else _native.PacketBatch(self._tx_batch, TX_SLOT)

    def _has_queued(self) -> bool:
        return bool(self._queue) or len(self._out) > self._head

    def _write_after_loss(self) -> None:
        if self._conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES:
            log.warning("socket.send() raised exception.")
        self._conn_lost += 1

    def _flush(self) -> None:
        """The once-per-iteration flush (call_soon)."""
        self._flush_handle = None
        if not self._blocked and not self._conn_lost and not self._flushing:
            self._flush_now()

    def _flush_queued(self) -> bool | None:
        """Send what is queued (not re-entrantly); True when all went, None
        when the connection was lost meanwhile."""
        self._flushing = True
        try:
            done = self._send_queued()
        finally:
            self._flushing = False
        return None if self._conn_lost else done

    def _flush_now(self) -> None:
        done = self._flush_queued()
        if done is None:
            return
        if not done:
            self._block()
        elif self._closing:
            self._lose_connection_after_writes()

    def _send_queued(self) -> bool:
        """Send the datagrams that were queued when this flush began, in
        order, until all went (True) or the kernel refused (EAGAIN; False).
        Errors go to error_received(). What a callback queues meanwhile
        (error_received() sending again) waits for the next loop iteration,
        as do the errors of those sends: a protocol that answers each error
        with more sends cannot keep one callback going."""
        last, last_end = self._out, len(self._out)  # the end of what this flush sends
        while True:
            batch = self._queue[0] if self._queue else self._out
            start, end = self._head, (last_end if batch is last else len(batch))
            if start < end:
                k = self._send_guarded(batch, start, end - start)
                self._head = start + k
                if not k:
                    self._queued_bytes = self._count_queued()
                    return False
                self._report_send_errors(batch, start, start + k)
                if self._conn_lost:  # error_received() aborted the transport
                    return True
                if self._head < end:
                    continue  # a partial send
            if batch is last and self._head < len(batch):
                return self._sent_until_now()
            if batch is self._out:
                batch.clear()
                self._head = 0
                self._queued_bytes = 0
                return True
            self._queue.popleft()
            self._head = 0
            if batch.slot_size == TX_SLOT and len(self._spares) < 2:
                batch.clear()
                self._spares.append(batch)
            if batch is last:
                return self._sent_until_now() if self._has_queued() else True

    def _sent_until_now(self) -> bool:
        """A flush sent what it began with; what was queued meanwhile goes on
        the next loop iteration."""
        self._queued_bytes = self._count_queued()
        self._flush_later()
        return True

    def _flush_later(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _send_guarded(self, batch: _native.PacketBatch, start: int, count: int) -> int:
        """send_batch, errors flagged per datagram; 0 when the socket is full."""
        try:
            return self._send(batch, start, count, on_error="skip")
        except _AGAIN:
            return 0
        except OSError as exc:  # not about one datagram (the socket itself): drop these
            self._rearm_soon()
            self._protocol.error_received(exc)
            return count

    def _report_send_errors(self, batch: _native.PacketBatch, start: int, end: int) -> None:
        errors = [err for i, err in batch.send_errors() if start <= i < end]
        if errors:
            self._rearm_soon()  # before error_received(), which may ask the loop for readiness
        for err in errors:
            if self._conn_lost:
                break
            self._protocol.error_received(OSError(err, os.strerror(err)))

    def _count_queued(self) -> int:
        total, first = 0, True
        for b in (*self._queue, self._out):
            s = self._head if first else 0
            first = False
            n = len(b)
            if n > s:
                total += sum(b.lengths[s:n]) + (n - s) * DATAGRAM_OVERHEAD
        return total

    def _block(self) -> None:
        if not self._blocked:
            self._blocked = True
            if self._pacer_fd is not None:
                self._watch_pacer_room(True)
            elif self._rearm_handle is None:  # else the pending re-arm adds it
                self._loop.add_writer(self._sock_fd, self._write_ready)
        self._maybe_pause_protocol()

    def _stop_writing(self) -> None:
        if self._blocked:
            self._blocked = False
            if self._pacer_fd is not None:
                self._watch_pacer_room(False)
            elif self._sock is not None:
                self._loop.remove_writer(self._sock_fd)

    def _write_ready(self) -> None:
        if self._conn_lost:
            return
        done = self._flush_queued()
        if done is None:
            return
        if done:
            self._stop_writing()
        else:
            self._rearm_soon()  # still waiting: the loop's watch may have died of an error
        self._maybe_resume_protocol()  # may queue more
        if done and self._has_queued() and not self._blocked:
            self._flush_later()
        elif done and self._closing:
            self._lose_connection_after_writes()

    def _lose_connection_after_writes(self) -> None:
        if self._bsock.pacer_pending and not self._conn_lost:
            self._watch_pacer_room(True)  # the pacer's event loses the connection once it drained
            return
        if not self._conn_lost and not self._has_queued():
            self._conn_lost += 1
            self._stop_writing()
            self._loop.call_soon(self._call_connection_lost, None)

    # ---- per-datagram metadata and the pacer -------------------------------

    _meta: dict[str, Any] | None = None  # sendto()'s local_addr/ecn/txtime for the datagram being queued
    _current = -1  # the entry datagram_received is being given (get_extra_info)
    _pacer_fd: int | None = None  # a paced socket's eventfd: refusals, room

    def _watch_pacer_events(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pacer_fd = self._bsock.pacer_fd
        if self._pacer_fd is not None:
            loop.add_reader(self._pacer_fd, self._pacer_event)

    def _append_meta(self, batch: _native.PacketBatch, data: Any, addr: Any) -> None:
        """append() with the metadata sendto() was given, if any."""
        if self._meta is None:
            batch.append(data, addr)
        else:
            batch.append(data, addr, **self._meta)

    def _pacer_event(self) -> None:
        """The pacer's eventfd: refused datagrams to report, room freed for
        what waits, or (closing) the queue drained."""
        with contextlib.suppress(OSError):
            os.read(cast(int, self._pacer_fd), 8)
        if self._conn_lost:
            return
        for err in self._bsock.paced_errors():
            exc = OSError(err.errno, os.strerror(err.errno))
            exc.mtu = err.mtu  # type: ignore[attr-defined]  # the path MTU of an EMSGSIZE (else None)
            self._protocol.error_received(exc)
            if self._conn_lost:
                return
        if self._blocked:
            self._write_ready()
        elif self._closing and not self._bsock.pacer_pending:
            self._lose_connection_after_writes()

    def _watch_pacer_room(self, on: bool) -> None:
        """A paced transport waits for room in the pacer, not for the socket."""
        self._bsock.pacer_want_room(on)

    # ---- endings ----------------------------------------------------------

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler({
                "message": message, "exception": exc, "transport": self, "protocol": self._protocol})
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._queue.clear()
        self._out.clear()
        self._head = 0
        self._queued_bytes = 0
        self._stop_writing()
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            for handle in (self._flush_handle, self._rearm_handle):
                if handle is not None:
                    handle.cancel()
            self._flush_handle = self._rearm_handle = None
            if self._pacer_fd is not None:
                self._loop.remove_reader(self._pacer_fd)
            if self._busy is not None:
                _busypoll.stop(self._loop, self)
                self._busy = None
            self._bsock.close()
            self._sock = None
            self._protocol = None
            self._loop = None  # type: ignore[assignment]  # dropped with the connection (as asyncio does)
