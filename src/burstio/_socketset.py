"""SocketSet: many UDP sockets, one call.

A server with hundreds of connected UDP sockets (one per game session,
several paths per client) gains little from recvmmsg: each socket has one
to four datagrams ready, so it still pays a syscall per socket. A SocketSet
receives from all of them at once and sends across them at once:

- backend "uring": io_uring. Every socket has a multishot RECVMSG drawing
  from one shared provided-buffer ring; one io_uring_enter per call, and a
  low watermark (``min_datagrams`` with ``max_wait``) that wakes once.
- backend "epoll": the same contract without io_uring: epoll_wait and one
  recvmmsg per ready socket, inside one C call.

Per-datagram metadata: a socket that asked for it (a BurstSocket with
``pktinfo``/``ecn``, or IP_PKTINFO/IPV6_RECVPKTINFO/IP_RECVTOS/IPV6_RECVTCLASS
set) fills the batch's ``local_addrs``, ``ifindexes`` and ``ecn`` on receive;
sends honour the arrays (source address, codepoint), and with
``paced=True`` each entry's ``txtimes`` through burstio's pacer thread.

This module is policy: which backend (from the capability probe), which
sockets may join, what the results mean. The C side (csrc/socketset/: base.c,
uring.c, epoll.c, meta.c) does the syscalls and the memory.
"""
from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _native
from ._busy_policy import BUDGET_DEFAULT, BusyPollChoice, check_busy_poll, epoll_missing_error
from ._caps import capabilities
from ._checks import UDP_OR_TCP, check_int, check_seconds, check_socket
from ._errors import Unsent
from ._kernel import IP_PKTINFO, IP_RECVTOS, IPV6_RECVPKTINFO, IPV6_RECVTCLASS, SOL_UDP, UDP_GRO
from ._types import Address
from ._udp import GSO_SEGMENTS, PACER_QUEUE, PACER_SLACK, BurstSocket

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["SocketSet", "RedundantResult", "BACKENDS"]

log = logging.getLogger("burstio")

BACKENDS = ("auto", "uring", "epoll")
_URING_NEEDS = ("io_uring", "io_uring_recvmsg", "io_uring_sendmsg", "io_uring_buf_ring")


#: a uring receive buffer holds a header (16 bytes), the peer's address (28)
#: and, for a socket that asked for metadata, room for every cmsg
_URING_META_MIN = 16 + 28 + _native.CMSG_RX_SPACE + 64


def _asks_for_metadata(sock: socket.socket) -> bool:
    """Whether the socket has IP_PKTINFO / IP_RECVTOS (or IPv6's) on."""
    opts = [(socket.IPPROTO_IP, IP_PKTINFO), (socket.IPPROTO_IP, IP_RECVTOS)]
    if sock.family == socket.AF_INET6:
        opts += [(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO), (socket.IPPROTO_IPV6, IPV6_RECVTCLASS)]
    for level, opt in opts:
        try:
            if sock.getsockopt(level, opt):
                return True
        except OSError:
            continue
    return False


class RedundantResult(NamedTuple):
    """What send_redundant did: ``sent`` datagram-sends went out; each
    failure is (entry, socket index, errno). Together they account for
    every (datagram, socket) pair."""

    sent: int
    failures: list[tuple[int, int, int]]


