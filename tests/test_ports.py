"""Ports between processes (burstio.ports): pipes, the switch,
notification suppression, liveness, bad input, BurstSocket integration.
Hostile clients and peers, racing threads, and close/fork/signals during
blocking calls are tests/test_ports_hostile.py.

Child processes are forked (multiprocessing "fork" context, ports travel by
inheritance unless a test is about passing them) and killed in ``finally``.
Nothing here measures time: timeouts only bound how long a broken library can
make a test wait, and a wait that times out instead of raising fails the test.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import multiprocessing
import os
import re
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import burstio
from burstio import ports
from support.kernel import require_kernel
from support.net import Sockets, recv_plain
from support.ports import FORK, LIMIT, child, finished, full, hold, message, oserror, receive, send
from support.proc import open_fds, wait_for

# ---- one process: netmap semantics ----------------------------------------------


def test_put_sync_wait_advance_positions():
    a, b = ports.pipe(slots=8, slot_size=64)
    assert (a.tx.head, a.tx.cur, a.tx.tail) == (0, 0, 0)
    assert a.tx.sync() == 7 == a.tx.capacity  # netmap keeps one slot empty
    assert a.tx.put(b"one", dst=5, src=6) == 6
    assert a.tx.put(b"two") == 5
    assert (a.tx.head, a.tx.cur, a.tx.tail) == (2, 2, 7)
    assert b.rx.sync() == 0  # nothing published yet
    assert a.tx.sync() == 5
    assert b.rx.wait(2, timeout=0) == 2
    assert (b.rx.head, b.rx.tail, len(b.rx)) == (0, 2, 2)
    assert [bytes(b.rx[0]), bytes(b.rx[1]), bytes(b.rx[-1])] == [b"one", b"two", b"two"]
    assert (b.rx.dst(0), b.rx.src(0), b.rx.addr(0)) == (5, 6, None)
    with pytest.raises(IndexError, match=full("ring index out of range (2 packets are owned)")):
        b.rx[2]
    b.rx.advance(1)
    assert (b.rx.head, len(b.rx)) == (1, 1)
    assert a.tx.sync() == 5  # not released until the consumer syncs
    b.rx.sync()
    assert a.tx.sync() == 6


def test_ring_full_and_slot_too_small_and_bad_arguments():
    a, b = ports.pipe(slots=4, slot_size=16)
    with pytest.raises(ValueError, match=full("payload of 17 bytes does not fit a 16-byte slot")):
        a.tx.put(bytes(17))
    with pytest.raises(TypeError, match=full("payload must be a bytes-like object, got int")):
        a.tx.put(5)
    with pytest.raises(ValueError, match=full("dst must be between 0 and 4294967295, got -1")):
        a.tx.put(b"x", dst=-1)
    with pytest.raises(TypeError, match=full("src must be int, got str")):
        a.tx.put(b"x", src="a")
    for _ in range(3):
        a.tx.put(b"x")
    with pytest.raises(BlockingIOError, match=re.escape("ring full: all 3 slots are in flight; "
                                                        "sync() or wait() for room")) as e:
        a.tx.put(b"x")
    assert e.value.errno == errno.EAGAIN
    with pytest.raises(ValueError, match=full("n must be between 1 and 3, got 4")):
        a.tx.wait(4)
    with pytest.raises(ValueError, match=full("advance(1): only 0 slots are owned (head to tail)")):
        b.rx.advance(1)
    with pytest.raises(ValueError, match=full("cur must be a ring index from head (0) to tail (0), got 2")):
        b.rx.cur = 2
    with pytest.raises(ValueError, match=full("length must be between 0 and 16, got 17")):
        a.tx.claim(17)
    with pytest.raises(TypeError, match=full("peek() argument 1 must be burstio.PacketBatch, not bytes")):
        b.rx.peek(b"")


def test_pipe_argument_policy():
    with pytest.raises(ValueError, match=full("slots must be a power of two between 2 and 65536, got 1000")):
        ports.pipe(slots=1000)
    with pytest.raises(TypeError, match=full("slots must be int, got str")):
        ports.pipe(slots="8")
    with pytest.raises(ValueError, match=full(f"slot_size must be between 1 and {16 << 20}, got 0")):
        ports.pipe(slot_size=0)
    with pytest.raises(ValueError, match=full("linger must be between 0 and 1 seconds, got 5")):
        ports.pipe(linger=5)
    with pytest.raises(ValueError, match=full("unknown must be 'flood' or 'drop', got 'x'")):
        ports.Switch(unknown="x")
    with pytest.raises(ValueError, match=full("on_full must be 'wait' or 'drop', got 'block'")):
        ports.Switch(on_full="block")


def test_put_batch_claim_peek_and_numpy_views():
    a, b = ports.pipe(slots=16, slot_size=64)
    batch = burstio.PacketBatch(8, 128)
    batch.append(b"a" * 10, ("127.0.0.1", 9))
    batch.append(bytes(100))
    with pytest.raises(ValueError, match=full("datagram 1 of 100 bytes does not fit a 64-byte slot")):
        a.tx.put_batch(batch)
    assert len(a.tx) == 0 and a.tx.sync() == 15  # nothing was copied
    assert a.tx.put_batch(batch, 0, 1, dst=3) == 1
    view = a.tx.claim(5, dst=4)
    view[:] = b"hello"
    a.tx.sync()
    assert b.rx.wait(2, timeout=0) == 2
    out = burstio.PacketBatch(4, 1)
    assert b.rx.peek(out) == 2
    assert [bytes(out[i]) for i in range(2)] == [b"a" * 10, b"hello"]
    assert out.addr(0) == ("127.0.0.1", 9) and out.addr(1) is None
    mem = np.frombuffer(b.memory, np.uint8)  # the same bytes, seen by numpy without a copy
    offs, lens = np.asarray(out.offsets)[:2], np.asarray(out.lengths)[:2]
    assert bytes(mem[offs[1]:offs[1] + lens[1]]) == b"hello"
    assert [b.rx.dsts[i] for i in (0, 1)] == [3, 4]
    assert b.rx.indices[0] != b.rx.indices[1]


def test_zero_copy_write_through_arrays_then_advance():
    a, b = ports.pipe(slots=8, slot_size=32)
    lay = a.region.layout()
    mem = np.frombuffer(a.memory, np.uint8)
    n = a.tx.sync()
    for k in range(n):  # fill every free slot in place, then hand them over at once
        slot = (a.tx.head + k) % 8
        off = lay["bufs"] + a.tx.indices[slot] * lay["stride"]
        mem[off:off + 4] = np.frombuffer(b"pk%02d" % k, np.uint8)
        a.tx.lengths[slot] = 4
    a.tx.advance(n)
    a.tx.sync()
    assert b.rx.wait(n, timeout=0) == n
    assert [bytes(b.rx[k]) for k in range(n)] == [b"pk%02d" % k for k in range(n)]


def test_cur_holds_packets_while_waiting_for_more():
    a, b = ports.pipe(slots=8, slot_size=16)
    a.tx.put(b"1")
    a.tx.sync()
    assert b.rx.wait(1, timeout=0) == 1
    b.rx.cur = b.rx.tail  # keep packet 1, ask to be woken for the next
    assert b.rx.wait(1, timeout=0) == 1  # nothing beyond cur: times out, still owns 1
    a.tx.put(b"2")
    a.tx.sync()
    assert b.rx.wait(1, timeout=0) == 2
    assert [bytes(b.rx[i]) for i in range(2)] == [b"1", b"2"]


def test_forward_swaps_buffer_indices_zero_copy_echo():
    a, b = ports.pipe(slots=8, slot_size=16)
    for i in range(3):
        a.tx.put(b"msg%d" % i, dst=i)
    a.tx.sync()
    assert b.rx.wait(3, timeout=0) == 3
    rx_idx = [b.rx.indices[(b.rx.head + i) % 8] for i in range(3)]
    tx_idx = [b.tx.indices[(b.tx.head + i) % 8] for i in range(3)]
    assert b.rx.forward(b.tx) == 3
    assert [b.tx.indices[i] for i in range(3)] == rx_idx  # the packets' buffers moved...
    assert [b.rx.indices[i] for i in range(3)] == tx_idx  # ...and free ones came back
    b.tx.sync()
    b.rx.sync()
    assert a.rx.wait(3, timeout=0) == 3
    assert [(bytes(a.rx[i]), a.rx.dst(i)) for i in range(3)] == [(b"msg%d" % i, i) for i in range(3)]
    assert (b.rx.counters()["forwarded_zerocopy"], b.rx.counters()["forwarded_copied"]) == (3, 0)


def test_forward_between_regions_copies_and_counts():
    a, b = ports.pipe(slots=8, slot_size=16)
    c, d = ports.pipe(slots=4, slot_size=4)  # smaller slots: what does not fit is truncated and flagged
    for i in range(5):
        a.tx.put(b"m%d-x" % i if i % 2 else b"m%d" % i, dst=i, src=9, addr=("127.0.0.1", 1000 + i))
    a.tx.sync()
    assert b.rx.wait(5, timeout=0) == 5
    idx = list(b.rx.indices)
    assert b.rx.forward(c.tx) == 3  # limited by c's free slots
    assert list(b.rx.indices) == idx  # copied: no buffer changed hands
    assert (b.rx.head, len(b.rx)) == (3, 2)
    c.tx.sync()
    assert d.rx.wait(3, timeout=0) == 3
    assert [(bytes(d.rx[i]), d.rx.dst(i), d.rx.src(i), d.rx.addr(i), d.rx.flags(i)) for i in range(3)] == [
        (b"m0", 0, 9, ("127.0.0.1", 1000), 0), (b"m1-x", 1, 9, ("127.0.0.1", 1001), 0),
        (b"m2", 2, 9, ("127.0.0.1", 1002), 0)]
    d.rx.advance()
    d.rx.sync()
    assert b.rx.forward(c.tx) == 2
    c.tx.sync()
    assert d.rx.wait(2, timeout=0) == 2
    assert [(bytes(d.rx[i]), d.rx.flags(i)) for i in range(2)] == [(b"m3-x", 0), (b"m4", 0)]
    assert (b.rx.counters()["forwarded_copied"], b.rx.counters()["forwarded_zerocopy"]) == (5, 0)
    e, f = ports.pipe(slots=4, slot_size=2)
    a.tx.put(b"long")
    a.tx.sync()
    b.rx.sync()
    assert b.rx.forward(e.tx) == 1
    e.tx.sync()
    assert f.rx.wait(1, timeout=0) == 1
    assert (bytes(f.rx[0]), f.rx.flags(0)) == (b"lo", burstio.FLAG_TRUNCATED)


# ---- two processes ----------------------------------------------------------------


def produce(port, count: int, batch: int) -> None:
    tx = port.claim().tx  # held before anything else: the consumer watches this process
    seq = 0
    while seq < count:
        want = min(batch, count - seq, tx.capacity)
        if tx.wait(want, timeout=LIMIT) < want:
            os._exit(3)
        for _ in range(want):
            tx.put(message(seq), dst=seq & 0xFFFF)
            seq += 1
        tx.sync()
    port.close()


def consume(port, count: int, batch: int) -> list[int]:
    rx, seen = port.rx, []
    with pytest.raises(BrokenPipeError, match="nothing more will arrive"):
        while True:
            n = rx.wait(1, timeout=LIMIT)
            assert n, "timed out: a message was lost or a kick missed"
            for i in range(min(n, batch)):
                seq = struct.unpack_from("<Q", rx[i])[0]
                assert bytes(rx[i]) == message(seq) and rx.dst(i) == seq & 0xFFFF
                seen.append(seq)
            rx.advance(min(n, batch))
    return seen


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slots=st.sampled_from([2, 4, 64]), producer_batch=st.integers(1, 80),
       consumer_batch=st.integers(1, 80), count=st.integers(0, 3000),
       linger=st.sampled_from([0.0, 20e-6]))
def test_two_processes_hammer_ring_in_order_exactly_once(slots, producer_batch, consumer_batch,
                                                          count, linger):
    a, b = ports.pipe(slots=slots, slot_size=48, linger=linger)
    with child(produce, b, count, producer_batch) as p:
        seen = consume(a, count, consumer_batch)
        assert finished(p) == 0
    assert seen == list(range(count))
    c = a.rx.counters()
    peer = a.rx.peer_counters()
    # a wakeup needs a kick (or the producer's close, which rings the doorbell
    # once); a kick may find its sleeper already awake (it saw the data on its
    # last look), so kicks are not bounded by sleeps
    assert c["wakeups"] <= peer["kicks"] + 1 and peer["wakeups"] <= c["kicks"]
    assert c["timeouts"] == 0 and peer["timeouts"] == 0


def test_producer_death_is_an_error_after_its_data():
    a, b = ports.pipe(slots=8, slot_size=32)

    def body(port, go):
        for i in range(3):
            port.tx.put(b"last %d" % i)
        port.tx.sync()
        go.set()
        time.sleep(60)

    go = FORK.Event()
    with child(body, b, go) as p:
        assert go.wait(LIMIT)
        os.kill(p.pid, signal.SIGKILL)
        p.join(LIMIT)
        assert a.rx.wait(1, timeout=LIMIT) == 3  # what it sent before dying still arrives
        assert [bytes(a.rx[i]) for i in range(3)] == [b"last 0", b"last 1", b"last 2"]
        a.rx.advance()
        with pytest.raises(ConnectionResetError, match=oserror(errno.ECONNRESET,
                f"the process holding port 1 (pid {p.pid}) exited without closing it")):
            a.rx.wait(1, timeout=LIMIT)


def test_consumer_death_wakes_a_producer_waiting_for_room():
    a, b = ports.pipe(slots=4, slot_size=32)
    go = FORK.Event()
    with child(hold, b, go) as p:
        assert go.wait(LIMIT)
        for _ in range(3):
            a.tx.put(b"x")
        threading.Timer(0.05, os.kill, (p.pid, signal.SIGKILL)).start()
        with pytest.raises(ConnectionResetError, match=re.escape(f"(pid {p.pid}) exited")) as e:
            a.tx.wait(1, timeout=LIMIT)  # sleeping when the peer dies
        assert e.value.errno == errno.ECONNRESET


def test_unreaped_child_counts_as_dead():
    a, b = ports.pipe(slots=4, slot_size=32)
    go = FORK.Event()
    pid = os.fork()
    if pid == 0:  # a bare fork: exits at once, stays a zombie until reaped
        b.rx.sync()
        go.set()
        os._exit(0)
    try:
        assert go.wait(LIMIT)
        assert wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
        with pytest.raises(ConnectionResetError):
            a.rx.wait(1, timeout=LIMIT)
    finally:
        os.waitpid(pid, 0)


def test_clean_close_is_broken_pipe_for_both_directions():
    a, b = ports.pipe(slots=8, slot_size=32)
    with child(produce, b, 5, 5) as p:
        assert consume(a, 5, 8) == list(range(5))  # then BrokenPipeError, checked inside
        assert finished(p) == 0
    a.tx.put(b"nobody reads this")
    with pytest.raises(BrokenPipeError, match=oserror(errno.EPIPE,
            f"port 1 was closed by its owner (process {p.pid}): nothing sent now will be read")):
        a.tx.sync()
    a.close()
    with pytest.raises(ValueError, match=full("I/O operation on a closed port")):
        a.tx.put(b"x")


def test_stale_handle_after_takeover_and_no_reclaim_after_close():
    a, b = ports.pipe(slots=8, slot_size=32)
    b.tx.put(b"x")  # this handle holds port 1 now
    s1, s2 = socket.socketpair()
    with s1, s2:
        ports.send_port(s1, b)
        b2 = ports.recv_port(s2)
        b2.tx.sync()  # another handle (as another process would) takes it over
        with pytest.raises(RuntimeError, match=full(
                f"port 1 was taken over by process {os.getpid()}: this handle is stale "
                "(one process holds a port at a time)")):
            b.tx.sync()
        b2.close()
        ports.send_port(s1, a)
        ports.send_port(s1, b)
        ports.recv_port(s2)
        b3 = ports.recv_port(s2)
    with pytest.raises(ValueError, match=full(
            f"port 1 of this region was closed by its owner (process {os.getpid()})")):
        b3.rx.sync()


# ---- passing ports: fork, pickling, SCM_RIGHTS, by name --------------------------


def echo_one(port) -> None:
    rx = port.rx
    if rx.wait(1, timeout=LIMIT) != 1:
        os._exit(3)
    rx.forward(port.tx)
    port.tx.sync()
    rx.sync()
    port.close()


def echo_received(conn) -> None:
    echo_one(conn.recv())  # unpickled: descriptors come through multiprocessing


def echo_by_name(name: str) -> None:
    echo_one(ports.attach(name, timeout=LIMIT))


def echo_over_socket(sock) -> None:
    echo_one(ports.recv_port(sock))


def roundtrip(a) -> bytes:
    a.tx.put(b"ping")
    a.tx.sync()
    assert a.rx.wait(1, timeout=LIMIT) == 1
    return bytes(a.rx[0])


@pytest.mark.parametrize("how", ["inherit", "pickle", "scm_rights", "name"])
def test_port_reaches_another_process(how, request):
    if how == "inherit":
        a, b = ports.pipe(slots=8, slot_size=32)
        with child(echo_one, b) as p:
            assert roundtrip(a) == b"ping" and finished(p) == 0
        return
    if how == "pickle":
        parent, conn = FORK.Pipe()
        with child(echo_received, conn) as p:  # forked before the pipe exists
            a, b = ports.pipe(slots=8, slot_size=32)
            parent.send(b)
            assert roundtrip(a) == b"ping" and finished(p) == 0
        return
    if how == "scm_rights":
        s1, s2 = socket.socketpair()
        with s1, s2, child(echo_over_socket, s2) as p:
            a, b = ports.pipe(slots=8, slot_size=32)
            ports.send_port(s1, b)
            assert roundtrip(a) == b"ping" and finished(p) == 0
        return
    name = f"test-{os.getpid()}-{request.node.name}"
    with child(echo_by_name, name) as p:
        a, b = ports.pipe(slots=8, slot_size=32)
        ports.publish(b, name, timeout=LIMIT)
        assert roundtrip(a) == b"ping" and finished(p) == 0


def spawned_echo(port) -> None:  # module level: importable by a spawned child
    echo_one(port)


def test_spawned_process_gets_the_port_pickled():
    a, b = ports.pipe(slots=8, slot_size=32)
    p = multiprocessing.get_context("spawn").Process(target=spawned_echo, args=(b,), daemon=True)
    p.start()
    try:
        assert roundtrip(a) == b"ping"
        assert finished(p) == 0
    finally:
        if p.is_alive():
            p.kill()
        p.join(LIMIT)


# ---- attaching to the wrong memory ------------------------------------------------


def sealed_memfd(content: bytes, size: int | None = None) -> int:
    fd = os.memfd_create("not-a-ring", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size or len(content))
    os.pwrite(fd, content, 0)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def wake_ends() -> list[int]:
    """Two Unix datagram sockets, as a port's wake sockets are."""
    return [socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).detach() for _ in range(2)]


