"""Zero-copy send (burstio._zerocopy): buffer lifetimes, every backend, errors,
adaptive mode.

Each behaviour test runs against every variant of ``support.variants.ZEROCOPY``:
"uring" (io_uring SEND_ZC), "msg_zerocopy" (MSG_ZEROCOPY + error queue),
"copy" (the fallback, and the oracle), and "auto" with capabilities forced
off by BURSTIO_DISABLE, so that each fallback is what "auto" picks. Loopback
traffic is always copied by the kernel (it says so), which the adaptive
tests rely on; the ifb-sink test (root) shows the opposite.

Nothing here measures time: timeouts only bound how long a broken library
can make a test wait.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import burstio
from burstio._zerocopy import COPIED_STREAK, Completion
from burstio.bench.scenarios import zerocopy as zcbench
from support.kernel import SIOCINQ, SIOCOUTQ, require_kernel
from support.net import HOSTS, V4, force_rcvbuf, force_sndbuf, pattern, recv_exactly, slow_namespace, socket_in
from support.proc import subprocess_env, wait_for
from support.variants import ZEROCOPY, Variant, set_disable, unmet_need, use_variant, variant_fixture

# ---- the variants -----------------------------------------------------------------

#: the variants that send with zero copy (each mechanism asked for by name)
ZEROCOPY_ONLY = {n: v for n, v in ZEROCOPY.items() if v.expect != "copy" and v.backend != "auto"}

variant = variant_fixture(ZEROCOPY)
zc_variant = variant_fixture(ZEROCOPY_ONLY)


def is_zerocopy(v: Variant) -> bool:
    """Whether the variant's sender sends with zero copy."""
    return v.expect != "copy"


# ---- sockets ----------------------------------------------------------------------

@pytest.fixture
def closing():
    """Register things to close at the end of the test (senders first)."""
    things: list = []
    yield things.append
    for t in reversed(things):
        with contextlib.suppress(OSError):
            t.close()


def udp_receiver(closing, family=socket.AF_INET) -> socket.socket:
    if family == socket.AF_INET6:
        require_kernel("ipv6")
    rx = socket.socket(family, socket.SOCK_DGRAM)
    closing(rx)
    force_rcvbuf(rx)
    rx.bind((HOSTS[family], 0))
    rx.settimeout(2.0)
    return rx


def udp_sender_socket(closing, family=socket.AF_INET) -> socket.socket:
    tx = socket.socket(family, socket.SOCK_DGRAM)
    closing(tx)
    return tx


def tcp_pair(closing, rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """(client, server side) of a loopback TCP connection."""
    lsn = socket.socket()
    closing(lsn)
    if rcvbuf:
        lsn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    lsn.bind((V4, 0))
    lsn.listen(1)
    cli = socket.create_connection(lsn.getsockname())
    closing(cli)
    srv, _ = lsn.accept()
    closing(srv)
    return cli, srv


def stalled_tcp_pair(closing, blocking: bool = False) -> tuple[socket.socket, socket.socket]:
    """A TCP pair whose peer does not read, with small buffers: a 64 KiB
    send cannot all be taken by the kernel (the repro of short writes)."""
    cli, srv = tcp_pair(closing, rcvbuf=4096)
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    cli.setblocking(blocking)
    return cli, srv


def sender(closing, sock, variant: Variant, **kw) -> burstio.ZeroCopySender:
    """A ZeroCopySender of ``variant`` (mode "always" unless said), closed after the test."""
    kw.setdefault("mode", "always")
    s = burstio.ZeroCopySender(sock, kw.pop("pool", None) or burstio.ZeroCopyPool(8, 65536),
                               **variant.kwargs, **kw)
    closing(s)
    assert s.backend == variant.expect
    return s


# ---- every backend: data, counters, buffer states ----------------------------------

@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_udp_sends_arrive_as_written(variant, closing, family):
    rx = udp_receiver(closing, family)
    zs = sender(closing, udp_sender_socket(closing, family), variant)
    sent = []
    for i in range(6):
        buf = zs.acquire()
        payload = pattern(1000 + 3000 * i, seed=i)
        n = buf.write(payload)
        c = zs.send(buf, n, rx.getsockname())
        assert isinstance(c, Completion)
        sent.append((c, payload))
    for c, payload in sent:
        assert c.wait(2.0) == len(payload)
        assert c.result == len(payload)
        assert rx.recv(70000) == payload
    assert zs.pool.free == zs.pool.buffers  # every buffer came back
    k = zs.counters
    assert k["sends"] == 6 and k["errors"] == 0
    assert k["bytes"] == sum(len(p) for _, p in sent)
    if is_zerocopy(variant):
        assert k["zerocopy_sends"] == k["notifications"] == 6 and k["copy_sends"] == 0
        assert k["copied_notifications"] == 6  # loopback: the kernel copies, and says so
        assert all(c.zerocopy and c.copied for c, _ in sent)
    else:
        assert k["copy_sends"] == 6 and k["zerocopy_sends"] == k["notifications"] == 0
        assert not any(c.zerocopy or c.copied for c, _ in sent)


def test_tcp_stream_arrives_in_order(variant, closing):
    cli, srv = tcp_pair(closing)
    zs = sender(closing, cli, variant, pool=burstio.ZeroCopyPool(4, 65536))
    payloads = [pattern(65536 if i % 3 else 17000, seed=i) for i in range(10)]
    total = sum(map(len, payloads))
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(recv_exactly(srv, total)), daemon=True)
    reader.start()
    completions = []
    for p in payloads:
        buf = zs.acquire(5.0)  # four buffers: later ones wait for the kernel to give one back
        completions.append(zs.send(buf, buf.write(p)))
    assert [c.wait(5.0) for c in completions] == [len(p) for p in payloads]
    reader.join(10)
    assert got == [b"".join(payloads)]
    assert zs.pool.free == 4
    k = zs.counters
    assert k["bytes"] == total and k["errors"] == 0
    assert k["zerocopy_sends" if is_zerocopy(variant) else "copy_sends"] == 10


def test_send_and_wait_returns_bytes_and_the_buffer(variant, closing):
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), variant)
    buf = zs.acquire()
    n = buf.write(b"hello zero copy")
    assert zs.send_and_wait(buf, n, rx.getsockname(), timeout=2.0) == n
    assert rx.recv(100) == b"hello zero copy"
    assert buf.state == "returned" and zs.in_flight == 0 and zs.pool.free == zs.pool.buffers


def test_send_and_wait_takes_its_timeout_by_position_too(variant, closing):
    """The documented signature: send_and_wait(buf, length=None, addr=None, timeout=None)."""
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), variant)
    buf = zs.acquire()
    assert zs.send_and_wait(buf, buf.write(b"positional"), rx.getsockname(), 2.0) == 10
    assert rx.recv(100) == b"positional"


