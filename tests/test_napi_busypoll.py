"""burstio.napi.busypoll: per-epoll busy polling (EPIOCSPARAMS), the busy-poll
socket options, NAPI ids, and busy polling as BurstSocket and SocketSet use it.

The per-backend busy-poll contract of BurstSocket is in tests/test_udp.py. Nothing
here measures time.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import os
import select
import socket
import struct
import threading
from pathlib import Path

import pytest

import burstio
from burstio.napi import busypoll
from burstio.napi.busypoll import BusyPollEpoll, EpollParams, napi_id
from support.kernel import EPIOCGPARAMS, SO_BUSY_POLL, SO_PREFER_BUSY_POLL, require_kernel
from support.net import V4
from support.proc import wait_for
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
        assert rx.busy_poll(10) == "epoll"
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


@pytest.mark.parametrize("variant", [SOCKETSET["epoll"], SOCKETSET["uring"]], ids=["epoll", "uring"])
def test_socketset_busy_poll(variant, monkeypatch):
    require_kernel("epoll_busy_poll")
    use_variant(variant, monkeypatch)
    with burstio.SocketSet(**variant.kwargs) as sset, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        s.bind((V4, 0))
        sset.add(s)
        try:
            how = sset.busy_poll(30, 16, True)
        except OSError as e:  # IORING_REGISTER_NAPI missing: the message says which kernel
            pytest.skip(str(e))
        assert how == ("io_uring" if variant.expect == "uring" else "epoll")
        if variant.expect == "epoll":
            raw = bytearray(8)
            fcntl.ioctl(sset._io.epoll_fd, EPIOCGPARAMS, raw)
            assert struct.unpack("IHBB", raw)[:3] == (30, 16, 1)
        b = burstio.PacketBatch(8, 256)
        tx.sendto(b"to the set", s.getsockname())
        assert sset.recv_batch(b, 5) == 1 and bytes(b[0]) == b"to the set"
        assert sset.busy_poll(0) == "off"
    with pytest.raises(TypeError, match="register_uring_napi needs an io_uring SocketSet"):
        busypoll.register_uring_napi(object(), 10)