def attach_fds(memfd: int, wakes=None, meta: bytes = b'{"burstio_port": 3, "party": 1, "linger_ns": 0}'):
    """recv_port() on a memfd and 2 descriptors sent over a socketpair."""
    wakes = wakes if wakes is not None else wake_ends()
    s1, s2 = socket.socketpair()
    with s1, s2:
        socket.send_fds(s1, [meta], [memfd, *wakes])
        for fd in [memfd, *wakes]:
            os.close(fd)
        return ports.recv_port(s2)


def header_of(region, nbytes: int = 4096) -> bytearray:
    return bytearray(region.memory[:nbytes])


def test_attach_refuses_wrong_memory():
    gc.collect()  # so that no other test's garbage closes descriptors meanwhile
    fds_before = open_fds()
    with pytest.raises(ValueError, match=full(
            "not a burstio ring region (magic 0x0000000000000000, expected 0x31474e4952534942)")):
        attach_fds(sealed_memfd(bytes(8192)))
    a, _ = ports.pipe(slots=8, slot_size=64)  # (both ends held until the end)
    size = a.region.layout()["size"]
    hdr = header_of(a.region)
    struct.pack_into("<I", hdr, 8, 1)  # version
    with pytest.raises(ValueError, match=r"^ring region version 1 \(header \d+ bytes\); "
                                         r"this burstio reads version 2 \(header \d+ bytes\)$"):
        attach_fds(sealed_memfd(bytes(hdr), size))
    with pytest.raises(ValueError, match=full(
            f"ring region is {size + 4096} bytes (header says {size}) but 8 slots of 64 bytes "
            f"need {size}")):
        attach_fds(sealed_memfd(bytes(header_of(a.region)), size + 4096))
    hdr = header_of(a.region)
    struct.pack_into("<I", hdr, 24, 7)  # slots: not a power of two
    with pytest.raises(ValueError, match=r"^ring region header is corrupt: 7 slots of 64 bytes"):
        attach_fds(sealed_memfd(bytes(hdr), size))
    unsealed = os.memfd_create("unsealed")
    os.ftruncate(unsealed, size)
    with pytest.raises(ValueError, match=r"not sealed against shrinking \(F_SEAL_SHRINK\), "
                                         r"so a peer could truncate it under us$"):
        attach_fds(unsealed)
    r, w = os.pipe()
    memfd, wakes, pool_fd = a.region.fds(1)
    assert pool_fd == -1  # a pipe's buffers are its own
    with pytest.raises(ValueError, match=r"^wake descriptor 2 of a ring port is not a Unix datagram socket: pipe:\["):
        attach_fds(os.dup(memfd), [r, w])
    efd = os.eventfd(0)
    with pytest.raises(ValueError, match=r"^wake descriptor 3 of a ring port is not a Unix datagram socket: "
                                         r"anon_inode:\[eventfd\]$"):
        attach_fds(os.dup(memfd), [os.dup(wakes[0]), efd])
    with pytest.raises(ValueError, match=full("port message version 2; this burstio reads version 3")):
        attach_fds(os.dup(memfd), meta=b'{"burstio_port": 2, "party": 1, "linger_ns": 0}')
    with pytest.raises(ValueError, match=full("port message names party 7; a region has ports 0 and 1")):
        attach_fds(os.dup(memfd), meta=b'{"burstio_port": 3, "party": 7, "linger_ns": 0}')
    with pytest.raises(ValueError, match=full("port message has linger_ns 'x'; it must be an int from 0 to 10**9")):
        attach_fds(os.dup(memfd), meta=b'{"burstio_port": 3, "party": 1, "linger_ns": "x"}')
    with pytest.raises(ValueError, match=full("a port comes with 4 descriptors (memfd, 2 wake sockets and the "
                                              "frame pool), got 3")):
        attach_fds(os.dup(memfd), meta=b'{"burstio_port": 3, "party": 1, "linger_ns": 0, "pool": true}')
    with pytest.raises(ValueError, match=full("this ring region's buffers are its own: no frame pool goes with it")):
        attach_fds(os.dup(memfd), [*wake_ends(), sealed_memfd(bytes(4096))],
                   meta=b'{"burstio_port": 3, "party": 1, "linger_ns": 0, "pool": true}')
    with pytest.raises(ValueError, match=r"^not a burstio port message: b'\\xff"):
        attach_fds(os.dup(memfd), meta=b"\xff{")
    del a, _
    gc.collect()
    assert open_fds() - fds_before == set()  # nothing leaked


