"""BurstSocket (burstio._udp): one contract, run against every backend variant,
and differential tests against the portable oracle.

``BackendContract`` holds the tests; each ``Test*`` class runs them with one
variant of ``support.variants.UDP``: a backend (the pure-Python "portable"
backend is the oracle) or one forced fallback (BURSTIO_DISABLE set before
the socket is made). The property tests at the end send random buffers and
batches with every variant and compare what arrives with the bytes sent and
with what the oracle receives; that includes splitting GRO receives.
"""
from __future__ import annotations

import errno
import gc
import math
import os
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import weakref

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import burstio
from burstio import FLAG_COALESCED, FLAG_GRO, FLAG_SEND_ERROR, FLAG_TRUNCATED, PacketBatch, SendError
from support.kernel import (
    SO_BUSY_POLL,
    SO_NO_CHECK,
    gso_sendmsg,
    kernel_caps,
    kernel_refuses_gso_without_checksum,
    main_thread_blocked_in_syscall,
    require_kernel,
    require_syscall_introspection,
    thread_blocked_in_syscall,
    thread_syscall,
)
from support.net import (
    FAMILIES,
    V4,
    V6,
    Sockets,
    closed_port,
    entries,
    pattern,
    payloads,
    recv_all,
    recv_plain,
    slow_namespace,
    socket_in,
)
from support.ports import FORK, child
from support.proc import Helper, open_fds, rescue, wait_for
from support.race import SEGMENT, ArrayRacer, FlagsRacer, attempts, drained, foreign, payload_buffer
from support.variants import UDP, Variant, runnable, set_disable, use_variant, variant_env

COUNTER_NAMES = {
    "rx_datagrams", "rx_bytes", "rx_batches", "rx_syscalls", "rx_truncated", "rx_gro_messages",
    "rx_gro_datagrams", "kernel_drops", "tx_datagrams", "tx_bytes", "tx_batches", "tx_syscalls",
    "tx_gso_messages", "tx_gso_datagrams", "tx_errors", "tx_unreported_errors", "gso_downgrades",
    "tx_late", "tx_ecn_unmarked", "ecn_downgrades", "paced_queued", "paced_late", "paced_waits", "paced_unsent",
    "paced_errors_dropped", "paced_releases",
}


@pytest.fixture(scope="module")
def slow_netns():
    """A network namespace whose loopback drains through tbf at 2 Mbit/s:
    a blocking send there with a small SO_SNDBUF waits for room."""
    with slow_namespace("udp-test") as ns:
        yield ns


def error_pending(sock) -> bool:
    """Whether the socket has an asynchronous error queued (POLLERR), without consuming it."""
    p = select.poll()
    p.register(sock.fileno(), 0)
    return any(ev & select.POLLERR for _fd, ev in p.poll(2000))


POLLS = ("poll", "ppoll", "select", "pselect6", "restart_syscall")  # waits before a receive (portable: select)


def receive_shut_down(sock: socket.socket) -> bool:
    """Whether sock's receive side is shut down (poll says POLLRDHUP)."""
    p = select.poll()
    p.register(sock, select.POLLIN | select.POLLRDHUP)
    return any(ev & select.POLLRDHUP for _fd, ev in p.poll(0))


