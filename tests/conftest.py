"""Shared test machinery: the backend matrix and loopback socket helpers.

Every BurstSocket test runs against each backend variant below (STYLE rule 7):
the pure-Python "portable" backend is the oracle, "msg" and "mmsg" are the C
paths, and the forced-fallback variants set BURSTIO_DISABLE before the socket
is made (the probe caches per BURSTIO_DISABLE value and BurstSocket reads it
at construction), so each fallback path runs too.

Traffic stays on loopback. Nothing here measures time: deadlines only bound
how long a broken library can make a test wait.
"""
from __future__ import annotations

import contextlib
import errno
import os
import platform
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

import burstio
from burstio._caps import ENV_DISABLE

pytest_plugins = ["burstio.testing"]  # the burstio_lab fixture

# Property tests search new examples on every run, except in CI
# (HYPOTHESIS_PROFILE=ci), which replays the same ones so that a landing
# never hinges on a lucky draw. A failure prints its example to reproduce.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parent.parent

V4 = "127.0.0.1"
V6 = "::1"
HOSTS = {socket.AF_INET: V4, socket.AF_INET6: V6}
FAMILIES = pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])

SOL_UDP = 17
UDP_SEGMENT = 103
SO_NO_CHECK = 11  # SOL_SOCKET option; with it set the kernel refuses UDP GSO (IPv4)
RCVBUF = 4 << 20  # receivers get room for everything a test sends

# ---- the backend matrix ------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way of running BurstSocket: a backend and what is forced off."""

    name: str
    backend: str          # the BurstSocket(backend=...) argument
    disable: str          # the BURSTIO_DISABLE value ("" = nothing forced off)
    expect_backend: str   # what sock.backend must then say

    @property
    def rx_syscall(self) -> str:
        return {"portable": "socket.recvmsg_into", "msg": "recvmsg", "mmsg": "recvmmsg"}[self.expect_backend]

    @property
    def tx_syscall(self) -> str:
        return {"portable": "socket.sendmsg", "msg": "sendmsg", "mmsg": "sendmmsg"}[self.expect_backend]


VARIANTS = {
    v.name: v
    for v in (
        Variant("portable", "portable", "", "portable"),
        Variant("msg", "msg", "", "msg"),
        Variant("mmsg", "mmsg", "", "mmsg"),
        Variant("auto-no-gso", "auto", "udp_segment", "mmsg"),
        Variant("auto-no-gro", "auto", "udp_gro", "mmsg"),
        Variant("auto-no-mmsg", "auto", "recvmmsg,sendmmsg", "msg"),
    )
}
ORACLE = VARIANTS["portable"]


@contextlib.contextmanager
def variant_env(variant: Variant):
    """Set BURSTIO_DISABLE for ``variant`` (restored on exit); yields the
    capabilities BurstSocket will see. Usable where monkeypatch is not
    (inside hypothesis examples)."""
    old = os.environ.get(ENV_DISABLE)
    if variant.disable:
        os.environ[ENV_DISABLE] = variant.disable
    else:
        os.environ.pop(ENV_DISABLE, None)
    try:
        caps = burstio.capabilities()
        skip_unless_runnable(variant, caps)
        yield caps
    finally:
        if old is None:
            os.environ.pop(ENV_DISABLE, None)
        else:
            os.environ[ENV_DISABLE] = old


def skip_unless_runnable(variant: Variant, caps) -> None:
    if variant.backend == "mmsg" and not (caps.recvmmsg and caps.sendmmsg):
        pytest.skip(f"backend 'mmsg' needs recvmmsg and sendmmsg: {caps['recvmmsg'].detail}; "
                    f"{caps['sendmmsg'].detail}")
    if variant.backend == "auto" and "recvmmsg" not in variant.disable and not caps.recvmmsg:
        pytest.skip(f"variant {variant.name} expects recvmmsg, which the kernel lacks: "
                    f"{caps['recvmmsg'].detail}")


def kernel_caps():
    """What this kernel offers with nothing forced off."""
    with variant_env(ORACLE) as caps:
        return caps


def require_kernel(name: str) -> None:
    """Skip, saying why, when the probe found the kernel lacks ``name``."""
    cap = kernel_caps()[name]
    if not cap.available:
        pytest.skip(f"kernel lacks {name}: {cap.detail}")


