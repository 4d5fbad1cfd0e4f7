"""Argument checks: the one place where burstio's Python code words a bad argument.

Every public entry point checks its arguments here before any work starts, so
that the same mistake reads the same everywhere. The C side words its own
checks the same way (csrc/core/args.c: ``bio_args_int``):

- ``TypeError("NAME must be int, got TYPE")`` (``bool`` is not an int here);
- ``ValueError("NAME must be between LO and HI, got VALUE")``;
- ``OSError(EBADF)`` for a closed socket, ``ValueError`` naming the object
  and the kind of socket it needs for a socket of the wrong kind.
"""
from __future__ import annotations

import errno
import math
import socket
from collections.abc import Sequence

__all__ = ["check_int", "check_optional_int", "check_seconds", "check_timeout", "check_choice", "check_socket",
           "fileno_of", "closed_socket_error", "UDP", "UDP_OR_TCP"]

#: socket kinds check_socket accepts
UDP = ((socket.SOCK_DGRAM, socket.IPPROTO_UDP),)
UDP_OR_TCP = ((socket.SOCK_DGRAM, socket.IPPROTO_UDP), (socket.SOCK_STREAM, socket.IPPROTO_TCP))


def check_int(name: str, value: object, lo: int, hi: int, *, power_of_two: bool = False) -> int:
    """``value`` if it is an int in [lo, hi] (and a power of two, when asked)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if not lo <= value <= hi or (power_of_two and (value <= 0 or value & (value - 1))):
        kind = "a power of two " if power_of_two else ""
        raise ValueError(f"{name} must be {kind}between {lo} and {hi}, got {value}")
    return value


def check_optional_int(name: str, value: object, lo: int, hi: int) -> int | None:
    """``value`` if it is None or an int in [lo, hi]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int or None, got {type(value).__name__}")
    return check_int(name, value, lo, hi)


def check_seconds(name: str, value: object, lo: float, hi: float) -> float:
    """``value`` as float if it is a number of seconds in [lo, hi] (NaN is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g} seconds, got {value!r}")
    return float(value)


def check_timeout(value: object, name: str = "timeout") -> float | None:
    """None (wait forever) or a number of seconds >= 0 (NaN is not)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if not value >= 0 or math.isnan(value):
        raise ValueError(f"{name} must be >= 0 or None, got {value!r}")
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        names = [repr(c) for c in choices]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise ValueError(f"{name} must be {listed}, got {value!r}")
    return str(value)


def closed_socket_error() -> OSError:
    """The error for a socket whose descriptor is gone."""
    return OSError(errno.EBADF, "Bad file descriptor (the socket is closed)")


def check_socket(sock: object, owner: str, *, kinds: tuple[tuple[int, int], ...] = UDP,
                 burst_socket: bool = False) -> socket.socket:
    """The open IPv4/IPv6 ``socket.socket`` of ``sock``, of one of ``kinds``.

    ``owner`` names who needs it in the error ("BurstSocket", "SocketSet.add").
    With ``burst_socket`` a BurstSocket is accepted and its socket returned.
    """
    if burst_socket:
        from ._udp import BurstSocket
        if isinstance(sock, BurstSocket):
            sock = sock.sock
    if not isinstance(sock, socket.socket):
        what = "a socket.socket or BurstSocket" if burst_socket else "a socket.socket"
        raise TypeError(f"sock must be {what}, got {type(sock).__name__}")
    if sock.fileno() == -1:
        raise closed_socket_error()
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"{owner} needs an AF_INET or AF_INET6 socket, got {sock.family!r}")
    proto = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
    if (sock.type, proto) not in kinds:
        if kinds == UDP:
            if sock.type != socket.SOCK_DGRAM:
                raise ValueError(f"{owner} needs a UDP socket (SOCK_DGRAM), got {sock.type.name}")
            raise ValueError(f"{owner} needs a UDP socket (IPPROTO_UDP), got protocol {proto}")
        raise ValueError(f"{owner} needs a UDP or TCP socket, got {sock.type.name} protocol {proto}")
    return sock


def fileno_of(sock: object) -> int:
    """The descriptor of a socket-like object or an int; EBADF if closed."""
    fd = sock if isinstance(sock, int) else getattr(sock, "fileno", lambda: None)()
    if fd is None or isinstance(fd, bool):
        raise TypeError(f"need a socket or a file descriptor, got {type(sock).__name__}")
    if fd < 0:
        raise closed_socket_error()
    return int(fd)
