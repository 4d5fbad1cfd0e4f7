"""Busy polling for burstio.aio: through the event loop's epoll instance.

Where a datagram goes through it: a transport's datagrams arrive when the
loop's ``epoll_wait`` reports its socket readable; with busy-poll parameters
on that epoll instance (EPIOCSPARAMS, Linux >= 6.9) the waiting loop polls
the NAPI instance of its sockets first, and sleeps only when nothing came in
``usecs``. The loop never waits in one socket's receive, so a socket's own
busy-poll options would not run: a transport busy polls through the loop's
instance (src/burstio/_busy_policy.py says why, for every kind of object).

The parameters belong to the loop, shared by every transport on it: the
last ``busy_poll()`` sets them, and they stay while any transport that asked
still busy polls (the one asked for most recently is in force); when the last
one stops (``busy_poll(0)``, or its connection is lost), the loop's
instance is set back to no busy polling.
"""
from __future__ import annotations

import asyncio
import errno
import selectors
import weakref

from .._busy_policy import BusyPollChoice, check_busy_poll, epoll_missing_error
from .._caps import capabilities

__all__ = ["start", "stop", "loop_epoll_fd"]

#: per loop: the choices of the transports that busy poll on it, oldest first
_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, BusyPollChoice]] = \
    weakref.WeakKeyDictionary()


def loop_epoll_fd(loop: asyncio.AbstractEventLoop) -> int:
    """The descriptor of the loop's epoll instance; OSError(EOPNOTSUPP)
    saying why for a loop that keeps none in reach."""
    selector = getattr(loop, "_selector", None)
    if isinstance(selector, selectors.EpollSelector):
        return selector.fileno()
    why = ("its epoll instance is libuv's, out of reach" if type(loop).__module__.startswith("uvloop")
           else "it has no epoll selector in reach")
    raise OSError(errno.EOPNOTSUPP, f"busy polling goes through the event loop's epoll instance, and "
                                    f"{type(loop).__name__} cannot give it: {why} (asyncio's selector event "
                                    f"loop on Linux has one)")


def start(loop: asyncio.AbstractEventLoop, owner: object, usecs: int, budget: int, prefer: bool,
          mechanism: str) -> BusyPollChoice | None:
    """Busy poll through ``loop``'s epoll instance for ``owner`` (a
    transport); ``usecs`` 0 stops it. Returns the choice (None: stopped)."""
    check_busy_poll(usecs, budget, prefer, mechanism, ("auto", "epoll"), "burstio transport",
                    "its event loop's epoll instance")
    if usecs == 0:
        stop(loop, owner)
        return None
    fd = loop_epoll_fd(loop)
    caps = capabilities()
    if not caps.epoll_busy_poll:
        raise epoll_missing_error(caps)
    choice = BusyPollChoice("epoll", usecs, budget, prefer, mechanism,
                            "an event loop: its epoll instance, shared by every transport on it")
    _apply(fd, choice)
    owners = _LOOPS.setdefault(loop, {})
    owners.pop(id(owner), None)
    owners[id(owner)] = choice  # the most recent last
    return choice


def stop(loop: asyncio.AbstractEventLoop, owner: object) -> None:
    """``owner`` busy polls no more; the loop's instance keeps the most
    recent remaining transport's parameters, or none."""
    owners = _LOOPS.get(loop)
    if owners is None or owners.pop(id(owner), None) is None:
        return
    try:
        fd = loop_epoll_fd(loop)
    except (OSError, ValueError):
        return  # the loop is closed: its instance went with it
    _apply(fd, list(owners.values())[-1] if owners else None)


def _apply(fd: int, choice: BusyPollChoice | None) -> None:
    """EPIOCSPARAMS on the loop's instance (None: no busy polling)."""
    from ..napi.busypoll import BusyPollEpoll

    if choice is None:
        BusyPollEpoll._set_params_fd(fd, 0, 0, False)
    else:
        BusyPollEpoll._set_params_fd(fd, choice.usecs, choice.budget, choice.prefer)
