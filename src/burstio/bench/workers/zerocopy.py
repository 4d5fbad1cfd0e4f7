"""The measuring side of ``tx-zerocopy``: 64 KiB UDP GSO sends from a
ZeroCopySender, timed in this process (run inside the bench's network
namespace for the ifb sink, or anywhere for loopback).

    python -m burstio.bench.workers.zerocopy VARIANT SECONDS [--cpu N]   # one run, one JSON line
    python -m burstio.bench.workers.zerocopy --serve [--cpu N]           # "VARIANT SECONDS" per stdin line

A variant name is ``copy``, ``msg-zerocopy`` or ``uring-send-zc``, with
``-loopback`` appended to send to a receiver on 127.0.0.1 (where the kernel
must copy) instead of the ifb sink at ``SINK_ADDR``. The sink variants use
mode "always" (or "never" for copy); the loopback ones the default
"adaptive", so they show zero copy being switched off.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from typing import Any

from ..._zerocopy import ZeroCopyPool, ZeroCopySender

SINK_ADDR = ("10.77.0.2", 9)  # routed to ifb0 (10.77.0.1/24), which drops at transmit
SEGMENT = 1472                # 1500-byte MTU - IPv4 - UDP headers
SEGMENTS = 44
SEND_BYTES = SEGMENT * SEGMENTS  # 64768: one GSO send
BUFFERS = 64
SENDS_PER_CHECK = 128

#: variant -> (backend, mode)
VARIANTS = {
    "copy": ("copy", "never"),
    "msg-zerocopy": ("msg_zerocopy", "always"),
    "uring-send-zc": ("uring", "always"),
}


def _parse(variant: str) -> tuple[str, str, bool]:
    loopback = variant.endswith("-loopback")
    base = variant[: -len("-loopback")] if loopback else variant
    if base not in VARIANTS:
        known = ", ".join(list(VARIANTS) + [v + "-loopback" for v in VARIANTS])
        raise ValueError(f"unknown variant {variant!r}; known: {known}")
    backend, mode = VARIANTS[base]
    if loopback and mode == "always":
        mode = "adaptive"
    return backend, mode, loopback


def _sockets(loopback: bool) -> tuple[socket.socket, socket.socket | None]:
    """(sender, receiver or None), the sender connected to its destination.
    The loopback receiver has GRO on, so a GSO send is queued to it whole;
    it is never read (what does not fit is dropped after the copy)."""
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if not loopback:
        tx.connect(SINK_ADDR)
        return tx, None
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(17, 104, 1)  # SOL_UDP, UDP_GRO
    rx.bind(("127.0.0.1", 0))
    tx.connect(rx.getsockname())
    return tx, rx


def _send_for(sender: ZeroCopySender, seconds: float) -> int:
    """Send SEND_BYTES from each buffer the pool gives until `seconds`
    pass; then wait until the kernel has given every buffer back. Sends."""
    acquire, send = sender.acquire, sender.send
    clock = time.perf_counter
    end = clock() + seconds
    sends = 0
    while clock() < end:
        for _ in range(SENDS_PER_CHECK):
            send(acquire(), SEND_BYTES)
        sends += SENDS_PER_CHECK
    held = [acquire(10.0) for _ in range(BUFFERS)]  # all back: the kernel is done
    del held
    return sends


def run(variant: str, seconds: float) -> dict[str, Any]:
    """One timed run of `variant`: bytes, datagrams, wall and CPU seconds
    and syscalls of the timed part; the sender's counters over the whole
    run (warm-up included: that is where the adaptive mode decides)."""
    backend, mode, loopback = _parse(variant)
    tx, rx = _sockets(loopback)
    pool = ZeroCopyPool(BUFFERS, 65536)
    try:
        with ZeroCopySender(tx, pool, backend=backend, mode=mode, segment_size=SEGMENT) as sender:
            held = [sender.acquire() for _ in range(BUFFERS)]
            for b in held:
                b.write(bytes(range(256)) * (SEND_BYTES // 256) + bytes(SEND_BYTES % 256))
            del held, b
            _send_for(sender, min(0.05, seconds / 4))  # warm-up (adaptive decides here)
            before = sender.counters
            c0, t0 = time.process_time(), time.perf_counter()
            sends = _send_for(sender, seconds)
            t1, c1 = time.perf_counter(), time.process_time()
            counters = sender.counters  # the whole run, warm-up included
            describe = sender.describe()
            zerocopy_on = sender.zerocopy
    finally:
        tx.close()
        if rx is not None:
            rx.close()
    return {"variant": variant, "sends": sends, "bytes": counters["bytes"] - before["bytes"],
            "datagrams": sends * SEGMENTS, "seconds": t1 - t0, "cpu_s": c1 - c0,
            "syscalls": counters["syscalls"] - before["syscalls"], "counters": counters,
            "describe": describe, "zerocopy_on_at_end": zerocopy_on}


def _pin(cpu: int | None) -> None:
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        return
    os.sched_setaffinity(0, {cpu if cpu is not None else max(allowed)})


def _serve() -> None:
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        try:
            out = run(words[0], float(words[1]))
        except Exception as e:  # noqa: BLE001 - reported to the bench
            out = {"variant": words[0], "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)


def main(argv: list[str]) -> int:
    cpu = None
    if "--cpu" in argv:
        i = argv.index("--cpu")
        cpu = int(argv[i + 1])
        del argv[i:i + 2]
    _pin(cpu)
    # the loopback variants switch zero copy off on purpose; the bench reports it
    logging.getLogger("burstio").setLevel(logging.ERROR)
    if argv == ["--serve"]:
        _serve()
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(run(argv[0], float(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