class SocketSet:
    """Receive from and send on many sockets with one call each.

    ``SocketSet(*, backend="auto", max_sockets=1024, buffers=4096,
    buffer_size=2048, sqpoll=False, gso=True, paced=False, pacer_queue=4096,
    pacer_slack=0.001)``

    ``buffers`` x ``buffer_size`` is the shared receive pool of the io_uring
    backend (a datagram, its address, a 16-byte header and 64 bytes of
    control messages must fit a buffer; larger datagrams are truncated and
    flagged). ``sqpoll`` asks
    for a kernel submission thread. The default io_uring ring is set up
    SINGLE_ISSUER|DEFER_TASKRUN: the kernel does receive work only inside
    your calls, but a ``min_datagrams`` wait then enters the kernel once per
    arrival burst; ``single_wakeup=True`` sets it up COOP_TASKRUN instead,
    so the kernel counts the datagrams and such a wait returns after one
    entry. A SocketSet is used from the thread that made it, one call at a time
    (RuntimeError otherwise). It keeps its own descriptor of every socket
    until remove() or close(). After fork(), an epoll set works in the child
    (with an epoll instance of its own, on the shared sockets); an io_uring
    set refuses the child's calls (RuntimeError): its io_uring is the
    parent's.

    ``paced=True`` honours each entry's ``batch.txtimes`` with burstio's
    pacer thread (one for the set; each socket's datagrams leave in the order
    they were queued): ``send_batch`` then queues and returns, ``close()``
    returns what was still waiting, ``paced_errors()`` what the kernel
    refused. Without it a transmit time is refused (ValueError).
    ``pacer_queue`` and ``pacer_slack`` mean what they mean for BurstSocket.
    """

    def __init__(self, *, backend: str = "auto", max_sockets: int = 1024, buffers: int = 4096,
                 buffer_size: int = 2048, sqpoll: bool = False, single_wakeup: bool = False,
                 gso: bool = True, paced: bool = False, pacer_queue: int = PACER_QUEUE,
                 pacer_slack: float = PACER_SLACK):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        caps = capabilities()
        missing = [n for n in _URING_NEEDS if not caps[n].available]
        if backend == "uring" and missing:
            raise OSError(errno.EOPNOTSUPP,
                          f"backend 'uring' needs {', '.join(missing)}: {caps[missing[0]].detail}")
        if sqpoll and not caps.io_uring_sqpoll:
            raise OSError(errno.EOPNOTSUPP, f"sqpoll needs io_uring_sqpoll: {caps['io_uring_sqpoll'].detail}")
        self._io: _native.EpollSocketSet | _native.UringSocketSet
        if backend == "epoll" or (backend == "auto" and missing):
            self._io = _native.EpollSocketSet(max_sockets)
            self.backend = "epoll"
        else:
            self._io = _native.UringSocketSet(max_sockets, buffers, buffer_size, bool(sqpoll), bool(single_wakeup))
            self.backend = "uring"
        self._io.gso = int(bool(gso) and caps.udp_segment)
        self._io.gso_max_segments = max(1, min(GSO_SEGMENTS, caps.gso_max_segments))
        self._io.ecn_cmsg = int(caps.ecn)
        self._buffer_size = buffer_size
        self._socks: dict[int, socket.socket] = {}
        self._pacer: _native.Pacer | None = None
        self._unsent: list[Unsent] = []
        self._busy_poll: BusyPollChoice | None = None  # what busy_poll() chose, while busy polling
        # hot paths straight to C (their docstrings are below)
        self.recv_batch = self._io.recv_batch  # type: ignore[method-assign]  # the C method, no Python frame
        self.send_batch = self._io.send_batch  # type: ignore[method-assign]  # the C method, no Python frame
        self.take_errors = self._io.take_errors  # type: ignore[method-assign]  # the C method, no Python frame
        self._ecn_warned = False
        if self._io.ecn_cmsg:
            # while codepoints are sent, a send the kernel refuses may be the
            # codepoint's cmsg: the C send, then the downgrade (_send_marked)
            self.send_batch = self._send_marked  # type: ignore[method-assign]
        if paced:
            check_int("pacer_queue", pacer_queue, 1, 1 << 20)
            check_seconds("pacer_slack", pacer_slack, 0.0, 1.0)
            self._pacer = _native.Pacer(-1, pacer_queue)
            self._pacer.slack_ns = round(pacer_slack * 1e9)
            self._pacer.gso, self._pacer.gso_max_segments = self._io.gso, self._io.gso_max_segments
            self._pacer.ecn_cmsg = self._io.ecn_cmsg
            self.send_batch = self._send_paced  # type: ignore[method-assign]  # a paced set queues

    # ---- sockets -------------------------------------------------------

    def add(self, sock: socket.socket | BurstSocket, *, stream: bool = False) -> int:
        """Add a UDP socket (socket.socket or BurstSocket) and return its
        index, which batch.sockets uses. ``stream=True`` adds a stream (TCP)
        socket for recv_stream() only. The set works on its own duplicate
        of the descriptor: closing your socket does not take it out of the
        set (it keeps receiving there, and the port stays bound) until
        remove()."""
        raw = check_socket(sock, "SocketSet.add", kinds=UDP_OR_TCP, burst_socket=True)
        kind = socket.SOCK_STREAM if stream else socket.SOCK_DGRAM
        if raw.type != kind:
            want = "a stream socket (stream=True)" if stream else "a UDP socket (SOCK_DGRAM)"
            raise ValueError(f"SocketSet.add needs {want}, got {raw.type.name}")
        if not stream and raw.getsockopt(SOL_UDP, UDP_GRO):
            # a coalesced receive needs a batch (and io_uring buffers) sized
            # for it; one turned on after add() is still split, as a safety net
            raise ValueError("SocketSet.add refuses a socket with UDP_GRO on (a coalesced receive would "
                             "be one entry holding many datagrams): turn UDP_GRO off, or receive it "
                             "with a BurstSocket(gro=True)")
        meta = not stream and _asks_for_metadata(raw)
        if meta and self.backend == "uring" and self._buffer_size < _URING_META_MIN:
            raise ValueError(f"a socket with pktinfo or ECN on needs buffer_size >= {_URING_META_MIN} here (its "
                             f"cmsgs share the receive buffer), got {self._buffer_size}")
        index = self._io.add(raw, stream, meta)
        self._socks[index] = raw
        if self._pacer is not None and not stream:
            self._pacer.set_socket(index, raw.fileno())
        return index

    def remove(self, index: int) -> socket.socket:
        """Stop using the socket at ``index``; returns it (still open)."""
        self._io.remove(index)
        if self._pacer is not None:
            self._pacer.set_socket(index, -1)
        return self._socks.pop(index)

    def socket(self, index: int) -> socket.socket:
        """The socket at ``index``."""
        try:
            return self._socks[index]
        except KeyError:
            raise ValueError(f"no socket at index {index} in this socket set") from None

    def __len__(self) -> int:
        return len(self._socks)

    # ---- the batch paths (documentation; instances bind the C methods) --

    def recv_batch(self, batch: _native.PacketBatch, timeout: float | None = None, *,
                   min_datagrams: int = 1, max_wait: float | None = None) -> int:
        """Fill ``batch`` from any socket; ``batch.sockets[i]`` says which.

        Returns when ``min_datagrams`` are ready (or a socket reported an
        error) or ``max_wait`` seconds have passed, whichever is first; if
        none came by then, waits for one up to ``timeout`` (None: forever).
        Per-socket errors (ECONNREFUSED, ENOBUFS when the receive pool ran
        out, a socket closed behind the set's back) go to take_errors(); the
        others' data is untouched, and receiving resumes by itself.
        """
        return self._io.recv_batch(batch, timeout, min_datagrams=min_datagrams, max_wait=max_wait)

    def send_batch(self, batch: _native.PacketBatch, start: int = 0, count: int | None = None) -> int:
        """Send datagram i on socket ``batch.sockets[i]``, all at once (runs to
        one destination on one socket as UDP GSO). Returns the datagrams
        sent; failures are flagged in the batch (``batch.send_errors()``)."""
        return self._io.send_batch(batch, start, count)

    def _send_marked(self, batch: _native.PacketBatch, start: int = 0, count: int | None = None) -> int:
        """send_batch while ECN codepoints are sent: the C send; then, if the
        kernel refused a datagram carrying a codepoint with EINVAL (some
        kernels refuse the TOS/TCLASS cmsg, as quinn-udp meets), the
        downgrade (_ecn_retry)."""
        n: int = self._io.send_batch(batch, start, count)
        want = len(batch) - start if count is None else count
        if n < want and self._io.ecn_cmsg and batch.has_metadata:
            ecn = batch.ecn
            refused: list[tuple[int, int | None]] = [
                (i, None) for i, err in batch.send_errors()
                if start <= i < start + want and err == errno.EINVAL and ecn[i]]
            n += len(self._ecn_retry(batch, refused))
        return n

    def _ecn_retry(self, batch: _native.PacketBatch,
                   refused: list[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
        """Send the first refused (entry, socket) again without its codepoint
        (socket None: the entry's own, batch.sockets): if it goes, the
        kernel refused the cmsg, not the datagram: codepoints stay off for
        the set (counted in ecn_downgrades, logged once) and the rest are
        sent again too; if not, nothing changes. Returns the pairs that went
        (their failures taken back from tx_errors, their error flags cleared
        by the resend; one that fails again stays flagged, counted once).
        While the first waits, a send on another thread goes without
        codepoints too (counted in tx_ecn_unmarked)."""
        if not refused:
            return []
        before, self._io.ecn_cmsg = self._io.ecn_cmsg, 0
        if not self._resend(batch, *refused[0]):
            self._io.ecn_cmsg = before  # refused anyway: the datagram, not its codepoint
            self._io.add_to_counter("tx_errors", -1)  # one failure, counted once
            return []
        self._io.add_to_counter("ecn_downgrades", 1)
        if self._pacer is None:  # (a paced set's pacer thread downgrades its own sends)
            self.send_batch = self._io.send_batch  # type: ignore[method-assign]  # no codepoints: the C method
        if not self._ecn_warned:
            self._ecn_warned = True
            log.warning("the kernel refused the ECN codepoint cmsg on a SocketSet send (EINVAL); "
                        "sending without ECN from now on")
        went = [refused[0], *(r for r in refused[1:] if self._resend(batch, *r))]
        # each resend takes one count back: the first failure if it went, its
        # own if not (the datagram failed once either way)
        self._io.add_to_counter("tx_errors", -len(refused))
        return went

    def _resend(self, batch: _native.PacketBatch, i: int, sock: int | None) -> bool:
        if sock is None:
            return bool(self._io.send_batch(batch, i, 1) == 1)
        return not self._io.send_redundant(batch, [sock], i, 1)[1]

    def _send_paced(self, batch: _native.PacketBatch, start: int = 0, count: int | None = None) -> int:
        """send_batch on a paced set: queue every entry for socket batch.sockets[i]."""
        assert self._pacer is not None  # bound only when pacing
        return self._pacer.queue(batch, start, count, by_socket=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every paced datagram has been sent or refused; False if
        ``timeout`` seconds passed first (True at once without pacing)."""
        return True if self._pacer is None else self._pacer.flush(timeout)

    def paced_errors(self) -> list[tuple[int, int, Address | None]]:
        """Paced datagrams the kernel refused since the last call:
        (sequence, errno, destination); sequence counts the set's paced
        datagrams queued before it."""
        return [] if self._pacer is None else self._pacer.take_errors()

    def send_redundant(self, batch: _native.PacketBatch, group: list[int], start: int = 0,
                       count: int | None = None) -> RedundantResult:
        """Send every datagram of ``batch`` on every socket of ``group`` (the
        redundant scheduler of multipath UDP) in one submission (now: transmit
        times are refused here, paced or not)."""
        sent, failures = self._io.send_redundant(batch, group, start, count)
        if failures and self._io.ecn_cmsg and batch.has_metadata:
            ecn = batch.ecn
            went = set(self._ecn_retry(batch, [(i, s) for i, s, err in failures
                                               if err == errno.EINVAL and ecn[i]]))
            if went:
                sent += len(went)
                failures = [f for f in failures if (f[0], f[1]) not in went]
        return RedundantResult(sent, failures)

    def take_errors(self) -> list[tuple[int, int]]:
        """Per-socket receive errors since the last call: [(index, errno)]."""
        return self._io.take_errors()

    def recv_stream(self, index: int, buffer: WriteableBuffer, min_bytes: int, timeout: float | None = None) -> int:
        """Stream socket ``index`` (added with stream=True): wait until
        ``min_bytes`` have arrived or ``timeout`` seconds have passed, with
        one wake-up either way, and read up to ``min_bytes`` into ``buffer``.
        Returns the bytes read (0: nothing in time, or end of stream)."""
        return self._io.recv_stream(index, buffer, min_bytes, timeout)

    # ---- busy polling -------------------------------------------------

    def busy_poll(self, usecs: int, budget: int = BUDGET_DEFAULT, prefer: bool = False, *,
                  mechanism: str = "auto") -> str:
        """While a receive waits, busy poll the NAPI instances of the set's
        sockets for up to ``usecs`` (0: stop), through what the set waits in
        (a socket's own busy-poll options would never run: the set never
        waits in one socket's receive). Returns the mechanism:

        - "epoll" (the epoll backend): its epoll instance's busy-poll
          parameters (EPIOCSPARAMS, Linux >= 6.9);
        - "io_uring" (the uring backend): IORING_REGISTER_NAPI (Linux >= 6.9;
          io_uring takes no budget);
        - "off" after busy_poll(0).

        ``mechanism="auto"`` takes the backend's; ``describe()`` says which
        and why. On a kernel without it, OSError names what is missing.
        """
        from .napi.busypoll import BusyPollEpoll, register_uring_napi

        own = "epoll" if self.backend == "epoll" else "io_uring"
        check_busy_poll(usecs, budget, prefer, mechanism, ("auto", own), f"SocketSet (backend {self.backend!r})",
                        "its epoll instance" if own == "epoll" else "its io_uring")
        fd = getattr(self._io, "epoll_fd", None)
        if own == "io_uring":
            caps = capabilities()
            if caps.io_uring_napi:
                register_uring_napi(self, usecs, prefer)
            elif usecs:  # (and without it nothing can have been registered: off needs no call)
                raise OSError(errno.EOPNOTSUPP, "busy polling through an io_uring needs IORING_REGISTER_NAPI "
                                                f"(Linux >= 6.9): {caps['io_uring_napi'].detail}")
        elif fd is None or fd < 0:
            raise OSError(errno.EBADF, "Bad file descriptor (the socket set is closed)")
        else:
            caps = capabilities()
            if not caps.epoll_busy_poll:
                raise epoll_missing_error(caps)
            BusyPollEpoll._set_params_fd(fd, usecs, budget if usecs else 0, prefer and bool(usecs))
        self._busy_poll = BusyPollChoice(own, usecs, budget if own == "epoll" else 0, prefer, mechanism,
                                         "many sockets: the instance their readiness comes through") \
            if usecs else None
        return own if usecs else "off"

    @property
    def busy_polling(self) -> str:
        """How receives busy poll: "epoll", "io_uring" or "off" (see busy_poll)."""
        return self._busy_poll.mechanism if self._busy_poll else "off"

    # ---- the rest ------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        """Snapshot of the set's counters (docs/socketset.md names each); a
        paced set's pacer thread adds its tx_* and paced_* counts."""
        c = self._io.counters()
        if self._pacer is not None:
            for name, n in self._pacer.counters().items():
                c[name] = c.get(name, 0) + n
        return c

    def reset_counters(self) -> None:
        """Set every counter (and the pacer thread's, if paced) back to 0."""
        self._io.reset_counters()
        if self._pacer is not None:
            self._pacer.reset_counters()

    @property
    def unsent(self) -> list[Unsent]:
        """What ``close()`` found still waiting in the pacer."""
        return list(self._unsent)

    def describe(self) -> str:
        """One line saying how this set receives and sends (and busy polls)."""
        line: str = self._io.describe()
        return line if self._busy_poll is None else f"{line}, {self._busy_poll.describe()}"

    def close(self) -> list[Unsent]:
        """Tear the set down and close its own descriptors; your sockets
        stay open. A recv_batch or recv_stream waiting in another thread (or
        interrupted by the signal handler that closes) ends at once with
        ``OSError(EBADF, "the SocketSet was closed while waiting")``, and the
        set is torn down as that call leaves. A paced set's pacer stops:
        returns the datagrams still waiting (also in ``unsent``), else []."""
        if self._pacer is not None:
            self._unsent += [Unsent(*u) for u in self._pacer.close()]
        self._io.close()
        self._socks.clear()
        self._busy_poll = None
        return self.unsent

    def __enter__(self) -> SocketSet:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SocketSet {len(self._socks)} sockets: {self.describe()}>"
