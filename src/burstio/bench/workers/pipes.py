"""Both ends of the ``pipes`` scenario: producers (run in a forked worker
process, driven over a control pipe) and consumers (run in the measuring
process), one pair per transport.

Every variant does the same work per message: the producer writes the
message's sequence number (8 bytes, little-endian) into the first bytes of
a ``size``-byte payload and hands the payload to the transport; the
consumer reads every message's sequence number and checks it is the next
one (in order, exactly once). No variant builds an object per message
where its API lets it avoid one: the stdlib pipe writes into one
preallocated buffer (``pack_into``, ``send_bytes``) and reads into another
(``recv_bytes_into``, ``unpack_from``); the stdlib shared-memory ring and
the ports write and read the sequence number in place. ``multiprocessing.Queue``
pickles an object per message by design (its API takes objects). The
stdlib transports check one message per Python operation (the stdlib has
no vector type); ``RingBatch*`` does it a batch at a time with numpy over
the shared memory (the way the port API is meant to be used);
``RingPerPacket*`` does it one message per Python call, to show what the
per-message interpreter work costs on its own.
"""
from __future__ import annotations

import struct
import time
from typing import Any

from ... import _native

_SEQ = struct.Struct("<Q")


class OrderError(AssertionError):
    """A consumer saw a message out of order (lost, duplicated or torn)."""


# ---- producers (worker process) ------------------------------------------------

class QueueProducer:
    def __init__(self, q: Any, size: int):
        self.q, self.pad, self.seq = q, bytes(size - 8), 0

    def run(self, count: int) -> None:
        put, pack, pad = self.q.put, _SEQ.pack, self.pad
        for i in range(self.seq, self.seq + count):
            put(pack(i) + pad)
        self.seq += count

    def one(self, payload: bytes) -> None:
        self.q.put(payload + self.pad)


class PipeProducer:
    """multiprocessing.Pipe: the sequence number packed into one
    preallocated payload, ``send_bytes`` per message."""

    def __init__(self, conn: Any, size: int):
        self.conn, self.buf, self.seq = conn, bytearray(size), 0

    def run(self, count: int) -> None:
        send, pack_into, buf = self.conn.send_bytes, _SEQ.pack_into, self.buf
        for i in range(self.seq, self.seq + count):
            pack_into(buf, 0, i)
            send(buf)
        self.seq += count

    def one(self, payload: bytes) -> None:
        self.buf[:8] = payload
        self.conn.send_bytes(self.buf)


class ShmRingProducer:
    """A ring written by hand with the stdlib: ``slots`` payloads in a
    multiprocessing.shared_memory block, each sequence number packed in
    place; per batch, one pipe message tells the consumer how many are
    ready, and the consumer hands slots back with one pipe message per
    batch (the pipe's system calls order the memory accesses: Python has
    no atomics to publish an index with)."""

    def __init__(self, shm: Any, ready: Any, returns: Any, size: int, slots: int, batch: int):
        self.shm, self.mem, self.ready, self.returns = shm, shm.buf, ready, returns
        self.size, self.slots, self.batch = size, slots, batch
        self.seq, self.free = 0, slots
        self.token, self.credit = bytearray(8), bytearray(8)

    def run(self, count: int) -> None:
        mem, size, slots, pack_into = self.mem, self.size, self.slots, _SEQ.pack_into
        send, token = self.ready.send_bytes, self.token
        seq, end = self.seq, self.seq + count
        while seq < end:
            while self.free < min(self.batch, end - seq):
                self.returns.recv_bytes_into(self.credit)
                self.free += _SEQ.unpack_from(self.credit)[0]
            k = min(self.batch, end - seq, self.free)
            for i in range(seq, seq + k):
                pack_into(mem, (i % slots) * size, i)
            pack_into(token, 0, k)
            send(token)
            self.free -= k
            seq += k
        self.seq = seq

    def one(self, payload: bytes) -> None:
        while not self.free:
            self.returns.recv_bytes_into(self.credit)
            self.free += _SEQ.unpack_from(self.credit)[0]
        at = (self.seq % self.slots) * self.size
        self.mem[at:at + 8] = payload
        _SEQ.pack_into(self.token, 0, 1)
        self.ready.send_bytes(self.token)
        self.free -= 1
        self.seq += 1