def descriptor_kinds(fds: set[int]) -> list[str]:
    return sorted(os.readlink(f"/proc/self/fd/{fd}").split(":")[0] for fd in fds)


def test_a_port_holds_an_eventfd_of_its_own_only_once_used_here():
    gc.collect()
    before = open_fds()
    a, b = ports.pipe(slots=4, slot_size=16)
    # the region's memfd and wake sockets; a switch's client ports it never uses cost no more
    assert descriptor_kinds(open_fds() - before) == ["/memfd", "socket", "socket", "socket", "socket"]
    a.claim()  # from here on a close() in another thread must be able to wake a's waiters
    assert descriptor_kinds(open_fds() - before) == ["/memfd", "anon_inode", "socket", "socket", "socket", "socket"]
    del a, b
    gc.collect()
    assert open_fds() == before


def test_corrupt_positions_and_indices_are_errors_not_crashes():
    a, b = ports.pipe(slots=8, slot_size=32)
    a.tx.put(b"x")
    a.tx.sync()
    b.rx.sync()
    lay = a.region.layout()
    bad = a.region.memory[lay["ctl"][0]:lay["ctl"][0] + 4].cast("I")
    bad[0] = 1000  # the producer's published position, beyond any possible one
    with pytest.raises(OSError, match="the shared memory is corrupt") as e:
        b.rx.sync()
    assert e.value.errno == errno.EBADMSG
    bad[0] = 1
    b.rx.indices[0] = 999999
    with pytest.raises(OSError, match=oserror(errno.EBADMSG,
            "slot 0 of ring 0 names buffer 999999 but the pool has 16: the shared memory is corrupt")):
        b.rx[0]


