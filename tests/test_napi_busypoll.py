"""burstio.napi.busypoll: per-epoll busy polling (EPIOCSPARAMS), the busy-poll
socket options, NAPI ids, and busy polling as BurstSocket, SocketSet and
burstio.aio use it: which mechanism "auto" takes for each kind of object
(src/burstio/_busy_policy.py), each mechanism asked for by name, each
capability forced off, and what the kernel refuses without CAP_NET_ADMIN.

The per-backend busy-poll contract of BurstSocket is in tests/test_udp.py. Nothing
here measures time.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import os
import re
import select
import socket
import struct
import threading
from pathlib import Path

import pytest

import burstio
import burstio.aio
from burstio.aio import _busypoll as aio_busypoll
from burstio.napi import busypoll
from burstio.napi.busypoll import BusyPollEpoll, EpollParams, napi_id
from support.kernel import EPIOCGPARAMS, SO_BUSY_POLL, SO_PREFER_BUSY_POLL, require_kernel
from support.loops import run_on_loop
from support.net import V4
from support.proc import run_without_caps, wait_for
from support.variants import SOCKETSET, set_disable, use_variant

# ---- per-epoll busy poll and the socket options ------------------------------------


def test_epoll_params_round_trip():
    require_kernel("epoll_busy_poll")
    with BusyPollEpoll(25, 16, True) as ep:
        assert ep.get_params() == EpollParams(25, 16, True)
        ep.set_params(7)
        assert ep.get_params() == EpollParams(7, 0, False)
        ep.set_params(0, 64, False)
        assert ep.get_params() == EpollParams(0, 64, False)
        # the kernel's own view, read without the wrapper
        raw = bytearray(8)
        fcntl.ioctl(ep.fileno(), EPIOCGPARAMS, raw)
        assert struct.unpack("IHBB", raw)[:3] == (0, 64, 0)
    assert ep.closed


def test_epoll_params_bad_arguments():
    require_kernel("epoll_busy_poll")
    with pytest.raises(TypeError, match="busy_poll_usecs must be int, got str"):
        BusyPollEpoll("5")
    with pytest.raises(ValueError, match="busy_poll_usecs must be between 0 and 2147483647, got -1"):
        BusyPollEpoll(-1)
    with pytest.raises(ValueError, match="busy_poll_budget must be between 0 and 65535, got 65536"):
        BusyPollEpoll(5, 65536)
    with BusyPollEpoll() as ep, pytest.raises(TypeError, match="busy_poll_budget must be int, got bool"):
        ep.set_params(5, True)


def test_epoll_busy_poll_still_delivers_events():
    require_kernel("epoll_busy_poll")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx, BusyPollEpoll(20, 8) as ep:
        rx.bind((V4, 0))
        ep.register(rx.fileno())
        assert ep.poll(0.01) == []
        tx.sendto(b"x", rx.getsockname())
        assert ep.poll(5) == [(rx.fileno(), select.EPOLLIN)]


def _syscall_of(tid: int) -> tuple[str, str]:
    """(state, syscall number) of thread ``tid`` of this process, from /proc."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    with open(f"/proc/self/task/{tid}/syscall") as f:
        return state, f.read().split()[0]


def _comm(tid: str) -> str:
    """Thread ``tid``'s name ("" once it has exited)."""
    try:
        return Path(f"/proc/self/task/{tid}/comm").read_text()
    except FileNotFoundError:
        return ""


def _epoll_wait_number() -> str:
    """The syscall number libc's epoll_wait() makes here, as /proc shows it
    (learnt from a thread sleeping in select.epoll.poll, which calls it)."""
    with select.epoll() as ep, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((V4, 0))
        ep.register(s.fileno(), select.EPOLLIN)
        t = threading.Thread(target=ep.poll, args=(10.0,), daemon=True)
        t.start()
        try:
            assert wait_for(lambda: _syscall_of(t.native_id)[0] == "S"), "the thread never slept in epoll_wait"
            return _syscall_of(t.native_id)[1]
        finally:
            s.sendto(b"wake", s.getsockname())
            t.join(10)