def test_buffer_lifecycle_owned_in_flight_returned(variant, closing):
    """A TCP peer that does not read keeps the send unfinished on every
    backend (zero copy: the kernel holds the pages; copy: it has not taken
    all the bytes), so the in-flight state lasts until the peer reads."""
    cli, srv = stalled_tcp_pair(closing)
    zs = sender(closing, cli, variant)
    buf = zs.acquire()
    assert buf.state == "owned" and zs.pool.owned == 1
    with memoryview(buf) as mv:
        assert len(mv) == 65536 and not mv.readonly
        mv[:] = pattern(65536)
    c = zs.send(buf)
    assert buf.state == "in_flight" and zs.pool.in_flight == 1 and not c.done()
    with pytest.raises(BufferError, match=r"^buffer \d+ is in flight: the kernel may still read it; "
                                          r"wait for its completion$"):
        memoryview(buf)
    with pytest.raises(BufferError, match="in flight"):
        buf.write(b"x")
    with pytest.raises(BufferError, match="in flight"):
        zs.send(buf, 4)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(recv_exactly(srv, 65536)), daemon=True)
    reader.start()  # the peer reads while the sender goes on (in wait)
    assert c.wait(5.0) == 65536
    reader.join(5)
    assert got == [pattern(65536)]
    assert buf.state == "returned"
    with pytest.raises(BufferError, match=r"^buffer \d+ was returned to the pool; acquire\(\) another$"):
        memoryview(buf)
    with pytest.raises(BufferError, match="returned to the pool"):
        bytes(buf)


def test_dropping_an_unsent_buffer_returns_it(variant, closing):
    zs = sender(closing, udp_sender_socket(closing), variant, pool=burstio.ZeroCopyPool(2, 4096))
    a = zs.acquire()
    b = zs.acquire()
    assert zs.pool.free == 0
    with pytest.raises(BufferError, match=r"none of the pool's 2 buffers is free or in flight"):
        zs.acquire(0.1)
    del a
    assert zs.pool.free == 1
    assert zs.acquire().state == "owned"
    del b


def test_send_refuses_a_buffer_with_open_views(variant, closing):
    np = pytest.importorskip("numpy")
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), variant)
    buf = zs.acquire()
    mv = memoryview(buf)
    arr = np.frombuffer(buf, dtype=np.uint8)
    arr2 = arr[:10]  # shares arr's export
    assert buf.views == 2
    with pytest.raises(BufferError, match=r"^buffer \d+ has 2 views still open \(memoryview, array\): "
                                          r"release them before send\(\)$"):
        zs.send(buf, 10, rx.getsockname())
    mv.release()
    with pytest.raises(BufferError, match=r"has 1 view still open .*release it before send"):
        zs.send(buf, 10, rx.getsockname())
    arr2[:] = 7
    del arr, arr2
    assert buf.views == 0
    assert zs.send_and_wait(buf, 10, rx.getsockname(), timeout=2.0) == 10
    assert rx.recv(100) == b"\x07" * 10


# ---- a buffer the kernel really holds ------------------------------------------------

def test_buffer_stays_out_of_the_pool_until_the_kernel_is_done(zc_variant, closing):
    """TCP to a peer that does not read: the data cannot be acknowledged,
    so the kernel keeps the buffers and acquire() must not return them."""
    cli, srv = tcp_pair(closing, rcvbuf=4096)
    force_sndbuf(cli, 4 << 20)  # room to queue both sends
    zs = sender(closing, cli, zc_variant, pool=burstio.ZeroCopyPool(2, 65536))
    data = [pattern(65536, seed=s) for s in (1, 2)]
    completions = []
    for p in data:
        buf = zs.acquire()
        completions.append(zs.send(buf, buf.write(p)))
    with pytest.raises(TimeoutError, match=r"no buffer came back from the kernel within 0.2 s \(2 in flight\)"):
        zs.acquire(0.2)
    assert zs.pool.in_flight == 2 and not completions[1].done()
    with pytest.raises(TimeoutError, match="still in flight"):
        completions[1].wait(0.05)
    got = recv_exactly(srv, 2 * 65536)  # now the peer reads: ACKs free the data
    assert got == b"".join(data)
    assert [c.wait(5.0) for c in completions] == [65536, 65536]
    assert zs.acquire(5.0).state == "owned"


def test_await_does_not_block_the_event_loop(zc_variant, closing):
    cli, srv = tcp_pair(closing, rcvbuf=4096)
    force_sndbuf(cli, 4 << 20)
    srv.setblocking(False)
    zs = sender(closing, cli, zc_variant, pool=burstio.ZeroCopyPool(3, 65536))
    data = [pattern(65536, seed=s) for s in (3, 4, 5)]

    async def main():
        loop = asyncio.get_running_loop()
        completions = []
        for p in data:
            buf = zs.acquire()
            completions.append(zs.send(buf, buf.write(p)))
        waiting = asyncio.gather(*completions)  # several awaits on one sender
        got = bytearray()
        while len(got) < 3 * 65536:  # the loop keeps running: the peer reads here
            got += await asyncio.wait_for(loop.sock_recv(srv, 65536), 5)
        return await asyncio.wait_for(waiting, 5), bytes(got)

    results, got = asyncio.run(main())
    assert results == [65536] * 3 and got == b"".join(data)


def test_await_a_finished_completion(variant, closing):
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), variant)
    buf = zs.acquire()
    c = zs.send(buf, buf.write(b"x" * 20000), rx.getsockname())
    assert asyncio.run(asyncio.wait_for(c, 5)) == 20000
    assert asyncio.run(asyncio.wait_for(c, 5)) == 20000  # awaiting again gives the same


# ---- TCP: send() never blocks, the byte stream never has a gap ------------------------

@contextlib.contextmanager
def must_not_block(what: str, limit: float = 5.0):
    """Fail (instead of hanging) if the body is still running after `limit`
    seconds: a SIGALRM handler raises, which interrupts a wait in C."""
    def on_alarm(signum, frame):
        raise AssertionError(f"{what} blocked (still running after {limit} s)")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def send_all(zs, payloads) -> list:
    bufs = [zs.acquire() for _ in payloads]
    with must_not_block("send()"):
        return [zs.send(b, b.write(p)) for b, p in zip(bufs, payloads, strict=True)]


def ioctl_int(sock: socket.socket, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]