# ---- notification suppression ------------------------------------------------------


def waiter(ring, n: int, results: list) -> threading.Thread:
    t = threading.Thread(target=lambda: results.append(ring.wait(n, timeout=LIMIT)), daemon=True)
    t.start()
    return t


def test_no_kicks_while_the_consumer_is_awake():
    a, b = ports.pipe(slots=64, slot_size=16, linger=0)
    for _ in range(10):
        for _ in range(5):
            a.tx.put(b"x")
        a.tx.sync()
        b.rx.wait(1, timeout=0)
        b.rx.advance()
        b.rx.sync()
    assert a.tx.counters()["syncs"] == 10 and a.tx.counters()["kicks"] == 0
    assert b.rx.counters()["kicks"] == 0  # the producer never slept either


def test_sleeping_consumer_is_kicked_once_when_its_threshold_is_reached():
    a, b = ports.pipe(slots=64, slot_size=16, linger=0)
    got: list = []
    t = waiter(b.rx, 8, got)  # wake me when 8 packets are there
    assert wait_for(lambda: b.rx.counters()["sleeps"] == 1)
    for i in range(8):
        a.tx.put(b"%d" % i)
        a.tx.sync()  # 8 publishes, only the 8th reaches the threshold
    t.join(LIMIT)
    assert got == [8]
    assert a.tx.counters()["syncs"] == 8
    assert a.tx.counters()["kicks"] == 1
    assert b.rx.counters()["wakeups"] == 1 and b.rx.counters()["sleeps"] == 1


