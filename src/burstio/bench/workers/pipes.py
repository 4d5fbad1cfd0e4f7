"""Both ends of the ``rings`` scenario: producers (run in a forked worker
process, driven over a control pipe) and consumers (run in the measuring
process), one pair per transport.

Every variant does the same work per message: the producer writes a message
of ``size`` bytes whose first 8 bytes are its sequence number, the consumer
reads every message's sequence number and checks it is the next one (in
order, exactly once). The stdlib transports do it one message per call, as
their API requires; ``RingBatch*`` does it a batch at a time with numpy over
the shared memory (the way the ring API is meant to be used);
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


class PipeProducer(QueueProducer):
    def __init__(self, conn: Any, size: int):
        self.conn, self.pad, self.seq = conn, bytes(size - 8), 0

    def run(self, count: int) -> None:
        send, pack, pad = self.conn.send_bytes, _SEQ.pack, self.pad
        for i in range(self.seq, self.seq + count):
            send(pack(i) + pad)
        self.seq += count

    def one(self, payload: bytes) -> None:
        self.conn.send_bytes(payload + self.pad)


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
    """One ``put()`` per message (bytes built per message, as for the
    stdlib transports), a ``sync()`` every ``batch`` messages."""

    def __init__(self, port: Any, size: int, batch: int, dst: int = 0):
        self.port, self.batch, self.dst, self.pad, self.seq = port, batch, dst, bytes(size - 8), 0

    def run(self, count: int) -> None:
        tx, pack, pad, k, dst = self.port.tx, _SEQ.pack, self.pad, self.batch, self.dst
        put, sync, wait = tx.put, tx.sync, tx.wait
        free = len(tx)
        for i in range(self.seq, self.seq + count):
            if not free:
                free = wait(min(k, tx.capacity))
            free = put(pack(i) + pad, dst)
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
    def __init__(self, q: Any):
        self.get, self.expect = q.get, 0

    @classmethod
    def on_pipe(cls, conn: Any) -> QueueConsumer:
        self = cls.__new__(cls)
        self.get, self.expect = conn.recv_bytes, 0
        return self

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
