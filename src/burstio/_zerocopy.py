"""Zero-copy send: buffers the kernel reads in place, returned only when it says so.

Where a send goes: ``acquire()`` takes a buffer of the sender's
``ZeroCopyPool`` (OWNED: write it through a memoryview, numpy or
``buf.write``); ``send(buf, n)`` -> ``_native.ZeroCopyIo.send`` (C) hands it to
the kernel with io_uring SEND_ZC (the pool registered as fixed buffers),
``sendmsg(MSG_ZEROCOPY)``, or a plain ``sendmsg`` copy, and the buffer is IN
FLIGHT: every access to it raises BufferError. The kernel's notification
(an io_uring notification CQE, or a range on the socket's error queue) puts
it back in the pool; the Python object is then spent. So a buffer can be
neither written nor reused while the kernel may still read it.

This module is policy: which backend (from the capability probe), when
zero copy is worth it (``mode``, ``min_size``), switching it off on a socket
where the kernel keeps copying anyway (loopback, local delivery), asyncio
waiting, and wording. The C side (csrc/zerocopy/) does the syscalls and
the buffer states.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import socket
import weakref
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from . import _native
from ._caps import Capabilities, capabilities
from ._checks import UDP_OR_TCP, check_int, check_socket
from ._kernel import SO_ZEROCOPY, SOL_UDP, UDP_SEGMENT
from ._native import ZeroCopyBuffer, ZeroCopyPool
from ._types import Address

if TYPE_CHECKING:
    from ._udp import BurstSocket

__all__ = ["ZeroCopySender", "ZeroCopyPool", "ZeroCopyBuffer", "Completion", "MODES", "BACKENDS"]

log = logging.getLogger("burstio")

MODES = ("adaptive", "always", "never")
BACKENDS = ("auto", "uring", "msg_zerocopy", "copy")
#: adaptive mode: sends shorter than this go by plain copy. Below ~16 KiB
#: pinning pages and waiting for a notification costs more than the copy.
MIN_SIZE = 16384
#: adaptive mode: after this many zero-copy sends in a row that the kernel
#: copied anyway, the sender switches to plain copy.
COPIED_STREAK = 8
#: how long close() waits by default for buffers still in flight
CLOSE_TIMEOUT = 1.0

_NATIVE = {"copy": 0, "msg_zerocopy": 1, "uring": 2}
_DESCRIBE = {"copy": "plain sendmsg copies", "msg_zerocopy": "sendmsg(MSG_ZEROCOPY)",
             "uring": "io_uring SEND_ZC"}

# MSG_ZEROCOPY numbers the zero-copy sends of each socket (ee_info..ee_data
# in the notifications), and there is no way to read the counter. A sender
# continues from where the previous sender on the same socket stopped, so
# remember it per socket (keyed by its inode), for the most recent sockets.
_MSG_IDS: collections.OrderedDict[tuple[int, int], int] = collections.OrderedDict()
_MSG_IDS_KEEP = 4096


class Completion(_native.ZeroCopyCompletion):
    """The outcome of one send: ``done()``, ``wait(timeout=None)``, ``await``.

    ``wait()`` returns the bytes sent once the kernel is done with the
    buffer (it is then back in the pool), or raises ``OSError`` with the
    kernel's errno. ``result`` is the bytes sent (or ``-errno``), None until
    the kernel said; ``copied`` is True when the kernel reported that it
    copied the data after all; ``zerocopy`` whether zero copy was asked.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, int]:
        """Wait without blocking the event loop (readiness of the sender's
        completion descriptor wakes it; nothing spins)."""
        while not self.done():
            native = self.sender
            if native is None or native.waiters is None:
                break
            fut = native.waiters.future()
            try:
                yield from fut
            finally:
                native.waiters.discard(fut)
        return self.wait(0)