def test_producer_waiting_for_room_is_woken_once_per_batch():
    a, b = ports.pipe(slots=16, slot_size=16, linger=0)
    for _ in range(15):
        a.tx.put(b"x")
    a.tx.sync()
    got: list = []
    t = waiter(a.tx, 4, got)  # the ring is full: wait for 4 free slots
    assert wait_for(lambda: a.tx.counters()["sleeps"] == 1)
    b.rx.sync()
    for _ in range(4):
        b.rx.advance(1)
        b.rx.sync()  # 4 releases, one kick
    t.join(LIMIT)
    assert got == [4]
    assert b.rx.counters()["syncs"] == 4 and b.rx.counters()["kicks"] == 1
    assert a.tx.counters()["wakeups"] == 1


def test_lingering_consumer_catches_data_without_sleeping():
    a, b = ports.pipe(slots=16, slot_size=16, linger=1.0)  # the longest linger there is
    got: list = []
    t = waiter(b.rx, 1, got)
    # The waiter spins (on its CPU) only while it lingers: once it has used
    # 2 ms of CPU it is lingering for sure (getting there takes microseconds),
    # and it lingers for a second, so the packet below meets it there.
    spent = time.pthread_getcpuclockid(t.ident)
    assert wait_for(lambda: time.clock_gettime(spent) > 0.002 or not t.is_alive(), LIMIT / 2)
    assert t.is_alive(), got
    a.tx.put(b"x")
    a.tx.sync()
    t.join(LIMIT)
    assert got == [1]
    c = b.rx.counters()
    assert (c["linger_hits"], c["sleeps"], a.tx.counters()["kicks"]) == (1, 0, 0)


