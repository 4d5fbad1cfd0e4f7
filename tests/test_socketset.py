"""burstio.SocketSet: one contract, run against every variant of
``support.variants.SOCKETSET`` (io_uring with and without SQPOLL or single
wakeups, epoll, and io_uring forced off so that "auto" falls back)."""
from __future__ import annotations

import errno
import os
import re
import signal
import socket
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import burstio
from burstio import FLAG_COALESCED, FLAG_GRO, FLAG_TRUNCATED, PacketBatch, SocketSet
from support.kernel import gso_sendmsg, require_syscall_introspection, thread_blocked_in_syscall
from support.net import V4, closed_port, force_rcvbuf
from support.proc import Helper, rescue, wait_for
from support.race import SEGMENT, ArrayRacer, attempts, drained, foreign, payload_buffer
from support.variants import SOCKETSET, Variant, use_variant, variant_env


def udp(stack: list, connect_to=None) -> socket.socket:
    """A UDP socket bound to loopback (room for a test's traffic), kept in ``stack`` to close."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stack.append(s)
    force_rcvbuf(s)
    s.bind((V4, 0))
    if connect_to is not None:
        s.connect(connect_to)
    return s


def take(sset: SocketSet, batch: PacketBatch, expect: int, timeout: float = 2.0) -> list[tuple]:
    """Receive until `expect` datagrams came: [(socket index, payload, source)]."""
    got: list[tuple] = []
    while len(got) < expect:
        n = sset.recv_batch(batch, timeout)
        if n == 0 and not sset.take_errors():
            break
        socks = np.asarray(batch.sockets)
        got += [(int(socks[i]), bytes(batch[i]), batch.addr(i)) for i in range(n)]
    return got


class SocketSetContract:
    """What every SocketSet backend must do. Subclasses set ``variant``."""

    variant: Variant  # one of support.variants.SOCKETSET

    @pytest.fixture(autouse=True)
    def _setup(self, monkeypatch):
        use_variant(self.variant, monkeypatch)
        self.socks: list = []
        self.ssets: list = []
        yield
        for sset in self.ssets:
            sset.close()
        for s in self.socks:
            s.close()

    def socket_set(self, **kw) -> SocketSet:
        """A SocketSet of this variant (closed after the test)."""
        sset = SocketSet(**{**self.variant.kwargs, **kw})
        self.ssets.append(sset)
        return sset

    @property
    def uring(self) -> bool:
        return self.variant.expect == "uring"

    # ---- receive -------------------------------------------------------

    def test_backend_is_what_was_asked(self):
        sset = self.socket_set()
        assert sset.backend == self.variant.expect
        assert ("io_uring" in sset.describe()) == self.uring
        if self.variant.kwargs.get("sqpoll"):
            assert "SQPOLL" in sset.describe()

    def test_receives_from_every_socket_with_its_index(self):
        sset = self.socket_set()
        rx = [udp(self.socks) for _ in range(16)]
        idx = [sset.add(s) for s in rx]
        assert idx == list(range(16)) and len(sset) == 16
        batch = PacketBatch(256)
        assert sset.recv_batch(batch, 0) == 0  # nothing yet (and the receives are armed)
        tx = udp(self.socks)
        sent = []
        for i, s in enumerate(rx):
            for k in range(i % 4 + 1):
                payload = b"%d:%d" % (i, k)
                tx.sendto(payload, s.getsockname())
                sent.append((i, payload, tx.getsockname()))
        got = take(sset, batch, len(sent))
        assert sorted(got) == sorted(sent)
        for i in range(16):  # each socket's datagrams in order
            assert [p for s, p, _ in got if s == i] == [p for s, p, _ in sent if s == i]
        c = sset.counters
        assert c["rx_datagrams"] == len(sent) and c["rx_bytes"] == sum(len(p) for _, p, _ in sent)

    def test_small_batch_takes_the_rest_next_time(self):
        sset = self.socket_set()
        rx = udp(self.socks)
        i = sset.add(rx)
        tx = udp(self.socks)
        for k in range(10):
            tx.sendto(bytes([k]), rx.getsockname())
        time.sleep(0.05)
        batch = PacketBatch(4)
        seen = []
        while len(seen) < 10:
            n = sset.recv_batch(batch, 1.0)
            assert 1 <= n <= 4
            seen += [bytes(batch[j]) for j in range(n)]
            assert list(np.asarray(batch.sockets)[:n]) == [i] * n
        assert seen == [bytes([k]) for k in range(10)]
        assert sset.recv_batch(batch, 0) == 0

    def test_timeout_returns_zero(self):
        sset = self.socket_set()
        sset.add(udp(self.socks))
        batch = PacketBatch(8)
        assert sset.recv_batch(batch, 0) == 0
        assert sset.recv_batch(batch, 0.05) == 0
        assert sset.take_errors() == []

    def test_blocking_receive_returns_when_data_comes(self):
        sset = self.socket_set()
        rx = udp(self.socks)
        sset.add(rx)
        tx = udp(self.socks)
        threading.Timer(0.1, lambda: tx.sendto(b"late", rx.getsockname())).start()
        batch = PacketBatch(8)
        with rescue(rx.getsockname()):
            assert sset.recv_batch(batch) == 1
        assert bytes(batch[0]) == b"late"

    def test_watermark_waits_for_min_datagrams(self):
        sset = self.socket_set()
        rx = udp(self.socks)
        sset.add(rx)
        tx = udp(self.socks)

        def trickle():
            for k in range(5):
                time.sleep(0.02)
                tx.sendto(b"%d" % k, rx.getsockname())
        threading.Thread(target=trickle).start()
        batch = PacketBatch(16)
        with rescue(rx.getsockname()):
            n = sset.recv_batch(batch, None, min_datagrams=5)
        assert n == 5
        assert [bytes(batch[i]) for i in range(n)] == [b"%d" % k for k in range(5)]

    def test_watermark_gives_up_at_max_wait(self):
        """2 of the 5 asked for come: max_wait ends the wait with those 2
        (no timeout at all would otherwise wait for ever)."""
        sset = self.socket_set()
        rx = udp(self.socks)
        sset.add(rx)
        tx = udp(self.socks)
        for k in range(2):
            tx.sendto(b"w%d" % k, rx.getsockname())
        batch = PacketBatch(16)
        with rescue(rx.getsockname(), after=10):
            n = sset.recv_batch(batch, None, min_datagrams=5, max_wait=0.1)
        assert n == 2

    def test_max_wait_then_timeout_for_the_first(self):
        """Nothing by max_wait: the call goes on waiting for one datagram."""
        sset = self.socket_set()
        rx = udp(self.socks)
        sset.add(rx)
        tx = udp(self.socks)
        threading.Timer(0.3, lambda: tx.sendto(b"first", rx.getsockname())).start()
        batch = PacketBatch(16)
        with rescue(rx.getsockname()):
            n = sset.recv_batch(batch, None, min_datagrams=8, max_wait=0.05)
        assert n >= 1 and bytes(batch[0]) in (b"first", b"rescue")
        assert bytes(batch[0]) == b"first"

    def test_econnrefused_is_reported_for_its_socket_only(self):
        sset = self.socket_set()
        dead = udp(self.socks, connect_to=closed_port())
        ok = udp(self.socks)
        i_dead, i_ok = sset.add(dead), sset.add(ok)
        batch = PacketBatch(16)
        sset.recv_batch(batch, 0)
        dead.send(b"to nobody")  # the port-unreachable reply sets the socket's error
        tx = udp(self.socks)
        tx.sendto(b"hello", ok.getsockname())
        got = []
        errors = []
        deadline = time.monotonic() + 2
        while (not got or not errors) and time.monotonic() < deadline:
            n = sset.recv_batch(batch, 0.2)
            got += [bytes(batch[i]) for i in range(n)]
            errors += sset.take_errors()
        assert got == [b"hello"]
        assert errors == [(i_dead, errno.ECONNREFUSED)]
        tx.sendto(b"again", ok.getsockname())  # receiving goes on, on both
        assert take(sset, batch, 1) == [(i_ok, b"again", tx.getsockname())]

    def test_socket_set_keeps_its_own_descriptor(self):
        """Closing your socket does not take it out of the socket set: the set
        holds its own descriptor (a reused descriptor number can never be
        confused with it) until remove()."""
        sset = self.socket_set()
        s = udp(self.socks)
        addr = s.getsockname()
        i = sset.add(s)
        batch = PacketBatch(8)
        sset.recv_batch(batch, 0)
        s.close()
        tx = udp(self.socks)
        tx.sendto(b"after close", addr)
        assert take(sset, batch, 1) == [(i, b"after close", tx.getsockname())]
        other = udp(self.socks)  # likely gets the closed descriptor's number
        tx.sendto(b"for someone else", other.getsockname())
        assert sset.recv_batch(batch, 0.05) == 0
        assert other.recv(100) == b"for someone else"
        sset.remove(i)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(addr)  # the socket set let go of the port
        assert sset.take_errors() == []

    def test_errors_of_a_removed_socket_are_dropped(self):
        sset = self.socket_set()
        dead = udp(self.socks, connect_to=closed_port())
        i = sset.add(dead)
        batch = PacketBatch(8)
        sset.recv_batch(batch, 0)
        dead.send(b"to nobody")
        # receive until the set has queued the socket's error (not taken):
        # without it the test below would pass for nothing
        deadline = time.monotonic() + 5
        while not sset.counters["rx_errors"]:
            assert time.monotonic() < deadline, "the ICMP error never reached the socket set"
            sset.recv_batch(batch, 0.05)
        sset.remove(i)
        assert sset.add(udp(self.socks)) == i  # a new socket, same index
        assert sset.take_errors() == []  # not blamed for the old one's error

    def test_receive_traffic_while_sending_a_lot(self):
        """Sends larger than the completion queue, to a socket of the same
        socket set: the receive completions met while sending are kept, not
        lost, and the socket keeps receiving."""
        sset = self.socket_set(buffers=64, max_sockets=2, gso=False) if self.uring else self.socket_set(gso=False)
        rx, tx = udp(self.socks), udp(self.socks)
        i_rx, i_tx = sset.add(rx), sset.add(tx)
        batch = PacketBatch(1024, 64)
        sset.recv_batch(batch, 0)
        out = PacketBatch(600, 16)
        for k in range(600):
            out.append(b"%d" % k, rx.getsockname())
        np.asarray(out.sockets)[:600] = i_tx
        sent = sset.send_batch(out)
        got = [p for _, p, _ in take(sset, batch, sent, timeout=1.0)]
        errors = list(out.send_errors())
        assert sent + len(errors) == 600
        assert got == [b"%d" % k for k in range(600) if (k, errno.EAGAIN) not in errors]
        assert all(e == errno.EAGAIN for _, e in errors)  # only a full buffer may refuse
        tx.sendto(b"still here", rx.getsockname())
        assert take(sset, batch, 1) == [(i_rx, b"still here", tx.getsockname())]

    def test_close_from_a_signal_handler_ends_the_call(self):
        """A signal handler that closes the socket set while recv_batch waits
        ends that wait: OSError EBADF, and the set is closed afterwards."""
        sset = self.socket_set()
        rx = udp(self.socks)
        sset.add(rx)

        def handler(signum, frame):
            sset.close()
        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with rescue(rx.getsockname()), pytest.raises(OSError) as ei:
                sset.recv_batch(PacketBatch(4), None)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert ei.value.errno == errno.EBADF and "closed while waiting" in str(ei.value)
        with pytest.raises(ValueError, match="the socket set is closed"):
            sset.recv_batch(PacketBatch(4), 0)
        sset.close()  # again: nothing to do

    def stream_pair(self) -> tuple[socket.socket, socket.socket]:
        """(our end, the peer's end) of a TCP connection on loopback."""
        srv = socket.create_server((V4, 0))
        self.socks.append(srv)
        cli = socket.create_connection(srv.getsockname())
        self.socks.append(cli)
        conn, _ = srv.accept()
        self.socks.append(conn)
        return conn, cli

    def wait_and_close(self, sset: SocketSet, call, rescue_call) -> list[BaseException]:
        """Run ``call()`` (a wait) in this thread while another thread closes
        the set once this one sleeps in the kernel. Returns what the call
        raised. Fails unless close() itself ended the wait: if it has not
        within 10 s, the closer rescues the call (``rescue_call()``, which
        makes data arrive) and says so."""
        require_syscall_introspection()
        woken = threading.Event()
        late: list[str] = []

        def closer() -> None:
            asleep = wait_for(lambda: thread_blocked_in_syscall(threading.main_thread().native_id))
            sset.close()  # in any case: a call that never slept must still end
            if not asleep:
                late.append("the call never slept in the kernel (spinning?)")
            if not woken.wait(10):
                late.append("close() did not wake the waiting call: rescued by data")
                rescue_call()
        t = Helper(closer)
        errors: list[BaseException] = []
        t.start()
        try:
            call()
        except OSError as e:
            errors.append(e)
        finally:
            woken.set()
        t.join(30)
        assert not t.is_alive() and t.error is None
        assert not late, late
        return errors

    @pytest.mark.parametrize("call", ["recv_batch", "recv_batch-min4", "recv_stream"])
    def test_close_from_another_thread_wakes_a_waiting_call(self, call):
        """close() in another thread ends a recv_batch(timeout=None), one
        waiting for min_datagrams=4, or a recv_stream waiting for its bytes,
        at once (in every set-up: the kernel counting completions for a
        watermark too), with OSError EBADF; the set's descriptors are closed
        as the call leaves."""
        sset = self.socket_set()
        rx = udp(self.socks)
        tx = udp(self.socks)
        if call == "recv_stream":
            conn, cli = self.stream_pair()
            idx = sset.add(conn, stream=True)
            wait, rescue_call = (lambda: sset.recv_stream(idx, bytearray(8), 8, None),
                                 lambda: cli.sendall(bytes(8)))
        else:
            sset.add(rx)
            sset.recv_batch(PacketBatch(8), 0)  # armed
            want = 4 if call == "recv_batch-min4" else 1
            wait = lambda: sset.recv_batch(PacketBatch(8), None, min_datagrams=want)  # noqa: E731
            rescue_call = lambda: [tx.sendto(b"rescue", rx.getsockname()) for _ in range(8)]  # noqa: E731
        errors = self.wait_and_close(sset, wait, rescue_call)
        assert len(errors) == 1 and errors[0].errno == errno.EBADF, errors
        assert "closed while waiting" in str(errors[0])
        with pytest.raises(ValueError, match="the socket set is closed"):
            sset.recv_batch(PacketBatch(4), 0)

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_a_childs_close_neither_wakes_nor_disarms_the_parents_waits(self):
        """Two close/wait cycles. A fork()ed child closing its copy of the set
        must not reach the parent: the parent's waiting recv_batch neither
        wakes on it nor spins (it makes a handful of kernel calls until a
        datagram comes), and the parent's own close() later still ends a
        wait for min_datagrams=4 at once."""
        require_syscall_introspection()
        sset = self.socket_set()
        rx = udp(self.socks)
        tx = udp(self.socks)
        sset.add(rx)
        batch = PacketBatch(8)
        sset.recv_batch(batch, 0)  # armed
        before: list[int] = []
        spun: list[bool] = []

        def fork_and_send() -> None:
            assert wait_for(lambda: thread_blocked_in_syscall(threading.main_thread().native_id))
            pid = os.fork()
            if pid == 0:  # the child: close its copy, never return into pytest
                code = 1
                try:
                    sset.close()
                    code = 0
                finally:
                    os._exit(code)
            _pid, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            before.append(sset.counters["syscalls"])
            # a spinning waiter makes thousands of calls in the 0.1 s given to show it
            spun.append(wait_for(lambda: sset.counters["syscalls"] - before[0] > 8, limit=0.1))
            tx.sendto(b"one", rx.getsockname())
        t = Helper(fork_and_send)
        t.start()
        with rescue(rx.getsockname()):
            n = sset.recv_batch(batch, None)
        t.join(30)
        assert not t.is_alive() and t.error is None
        assert n == 1 and bytes(batch[0]) == b"one"
        assert spun == [False] and sset.counters["syscalls"] - before[0] <= 8  # it slept until the datagram
        errors = self.wait_and_close(
            sset, lambda: sset.recv_batch(batch, None, min_datagrams=4),
            lambda: [tx.sendto(b"rescue", rx.getsockname()) for _ in range(8)])
        assert len(errors) == 1 and errors[0].errno == errno.EBADF, errors

    def test_gro_socket_is_refused_at_add(self):
        """A GRO socket would hand a coalesced receive over as one unmarked
        entry (20 datagrams as one 600-byte entry): refused at add()."""
        sset = self.socket_set()
        rx = udp(self.socks)
        rx.setsockopt(burstio._native.SOL_UDP, burstio._native.UDP_GRO, 1)
        with pytest.raises(ValueError, match="refuses a socket with UDP_GRO on"):
            sset.add(rx)
        assert len(sset) == 0
        rx.setsockopt(burstio._native.SOL_UDP, burstio._native.UDP_GRO, 0)
        assert sset.add(rx) == 0

    def gro_after_add(self) -> tuple[SocketSet, socket.socket, socket.socket, int]:
        """(set, receiver, sender, index): the receiver joined the set, then
        had UDP_GRO turned on behind the set's back."""
        if not burstio.capabilities().udp_gro or not burstio.capabilities().udp_segment:
            pytest.skip("UDP GRO and GSO are needed to make a coalesced receive")
        sset = self.socket_set()
        rx = udp(self.socks)
        tx = udp(self.socks)
        i = sset.add(rx)
        rx.setsockopt(burstio._native.SOL_UDP, burstio._native.UDP_GRO, 1)
        return sset, rx, tx, i

    def test_gro_turned_on_after_add_is_split_into_datagrams(self):
        """A socket whose UDP_GRO is turned on after add() receives a GSO
        send of 20 datagrams coalesced: the set splits it, as BurstSocket
        does, into 20 entries of one datagram each (FLAG_GRO, pointing into
        the one slot), never one 600-byte entry passed off as a datagram;
        a plain datagram behind it is its own entry."""
        sset, rx, tx, i = self.gro_after_add()
        batch = PacketBatch(64)
        sset.recv_batch(batch, 0)  # armed
        payload = b"".join(b"%030d" % k for k in range(20))
        gso_sendmsg(tx, payload, 30, rx.getsockname())
        tx.sendto(b"alone", rx.getsockname())
        got: list[tuple] = []
        for _ in range(50):
            n = sset.recv_batch(batch, 2.0)
            got += [(bytes(batch[k]), int(batch.flags[k]), int(batch.segment_sizes[k]), int(batch.sockets[k]),
                     batch.addr(k)) for k in range(n)]
            if len(got) >= 21 or n == 0:
                break
        src = tx.getsockname()
        assert got == [(b"%030d" % k, FLAG_GRO, 30, i, src) for k in range(20)] + [(b"alone", 0, 0, i, src)]
        c = sset.counters
        assert c["rx_datagrams"] == 21 and c["rx_bytes"] == 600 + 5
        assert sset.take_errors() == []

    def test_gro_after_add_with_too_few_entries_keeps_the_rest_flagged(self):
        """A batch with fewer entries than the coalesced datagrams: what does
        not fit stays in the last entry, flagged FLAG_COALESCED with its
        segment size (as a BurstSocket's batch does), never unmarked."""
        sset, rx, tx, i = self.gro_after_add()
        batch = PacketBatch(4)
        sset.recv_batch(batch, 0)  # armed
        gso_sendmsg(tx, bytes(range(200)) * 3, 30, rx.getsockname())
        assert sset.recv_batch(batch, 2.0) == 4
        assert [int(f) for f in batch.flags[:4]] == [FLAG_GRO] * 3 + [FLAG_GRO | FLAG_COALESCED]
        assert [len(batch[k]) for k in range(4)] == [30, 30, 30, 510]
        assert list(batch.segment_sizes[:4]) == [30] * 4
        assert b"".join(bytes(batch[k]) for k in range(4)) == bytes(range(200)) * 3

    def test_gro_after_add_larger_than_its_slot_is_split_and_the_cut_counted(self):
        """A coalesced receive of 100 datagrams of 30 bytes that does not fit
        its slot (or the io_uring buffer): the part received is split, the
        datagram cut short is flagged FLAG_TRUNCATED, and rx_truncated counts
        it and every whole datagram that did not fit."""
        sset, rx, tx, i = self.gro_after_add()
        batch = PacketBatch(128)
        sset.recv_batch(batch, 0)  # armed
        payload = b"".join(b"%030d" % k for k in range(100))
        gso_sendmsg(tx, payload, 30, rx.getsockname())
        n = sset.recv_batch(batch, 2.0)
        assert 2 < n < 100
        assert [int(f) for f in batch.flags[:n]] == [FLAG_GRO] * (n - 1) + [FLAG_GRO | FLAG_TRUNCATED]
        assert all(len(batch[k]) == 30 for k in range(n - 1)) and 0 < len(batch[n - 1]) < 30
        assert payload.startswith(b"".join(bytes(batch[k]) for k in range(n)))
        c = sset.counters
        assert c["rx_datagrams"] == n and c["rx_truncated"] == 100 - (n - 1)

    def test_fork_child_takes_an_epoll_set_over_and_refuses_an_io_uring_one(self):
        """After fork() an io_uring set's io_uring, buffer ring and armed
        receives are the parent's: the child's calls raise RuntimeError
        naming the parent (they would take its completions), and its close()
        lets go of its copies only. An epoll set is taken over by the child
        with an epoll instance and wake eventfd of its own: it receives and
        sends on the shared sockets (a datagram goes to whichever process
        receives it), and what it does to its set (remove, close) leaves
        the parent's alone. Either way the parent goes on receiving."""
        sset = self.socket_set()
        rx = udp(self.socks)
        tx = udp(self.socks)
        sset.add(rx)
        batch = PacketBatch(8)
        assert sset.recv_batch(batch, 0) == 0  # armed
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            code = 1
            try:
                os.close(r)
                try:
                    b = PacketBatch(8)
                    n = sset.recv_batch(b, 10.0)
                    out = PacketBatch(1)
                    out.append(b"child-reply", tx.getsockname())
                    np.asarray(out.sockets)[0] = 0
                    sent = sset.send_batch(out)
                    os.write(w, b"got %d %s sent %d" % (n, bytes(b[0]) if n else b"", sent))
                    sset.remove(0)  # from the child's own epoll instance only
                except RuntimeError as e:
                    os.write(w, str(e).encode()[:300])
                sset.close()
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        if not self.uring:
            tx.sendto(b"for-the-child", rx.getsockname())
        msg = os.read(r, 400).decode()
        os.close(r)
        _pid, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        if self.uring:
            assert f"made in process {os.getpid()}" in msg and "after fork()" in msg, msg
            assert "the parent's" in msg
        else:
            assert msg == "got 1 for-the-child sent 1", msg
            tx.settimeout(5)
            assert tx.recvfrom(64) == (b"child-reply", rx.getsockname())
        tx.sendto(b"after-fork", rx.getsockname())
        got = take(sset, batch, 1)
        assert [p for _s, p, _a in got] == [b"after-fork"]

    def test_signal_interrupts_a_blocking_wait(self):
        """PEP 475: a handler that raises ends a blocking recv_batch."""
        sset = self.socket_set()
        sset.add(udp(self.socks))

        def handler(signum, frame):
            raise KeyboardInterrupt
        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(KeyboardInterrupt):
                sset.recv_batch(PacketBatch(4), 20.0)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert sset.recv_batch(PacketBatch(4), 0) == 0  # still usable

    def test_buffer_exhaustion_is_reported_and_rearmed(self):
        if not self.uring:
            pytest.skip("only the io_uring backend has a shared receive pool")
        sset = self.socket_set(buffers=8)
        rx = udp(self.socks)
        i = sset.add(rx)
        batch = PacketBatch(4)
        sset.recv_batch(batch, 0)
        tx = udp(self.socks)
        for k in range(40):
            tx.sendto(b"z%d" % k, rx.getsockname())
        got = [p for _, p, _ in take(sset, batch, 40)]
        assert got == [b"z%d" % k for k in range(40)]  # nothing lost
        assert sset.counters["rx_enobufs"] >= 1
        assert all(e == (i, errno.ENOBUFS) for e in sset.take_errors())

    def test_a_small_set_is_made_and_works(self):
        """Few buffers and few sockets (a completion queue under the
        submission queue's 256 entries was EINVAL at construction)."""
        sset = self.socket_set(buffers=8, max_sockets=2) if self.uring else self.socket_set(max_sockets=2)
        rx = udp(self.socks)
        i = sset.add(rx)
        batch = PacketBatch(4)
        tx = udp(self.socks)
        tx.sendto(b"small", rx.getsockname())
        assert take(sset, batch, 1) == [(i, b"small", tx.getsockname())]

    def test_truncated_datagram_is_flagged(self):
        sset = self.socket_set(buffer_size=256) if self.uring else self.socket_set()
        rx = udp(self.socks)
        sset.add(rx)
        tx = udp(self.socks)
        tx.sendto(b"x" * 1000, rx.getsockname())
        batch = PacketBatch(4, 128)
        assert sset.recv_batch(batch, 1.0) == 1
        assert batch.flags[0] & burstio.FLAG_TRUNCATED
        assert len(batch[0]) <= 128
        assert sset.counters["rx_truncated"] == 1

    def test_remove_stops_receiving(self):
        sset = self.socket_set()
        a, b = udp(self.socks), udp(self.socks)
        ia, ib = sset.add(a), sset.add(b)
        batch = PacketBatch(8)
        sset.recv_batch(batch, 0)
        assert sset.remove(ia) is a
        tx = udp(self.socks)
        tx.sendto(b"to a", a.getsockname())
        tx.sendto(b"to b", b.getsockname())
        assert take(sset, batch, 1) == [(ib, b"to b", tx.getsockname())]
        assert sset.recv_batch(batch, 0.05) == 0
        assert a.recv(100) == b"to a"  # still queued on the removed socket
        assert sset.add(udp(self.socks)) == ia  # the index is reused

    # ---- send ----------------------------------------------------------

    def test_send_batch_uses_each_entrys_socket(self):
        sset = self.socket_set()
        paths = [udp(self.socks) for _ in range(3)]
        idx = [sset.add(p) for p in paths]
        peers = [udp(self.socks) for _ in range(2)]
        out = PacketBatch(8)
        plan = [(0, 0), (1, 1), (2, 0), (0, 1), (2, 1)]  # (socket, peer)
        for k, (_, p) in enumerate(plan):
            out.append(b"m%d" % k, peers[p].getsockname())
        np.asarray(out.sockets)[:len(plan)] = [idx[s] for s, _ in plan]
        assert sset.send_batch(out) == len(plan)
        assert out.send_errors() == []
        for pi, peer in enumerate(peers):
            peer.settimeout(1)
            expect = [(b"m%d" % k, paths[s].getsockname()) for k, (s, p) in enumerate(plan) if p == pi]
            assert [peer.recvfrom(100) for _ in expect] == expect
        assert sset.counters["tx_datagrams"] == len(plan)

    def test_send_batch_failures_are_flagged(self):
        sset = self.socket_set()
        i = sset.add(udp(self.socks))
        peer = udp(self.socks)
        out = PacketBatch(4)
        out.append(b"ok", peer.getsockname())
        out.append(b"bad", (V4, 0))  # port 0: EINVAL
        out.append(b"ok2", peer.getsockname())
        np.asarray(out.sockets)[:3] = i
        assert sset.send_batch(out) == 2
        assert out.send_errors() == [(1, errno.EINVAL)]
        peer.settimeout(1)
        assert [peer.recv(10) for _ in range(2)] == [b"ok", b"ok2"]
        assert sset.counters["tx_errors"] == 1

    def test_send_batch_needs_valid_socket_indices(self):
        sset = self.socket_set()
        sset.add(udp(self.socks))
        out = PacketBatch(4)
        out.append(b"x", (V4, 9))
        np.asarray(out.sockets)[0] = 7
        with pytest.raises(ValueError, match=re.escape("datagram 0: no socket at index 7 in this socket set")):
            sset.send_batch(out)

    def test_send_redundant_sends_everything_on_every_path(self):
        sset = self.socket_set()
        peers = [udp(self.socks) for _ in range(4)]
        paths = [udp(self.socks, connect_to=p.getsockname()) for p in peers]
        group = [sset.add(p) for p in paths]
        out = PacketBatch(32)
        payloads = [bytes([k]) * 100 for k in range(20)]
        for p in payloads:
            out.append(p)  # no address: each path's connected peer
        res = sset.send_redundant(out, group)
        assert res == (20 * 4, []) and isinstance(res, burstio.RedundantResult)
        for peer in peers:
            peer.settimeout(1)
            assert [peer.recv(200) for _ in payloads] == payloads
        if sset._io.gso:
            assert sset.counters["tx_gso_messages"] == 4  # one GSO send per path

    def test_send_redundant_reports_each_failing_pair(self):
        sset = self.socket_set()
        good = udp(self.socks)
        paths = [udp(self.socks, connect_to=good.getsockname()), udp(self.socks)]  # 2nd: not connected
        group = [sset.add(p) for p in paths]
        out = PacketBatch(4)
        for k in range(3):
            out.append(b"p%d" % k)
        sent, failures = sset.send_redundant(out, group)
        assert sent == 3
        assert sorted(failures) == [(k, group[1], errno.EDESTADDRREQ) for k in range(3)]
        assert sent + len(failures) == 3 * len(group)

    def test_send_redundant_argument_errors(self):
        sset = self.socket_set()
        sset.add(udp(self.socks))
        out = PacketBatch(4)
        out.append(b"x")
        with pytest.raises(ValueError, match="group is empty"):
            sset.send_redundant(out, [])
        with pytest.raises(ValueError, match=re.escape("no socket at index 3 in this socket set")):
            sset.send_redundant(out, [0, 3])
        with pytest.raises(TypeError, match="group must be a sequence of socket indices"):
            sset.send_redundant(out, 5)

    # ---- stream sockets ------------------------------------------------

    def test_recv_stream_byte_watermark(self):
        sset = self.socket_set()
        srv = socket.socket()
        self.socks.append(srv)
        srv.bind((V4, 0))
        srv.listen()
        cl = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        self.socks += [cl, conn]
        i = sset.add(conn, stream=True)
        buf = bytearray(64)
        cl.send(b"abc")
        assert sset.recv_stream(i, buf, 10, 0.1) == 3  # the time ran out: what came
        assert bytes(buf[:3]) == b"abc"
        threading.Timer(0.05, lambda: cl.send(b"0123456789XYZ")).start()
        assert sset.recv_stream(i, buf, 10, 2.0) == 10  # the watermark, at once
        assert bytes(buf[:10]) == b"0123456789"
        cl.close()
        assert sset.recv_stream(i, buf, 3, 1.0) == 3  # what was left
        assert sset.recv_stream(i, buf, 3, 1.0) == 0  # end of stream
        with pytest.raises(ValueError, match=re.escape("min_bytes must be between 1 and 64, got 65")):
            sset.recv_stream(i, buf, 65)

    # ---- bad input -----------------------------------------------------

    def test_recv_stream_refuses_a_datagram_socket(self):
        """recv_stream on a UDP socket would read part of one datagram and
        drop the rest: refused, naming the socket."""
        sset = self.socket_set()
        rx = udp(self.socks)
        i = sset.add(rx)
        udp(self.socks).sendto(b"x" * 17, rx.getsockname())
        with pytest.raises(ValueError, match=f"recv_stream needs a stream socket .*socket {i} is a datagram"):
            sset.recv_stream(i, bytearray(5), 5, 0.5)
        batch = PacketBatch(4)
        assert take(sset, batch, 1) and bytes(batch[0]) == b"x" * 17  # nothing was taken

    def test_bad_input(self):
        sset = self.socket_set()
        with pytest.raises(TypeError, match=re.escape("sock must be a socket.socket or BurstSocket, got int")):
            sset.add(5)
        tcp = socket.socket()
        self.socks.append(tcp)
        msg = "SocketSet.add needs a UDP socket (SOCK_DGRAM), got SOCK_STREAM"
        with pytest.raises(ValueError, match=re.escape(msg)):
            sset.add(tcp)
        msg = "SocketSet.add needs a stream socket (stream=True), got SOCK_DGRAM"
        with pytest.raises(ValueError, match=re.escape(msg)):
            sset.add(udp(self.socks), stream=True)
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.close()
        with pytest.raises(OSError) as ei:
            sset.add(closed)
        assert ei.value.errno == errno.EBADF
        with pytest.raises(ValueError, match="no socket at index 4 in this socket set"):
            sset.remove(4)
        batch = PacketBatch(4)
        with pytest.raises(ValueError, match=re.escape("min_datagrams must be >= 1, got 0")):
            sset.recv_batch(batch, 0, min_datagrams=0)
        with pytest.raises(TypeError, match=re.escape("recv_batch() argument 1 must be burstio.PacketBatch, not list")):
            sset.recv_batch([], 0)
        with pytest.raises(ValueError, match=re.escape("timeout must be >= 0 or None, got -1")):
            sset.recv_batch(batch, -1)
        with pytest.raises(ValueError, match="backend must be one of"):
            SocketSet(backend="fast")

    def test_full_socket_set(self):
        sset = self.socket_set(max_sockets=2)
        sset.add(udp(self.socks))
        sset.add(udp(self.socks))
        with pytest.raises(OSError, match="the socket set holds its maximum of 2 sockets") as ei:
            sset.add(udp(self.socks))
        assert ei.value.errno == errno.ENOSPC

    def test_closed_socket_set(self):
        sset = self.socket_set()
        sset.add(udp(self.socks))
        sset.close()
        with pytest.raises(ValueError, match="the socket set is closed"):
            sset.recv_batch(PacketBatch(4), 0)

    # ---- hostile threads -------------------------------------------------

    @pytest.mark.parametrize("call", ["send_batch", "send_redundant"])
    def test_arrays_rewritten_during_sends_never_reach_the_kernel(self, call):
        """Another thread flips every entry's offset, length, address and
        socket index between its own values and hostile ones while sends run
        (the sends release the GIL). The set only ever uses what it read and
        checked: a send refuses an entry it read out of range (ValueError),
        never sends on a socket index it did not check (the hostile index is
        a free slot of the table: using it unchecked fails with EBADF), and
        every datagram that arrives is a slice of the caller's buffer."""
        count = 1024
        sset = self.socket_set()
        rx = udp(self.socks)
        rx.setblocking(False)
        idx = sset.add(udp(self.socks))
        data = payload_buffer(count)
        batch = PacketBatch(count, 64)
        batch.add_slices(data, SEGMENT, addr=rx.getsockname())
        np.asarray(batch.sockets)[:count] = idx
        racer = ArrayRacer(batch, count, len(data), sockets=True, hostile_sockets=idx + 5)
        stray: list[bytes] = []  # what arrived that is not a slice of data (each looked at once)
        errors: set[int] = set()
        racer.start()
        try:
            for _attempt in range(attempts(40)):
                try:
                    if call == "send_batch":
                        sset.send_batch(batch)
                        errors.update(err for _i, err in batch.send_errors())
                    else:
                        errors.update(err for _i, _s, err in sset.send_redundant(batch, [idx]).failures)
                except ValueError:
                    pass  # an entry read out of range: refused before any send
                with racer.paused():
                    stray += foreign(drained(rx), data)
                if stray or errno.EBADF in errors or errno.EFAULT in errors:
                    break
        finally:
            racer.stop()
        stray += foreign(drained(rx), data)
        assert racer.flips > 0
        assert not stray, f"{len(stray)} datagrams of other memory were sent"
        assert errno.EFAULT not in errors and errno.EBADF not in errors, sorted(errors)


class TestUring(SocketSetContract):
    variant = SOCKETSET["uring"]

    def test_other_thread_is_refused(self):
        sset = self.socket_set()
        if "SINGLE_ISSUER" not in sset.describe():
            pytest.skip("the io_uring ring is not SINGLE_ISSUER here")
        out = []

        def other_thread() -> None:
            with pytest.raises(RuntimeError) as ei:
                sset.recv_batch(PacketBatch(4), 0)
            out.append(ei)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert "made in another thread" in str(out[0].value)


class TestUringSqpoll(SocketSetContract):
    variant = SOCKETSET["uring-sqpoll"]


class TestUringSingleWakeup(SocketSetContract):
    variant = SOCKETSET["uring-single"]

    def test_watermark_wait_is_one_kernel_entry(self):
        """single_wakeup: the kernel counts the datagrams of a min_datagrams
        wait, so datagrams arriving one by one end it in one entry."""
        sset = self.socket_set()
        assert "COOP_TASKRUN" in sset.describe()
        rx = udp(self.socks)
        sset.add(rx)
        batch = PacketBatch(16)
        sset.recv_batch(batch, 0)  # arm
        tx = udp(self.socks)

        def trickle():
            for k in range(6):
                time.sleep(0.02)
                tx.sendto(b"%d" % k, rx.getsockname())
        threading.Thread(target=trickle).start()
        before = sset.counters["syscalls"]
        with rescue(rx.getsockname()):
            assert sset.recv_batch(batch, None, min_datagrams=6) == 6
        assert sset.counters["syscalls"] - before <= 2  # the wait (and at most one flush)


class TestEpoll(SocketSetContract):
    variant = SOCKETSET["epoll"]


class TestAutoWithoutUring(SocketSetContract):
    variant = SOCKETSET["auto-no-uring"]

    def test_uring_asked_for_is_refused(self):
        with pytest.raises(OSError, match="backend 'uring' needs io_uring") as ei:
            SocketSet(backend="uring")
        assert ei.value.errno == errno.EOPNOTSUPP


def test_every_variant_covered():
    classes = [TestUring, TestUringSqpoll, TestUringSingleWakeup, TestEpoll, TestAutoWithoutUring]
    assert sorted(c.variant.name for c in classes) == sorted(SOCKETSET)


# ---- property: every datagram exactly once, each socket in order -------------


@pytest.mark.parametrize("variant", [SOCKETSET["uring"], SOCKETSET["epoll"]], ids=["uring", "epoll"])
@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(0, 6), min_size=1, max_size=12), capacity=st.integers(1, 40))
def test_every_datagram_exactly_once(variant, counts, capacity):
    with variant_env(variant):
        sset = SocketSet(**variant.kwargs)
        socks: list = []
        try:
            rx = [udp(socks) for _ in counts]
            idx = [sset.add(s) for s in rx]
            batch = PacketBatch(capacity, 64)
            sset.recv_batch(batch, 0)
            tx = udp(socks)
            sent = []
            for i, (s, c) in enumerate(zip(rx, counts, strict=True)):
                for k in range(c):
                    p = b"%d.%d" % (i, k)
                    tx.sendto(p, s.getsockname())
                    sent.append((idx[i], p))
            got = [(s, p) for s, p, _ in take(sset, batch, len(sent), timeout=1.0)]
            assert sorted(got) == sorted(sent)
            for i in idx:
                assert [p for s, p in got if s == i] == [p for s, p in sent if s == i]
            assert sset.recv_batch(batch, 0) == 0
        finally:
            sset.close()
            for s in socks:
                s.close()