class RingBatchProducer:
    """A batch of ``batch`` messages per call: sequence numbers written with
    numpy into a private PacketBatch, ``put_batch`` (one C call) into the
    ring, one ``sync()``; ``wait(batch)`` when the ring lacks room."""

    def __init__(self, port: Any, size: int, batch: int, dst: int = 0):
        import numpy as np
        self.np, self.port, self.batch, self.dst, self.seq = np, port, batch, dst, 0
        self.pb = _native.PacketBatch(batch, size)
        for _ in range(batch):
            self.pb.append(bytes(size))
        self.seqs = np.ndarray((batch,), dtype="<u8", buffer=self.pb.arena, strides=(size,))
        self.ramp = np.arange(batch, dtype=np.uint64)

    def run(self, count: int) -> None:
        tx, pb, seqs, ramp, dst = self.port.tx, self.pb, self.seqs, self.ramp, self.dst
        put_batch, sync, wait = tx.put_batch, tx.sync, tx.wait
        sent = 0
        while sent < count:
            k = min(self.batch, count - sent)
            seqs[:k] = ramp[:k] + self.seq
            if len(tx) < k:
                wait(k)
            put_batch(pb, 0, k, dst=dst)
            sync()
            self.seq += k
            sent += k

    def one(self, payload: bytes) -> None:
        self.port.tx.put(payload, dst=self.dst)
        self.port.tx.sync()


class RingPerPacketProducer:
    """One ``put()`` per message (the sequence number packed into one
    preallocated payload, as for the stdlib pipe), a ``sync()`` every
    ``batch`` messages."""

    def __init__(self, port: Any, size: int, batch: int, dst: int = 0):
        self.port, self.batch, self.dst, self.buf, self.seq = port, batch, dst, bytearray(size), 0

    def run(self, count: int) -> None:
        tx, pack_into, buf, k, dst = self.port.tx, _SEQ.pack_into, self.buf, self.batch, self.dst
        put, sync, wait = tx.put, tx.sync, tx.wait
        free = len(tx)
        for i in range(self.seq, self.seq + count):
            if not free:
                free = wait(min(k, tx.capacity))
            pack_into(buf, 0, i)
            free = put(buf, dst)
            if not i % k:
                sync()
        sync()
        self.seq += count

    one = RingBatchProducer.one


def serve(conn: Any, producer: Any) -> None:
    """The worker's loop: ("run", count) -> ("done", cpu_s);
    ("latency", n, gap_s) -> one timestamped message every gap_s; ("stop",)."""
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        c0 = time.process_time()
        if cmd[0] == "run":
            producer.run(cmd[1])
        elif cmd[0] == "latency":
            for _ in range(cmd[1]):
                time.sleep(cmd[2])
                producer.one(_SEQ.pack(time.perf_counter_ns()))
        conn.send(("done", time.process_time() - c0))
    close = getattr(getattr(producer, "port", None), "close", None)
    if close:
        close()


# ---- consumers (measuring process) -----------------------------------------------

class QueueConsumer:
    """multiprocessing.Queue: ``get()`` returns a new object per message."""

    def __init__(self, q: Any):
        self.get, self.expect = q.get, 0

    def run(self, count: int) -> int:
        get, unpack = self.get, _SEQ.unpack_from
        for i in range(self.expect, self.expect + count):
            if unpack(get())[0] != i:
                raise OrderError(f"expected message {i}")
        self.expect += count
        return count

    def latency(self, n: int) -> list[float]:
        get, unpack, now = self.get, _SEQ.unpack_from, time.perf_counter_ns
        out = []
        for _ in range(n):
            m = get()
            out.append((now() - unpack(m)[0]) / 1e3)  # the clock read after the message came
        return out


class PipeConsumer:
    """multiprocessing.Pipe: ``recv_bytes_into`` one preallocated buffer."""

    def __init__(self, conn: Any, size: int):
        self.conn, self.buf, self.expect = conn, bytearray(size), 0

    def run(self, count: int) -> int:
        recv_into, unpack, buf = self.conn.recv_bytes_into, _SEQ.unpack_from, self.buf
        for i in range(self.expect, self.expect + count):
            recv_into(buf)
            if unpack(buf)[0] != i:
                raise OrderError(f"expected message {i}")
        self.expect += count
        return count

    def latency(self, n: int) -> list[float]:
        recv_into, unpack, now, buf = self.conn.recv_bytes_into, _SEQ.unpack_from, time.perf_counter_ns, self.buf
        out = []
        for _ in range(n):
            recv_into(buf)
            out.append((now() - unpack(buf)[0]) / 1e3)
        return out