def test_timeout_is_counted_and_returns_what_is_owned():
    a, b = ports.pipe(slots=8, slot_size=16, linger=0)
    a.tx.put(b"x")
    a.tx.sync()
    assert b.rx.wait(2, timeout=0.01) == 1
    assert b.rx.counters()["timeouts"] == 1


# ---- the switch --------------------------------------------------------------------


@contextlib.contextmanager
def running(sw):
    sw.start()
    try:
        yield sw
    finally:
        sw.close()


def test_switch_static_routes_learning_broadcast_and_isolation():
    with running(ports.Switch(slots=16, slot_size=64)) as sw:
        p1, p2, p3 = sw.add_port(key=1), sw.add_port(key=2), sw.add_port()
        send(p1, b"SECRET for 2", dst=2, src=11)
        assert receive(p2, 1) == [b"SECRET for 2"]
        assert sw.routes[11] == (0, False)  # learned from the source key
        send(p3, b"to eleven", dst=11, src=33)
        assert receive(p1, 1) == [b"to eleven"]
        send(p2, b"to all", dst=ports.BROADCAST)
        assert receive(p1, 1) == [b"to all"] and receive(p3, 1) == [b"to all"]
        send(p3, b"claims key 1", dst=2, src=1)  # a static route is not relearned
        assert receive(p2, 1) == [b"claims key 1"]
        assert sw.routes[1] == (0, True) and sw.routes[33] == (2, False)
        send(p1, b"to myself", dst=11)  # learned on its own port: filtered
        assert wait_for(lambda: sw.counters["filtered"] == 1)
        c = sw.counters
        assert (c["forwarded"], c["flooded"], c["unknown_drops"]) == (5, 1, 0)
    # each client has a region of its own: p3's memory never saw p1's secret
    assert b"SECRET" in bytes(p1.memory) and b"SECRET" in bytes(p2.memory)
    assert b"SECRET" not in bytes(p3.memory)