def test_busy_poll_receive_waits_first_for_request_response_traffic():
    """Under epoll busy polling, a receive that found the socket empty makes
    the next one wait before receiving (epoll_wait + recvmmsg, not a third
    call), and a full batch makes the next one receive first again.

    A "late" datagram is sent only once this thread sleeps in epoll_wait
    (seen in /proc), so the order of events is fixed, not left to a timer."""
    require_kernel("epoll_busy_poll")
    epoll_wait = _epoll_wait_number()
    me = threading.get_native_id()
    rx = burstio.BurstSocket.bind((V4, 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        assert rx.busy_poll(10, mechanism="epoll") == "epoll"
        batch = burstio.PacketBatch(4)

        def calls(receive) -> int:
            before = rx.counters["rx_syscalls"]
            receive()
            return rx.counters["rx_syscalls"] - before

        def send_once_waiting(payload: bytes) -> None:
            assert wait_for(lambda: _syscall_of(me) == ("S", epoll_wait)), "the receive never waited"
            tx.sendto(payload, rx.getsockname())

        def late(payload: bytes = b"x") -> None:
            sender = threading.Thread(target=send_once_waiting, args=(payload,), daemon=True)
            sender.start()
            assert rx.recv_batch(batch, 10.0) == 1 and bytes(batch[0]) == payload
            sender.join(10)

        def ready(k: int) -> None:
            assert rx.recv_batch(batch, 5.0) == k

        # the probe's io_uring instances close in the background, and their
        # teardown could interrupt a wait (EINTR, retried: one call more):
        # close them now, and let their io-wq threads finish first
        gc.collect()
        assert wait_for(lambda: not any(_comm(t).startswith("iou-") for t in os.listdir("/proc/self/task")))
        calls(late)  # the first receive of the socket: it finds the socket empty
        seen = [calls(late), calls(late)]
        for _ in range(5):
            tx.sendto(b"ready", rx.getsockname())  # queued before sendto returns (loopback)
        seen += [calls(lambda: ready(4)), calls(lambda: ready(1)), calls(late), calls(late)]
        assert seen == [2, 2,  # wait, receive (after a first receive that found it empty)
                        2, 1,  # waited first (returned at once): a full batch, so receive first (finds one)
                        3, 2]  # receive (empty), wait, receive; then wait, receive


def test_socket_options_round_trip():
    require_kernel("so_busy_poll")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        busypoll.set_busy_poll(s, 40)
        assert s.getsockopt(socket.SOL_SOCKET, SO_BUSY_POLL) == 40
        if burstio.capabilities().so_prefer_busy_poll:
            busypoll.set_prefer_busy_poll(s, True)
            assert s.getsockopt(socket.SOL_SOCKET, SO_PREFER_BUSY_POLL) == 1
        if burstio.capabilities().so_busy_poll_budget:
            busypoll.set_busy_poll_budget(s, 16)  # (the kernel has no getsockopt for it)
        with pytest.raises(ValueError, match="usecs must be between 0 and 2147483647, got -5"):
            busypoll.set_busy_poll(s, -5)
        with pytest.raises(TypeError, match="budget must be int, got float"):
            busypoll.set_busy_poll_budget(s, 1.0)


def test_napi_id_is_zero_over_loopback():
    require_kernel("so_incoming_napi_id")
    rx = burstio.BurstSocket.bind((V4, 0))
    with rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(b"x", rx.getsockname())
        assert rx.recv_batch(burstio.PacketBatch(4, 64), 5) == 1
        assert napi_id(rx) == 0 == napi_id(rx.sock) == napi_id(rx.fileno())
    with pytest.raises(TypeError, match="need a socket or a file descriptor, got str"):
        napi_id("eth0")
    with pytest.raises(OSError) as ei:
        napi_id(-1)
    assert ei.value.errno == errno.EBADF


def test_busy_poll_without_any_mechanism_is_an_error(monkeypatch):
    set_disable(monkeypatch, "epoll_busy_poll,so_busy_poll")
    with burstio.BurstSocket.bind((V4, 0)) as s:
        with pytest.raises(OSError, match="busy polling needs EPIOCSPARAMS") as ei:
            s.busy_poll(10)
        assert ei.value.errno == errno.EOPNOTSUPP
        assert s.busy_polling == "off"


# ---- BurstSocket: what "auto" takes when the socket cannot have what was asked --------


@pytest.mark.parametrize("mechanism, off, says", [
    ("epoll", "epoll_busy_poll", "busy polling through an epoll instance needs EPIOCSPARAMS (Linux >= 6.9)"),
    ("socket", "so_busy_poll", "busy polling through the socket needs SO_BUSY_POLL"),
])
def test_a_mechanism_asked_for_and_missing_is_an_error(monkeypatch, mechanism, off, says):
    set_disable(monkeypatch, off)
    with burstio.BurstSocket.bind((V4, 0)) as s:
        with pytest.raises(OSError, match=re.escape(says)) as ei:
            s.busy_poll(10, mechanism=mechanism)
        assert ei.value.errno == errno.EOPNOTSUPP and "disabled by BURSTIO_DISABLE" in str(ei.value)
        assert s.busy_polling == "off"


@pytest.mark.parametrize("off, budget, prefer, option", [
    ("so_prefer_busy_poll", 8, True, "SO_PREFER_BUSY_POLL"),
    ("so_busy_poll_budget", 16, False, "SO_BUSY_POLL_BUDGET"),
])
def test_auto_takes_the_epoll_instance_for_what_the_socket_cannot_have(monkeypatch, off, budget, prefer, option):
    """prefer (or a budget other than the kernel's 8) where the socket option
    is missing: "auto" busy polls through an epoll instance, which takes it,
    and describe() says why; the socket keeps no option of it. Asked for the
    socket by name, the same is an error naming the option."""
    require_kernel("so_busy_poll")
    require_kernel("epoll_busy_poll")
    set_disable(monkeypatch, off)
    with burstio.BurstSocket.bind((V4, 0)) as s:
        assert s.busy_poll(20, budget, prefer) == "epoll"
        assert s._busy_poll is not None and s._busy_poll[1] is not None
        assert s._busy_poll[1].get_params() == EpollParams(20, budget, prefer)
        assert (f"prefer {'on' if prefer else 'off'} (auto: {option} is off here (disabled by BURSTIO_DISABLE): "
                "the epoll instance takes the parameters)") in s.describe()
        assert s.sock.getsockopt(socket.SOL_SOCKET, SO_BUSY_POLL) == 0
        assert s.busy_poll(20) == "socket"  # the kernel's budget, prefer off: the socket has all it needs
        with pytest.raises(OSError, match=f"busy polling through the socket: {option} is off here") as ei:
            s.busy_poll(20, budget, prefer, mechanism="socket")
        assert ei.value.errno == errno.EOPNOTSUPP and s.busy_polling == "off"
        assert s.sock.getsockopt(socket.SOL_SOCKET, SO_BUSY_POLL) == 0


def test_auto_without_the_option_or_an_epoll_instance_goes_on_without_it(monkeypatch):
    require_kernel("so_busy_poll")
    set_disable(monkeypatch, "so_prefer_busy_poll,epoll_busy_poll")
    with burstio.BurstSocket.bind((V4, 0)) as s:
        assert s.busy_poll(20, prefer=True) == "socket"
        assert s.describe().endswith("busy polling through the socket (SO_BUSY_POLL): 20 us, budget 8, prefer off "
                                     "(auto: SO_PREFER_BUSY_POLL is off here (disabled by BURSTIO_DISABLE): going "
                                     "on without it (no EPIOCSPARAMS either))")


def test_the_socket_mechanism_sets_its_options_and_busy_poll_0_clears_them():
    for name in ("so_busy_poll", "so_prefer_busy_poll", "so_busy_poll_budget"):
        require_kernel(name)  # (as root: the probe sets each)
    with burstio.BurstSocket.bind((V4, 0)) as s:
        assert s.busy_poll(30, 16, True) == "socket"
        assert s.sock.getsockopt(socket.SOL_SOCKET, SO_BUSY_POLL) == 30
        assert s.sock.getsockopt(socket.SOL_SOCKET, SO_PREFER_BUSY_POLL) == 1
        assert "budget 16, prefer on (auto: one socket" in s.describe()
        assert s.busy_poll(0) == "off"
        assert s.sock.getsockopt(socket.SOL_SOCKET, SO_BUSY_POLL) == 0
        assert s.sock.getsockopt(socket.SOL_SOCKET, SO_PREFER_BUSY_POLL) == 0


_WITHOUT_NET_ADMIN = """
import errno, socket
import burstio
from burstio import _busy_policy
s = burstio.BurstSocket.bind(("127.0.0.1", 0))
print(s.busy_poll(20))                    # the kernel's budget, prefer off: no privilege needed
print(s.busy_poll(20, 8, True))           # SO_PREFER_BUSY_POLL needs CAP_NET_ADMIN
print(s.describe())
try:
    s.busy_poll(20, 8, True, mechanism="socket")
except OSError as e:
    print("refused", e.errno == errno.EOPNOTSUPP, e.strerror)
class AllThere:                           # what a probe made with the capability would say
    def __getitem__(self, name):
        return True
refused = _busy_policy.set_socket_options(s.sock, AllThere(), 16, True)
print(sorted((k, errno.errorcode[e], why) for k, (e, why) in refused.items()))
try:
    _busy_policy.choose_for_socket(burstio.capabilities(), "socket", refused)
except PermissionError as e:
    print("explicit", e.strerror)
"""


def test_without_cap_net_admin_auto_busy_polls_through_the_epoll_instance():
    """Without CAP_NET_ADMIN the kernel refuses SO_PREFER_BUSY_POLL (and any
    SO_BUSY_POLL_BUDGET): "auto" takes the epoll instance, which needs no
    privilege for them, and says why; the socket asked for by name is an
    error; the kernel's own refusal (EPERM) is reported as such."""
    require_kernel("so_busy_poll")
    require_kernel("epoll_busy_poll")
    r = run_without_caps(["cap_net_admin"], _WITHOUT_NET_ADMIN)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["socket", "epoll"], r.stdout
    assert ("busy polling through the epoll instance (EPIOCSPARAMS): 20 us, budget 8, prefer on (auto: "
            "SO_PREFER_BUSY_POLL is off here") in lines[2] and "Operation not permitted" in lines[2]
    assert lines[3].startswith("refused True busy polling through the socket: SO_PREFER_BUSY_POLL is off")
    assert lines[4] == str([("budget", "EPERM", "SO_BUSY_POLL_BUDGET 16 needs CAP_NET_ADMIN (EPERM)"),
                            ("prefer", "EPERM", "SO_PREFER_BUSY_POLL 1 needs CAP_NET_ADMIN (EPERM)")])
    assert lines[5] == ("explicit busy polling through the socket: SO_BUSY_POLL_BUDGET 16 needs CAP_NET_ADMIN "
                        "(EPERM); SO_PREFER_BUSY_POLL 1 needs CAP_NET_ADMIN (EPERM) (mechanism='auto' takes the "
                        "epoll instance instead)")


# ---- SocketSet: the instance every socket's readiness comes through --------------------


@pytest.mark.parametrize("variant", [SOCKETSET["epoll"], SOCKETSET["uring"]], ids=["epoll", "uring"])
@pytest.mark.parametrize("mechanism", ["auto", "own"])
def test_socketset_busy_poll(variant, monkeypatch, mechanism):
    use_variant(variant, monkeypatch)
    own = "io_uring" if variant.expect == "uring" else "epoll"
    require_kernel("io_uring_napi" if own == "io_uring" else "epoll_busy_poll")
    asked = own if mechanism == "own" else "auto"
    with burstio.SocketSet(**variant.kwargs) as sset, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        s.bind((V4, 0))
        sset.add(s)
        how = sset.busy_poll(30, 16, True, mechanism=asked)
        assert how == own and sset.busy_polling == own
        what = "the io_uring (IORING_REGISTER_NAPI): 30 us" if own == "io_uring" else \
            "the epoll instance (EPIOCSPARAMS): 30 us, budget 16"
        assert sset.describe().endswith(f", busy polling through {what}, prefer on ({asked}: many sockets: the "
                                        "instance their readiness comes through)")
        if variant.expect == "epoll":
            raw = bytearray(8)
            fcntl.ioctl(sset._io.epoll_fd, EPIOCGPARAMS, raw)
            assert struct.unpack("IHBB", raw)[:3] == (30, 16, 1)
        b = burstio.PacketBatch(8, 256)
        tx.sendto(b"to the set", s.getsockname())
        assert sset.recv_batch(b, 5) == 1 and bytes(b[0]) == b"to the set"
        assert sset.busy_poll(0) == "off" and sset.busy_polling == "off" and "busy polling" not in sset.describe()
    with pytest.raises(TypeError, match="register_uring_napi needs an io_uring SocketSet"):
        busypoll.register_uring_napi(object(), 10)


@pytest.mark.parametrize("variant", [SOCKETSET["epoll"], SOCKETSET["uring"]], ids=["epoll", "uring"])
def test_socketset_refuses_what_it_cannot_busy_poll_through(variant, monkeypatch):
    """A set never waits in one socket's receive: "socket" is refused, saying
    why; so is the other backend's mechanism, and bad values."""
    use_variant(variant, monkeypatch)
    own, other = ("io_uring", "epoll") if variant.expect == "uring" else ("epoll", "io_uring")
    waits_in = "its io_uring" if own == "io_uring" else "its epoll instance"
    with burstio.SocketSet(**variant.kwargs) as sset:
        with pytest.raises(ValueError, match=re.escape(
                f"mechanism 'socket' does not fit a SocketSet (backend {variant.expect!r}): it waits in {waits_in} "
                "(a socket's own busy-poll options act only in a receive call that waits in that socket); it "
                f"takes 'auto' or {own!r}")):
            sset.busy_poll(10, mechanism="socket")
        with pytest.raises(ValueError, match=f"mechanism {other!r} does not fit a SocketSet"):
            sset.busy_poll(10, mechanism=other)
        with pytest.raises(TypeError, match="mechanism must be str, got bytes"):
            sset.busy_poll(10, mechanism=b"epoll")
        with pytest.raises(ValueError, match="usecs must be between 0 and 2147483647, got -1"):
            sset.busy_poll(-1)
        assert sset.busy_polling == "off"


@pytest.mark.parametrize("backend, off, needs", [
    ("epoll", "epoll_busy_poll", "busy polling through an epoll instance needs EPIOCSPARAMS (Linux >= 6.9)"),
    ("uring", "io_uring_napi", ("busy polling through an io_uring needs IORING_REGISTER_NAPI (Linux >= 6.9): "
                                "disabled by BURSTIO_DISABLE")),
], ids=["epoll", "uring"])
def test_socketset_without_its_mechanism_says_so(monkeypatch, backend, off, needs):
    if backend == "uring":
        require_kernel("io_uring")
    set_disable(monkeypatch, off)
    with burstio.SocketSet(backend=backend) as sset:
        with pytest.raises(OSError, match=re.escape(needs)) as ei:
            sset.busy_poll(10)
        assert ei.value.errno == errno.EOPNOTSUPP and sset.busy_polling == "off"
        if backend == "uring":
            assert sset.busy_poll(0) == "off"  # turning it off needs nothing


# ---- burstio.aio: the event loop's epoll instance ------------------------------------------


def _loop_params(loop: asyncio.AbstractEventLoop) -> tuple[int, int, int]:
    raw = bytearray(8)
    fcntl.ioctl(aio_busypoll.loop_epoll_fd(loop), EPIOCGPARAMS, raw)
    return struct.unpack("IHBB", raw)[:3]


class _Lost(asyncio.DatagramProtocol):
    """A protocol that records its connection's loss."""

    def __init__(self) -> None:
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def test_aio_transports_busy_poll_through_the_loops_epoll_instance():
    """On asyncio's loop, "auto" busy polls through the loop's epoll instance:
    the parameters are the loop's, the most recent transport's in force, and
    go when the last transport that asked stops or closes."""
    require_kernel("epoll_busy_poll")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        t1, p1 = await burstio.aio.create_datagram_endpoint(loop, _Lost, local_addr=(V4, 0))
        t2, _p2 = await burstio.aio.create_datagram_endpoint(loop, asyncio.DatagramProtocol, local_addr=(V4, 0))
        assert _loop_params(loop) == (0, 0, 0)
        assert t1.busy_poll(40, 16, True) == "epoll" and t1.busy_polling == "epoll"
        assert _loop_params(loop) == (40, 16, 1)
        assert t1.describe().endswith(", busy polling through the epoll instance (EPIOCSPARAMS): 40 us, budget 16, "
                                      "prefer on (auto: an event loop: its epoll instance, shared by every "
                                      "transport on it)")
        assert t2.busy_poll(20, mechanism="epoll") == "epoll"
        assert _loop_params(loop) == (20, 8, 0)  # the most recent call
        assert t2.busy_poll(0) == "off" and t2.busy_polling == "off"
        assert _loop_params(loop) == (40, 16, 1)  # t1's again
        t1.close()
        await p1.lost
        assert _loop_params(loop) == (0, 0, 0)  # the last one gone: no busy polling
        with pytest.raises(ValueError, match=re.escape(
                "mechanism 'socket' does not fit a burstio transport: it waits in its event loop's epoll instance")):
            t2.busy_poll(10, mechanism="socket")
        with pytest.raises(ValueError, match="mechanism 'io_uring' does not fit a burstio transport"):
            t2.busy_poll(10, mechanism="io_uring")
        t2.close()
        with pytest.raises(OSError, match="the transport is closing"):
            t2.busy_poll(10)

    run_on_loop("asyncio", scenario, 20)


def test_aio_busy_poll_where_the_loop_or_the_kernel_cannot(monkeypatch):
    """uvloop keeps its epoll instance (libuv's) out of reach, and without
    EPIOCSPARAMS there is nothing to set: OSError(EOPNOTSUPP) saying which."""
    async def scenario(expect: str) -> None:
        t, _p = await burstio.aio.create_datagram_endpoint(None, asyncio.DatagramProtocol, local_addr=(V4, 0))
        try:
            with pytest.raises(OSError, match=re.escape(expect)) as ei:
                t.busy_poll(10)
            assert ei.value.errno == errno.EOPNOTSUPP and t.busy_polling == "off"
        finally:
            t.close()

    run_on_loop("uvloop", lambda: scenario("Loop cannot give it: its epoll instance is libuv's, out of reach"), 20)
    set_disable(monkeypatch, "epoll_busy_poll")
    run_on_loop("asyncio", lambda: scenario("busy polling through an epoll instance needs EPIOCSPARAMS"), 20)
