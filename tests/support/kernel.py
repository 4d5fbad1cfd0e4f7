"""Kernel constants the tests use, and what this kernel offers or does.

The constants are Linux's (x86_64 where it matters) that the standard
library's socket module does not name; tests take every such constant from
here.
"""
from __future__ import annotations

import errno
import platform
import socket
import struct
import threading
from pathlib import Path

import pytest

import burstio
from burstio._kernel import (
    CLONE_NEWNET,
    EPIOCGPARAMS,
    SIOCINQ,
    SIOCOUTQ,
    SO_BUSY_POLL,
    SO_NO_CHECK,
    SO_PREFER_BUSY_POLL,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
    SOL_UDP,
    UDP_SEGMENT,
)

from .variants import Variant, variant_env

__all__ = ["SOL_UDP", "UDP_SEGMENT", "SO_NO_CHECK", "SO_SNDBUFFORCE", "SO_RCVBUFFORCE", "SIOCINQ", "SIOCOUTQ",
           "CLONE_NEWNET", "EPIOCGPARAMS", "SO_BUSY_POLL", "SO_PREFER_BUSY_POLL", "BLOCKING_SYSCALLS_X86_64",
           "gso_sendmsg", "kernel_caps", "require_kernel", "kernel_refuses_gso_without_checksum",
           "main_thread_blocked_in_syscall", "thread_blocked_in_syscall", "thread_syscall",
           "require_syscall_introspection"]

# ---- constants --------------------------------------------------------------------------
# All kernel constants come from the library (burstio._kernel: the values the extension was built with).

# x86_64 numbers of the syscalls a receive can block in. restart_syscall: a poll() with a
# timeout that a signal with no handler (SIGCHLD of an exited child) interrupted goes on waiting
# in it (/proc/<tid>/syscall then says 219 until the wait ends).
BLOCKING_SYSCALLS_X86_64 = {7: "poll", 23: "select", 47: "recvmsg", 219: "restart_syscall", 232: "epoll_wait",
                            270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 299: "recvmmsg",
                            426: "io_uring_enter"}


def gso_sendmsg(sock: socket.socket, data: bytes, seg: int, addr) -> None:
    """One stdlib sendmsg carrying UDP_SEGMENT: the kernel's own GSO."""
    sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))], 0, addr)


# ---- what this kernel offers ----------------------------------------------------------------

_NOTHING_OFF = Variant("kernel")


def kernel_caps() -> burstio.Capabilities:
    """What this kernel offers with nothing forced off."""
    with variant_env(_NOTHING_OFF) as caps:
        return caps


def require_kernel(name: str) -> None:
    """Skip, saying why, when the probe found the kernel lacks ``name``."""
    cap = kernel_caps()[name]
    if not cap.available:
        pytest.skip(f"kernel lacks {name}: {cap.detail}")


_NO_CHECK_REFUSES_GSO: list[bool] = []


def kernel_refuses_gso_without_checksum() -> bool:
    """Whether, with SO_NO_CHECK set, the kernel refuses a GSO send (EINVAL)
    while a plain send still works (IPv4). Checked once, by trying."""
    if not _NO_CHECK_REFUSES_GSO:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rx.bind(("127.0.0.1", 0))
            rx.settimeout(1.0)
            tx.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
            tx.sendto(b"plain", rx.getsockname())
            plain_ok = rx.recv(16) == b"plain"
            try:
                gso_sendmsg(tx, b"x" * 20, 10, rx.getsockname())
                refused = False
            except OSError as e:
                refused = e.errno in (errno.EINVAL, errno.EIO)
            _NO_CHECK_REFUSES_GSO.append(plain_ok and refused)
        except OSError:
            _NO_CHECK_REFUSES_GSO.append(False)
        finally:
            rx.close()
            tx.close()
    return _NO_CHECK_REFUSES_GSO[0]


# ---- seeing the main thread blocked in the kernel -------------------------------------------


def main_thread_blocked_in_syscall() -> bool:
    """Whether the main thread sits in a receive/poll syscall right now."""
    return thread_blocked_in_syscall(threading.main_thread().native_id)


def thread_blocked_in_syscall(tid: int | None) -> bool:
    """Whether thread ``tid`` (a native id) sits in a receive/poll syscall right now."""
    try:
        text = Path(f"/proc/self/task/{tid}/syscall").read_text().split()
    except OSError:
        return False
    return bool(text) and text[0].isdigit() and int(text[0]) in BLOCKING_SYSCALLS_X86_64


def thread_syscall(tid: int | None) -> str | None:
    """The name of the receive/poll syscall thread ``tid`` sits in right now, or None."""
    try:
        text = Path(f"/proc/self/task/{tid}/syscall").read_text().split()
    except OSError:
        return None
    return BLOCKING_SYSCALLS_X86_64.get(int(text[0])) if text and text[0].isdigit() else None


def require_syscall_introspection() -> None:
    """Skip, saying why, where main_thread_blocked_in_syscall cannot tell."""
    if platform.machine() != "x86_64":
        pytest.skip(f"syscall numbers in /proc/<tid>/syscall are known here for x86_64 only, "
                    f"not {platform.machine()}")
    try:
        Path(f"/proc/self/task/{threading.get_native_id()}/syscall").read_text()
    except OSError as e:
        pytest.skip(f"/proc/self/task/<tid>/syscall unreadable: {e}")