@pytest.mark.parametrize("unknown", ["flood", "drop"])
def test_switch_unknown_destination(unknown):
    with running(ports.Switch(slots=16, slot_size=64, unknown=unknown, learning=False)) as sw:
        p1, p2, p3 = sw.add_port(), sw.add_port(), sw.add_port()
        send(p1, b"who?", dst=999)
        send(p1, b"marker", dst=ports.BROADCAST)
        if unknown == "flood":
            assert receive(p2, 2) == [b"who?", b"marker"] and receive(p3, 2) == [b"who?", b"marker"]
            assert sw.counters["flooded"] == 2 and sw.counters["unknown_drops"] == 0
        else:
            assert receive(p2, 1) == [b"marker"] and receive(p3, 1) == [b"marker"]
            assert sw.counters["unknown_drops"] == 1 and sw.counters["flooded"] == 1
        assert sw.routes == {}


@pytest.mark.parametrize("on_full", ["wait", "drop"])
def test_switch_full_destination(on_full):
    with running(ports.Switch(slots=8, slot_size=16, on_full=on_full)) as sw:
        src, dst = sw.add_port(key=1), sw.add_port(key=2)
        for i in range(7):
            src.tx.put(b"%d" % i, dst=2)
        src.tx.sync()
        assert wait_for(lambda: dst.rx.sync() == 7)  # the receiver's ring is full now
        for i in range(7, 12):
            src.tx.put(b"%d" % i, dst=2)
        src.tx.sync()
        if on_full == "drop":
            assert wait_for(lambda: sw.counters["full_drops"] == 5)
            assert receive(dst, 7) == [b"%d" % i for i in range(7)]
        else:  # lossless: the rest waits in the sender's ring until there is room
            assert receive(dst, 12) == [b"%d" % i for i in range(12)]
            assert sw.counters["full_drops"] == 0


def test_switch_drops_for_closed_and_dead_clients_and_serves_the_rest():
    with running(ports.Switch(slots=16, slot_size=64)) as sw:
        p1, p2, p3 = sw.add_port(key=1), sw.add_port(key=2), sw.add_port(key=3)
        p2.rx.sync()
        p2.close()

        def learn_then_hold(port, go):
            send(port, b"hello", dst=1, src=33)
            hold(port, go)

        go = FORK.Event()
        with child(learn_then_hold, p3, go) as p:
            assert go.wait(LIMIT)
            assert receive(p1, 1) == [b"hello"] and sw.routes[33] == (2, False)
            os.kill(p.pid, signal.SIGKILL)
            p.join(LIMIT)
            assert wait_for(lambda: sw.port_state(p3) == "exited")
        assert wait_for(lambda: sw.port_state(p2) == "closed")
        assert 33 not in sw.routes  # learned there: forgotten
        assert sw.routes[2] == (1, True) and sw.routes[3] == (2, True)  # static: kept
        send(p1, b"to closed", dst=2)
        send(p1, b"to dead", dst=3)  # dropped, not flooded to the others
        send(p1, b"to all", dst=ports.BROADCAST)  # nobody left but the sender
        assert wait_for(lambda: sw.counters["flooded"] == 1)
        assert sw.counters["gone_drops"] == 2
        assert sw.counters["ports_gone"] == 2 and sw.port_state(p1) == "live"


