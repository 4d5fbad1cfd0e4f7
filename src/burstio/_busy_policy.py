"""Busy polling's policy: which mechanism each object busy polls through.

Where a receive goes through it: ``busy_poll(usecs, budget, prefer,
mechanism="auto")`` of a BurstSocket, a SocketSet or an aio transport asks
here which mechanism to use, from the capability probe and from what the
kernel accepts at the time, and gets a ``BusyPollChoice`` back (what it uses,
with what parameters, and why); the object then sets that mechanism up, and
its receives wait through it (csrc/udp/recv.c, csrc/socketset/, the event
loop's epoll_wait).

- one socket (BurstSocket): "socket" (SO_BUSY_POLL, SO_PREFER_BUSY_POLL,
  SO_BUSY_POLL_BUDGET on the socket: a receive without a deadline blocks in
  recvmmsg, where the kernel polls the device for ``usecs`` and then sleeps,
  one system call per wake-up; one with a deadline polls the device in each
  try and tries again for ``usecs``; either way the call that finds the
  datagram is the receive, with no epoll_wait before it), or
  "epoll" (an epoll instance of the socket's own with its own parameters,
  EPIOCSPARAMS, Linux >= 6.9: epoll_wait polls, then the receive takes it:
  two system calls per wake-up). "auto" takes "socket";
  where the socket cannot have what was asked (SO_PREFER_BUSY_POLL and
  SO_BUSY_POLL_BUDGET need CAP_NET_ADMIN, a kernel without them, SO_BUSY_POLL
  forced off) it takes "epoll", which honours them, and where that is missing
  too, "socket" without what was refused.
- many sockets (SocketSet, aio): the instance every socket's readiness comes
  through: "epoll" (EPIOCSPARAMS on the set's or the event loop's epoll
  instance), or "io_uring" for an io_uring SocketSet (IORING_REGISTER_NAPI).
  A socket's own options do nothing there (epoll_wait busy polls by the
  instance's parameters alone), so "socket" is refused.
"""
from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from ._caps import Capabilities
from ._checks import check_int
from ._kernel import SO_BUSY_POLL_BUDGET, SO_PREFER_BUSY_POLL

__all__ = ["MECHANISMS", "SOCKET_MECHANISMS", "BUDGET_DEFAULT", "BusyPollChoice", "Refused", "check_busy_poll",
           "set_socket_options", "reasons", "choose_for_socket", "no_mechanism_error", "epoll_missing_error"]

#: what busy_poll(mechanism=) takes, over every kind of object
MECHANISMS = ("auto", "socket", "epoll", "io_uring")
#: what a BurstSocket takes
SOCKET_MECHANISMS = ("auto", "socket", "epoll")
#: the kernel's own busy-poll budget (BUSY_POLL_BUDGET): a socket asked for it
#: needs no SO_BUSY_POLL_BUDGET (which needs CAP_NET_ADMIN to raise)
BUDGET_DEFAULT = 8


@dataclass(frozen=True)
class BusyPollChoice:
    """What an object busy polls through, with what, and why."""

    mechanism: str  # "socket", "epoll" or "io_uring"
    usecs: int
    budget: int     # 0: not used by the mechanism (io_uring)
    prefer: bool
    asked: str      # "auto" or the mechanism asked for
    why: str

    def describe(self) -> str:
        """The words describe() adds: mechanism, parameters, the reason."""
        what = {"socket": "the socket (SO_BUSY_POLL)",
                "epoll": "the epoll instance (EPIOCSPARAMS)",
                "io_uring": "the io_uring (IORING_REGISTER_NAPI)"}[self.mechanism]
        budget = f", budget {self.budget}" if self.mechanism != "io_uring" else ""
        return (f"busy polling through {what}: {self.usecs} us{budget}, prefer {'on' if self.prefer else 'off'} "
                f"({self.asked}: {self.why})")


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(map(repr, names[:-1])) + f" or {names[-1]!r}"