@pytest.mark.parametrize("blocking", [False, True], ids=["nonblocking", "blocking"])
def test_stream_sends_never_block_and_leave_no_gap(variant, closing, blocking):
    cli, srv = stalled_tcp_pair(closing, blocking)
    zs = sender(closing, cli, variant, pool=burstio.ZeroCopyPool(4, 65536))
    payloads = [pattern(65536, seed=i) for i in range(4)]
    completions = send_all(zs, payloads)
    # the peer reads nothing: no send can be complete, none is short
    assert not any(c.done() for c in completions)
    assert all(c.result is None for c in completions)
    assert zs.in_flight == 4 and zs.pool.in_flight == 4
    assert 0 < zs.counters["bytes"] < 65536  # part of the first send only
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(recv_exactly(srv, 4 * 65536)), daemon=True)
    reader.start()
    assert [c.wait(10.0) for c in completions] == [65536] * 4
    reader.join(10)
    assert got == [b"".join(payloads)]
    k = zs.counters
    assert k["bytes"] == 4 * 65536 and k["errors"] == 0 and k["sends"] == 4
    assert zs.pool.free == 4 and zs.in_flight == 0


def test_stream_sends_under_asyncio(variant, closing):
    """The repro: a non-blocking socket as asyncio has it, a peer that
    reads only when the loop runs. Every backend must go on by itself as
    the peer reads (the completion descriptor wakes the loop)."""
    cli, srv = stalled_tcp_pair(closing)
    srv.setblocking(False)
    zs = sender(closing, cli, variant, pool=burstio.ZeroCopyPool(4, 65536))
    payloads = [pattern(65536, seed=10 + i) for i in range(4)]

    async def main():
        loop = asyncio.get_running_loop()
        completions = send_all(zs, payloads)
        waiting = asyncio.gather(*completions)
        got = bytearray()
        while len(got) < 4 * 65536:
            got += await asyncio.wait_for(loop.sock_recv(srv, 65536), 5)
        return await asyncio.wait_for(waiting, 5), bytes(got)

    results, got = asyncio.run(main())
    assert results == [65536] * 4 and got == b"".join(payloads)


def test_a_stream_that_fails_part_way(variant, closing):
    """The peer resets the connection while the first send is part way:
    that send reports the errno and how far it got, the sends queued
    behind it are not made, and neither is any later one."""
    cli, srv = stalled_tcp_pair(closing)
    zs = sender(closing, cli, variant, pool=burstio.ZeroCopyPool(4, 65536))
    first, *queued = send_all(zs, [pattern(65536, seed=20 + i) for i in range(3)])
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    srv.close()  # RST
    with pytest.raises(OSError) as e:
        first.wait(5.0)
    assert e.value.errno in (errno.ECONNRESET, errno.EPIPE), e.value
    assert 0 < first.result < 65536 and e.value.sent == first.result
    assert first.error == e.value.errno
    for c in queued:
        with pytest.raises(OSError, match=r"not sent: an earlier send on this stream failed") as e:
            c.wait(5.0)
        assert e.value.errno == errno.ECANCELED and c.result == -errno.ECANCELED and not c.cancelled
    buf = zs.acquire(5.0)
    later = zs.send(buf, buf.write(b"more"))
    assert later.done()
    with pytest.raises(OSError, match=r"not sent: an earlier send on this stream failed"):
        later.wait(0)
    assert zs.counters["bytes"] == first.result
    assert zs.counters["errors"] == 4
    assert [zs.acquire(5.0) for _ in range(4)]  # every buffer came back
    assert zs.pool.lost == 0


def test_closing_returns_sends_the_kernel_never_saw(variant, closing):
    """close(0) on a stalled stream: the send part way may still be read
    by the kernel (lost, if zero copy); the ones queued behind it never
    reached it, so their buffers go back to the pool."""
    cli, srv = stalled_tcp_pair(closing)
    pool = burstio.ZeroCopyPool(4, 65536)
    zs = sender(closing, cli, variant, pool=pool)
    first, *queued = send_all(zs, [pattern(65536, seed=30 + i) for i in range(4)])
    zs.close(timeout=0)
    assert all(c.done() and c.cancelled for c in [first, *queued])
    assert 0 < first.result < 65536 and all(c.result is None for c in queued)
    with pytest.raises(OSError) as e:
        first.wait()
    assert e.value.errno == errno.ECANCELED and e.value.sent == first.result
    assert pool.lost == (1 if is_zerocopy(variant) else 0)
    assert pool.free == 4 - pool.lost


# ---- signals and threads while waiting ------------------------------------------------

def _stuck_send(closing, zc_variant):
    """A sender whose only buffer the kernel keeps (the TCP peer does not read)."""
    cli, srv = tcp_pair(closing, rcvbuf=4096)
    force_sndbuf(cli, 4 << 20)
    zs = sender(closing, cli, zc_variant, pool=burstio.ZeroCopyPool(1, 65536))
    buf = zs.acquire()
    return zs, zs.send(buf, buf.write(pattern(65536))), srv


def test_a_signal_handler_runs_during_a_wait_and_may_raise(zc_variant, closing):
    import signal
    zs, c, srv = _stuck_send(closing, zc_variant)
    calls = []

    def handler(signum, frame):
        calls.append(signum)
        if len(calls) == 3:
            raise KeyboardInterrupt("from the handler")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    try:
        with pytest.raises(KeyboardInterrupt, match="from the handler"):
            c.wait()  # handlers that return let the wait go on (PEP 475)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(calls) == 3 and not c.done()
    recv_exactly(srv, 65536)
    assert c.wait(5.0) == 65536  # the sender is still usable


def test_a_second_thread_is_told_the_sender_is_busy(zc_variant, closing):
    zs, c, srv = _stuck_send(closing, zc_variant)
    errors = []
    waiter = threading.Thread(target=lambda: errors.append(_wait_or_error(c)), daemon=True)
    waiter.start()
    assert wait_for(lambda: _busy(zs), 5.0)  # the waiter is in the kernel
    with pytest.raises(RuntimeError, match=r"^ZeroCopySender is in use by another call"):
        zs.poll()
    recv_exactly(srv, 65536)
    waiter.join(5)
    assert errors == [65536]