def test_switch_process_death_is_an_error_for_its_clients():
    sw = ports.Switch(slots=16, slot_size=64)
    p1 = sw.add_port(key=1)
    with child(sw.run) as p:  # the switch in a process of its own
        send(p1, b"echo me", dst=1)  # routed back to its sender: filtered
        assert wait_for(lambda: p1.tx.sync() == 15)  # taken by the switch process
        os.kill(p.pid, signal.SIGKILL)
        with pytest.raises(ConnectionResetError, match=oserror(errno.ECONNRESET,
                f"the process holding port 0 (pid {p.pid}) exited without closing it")):
            p1.rx.wait(1, timeout=LIMIT)


# ---- BurstSocket integration -------------------------------------------------------


def test_receive_from_socket_into_ring_and_send_back_from_it():
    with Sockets() as socks:
        srv = socks.receiver()
        client = socks.plain()
        a, b = ports.pipe(slots=32, slot_size=64)
        for i in range(10):
            client.sendto(b"request %d" % i, srv.getsockname())
        client.sendto(b"x" * 100, srv.getsockname())  # longer than a slot
        got = 0
        while got < 11:
            n = a.tx.recv_from(srv, timeout=LIMIT, dst=7)  # recvmmsg into the ring's buffers
            assert n, "datagrams did not arrive"
            got += n
        a.tx.sync()
        assert b.rx.wait(11, timeout=0) == 11
        assert [bytes(b.rx[i]) for i in range(10)] == [b"request %d" % i for i in range(10)]
        assert b.rx.addr(0) == client.getsockname() and b.rx.dst(0) == 7
        assert len(b.rx[10]) == 64 and b.rx.flags(10) & burstio.FLAG_TRUNCATED
        c = srv.counters
        assert (c["rx_datagrams"], c["rx_truncated"], c["rx_bytes"]) == (11, 1, 64 + sum(
            len(b"request %d" % i) for i in range(10)))
        b.rx.forward(b.tx)  # zero-copy echo through the pipe
        b.tx.sync()
        b.rx.sync()
        assert a.rx.wait(11, timeout=LIMIT) == 11
        assert a.rx.send_to(srv) == 11  # sendmmsg straight from the ring's buffers
        assert len(a.rx) == 0
        replies = recv_plain(client, 11)
        assert sorted(m for m, _ in replies) == sorted(
            [b"request %d" % i for i in range(10)] + [b"x" * 64])
        assert srv.counters["tx_datagrams"] == 11


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_recv_from_refuses_a_socket_that_is_not_udp(kind):
    a, _ = ports.pipe(slots=8, slot_size=64)  # (the peer stays open)
    if kind == "tcp":
        stream = "PortTx.recv_from needs a UDP socket (SOCK_DGRAM), got SOCK_STREAM"
        with socket.create_server(("127.0.0.1", 0)) as srv, socket.create_connection(srv.getsockname()) as s, \
                pytest.raises(ValueError, match=full(stream)):
            a.tx.recv_from(s, timeout=0)  # a stream has no packets to keep apart
    else:
        s, _peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with s, _peer, pytest.raises(ValueError, match=full(
                "PortTx.recv_from needs an AF_INET or AF_INET6 socket, got <AddressFamily.AF_UNIX: 1>")):
            a.tx.recv_from(s, timeout=0)
    assert len(a.tx) == 0 and a.tx.head == 0  # nothing was taken


def test_recv_from_refuses_gro_socket():
    require_kernel("udp_gro")
    with Sockets() as socks:
        s = socks.burst(gro=True)
        a, _ = ports.pipe(slots=8, slot_size=64)
        with pytest.raises(ValueError, match="does not split UDP GRO receives"):
            a.tx.recv_from(s, timeout=0)


def test_packets_iterator_ends_when_the_peer_closes():
    a, b = ports.pipe(slots=8, slot_size=48)
    with child(produce, b, 20, 3) as p:
        seen = [struct.unpack_from("<Q", m)[0] for m in a.rx.packets(timeout=LIMIT)]
        assert finished(p) == 0
    assert seen == list(range(20))
