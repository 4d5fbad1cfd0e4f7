"""The fuzz target of the port region: ``burstio.ports._fuzz_region_header``.

Where a packet goes: nowhere new. Each call writes hostile bytes into a port
region the way a peer sharing it could, then walks the paths a datagram takes
(attach, claim, sync, read, put, wait with timeout 0, a switch's forward) and
lets them say what they make of it.

The contract it checks: a pipe end raises only ValueError (not a region, or
a closed claim), RuntimeError (a stale claim), OSError(EBADMSG) (impossible
positions or buffer indices), BrokenPipeError or ConnectionResetError; a
switch never raises because of a client and goes on serving its honest port.
Anything else (AssertionError for the switch) is a bug. Nothing here may
crash or block: every wait has timeout 0.

Each call reuses one template region per process (restored from a snapshot)
and builds one small switch, so a call costs tens of microseconds.
"""
from __future__ import annotations

import errno
import os
import struct

from . import _native
from .ports import Switch, _port_from_fds, pipe

#: what the pipe end may raise; OSError only with these errnos
RAISES = (ValueError, RuntimeError, OSError)
ERRNOS = frozenset({errno.EBADMSG, errno.EPIPE, errno.ECONNRESET})

_SLOTS, _SLOT_SIZE = 4, 32
_HEADER = 192  # sizeof(BioPortHeader), csrc/ports/layout.h: magic to both claim records


class _Template:
    """A pipe region in a known state (packets in flight both ways) and a
    snapshot of its header, control blocks and slot arrays."""

    def __init__(self) -> None:
        self.a, self.b = pipe(slots=_SLOTS, slot_size=_SLOT_SIZE, linger=0)
        for i in range(2):
            self.a.tx.put(b"to b %d" % i, dst=i + 1, src=9)
            self.b.tx.put(b"to a %d" % i, dst=9, src=i + 1, addr=("127.0.0.1", 9))
        self.a.tx.sync()
        self.b.tx.sync()
        self.b.rx.sync()
        self.ctl, self.end = _extent(self.a.region.layout())
        self.memory = self.a.memory
        self.pristine = bytes(self.memory[:self.end])
        self.memfd, self.wakes, _pool = self.a.region.fds(1)
        self.batch = _native.PacketBatch(_SLOTS, 1)


_templates: dict[int, _Template] = {}  # by pid: a forked child makes its own


def _extent(lay: _native._PortLayout) -> tuple[int, int]:
    """(start of the control blocks, end of the last slot array): what a
    mode-3 patch may hit; the buffers after it are only payload."""
    return lay["ctl"][0], lay["names"][1] + 28 * lay["slots"]


def _get_template() -> _Template:
    pid = os.getpid()
    if pid not in _templates:
        _templates.clear()  # a parent's, inherited: its handles are the parent's
        _templates[pid] = _Template()
    return _templates[pid]


def _patch(memory: memoryview, lo: int, hi: int, payload: bytes) -> None:
    """Apply payload as (u16 offset, u32 value) records: 4-byte aligned words
    of [lo, hi) set to chosen values (positions, indices, flags, claims)."""
    words = (hi - lo) // 4
    for k in range(0, len(payload) - 5, 6):
        off, value = struct.unpack_from("<HI", payload, k)
        struct.pack_into("<I", memory, lo + 4 * (off % words), value)


def _corrupt(memory: memoryview, mode: int, payload: bytes, ctl: int, end: int) -> None:
    """Write payload into a region's memory as mode says: 0 raw over the
    header, 1 raw over the header after its magic, 2 patches over the
    header, 3 patches over the control blocks and slot arrays."""
    if mode == 0:
        n = min(len(payload), _HEADER)
        memory[:n] = payload[:n]
    elif mode == 1:
        n = min(len(payload), _HEADER - 8)
        memory[8:8 + n] = payload[:n]
    elif mode == 2:
        _patch(memory, 0, _HEADER, payload)
    else:
        _patch(memory, ctl, end, payload)


def _switch_survives(mode: int, payload: bytes) -> None:
    """A switch with a hostile client (its region corrupted as the pipe's
    was) and an honest one: forwarding must not raise, and the honest port
    must stay live."""
    sw = Switch(slots=_SLOTS, slot_size=_SLOT_SIZE, linger=0)
    try:
        hostile, honest = sw.add_port(key=1), sw.add_port(key=2)
        hostile.tx.put(b"from hostile", dst=2, src=1)
        hostile.tx.sync()
        honest.tx.put(b"from honest", dst=1, src=2)
        honest.tx.sync()
        sw._native.forward(0)
        _corrupt(hostile.memory, mode, payload, *_extent(hostile.region.layout()))
        try:
            for _ in range(2):
                sw._native.forward(0)
                sw._native.take_isolations()  # not logged: a fuzzer isolates by the million
        except BaseException as e:
            raise AssertionError(f"the switch raised {e!r} because of a client's region") from e
        state = sw.port_state(honest)
        if state != "live":
            raise AssertionError(f"the switch stopped serving its honest port ({state}): "
                                 f"{sw.isolation_reason(honest)}")
    finally:
        sw._native.stop()
        for side in sw._sides:
            side.close()


def _pipe_end(t: _Template) -> None:
    """Attach to the corrupted template as its port 1 and use it."""
    port = _port_from_fds([os.dup(t.memfd), *map(os.dup, t.wakes)], 1, 0.0)
    try:
        rx, tx = port.rx, port.tx
        if rx.sync():
            bytes(rx[0])
            rx.dst(0), rx.src(0), rx.flags(0), rx.addr(0)
            rx.peek(t.batch)
            t.batch.clear()
            rx.advance(1)
        if tx.sync():
            tx.put(b"reply", dst=1)
        tx.sync()
        rx.wait(1, timeout=0)
        tx.wait(1, timeout=0)
    finally:
        port.close()


def fuzz_region_header(data: bytes) -> None:
    """See burstio.ports._fuzz_region_header."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if not data:
        return
    mode, payload = data[0] & 3, bytes(data[1:])
    _switch_survives(mode, payload)
    t = _get_template()
    t.memory[:t.end] = t.pristine
    _corrupt(t.memory, mode, payload, t.ctl, t.end)
    try:
        _pipe_end(t)
    except OSError as e:
        if e.errno not in ERRNOS:
            raise AssertionError(f"a pipe end raised {e!r}: not a documented error") from e
        raise