@pytest.mark.parametrize("call", ["send_and_wait", "acquire", "Completion.wait"])
def test_close_from_another_thread_wakes_a_waiting_call(variant, closing, call):
    """close() in another thread while a call waits for the kernel (a send
    the stalled TCP peer keeps part way, or held for its notification; no
    buffer free) returns at once, and the waiting call ends at once with
    OSError(EBADF, "... closed while waiting"). What is in flight is given
    up as close(0) gives it up: a buffer the kernel may still read is lost
    (never reused), the others go back to the pool, and the Completion is
    cancelled. Every later call says the sender is closed."""
    from support.kernel import require_syscall_introspection, thread_blocked_in_syscall
    require_syscall_introspection()
    cli, srv = stalled_tcp_pair(closing)
    pool = burstio.ZeroCopyPool(1, 65536)
    zs = sender(closing, cli, variant, pool=pool)
    buf = zs.acquire()
    n = buf.write(pattern(65536))
    pending = [] if call == "send_and_wait" else [zs.send(buf, n)]
    tid: list[int] = []
    outcome: list = []

    def waiter() -> None:
        tid.append(threading.get_native_id())
        try:
            if call == "send_and_wait":
                outcome.append(zs.send_and_wait(buf, n))
            elif call == "acquire":
                outcome.append(zs.acquire())
            else:
                outcome.append(pending[0].wait())
        except OSError as e:
            outcome.append(e)
    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    assert wait_for(lambda: bool(tid) and thread_blocked_in_syscall(tid[0]), 10)
    zs.close()  # no RuntimeError: the waiter is woken instead
    t.join(10)
    late = t.is_alive()
    if late:  # not woken: let the send finish so that the thread ends, and fail
        recv_exactly(srv, 65536)
        t.join(10)
    assert not late, "close() did not wake the waiting call"
    assert len(outcome) == 1 and isinstance(outcome[0], OSError), outcome
    assert outcome[0].errno == errno.EBADF and "closed while waiting" in str(outcome[0])
    assert zs.closed
    assert pool.lost == (1 if is_zerocopy(variant) else 0)  # the kernel may still read it
    assert pool.free == 1 - pool.lost
    for c in pending:
        assert c.done() and c.cancelled
    with pytest.raises(OSError) as e:
        zs.acquire(0)
    assert e.value.errno == errno.EBADF and e.value.strerror == "the ZeroCopySender is closed"
    zs.close()  # again: nothing to do


@pytest.fixture(scope="module")
def crawling_netns():
    """A network namespace whose loopback drains through tbf at 8 kbit/s: a
    3000-byte datagram there takes 3 s to leave, so a blocking UDP socket
    with a small SO_SNDBUF is full after two, and a zero-copy notification
    waits as long."""
    with slow_namespace("zerocopy-test", rate="8kbit") as ns:
        yield ns


def test_close_from_another_thread_wakes_a_udp_send_waiting_for_room(variant, closing, crawling_netns):
    """send_and_wait on a blocking UDP socket whose send buffer is full (the
    copy and MSG_ZEROCOPY backends wait for room; io_uring and MSG_ZEROCOPY
    also wait for the notification): close() in another thread ends the
    wait at once with OSError(EBADF, "... closed while waiting")."""
    from support.kernel import require_syscall_introspection, thread_blocked_in_syscall
    require_syscall_introspection()
    rx = socket_in(crawling_netns)
    closing(rx)
    tx = socket_in(crawling_netns, sndbuf=4096)
    closing(tx)
    zs = sender(closing, tx, variant, pool=burstio.ZeroCopyPool(4, 4096))
    tid: list[int] = []
    outcome: list = []

    def waiter() -> None:
        tid.append(threading.get_native_id())
        try:
            for _ in range(8):
                buf = zs.acquire()
                outcome.append(zs.send_and_wait(buf, buf.write(bytes(3000)), rx.getsockname()))
        except OSError as e:
            outcome.append(e)
    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    assert wait_for(lambda: bool(tid) and thread_blocked_in_syscall(tid[0]), 10)
    zs.close()
    t.join(10)
    late = t.is_alive()
    t.join(60)  # (a build that is not woken ends when the datagrams have left)
    assert not late, "close() did not wake the waiting send"
    assert outcome and isinstance(outcome[-1], OSError), outcome
    assert outcome[-1].errno == errno.EBADF and "closed while waiting" in str(outcome[-1])
    assert zs.closed


def _wait_or_error(c):
    try:
        return c.wait(5.0)
    except Exception as e:  # noqa: BLE001 - reported to the test
        return e


def _busy(zs) -> bool:
    try:
        zs.poll()
    except RuntimeError:
        return True
    return False


# ---- errors ---------------------------------------------------------------------------

def test_send_to_a_closed_tcp_peer_fails_through_the_completion(variant, closing):
    cli, srv = tcp_pair(closing)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    srv.close()  # RST
    zs = sender(closing, cli, variant, pool=burstio.ZeroCopyPool(2, 65536))
    err = None
    for _ in range(20):
        buf = zs.acquire(2.0)
        c = zs.send(buf, buf.write(b"y" * 30000))
        try:
            c.wait(2.0)
        except OSError as e:
            err = e
            break
    assert err is not None and err.errno in (errno.EPIPE, errno.ECONNRESET), err
    assert c.result == -err.errno and c.done()
    assert zs.counters["errors"] >= 1
    held = [zs.acquire(2.0) for _ in range(2)]  # a failed send gives its buffer back too
    assert len(held) == 2


def test_udp_datagram_too_long_fails_through_the_completion(variant, closing):
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), variant)
    buf = zs.acquire()
    c = zs.send(buf, 65536, rx.getsockname())  # > 65507: no UDP datagram that long
    with pytest.raises(OSError) as e:
        c.wait(2.0)
    assert e.value.errno == errno.EMSGSIZE
    assert c.result == -errno.EMSGSIZE and not c.copied
    assert zs.counters["errors"] == 1 and zs.counters["copied_notifications"] == 0
    assert zs.pool.free == zs.pool.buffers


def test_argument_errors(variant, closing):
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), variant, pool=burstio.ZeroCopyPool(2, 1024))
    buf = zs.acquire()
    with pytest.raises(TypeError, match=r"^send\(\) argument 'buf' must be burstio.ZeroCopyBuffer, not bytes$"):
        zs.send(b"data")
    with pytest.raises(ValueError, match=r"^length must be between 0 and 1024, got 2000$"):
        zs.send(buf, 2000, rx.getsockname())
    with pytest.raises(ValueError, match=r"got -1$"):
        zs.send(buf, -1, rx.getsockname())
    with pytest.raises(TypeError, match=r"^length must be int or None, got str$"):
        zs.send(buf, "10")
    with pytest.raises(TypeError, match=r"^send\(\) missing required argument 'buf' \(pos 1\)$"):
        zs.send()
    with pytest.raises(TypeError, match=r"^send\(\) got an unexpected keyword argument 'size'$"):
        zs.send(buf, size=3)
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds or None, got str$"):
        zs.acquire("soon")
    with pytest.raises(ValueError, match=r"^timeout must be >= 0 or None, got -1$"):
        zs.acquire(-1)
    with pytest.raises(ValueError, match=r"^1500 bytes at offset 0 do not fit the buffer's 1024 bytes$"):
        buf.write(b"z" * 1500)
    with pytest.raises(ValueError, match=r"^10 bytes at offset 1020 do not fit"):
        buf.write(b"z" * 10, 1020)
    with pytest.raises(TypeError):
        buf.write(12)
    other = burstio.ZeroCopyPool(1, 1024)
    with pytest.raises(TypeError, match="cannot create"):
        burstio.ZeroCopyBuffer()
    other_sender = burstio.ZeroCopySender(udp_sender_socket(closing), other, backend="copy")
    closing(other_sender)
    with pytest.raises(ValueError, match=r"^the buffer belongs to another pool than this sender's$"):
        zs.send(other_sender.acquire(), 1, rx.getsockname())
    assert buf.state == "owned"  # refused sends leave it as it was
    assert zs.send_and_wait(buf, 3, rx.getsockname(), timeout=2) == 3


