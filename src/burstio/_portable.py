"""The portable backend: the same contract as ``_native.UdpIo``, written with
nothing but the socket module (recvmsg_into / sendmsg, one datagram each).

It is the fallback of last resort and, above all, the tests' oracle: the C
backends must behave exactly like this independent implementation.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from . import _ancillary, _native
from ._ancillary import Meta
from ._native import PacketBatch
from ._types import Address, OnError, RecoverPolicy

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

MAX_UDP_PAYLOAD = _native.MAX_UDP_PAYLOAD
_ANC_SIZE = 128
_ANC_META_SIZE = 256  # the C backends' wide control buffer (csrc/batch/batch.h)
_COUNTERS = tuple(_native.UdpIo(-1).counters())
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)
#: what socket.recvmsg_into returns: (nbytes, ancillary data, msg_flags, address)
_Message: TypeAlias = tuple[int, list[tuple[int, int, bytes]], int, Any]


class _ClosedWhileWaitingError(OSError):
    """close() ended a send's wait for room (its ``sent``: how far it got)."""

    sent = 0


def _timeout_ns(timeout: object) -> int:
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if not timeout >= 0:  # NaN too
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    return -1 if timeout > 4e9 else int(timeout * 1e9)


def _send_range(n: int, start: object, count: object) -> tuple[int, int]:
    if isinstance(start, bool) or not isinstance(start, int):
        raise TypeError(f"start must be int, got {type(start).__name__}")
    if not 0 <= start <= n:
        raise ValueError(f"start {start} is outside the batch's {n} datagrams")
    if count is None:
        return start, n
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be int or None, got {type(count).__name__}")
    if not 0 <= count <= n - start:
        raise ValueError(f"count {count} from start {start} runs past the batch's {n} datagrams")
    return start, start + count


def _strip_scope(addr: Address) -> Address:
    if len(addr) == 4 and "%" in addr[0]:
        return (addr[0].split("%", 1)[0], addr[1], addr[2], addr[3])
    return addr


