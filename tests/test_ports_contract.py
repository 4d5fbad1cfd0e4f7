"""The port contract: one application's code run unchanged on every kind of
port (tests/support/portkinds.py): the two ends of a pipe, two ports of a
MAC switch, and two NIC ports on the ends of a lab's veth (AF_XDP queues;
skipped with the reason without root or AF_XDP).

Each test puts frames on one port's TX ring and reads them from the other's
RX ring with the ring interface alone: put, claim, put_batch, sync, wait,
head/cur/tail, advance, the index and length arrays, peek into a
PacketBatch, packets(), forward, counters, close. Nothing measures time:
timeouts only bound how long a broken build can make a test wait.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import burstio
from burstio import ports
from support.portkinds import KINDS, Pair, make
from support.ports import LIMIT, receive


@pytest.fixture(params=KINDS)
def pair(request: pytest.FixtureRequest):
    with make(request.param) as p:
        yield p


def send(port: ports.Port, frames: list[bytes]) -> None:
    for f in frames:
        if not len(port.tx):
            assert port.tx.wait(1, timeout=LIMIT), "no room in the TX ring"
        port.tx.put(f)
    port.tx.sync()


def test_frames_arrive_in_order_both_ways(pair: Pair):
    ab = [pair.frame("a", i) for i in range(40)]
    ba = [pair.frame("b", i, size=300) for i in range(40)]
    send(pair.a, ab)
    assert receive(pair.b, 40) == ab
    send(pair.b, ba)
    assert receive(pair.a, 40) == ba


def test_claim_fills_a_slot_in_place(pair: Pair):
    f = pair.frame("a", 7)
    view = pair.a.tx.claim(len(f))
    view[:] = f
    assert len(view) == len(f) <= pair.a.slot_size
    pair.a.tx.sync()
    assert receive(pair.b, 1) == [f]


def test_put_batch_then_peek_reads_the_ring_in_place(pair: Pair):
    frames = [pair.frame("a", i, size=64 + i) for i in range(10)]
    out = burstio.PacketBatch(16, 2048)
    for f in frames:
        out.append(f)
    assert pair.a.tx.put_batch(out) == 10
    pair.a.tx.sync()
    rx = pair.b.rx
    got = 0
    while got < 10:
        got = rx.wait(10, timeout=LIMIT)
        assert got, "nothing arrived"
    seen = burstio.PacketBatch(16, 1)
    assert rx.peek(seen) == 10
    assert [bytes(seen[i]) for i in range(10)] == frames
    memory = pair.b.buffers
    for i in range(10):  # the entries point at the frames where the ring holds them
        off, n = seen.offsets[i], seen.lengths[i]
        assert bytes(memory[off:off + n]) == frames[i]
    seen.clear()
    rx.advance()
    rx.sync()


def test_positions_and_slot_arrays(pair: Pair):
    frames = [pair.frame("a", i, size=100 + 10 * i) for i in range(5)]
    send(pair.a, frames)
    rx = pair.b.rx
    while rx.wait(5, timeout=LIMIT) < 5:
        pass
    lay = pair.b.region.layout()
    slots, head = lay["slots"], rx.head
    assert len(rx) == (rx.tail - head) % slots == 5 and rx.cur == head
    memory = np.frombuffer(pair.b.buffers, np.uint8)
    for i, f in enumerate(frames):
        k = (head + i) % slots
        assert rx.lengths[k] == len(f)
        start = lay["bufs"] + rx.indices[k] * lay["stride"]
        assert memory[start:start + len(f)].tobytes() == f  # numpy sees the buffer, no copy
    rx.advance(2)
    assert (rx.head, len(rx)) == ((head + 2) % slots, 3)
    rx.cur = rx.tail  # keep the 3 packets, ask to be woken for one more
    assert rx.wait(1, timeout=0.01) == 3  # nothing beyond cur: times out, owns 3 still
    assert [bytes(rx[i]) for i in range(3)] == frames[2:]
    assert rx.counters()["timeouts"] >= 1
    rx.advance()
    rx.sync()


def test_packets_iterates_and_frees_as_it_goes(pair: Pair):
    frames = [pair.frame("a", i) for i in range(12)]
    send(pair.a, frames)
    got = []
    for packet in pair.b.rx.packets(timeout=LIMIT):
        got.append(bytes(packet))
        if len(got) == len(frames):
            break
    assert got == frames


def test_forward_echoes_without_a_copy(pair: Pair):
    frames = [pair.frame("a", i) for i in range(20)]
    send(pair.a, frames)
    rx = pair.b.rx
    n = 0
    while n < 20:
        n = rx.wait(20, timeout=LIMIT)
        assert n, "nothing arrived"
    for i in range(n):  # an l2fwd: the frame goes back to where it came from
        v = rx[i]
        v[0:12] = bytes(v[6:12]) + bytes(v[0:6])
    assert rx.forward(pair.b.tx) == 20
    pair.b.tx.sync()
    rx.sync()
    back = receive(pair.a, 20)
    assert back == [f[6:12] + f[0:6] + f[12:] for f in frames]
    assert rx.counters()["forwarded_zerocopy"] == 20 and rx.counters()["forwarded_copied"] == 0


def test_forward_to_a_port_that_shares_nothing_copies(pair: Pair):
    frames = [pair.frame("a", i) for i in range(6)]
    send(pair.a, frames)
    rx = pair.b.rx
    while rx.wait(6, timeout=LIMIT) < 6:
        pass
    near, far = ports.pipe(slots=8, slot_size=2048)
    with near, far:
        assert rx.forward(near.tx) == 6
        near.tx.sync()
        assert far.rx.wait(6, timeout=0) == 6
        assert [bytes(far.rx[i]) for i in range(6)] == frames
    assert rx.counters()["forwarded_copied"] == 6
    rx.sync()


def test_full_tx_ring_refuses_a_put(pair: Pair):
    tx = pair.a.tx
    assert tx.sync() == tx.capacity == pair.a.slots - 1
    f = pair.frame("a", 1)
    for _ in range(tx.capacity):
        tx.put(f)
    with pytest.raises(BlockingIOError, match="ring full"):
        tx.put(f)
    tx.sync()
    assert receive(pair.b, tx.capacity) == [f] * tx.capacity


def test_counters_count_what_each_side_did(pair: Pair):
    send(pair.a, [pair.frame("a", 1)])
    assert receive(pair.b, 1)
    tx, rx = pair.a.counters["tx"], pair.b.counters["rx"]
    assert tx["syncs"] >= 1
    assert set(rx) >= {"syncs", "kicks", "sleeps", "wakeups", "linger_hits", "timeouts", "forwarded_zerocopy",
                       "forwarded_copied"}


def test_close_ends_a_wait_in_another_thread(pair: Pair):
    errors: list[BaseException] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        try:
            pair.b.rx.wait(1, timeout=LIMIT)
        except BaseException as e:  # noqa: BLE001 - what ended the wait is the result
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    started.wait(LIMIT)
    while not pair.b.rx.counters()["sleeps"]:  # it sleeps now
        t.join(0.001)
    pair.b.close()
    t.join(LIMIT)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ValueError), errors
    assert "closed" in str(errors[0])