def check_busy_poll(usecs: object, budget: object, prefer: object, mechanism: object, allowed: tuple[str, ...],
                    kind: str, waits_in: str) -> str:
    """The arguments of busy_poll(), checked: TypeError/ValueError naming
    the argument and the value; a mechanism this ``kind`` of object cannot
    use says where its receives wait (``waits_in``) and what it takes.
    Returns the mechanism asked for."""
    check_int("usecs", usecs, 0, 2**31 - 1)
    check_int("budget", budget, 0, 65535)
    if not isinstance(prefer, bool):
        raise TypeError(f"prefer must be bool, got {type(prefer).__name__}")
    if not isinstance(mechanism, str):
        raise TypeError(f"mechanism must be str, got {type(mechanism).__name__}")
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be {_listed(MECHANISMS)}, got {mechanism!r}")
    if mechanism not in allowed:
        why = (" (a socket's own busy-poll options act only in a receive call that waits in that socket)"
               if mechanism == "socket" else "")
        raise ValueError(f"mechanism {mechanism!r} does not fit a {kind}: it waits in {waits_in}{why}; "
                         f"it takes {_listed(allowed)}")
    return mechanism


#: what the socket could not be given: "budget"/"prefer" -> (errno, reason)
Refused = dict[str, tuple[int, str]]


def set_socket_options(sock: socket.socket, caps: Capabilities, budget: int, prefer: bool) -> Refused:
    """Set SO_BUSY_POLL_BUDGET and SO_PREFER_BUSY_POLL on ``sock`` as asked
    (not SO_BUSY_POLL itself); returns what the socket cannot have: "budget"
    and/or "prefer", each with its errno (EOPNOTSUPP: the capability is off,
    EPERM: the kernel refused) and the reason ({}: all set). The kernel's
    default budget and prefer off are written as 0, which needs no privilege."""
    refused: Refused = {}
    wants = (("budget", SO_BUSY_POLL_BUDGET, "SO_BUSY_POLL_BUDGET", "so_busy_poll_budget",
              0 if budget == BUDGET_DEFAULT else budget),
             ("prefer", SO_PREFER_BUSY_POLL, "SO_PREFER_BUSY_POLL", "so_prefer_busy_poll", int(prefer)))
    for key, opt, name, cap, value in wants:
        if not caps[cap]:
            if value:
                refused[key] = (errno.EOPNOTSUPP, f"{name} is off here ({caps[cap].detail})")
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, value)
        except OSError as e:
            if e.errno != errno.EPERM:
                raise
            refused[key] = (errno.EPERM, f"{name} {value} needs CAP_NET_ADMIN (EPERM)")
    return refused


def reasons(refused: Refused) -> str:
    """The reasons of what was refused, in one clause."""
    return "; ".join(why for _err, why in refused.values())


def choose_for_socket(caps: Capabilities, asked: str, refused: Refused | None) -> tuple[str, str]:
    """(mechanism, why) for one socket. ``refused``: what the socket options
    could not be given (set_socket_options), None where SO_BUSY_POLL is off.
    An explicit mechanism the kernel cannot give raises OSError naming it."""
    if asked == "epoll":
        if not caps.epoll_busy_poll:
            raise epoll_missing_error(caps)
        return "epoll", "asked for"
    if asked == "socket":
        if refused is None:
            raise OSError(errno.EOPNOTSUPP, f"busy polling through the socket needs SO_BUSY_POLL: "
                                            f"{caps['so_busy_poll'].detail}")
        if refused:
            err = errno.EPERM if any(e == errno.EPERM for e, _why in refused.values()) else errno.EOPNOTSUPP
            raise OSError(err, f"busy polling through the socket: {reasons(refused)} (mechanism='auto' "
                               "takes the epoll instance instead)")
        return "socket", "asked for"
    if refused == {}:
        return "socket", "one socket: SO_BUSY_POLL, the receive polls itself, no epoll_wait first"
    if caps.epoll_busy_poll:
        why = f"SO_BUSY_POLL is off here ({caps['so_busy_poll'].detail})" if refused is None \
            else reasons(refused)
        return "epoll", f"{why}: the epoll instance takes the parameters"
    if refused is None:
        raise no_mechanism_error(caps)
    return "socket", f"{reasons(refused)}: going on without it (no EPIOCSPARAMS either)"


def no_mechanism_error(caps: Capabilities) -> OSError:
    """Neither the socket's options nor an epoll instance's parameters."""
    return OSError(errno.EOPNOTSUPP, "busy polling needs EPIOCSPARAMS (Linux >= 6.9) or SO_BUSY_POLL: "
                                     f"{caps['epoll_busy_poll'].detail}; {caps['so_busy_poll'].detail}")


def epoll_missing_error(caps: Capabilities) -> OSError:
    """An epoll instance's busy-poll parameters are what is needed, and missing."""
    return OSError(errno.EOPNOTSUPP, "busy polling through an epoll instance needs EPIOCSPARAMS (Linux >= 6.9): "
                                     f"{caps['epoll_busy_poll'].detail}")