class ShmRingConsumer:
    """The other end of ShmRingProducer: per batch, one pipe message says
    how many slots are ready; each sequence number is read in place and
    checked; one pipe message hands the slots back."""

    def __init__(self, shm: Any, ready: Any, returns: Any, size: int, slots: int):
        self.shm, self.mem, self.ready, self.returns = shm, shm.buf, ready, returns
        self.size, self.slots, self.expect = size, slots, 0
        self.token = bytearray(8)

    def _take(self) -> int:
        self.ready.recv_bytes_into(self.token)
        k: int = _SEQ.unpack_from(self.token)[0]
        return k

    def run(self, count: int) -> int:
        mem, size, slots, unpack = self.mem, self.size, self.slots, _SEQ.unpack_from
        got = 0
        while got < count:
            k = self._take()
            e = self.expect
            for i in range(e, e + k):
                if unpack(mem, (i % slots) * size)[0] != i:
                    raise OrderError(f"expected message {i}")
            self.returns.send_bytes(self.token)  # the same count back: k slots are free
            self.expect += k
            got += k
        return got

    def latency(self, n: int) -> list[float]:
        unpack, now = _SEQ.unpack_from, time.perf_counter_ns
        out: list[float] = []
        while len(out) < n:
            k = self._take()
            t = now()
            out += [(t - unpack(self.mem, (i % self.slots) * self.size)[0]) / 1e3
                    for i in range(self.expect, self.expect + k)]
            self.returns.send_bytes(self.token)
            self.expect += k
        return out


class RingBatchConsumer:
    """``wait()``, ``peek(batch)`` (entries point into the ring), every
    sequence number read and checked with numpy, ``advance``."""

    def __init__(self, port: Any, batch: int):
        import numpy as np
        self.np, self.port, self.expect = np, port, 0
        self.pb = _native.PacketBatch(batch, 1)
        self.offsets = np.frombuffer(self.pb.offsets, dtype=np.uint64)
        self.words = np.frombuffer(port.memory, dtype=np.uint64)  # buffers are 64-byte aligned
        self.ramp = np.arange(batch, dtype=np.uint64)

    def run(self, count: int) -> int:
        rx, pb, offsets, words, ramp = self.port.rx, self.pb, self.offsets, self.words, self.ramp
        wait, peek, advance, equal = rx.wait, rx.peek, rx.advance, self.np.array_equal
        got = 0
        while got < count:
            wait(1)
            n = peek(pb, count - got)
            if not equal(words[offsets[:n] >> 3], ramp[:n] + self.expect):
                raise OrderError(f"a batch of {n} from message {self.expect} is out of order")
            advance(n)
            self.expect += n
            got += n
        rx.sync()  # hand the last slots back now
        return got

    def latency(self, n: int) -> list[float]:
        rx, unpack, now = self.port.rx, _SEQ.unpack_from, time.perf_counter_ns
        out: list[float] = []
        while len(out) < n:
            k = rx.wait(1)
            t = now()
            out += [(t - unpack(rx[i])[0]) / 1e3 for i in range(k)]
            rx.advance(k)
        rx.sync()
        return out


class RingPerPacketConsumer(RingBatchConsumer):
    """``wait()``, then one ``rx[i]`` and one unpack per message."""

    def __init__(self, port: Any, batch: int):
        self.port, self.batch, self.expect = port, batch, 0

    def run(self, count: int) -> int:
        rx, unpack = self.port.rx, _SEQ.unpack_from
        wait, advance = rx.wait, rx.advance
        got = 0
        while got < count:
            n = min(wait(1), self.batch, count - got)
            for j in range(n):
                if unpack(rx[j])[0] != self.expect + j:
                    raise OrderError(f"expected message {self.expect + j}")
            advance(n)
            self.expect += n
            got += n
        rx.sync()
        return got
