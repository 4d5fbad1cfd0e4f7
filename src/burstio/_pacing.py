"""Paced sends in pure Python: the portable twin of ``_native.Pacer`` (see
csrc/udp/pacer.h for the contract), used by the portable backend and as the
oracle the C pacer is tested against.

Where a datagram goes through it: ``queue(batch)`` copies each entry
(payload, destination, metadata) into a deque; a daemon thread waits on a
condition variable until the first entry's release time (time.monotonic_ns,
CLOCK_MONOTONIC; ``_release_time``, as the C pacer), then sends every entry
due within half the release's span of now (``slack_ns``, half of it in a
dense flow: ``_span``; GSO runs as the C pacer makes them: one destination,
local address and codepoint; the times of one release may differ) with
``socket.sendmsg``.
"""
from __future__ import annotations

import collections
import errno
import fcntl
import itertools
import os
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, NamedTuple, cast

from . import _ancillary, _native
from ._ancillary import Meta
from ._types import Address

if TYPE_CHECKING:
    from ._native import PacketBatch

__all__ = ["PortablePacer", "COUNTER_NAMES"]

COUNTER_NAMES = ("tx_datagrams", "tx_bytes", "tx_syscalls", "tx_gso_messages", "tx_gso_datagrams", "tx_errors",
                 "tx_ecn_unmarked", "gso_downgrades", "ecn_downgrades", "paced_queued", "paced_late",
                 "paced_waits", "paced_unsent", "paced_errors_dropped", "paced_releases")
_ROUND = 1024
_DENSE = 32  # entries due within half the slack that make a flow dense (BIO_PACER_DENSE)
_MAX_ERRORS = 4096
_LARGEST = _native.GRO_SLOT_MIN


class _Entry(NamedTuple):
    seq: int
    payload: bytes
    addr: Address | None
    sock: int
    meta: Meta