class _Waiters:
    """Futures of the coroutines awaiting completions of one sender, woken
    by one ``loop.add_reader`` on the sender's completion descriptor (one
    reader per descriptor is all asyncio allows)."""

    def __init__(self, fd: int, poll: Callable[[], int]):
        self.fd = fd
        self.poll = poll
        self.futures: list[asyncio.Future[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def future(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if self.futures and loop is not self.loop:
            raise RuntimeError("a ZeroCopySender's completions are awaited from one event loop at a time")
        fut = loop.create_future()
        if not self.futures:
            self.loop = loop
            loop.add_reader(self.fd, self._ready)
        self.futures.append(fut)
        return fut

    def discard(self, fut: asyncio.Future[None]) -> None:
        if fut in self.futures:
            self.futures.remove(fut)
        if not self.futures and self.loop is not None:
            self.loop.remove_reader(self.fd)
            self.loop = None

    def _ready(self) -> None:
        """The descriptor is readable: take the completions (which also
        consumes the readiness) and let every waiter look at its own."""
        futures, self.futures = self.futures, []
        if self.loop is not None:
            self.loop.remove_reader(self.fd)
            self.loop = None
        try:
            self.poll()
        except BaseException as e:  # noqa: BLE001 - handed to the waiters
            for f in futures:
                if not f.done():
                    f.set_exception(e)
            return
        for f in futures:
            if not f.done():
                f.set_result(None)


class ZeroCopySender:
    """Zero-copy sends on one UDP or TCP socket, from a pool of buffers.

    ``ZeroCopySender(sock, pool=None, *, mode="adaptive", backend="auto",
    min_size=16384, segment_size=None)``

    ``sock`` is a ``socket.socket`` (UDP or TCP, IPv4 or IPv6) or a
    ``BurstSocket``. The sender works on its own descriptor of the socket
    (a dup): closing one does not close the other, and the connection ends
    when both are closed. ``pool`` defaults to ``ZeroCopyPool()`` (64 x 64
    KiB); one open sender uses a pool at a time.

    ``backend``: "auto" picks io_uring SEND_ZC where the probe found it,
    else MSG_ZEROCOPY, else plain copies; "uring", "msg_zerocopy" and
    "copy" ask for one (OSError EOPNOTSUPP if unavailable).
    ``mode``: "adaptive" sends below ``min_size`` bytes by plain copy and
    switches zero copy off for good if the kernel copies
    ``COPIED_STREAK`` sends in a row (as it must for loopback and any
    local delivery); "always" zero-copies everything; "never" copies.
    ``segment_size`` (UDP) sets ``UDP_SEGMENT`` on the socket, so each send
    leaves as datagrams of that size (GSO): that is how a 64 KiB send
    becomes MTU-sized packets.

    Use from one thread at a time (a second thread calling in while one
    waits gets RuntimeError, but for close(), which wakes the waiting call);
    thread-per-client code gives each thread its own sender.
    """

    def __init__(self, sock: socket.socket | BurstSocket, pool: ZeroCopyPool | None = None, *, mode: str = "adaptive",
                 backend: str = "auto", min_size: int = MIN_SIZE, segment_size: int | None = None):
        sock = check_socket(sock, "ZeroCopySender", kinds=UDP_OR_TCP, burst_socket=True)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        check_int("min_size", min_size, 0, 1 << 30)
        if pool is None:
            pool = ZeroCopyPool()
        elif not isinstance(pool, ZeroCopyPool):
            raise TypeError(f"pool must be a burstio.ZeroCopyPool, got {type(pool).__name__}")
        caps = capabilities()
        stream = sock.type == socket.SOCK_STREAM
        if segment_size is not None:
            _set_segment_size(sock, stream, segment_size, caps)
        self._segment_size = segment_size
        self._mode = mode
        self._backend = _choose_backend(sock, backend, mode, caps)
        self._key = _socket_key(sock) if self._backend == "msg_zerocopy" else None
        first_id = _MSG_IDS.pop(self._key, 0) if self._key else 0
        io = _native.ZeroCopyIo(sock.fileno(), pool, _NATIVE[self._backend], Completion, first_id)
        self._io = io
        self._pool = pool
        io.zerocopy = int(mode != "never")
        io.min_size = {"adaptive": min_size, "always": 0, "never": 0}[mode]
        io.switch_after = COPIED_STREAK if mode == "adaptive" else 0
        io.policy = _policy_hook(weakref.ref(self))
        if io.completion_fd >= 0:
            io.waiters = _Waiters(io.completion_fd, io.poll)
        self._warned = False
        self._finalizer = weakref.finalize(self, _close_native, io, self._key, 0)
        # The hot paths are bound straight to C: no Python frame per call
        # (the methods below document them).
        self.acquire = io.acquire  # type: ignore[method-assign]  # the C method, no Python frame
        self.send = io.send  # type: ignore[method-assign]  # the C method, no Python frame
        self.send_and_wait = io.send_and_wait  # type: ignore[method-assign]  # the C method, no Python frame
        self.poll = io.poll  # type: ignore[method-assign]  # the C method, no Python frame

    # ---- the hot paths (each instance binds these names to C) -------------

    def acquire(self, timeout: float | None = None) -> ZeroCopyBuffer:
        """A free buffer of the pool, writable until sent.

        When none is free, processes completions and waits up to
        ``timeout`` seconds (None: forever) for the kernel to give one back;
        ``TimeoutError`` if none came. ``BufferError`` if every buffer is
        held by Python (acquired, not sent): waiting could not help.
        """
        return self._io.acquire(timeout)

    def send(self, buf: ZeroCopyBuffer, length: int | None = None, addr: Address | None = None) -> Completion:
        """Send the first ``length`` bytes of ``buf`` (None: all of it) to
        ``addr`` (UDP; None: the connected peer); return its Completion.

        ``buf`` is in flight from now on: every access raises BufferError
        until the kernel is done, when it returns to the pool by itself.
        Refused (BufferError) while a memoryview of ``buf`` is still open.
        Errors of the send itself (ECONNRESET, EMSGSIZE...) come from the
        Completion, like the result.
        """
        return self._io.send(buf, length, addr)

    def send_and_wait(self, buf: ZeroCopyBuffer, length: int | None = None, addr: Address | None = None,
                      timeout: float | None = None) -> int:
        """``send`` and wait until the kernel is done with the buffer; the
        bytes sent. The simple choice for thread-per-client code."""
        return self._io.send_and_wait(buf, length, addr, timeout)

    def poll(self) -> int:
        """Process the completions available now, without waiting; return
        how many buffers went back to the pool."""
        return self._io.poll()

    # ---- policy -------------------------------------------------------------

    def _kernel_copies(self, streak: int) -> None:
        """The kernel copied ``streak`` zero-copy sends in a row: zero copy
        only adds work on this socket, so send by plain copy from now on."""
        io = self._io
        io.zerocopy = 0
        io.count("zerocopy_disabled", 1)
        if not self._warned:
            self._warned = True
            log.warning("zero copy switched off on fd %d: the kernel copied the last %d zero-copy "
                        "sends (a local destination such as loopback, or a device without "
                        "scatter-gather); sending by plain copy from now on", io.fd, streak)

    # ---- state --------------------------------------------------------------

    @property
    def pool(self) -> ZeroCopyPool:
        """The ZeroCopyPool this sender's buffers come from (its own when
        none was given)."""
        return self._pool

    @property
    def backend(self) -> str:
        """'uring', 'msg_zerocopy' or 'copy'."""
        return self._backend

    @property
    def mode(self) -> str:
        """'adaptive', 'always' or 'never', as asked (``zerocopy`` says whether
        adaptive mode still sends by zero copy)."""
        return self._mode

    @property
    def zerocopy(self) -> bool:
        """Whether sends of at least ``min_size`` go by zero copy now."""
        return bool(self._io.zerocopy) and self._backend != "copy"

    @property
    def min_size(self) -> int:
        """Sends shorter than this many bytes go by plain copy in adaptive
        mode."""
        return self._io.min_size

    @property
    def in_flight(self) -> int:
        """Buffers sent whose notification has not come yet."""
        return self._io.inflight

    @property
    def closed(self) -> bool:
        """Whether close() has run (every call then raises)."""
        return self._io.fd < 0

    @property
    def counters(self) -> dict[str, int]:
        """Snapshot: sends, zerocopy_sends, copy_sends, bytes, errors,
        notifications, copied_notifications, syscalls, enobufs_copies,
        zerocopy_disabled (0/1), unmatched_notifications,
        other_errqueue_messages."""
        return self._io.counters()

    def reset_counters(self) -> None:
        """Set every counter to 0."""
        self._io.reset_counters()

    def describe(self) -> str:
        """One line saying how this sender sends."""
        io = self._io
        how = _DESCRIBE[self._backend]
        if self._backend == "uring":
            how += " from fixed buffers" if io.fixed_buffers else \
                f" (fixed buffers refused: {os.strerror(io.fixed_errno)})"
        if self._mode == "never" or self._backend == "copy":
            policy = "every send copied"
        elif not io.zerocopy:
            policy = "zero copy switched off (the kernel kept copying)"
        elif self._mode == "always":
            policy = "zero copy for every send"
        else:
            policy = f"zero copy from {io.min_size} bytes, off after {COPIED_STREAK} copied in a row"
        seg = f", UDP GSO segments of {self._segment_size}" if self._segment_size else ""
        return f"{how}; {policy}; pool {self._pool.buffers} x {self._pool.buffer_size} bytes{seg}"

    # ---- lifetime ------------------------------------------------------------

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Wait up to ``timeout`` seconds (None: forever) for buffers in
        flight, then release the socket descriptor and the pool. Buffers
        still in flight then never return to the pool (the kernel may still
        read them) and their Completions raise ECANCELED. Closing twice is
        fine. While a call waits in another thread (acquire, send_and_wait,
        Completion.wait, a send waiting for room), close() wakes it instead:
        it raises ``OSError(EBADF, "the ZeroCopySender was closed while
        waiting")`` and gives up what is in flight, as close(0) would."""
        if self._io.fd >= 0:
            _close_native(self._io, self._key, timeout)
        self._finalizer.detach()

    def __enter__(self) -> ZeroCopySender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd {self._io.fd}, {self._io.inflight} in flight"
        return f"<ZeroCopySender {state}: {self.describe()}>"


def _choose_backend(sock: socket.socket, backend: str, mode: str, caps: Capabilities) -> str:
    """The backend to use: the one asked for (or EOPNOTSUPP), or for "auto"
    the best the probe found; MSG_ZEROCOPY also needs SO_ZEROCOPY set."""
    if backend == "auto":
        if mode == "never":
            return "copy"
        if caps.io_uring_send_zc:
            return "uring"
        if caps.so_zerocopy and _enable_so_zerocopy(sock) is None:
            return "msg_zerocopy"
        return "copy"
    if backend == "uring" and not caps.io_uring_send_zc:
        raise OSError(errno.EOPNOTSUPP, f"backend 'uring' needs io_uring SEND_ZC: "
                                        f"{caps['io_uring_send_zc'].detail}")
    if backend == "msg_zerocopy":
        why = caps["so_zerocopy"].detail if not caps.so_zerocopy else _enable_so_zerocopy(sock)
        if why:
            raise OSError(errno.EOPNOTSUPP, f"backend 'msg_zerocopy' needs SO_ZEROCOPY: {why}")
    return backend


def _enable_so_zerocopy(sock: socket.socket) -> str | None:
    """Set SO_ZEROCOPY (MSG_ZEROCOPY is a plain copy without it); None, or why not."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    except OSError as e:
        return f"setsockopt(SO_ZEROCOPY): {e}"
    return None


def _set_segment_size(sock: socket.socket, stream: bool, segment_size: int, caps: Capabilities) -> None:
    if stream:
        raise ValueError("segment_size is for UDP sockets (GSO); TCP segments by itself")
    check_int("segment_size", segment_size, 1, 65507)
    if not caps.udp_segment:
        raise OSError(errno.EOPNOTSUPP, f"segment_size needs UDP GSO: {caps['udp_segment'].detail}")
    sock.setsockopt(SOL_UDP, UDP_SEGMENT, segment_size)


def _socket_key(sock: socket.socket) -> tuple[int, int]:
    st = os.fstat(sock.fileno())
    return st.st_dev, st.st_ino


def _policy_hook(ref: weakref.ref[ZeroCopySender]) -> Callable[[int], None]:
    """The copy policy as C calls it, holding the sender weakly."""
    def on_copied(streak: int) -> None:
        sender = ref()
        if sender is not None:
            sender._kernel_copies(streak)
    return on_copied


def _close_native(io: _native.ZeroCopyIo[Completion], key: tuple[int, int] | None, timeout: float | None) -> None:
    """Close the native sender; remember where the socket's MSG_ZEROCOPY ids
    stand for the next sender on it."""
    try:
        io.close(timeout)
    finally:
        if io.fd < 0 and key is not None:
            _MSG_IDS[key] = io.next_id
            _MSG_IDS.move_to_end(key)
            while len(_MSG_IDS) > _MSG_IDS_KEEP:
                _MSG_IDS.popitem(last=False)