def test_constructor_errors(closing, monkeypatch):
    set_disable(monkeypatch, "")
    udp = udp_sender_socket(closing)
    with pytest.raises(TypeError, match=r"^sock must be a socket.socket or BurstSocket, got int$"):
        burstio.ZeroCopySender(3)
    with pytest.raises(ValueError, match=r"^mode must be one of 'adaptive', 'always', 'never', got 'fast'$"):
        burstio.ZeroCopySender(udp, mode="fast")
    with pytest.raises(ValueError, match=r"^backend must be one of 'auto', 'uring', 'msg_zerocopy', 'copy', "
                                         r"got 'dpdk'$"):
        burstio.ZeroCopySender(udp, backend="dpdk")
    with pytest.raises(TypeError, match=r"^pool must be a burstio.ZeroCopyPool, got bytearray$"):
        burstio.ZeroCopySender(udp, bytearray(10))
    with pytest.raises(TypeError, match=r"^min_size must be int, got float$"):
        burstio.ZeroCopySender(udp, min_size=1.5)
    with pytest.raises(ValueError, match=r"^segment_size must be between 1 and 65507, got 0$"):
        burstio.ZeroCopySender(udp, segment_size=0)
    cli, _srv = tcp_pair(closing)
    with pytest.raises(ValueError, match=r"^segment_size is for UDP sockets"):
        burstio.ZeroCopySender(cli, segment_size=1400)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    closing(unix)
    with pytest.raises(ValueError, match=r"needs an AF_INET or AF_INET6 socket"):
        burstio.ZeroCopySender(unix)
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.close()
    with pytest.raises(OSError) as e:
        burstio.ZeroCopySender(closed)
    assert e.value.errno == errno.EBADF
    pool = burstio.ZeroCopyPool(1, 1024)
    first = burstio.ZeroCopySender(udp, pool, backend="copy")
    with pytest.raises(ValueError, match=r"^this ZeroCopyPool is used by another open ZeroCopySender"):
        burstio.ZeroCopySender(udp, pool, backend="copy")
    first.close()
    burstio.ZeroCopySender(udp, pool, backend="copy").close()  # free again once closed
    with pytest.raises(ValueError, match=r"^buffers must be between 1 and 16384, got 0$"):
        burstio.ZeroCopyPool(0)
    with pytest.raises(ValueError, match=r"^buffer_size must be between 1 and 1073741824, got 0$"):
        burstio.ZeroCopyPool(4, 0)


def test_addr_on_tcp_is_refused(variant, closing):
    cli, _srv = tcp_pair(closing)
    zs = sender(closing, cli, variant)
    buf = zs.acquire()
    with pytest.raises(ValueError, match=r"^addr is for UDP sockets; a TCP socket sends to its connected peer$"):
        zs.send(buf, 1, (V4, 9))
    assert buf.state == "owned"


@pytest.mark.parametrize("disable, backend_name, why", [
    ("io_uring_send_zc", "uring", "backend 'uring' needs io_uring SEND_ZC: disabled by BURSTIO_DISABLE"),
    ("so_zerocopy", "msg_zerocopy", "backend 'msg_zerocopy' needs SO_ZEROCOPY: disabled by BURSTIO_DISABLE"),
])
def test_a_requested_backend_that_is_off_is_refused(closing, monkeypatch, disable, backend_name, why):
    set_disable(monkeypatch, disable)
    with pytest.raises(OSError) as e:
        burstio.ZeroCopySender(udp_sender_socket(closing), backend=backend_name)
    assert e.value.errno == errno.EOPNOTSUPP and e.value.strerror == why


def test_closed_sender(variant, closing):
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), variant)
    buf = zs.acquire()
    zs.close()
    zs.close()  # twice is fine
    assert zs.closed and not zs.pool.in_use
    for call in (zs.acquire, zs.poll, lambda: zs.send(buf, 1, rx.getsockname())):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EBADF and e.value.strerror == "the ZeroCopySender is closed"


def test_closing_with_buffers_in_flight_cancels_them(zc_variant, closing):
    cli, srv = tcp_pair(closing, rcvbuf=4096)
    force_sndbuf(cli, 4 << 20)
    pool = burstio.ZeroCopyPool(2, 65536)
    zs = sender(closing, cli, zc_variant, pool=pool)
    buf = zs.acquire()
    c = zs.send(buf, buf.write(pattern(65536)))
    zs.close(timeout=0.1)  # the peer does not read: still in flight
    assert c.done() and c.cancelled
    with pytest.raises(OSError) as e:
        c.wait()
    assert e.value.errno == errno.ECANCELED
    assert pool.lost == 1 and pool.free == 1  # never reused: the kernel may still read it
    with pytest.raises(BufferError, match="in flight"):
        memoryview(buf)
    recv_exactly(srv, 65536)


def _released_but_not_processed(closing, zc_variant):
    """A sender with one zero-copy send that the kernel has released, with
    nothing having processed that yet. The peer's window is full when the
    send is made, so the kernel keeps its pages; then the peer reads it all
    and acknowledges, and the completion descriptor becomes readable. (Not
    registered with `closing`: the caller closes the sender, or drops it.)"""
    cli, srv = tcp_pair(closing, rcvbuf=4096)
    force_sndbuf(cli, 4 << 20)  # the kernel takes it all
    cli.sendall(pattern(65536, seed=1))  # fills the peer's window; the rest waits in the kernel
    pool = burstio.ZeroCopyPool(2, 65536)
    zs = burstio.ZeroCopySender(cli, pool, **zc_variant.kwargs, mode="always")
    buf = zs.acquire()
    c = zs.send(buf, buf.write(pattern(20000)))
    assert recv_exactly(srv, 65536 + 20000) == pattern(65536, seed=1) + pattern(20000)
    fd = zs._io.completion_fd
    assert select.select([fd], [], [], 5.0)[0] == [fd]
    assert c.sender is not None  # not processed: still pending as far as Python knows
    return zs, c, pool