@pytest.fixture(params=list(VARIANTS.values()), ids=list(VARIANTS))
def variant(request, monkeypatch) -> Variant:
    """Each backend variant in turn, with its BURSTIO_DISABLE set."""
    v: Variant = request.param
    if v.disable:
        monkeypatch.setenv(ENV_DISABLE, v.disable)
    else:
        monkeypatch.delenv(ENV_DISABLE, raising=False)
    skip_unless_runnable(v, burstio.capabilities())
    return v


# ---- sockets -----------------------------------------------------------------


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
            s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE: we are root in CI
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


def pattern(n: int, seed: int = 0) -> bytes:
    """n distinguishable bytes."""
    return bytes((seed * 131 + i * 7 + (i >> 8)) & 0xFF for i in range(n))


def gso_sendmsg(sock: socket.socket, data: bytes, seg: int, addr) -> None:
    """One stdlib sendmsg carrying UDP_SEGMENT: the kernel's own GSO."""
    sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))], 0, addr)


# ---- seeing the main thread blocked in the kernel ---------------------------

# x86_64 numbers of the syscalls a receive can block in.
_BLOCKING_SYSCALLS = {7: "poll", 23: "select", 47: "recvmsg", 232: "epoll_wait", 270: "pselect6",
                      271: "ppoll", 281: "epoll_pwait", 299: "recvmmsg"}


def main_thread_blocked_in_syscall() -> bool:
    """Whether the main thread sits in a receive/poll syscall right now."""
    tid = threading.main_thread().native_id
    try:
        text = Path(f"/proc/self/task/{tid}/syscall").read_text().split()
    except OSError:
        return False
    return bool(text) and text[0].isdigit() and int(text[0]) in _BLOCKING_SYSCALLS


def require_syscall_introspection() -> None:
    if platform.machine() != "x86_64":
        pytest.skip(f"syscall numbers in /proc/<tid>/syscall are known here for x86_64 only, "
                    f"not {platform.machine()}")
    try:
        Path(f"/proc/self/task/{threading.get_native_id()}/syscall").read_text()
    except OSError as e:
        pytest.skip(f"/proc/self/task/<tid>/syscall unreadable: {e}")


def wait_for(pred, limit: float = 10.0, step: float = 0.002) -> bool:
    """Poll ``pred`` until true or ``limit`` seconds pass."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Helper(threading.Thread):
    """A thread running ``fn``; SIGALRM is blocked in it so that process
    signals land on the main thread. Re-raises its exception on join()."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.error: BaseException | None = None

    def run(self) -> None:
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            self.fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def join(self, timeout: float | None = 10.0) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def rescue(addr, after: float = 15.0, count: int = 1100):
    """A separate process that floods ``addr`` after ``after`` seconds, so a
    receive that wrongly keeps blocking ends (and its test fails) instead of
    hanging the suite. A process, not a thread: it needs no GIL."""
    code = ("import socket,sys,time\n"
            "time.sleep(float(sys.argv[3]))\n"
            "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(int(sys.argv[4])): s.sendto(b'rescue', (sys.argv[1], int(sys.argv[2])))\n")
    p = subprocess.Popen([sys.executable, "-I", "-S", "-c", code, addr[0], str(addr[1]), str(after), str(count)])
    try:
        yield
    finally:
        p.kill()
        p.wait()


# ---- kernel behaviour checks --------------------------------------------------

_NO_CHECK_REFUSES_GSO: list[bool] = []


def kernel_refuses_gso_without_checksum() -> bool:
    """Whether, with SO_NO_CHECK set, the kernel refuses a GSO send (EINVAL)
    while a plain send still works (IPv4). Checked once, by trying."""
    if not _NO_CHECK_REFUSES_GSO:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rx.bind((V4, 0))
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


def free_udp_port(host: str = V4) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    # the subprocess imports the same burstio as these tests (installed or in place)
    here = str(Path(burstio.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop(ENV_DISABLE, None)
    env.update(extra)
    return env


def run_on_loop(loop_kind: str, coro_fn, timeout: float):
    """Run coro_fn() to completion on a fresh event loop of kind "asyncio" or
    "uvloop" (skipped, saying why, when uvloop is not installed)."""
    import asyncio

    if loop_kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            pytest.skip("uvloop is not installed (pip install uvloop)")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), timeout))
    finally:
        loop.close()


def open_fds() -> set[int]:
    """This process's open descriptors (not counting the one listing them)."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            continue
        out.add(int(name))
    return out