class PortablePacer:
    """``_native.Pacer`` with the socket module and a Python thread."""

    def __init__(self, sock: socket.socket | None, entries: int = 4096, byte_size: int = 0):
        self._socks: list[socket.socket | None] = [sock.dup() if sock is not None else None]
        self._cap = entries
        self._bcap = max(byte_size or entries * 2048, 4 * _LARGEST)
        self.gso, self.gso_max_segments, self.ecn_cmsg, self.dscp, self.want_room = 0, 64, 1, 0, 0
        self.slack_ns = 0  # a release sends every entry due within half of this of it
        self.next_sequence = 0
        self._c = dict.fromkeys(COUNTER_NAMES, 0)
        self._closed = False
        self._make_state()

    def _make_state(self) -> None:
        """Locks, eventfds, an empty queue and no thread (new, or a fork()ed child)."""
        self._cv = threading.Condition()
        self._q: collections.deque[_Entry] = collections.deque()
        self._bytes = 0
        self._sending = False
        self._closing = False
        self._errors: list[tuple[int, int, Address | None]] = []
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.note_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    # ---- the Pacer contract ------------------------------------------------

    @property
    def running(self) -> int:
        return int(self._thread is not None and self._thread.is_alive())

    @property
    def pending(self) -> int:
        return len(self._q)

    def counters(self) -> dict[str, int]:
        return dict(self._c)

    def count(self, name: str, n: int) -> None:
        if name not in self._c:
            raise KeyError(f"no counter named {name}")
        self._c[name] += n

    def reset_counters(self) -> None:
        self._c = dict.fromkeys(COUNTER_NAMES, 0)

    def set_socket(self, index: int, fd: int) -> None:
        self._enter()
        sock = socket.socket(fileno=os.dup(fd)) if fd >= 0 else None
        with self._cv:
            while len(self._socks) <= index:
                self._socks.append(None)
            old, self._socks[index] = self._socks[index], sock
        if old is not None:
            old.close()

    def queue(self, batch: PacketBatch, start: int = 0, count: int | None = None, *,
              by_socket: bool = False) -> int:
        from ._portable import _send_range

        if not isinstance(batch, _native.PacketBatch):
            raise TypeError(f"queue() argument 1 must be burstio.PacketBatch, not {type(batch).__name__}")
        start, end = _send_range(len(batch), start, count)
        self._enter()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="burstio-pacer", daemon=True)
            self._thread.start()
        j = start
        while j < end:
            j += self._put(batch, j, end, by_socket)
            if j == end or self._nonblocking():
                break
            self._wait_room(len(batch[j]))
        if j == start < end:
            raise BlockingIOError(errno.EAGAIN, "the pacer's queue is full; nothing was queued")
        return j - start

    def flush(self, timeout: float | None = None) -> bool:
        self._enter()
        with self._cv:
            done = self._cv.wait_for(lambda: self._closing or not (self._q or self._sending), timeout)
            if self._closing:
                raise OSError(errno.EBADF, "the pacer was closed while waiting")
        return bool(done)

    def take_errors(self) -> list[tuple[int, int, Address | None]]:
        with self._cv:
            errors, self._errors = self._errors, []
        return errors

    def close(self) -> list[tuple[int, Address | None, int]]:
        if self._closed:
            return []
        self._closed = True
        if os.getpid() != self._pid:
            self._make_state()  # a child: the queue is the parent's
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        os.eventfd_write(self._wake, 1)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        unsent = [(e.seq, e.addr, len(e.payload)) for e in self._q]
        self._c["paced_unsent"] += len(unsent)
        for s in self._socks:
            if s is not None:
                s.close()
        os.close(self.note_fd)
        os.close(self._wake)
        return unsent

    # ---- queueing ----------------------------------------------------------

    def _enter(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if os.getpid() != self._pid:  # a fork()ed child: no thread; the parent sends its queue
            self._make_state()

    def _nonblocking(self) -> bool:
        """The socket's O_NONBLOCK (shared by every descriptor of it), as the C pacer reads it."""
        sock = self._socks[0]
        return sock is None or bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)

    def _snapshot(self, batch: PacketBatch, j: int, by_socket: bool) -> _Entry:
        batch._check_entries(j, j + 1)
        payload = bytes(batch[j])
        meta = _ancillary.entry_meta(batch, j)
        sock = batch.sockets[j] if by_socket else 0
        why = ("it is larger than any UDP datagram (65535 bytes)" if len(payload) > _LARGEST
               else "its ECN codepoint (batch.ecn) is above 3" if meta.ecn > 3
               else "its transmit time (batch.txtimes) is negative" if meta.txtime < 0
               else "its socket (batch.sockets) is not one of this pacer's"
               if not 0 <= sock < len(self._socks) or self._socks[sock] is None else None)
        if why:
            raise ValueError(f"datagram {j}: {why}")
        return _Entry(0, payload, batch.addr(j), sock, meta)

    def _put(self, batch: PacketBatch, j: int, end: int, by_socket: bool) -> int:
        now, k = time.monotonic_ns(), 0
        while j + k < end:
            e = self._snapshot(batch, j + k, by_socket)
            with self._cv:
                if len(self._q) >= self._cap or self._bytes + len(e.payload) > self._bcap:
                    break
                self._q.append(e._replace(seq=self.next_sequence))
                self._bytes += len(e.payload)
                self.next_sequence += 1
                self._cv.notify_all()
            self._c["paced_queued"] += 1
            self._c["paced_late"] += bool(e.meta.txtime and e.meta.txtime < now)
            k += 1
        return k

    def _wait_room(self, need: int) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._closing or (len(self._q) < self._cap
                                                        and self._bytes + need <= self._bcap))
            if self._closing:
                raise OSError(errno.EBADF, "the pacer was closed while waiting")

    # ---- the sender thread -------------------------------------------------

    def _span(self) -> int:
        """How much of the schedule the release that takes the head spans, as
        the C pacer: half the slack in a dense flow (``_DENSE`` entries from
        the head on due within half the slack of it), else the slack."""
        slack = self.slack_ns
        if slack <= 0 or len(self._q) < _DENSE:
            return slack
        return slack // 2 if self._q[_DENSE - 1].meta.txtime - self._q[0].meta.txtime <= slack // 2 else slack

    def _release_time(self, span: int, last_until: int, now: int) -> int:
        """When the release that takes the head goes, as the C pacer: now when
        the head is already due; at the head's time when it starts a flow (due
        more than the slack after the last release's reach, or none yet);
        else when the last entry due within the span of the head is half the
        span away, not before the head's time."""
        t = t_last = self._q[0].meta.txtime
        if span <= 0 or t <= now or last_until < 0 or t - last_until > self.slack_ns:
            return t
        for e in itertools.islice(self._q, 1, _ROUND):
            u = e.meta.txtime
            if u - t > span:
                break
            t_last = max(t_last, u)
        return max(t, t_last - span // 2)

    def _run(self) -> None:
        until, more, span = -1, False, 0  # more: the release under way has entries left for another round
        release_at = None  # the head's release time, once known (entries queued meanwhile never put it later)
        with self._cv:
            while not self._closing:
                if not more:
                    if not self._q:
                        release_at = None
                        self._cv.wait()
                        continue
                    now = time.monotonic_ns()
                    this_span = self._span()
                    # a head due at the first look goes now
                    t = self._release_time(this_span, until, now if release_at is None else -1)
                    if release_at is None or t < release_at:  # a time waited for stands, with its span
                        release_at, span = t, this_span
                    if release_at > now:
                        self._cv.wait((release_at - now) / 1e9)
                        continue
                    release_at = None
                    until = now + span // 2
                    self._c["paced_releases"] += 1
                due: list[_Entry] = []
                while self._q and len(due) < _ROUND and self._q[0].meta.txtime <= until:
                    due.append(self._q.popleft())
                more = bool(self._q) and self._q[0].meta.txtime <= until
                self._sending = True
                self._cv.release()
                try:
                    done = self._send(due)
                finally:
                    self._cv.acquire()
                self._q.extendleft(reversed(due[done:]))  # close() came: these stay unsent
                self._bytes -= sum(len(e.payload) for e in due[:done])
                self._sending = False
                self._cv.notify_all()
                if self.want_room:
                    os.eventfd_write(self.note_fd, 1)
            self._sending = False

    def _runs(self, due: list[_Entry]) -> list[tuple[int, int]]:
        out, j = [], 0
        while j < len(due):
            e, run = due[j], 1
            seg = total = len(e.payload)
            if self.gso and seg:
                while j + run < len(due) and run < self.gso_max_segments:
                    f = due[j + run]
                    n = len(f.payload)
                    if (not n or n > seg or total + n > _native.MAX_UDP_PAYLOAD or f.sock != e.sock
                            or f.addr != e.addr or (f.meta.local, f.meta.ifindex, f.meta.ecn)
                            != (e.meta.local, e.meta.ifindex, e.meta.ecn)):  # times may differ
                        break
                    total += n
                    run += 1
                    if n < seg:
                        break
            out.append((j, run))
            j += run
        return out

    def _send(self, due: list[_Entry]) -> int:
        """Send the due entries; how many are done (fewer: close() came)."""
        for j, run in self._runs(due):
            e = due[j]
            sock = self._socks[e.sock]
            payloads = [d.payload for d in due[j:j + run]]
            ecn = self.ecn_cmsg
            self._c["tx_ecn_unmarked"] += len(payloads) if e.meta.ecn and not ecn else 0
            err = self._send_msg(sock, payloads, e, ecn)
            if err == errno.EBADF and self._closing:
                return j
            if err and self._refused(sock, due[j:j + run], err, ecn) < 0:
                return j
            if not err:
                self._account(payloads)
        return len(due)

    def _account(self, payloads: list[bytes]) -> None:
        self._c["tx_datagrams"] += len(payloads)
        self._c["tx_bytes"] += sum(map(len, payloads))
        if len(payloads) > 1:
            self._c["tx_gso_messages"] += 1
            self._c["tx_gso_datagrams"] += len(payloads)

    def _send_msg(self, sock: socket.socket | None, payloads: list[bytes], e: _Entry, ecn: int) -> int:
        """One message; 0 or the errno (a full socket is waited for; EBADF when closing)."""
        anc = _ancillary.build(len(payloads[0]) if len(payloads) > 1 else 0, e.meta, ecn_mode=ecn, dscp=self.dscp)
        while True:
            self._c["tx_syscalls"] += 1
            try:
                if sock is None:
                    raise OSError(errno.EBADF, "no socket")
                if e.addr is None:
                    sock.sendmsg(payloads, anc, socket.MSG_DONTWAIT)
                else:
                    sock.sendmsg(payloads, anc, socket.MSG_DONTWAIT, _kernel_addr(sock, e.addr))
                return 0
            except BlockingIOError:
                self._c["paced_waits"] += 1
                select.select([self._wake], [sock] if sock is not None else [], [])
                if self._closing:
                    return errno.EBADF
            except OSError as exc:
                return cast(int, exc.errno)

    def _refused(self, sock: socket.socket | None, run: list[_Entry], err: int, msg_ecn: int) -> int:
        """As the C pacer: EIO/EINVAL may be GSO or the codepoint refused;
        send one by one, then without the codepoint. -1 when closing."""
        for e in run:
            ecn = self.ecn_cmsg
            retry = err in (errno.EIO, errno.EINVAL) or (err == errno.EMSGSIZE and len(run) > 1)
            e2 = self._send_msg(sock, [e.payload], e, ecn) if retry else err
            if e2 == errno.EINVAL and ecn and e.meta.ecn:  # the codepoint refused?
                ecn = 0
                e2 = self._send_msg(sock, [e.payload], e, 0)
                if not e2 and self.ecn_cmsg:
                    self.ecn_cmsg = 0
                    self._c["ecn_downgrades"] += 1
            if e2 == errno.EBADF and self._closing:
                return -1
            if not e2:
                self._account([e.payload])
                self._c["tx_ecn_unmarked"] += bool(e.meta.ecn and not ecn and msg_ecn)
                if (err != errno.EMSGSIZE and len(run) > 1 and (ecn or not e.meta.ecn or not msg_ecn)
                        and self.gso):
                    self.gso = 0  # it went alone as the message would have: GSO was refused
                    self._c["gso_downgrades"] += 1
                continue
            self._c["tx_errors"] += 1
            with self._cv:
                if len(self._errors) < _MAX_ERRORS:
                    self._errors.append((e.seq, e2, e.addr))
                else:
                    self._c["paced_errors_dropped"] += 1
            os.eventfd_write(self.note_fd, 1)
        return 0


def _kernel_addr(sock: socket.socket, addr: Address) -> Address:
    """IPv4 on an IPv6 socket goes as ::ffff:a.b.c.d (the C backends pass a sockaddr_in)."""
    if sock.family == socket.AF_INET6 and ":" not in addr[0]:
        return ("::ffff:" + addr[0], addr[1], 0, 0)
    return addr
