"""Loopback sockets for the tests: addresses, making and closing sockets,
receiving everything that was sent, distinguishable payloads.

Traffic stays on loopback. Nothing here measures time: deadlines only bound
how long a broken library can make a test wait.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

import burstio

from .kernel import CLONE_NEWNET, SO_RCVBUFFORCE, SO_SNDBUFFORCE, require_kernel

V4 = "127.0.0.1"
V6 = "::1"
HOSTS = {socket.AF_INET: V4, socket.AF_INET6: V6}
FAMILIES = pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
RCVBUF = 4 << 20  # receivers get room for everything a test sends


def pattern(n: int, seed: int = 0) -> bytes:
    """n distinguishable bytes."""
    return bytes((seed * 131 + i * 7 + (i >> 8)) & 0xFF for i in range(n))


def force_buffer(sock: socket.socket, option: int, size: int) -> None:
    """Give ``sock`` a socket buffer (``option``: SO_RCVBUF or SO_SNDBUF) of ``size`` bytes:
    the *FORCE option as root, past net.core.rmem_max/wmem_max; without root the plain option,
    up to that limit. Skips, saying why, where the kernel grants less than ``size``."""
    force, limit = {socket.SO_RCVBUF: (SO_RCVBUFFORCE, "net.core.rmem_max"),
                    socket.SO_SNDBUF: (SO_SNDBUFFORCE, "net.core.wmem_max")}[option]
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
        return
    except PermissionError:  # no CAP_NET_ADMIN
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    if sock.getsockopt(socket.SOL_SOCKET, option) < size:  # the kernel reports twice what it grants
        pytest.skip(f"a socket buffer of {size} bytes needs root (CAP_NET_ADMIN) or {limit} >= {size}")


def force_rcvbuf(sock: socket.socket, size: int = RCVBUF) -> None:
    """Room in ``sock``'s receive buffer for everything a test sends (see force_buffer)."""
    force_buffer(sock, socket.SO_RCVBUF, size)


def force_sndbuf(sock: socket.socket, size: int) -> None:
    """Room in ``sock``'s send buffer for everything a test queues (see force_buffer)."""
    force_buffer(sock, socket.SO_SNDBUF, size)


def closed_port(family: int = socket.AF_INET) -> tuple:
    """An address on loopback where nothing listens (bound once, then closed)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((HOSTS[family], 0))
        return s.getsockname()


def free_udp_port(host: str = V4) -> int:
    """A UDP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Sockets:
    """Makes loopback sockets for one backend and closes all of them."""

    def __init__(self, backend: str = "auto"):
        self.backend = backend
        self._open: list = []

    def track(self, s):
        self._open.append(s)
        return s

    def forget(self, s) -> None:
        """Stop tracking s (a test that checks s is freed on its own)."""
        self._open = [o for o in self._open if o is not s]

    def burst(self, family: int = socket.AF_INET, *, backend: str | None = None, **kw) -> burstio.BurstSocket:
        """A BurstSocket bound to an ephemeral loopback port."""
        if family == socket.AF_INET6:
            require_kernel("ipv6")
        kw.setdefault("backend", backend or self.backend)
        return self.track(burstio.BurstSocket.bind((HOSTS[family], 0), **kw))

    def receiver(self, family: int = socket.AF_INET, **kw) -> burstio.BurstSocket:
        kw.setdefault("rcvbuf", RCVBUF)
        return self.burst(family, **kw)

    def pair(self, family: int = socket.AF_INET, *, rx: dict | None = None, tx: dict | None = None):
        """(receiver, sender): both BurstSockets, both bound, same backend."""
        return self.receiver(family, **(rx or {})), self.burst(family, **(tx or {}))

    def plain(self, family: int = socket.AF_INET, *, bind: bool = True, rcvbuf: int | None = RCVBUF) -> socket.socket:
        """A stdlib UDP socket (bound to an ephemeral loopback port)."""
        if family == socket.AF_INET6:
            require_kernel("ipv6")
        s = self.track(socket.socket(family, socket.SOCK_DGRAM))
        if rcvbuf:
            force_rcvbuf(s, rcvbuf)
        if bind:
            s.bind((HOSTS[family], 0))
        return s

    def close_all(self) -> None:
        while self._open:
            with contextlib.suppress(OSError):
                self._open.pop().close()

    def __enter__(self) -> Sockets:
        return self

    def __exit__(self, *exc) -> None:
        self.close_all()


# ---- receiving ---------------------------------------------------------------


def recv_all(sock: burstio.BurstSocket, batch: burstio.PacketBatch, expect: int,
             *, timeout: float = 2.0, settle: float = 0.05) -> list[tuple]:
    """Receive until ``expect`` datagrams came (or a call times out), then
    check nothing more is queued. Returns [(bytes, addr, flags, segment_size)]."""
    got: list[tuple] = []
    while len(got) < expect:
        n = sock.recv_batch(batch, timeout)
        if n == 0:
            break
        got += entries(batch)
    if len(got) == expect and sock.recv_batch(batch, settle):
        got += entries(batch)
    return got


def entries(batch: burstio.PacketBatch) -> list[tuple]:
    """[(bytes, addr, flags, segment_size)] of each datagram in the batch."""
    n = len(batch)
    flags = batch.flags
    sizes = batch.segment_sizes
    return [(bytes(batch[i]), batch.addr(i), flags[i], sizes[i]) for i in range(n)]


def payloads(got: list[tuple]) -> list[bytes]:
    return [g[0] for g in got]


def recv_plain(sock: socket.socket, expect: int, *, timeout: float = 2.0, settle: float = 0.05) -> list[tuple]:
    """[(bytes, addr)] received with the stdlib socket; then checks the queue is empty."""
    got = []
    sock.settimeout(timeout)
    try:
        while len(got) < expect:
            got.append(sock.recvfrom(70000))
        sock.settimeout(settle)
        got.append(sock.recvfrom(70000))
    except (TimeoutError, BlockingIOError):
        pass
    return got


def recv_one(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """One datagram (or what one recv gives of a stream), within ``timeout``."""
    sock.settimeout(timeout)
    return sock.recv(65536)


def recv_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """n bytes from a stream (fewer if it ends first)."""
    out = bytearray()
    sock.settimeout(timeout)
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


# ---- a network namespace whose loopback drains slowly (tbf) ------------------------------


def netns_unavailable() -> str | None:
    """Why a rate-limited namespace cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: iproute2)"
    return None


@contextlib.contextmanager
def slow_namespace(tag: str, rate: str = "2mbit") -> Iterator[str]:
    """A network namespace (its name) whose loopback drains through tbf at
    ``rate``: a sender with a small SO_SNDBUF there finds its socket full
    (EAGAIN, or a blocking send waits), and the queue drains by itself.
    Skips, saying why, where it cannot be made; removed afterwards."""
    why = netns_unavailable()
    if why:
        pytest.skip(f"a rate-limited netns: {why}")
    ns = f"burstio-{tag}-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"ip netns add failed: {r.stderr.strip()}")
    try:
        for cmd in (["ip", "-n", ns, "link", "set", "lo", "up"],
                    ["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate,
                     "burst", "4000", "limit", "1000000"]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def socket_in(ns: str, sndbuf: int | None = None) -> socket.socket:
    """A UDP socket bound to 127.0.0.1 inside ``ns`` (made on a thread that
    entered the namespace: sockets keep the namespace they were made in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: dict = {}

    def make():
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out["error"] = OSError(ctypes.get_errno(), "setns failed")
                return
        finally:
            os.close(fd)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if sndbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        s.bind((V4, 0))
        out["sock"] = s

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["sock"]
