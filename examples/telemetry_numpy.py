"""Telemetry ingest into numpy: fixed-size binary readings, parsed a batch at a time.

Each datagram is one reading: sensor id (uint16), sequence (uint32), value (float32),
little-endian. recv_batch fills a PacketBatch; numpy then reads every payload of the batch
at once through the batch's arena and offsets (no Python object per datagram), and keeps
per-sensor sums with np.bincount.

Run:   python examples/telemetry_numpy.py --port 9200 --count 10000
Feed:  python -c "import socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
           [s.sendto(struct.pack('<HIf', i % 4, i, 1.5), ('127.0.0.1', 9200)) for i in range(10000)]"
It prints per-sensor counts and means, then exits.
"""
import argparse
import contextlib

import numpy as np

import burstio

READING = np.dtype([("sensor", "<u2"), ("seq", "<u4"), ("value", "<f4")])  # 10 bytes, packed
SENSORS = 16


def main() -> None:
    ap = argparse.ArgumentParser(description="telemetry datagrams into numpy, a batch at a time")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9200, help="0: any free port")
    ap.add_argument("--count", type=int, default=10000, help="readings to take before printing")
    args = ap.parse_args()

    sock = burstio.BurstSocket.bind((args.host, args.port), rcvbuf=8 << 20)
    batch = burstio.PacketBatch(256, 64)                  # 256 readings per call, 64-byte slots
    arena = np.frombuffer(batch.arena, np.uint8)          # every slot, seen once, no copy
    columns = np.arange(READING.itemsize)
    counts, sums = np.zeros(SENSORS, np.int64), np.zeros(SENSORS)
    bad = taken = 0
    host, port = sock.getsockname()[:2]
    print(f"taking telemetry on {host}:{port}", flush=True)
    while taken < args.count:
        n = sock.recv_batch(batch)
        offsets = np.asarray(batch.offsets)[:n].astype(np.intp)  # uint64 -> index type
        good = np.asarray(batch.lengths)[:n] == READING.itemsize  # drop what is not a reading
        rows = arena[offsets[good, None] + columns]       # gather: one row of bytes per reading
        readings = rows.view(READING).ravel()             # ... seen as structured records
        sensor = readings["sensor"] % SENSORS
        counts += np.bincount(sensor, minlength=SENSORS)
        sums += np.bincount(sensor, weights=readings["value"], minlength=SENSORS)
        taken += n
        bad += int(n - good.sum())
    seen = counts > 0
    means = ", ".join(f"{s}: {c} x {m:.3f}" for s, c, m in zip(np.flatnonzero(seen), counts[seen],
                                                              sums[seen] / counts[seen], strict=True))
    print(f"{taken} datagrams, {bad} not readings, {sock.counters['rx_syscalls']} receive calls", flush=True)
    print(f"per sensor (count x mean): {means}", flush=True)
    sock.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
        main()