def _assert_completed_not_cancelled(c, pool):
    assert c.done() and not c.cancelled
    assert c.wait(0) == 20000 and c.result == 20000
    assert pool.lost == 0 and pool.free == pool.buffers and not pool.in_use


def test_close_without_waiting_keeps_what_the_kernel_released(zc_variant, closing):
    zs, c, pool = _released_but_not_processed(closing, zc_variant)
    zs.close(timeout=0)
    _assert_completed_not_cancelled(c, pool)


def test_a_garbage_collected_sender_keeps_what_the_kernel_released(zc_variant, closing):
    zs, c, pool = _released_but_not_processed(closing, zc_variant)
    del zs
    gc.collect()
    _assert_completed_not_cancelled(c, pool)


def test_a_burstsocket_is_accepted(closing, monkeypatch):
    set_disable(monkeypatch, "")
    rx = udp_receiver(closing)
    bs = burstio.BurstSocket.bind((V4, 0))
    closing(bs)
    zs = burstio.ZeroCopySender(bs, mode="never")
    closing(zs)
    buf = zs.acquire()
    assert zs.send_and_wait(buf, buf.write(b"via BurstSocket"), rx.getsockname()) == 15
    assert rx.recvfrom(100) == (b"via BurstSocket", bs.getsockname())


def test_the_sender_keeps_its_own_descriptor(closing, monkeypatch):
    use_variant(ZEROCOPY["copy"], monkeypatch)
    rx = udp_receiver(closing)
    tx = udp_sender_socket(closing)
    zs = sender(closing, tx, ZEROCOPY["copy"])
    tx.close()  # the caller's descriptor: the sender's dup still works
    buf = zs.acquire()
    assert zs.send_and_wait(buf, buf.write(b"still here"), rx.getsockname()) == 10


# ---- policy: adaptive, always, never ---------------------------------------------------

def test_adaptive_switches_off_when_the_kernel_keeps_copying(zc_variant, closing, caplog):
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), zc_variant, mode="adaptive")
    assert zs.zerocopy
    caplog.set_level(logging.WARNING, logger="burstio")
    results = []
    for i in range(COPIED_STREAK + 5):
        buf = zs.acquire()
        c = zs.send(buf, buf.write(pattern(20000, seed=i)), rx.getsockname())
        c.wait(2.0)
        results.append(c)
    k = zs.counters
    assert k["zerocopy_disabled"] == 1 and not zs.zerocopy
    assert k["zerocopy_sends"] == k["copied_notifications"] == COPIED_STREAK
    assert k["copy_sends"] == 5
    assert [c.zerocopy for c in results] == [True] * COPIED_STREAK + [False] * 5
    warnings = [r for r in caplog.records if r.name == "burstio"]
    assert len(warnings) == 1 and "zero copy switched off" in warnings[0].getMessage()
    assert "switched off" in zs.describe()
    for _ in range(COPIED_STREAK + 5):
        assert rx.recv(70000)


def test_adaptive_copies_small_sends(zc_variant, closing):
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), zc_variant, mode="adaptive", min_size=4096)
    small, big = zs.acquire(), zs.acquire()
    c_small = zs.send(small, 4095, rx.getsockname())
    c_big = zs.send(big, 4096, rx.getsockname())
    assert (c_small.wait(2), c_big.wait(2)) == (4095, 4096)
    assert not c_small.zerocopy and c_big.zerocopy
    assert zs.counters["copy_sends"] == 1 and zs.counters["zerocopy_sends"] == 1


def test_always_keeps_zero_copy_and_never_copies(zc_variant, closing):
    rx = udp_receiver(closing)
    always = sender(closing, udp_sender_socket(closing), zc_variant, mode="always")
    never = sender(closing, udp_sender_socket(closing), zc_variant, mode="never")
    for _ in range(COPIED_STREAK + 2):
        for zs in (always, never):
            buf = zs.acquire()
            zs.send(buf, 100, rx.getsockname()).wait(2)
    assert always.counters["zerocopy_sends"] == always.counters["copied_notifications"] == COPIED_STREAK + 2
    assert always.counters["zerocopy_disabled"] == 0 and always.zerocopy
    assert never.counters["copy_sends"] == COPIED_STREAK + 2 and never.counters["zerocopy_sends"] == 0


def test_successive_msg_zerocopy_senders_on_one_socket(closing, monkeypatch):
    """MSG_ZEROCOPY ids count per socket: a second sender continues them."""
    use_variant(ZEROCOPY["msg_zerocopy"], monkeypatch)
    rx = udp_receiver(closing)
    tx = udp_sender_socket(closing)
    for _ in range(3):
        zs = sender(closing, tx, ZEROCOPY["msg_zerocopy"])
        for _ in range(3):
            buf = zs.acquire()
            assert zs.send_and_wait(buf, 100, rx.getsockname(), timeout=2) == 100
        assert zs.counters["unmatched_notifications"] == 0
        assert zs.counters["notifications"] == 3
        zs.close()


def test_udp_segment_size_sends_gso_datagrams(variant, closing):
    require_kernel("udp_segment")
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), variant, segment_size=1000)
    buf = zs.acquire()
    data = pattern(4500)
    assert zs.send_and_wait(buf, buf.write(data), rx.getsockname(), timeout=2) == 4500
    got = [rx.recv(70000) for _ in range(5)]
    assert [len(g) for g in got] == [1000, 1000, 1000, 1000, 500] and b"".join(got) == data


# ---- the kernel does not copy into a transmit sink (root) ------------------------------

@pytest.fixture
def sink_namespace(request):
    why = zcbench.sink_unavailable()
    if why:
        pytest.skip(f"ifb sink: {why}")
    ns = f"burstio-zc-test-{id(request)}"
    cm = zcbench.ifb_sink_namespace(ns)
    with cm as name:
        yield name


@pytest.mark.parametrize("worker_variant, need", [("uring-send-zc", "io_uring_send_zc"),
                                                  ("msg-zerocopy", "so_zerocopy")])