class BackendContract:
    """What every BurstSocket backend must do. Subclasses set ``variant``."""

    variant: Variant  # one of support.variants.UDP

    @pytest.fixture(autouse=True)
    def _backend(self, monkeypatch):
        self.caps = use_variant(self.variant, monkeypatch)
        self.sockets = Sockets(**self.variant.kwargs)
        yield
        self.sockets.close_all()

    # ---- helpers -----------------------------------------------------------

    def make_socket(self, family: int = socket.AF_INET, **kw) -> burstio.BurstSocket:
        """A BurstSocket of this variant, bound to an ephemeral loopback port."""
        return self.sockets.burst(family, **kw)

    def make_pair(self, family: int = socket.AF_INET, *, rx: dict | None = None, tx: dict | None = None):
        """(receiver, sender), both of this variant."""
        return self.sockets.pair(family, rx=rx, tx=tx)

    def plain(self, family: int = socket.AF_INET, **kw) -> socket.socket:
        return self.sockets.plain(family, **kw)

    def batch_of(self, items, capacity: int | None = None, slot_size: int = 2048) -> PacketBatch:
        items = list(items)
        b = PacketBatch(capacity or max(1, len(items)), slot_size)
        for payload, addr in items:
            b.append(payload, addr)
        return b

    @property
    def gso(self) -> bool:
        return self.caps.udp_segment

    # ---- identity ------------------------------------------------------------

    def test_backend_and_describe(self):
        s = self.make_socket(gro=True)
        v = self.variant
        assert s.backend == v.expect
        d = s.describe()
        assert d.startswith(f"{v.extras['rx_syscall']} + {v.extras['tx_syscall']}, "), d
        assert s.gso == self.gso
        assert ("GSO on" in d) == self.gso, d
        assert s.gro == self.caps.udp_gro
        assert d.endswith("GRO on" if self.caps.udp_gro else "GRO off"), d
        for name in v.forced_off:
            assert self.caps[name].forced_off and not self.caps[name].available
        assert repr(s).startswith("<BurstSocket ")

    def test_forced_off_fallback_matches_kernel(self):
        """A variant only differs from the kernel's offer in what it forces off."""
        kernel = kernel_caps()
        forced = self.variant.forced_off
        for name in ("recvmmsg", "sendmmsg", "udp_segment", "udp_gro"):
            assert self.caps[name].available == (kernel[name].available and name not in forced)

    # ---- round trips -----------------------------------------------------------

    @FAMILIES
    def test_round_trip(self, family):
        rx, tx = self.make_pair(family)
        dest = rx.getsockname()
        sizes = [1, 100, 100, 1472, 7, 0, 512, 512, 300, 2000, 9]
        sent = [pattern(n, seed=i) for i, n in enumerate(sizes)]
        out = self.batch_of((p, dest) for p in sent)
        assert tx.send_batch(out) == len(sent)

        batch = PacketBatch(16, 2048)
        n = rx.recv_batch(batch, 2.0)
        assert n == len(sent) == len(batch)
        assert [bytes(batch[i]) for i in range(n)] == sent
        assert memoryview(batch.lengths)[:n].tolist() == sizes
        src = tx.getsockname()
        assert batch.addresses() == [src] * n
        assert all(batch.addr(i) == src for i in range(n))
        assert batch.addr(-1) == src
        assert memoryview(batch.sockets)[:n].tolist() == [0] * n
        assert memoryview(batch.flags)[:n].tolist() == [0] * n
        assert memoryview(batch.segment_sizes)[:n].tolist() == [0] * n

    def test_lengths_numpy_view_is_zero_copy(self):
        rx, tx = self.make_pair()
        batch = PacketBatch(8, 256)
        lengths = np.asarray(batch.lengths)
        assert lengths.dtype == np.uint32 and lengths.shape == (8,)
        for round_ in range(2):
            sent = [pattern(10 + 20 * i + round_, seed=i) for i in range(4 + round_)]
            tx.send_batch(self.batch_of((p, rx.getsockname()) for p in sent))
            n = rx.recv_batch(batch, 2.0)
            assert n == len(sent)
            # the array made before any receive sees every later receive
            assert lengths[:n].tolist() == [len(p) for p in sent]
        assert np.asarray(batch.lengths).ctypes.data == lengths.ctypes.data
        lengths[0] = 3  # and writes through it reach the batch
        assert bytes(batch[0]) == sent[0][:3]

    def test_ipv4_destination_from_ipv6_socket(self):
        """Dual stack: an IPv6 socket sends to an IPv4 address over IPv4."""
        rx = self.sockets.receiver(socket.AF_INET)
        tx = self.sockets.track(burstio.BurstSocket(family=socket.AF_INET6, **self.variant.kwargs))
        tx.sock.bind(("::", 0))  # a [::1]-bound socket could not reach 127.0.0.1
        assert tx.send_batch(self.batch_of([(b"via v4", rx.getsockname())])) == 1
        got = recv_all(rx, PacketBatch(4, 64), 1)
        assert payloads(got) == [b"via v4"]
        assert got[0][1] == (V4, tx.getsockname()[1])

    def test_zero_length_datagrams(self):
        rx, tx = self.make_pair()
        sent = [b"", b"", b"x", b"", b""]
        assert tx.send_batch(self.batch_of((p, rx.getsockname()) for p in sent)) == 5
        got = recv_all(rx, PacketBatch(8, 64), 5)
        assert payloads(got) == sent
        assert rx.counters["rx_datagrams"] == 5
        assert rx.counters["rx_bytes"] == 1

    def test_largest_datagrams(self):
        m = burstio.MAX_UDP_PAYLOAD
        assert m == 65507
        rx, tx = self.make_pair()
        sent = [pattern(m, seed=1), pattern(m, seed=2), pattern(m - 1, seed=3)]
        out = PacketBatch(3, m)
        for p in sent:
            out.append(p, rx.getsockname())
        assert tx.send_batch(out) == 3
        got = recv_all(rx, PacketBatch(4, m), 3)
        assert payloads(got) == sent
        assert [g[2] for g in got] == [0, 0, 0]  # not truncated

    def test_too_large_datagram_is_emsgsize(self):
        rx, tx = self.make_pair()
        dest = rx.getsockname()
        out = PacketBatch(3, 70000)
        out.append(b"before", dest)
        out.append(bytes(65508), dest)
        out.append(b"after", dest)
        with pytest.raises(SendError) as ei:
            tx.send_batch(out)
        assert (ei.value.errno, ei.value.index, ei.value.sent) == (errno.EMSGSIZE, 1, 1)
        assert payloads(recv_all(rx, PacketBatch(4, 64), 1)) == [b"before"]

    # ---- truncation ------------------------------------------------------------

    def test_datagram_larger_than_slot_is_truncated_never_overflows(self):
        rx, tx = self.make_pair()
        dest = rx.getsockname()
        sent = [pattern(300, 1), pattern(50, 2), pattern(100, 3), pattern(101, 4)]
        tx.send_batch(self.batch_of((p, dest) for p in sent))
        batch = PacketBatch(4, 100)
        arena = memoryview(batch)
        assert len(arena) == 400
        got = recv_all(rx, batch, 4)
        assert payloads(got) == [sent[0][:100], sent[1], sent[2], sent[3][:100]]
        assert [bool(g[2] & FLAG_TRUNCATED) for g in got] == [True, False, False, True]
        # each datagram stayed in its own slot: the 300-byte one did not spill
        assert bytes(arena[100:150]) == sent[1]
        assert bytes(arena[200:300]) == sent[2]
        c = rx.counters
        assert c["rx_truncated"] == 2
        assert c["rx_datagrams"] == 4
        assert c["rx_bytes"] == 100 + 50 + 100 + 100

    # ---- waiting -----------------------------------------------------------------

    @pytest.mark.parametrize("timeout", [0, 0.0, 0.05])
    def test_timeout_returns_zero(self, timeout):
        rx = self.make_socket()
        batch = PacketBatch(4, 64)
        batch.append(b"stale")
        assert rx.recv_batch(batch, timeout) == 0
        assert len(batch) == 0  # previous contents replaced
        assert rx.counters["rx_batches"] == 0
        assert rx.recv_batch(batch, timeout=timeout) == 0

    def test_several_queued_datagrams_come_back_in_one_call(self):
        rx, _tx = self.make_pair()
        sender = self.plain()
        sent = [b"one", b"two", b"three", b"four", b"five"]
        for p in sent:
            sender.sendto(p, rx.getsockname())
        batch = PacketBatch(64, 64)
        with rescue(rx.getsockname()):
            n = rx.recv_batch(batch)  # timeout None: blocks for the first only
        assert n == 5
        assert [bytes(batch[i]) for i in range(n)] == sent

    def test_request_response_mode_still_delivers_bursts(self):
        """After a run of one-datagram receives (a ping-pong peer) the C
        backends ask for one message at a time, probing with the full batch
        every 16th call. A burst that then arrives is delivered whole and in
        order, and the next burst comes back in one call again."""
        rx = self.make_socket()
        sender = self.plain()
        batch = PacketBatch(64, 64)
        for _ in range(40):  # request/response traffic
            sender.sendto(b"ping", rx.getsockname())
            assert rx.recv_batch(batch, 1.0) == 1
        burst = [b"b%d" % i for i in range(8)]
        for p in burst:
            sender.sendto(p, rx.getsockname())
        seen, calls = [], 0
        while len(seen) < len(burst) and calls < 20:
            calls += 1
            assert rx.recv_batch(batch, 1.0) >= 1
            seen += [bytes(batch[i]) for i in range(len(batch))]
        assert seen == burst
        assert calls <= 16  # the probing call took what was left
        for p in burst:
            sender.sendto(p, rx.getsockname())
        assert rx.recv_batch(batch, 1.0) == len(burst)
        assert rx.counters["rx_datagrams"] == 40 + 2 * len(burst)

    def test_small_batch_takes_the_queue_in_order(self):
        rx = self.make_socket()
        sender = self.plain()
        for i in range(5):
            sender.sendto(bytes([i]), rx.getsockname())
        batch = PacketBatch(2, 16)
        seen = []
        for expect in (2, 2, 1, 0):
            assert rx.recv_batch(batch, 0.5 if expect else 0.02) == expect
            seen += [bytes(batch[i]) for i in range(len(batch))]
        assert seen == [bytes([i]) for i in range(5)]

    def test_blocking_recv_returns_when_first_datagram_arrives(self):
        require_syscall_introspection()
        rx = self.make_socket()
        sender = self.plain()

        def later():
            assert wait_for(main_thread_blocked_in_syscall)
            sender.sendto(b"late", rx.getsockname())

        batch = PacketBatch(64, 64)
        t = Helper(later)
        with rescue(rx.getsockname()):
            t.start()
            n = rx.recv_batch(batch, None)
        t.join()
        assert n == 1
        assert bytes(batch[0]) == b"late"
        assert batch.addr(0) == sender.getsockname()

    def test_gil_released_while_waiting(self):
        """Another Python thread runs while recv_batch waits: it is the one
        that sends the datagram the wait ends with."""
        require_syscall_introspection()
        rx = self.make_socket()
        sender = self.plain()
        progress = []

        def other():
            assert wait_for(main_thread_blocked_in_syscall)
            for i in range(1000):  # Python bytecode that needs the GIL, one step at a time
                progress.append(i)  # noqa: PERF402
            sender.sendto(b"from the other thread", rx.getsockname())

        batch = PacketBatch(8, 64)
        t = Helper(other)
        with rescue(rx.getsockname()):
            t.start()
            n = rx.recv_batch(batch, 60.0)
        t.join()
        assert len(progress) == 1000
        assert n == 1 and bytes(batch[0]) == b"from the other thread"

    @pytest.mark.parametrize("busy", ["off", "socket"])
    @pytest.mark.parametrize("timeout", [None, 60.0], ids=["forever", "deadline"])
    def test_eintr_with_quiet_handler_continues(self, monkeypatch, timeout, busy):
        """PEP 475: a signal whose handler returns does not end the wait
        (busy polling through the socket too, whose receive without a
        deadline sleeps in the receive syscall itself)."""
        require_syscall_introspection()
        rx = self._socket_busy_polling(monkeypatch, busy)
        sender = self.plain()
        calls = []

        def interrupt_then_send():
            assert wait_for(main_thread_blocked_in_syscall)
            signal.setitimer(signal.ITIMER_REAL, 0.001)  # SIGALRM lands on the main thread
            assert wait_for(lambda: calls)
            assert wait_for(main_thread_blocked_in_syscall)  # waiting again
            sender.sendto(b"after the signal", rx.getsockname())

        old = signal.signal(signal.SIGALRM, lambda signum, frame: calls.append(signum))
        batch = PacketBatch(8, 64)
        try:
            t = Helper(interrupt_then_send)
            with rescue(rx.getsockname()):
                t.start()
                n = rx.recv_batch(batch, timeout)
            t.join()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert calls == [signal.SIGALRM]
        assert n == 1
        assert bytes(batch[0]) == b"after the signal"

    @pytest.mark.parametrize("busy", ["off", "socket"])
    @pytest.mark.parametrize("timeout", [None, 60.0], ids=["forever", "deadline"])
    def test_eintr_with_raising_handler_propagates(self, monkeypatch, timeout, busy):
        require_syscall_introspection()
        rx = self._socket_busy_polling(monkeypatch, busy)

        class HandlerError(Exception):
            pass

        def handler(signum, frame):
            raise HandlerError("from the handler")

        def interrupt():
            assert wait_for(main_thread_blocked_in_syscall)
            signal.setitimer(signal.ITIMER_REAL, 0.001)

        old = signal.signal(signal.SIGALRM, handler)
        batch = PacketBatch(8, 64)
        try:
            t = Helper(interrupt)
            with rescue(rx.getsockname()), pytest.raises(HandlerError, match="from the handler"):
                t.start()
                rx.recv_batch(batch, timeout)
            t.join()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        # the socket and the batch are usable afterwards
        assert rx.recv_batch(batch, 0) == 0
        self.plain().sendto(b"next", rx.getsockname())
        assert payloads(recv_all(rx, batch, 1)) == [b"next"]

    # ---- send errors -------------------------------------------------------------

    def _port0_batch(self, dest) -> PacketBatch:
        bad = (dest[0], 0, *tuple(dest[2:]))
        return self.batch_of([(b"d0-ok", dest), (b"d1-ok", dest), (b"d2-port0", bad), (b"d3-ok", dest)], capacity=8)

    @FAMILIES
    def test_send_error_raises_with_index(self, family):
        rx, tx = self.make_pair(family)
        out = self._port0_batch(rx.getsockname())
        with pytest.raises(SendError) as ei:
            tx.send_batch(out)
        e = ei.value
        assert isinstance(e, OSError)
        assert (e.errno, e.index, e.sent) == (errno.EINVAL, 2, 2)
        assert "datagram 2" in str(e)
        assert tx.counters["tx_datagrams"] == 2
        assert payloads(recv_all(rx, PacketBatch(8, 64), 2)) == [b"d0-ok", b"d1-ok"]
        # resume after the failing datagram, as SendError documents
        assert tx.send_batch(out, e.index + 1) == 1
        assert payloads(recv_all(rx, PacketBatch(8, 64), 1)) == [b"d3-ok"]

    @FAMILIES
    def test_send_error_skip(self, family):
        rx, tx = self.make_pair(family)
        out = self._port0_batch(rx.getsockname())
        assert tx.send_batch(out, on_error="skip") == 4
        assert out.send_errors() == [(2, errno.EINVAL)]
        assert out.flags[2] & FLAG_SEND_ERROR
        assert out.errnos[2] == errno.EINVAL
        assert not any(out.flags[i] & FLAG_SEND_ERROR for i in (0, 1, 3))
        assert payloads(recv_all(rx, PacketBatch(8, 64), 3)) == [b"d0-ok", b"d1-ok", b"d3-ok"]
        c = tx.counters
        assert c["tx_errors"] == 1
        assert c["tx_datagrams"] == 3
        # fixed and sent again: the error marks go
        out.set_addr(2, rx.getsockname())
        assert tx.send_batch(out, on_error="skip") == 4
        assert out.send_errors() == []
        assert payloads(recv_all(rx, PacketBatch(8, 64), 4)) == [b"d0-ok", b"d1-ok", b"d2-port0", b"d3-ok"]

    def test_one_datagram_send_error_raises_or_is_skipped(self):
        """A send of one datagram (the C backends try it holding the GIL)
        reports the kernel's refusal exactly as a batch does: SendError with
        its index, nothing sent; with on_error="skip", flagged and counted."""
        rx, tx = self.make_pair()
        out = self._port0_batch(rx.getsockname())
        with pytest.raises(SendError) as ei:
            tx.send_batch(out, 2, 1)
        assert (ei.value.errno, ei.value.index, ei.value.sent) == (errno.EINVAL, 2, 0)
        assert tx.send_batch(out, 2, 1, on_error="skip") == 1
        assert out.send_errors() == [(2, errno.EINVAL)]
        assert tx.send_batch(out, 3, 1) == 1
        assert payloads(recv_all(rx, PacketBatch(8, 64), 1)) == [b"d3-ok"]
        c = tx.counters
        assert (c["tx_errors"], c["tx_datagrams"], c["tx_syscalls"]) == (1, 1, 3)

    def test_one_datagram_send_reports_a_pending_error_once(self):
        """A connected socket's pending error (port unreachable) refuses the
        next send; a one-datagram send reports it (not tried again, which
        would go through with the error gone unreported), and the send after
        it goes."""
        rx = self.make_socket()
        tx = self.make_socket()
        tx.connect(closed_port())
        tx.sock.send(b"trigger")
        assert error_pending(tx)
        out = self.batch_of([(b"a", None)], capacity=2)
        with pytest.raises(SendError) as ei:
            tx.send_batch(out, 0, 1)
        assert (ei.value.errno, ei.value.index, ei.value.sent) == (errno.ECONNREFUSED, 0, 0)
        assert tx.counters["tx_syscalls"] == 1
        tx.connect(rx.getsockname())
        assert tx.send_batch(out, 0, 1) == 1
        assert payloads(recv_all(rx, PacketBatch(4, 64), 1)) == [b"a"]

    def test_gso_run_to_a_refused_destination_is_an_error_not_a_downgrade(self):
        """EINVAL on a GSO send can mean "bad destination" (port 0) as well as
        "no GSO here": the datagrams' own error is reported, GSO stays on."""
        rx, tx = self.make_pair()
        dest = rx.getsockname()
        bad = (V4, 0)
        items = [(b"ok-0", dest), (b"ok-1", dest)] + [(b"bad-%d" % i, bad) for i in range(2, 5)] + [(b"ok-5", dest)]
        out = self.batch_of(items, capacity=8)
        with pytest.raises(SendError) as ei:
            tx.send_batch(out)
        assert (ei.value.errno, ei.value.index, ei.value.sent) == (errno.EINVAL, 2, 2)
        assert payloads(recv_all(rx, PacketBatch(8, 64), 2)) == [b"ok-0", b"ok-1"]
        assert tx.gso == self.gso
        assert tx.counters["gso_downgrades"] == 0

        assert tx.send_batch(out, on_error="skip") == 6
        assert out.send_errors() == [(2, errno.EINVAL), (3, errno.EINVAL), (4, errno.EINVAL)]
        assert payloads(recv_all(rx, PacketBatch(8, 64), 3)) == [b"ok-0", b"ok-1", b"ok-5"]
        assert tx.gso == self.gso
        c = tx.counters
        assert c["gso_downgrades"] == 0
        assert c["tx_errors"] == 3

        with pytest.raises(SendError) as ei:
            tx.send_segments(b"x" * 300, 100, bad)
        assert (ei.value.errno, ei.value.index, ei.value.sent) == (errno.EINVAL, 0, 0)
        assert tx.gso == self.gso
        assert tx.counters["gso_downgrades"] == 0

    def test_econnrefused_on_connected_socket_is_reported(self):
        tx = self.make_socket()
        tx.connect(closed_port())
        tx.sock.send(b"trigger")  # the port-unreachable reply sets the socket error
        assert error_pending(tx)
        out = self.batch_of([(b"a", None), (b"bb", None), (b"ccc", None)], capacity=4)
        with pytest.raises(SendError) as ei:
            tx.send_batch(out, 1)
        e = ei.value
        assert (e.errno, e.index, e.sent) == (errno.ECONNREFUSED, 1, 0)
        assert "to the connected peer" in str(e)

    def test_econnrefused_in_mid_batch_is_reported_or_counted(self):
        """The port-unreachable reply to datagram 0 makes the kernel refuse
        datagram 1. One datagram per syscall (the oracle, msg) sees that error
        and reports it: SendError index 1, datagram 1 not sent. sendmmsg
        discards an error after its first message; burstio retries the message
        (it goes out) and counts the report it could not make. Either way no
        datagram is dropped without the caller being told."""
        tx = self.make_socket()
        tx.connect(closed_port())
        out = self.batch_of([(b"a", None), (b"bb", None), (b"ccc", None)], capacity=4)
        if self.variant.extras["tx_syscall"] != "sendmmsg":
            with pytest.raises(SendError) as ei:
                tx.send_batch(out)
            e = ei.value
            assert (e.errno, e.index, e.sent) == (errno.ECONNREFUSED, 1, 1)
            assert tx.counters["tx_unreported_errors"] == 0
        else:
            assert tx.send_batch(out) == 3
            # the replies to datagrams 0 and 1 were each consumed by the next send
            assert tx.counters["tx_unreported_errors"] == 2
            assert tx.counters["tx_datagrams"] == 3

    def test_ipv6_destination_on_ipv4_socket(self):
        rx, tx = self.make_pair(socket.AF_INET)
        v6 = (V6, 9, 0, 0)
        out = self.batch_of([(b"fine", rx.getsockname()), (b"wrong family", v6)], capacity=4)
        with pytest.raises(SendError, match=re.escape(str(v6)) + r".*IPv6 address.*AF_INET") as ei:
            tx.send_batch(out)
        e = ei.value
        assert (e.errno, e.index, e.sent) == (errno.EAFNOSUPPORT, 1, 1)
        assert payloads(recv_all(rx, PacketBatch(4, 64), 1)) == [b"fine"]

    def test_send_range_validation(self):
        rx, tx = self.make_pair()
        out = self.batch_of([(b"x", rx.getsockname())] * 3, capacity=8)
        cases = [
            ({"start": "1"}, TypeError, "start must be int, got str"),
            ({"start": True}, TypeError, "start must be int, got bool"),
            ({"start": -1}, ValueError, "start -1 is outside the batch's 3 datagrams"),
            ({"start": 4}, ValueError, "start 4 is outside the batch's 3 datagrams"),
            ({"count": 1.0}, TypeError, "count must be int or None, got float"),
            ({"count": -1}, ValueError, "count -1 from start 0 runs past the batch's 3 datagrams"),
            ({"start": 2, "count": 2}, ValueError, "count 2 from start 2 runs past the batch's 3 datagrams"),
            ({"on_error": "ignore"}, ValueError, "on_error must be 'raise' or 'skip', got 'ignore'"),
        ]
        for kwargs, exc, msg in cases:
            with pytest.raises(exc, match=re.escape(msg)):
                tx.send_batch(out, **kwargs)
        with pytest.raises(TypeError, match=re.escape("send_batch() argument 1 must be burstio.PacketBatch, not list")):
            tx.send_batch([b"x"])
        assert tx.counters["tx_datagrams"] == 0
        assert recv_all(rx, PacketBatch(4, 64), 0) == []

    def test_send_range_subset(self):
        rx, tx = self.make_pair()
        dest = rx.getsockname()
        out = self.batch_of([(bytes([i]) * 5, dest) for i in range(5)])
        assert tx.send_batch(out, 1, 2) == 2
        assert tx.send_batch(out, 3, 0) == 0
        assert tx.send_batch(out, 5) == 0
        assert tx.send_batch(out, start=4) == 1
        assert payloads(recv_all(rx, PacketBatch(8, 64), 3)) == [b"\1" * 5, b"\2" * 5, b"\4" * 5]

    def test_empty_batch_sends_nothing(self):
        _rx, tx = self.make_pair()
        assert tx.send_batch(PacketBatch(4, 64)) == 0
        assert tx.counters["tx_datagrams"] == 0

    # ---- GSO -----------------------------------------------------------------------

    @FAMILIES
    def test_gso_run_arrives_as_separate_datagrams(self, family):
        rx, tx = self.make_pair(family)
        dest = rx.getsockname()
        sent = [pattern(100, seed=i) for i in range(20)] + [pattern(40, seed=99)]
        out = self.batch_of(((p, dest) for p in sent), capacity=32)
        assert tx.send_batch(out) == 21
        got = recv_all(rx, PacketBatch(64, 2048), 21)
        assert payloads(got) == sent
        assert all(g[1] == tx.getsockname() for g in got)
        c = tx.counters
        assert c["tx_datagrams"] == 21 and c["tx_bytes"] == 20 * 100 + 40
        if self.gso:
            assert (c["tx_gso_messages"], c["tx_gso_datagrams"]) == (1, 21)
            assert c["tx_syscalls"] == 1
        else:
            assert (c["tx_gso_messages"], c["tx_gso_datagrams"]) == (0, 0)

    def test_gso_runs_are_cut_at_segment_limit_size_and_destination(self):
        rx1, tx = self.make_pair()
        rx2 = self.sockets.receiver()
        d1, d2 = rx1.getsockname(), rx2.getsockname()
        items = [(pattern(10, i), d1) for i in range(150)]          # > 64 segments: 3 runs
        items += [(pattern(1000, i), d2) for i in range(70)]       # > 64 KiB: 2 runs
        items += [(pattern(30, 1), d1), (pattern(30, 2), d2), (pattern(30, 3), d1)]  # alternating: 3 sends
        out = self.batch_of(items, capacity=len(items))
        assert tx.send_batch(out) == len(items)
        want1 = [p for p, d in items if d == d1]
        want2 = [p for p, d in items if d == d2]
        assert payloads(recv_all(rx1, PacketBatch(256, 2048), len(want1))) == want1
        assert payloads(recv_all(rx2, PacketBatch(256, 2048), len(want2))) == want2
        c = tx.counters
        assert c["tx_datagrams"] == len(items)
        if self.gso:
            # 64+64+22 small ones, 65 (=65507 // 1000) + 5 big ones
            assert c["tx_gso_messages"] == 5
            assert c["tx_gso_datagrams"] == 220
        else:
            assert c["tx_gso_messages"] == 0

    @FAMILIES
    @pytest.mark.parametrize("size,seg", [(1000, 300), (900, 300), (1, 300), (300, 1), (65507 * 2 + 5, 1400)])
    def test_send_segments(self, family, size, seg):
        rx, tx = self.make_pair(family)
        data = pattern(size, seed=size)
        n = tx.send_segments(data, seg, rx.getsockname())
        assert n == math.ceil(size / seg)
        want = [data[i:i + seg] for i in range(0, size, seg)]
        got = recv_all(rx, PacketBatch(1024, 2048), n)
        assert payloads(got) == want
        assert all(g[1] == tx.getsockname() for g in got)
        c = tx.counters
        assert c["tx_datagrams"] == n and c["tx_bytes"] == size
        if self.gso and n > 1:
            assert c["tx_gso_datagrams"] == n
            assert c["tx_gso_messages"] >= 1
        else:
            assert c["tx_gso_datagrams"] == 0

    def test_send_segments_to_connected_peer_and_edge_cases(self):
        rx, tx = self.make_pair()
        tx.connect(rx.getsockname())
        assert tx.send_segments(bytearray(b"abcdefg"), 2) == 4
        assert tx.send_segments(b"", 10, rx.getsockname()) == 0
        assert tx.send_segments(memoryview(b"xyz"), 3, None) == 1
        assert payloads(recv_all(rx, PacketBatch(16, 64), 5)) == [b"ab", b"cd", b"ef", b"g", b"xyz"]
        with pytest.raises(ValueError, match=re.escape("segment_size must be between 1 and 65507, got 0")):
            tx.send_segments(b"abc", 0)
        with pytest.raises(ValueError, match=re.escape("segment_size must be between 1 and 65507, got 65508")):
            tx.send_segments(b"abc", 65508)
        with pytest.raises(TypeError, match=re.escape("segment_size must be int, got bool")):
            tx.send_segments(b"abc", True)
        with pytest.raises(TypeError, match=re.escape("segment_size must be int, got float")):
            tx.send_segments(b"abc", 1.5)
        with pytest.raises(ValueError, match=re.escape("address port must be between 0 and 65535, got 70000")):
            tx.send_segments(b"abc", 1, (V4, 70000))

    def test_send_segments_error(self):
        _rx, tx = self.make_pair()
        with pytest.raises(SendError) as ei:
            tx.send_segments(b"abcdef", 2, (V6, 5, 0, 0))
        assert (ei.value.errno, ei.value.index, ei.value.sent) == (errno.EAFNOSUPPORT, 0, 0)
        assert "segment 0" in str(ei.value)

    def _no_checksum_sender(self):
        if not kernel_refuses_gso_without_checksum():
            pytest.skip("this kernel does not refuse UDP GSO on a SO_NO_CHECK socket, "
                        "so the downgrade cannot be provoked")
        rx, tx = self.make_pair()
        tx.sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        return rx, tx

    def test_gso_refused_downgrades_and_delivers_everything(self):
        rx, tx = self._no_checksum_sender()
        dest = rx.getsockname()
        sent = [b"single"] + [pattern(100, seed=i) for i in range(10)] + [b"tail"]
        out = self.batch_of(((p, dest) for p in sent), capacity=16)
        assert tx.send_batch(out) == len(sent)
        assert payloads(recv_all(rx, PacketBatch(32, 2048), len(sent))) == sent
        assert tx.gso is False
        assert "GSO off" in tx.describe()
        c = tx.counters
        assert c["gso_downgrades"] == (1 if self.gso else 0)
        assert c["tx_datagrams"] == len(sent)
        assert c["tx_gso_datagrams"] == 0
        # later sends go without GSO and do not downgrade again
        assert tx.send_batch(out) == len(sent)
        assert payloads(recv_all(rx, PacketBatch(32, 2048), len(sent))) == sent
        assert tx.counters["gso_downgrades"] == (1 if self.gso else 0)

    def test_gso_refused_downgrades_send_segments(self):
        rx, tx = self._no_checksum_sender()
        data = pattern(2500, seed=5)
        assert tx.send_segments(data, 100, rx.getsockname()) == 25
        assert payloads(recv_all(rx, PacketBatch(64, 2048), 25)) == [data[i:i + 100] for i in range(0, 2500, 100)]
        assert tx.gso is False
        c = tx.counters
        assert c["gso_downgrades"] == (1 if self.gso else 0)
        assert c["tx_datagrams"] == 25

    # ---- GRO -----------------------------------------------------------------------

    @FAMILIES
    def test_gro_receive_splits_coalesced_datagrams(self, family):
        require_kernel("udp_segment")
        rx = self.sockets.receiver(family, gro=True)
        assert rx.gro == self.caps.udp_gro
        sender = self.plain(family)
        data = pattern(500 * 10 + 123, seed=7)
        gso_sendmsg(sender, data, 500, rx.getsockname())  # the kernel's GSO: one skb of 11 segments
        sender.sendto(b"alone", rx.getsockname())
        want = [data[i:i + 500] for i in range(0, len(data), 500)] + [b"alone"]
        got = recv_all(rx, PacketBatch(1024, burstio.GRO_SLOT_MIN, slots=8), len(want))
        assert payloads(got) == want
        assert all(g[1] == sender.getsockname() for g in got)
        c = rx.counters
        assert c["rx_datagrams"] == 12
        if rx.gro:
            assert [g[2] for g in got] == [FLAG_GRO] * 11 + [0]
            assert [g[3] for g in got] == [500] * 11 + [0]
            assert (c["rx_gro_messages"], c["rx_gro_datagrams"]) == (1, 11)
        else:
            assert [g[2] for g in got] == [0] * 12
            assert c["rx_gro_messages"] == 0

    def test_gro_entries_point_into_their_slot(self):
        require_kernel("udp_segment")
        rx = self.sockets.receiver(gro=True)
        if not rx.gro:
            pytest.skip(f"UDP GRO is off here: {self.caps['udp_gro'].detail}")
        sender = self.plain()
        data = pattern(64 * 4, seed=3)
        gso_sendmsg(sender, data, 64, rx.getsockname())
        batch = PacketBatch(256, burstio.GRO_SLOT_MIN, slots=2)
        assert rx.recv_batch(batch, 2.0) == 4
        assert memoryview(batch.offsets)[:4].tolist() == [0, 64, 128, 192]  # no copy: one slot
        assert bytes(memoryview(batch)[:256]) == data

    def test_gro_batch_out_of_entries_keeps_the_rest_coalesced(self):
        require_kernel("udp_segment")
        rx = self.sockets.receiver(gro=True)
        if not rx.gro:
            pytest.skip(f"UDP GRO is off here: {self.caps['udp_gro'].detail}")
        sender = self.plain()
        data = pattern(10 * 50, seed=4)
        gso_sendmsg(sender, data, 50, rx.getsockname())
        batch = PacketBatch(4, burstio.GRO_SLOT_MIN, slots=1)
        assert rx.recv_batch(batch, 2.0) == 4
        got = entries(batch)
        assert payloads(got) == [data[:50], data[50:100], data[100:150], data[150:]]
        assert [g[2] for g in got] == [FLAG_GRO] * 3 + [FLAG_GRO | FLAG_COALESCED]
        assert [g[3] for g in got] == [50] * 4
        assert rx.counters["rx_datagrams"] == 10  # the coalesced entry counts its 7

    def test_gro_needs_big_slots(self):
        rx = self.make_socket(gro=True)
        if not rx.gro:
            pytest.skip(f"UDP GRO is off here ({self.caps['udp_gro'].detail}): no slot size check")
        msg = ("UDP GRO is on and a coalesced receive can reach 64 KiB: the batch needs slot_size >= 65535, "
               "got 2048 (e.g. PacketBatch(1024, 65535, slots=16))")
        with pytest.raises(ValueError, match=re.escape(msg)):
            rx.recv_batch(PacketBatch(64, 2048), 0)

    def test_gro_off_by_default(self):
        rx = self.make_socket()
        assert rx.gro is False
        assert rx.recv_batch(PacketBatch(4, 16), 0) == 0  # small slots are fine without GRO

    # ---- counters ---------------------------------------------------------------------

    def test_counters_consistent_with_traffic(self):
        rx, tx = self.make_pair()
        dest = rx.getsockname()
        sizes = [10, 20, 30, 30, 30, 5, 0, 700]
        out = self.batch_of((pattern(n, seed=n), dest) for n in sizes)
        assert set(tx.counters) == COUNTER_NAMES
        assert all(v == 0 for v in tx.counters.values())
        assert tx.send_batch(out) == len(sizes)
        assert tx.send_segments(pattern(250), 100, dest) == 3
        batch = PacketBatch(4, 2048)
        got, calls = [], 0
        while len(got) < len(sizes) + 3:
            n = rx.recv_batch(batch, 2.0)
            assert n > 0
            calls += 1
            got += entries(batch)
        assert rx.recv_batch(batch, 0) == 0
        t, r = tx.counters, rx.counters
        assert (t["tx_datagrams"], t["tx_bytes"], t["tx_batches"]) == (len(sizes) + 3, sum(sizes) + 250, 2)
        assert t["tx_syscalls"] >= 2 and t["tx_errors"] == 0 and t["gso_downgrades"] == 0
        assert (r["rx_datagrams"], r["rx_bytes"], r["rx_batches"]) == (len(sizes) + 3, sum(sizes) + 250, calls)
        assert r["rx_syscalls"] >= calls
        assert r["rx_truncated"] == r["kernel_drops"] == 0
        assert all(v == 0 for k, v in r.items() if k.startswith("tx_"))
        assert all(v == 0 for k, v in t.items() if k.startswith("rx_"))
        rx.reset_counters()
        assert all(v == 0 for v in rx.counters.values())
        if self.variant.expect == "mmsg":
            assert r["rx_syscalls"] <= 2 * calls + 1  # one recvmmsg per call (+ a poll when waiting)

    def test_kernel_drops_counted(self):
        rx = self.make_socket(rcvbuf=2048)
        sender = self.plain()
        sent = 200
        for i in range(sent):
            sender.sendto(pattern(500, i), rx.getsockname())
        # exact at the moment of asking, before anything was received
        dropped = rx.counters["kernel_drops"]
        assert dropped > 0
        batch = PacketBatch(64, 1024)
        received = 0
        while n := rx.recv_batch(batch, 0.05):
            received += n
        c = rx.counters
        # nothing lost silently: every datagram was received or counted as dropped
        assert received == c["rx_datagrams"] == sent - dropped
        assert c["kernel_drops"] == dropped
        rx.reset_counters()
        assert rx.counters["kernel_drops"] == 0  # counted from the reset on

    def test_offsets_past_the_buffer_are_refused(self):
        """offsets/lengths are writable arrays; a send must not read past the
        memory an entry points into (nothing leaks onto the network)."""
        rx, tx = self.make_pair()
        out = PacketBatch(4, 16)
        out.add_slices(b"abcd", 4, addr=rx.getsockname())
        np.asarray(out.lengths)[0] = 4000
        with pytest.raises(ValueError, match=re.escape(
                "datagram 0: offset 0 + length 4000 runs past the 4-byte buffer it points into")):
            tx.send_batch(out)
        out.clear()
        out.append(b"x", rx.getsockname())
        np.asarray(out.offsets)[0] = 2 ** 40
        with pytest.raises(ValueError, match="datagram 0: offset 1099511627776 "):
            tx.send_batch(out)
        assert tx.counters["tx_datagrams"] == 0

    def test_skip_with_many_bad_datagrams_in_gso_runs(self):
        """Equal datagrams to a destination the kernel refuses (port 0) form
        GSO runs; skipping them flags every one in one user call, sends the
        good ones, and does not switch GSO off."""
        rx, tx = self.make_pair()
        good, bad = rx.getsockname(), ("127.0.0.1", 0)
        items = [(b"g" * 20, good)] * 4 + [(b"b" * 20, bad)] * 100 + [(b"g" * 20, good)] * 4
        out = self.batch_of(items, capacity=128)
        assert tx.send_batch(out, on_error="skip") == len(items)  # entries processed
        assert out.send_errors() == [(i, errno.EINVAL) for i in range(4, 104)]
        c = tx.counters
        assert c["tx_errors"] == 100 and c["tx_datagrams"] == 8
        assert c["tx_batches"] == 1
        assert tx.gso == self.gso and c["gso_downgrades"] == 0
        assert payloads(recv_all(rx, PacketBatch(16, 64), 8)) == [b"g" * 20] * 8

    def test_socket_without_close_is_freed_without_the_gc(self):
        gc.disable()
        try:
            s = self.make_socket()
            ref = weakref.ref(s)
            port = s.getsockname()
            self.sockets.forget(s)
            del s
            assert ref() is None  # no reference cycle keeps it
        finally:
            gc.enable()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(port)  # and the port is free again

    def test_timestamps(self):
        rx, tx = self.make_pair(rx={"timestamps": True})
        assert rx.timestamps == self.caps.so_timestampns
        if not rx.timestamps:
            pytest.skip(f"kernel lacks SO_TIMESTAMPNS: {self.caps['so_timestampns'].detail}")
        batch = PacketBatch(4, 64)
        before = time.time_ns()
        tx.send_batch(self.batch_of([(b"c", rx.getsockname())]))
        after = time.time_ns()
        assert rx.recv_batch(batch, 2.0) == 1
        ts = batch.timestamps[0]
        # ns since the epoch, taken by the kernel around when we sent (a
        # generous window: this checks the unit and the clock, not timing)
        assert before - 5_000_000_000 <= ts <= after + 5_000_000_000
        # and without timestamps=True they stay 0
        plain_rx, tx2 = self.make_pair()
        assert plain_rx.timestamps is False
        tx2.send_batch(self.batch_of([(b"d", plain_rx.getsockname())]))
        assert plain_rx.recv_batch(batch, 2.0) == 1
        assert batch.timestamps[0] == 0

    def test_timestamps_every_entry(self):
        rx, tx = self.make_pair(rx={"timestamps": True})
        if not rx.timestamps:
            pytest.skip(f"kernel lacks SO_TIMESTAMPNS: {self.caps['so_timestampns'].detail}")
        before = time.time_ns()
        tx.send_batch(self.batch_of([(bytes([i]), rx.getsockname()) for i in range(5)]))
        after = time.time_ns()
        batch = PacketBatch(8, 64)
        assert rx.recv_batch(batch, 2.0) == 5
        ts = np.asarray(batch.timestamps)[:5]
        assert ts.dtype == np.int64
        assert np.all(ts >= before - 5_000_000_000) and np.all(ts <= after + 5_000_000_000)

    # ---- batches across calls ---------------------------------------------------------

    def test_echo_received_batch_back_to_senders(self):
        """The package docstring's echo: recv_batch, then send_batch the same batch."""
        rx = self.sockets.receiver()
        a, b = self.plain(), self.plain()
        for i in range(4):
            a.sendto(b"a%d" % i, rx.getsockname())
            b.sendto(b"b%d" % i, rx.getsockname())
        batch = PacketBatch(16, 64)
        assert rx.recv_batch(batch, 2.0) == 8
        assert rx.send_batch(batch) == 8
        assert [d for d, _ in recv_plain(a, 4)] == [b"a%d" % i for i in range(4)]
        assert [d for d, _ in recv_plain(b, 4)] == [b"b%d" % i for i in range(4)]

    def test_echo_gro_entries_back(self):
        require_kernel("udp_segment")
        rx = self.sockets.receiver(gro=True)
        peer = self.plain()
        data = pattern(40 * 30 + 7, seed=8)
        gso_sendmsg(peer, data, 40, rx.getsockname())
        batch = PacketBatch(256, burstio.GRO_SLOT_MIN, slots=32)  # 32 slots: enough without GRO too
        assert rx.recv_batch(batch, 2.0) == 31
        assert rx.send_batch(batch) == 31
        want = [data[i:i + 40] for i in range(0, len(data), 40)]
        assert [d for d, _ in recv_plain(peer, 31)] == want
        if rx.gro and self.gso:
            assert rx.counters["tx_gso_datagrams"] == 31

    def test_append_after_receive_keeps_received_payloads(self):
        """append() copies into "the next free slot": after a receive the
        received datagrams' slots are not free."""
        rx = self.sockets.receiver()
        sender = self.plain()
        for p in (b"first", b"second"):
            sender.sendto(p, rx.getsockname())
        batch = PacketBatch(8, 64)
        assert rx.recv_batch(batch, 2.0) == 2
        try:
            i = batch.append(b"NEW", (V4, 9))
        except ValueError:
            pass  # refusing is fine too
        else:
            assert i == 2 and bytes(batch[2]) == b"NEW"
        assert bytes(batch[0]) == b"first"
        assert bytes(batch[1]) == b"second"

    def test_recv_replaces_slices_of_an_external_buffer(self):
        rx = self.sockets.receiver()
        batch = PacketBatch(8, 64)
        external = bytearray(b"0123456789")
        batch.add_slices(external, 5)
        self.plain().sendto(b"fresh", rx.getsockname())
        assert rx.recv_batch(batch, 2.0) == 1
        assert bytes(batch[0]) == b"fresh"
        assert external == bytearray(b"0123456789")
        batch.clear()
        assert batch.append(b"ok") == 0

    def test_batch_in_use_by_a_waiting_receive_is_refused(self):
        """While recv_batch waits on a batch (GIL released), another thread
        may not change that batch."""
        require_syscall_introspection()
        rx = self.sockets.receiver()
        sender = self.plain()
        batch = PacketBatch(8, 64)
        outcome = []

        def meddle():
            assert wait_for(main_thread_blocked_in_syscall)
            try:
                batch.append(b"meddling")
                outcome.append("appended")
            except RuntimeError as e:
                outcome.append(str(e))
            sender.sendto(b"real", rx.getsockname())

        t = Helper(meddle)
        with rescue(rx.getsockname()):
            t.start()
            n = rx.recv_batch(batch, 60.0)
        t.join()
        assert outcome == ["PacketBatch is in use by another call (a send or receive in another thread)"]
        assert n == 1 and bytes(batch[0]) == b"real"

    def test_unconnected_send_without_address(self):
        rx, tx = self.make_pair()
        out = self.batch_of([(b"to", rx.getsockname()), (b"nowhere", None)], capacity=4)
        with pytest.raises(SendError) as ei:
            tx.send_batch(out)
        assert (ei.value.errno, ei.value.index, ei.value.sent) == (errno.EDESTADDRREQ, 1, 1)

    def test_gso_downgrade_then_a_later_error(self):
        """Downgraded in the middle of a batch, the resend still reports a
        later datagram's own error with its index."""
        rx, tx = self._no_checksum_sender()
        dest = rx.getsockname()
        items = [(pattern(100, i), dest) for i in range(6)] + [(b"port 0", (V4, 0)), (b"last", dest)]
        out = self.batch_of(items, capacity=8)
        with pytest.raises(SendError) as ei:
            tx.send_batch(out)
        assert (ei.value.errno, ei.value.index, ei.value.sent) == (errno.EINVAL, 6, 6)
        assert payloads(recv_all(rx, PacketBatch(16, 2048), 6)) == [p for p, _ in items[:6]]
        assert tx.counters["gso_downgrades"] == (1 if self.gso else 0)

    def test_send_segments_needs_a_contiguous_buffer(self):
        _rx, tx = self.make_pair()
        strided = memoryview(bytearray(20))[::2]
        with pytest.raises((TypeError, ValueError)):
            tx.send_segments(strided, 2, (V4, 9))
        with pytest.raises(TypeError):
            tx.send_segments("text", 2, (V4, 9))
        assert tx.counters["tx_datagrams"] == 0

    def test_bind_to_a_port_in_use(self):
        s = self.make_socket()
        with pytest.raises(OSError) as ei:
            burstio.BurstSocket.bind(s.getsockname(), **self.variant.kwargs)
        assert ei.value.errno == errno.EADDRINUSE

    # ---- wrapping sockets and bad input ---------------------------------------------

    def test_wraps_an_existing_socket_and_owns_it(self):
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind((V4, 0))
        s = self.sockets.track(burstio.BurstSocket(raw, **self.variant.kwargs))
        assert s.sock is raw and s.fileno() == raw.fileno()
        assert s.getsockname() == raw.getsockname()
        self.plain().sendto(b"hi", raw.getsockname())
        assert payloads(recv_all(s, PacketBatch(4, 64), 1)) == [b"hi"]
        with s:
            pass
        assert raw.fileno() == -1

    def test_rejects_tcp_socket(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            msg = "BurstSocket needs a UDP socket (SOCK_DGRAM), got SOCK_STREAM"
            with pytest.raises(ValueError, match=re.escape(msg)):
                burstio.BurstSocket(tcp, **self.variant.kwargs)

    def test_rejects_unix_socket(self):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix, \
                pytest.raises(ValueError, match="BurstSocket needs an AF_INET or AF_INET6 socket, got "):
            burstio.BurstSocket(unix, **self.variant.kwargs)

    def test_rejects_closed_socket(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.close()
        with pytest.raises(OSError) as ei:
            burstio.BurstSocket(s, **self.variant.kwargs)
        assert ei.value.errno == errno.EBADF

    @pytest.mark.parametrize("thing", [3, "udp", object()])
    def test_rejects_non_socket(self, thing):
        with pytest.raises(TypeError, match=re.escape(f"sock must be a socket.socket, got {type(thing).__name__}")):
            burstio.BurstSocket(thing, **self.variant.kwargs)

    def test_rejects_unknown_backend_and_family(self):
        with pytest.raises(ValueError, match=re.escape(
                "backend must be one of 'auto', 'mmsg', 'msg', 'portable', got 'fast'")):
            burstio.BurstSocket(backend="fast")
        with pytest.raises(ValueError, match="family must be AF_INET or AF_INET6, got "):
            burstio.BurstSocket(family=socket.AF_UNIX, **self.variant.kwargs)

    def test_operations_after_close_are_ebadf(self):
        s = self.make_socket()
        out = self.batch_of([(b"x", (V4, 9))])
        s.close()
        s.close()  # closing twice is fine
        for op in (lambda: s.recv_batch(PacketBatch(4, 64), 0),
                   lambda: s.recv_batch(PacketBatch(4, 64)),
                   lambda: s.send_batch(out),
                   lambda: s.send_segments(b"abc", 1, (V4, 9))):
            with pytest.raises(OSError) as ei:
                op()
            assert ei.value.errno == errno.EBADF
        assert "closed" in repr(s)

    @pytest.mark.parametrize("timeout,exc,msg", [
        ("1", TypeError, "timeout must be a number of seconds or None, got str"),
        (True, TypeError, "timeout must be a number of seconds or None, got bool"),
        (-1, ValueError, "timeout must be >= 0 or None, got -1"),
        (-0.5, ValueError, "timeout must be >= 0 or None, got -0.5"),
        (float("nan"), ValueError, "timeout must be >= 0 or None, got nan"),
    ])
    def test_recv_timeout_validation(self, timeout, exc, msg):
        rx = self.make_socket()
        with pytest.raises(exc, match=re.escape(msg)):
            rx.recv_batch(PacketBatch(4, 64), timeout)

    def test_recv_needs_a_batch(self):
        rx = self.make_socket()
        msg = "recv_batch() argument 1 must be burstio.PacketBatch, not bytearray"
        with pytest.raises(TypeError, match=re.escape(msg)):
            rx.recv_batch(bytearray(64), 0)

    def test_infinite_timeout_means_forever(self):
        rx = self.make_socket()
        self.plain().sendto(b"inf", rx.getsockname())
        batch = PacketBatch(4, 64)
        assert rx.recv_batch(batch, float("inf")) == 1
        assert bytes(batch[0]) == b"inf"

    # ---- busy polling (each mechanism, on every backend) ----------------------

    def _socket_busy_polling(self, monkeypatch, busy: str) -> burstio.BurstSocket:
        """A socket of this variant, busy polling through ``busy`` ("off": not)."""
        if busy == "off":
            return self.make_socket()
        self.busy_poll_mechanism(monkeypatch, busy)
        rx = self.make_socket()
        assert rx.busy_poll(50, mechanism=busy) == busy
        return rx

    def busy_poll_mechanism(self, monkeypatch, mech: str) -> None:
        """Need the busy-poll mechanism ``mech`` (skipped, saying why, where
        the kernel lacks it); the tests ask for it by name."""
        use_variant(self.variant.extended(needs=["so_busy_poll" if mech == "socket" else "epoll_busy_poll"]),
                    monkeypatch)

    @pytest.mark.parametrize("mech", ["epoll", "socket"])
    def test_busy_poll_receives_everything_and_times_out(self, monkeypatch, mech):
        self.busy_poll_mechanism(monkeypatch, mech)
        rx, tx = self.make_pair()
        assert rx.busy_polling == "off"
        assert rx.busy_poll(30, 8, mechanism=mech) == mech
        assert rx.busy_polling == mech
        what = "the socket (SO_BUSY_POLL)" if mech == "socket" else "the epoll instance (EPIOCSPARAMS)"
        assert rx.describe().endswith(f", busy polling through {what}: 30 us, budget 8, prefer off "
                                      f"({mech}: asked for)")
        b = PacketBatch(64, 2048)
        assert rx.recv_batch(b, 0.02) == 0  # nothing there: waits (polling), then times out
        payloads = [bytes([i]) * (i + 1) for i in range(40)]
        tx.send_batch(self.batch_of((p, rx.getsockname()) for p in payloads))
        got = [g[0] for g in recv_all(rx, b, len(payloads))]
        assert got == payloads
        # a receive that must wait for its datagram (blocking socket, no timeout)
        plain = self.plain()
        threading.Timer(0.05, plain.sendto, (b"late", rx.getsockname())).start()
        assert rx.recv_batch(b) == 1 and bytes(b[0]) == b"late"

    @pytest.mark.parametrize("mech", ["epoll", "socket"])
    def test_busy_poll_off_and_close_release_everything(self, monkeypatch, mech):
        self.busy_poll_mechanism(monkeypatch, mech)
        rx, tx = self.make_pair()
        gc.collect()  # so that no other test's garbage closes descriptors meanwhile
        fds = open_fds()
        rx.busy_poll(10, mechanism=mech)
        if mech == "epoll":
            assert open_fds() - fds  # its epoll instance (the portable twin holds a duplicate too)
        assert rx.busy_poll(0) == "off" and rx.busy_polling == "off"
        assert open_fds() - fds == set()
        if mech == "socket":
            assert rx.sock.getsockopt(socket.SOL_SOCKET, SO_BUSY_POLL) == 0
        tx.send_batch(self.batch_of([(b"after", rx.getsockname())]))
        b = PacketBatch(4, 2048)
        assert rx.recv_batch(b, 2.0) == 1 and bytes(b[0]) == b"after"
        rx.busy_poll(10, mechanism=mech)
        sock_fd = rx.fileno()
        rx.close()
        left = open_fds()
        assert sock_fd not in left and left - fds == set()  # the socket and its epoll are gone
        with pytest.raises(OSError) as ei:
            rx.busy_poll(10)
        assert ei.value.errno == errno.EBADF

    def test_busy_poll_bad_arguments(self):
        s = self.make_socket()
        with pytest.raises(TypeError, match="usecs must be int, got float"):
            s.busy_poll(1.5)
        with pytest.raises(ValueError, match="usecs must be between 0 and 2147483647, got -1"):
            s.busy_poll(-1)
        with pytest.raises(ValueError, match="budget must be between 0 and 65535, got 70000"):
            s.busy_poll(10, 70000)
        with pytest.raises(TypeError, match="prefer must be bool, got int"):
            s.busy_poll(10, 8, 1)
        with pytest.raises(TypeError, match="mechanism must be str, got NoneType"):
            s.busy_poll(10, mechanism=None)
        with pytest.raises(ValueError, match="mechanism must be 'auto', 'socket', 'epoll' or 'io_uring', got 'spin'"):
            s.busy_poll(10, mechanism="spin")
        with pytest.raises(ValueError, match="mechanism 'io_uring' does not fit a BurstSocket: it waits in its "
                                             r"receive call \(or an epoll instance of its own\); it takes "
                                             "'auto', 'socket' or 'epoll'"):
            s.busy_poll(10, mechanism="io_uring")
        assert s.busy_polling == "off" and "busy polling" not in s.describe()

    def test_busy_poll_auto_takes_the_socket(self, monkeypatch):
        """One socket: "auto" busy polls through the socket (the receive polls
        itself, no epoll_wait first), and describe() says so and why."""
        self.busy_poll_mechanism(monkeypatch, "socket")
        rx, tx = self.make_pair()
        assert rx.busy_poll(25) == "socket" and rx.busy_polling == "socket"
        assert rx.sock.getsockopt(socket.SOL_SOCKET, SO_BUSY_POLL) == 25
        assert rx.describe().endswith(", busy polling through the socket (SO_BUSY_POLL): 25 us, budget 8, prefer "
                                      "off (auto: one socket: SO_BUSY_POLL, the receive polls itself, no epoll_wait "
                                      "first)")
        tx.send_batch(self.batch_of([(b"polled", rx.getsockname())]))
        b = PacketBatch(4, 2048)
        assert rx.recv_batch(b, 2.0) == 1 and bytes(b[0]) == b"polled"

    def test_busy_poll_auto_without_so_busy_poll_takes_the_epoll_instance(self, monkeypatch):
        """SO_BUSY_POLL forced off: "auto" falls back to an epoll instance of
        the socket's own, and says why."""
        use_variant(self.variant.extended(off=["so_busy_poll"], needs=["epoll_busy_poll"]), monkeypatch)
        rx, tx = self.make_pair()
        assert rx.busy_poll(25) == "epoll"
        assert ("busy polling through the epoll instance (EPIOCSPARAMS): 25 us, budget 8, prefer off (auto: "
                "SO_BUSY_POLL is off here (disabled by BURSTIO_DISABLE)") in rx.describe()
        tx.send_batch(self.batch_of([(b"polled", rx.getsockname())]))
        b = PacketBatch(4, 2048)
        assert rx.recv_batch(b, 2.0) == 1 and bytes(b[0]) == b"polled"

    # ---- close wakes every waiter; descriptors; fork ------------------------------

    @pytest.mark.parametrize("wait", ["poll", "busy-epoll", "busy-spin", "busy-socket"])
    def test_close_from_another_thread_wakes_a_blocked_receive(self, monkeypatch, wait):
        """recv_batch blocked in another thread (timeout=None: in the receive
        syscall itself, busy polling through the socket or not, or in the
        busy-polling epoll instance; with a deadline and busy polling through
        the socket: spinning) ends at once when the BurstSocket is
        closed, with OSError EBADF, and the port is released."""
        require_syscall_introspection()
        mech = {"busy-epoll": "epoll", "busy-spin": "socket", "busy-socket": "socket"}.get(wait)
        if mech is not None:
            self.busy_poll_mechanism(monkeypatch, mech)
        rx = self.make_socket()
        addr = rx.getsockname()
        if mech is not None:  # spin: 10 s before it would sleep
            rx.busy_poll(10_000_000 if wait == "busy-spin" else 50, mechanism=mech)
        errors: list[OSError] = []
        tid: list[int | None] = []

        def waiter() -> None:
            tid.append(threading.get_native_id())
            try:
                rx.recv_batch(PacketBatch(4, 64), 3600.0 if wait == "busy-spin" else None)
            except OSError as e:
                errors.append(e)
        t = Helper(waiter)
        with rescue(addr):
            t.start()
            if wait == "busy-spin":
                assert wait_for(lambda: rx.counters["rx_syscalls"] > 50)  # spinning in receives
            elif wait in ("busy-socket", "poll"):  # asleep in the receive itself, not in poll()
                assert wait_for(lambda: bool(tid) and thread_syscall(tid[0]) in ("recvmmsg", "recvmsg"))
            else:  # in the busy-polling epoll instance
                assert wait_for(lambda: bool(tid) and thread_syscall(tid[0]) in ("epoll_wait", "epoll_pwait"))
            rx.close()
            t.join(10)
        assert not t.is_alive() and t.error is None
        assert len(errors) == 1 and errors[0].errno == errno.EBADF
        assert "closed while waiting" in str(errors[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(addr)  # nothing holds the port any more

    @pytest.mark.parametrize("busy", ["off", "socket"])
    def test_receive_without_deadline_blocks_in_the_receive_one_call_per_burst(self, monkeypatch, busy):
        """recv_batch(timeout=None) sleeps in the receive syscall itself
        (busy polling through the socket: after spinning for usecs, and the
        kernel busy polls by SO_BUSY_POLL there), not in poll(): a burst
        already queued takes one recvmmsg, and a datagram arriving while it
        sleeps is taken by the call that slept, with no second syscall
        (recvmsg backends: one per datagram, and one more that finds the
        queue empty)."""
        require_syscall_introspection()
        rx = self._socket_busy_polling(monkeypatch, busy)
        sender = self.plain()
        mmsg = rx.describe().startswith("recvmmsg")
        for k in range(3):
            sender.sendto(b"queued-%d" % k, rx.getsockname())
        rx.sock.settimeout(None)
        assert rx.sock.recv(64, socket.MSG_PEEK) == b"queued-0"  # queued
        batch = PacketBatch(8, 64)
        rx.reset_counters()
        got: list[bytes] = []
        while len(got) < 3:  # with nothing left to take, a broken build would block here
            got += [bytes(batch[i]) for i in range(rx.recv_batch(batch, None))]
        assert got == [b"queued-%d" % k for k in range(3)]
        if mmsg:
            assert rx.counters["rx_syscalls"] == rx.counters["rx_batches"]  # one recvmmsg per burst
        tid: list[int] = []

        def send_when_asleep() -> None:
            assert wait_for(lambda: bool(tid) and thread_syscall(tid[0]) in ("recvmmsg", "recvmsg"))
            sender.sendto(b"woke", rx.getsockname())
        t = Helper(send_when_asleep)
        rx.reset_counters()
        with rescue(rx.getsockname()):
            t.start()
            tid.append(threading.get_native_id())
            n = rx.recv_batch(batch, None)
            t.join()
        assert n == 1 and bytes(batch[0]) == b"woke"
        if busy == "off":  # (busy polling, the receive spins for usecs before it blocks)
            assert rx.counters["rx_syscalls"] == (1 if mmsg else 2)
        rx.close()
        with pytest.raises(OSError) as e:
            rx.recv_batch(batch, None)
        assert e.value.errno == errno.EBADF

    @pytest.mark.parametrize("case", ["deadline", "non-blocking socket"])
    def test_receive_that_cannot_block_in_the_kernel_waits_in_poll(self, case):
        """A receive with a deadline, or without one on a non-blocking socket,
        waits in poll() (with the wake eventfd), not in the receive syscall,
        and still takes the datagram that comes and ends at close()."""
        require_syscall_introspection()
        rx = self.make_socket()
        sender = self.plain()
        if case == "non-blocking socket":
            rx.setblocking(False)
        tid: list[int] = []
        got: list[bytes] = []
        errors: list[OSError] = []

        def waiter() -> None:
            tid.append(threading.get_native_id())
            b = PacketBatch(4, 64)
            try:
                while True:
                    got.extend(bytes(b[i]) for i in range(rx.recv_batch(b, 3600.0 if case == "deadline" else None)))
            except OSError as e:
                errors.append(e)
        t = Helper(waiter)
        with rescue(rx.getsockname()):
            t.start()
            assert wait_for(lambda: bool(tid) and thread_syscall(tid[0]) in POLLS)
            sender.sendto(b"came", rx.getsockname())
            assert wait_for(lambda: got == [b"came"])
            assert wait_for(lambda: thread_syscall(tid[0]) in POLLS)
            rx.close()
            t.join(10)
        assert [e.errno for e in errors] == [errno.EBADF]

    @pytest.mark.parametrize("busy", ["off", "socket"])
    def test_close_shuts_the_receive_side_of_a_dup_only_under_a_blocked_receive(self, monkeypatch, busy):
        """What close() does to wake a receive asleep in the kernel (busy
        polling through the socket or not) reaches the socket itself: a dup
        the caller kept reads end-of-data at once afterwards (documented); a
        close with no receive waiting shuts nothing down."""
        require_syscall_introspection()
        idle = self._socket_busy_polling(monkeypatch, busy)
        kept_idle = self.sockets.track(idle.sock.dup())
        idle.close()
        assert not receive_shut_down(kept_idle)  # nothing waited: nothing shut down
        rx = self._socket_busy_polling(monkeypatch, busy)
        kept = self.sockets.track(rx.sock.dup())
        tid: list[int] = []
        errors: list[OSError] = []

        def waiter() -> None:
            tid.append(threading.get_native_id())
            try:
                rx.recv_batch(PacketBatch(4, 64), None)
            except OSError as e:
                errors.append(e)
        t = Helper(waiter)
        with rescue(rx.getsockname()):
            t.start()
            assert wait_for(lambda: bool(tid) and thread_syscall(tid[0]) in ("recvmmsg", "recvmsg"))
            rx.close()
            t.join(10)
        assert [e.errno for e in errors] == [errno.EBADF]
        assert receive_shut_down(kept)
        kept.settimeout(None)
        assert kept.recv(64) == b""  # a blocking receive returns at once, empty

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    @pytest.mark.parametrize("busy", ["off", "socket"])
    def test_a_forked_child_waits_in_poll(self, monkeypatch, busy):
        """A fork()ed child shares the socket: its receives do not block in
        the kernel (its close() must not shut the parent's receive side
        down), and still receive."""
        rx = self._socket_busy_polling(monkeypatch, busy)
        ours, theirs = FORK.Pipe()

        def in_child() -> None:
            b = PacketBatch(4, 64)
            blocks = rx._io.block_rx
            n = rx.recv_batch(b, 10.0)
            theirs.send((blocks, bytes(b[0]) if n else b"nothing"))
            rx.close()
        with child(in_child) as p:
            self.plain().sendto(b"for-the-child", rx.getsockname())
            assert ours.poll(10)
            got = ours.recv()
            p.join(10)
        assert got == (False, b"for-the-child") and p.exitcode == 0
        assert rx._io.block_rx  # the parent's own receives still block in the kernel

    @pytest.mark.parametrize("call", ["send_batch", "send_batch-skip", "send_batch-one", "send_segments"])
    def test_close_from_another_thread_wakes_a_blocked_send(self, slow_netns, call):
        """A blocking socket with a full send buffer (SO_SNDBUF 4 KiB, a
        loopback draining through tbf at 2 Mbit/s) makes a send wait for
        room. close() in another thread ends that wait at once with
        OSError(EBADF, "... closed while waiting"), its ``sent`` saying how
        far the send got; a send skipping errors too (the close is no
        datagram's error to flag and skip); a send of one datagram at a time
        too (the C backends try it holding the GIL, and wait for room with
        the GIL released, where close() runs)."""
        require_syscall_introspection()
        rx = socket_in(slow_netns)
        self.sockets.track(rx)
        tx = burstio.BurstSocket(socket_in(slow_netns, sndbuf=4096), **self.variant.kwargs)
        assert tx.sock.getblocking()
        total = 1000  # about 1 MB: 4 s at 2 Mbit/s, far more than SO_SNDBUF holds
        if call != "send_segments":  # sizes alternate: no GSO run (one skb, taken whole past SO_SNDBUF)
            batch = self.batch_of([(bytes(1000 + k % 2), rx.getsockname()) for k in range(total)])
        errors: list[OSError] = []
        tid: list[int] = []
        one_sent: list[int] = []

        def sender() -> None:
            tid.append(threading.get_native_id())
            try:
                if call == "send_batch-one":
                    for k in range(total):
                        one_sent.append(k)
                        tx.send_batch(batch, k, 1)
                elif call != "send_segments":
                    tx.send_batch(batch, on_error="skip" if call.endswith("skip") else "raise")
                else:
                    tx.send_segments(bytes(1000 * total), 1000, rx.getsockname())
            except OSError as e:
                errors.append(e)
        t = Helper(sender)
        t.start()
        assert wait_for(lambda: bool(tid) and thread_blocked_in_syscall(tid[0]))
        tx.close()
        t.join(30)
        assert not t.is_alive() and t.error is None
        assert len(errors) == 1 and errors[0].errno == errno.EBADF, errors
        assert "closed while waiting" in str(errors[0])
        if call == "send_batch-one":  # the call that waited sent nothing; the ones before it went
            assert errors[0].sent == 0 and 0 < len(one_sent) - 1 < total  # type: ignore[attr-defined]
        else:
            assert 0 < errors[0].sent < total  # type: ignore[attr-defined]

    def test_closing_the_wrapped_socket_leaves_batch_io_on_its_own_descriptor(self):
        """The BurstSocket works on its own dup: after the caller closes
        bs.sock and the number is reused by another socket, recv_batch and
        send_batch still act on the original socket and never touch the new
        one."""
        rx = self.make_socket()
        addr = rx.getsockname()
        number = rx.sock.fileno()
        rx.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        rx.sock.close()
        other = self.plain()  # the lowest free number: the one just closed
        other.setblocking(False)
        assert other.fileno() == number
        peer = self.plain()
        peer.sendto(b"to-original", addr)
        other_peer_addr = other.getsockname()
        b = PacketBatch(4, 64)
        assert rx.recv_batch(b, 2.0) == 1 and bytes(b[0]) == b"to-original"
        out = self.batch_of([(b"from-original", peer.getsockname())])
        assert rx.send_batch(out) == 1
        data, src = peer.recvfrom(64)
        assert (data, src) == (b"from-original", addr)  # sent from the original socket
        peer.sendto(b"to-other", other_peer_addr)
        assert other.recv(64) == b"to-other"  # the reused number's socket kept its datagram
        assert rx.recv_batch(b, 0) == 0
        with pytest.raises(BlockingIOError):
            other.recv(64)
        for _ in range(300):  # the smallest receive buffer overflows: the kernel drops and counts
            peer.sendto(bytes(1000), addr)
        assert rx.counters["kernel_drops"] > 0  # read through the BurstSocket's own descriptor
        rx.close()
        assert other.fileno() == number  # closing the BurstSocket leaves the other socket alone
        peer.sendto(b"still-there", other_peer_addr)
        assert wait_for(lambda: error_pending(other) or True) and other.recv(64) == b"still-there"

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_fork_child_keeps_working_and_parent_close_does_not_wake_it(self):
        """After fork() both processes may use the BurstSocket (a shared
        socket, as a pre-forking server has): closing it in the parent
        neither wakes nor closes the child's, and the child's close is its own."""
        rx = self.make_socket()
        addr = rx.getsockname()
        peer = self.plain()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            code = 1
            try:
                os.close(r)
                b = PacketBatch(4, 64)
                n = rx.recv_batch(b, 10.0)  # the parent closes its copy meanwhile
                os.write(w, bytes(b[0]) if n else b"nothing")
                rx.close()
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        rx.close()  # the parent's close: the child's receive must not wake
        peer.sendto(b"for-the-child", addr)
        got = os.read(r, 64)
        os.close(r)
        _pid, status = os.waitpid(pid, 0)
        assert got == b"for-the-child" and os.waitstatus_to_exitcode(status) == 0

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_a_childs_close_does_not_reach_the_parents_waiting_receive(self):
        """A fork()ed child that closes its copy without ever using it must
        not wake the parent's receive (the child's copy has no eventfd of its
        own): the parent's recv_batch keeps sleeping, making a handful of
        receive calls, not spinning on a wake-up meant for no one, until the
        datagram comes."""
        require_syscall_introspection()
        rx = self.make_socket()
        tx = self.plain()
        tid: list[int] = []
        got: list[bytes] = []

        def waiter() -> None:
            tid.append(threading.get_native_id())
            b = PacketBatch(4, 64)
            if rx.recv_batch(b, None):
                got.append(bytes(b[0]))
        t = Helper(waiter)
        with rescue(rx.getsockname()):
            t.start()
            assert wait_for(lambda: bool(tid) and thread_blocked_in_syscall(tid[0]))
            pid = os.fork()
            if pid == 0:  # the child: close its copy, never return into pytest
                code = 1
                try:
                    rx.close()
                    code = 0
                finally:
                    os._exit(code)
            _pid, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            before = rx.counters["rx_syscalls"]
            # a spinning waiter makes thousands of calls in the 0.1 s given to show it
            spun = wait_for(lambda: rx.counters["rx_syscalls"] - before > 8, limit=0.1)
            tx.sendto(b"after-the-child", rx.getsockname())
            t.join(10)
        assert not t.is_alive() and t.error is None
        assert got == [b"after-the-child"]
        assert not spun and rx.counters["rx_syscalls"] - before <= 8  # it slept until the datagram

    # ---- hostile threads -------------------------------------------------------

    @pytest.mark.parametrize("gso", [False, True], ids=["no-gso", "gso"])
    def test_arrays_rewritten_during_sends_never_reach_the_kernel(self, gso):
        """Another thread flips every entry's offset, length and address
        between its own values and hostile ones (past the end of the data, a
        garbage family) while sends run. Each send either refuses the entry
        it read (ValueError) or sends what it checked: every datagram that
        arrives is a slice of the caller's buffer, never other memory."""
        count = 1024
        rx = self.plain()
        rx.setblocking(False)
        tx = self.make_socket(gso=gso)
        data = payload_buffer(count)
        batch = PacketBatch(count, 64)
        batch.add_slices(data, SEGMENT, addr=rx.getsockname())
        racer = ArrayRacer(batch, count, len(data))
        stray: list[bytes] = []  # what arrived that is not a slice of data (each looked at once)
        failures: list[OSError] = []
        racer.start()
        try:
            for _attempt in range(attempts(40)):
                try:
                    tx.send_batch(batch, on_error="skip")
                except ValueError:
                    pass  # the entry read was out of range: refused before any send
                except OSError as e:  # EFAULT: the kernel was handed memory nobody checked
                    failures.append(e)
                with racer.paused():
                    stray += foreign(drained(rx), data)
                if stray or failures:
                    break
        finally:
            racer.stop()
        stray += foreign(drained(rx), data)
        assert racer.flips > 0
        assert not stray, f"{len(stray)} datagrams of other memory were sent"
        assert not [e for e in failures if e.errno == errno.EFAULT]
        assert batch.send_errors() == [] or all(err != errno.EFAULT for _i, err in batch.send_errors())

    def test_send_counters_ignore_flags_rewritten_during_sends(self):
        """Another thread writes every entry's flags (FLAG_SEND_ERROR set,
        then clear) while sends run: tx_datagrams and tx_errors still count
        exactly what the kernel took and what it refused, one in eight
        entries being addressed where the socket cannot send (IPv6 on IPv4)."""
        count = 512
        rx = self.plain()
        tx = self.make_socket()
        batch = PacketBatch(count, 64)
        bad = ("::1", 9, 0, 0)
        for k in range(count):
            batch.append(b"%015d" % k, bad if k % 8 == 7 else rx.getsockname())
        racer = FlagsRacer(batch, count)
        seen: list[tuple[int, int]] = []
        racer.start()
        try:
            for _attempt in range(attempts(20)):
                tx.reset_counters()
                assert tx.send_batch(batch, on_error="skip") == count
                c = tx.counters
                seen.append((c["tx_datagrams"], c["tx_errors"]))
                if seen[-1] != (count - count // 8, count // 8):
                    break
        finally:
            racer.stop()
        assert racer.flips > 0
        assert set(seen) == {(count - count // 8, count // 8)}, seen

    def test_concurrent_sends_each_report_their_own_outcome(self):
        """Two threads send on one BurstSocket at once: one a batch whose
        last entry the kernel refuses (IPv6 on an IPv4 socket), the other a
        batch that all goes. Each call reports its own outcome: the first
        always raises SendError naming its entry, the second never raises and
        sends everything (no call reads what the other's stop left behind)."""
        rx = self.plain()
        tx = self.make_socket()
        good = self.batch_of([(b"g%03d" % k, rx.getsockname()) for k in range(256)])
        bad = self.batch_of([(b"b%03d" % k, rx.getsockname()) for k in range(8)] + [(b"bad", ("::1", 9, 0, 0))])
        stop = threading.Event()
        problems: list = []

        def other() -> None:
            while not stop.is_set():
                try:
                    n = tx.send_batch(good)
                except OSError as e:
                    problems.append(("good batch raised", e))
                    return
                if n != len(good):
                    problems.append(("good batch sent", n))
                    return
        t = Helper(other)
        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # the threads take turns often: the old race shows quickly
        try:
            t.start()
            for _attempt in range(attempts(300)):
                try:
                    n = tx.send_batch(bad)
                except SendError as e:
                    if (e.errno, e.index, e.sent) != (errno.EAFNOSUPPORT, 8, 8):
                        problems.append(("bad batch raised", e.errno, e.index, e.sent))
                else:
                    problems.append(("bad batch returned", n))
                if problems:
                    break
        finally:
            stop.set()
            t.join(10)
            sys.setswitchinterval(old)
        assert not t.is_alive() and t.error is None
        assert not problems, problems


# ---- one class per backend variant ------------------------------------------------


class TestPortable(BackendContract):
    variant = UDP["portable"]


class TestMsg(BackendContract):
    variant = UDP["msg"]


class TestMmsg(BackendContract):
    variant = UDP["mmsg"]


class TestAutoWithoutGso(BackendContract):
    variant = UDP["auto-no-gso"]


class TestAutoWithoutGro(BackendContract):
    variant = UDP["auto-no-gro"]


class TestAutoWithoutMmsg(BackendContract):
    variant = UDP["auto-no-mmsg"]


# ---- not per backend ----------------------------------------------------------------


def test_mmsg_backend_refused_when_recvmmsg_forced_off(monkeypatch):
    set_disable(monkeypatch, "recvmmsg")
    with pytest.raises(OSError, match="backend 'mmsg' needs recvmmsg and sendmmsg: disabled by BURSTIO_DISABLE") as ei:
        burstio.BurstSocket(backend="mmsg")
    assert ei.value.errno == errno.EOPNOTSUPP


def test_auto_without_mmsg_falls_back_to_msg(monkeypatch):
    use_variant(UDP["auto-no-mmsg"], monkeypatch)
    with burstio.BurstSocket.bind((V4, 0)) as s:
        assert s.backend == "msg"
        assert s.describe().startswith("recvmsg + sendmsg, ")


def test_every_variant_covered():
    classes = [TestPortable, TestMsg, TestMmsg, TestAutoWithoutGso, TestAutoWithoutGro, TestAutoWithoutMmsg]
    assert sorted(c.variant.name for c in classes) == sorted(UDP)


# ---- differential: every variant against the portable oracle and the bytes sent ----------
#
# GRO splitting: a buffer sent with send_segments to a gro=True receiver must
# come back as exactly the datagrams sent, with the same entries (bytes,
# order, source, flags, segment sizes) as the portable backend returns.
# GSO coalescing: random batches sent with send_batch by each variant must
# arrive identically (received with the portable backend).

ORACLE = UDP["portable"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAMILY = st.sampled_from([socket.AF_INET, socket.AF_INET6])


def gro_round(variant: Variant, family: int, data: bytes, seg: int) -> tuple[list[tuple], int, bool]:
    """send_segments(data, seg) from a ``variant`` sender to a ``variant``
    receiver with gro=True. Returns (entries as (bytes, source is sender,
    flags, segment_size), send_segments' return, whether the datagrams could
    arrive coalesced: GSO on the sender and GRO on the receiver)."""
    want = -(-len(data) // seg)
    with variant_env(variant), Sockets(**variant.kwargs) as socks:
        rx = socks.receiver(family, gro=True)
        tx = socks.burst(family)
        n = tx.send_segments(data, seg, rx.getsockname())
        got = recv_all(rx, PacketBatch(1024, burstio.GRO_SLOT_MIN, slots=8), want, timeout=2.0, settle=0)
        src = tx.getsockname()
        return [(p, addr == src, flags, size) for p, addr, flags, size in got], n, rx.gro and tx.gso


def gro_marks(seg: int, count: int, max_segments: int) -> list[tuple[int, int]]:
    """(flags, segment size) of each datagram of a send_segments: it sends
    as many segments per message as fit in one UDP datagram (and the
    kernel's GSO limit); a message of two or more arrives GRO-marked, a
    message of one arrives as a plain datagram."""
    per = min(burstio.MAX_UDP_PAYLOAD // seg, max_segments)
    out = []
    for first in range(0, count, per):
        k = min(per, count - first)
        out += [(FLAG_GRO, seg) if k > 1 else (0, 0)] * k
    return out


@SETTINGS
@given(family=FAMILY, seg=st.integers(1, 1500), count=st.integers(1, 64), short=st.integers(0, 1499))
def test_gro_split_matches_oracle_and_bytes_sent(family, seg, count, short):
    require_kernel("udp_segment")
    caps = kernel_caps()
    last = seg - (short % seg)  # the last segment may be shorter (1..seg bytes)
    data = pattern(seg * (count - 1) + last, seed=seg + count)
    sent = [data[i:i + seg] for i in range(0, len(data), seg)]
    assert len(sent) == count

    oracle, n, oracle_gro = gro_round(ORACLE, family, data, seg)
    assert n == count
    assert [e[0] for e in oracle] == sent
    assert all(e[1] for e in oracle)
    if oracle_gro:
        assert [(e[2], e[3]) for e in oracle] == gro_marks(seg, count, caps.gso_max_segments)

    for v in runnable(UDP):
        if v is ORACLE:
            continue
        got, n, gro = gro_round(v, family, data, seg)
        assert n == count, v.name
        assert [e[0] for e in got] == sent, v.name
        assert all(e[1] for e in got), v.name
        if gro == oracle_gro:
            assert got == oracle, v.name
        else:  # GSO or GRO forced off: the same datagrams, without GRO marks
            assert [(e[2], e[3]) for e in got] == [(0, 0)] * count, v.name


# A batch to send: runs of (destination index, size, run length).
RUNS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 2000), st.integers(1, 12), st.integers(0, 2000)),
    min_size=1, max_size=10,
)


def build_items(runs, ndest: int) -> list[tuple[int, bytes]]:
    """Flatten runs into [(destination, payload)]; a run's last datagram may
    be shorter, which GSO allows."""
    items: list[tuple[int, bytes]] = []
    for dest, size, length, tail in runs:
        for k in range(length):
            n = min(size, tail) if k == length - 1 else size
            items.append((dest % ndest, pattern(n, seed=len(items))))
    return items[:64]


@SETTINGS
@given(family=FAMILY, ndest=st.integers(1, 3), runs=RUNS)
def test_send_batch_arrives_identically_from_every_backend(family, ndest, runs):
    items = build_items(runs, ndest)
    want = [[p for d, p in items if d == k] for k in range(ndest)]
    for v in runnable(UDP):
        with variant_env(v), Sockets(**v.kwargs) as socks:
            receivers = [socks.receiver(family, backend="portable") for _ in range(ndest)]
            tx = socks.burst(family)
            out = PacketBatch(64, 2000)
            for d, p in items:
                out.append(p, receivers[d].getsockname())
            assert tx.send_batch(out) == len(items), v.name
            src = tx.getsockname()
            for k, rx in enumerate(receivers):
                got = recv_all(rx, PacketBatch(64, 2048), len(want[k]), timeout=2.0, settle=0)
                assert [p for p, *_ in got] == want[k], (v.name, k)
                assert all(addr == src for _, addr, *_ in got), v.name
            c = tx.counters
            assert c["tx_datagrams"] == len(items), v.name
            assert c["tx_bytes"] == sum(len(p) for _, p in items), v.name
            if not tx.gso:
                assert c["tx_gso_datagrams"] == 0, v.name


# ---- the receive path's finishing step on made-up cmsgs (the fuzz hook) -----------------

_CMSG_HDR = struct.Struct("@QiI")  # struct cmsghdr: cmsg_len, cmsg_level, cmsg_type
_SOL_SOCKET, _SCM_TIMESTAMPNS = socket.SOL_SOCKET, burstio._native.SCM_TIMESTAMPNS
_SOL_UDP, _UDP_GRO = burstio._native.SOL_UDP, burstio._native.UDP_GRO


def cmsg(level: int, ctype: int, data: bytes, *, cmsg_len: int | None = None) -> bytes:
    """One control message as the kernel lays it out (padded to 8 bytes);
    ``cmsg_len`` overrides the length the header claims."""
    n = _CMSG_HDR.size + len(data) if cmsg_len is None else cmsg_len
    raw = _CMSG_HDR.pack(n, level, ctype) + data
    return raw + b"\0" * (-len(raw) % 8)


def gro_cmsg(seg: int, **kw) -> bytes:
    return cmsg(_SOL_UDP, _UDP_GRO, struct.pack("@i", seg), **kw)


parse = burstio._native.udp_parse_for_fuzz


def test_fuzz_hook_splits_a_valid_gro_message_as_recv_batch_does():
    entries = parse(gro_cmsg(100) + cmsg(_SOL_SOCKET, _SCM_TIMESTAMPNS, struct.pack("@qq", 5, 7)), 250,
                    65535, True)
    assert entries == [(0, 100, FLAG_GRO, 100), (100, 100, FLAG_GRO, 100), (200, 50, FLAG_GRO, 100)]


def test_fuzz_hook_without_cmsgs_and_truncated_datagram():
    assert parse(b"", 100, 2048, False) == [(0, 100, 0, 0)]
    assert parse(b"", 3000, 2048, False) == [(0, 2048, FLAG_TRUNCATED, 0)]
    assert parse(b"", 0, 1, False) == [(0, 0, 0, 0)]


def test_fuzz_hook_batch_without_room_keeps_the_rest_coalesced():
    """gro=False: one entry per slot, so a coalesced message stays one entry."""
    assert parse(gro_cmsg(10), 35, 2048, False) == [(0, 35, FLAG_GRO | FLAG_COALESCED, 10)]


@pytest.mark.parametrize("cut", range(1, 20))  # 20: the header and its int are all there
def test_fuzz_hook_truncated_cmsg_is_ignored(cut):
    """A control buffer cut anywhere inside its one message: no segment size is read."""
    assert parse(gro_cmsg(10)[:cut], 35, 65535, True) == [(0, 35, 0, 0)]


@pytest.mark.parametrize("claimed", [0, 1, 15, 19, 25, 64, 2**31, 2**64 - 1])
def test_fuzz_hook_lying_cmsg_len_reads_nothing_outside(claimed):
    """cmsg_len shorter than a header, shorter than its data, or past the
    buffer's end: the message is not used (the walk stops)."""
    assert parse(gro_cmsg(10, cmsg_len=claimed), 35, 65535, True) == [(0, 35, 0, 0)]


@pytest.mark.parametrize("seg", [0, -1, -2**31])
def test_fuzz_hook_zero_or_negative_segment_size_is_not_coalesced(seg):
    assert parse(gro_cmsg(seg), 35, 65535, True) == [(0, 35, 0, 0)]


def test_fuzz_hook_segment_larger_than_datagram_and_later_cmsgs():
    assert parse(gro_cmsg(1000), 35, 65535, True) == [(0, 35, 0, 0)]
    # an unknown message first, then the GRO one: the walk goes on past it
    assert parse(cmsg(99, 99, b"x" * 13) + gro_cmsg(20), 35, 65535, True) == [
        (0, 20, FLAG_GRO, 20), (20, 15, FLAG_GRO, 20)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(control=st.binary(max_size=200), length=st.integers(0, 2**32 - 1), slot_size=st.integers(1, 70000),
       gro=st.booleans())
def test_fuzz_hook_entries_stay_inside_the_slot(control, length, slot_size, gro):
    entries = parse(control, length, slot_size, gro)
    assert 1 <= len(entries) <= (64 if gro else 1)
    for off, n, _flags, _seg in entries:
        assert off + n <= slot_size


def test_fuzz_hook_argument_errors():
    with pytest.raises(ValueError, match=re.escape("length must be between 0 and 4294967295, got -1")):
        parse(b"", -1, 10, False)
    with pytest.raises(ValueError, match="slot_size must be between 1 and"):
        parse(b"", 1, 0, False)
    with pytest.raises(TypeError):
        parse("text", 1, 10, False)


@pytest.mark.parametrize("name", ["rcvbuf", "sndbuf"])
@pytest.mark.parametrize("value,error,msg", [
    (2**40, ValueError, "must be between 1 and 2147483647, got 1099511627776"),
    (0, ValueError, "must be between 1 and 2147483647, got 0"),
    ("big", TypeError, "must be int or None, got str"),
    (True, TypeError, "must be int or None, got bool"),
])
def test_buffer_sizes_are_checked_like_every_int(name, value, error, msg):
    with pytest.raises(error, match=re.escape(f"{name} {msg}")):
        burstio.BurstSocket(**{name: value})
