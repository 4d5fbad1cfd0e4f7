"""Busy polling, per epoll instance and per socket, and NAPI identity.

Busy polling trades CPU for latency: instead of sleeping until an interrupt
wakes it, the thread that waits polls the device queue (the NAPI instance)
itself. It only pays off when every socket a thread polls comes from the
same NAPI instance; ``napi_id(sock)`` says which one a socket's traffic came
from (0 until a packet has arrived through NAPI).

- ``BusyPollEpoll``: an epoll instance with its own busy-poll parameters
  (EPIOCSPARAMS, Linux >= 6.9): no need for the system-wide
  net.core.busy_poll sysctl.
- ``set_busy_poll``, ``set_prefer_busy_poll``, ``set_busy_poll_budget``:
  the per-socket options (a blocking receive busy polls before sleeping).
- ``register_uring_napi``: io_uring's own NAPI busy polling for a SocketSet.
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import _native
from .._checks import check_int, fileno_of
from .._kernel import (
    EPIOCGPARAMS,
    EPIOCSPARAMS,
    EPOLL_PARAMS,
    SO_BUSY_POLL,
    SO_BUSY_POLL_BUDGET,
    SO_INCOMING_NAPI_ID,
    SO_PREFER_BUSY_POLL,
)

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

    from .._socketset import SocketSet

__all__ = ["BusyPollEpoll", "EpollParams", "napi_id", "set_busy_poll", "set_prefer_busy_poll",
           "set_busy_poll_budget", "register_uring_napi", "BUDGET_MAX"]

#: the largest budget an unprivileged process may set (NAPI_POLL_WEIGHT);
#: more needs CAP_NET_ADMIN
BUDGET_MAX = 64


@dataclass(frozen=True)
class EpollParams:
    busy_poll_usecs: int
    busy_poll_budget: int
    prefer_busy_poll: bool


def _kernel_too_old(what: str, version: str, err: OSError) -> OSError:
    if err.errno in (errno.ENOTTY, errno.EINVAL, errno.ENOPROTOOPT):
        return OSError(err.errno, f"{what} needs Linux >= {version}; this kernel is {os.uname().release} "
                                  f"({err.strerror})")
    return err


def napi_id(sock: FileDescriptorLike) -> int:
    """SO_INCOMING_NAPI_ID: the NAPI instance the socket's last packet came
    through (0: none yet, or not through NAPI, e.g. loopback). `sock` is a
    socket.socket, a BurstSocket or a descriptor."""
    sock = getattr(sock, "sock", sock)  # a BurstSocket
    if isinstance(sock, socket.socket):
        return sock.getsockopt(socket.SOL_SOCKET, SO_INCOMING_NAPI_ID)
    dup = socket.socket(fileno=os.dup(fileno_of(sock)))
    try:
        return dup.getsockopt(socket.SOL_SOCKET, SO_INCOMING_NAPI_ID)
    finally:
        dup.close()


def set_busy_poll(sock: socket.socket, usecs: int) -> None:
    """SO_BUSY_POLL: a blocking receive busy polls up to `usecs` before
    sleeping (more than net.core.busy_read needs CAP_NET_ADMIN)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, check_int("usecs", usecs, 0, 2**31 - 1))


def set_prefer_busy_poll(sock: socket.socket, prefer: bool = True) -> None:
    """SO_PREFER_BUSY_POLL: prefer busy polling to softirq processing (with
    napi_defer_hard_irqs, interrupts stay masked while the app polls)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PREFER_BUSY_POLL, int(bool(prefer)))
    except OSError as e:
        raise _kernel_too_old("SO_PREFER_BUSY_POLL", "5.11", e) from None


def set_busy_poll_budget(sock: socket.socket, budget: int) -> None:
    """SO_BUSY_POLL_BUDGET: packets per busy-poll round (over 64 needs
    CAP_NET_ADMIN)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL_BUDGET, check_int("budget", budget, 0, 65535))
    except OSError as e:
        raise _kernel_too_old("SO_BUSY_POLL_BUDGET", "5.11", e) from None