class PortableIo:
    """Pure-Python twin of ``_native.UdpIo`` (see that type for the contract)."""

    def __init__(self, sock: socket.socket):
        # our own descriptor, as the C backends keep: closing the caller's
        # socket, or its number being reused, cannot reach it
        self.sock = sock.dup()
        self.fd = self.sock.fileno()
        # close() wakes a waiting receive through this eventfd (see _wait)
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._pid = os.getpid()
        self._closing = False
        self._users = 0
        self.recv_mmsg = 0
        self.send_mmsg = 0
        self.gso = 0
        self.gso_max_segments = 64
        self.gro = 0
        self.gro_max_segments = 64
        self.family = sock.family
        self.meta = 0  # pktinfo or ECN on: receives fill the batch's metadata
        self.ecn_cmsg = 1  # send codepoints (0: off or downgraded; 2: tests' refused TOS)
        self.dscp = 0
        self.txtime = 0  # SO_TXTIME on: transmit times go as SCM_TXTIME
        self.txtime_offset = 0
        self.socket_index = 0
        self.recover: RecoverPolicy | None = None  # policy for a send that stops early (BurstSocket sets it)
        self.single_after = 0  # the C backends' receive window; no syscall to save here
        self.spin_us = 0  # retry the receive this long before sleeping (busy poll)
        self._block_pid = 0  # block_rx: set in this process (0: off)
        self._blocked = 0  # receives inside a blocking recvmsg now (close() shuts them down)
        self._wait_fd = -1
        self._waiter: select.epoll | None = None
        self._pending = 0
        self._c = dict.fromkeys(_COUNTERS, 0)

    @property
    def wait_fd(self) -> int:
        """An epoll instance holding the socket to wait in (-1: select)."""
        return self._wait_fd

    def set_wait_fd(self, fd: int) -> None:
        self._enter()
        try:
            if self._waiter is not None:
                self._waiter.close()
            # a duplicate descriptor is the same epoll instance, busy-poll
            # parameters included; it holds the wake eventfd too
            self._waiter = select.epoll.fromfd(os.dup(fd)) if fd >= 0 else None
            if self._waiter is not None:
                self._waiter.register(self._wake, select.EPOLLIN)
            self._wait_fd = fd
        finally:
            self._leave()

    @property
    def block_rx(self) -> bool:
        """True: a receive without a deadline blocks in recvmsg itself (the
        kernel busy polls by SO_BUSY_POLL if set, then sleeps) unless a
        busy-polling epoll instance is to be waited in; off in a fork()ed child."""
        return self._block_pid == os.getpid()

    @block_rx.setter
    def block_rx(self, on: bool) -> None:
        self._block_pid = os.getpid() if on else 0

    def _wait(self, left: float | None) -> bool:
        if self._waiter is not None:
            ready = bool(self._waiter.poll(-1 if left is None else left, 1))
        else:
            ready = bool(select.select([self.fd, self._wake], [], [], left)[0])
        if self._closing:
            raise OSError(errno.EBADF, "the BurstSocket was closed while waiting")
        return ready

    # ---- lifetime: close() wakes every waiter --------------------------
    def _enter(self) -> None:
        if self.fd < 0 or self._closing:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if os.getpid() != self._pid:  # a child after fork(): the parent's close must not wake us
            os.close(self._wake)
            self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._pid = os.getpid()
            if self._waiter is not None:  # the parent's epoll instance: poll the socket instead
                self._waiter.close()
                self._waiter, self._wait_fd = None, -1
        self._users += 1

    def _leave(self) -> None:
        self._users -= 1
        if self._closing and self._users == 0:
            self._release()

    def _release(self) -> None:
        if self.fd < 0:
            return
        self.fd = -1
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        self.sock.close()
        os.close(self._wake)

    def close(self) -> None:
        """Close our descriptor; a receive waiting in another thread wakes at
        once with OSError(EBADF), and the descriptor closes when it has left."""
        if self._closing:
            return
        # this call counts as a user until it has woken the others: a waiter that sees
        # _closing and leaves (a spinning receive checks it) cannot release the eventfd
        # before the write below
        self._users += 1
        self._closing = True
        try:
            if os.getpid() == self._pid:  # (a child that never used it holds the parent's eventfd)
                os.eventfd_write(self._wake, 1)
            if self._blocked and self.block_rx:  # a receive blocked in recvmsg: end it
                with contextlib.suppress(OSError):  # ENOTCONN when unconnected: shut down all the same
                    self.sock.shutdown(socket.SHUT_RD)
        finally:
            self._leave()

    # ---- counters ------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return dict(self._c)

    def count(self, name: str, n: int) -> None:
        if name not in self._c:
            raise KeyError(f"no counter named {name}")
        self._c[name] += n

    def reset_counters(self) -> None:
        self._c = dict.fromkeys(_COUNTERS, 0)

    # ---- receive -------------------------------------------------------
    def recv_batch(self, batch: PacketBatch, timeout: float | None = None) -> int:
        if not isinstance(batch, _native.PacketBatch):
            raise TypeError(f"recv_batch() argument 1 must be burstio.PacketBatch, not {type(batch).__name__}")
        timeout_ns = _timeout_ns(timeout)
        if self.fd < 0 or self._closing:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if self.gro and batch.slot_size < _native.GRO_SLOT_MIN:
            raise ValueError(
                "UDP GRO is on and a coalesced receive can reach 64 KiB: the batch needs "
                f"slot_size >= {_native.GRO_SLOT_MIN}, got {batch.slot_size} "
                f"(e.g. PacketBatch(1024, {_native.GRO_SLOT_MIN}, slots=16))")
        if self._pending:
            e, self._pending = self._pending, 0
            raise OSError(e, f"{errno.errorcode.get(e, e)}")
        vlen = batch.slots
        if self.gro:
            vlen = max(1, min(vlen, batch.capacity // self.gro_max_segments))
        if self.meta:
            batch.ecn  # noqa: B018 - the metadata arrays, made on first use (before the busy mark)
        batch._set_busy(True)  # first: nothing else may touch the batch now
        try:
            self._enter()
            try:
                batch._set_count(0)
                msgs = self._recv_messages(batch, min(vlen, 1024), timeout_ns)
                n = self._store(batch, msgs)
                batch._set_count(n, len(msgs))
            finally:
                self._leave()
        finally:
            batch._set_busy(False)
        if msgs:
            self._c["rx_batches"] += 1
        return n

    def _recv_one(self, batch: PacketBatch, k: int, flags: int) -> _Message:
        self._c["rx_syscalls"] += 1
        slot = batch.arena[k * batch.slot_size:(k + 1) * batch.slot_size]
        anc = _ANC_META_SIZE if self.meta else _ANC_SIZE
        return self.sock.recvmsg_into([slot], anc, flags | socket.MSG_TRUNC)

    def _recv_blocking(self, batch: PacketBatch) -> _Message | None:
        """One receive that blocks in recvmsg itself (as the C backends' with
        block_rx): the message, or None where the socket cannot block
        (O_NONBLOCK set on the socket elsewhere). Python's recvmsg runs signal handlers and
        retries (PEP 475); close() wakes it by shutting the receive side down."""
        self._blocked += 1
        try:
            if self._closing:
                raise OSError(errno.EBADF, "the BurstSocket was closed while waiting")
            msg = self._recv_one(batch, 0, 0)
        except BlockingIOError:
            return None
        finally:
            self._blocked -= 1
        if self._closing:  # (the empty message a shut-down socket gives, or one that raced close)
            raise OSError(errno.EBADF, "the BurstSocket was closed while waiting")
        return msg

    def _recv_messages(self, batch: PacketBatch, vlen: int, timeout_ns: int) -> list[_Message]:
        deadline = None if timeout_ns < 0 else time.monotonic() + timeout_ns / 1e9
        spin_end = None
        first = None
        # without a deadline, block in the receive itself (busy polling through the socket:
        # once the spin below has found nothing), as the C backends do
        block = deadline is None and self.block_rx and self._waiter is None and self.sock.gettimeout() is None
        if block and self.spin_us <= 0:
            first, block = self._recv_blocking(batch), False
        while first is None:
            try:
                first = self._recv_one(batch, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                now = time.monotonic()
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    return []
                if self.spin_us > 0 and spin_end is None:
                    spin_end = now + self.spin_us / 1e6
                if spin_end is not None and now < spin_end:
                    if self._closing:  # close() in another thread ends a spin as it ends a wait
                        raise OSError(errno.EBADF, "the BurstSocket was closed while waiting") from None
                    continue
                if block:
                    block = False
                    first = self._recv_blocking(batch)
                    if first is not None:
                        break
                self._c["rx_syscalls"] += 1
                if not self._wait(left):
                    return []
        return self._recv_more(batch, vlen, first)

    def _recv_more(self, batch: PacketBatch, vlen: int, first: _Message) -> list[_Message]:
        """``first`` and what else is queued, up to ``vlen`` messages (MSG_WAITFORONE)."""
        msgs = [first]
        for k in range(1, vlen):
            try:
                msgs.append(self._recv_one(batch, k, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break
            except OSError as e:  # report on the next call, after these
                self._pending = cast(int, e.errno)  # a failed syscall's OSError has an errno
                break
        return msgs

    def _store(self, batch: PacketBatch, msgs: list[_Message]) -> int:
        """Split and record the received messages; returns the entry count."""
        total = 0
        slot = batch.slot_size
        has_meta = batch.has_metadata
        for k, (nbytes, anc, msg_flags, addr) in enumerate(msgs):
            seg, ts, meta = _ancillary.parse(anc)
            stored = min(nbytes, slot)
            trunc = bool(msg_flags & socket.MSG_TRUNC)
            want = 1 if seg == 0 or stored <= seg else -(-stored // seg)
            room = batch.capacity - total - (len(msgs) - k - 1)
            cnt = min(want, room)
            peer = _strip_scope(addr) if addr else None
            datagrams = 0
            for s in range(cnt):
                off = s * seg if want > 1 else 0
                length = stored - off
                flags = size = 0
                if want > 1:
                    flags, size = _native.FLAG_GRO, seg
                    if s == cnt - 1 and cnt < want:
                        flags |= _native.FLAG_COALESCED
                    else:
                        length = min(length, seg)
                if trunc and s == cnt - 1:
                    flags |= _native.FLAG_TRUNCATED
                batch._store(total + s, k * slot + off, length, flags, size, ts, peer)
                if has_meta:
                    batch._store_meta(total + s, meta.local, meta.ifindex, meta.ecn)
                datagrams += -(-length // seg) if flags & _native.FLAG_COALESCED else 1
            total += cnt
            self._c["rx_datagrams"] += datagrams
            self._c["rx_bytes"] += stored
            if want > 1:
                self._c["rx_gro_messages"] += 1
                self._c["rx_gro_datagrams"] += datagrams
            if trunc:
                lost = (-(-nbytes // seg) - -(-stored // seg)) if seg else 0
                self._c["rx_truncated"] += 1 + lost
        return total

    # ---- send ----------------------------------------------------------
    def _runs(self, batch: PacketBatch, start: int, end: int, metas: list[Meta],
              gso: bool) -> Iterator[tuple[int, int]]:
        """Yield (first entry, run length): what one message carries (one
        destination, one size but the last, one metadata)."""
        lengths = batch.lengths
        j = start
        while j < end:
            run, seg = 1, lengths[j]
            if gso and seg:
                total = seg
                while j + run < end and run < self.gso_max_segments:
                    n = lengths[j + run]
                    if (not n or n > seg or total + n > MAX_UDP_PAYLOAD
                            or batch.addr(j) != batch.addr(j + run) or metas[j - start] != metas[j + run - start]):
                        break
                    total += n
                    run += 1
                    if n < seg:
                        break
            yield j, run
            j += run

    def _kernel_addr(self, addr: Address | None) -> Address | None:
        """The address as the kernel would take it from a sockaddr: IPv4 on
        an IPv6 socket goes out over IPv4 (dual stack); IPv6 on an IPv4
        socket is EAFNOSUPPORT."""
        if addr is None:
            return None
        if self.sock.family == socket.AF_INET and len(addr) == 4:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        if self.sock.family == socket.AF_INET6 and ":" not in addr[0]:
            return ("::ffff:" + addr[0], addr[1], 0, 0)
        return addr

    def _send_msg(self, buffers: list[memoryview], seg: int, addr: Address | None,
                  meta: Meta = _ancillary.NO_META, ecn_mode: int = 0) -> None:
        anc = _ancillary.build(seg if len(buffers) > 1 else 0, meta, ecn_mode=ecn_mode, dscp=self.dscp,
                               txtime=bool(self.txtime), txtime_offset=self.txtime_offset)
        self._sendmsg(buffers, anc, self._kernel_addr(addr))

    def _sendmsg(self, buffers: list[memoryview], anc: list[tuple[int, int, bytes]], addr: Address | None) -> None:
        """One sendmsg, never blocking in the kernel: a full blocking socket
        waits in select() on the socket and the wake eventfd, so that close()
        ends the wait (_ClosedWhileWaitingError), as the C backends do."""
        deadline: float | None = None
        while True:
            self._c["tx_syscalls"] += 1
            try:
                if addr is None:
                    self.sock.sendmsg(buffers, anc, socket.MSG_DONTWAIT)
                else:
                    self.sock.sendmsg(buffers, anc, socket.MSG_DONTWAIT, addr)
                return
            except BlockingIOError:
                if not os.get_blocking(self.fd):
                    raise
            if deadline is None:
                tv = struct.unpack("ll", self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16))
                deadline = time.monotonic() + tv[0] + tv[1] / 1e6 if tv != (0, 0) else math.inf
            left = deadline - time.monotonic()
            if left <= 0:
                raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            self._c["tx_syscalls"] += 1
            select.select([self._wake], [self.fd], [], None if left == math.inf else left)
            if self._closing:
                raise _ClosedWhileWaitingError(errno.EBADF, "the BurstSocket was closed while waiting")

    def send_batch(self, batch: PacketBatch, start: int = 0, count: int | None = None, *,
                   on_error: OnError = "raise") -> int:
        """Send entries [start, start+count); when the send stops early and a
        recover policy is set, return what it returns."""
        self._c["tx_batches"] += 1
        (processed, err, index, gso), end = self._send_checked("send_batch", batch, start, count, on_error,
                                                               True, True)
        if err and self.recover is not None:
            return self.recover(batch, start, start + processed, end, int(on_error == "skip"), err, index, gso)
        return processed

    def send_raw(self, batch: PacketBatch, start: int = 0, count: int | None = None, *,
                 on_error: OnError = "raise", gso: bool = True, ecn: bool = True) -> tuple[int, int, int, int]:
        """send_batch without the recover policy: (processed, errno, index,
        gso); gso=False / ecn=False: without GSO / codepoints for this call."""
        return self._send_checked("send_raw", batch, start, count, on_error, gso, ecn)[0]

    def _send_checked(self, fname: str, batch: PacketBatch, start: int, count: int | None,
                      on_error: OnError, gso: bool, ecn: bool) -> tuple[tuple[int, int, int, int], int]:
        """Check the arguments and send; (processed, errno, index, gso) and the range's end."""
        if not isinstance(batch, _native.PacketBatch):
            raise TypeError(f"{fname}() argument 1 must be burstio.PacketBatch, not {type(batch).__name__}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        skip = on_error == "skip"
        start, end = _send_range(len(batch), start, count)
        if self.fd < 0:
            raise OSError(errno.EBADF, "Bad file descriptor")
        metas = []
        for j in range(start, end):  # each entry read once and checked, as C does
            batch._check_entries(j, j + 1)
            metas.append(meta := _ancillary.entry_meta(batch, j))
            _ancillary.check_meta(j, meta, batch.addr(j), self.family, bool(self.txtime))
        for j in range(start, end):
            batch._mark_error(j, 0)
        batch._set_busy(True)
        self._enter()
        try:
            return self._send_runs(batch, start, end, skip, metas, bool(self.gso and gso),
                                   self.ecn_cmsg if ecn else 0), end
        finally:
            self._leave()
            batch._set_busy(False)

    def _send_runs(self, batch: PacketBatch, start: int, end: int, skip_errors: bool,
                   metas: list[Meta], gso: bool, ecn_mode: int) -> tuple[int, int, int, int]:
        for j, run in self._runs(batch, start, end, metas, gso):
            views = [batch[j + r] for r in range(run)]
            meta = metas[j - start]
            try:
                self._send_msg(views, len(views[0]), batch.addr(j), meta, ecn_mode)
            except _ClosedWhileWaitingError as e:
                e.sent = j - start
                raise
            except OSError as e:
                err = cast(int, e.errno)  # a failed syscall's OSError has an errno
                ecn_refused = err == errno.EINVAL and meta.ecn and ecn_mode
                if (err in _AGAIN or (run > 1 and err in (errno.EIO, errno.EINVAL, errno.EMSGSIZE))
                        or ecn_refused or not skip_errors):
                    return j - start, err, j, int(run > 1)
                for r in range(run):
                    batch._mark_error(j + r, err)
                self._c["tx_errors"] += run
                continue
            self._c["tx_datagrams"] += run
            self._c["tx_bytes"] += sum(len(v) for v in views)
            self._c["tx_late"] += run if meta.txtime and meta.txtime < time.monotonic_ns() else 0
            self._c["tx_ecn_unmarked"] += run if meta.ecn and not ecn_mode else 0
            if run > 1:
                self._c["tx_gso_messages"] += 1
                self._c["tx_gso_datagrams"] += run
        return end - start, 0, -1, 0

    def send_segments(self, buffer: ReadableBuffer, segment_size: int, addr: Address | None = None,
                      first: int = 0, gso: bool = True) -> tuple[int, int, int]:
        if not 1 <= segment_size <= MAX_UDP_PAYLOAD:
            raise ValueError(f"segment_size must be between 1 and {MAX_UDP_PAYLOAD}, got {segment_size}")
        try:
            view = memoryview(buffer)
        except TypeError:
            raise TypeError(f"buffer must be a bytes-like object, got {type(buffer).__name__}") from None
        if not view.c_contiguous:
            raise ValueError("buffer must be C-contiguous")
        view = view.cast("B")
        if addr is not None:
            scratch = _native.PacketBatch(1, 1)  # reuse the C parser: same errors as the C path
            scratch.append(b"", addr)
        if self.fd < 0:
            raise OSError(errno.EBADF, "Bad file descriptor")
        self._enter()
        try:
            return self._send_segments(view, segment_size, addr, first, bool(self.gso and gso))
        finally:
            self._leave()

    def _send_segments(self, view: memoryview, segment_size: int, addr: Address | None, first: int,
                       gso: bool) -> tuple[int, int, int]:
        per_msg = 1
        if gso:
            per_msg = max(1, min(self.gso_max_segments, MAX_UDP_PAYLOAD // segment_size))
        sent = first
        self._c["tx_batches"] += 1
        while sent * segment_size < len(view):
            chunk = view[sent * segment_size:(sent + per_msg) * segment_size]
            n = -(-len(chunk) // segment_size)
            try:
                if n == 1:
                    self._send_msg([chunk], segment_size, addr)
                else:
                    self._send_gso(chunk, segment_size, addr)
            except _ClosedWhileWaitingError as e:
                e.sent = sent - first
                raise
            except OSError as e:
                err = cast(int, e.errno)  # a failed syscall's OSError has an errno
                return sent - first, err, int(n > 1)
            self._c["tx_datagrams"] += n
            self._c["tx_bytes"] += len(chunk)
            if n > 1:
                self._c["tx_gso_messages"] += 1
                self._c["tx_gso_datagrams"] += n
            sent += n
        return sent - first, 0, 0

    def _send_gso(self, chunk: memoryview, seg: int, addr: Address | None) -> None:
        anc = _ancillary.build(seg, _ancillary.NO_META)
        self._sendmsg([chunk], anc, self._kernel_addr(addr))