def test_no_copied_notifications_on_an_ifb_sink(sink_namespace, worker_variant, need):
    """The bench worker's zero-copy variants, sending into an ifb sink."""
    require_kernel(need)
    r = subprocess.run(["ip", "netns", "exec", sink_namespace, sys.executable, "-m",
                        "burstio.bench.workers.zerocopy", worker_variant, "0.05"],
                       capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    k = out["counters"]
    assert k["notifications"] > 0 and k["errors"] == 0
    assert k["zerocopy_sends"] == k["notifications"]
    assert k["copied_notifications"] == 0


def test_the_sink_namespace_is_deleted_even_on_failure():
    why = zcbench.sink_unavailable()
    if why:
        pytest.skip(f"ifb sink: {why}")
    ns = "burstio-zc-test-failure"
    with pytest.raises(RuntimeError, match="boom"), zcbench.ifb_sink_namespace(ns):
        assert ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        raise RuntimeError("boom")
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


# ---- interleavings: a buffer is never writable in flight, never reused early ----------

class _Lifetimes(RuleBasedStateMachine):
    """Random interleavings of acquire / write / view / send / poll / wait /
    drop / try-to-write-in-flight against one sender and its peer.

    The model knows what each pool buffer holds: every acquire refills the
    buffer with fresh bytes, and writes happen only while it is owned. A
    buffer back in the pool before the kernel was done with it would put
    those fresh bytes on the wire, so the peer must get, in order, exactly
    the bytes each buffer held when it was sent. The subclasses say how the
    peer is read and what the kernel can tell about it."""

    BUFFERS = 3
    SIZE = 2048
    MAX_SEND = 300
    ACQUIRE_TIMEOUT = 2.0

    def __init__(self):
        super().__init__()
        self.zs = None

    def _start(self, backend: str, tx: socket.socket) -> None:
        v = ZEROCOPY[backend]
        if unmet_need(v, burstio.capabilities()):
            v = ZEROCOPY["copy"]  # what can run here
        self.backend = v.backend
        self.tx = tx
        self.zs = burstio.ZeroCopySender(tx, burstio.ZeroCopyPool(self.BUFFERS, self.SIZE),
                                         **v.kwargs, mode="always")
        self.content = [bytearray(self.SIZE) for _ in range(self.BUFFERS)]  # what each buffer holds
        self.owned: list = []      # buffers acquired, not sent
        self.views: list = []      # (buffer, memoryview) open
        self.sent: list = []       # (buffer, completion, start, end): its bytes in the stream
        self.stream = bytearray()  # every byte sent, in order
        self.received = bytearray()

    def _close(self, *socks) -> None:
        for _, mv in self.views:
            mv.release()
        self.zs.close()
        for s in socks:
            s.close()

    @rule(seed=st.integers(0, 2**32 - 1))
    def acquire(self, seed):
        free, in_flight = self.zs.pool.free, self.zs.in_flight
        try:
            buf = self.zs.acquire(self.ACQUIRE_TIMEOUT)
        except BufferError:
            assert free == 0 and in_flight == 0  # every buffer held by Python
            return
        except TimeoutError:
            assert free == 0 and in_flight > 0  # the kernel still holds every other one
            return
        assert buf.state == "owned" and buf.views == 0
        fresh = random.Random(seed).randbytes(self.SIZE)
        assert buf.write(fresh) == self.SIZE
        self.content[buf.index][:] = fresh
        self.owned.append(buf)

    # Indices, not objects, are drawn: hypothesis must hold no buffer.
    def _pick(self, data, items):
        return items[data.draw(st.integers(0, len(items) - 1))]

    @precondition(lambda self: self.owned)
    @rule(data=st.data(), payload=st.binary(min_size=1, max_size=64), via_view=st.booleans())
    def write(self, data, payload, via_view):
        buf = self._pick(data, self.owned)
        offset = data.draw(st.integers(0, self.SIZE - len(payload)))
        if via_view:
            with memoryview(buf) as mv:
                mv[offset:offset + len(payload)] = payload
        else:
            assert buf.write(payload, offset) == offset + len(payload)
        self.content[buf.index][offset:offset + len(payload)] = payload

    @precondition(lambda self: self.owned)
    @rule(data=st.data())
    def open_view(self, data):
        buf = self._pick(data, self.owned)
        self.views.append((buf, memoryview(buf)))

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def close_view(self, data):
        i = data.draw(st.integers(0, len(self.views) - 1))
        self.views.pop(i)[1].release()

    @precondition(lambda self: self.owned)
    @rule(data=st.data())
    def send(self, data):
        buf = self._pick(data, self.owned)
        length = data.draw(st.integers(1, self.MAX_SEND))
        open_views = sum(1 for b, _ in self.views if b is buf)
        if open_views:
            try:
                self.zs.send(buf, length)
            except BufferError as e:
                assert f"has {open_views} view" in str(e)
                assert buf.state == "owned"
                return
            raise AssertionError("send() took a buffer with open views")
        with must_not_block("send()"):
            c = self.zs.send(buf, length)
        self.owned.remove(buf)
        start = len(self.stream)
        self.stream += self.content[buf.index][:length]
        self.sent.append((buf, c, start, len(self.stream)))
        assert buf.state in ("in_flight", "returned")

    @precondition(lambda self: self.owned)
    @rule(data=st.data())
    def drop(self, data):
        buf = self._pick(data, self.owned)
        if any(b is buf for b, _ in self.views):
            return
        free = self.zs.pool.free
        self.owned.remove(buf)
        del buf
        assert self.zs.pool.free == free + 1

    @rule()
    def poll(self):
        assert self.zs.poll() >= 0

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def try_to_write_in_flight(self, data):
        buf, *_ = self._pick(data, self.sent)
        state = buf.state
        word = {"in_flight": "in flight", "returned": "returned to the pool"}[state]
        for attempt in (lambda: memoryview(buf), lambda: buf.write(b"!"), lambda: bytearray(buf)):
            try:
                attempt()
            except BufferError as e:
                assert word in str(e)
            else:
                raise AssertionError(f"a {state} buffer was writable")

    def _done(self) -> list:
        """(completion, end) of the sends done, looked at without processing
        anything (`sender` is dropped when done)."""
        return [(c, end) for _, c, _, end in self.sent if c.sender is None]

    @invariant()
    def buffers_match_the_model(self):
        if self.zs is None:
            return
        p = self.zs.pool
        pending = [c for _, c, _, _ in self.sent if c.sender is not None]
        assert p.lost == 0 and p.owned == len(self.owned)
        assert p.in_flight == len(pending) == self.zs.in_flight
        assert p.free == self.BUFFERS - len(self.owned) - len(pending)
        for buf, c, _, _ in self.sent:
            assert (buf.state == "returned") == (c.sender is None)

    @invariant()
    def done_means_all_of_it_went(self):
        if self.zs is None:
            return
        for c, _ in self._done():
            assert (c.result, c.error, c.cancelled) == (c.length, 0, False)
        assert self.received == self.stream[:len(self.received)]  # nothing lost, nothing reordered
        k = self.zs.counters
        assert k["sends"] == len(self.sent) and k["errors"] == 0
        assert sum(c.length for c, _ in self._done()) <= k["bytes"] <= len(self.stream)


class BufferLifetimes(_Lifetimes):
    """UDP over loopback: the kernel copies at send time, so this covers the
    states and the API; StreamBufferLifetimes is where the kernel really
    holds buffers."""

    @initialize(backend=st.sampled_from(["uring", "msg_zerocopy", "copy"]))
    def start(self, backend):
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        force_rcvbuf(self.rx, 1 << 20)
        self.rx.bind((V4, 0))
        self.rx.settimeout(2.0)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.connect(self.rx.getsockname())
        self._start(backend, tx)
        self.datagrams: list[tuple[int, int]] = []  # (start, end) of each datagram received

    def teardown(self):
        if self.zs is None:
            return
        for _, c, _, _ in self.sent:
            c.wait(2.0)
        while len(self.datagrams) < len(self.sent):
            self.receive()
        self._close(self.tx, self.rx)

    @precondition(lambda self: len(self.sent) > len(self.datagrams))
    @rule()
    def receive(self):
        _, _, start, end = self.sent[len(self.datagrams)]
        assert self.rx.recv(4096) == self.stream[start:end]
        self.received += self.stream[start:end]
        self.datagrams.append((start, end))

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def wait(self, data):
        buf, c, _, _ = self._pick(data, self.sent)
        assert c.wait(2.0) == c.length
        assert buf.state == "returned"


class StreamBufferLifetimes(_Lifetimes):
    """TCP over loopback with a small send buffer and a peer that reads only
    when a rule says so: the kernel holds a zero-copy buffer until the peer
    has acknowledged its bytes, and sends are taken in pieces. Besides the
    content, the kernel's own counts are the oracle: what the sender says
    it sent, the kernel has taken (SIOCOUTQ, SIOCINQ), and a zero-copy
    buffer is back only once the peer has its bytes."""

    SIZE = 16384
    MAX_SEND = 16384
    ACQUIRE_TIMEOUT = 0  # the peer may not read: waiting would only time out

    @initialize(backend=st.sampled_from(["uring", "msg_zerocopy", "copy"]), blocking=st.booleans())
    def start(self, backend, blocking):
        self.lsn = socket.socket()
        self.lsn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.lsn.bind((V4, 0))
        self.lsn.listen(1)
        tx = socket.create_connection(self.lsn.getsockname())
        self.peer, _ = self.lsn.accept()
        self.peer.setblocking(False)
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tx.setblocking(blocking)
        self._start(backend, tx)

    def teardown(self):
        if self.zs is None:
            return
        for _, c, _, _ in self.sent:
            self._wait(c)
        self._read(len(self.stream))
        assert self.received == self.stream
        self._close(self.tx, self.peer, self.lsn)

    def _read(self, upto: int) -> None:
        """Read what the peer has, until `upto` bytes in all."""
        while len(self.received) < upto:
            try:
                chunk = self.peer.recv(upto - len(self.received))
            except BlockingIOError:
                return
            assert chunk, "the peer saw the connection end"
            self.received += chunk

    def _wait(self, c) -> None:
        """The peer reads while the completion is waited for."""
        for _ in range(500):
            self._read(len(self.stream))
            try:
                c.wait(0.01)
                return
            except TimeoutError:
                pass
        raise AssertionError(f"{c!r} not done with the peer reading everything")

    @precondition(lambda self: len(self.stream) > len(self.received))
    @rule(n=st.integers(1, 20000))
    def receive(self, n):
        self._read(min(len(self.stream), len(self.received) + n))
        assert self.received == self.stream[:len(self.received)]

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def wait(self, data):
        buf, c, _, _ = self._pick(data, self.sent)
        self._wait(c)
        assert c.result == c.length
        assert buf.state == "returned"

    @invariant()
    def the_kernel_agrees(self):
        if self.zs is None:
            return
        done = self._done()  # first: all later counts can only have grown since
        k = self.zs.counters
        outq = ioctl_int(self.tx, SIOCOUTQ)
        at_peer = len(self.received) + ioctl_int(self.peer, SIOCINQ)
        # the kernel took every byte the sender says it sent ...
        assert k["bytes"] <= at_peer + outq
        if self.backend != "uring":  # (io_uring may take more before we reap its result)
            assert at_peer <= k["bytes"]  # ... and nothing else
        for c, end in done:
            assert end <= at_peer + outq  # a send done was taken whole
            if c.zerocopy and k["enobufs_copies"] == 0:
                assert end <= at_peer  # a zero-copy buffer returns once the peer has its bytes


TestBufferLifetimes = BufferLifetimes.TestCase
TestBufferLifetimes.settings = settings(max_examples=30, stateful_step_count=25, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestStreamBufferLifetimes = StreamBufferLifetimes.TestCase
TestStreamBufferLifetimes.settings = settings(max_examples=30, stateful_step_count=30, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])


# ---- fork -------------------------------------------------------------------------------

def test_fork_child_is_refused_and_parent_keeps_working(variant, closing):
    """After fork() the sender's io_uring, error queue and buffers are shared
    with the parent: in the child every call raises RuntimeError naming the
    parent (it would consume the parent's notifications), close() lets go of
    the child's copies only, and the parent's sends, in flight across the
    fork and after it, complete."""
    rx = udp_receiver(closing)
    zs = sender(closing, udp_sender_socket(closing), variant)
    buf = zs.acquire()
    buf.write(b"before-fork")
    pending = zs.send(buf, 11, rx.getsockname())
    done_before = pending.sender is None  # the copy backends finish at once: nothing to refuse then
    pending_calls = 2 if done_before else 4
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            msgs = []
            calls = [lambda: zs.acquire(0), zs.poll]
            if not done_before:
                calls += [lambda: pending.wait(0.5), pending.done]
            for call in calls:
                try:
                    call()
                    msgs.append("no error")
                except RuntimeError as e:
                    msgs.append(str(e))
            zs.close()
            os.write(w, "\n".join(msgs).encode()[:4000])
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    msgs = out.decode().split("\n")
    assert len(msgs) == pending_calls and all(f"made in process {os.getpid()}" in m for m in msgs), msgs
    assert pending.wait(5.0) == 11
    buf = zs.acquire(5.0)
    buf.write(b"after-fork")
    assert zs.send_and_wait(buf, 10, rx.getsockname(), 5.0) == 10
    assert rx.recv(64) == b"before-fork" and rx.recv(64) == b"after-fork"