def register_uring_napi(ring: SocketSet | _native.UringSocketSet, busy_poll_usecs: int,
                        prefer_busy_poll: bool = False) -> None:
    """Make an io_uring SocketSet busy poll the NAPI instances of its sockets for
    up to `busy_poll_usecs` while it waits (IORING_REGISTER_NAPI, Linux >=
    6.9); 0 turns it off."""
    io = getattr(ring, "_io", ring)
    fd = getattr(io, "ring_fd", None)
    if fd is None:
        raise TypeError("register_uring_napi needs an io_uring SocketSet (SocketSet(backend='uring'))")
    try:
        _native.register_uring_napi(fd, check_int("busy_poll_usecs", busy_poll_usecs, 0, 2**32 - 1),
                                    bool(prefer_busy_poll))
    except OSError as e:
        raise _kernel_too_old("IORING_REGISTER_NAPI", "6.9", e) from None


class BusyPollEpoll:
    """select.epoll with its own busy-poll parameters (Linux >= 6.9).

    ``BusyPollEpoll(busy_poll_usecs=0, busy_poll_budget=0,
    prefer_busy_poll=False)``: while epoll_wait finds no event it busy polls
    the NAPI instance of its sockets for up to busy_poll_usecs. The epoll
    learns the NAPI ID from the sockets' traffic, so all sockets of one
    instance should share a NAPI instance (see napi_id()).
    """

    def __init__(self, busy_poll_usecs: int = 0, busy_poll_budget: int = 0, prefer_busy_poll: bool = False):
        self._ep = select.epoll()
        try:
            self.set_params(busy_poll_usecs, busy_poll_budget, prefer_busy_poll)
        except BaseException:
            self._ep.close()
            raise

    def set_params(self, busy_poll_usecs: int, busy_poll_budget: int = 0, prefer_busy_poll: bool = False) -> None:
        """EPIOCSPARAMS. A budget over 64 needs CAP_NET_ADMIN."""
        self._set_params_fd(self._ep.fileno(), busy_poll_usecs, busy_poll_budget, prefer_busy_poll)

    @staticmethod
    def _set_params_fd(fd: int, busy_poll_usecs: int, busy_poll_budget: int, prefer_busy_poll: bool) -> None:
        raw = EPOLL_PARAMS.pack(check_int("busy_poll_usecs", busy_poll_usecs, 0, 2**31 - 1),
                                 check_int("busy_poll_budget", busy_poll_budget, 0, 65535),
                                 int(bool(prefer_busy_poll)), 0)
        try:
            fcntl.ioctl(fd, EPIOCSPARAMS, raw)
        except OSError as e:
            if e.errno == errno.EPERM:
                raise PermissionError(errno.EPERM, f"busy_poll_budget {busy_poll_budget} > {BUDGET_MAX} "
                                                   "needs CAP_NET_ADMIN") from None
            raise _kernel_too_old("EPIOCSPARAMS (per-epoll busy poll)", "6.9", e) from None

    def get_params(self) -> EpollParams:
        """EPIOCGPARAMS: what the kernel holds for this instance."""
        buf = bytearray(EPOLL_PARAMS.size)
        try:
            fcntl.ioctl(self._ep.fileno(), EPIOCGPARAMS, buf)
        except OSError as e:
            raise _kernel_too_old("EPIOCGPARAMS (per-epoll busy poll)", "6.9", e) from None
        usecs, budget, prefer, _ = EPOLL_PARAMS.unpack(buf)
        return EpollParams(usecs, budget, bool(prefer))

    def register(self, fd: FileDescriptorLike, eventmask: int = select.EPOLLIN) -> None:
        """Watch ``fd`` for ``eventmask`` (as ``select.epoll.register``)."""
        self._ep.register(fd, eventmask)

    def modify(self, fd: FileDescriptorLike, eventmask: int) -> None:
        """Change the events watched on ``fd``."""
        self._ep.modify(fd, eventmask)

    def unregister(self, fd: FileDescriptorLike) -> None:
        """Stop watching ``fd``."""
        self._ep.unregister(fd)

    def poll(self, timeout: float | None = None, maxevents: int = -1) -> list[tuple[int, int]]:
        """Wait for events, busy polling first as the parameters say; returns [(fd, events)]."""
        return self._ep.poll(-1 if timeout is None else timeout, maxevents)

    def fileno(self) -> int:
        """The epoll descriptor."""
        return self._ep.fileno()

    def close(self) -> None:
        """Close the epoll instance."""
        self._ep.close()

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._ep.closed

    def __enter__(self) -> BusyPollEpoll:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
