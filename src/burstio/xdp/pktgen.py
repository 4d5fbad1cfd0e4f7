"""A packet generator (netmap's pkt-gen role): UDP frames of a given size
and flow count, at a given or the highest rate, out of one device.

Two engines, picked by the capability probe:

- "bpf" (Linux >= 5.18, ``bpf_prog_run_live_frames``): the kernel runs
  src/burstio/xdp/bpf/pktgen.bpf.c on a template frame ``repeat`` times per
  call (BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, in batches of 64 or,
  for the most frames, 256); each run sets the next flow's source port (the UDP
  checksum updated) and transmits the frame (XDP_TX): no socket, no copy to
  user space; what xdp-trafficgen does. Every call of more than one frame
  costs a fixed wait besides the frames: the kernel adds the program to the
  XDP dispatcher and removes it again, each an RCU grace period (about
  24 ms here, net/bpf/test_run.c). So calls are long: an unpaced run sizes
  each call from the last one's rate to last about _CALL_SECONDS (calls of
  64K frames left the device idle three quarters of the time and sent the
  rest in bursts faster than a receiver takes them), and a paced run grows
  its chunk until the calls keep up with the rate (its frames then leave
  in bursts, each at the full rate).
- "xsk": an AF_XDP socket's tx ring fed with batches of pre-built frames
  (copied into the UMEM, sent by one sendto per batch).

Where a frame goes: built once here (headers and checksums in C), then the
engine puts it on the device's transmit path ``frames`` times; the result
says how many were handed to the device, how many the device counted as
sent and dropped, and over how long; the bpf engine also what a frame cost
the generator's CPU (``ns_per_frame``: the kernel's own timing of its frame
loops, BPF_PROG_RUN's ``duration``, neither the calls' fixed waits nor the
time the thread was preempted).
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .. import _native
from .._caps import capabilities
from .._checks import check_choice, check_int, check_seconds
from .._kernel import BPF_F_TEST_XDP_LIVE_FRAMES
from . import _bpf
from ._xsk import XskSocket, ifindex_of
from .udp import _header, address_of, mac_of, neighbour_mac

__all__ = ["run", "PktgenResult", "METHODS", "MIN_SIZE", "BATCH_DEFAULT", "BATCH_MAX", "device_counters",
           "template"]

METHODS = ("auto", "bpf", "xsk")
#: smallest frame (bytes, without the FCS) per IP version: Ethernet + IP + UDP headers
MIN_SIZE = {4: 42, 6: 62}
_MAX_SIZE = 2048 - 256
_FIRST_CALL = 1 << 12  # frames in the first BPF_PROG_RUN: a slow device sends it in tens of ms
_CALL_SECONDS = 1.0  # what each later unpaced call aims to last: the fixed wait per call is a few % of it
_MAX_CALL = 1 << 30  # frames per call at most (the kernel's repeat is 32 bits)
#: frames per batch of a BPF_PROG_RUN call (``batch``), at most the kernel's most (TEST_XDP_MAX_BATCH,
#: net/bpf/test_run.c). The device is flushed and its receiver woken once per batch, and the call's page
#: pool holds a batch's worth of pages: 256 recycles the frames in flight (a veth's ring holds 256) and
#: sends 1.5-2x the frames of 64 on the project's VMs; 64 (the kernel's default) wakes the receiver
#: before a batch can fill that ring, so that a short burst into an idle receiver arrives whole.
BATCH_DEFAULT, BATCH_MAX = 64, 256
_BATCH = 256  # frames per send of the xsk engine


@dataclass
class PktgenResult:
    """What a run did. ``frames`` is what the engine handed the device;
    ``device_sent``/``device_dropped`` are the device's own transmit counters
    over the run (None when unreadable); ``ns_per_frame`` (bpf engine, else
    None) is the kernel's time in its frame loops per frame handed over."""

    method: str
    dev: str
    size: int
    flows: int
    rate: float | None
    frames: int
    seconds: float
    device_sent: int | None
    device_dropped: int | None
    ns_per_frame: float | None = None

    @property
    def offered_pps(self) -> float:
        """Frames per second handed to the device over the run."""
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def sent_pps(self) -> float | None:
        """Frames per second the device counted as sent (None when unreadable)."""
        return None if self.device_sent is None or not self.seconds else self.device_sent / self.seconds

    def as_dict(self) -> dict[str, Any]:
        """The fields, with the rates in millions of frames per second
        (``offered_mpps``, ``sent_mpps``): what ``--json`` prints."""
        d = asdict(self)
        d["offered_mpps"] = round(self.offered_pps / 1e6, 4)
        d["sent_mpps"] = None if self.sent_pps is None else round(self.sent_pps / 1e6, 4)
        return d


def device_counters(dev: str | int) -> tuple[int, int] | None:
    """(tx packets, tx dropped) of ``dev`` from netlink (IFLA_STATS64), or
    None without pyroute2."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return None
    with IPRoute() as ipr:
        link = ipr.get_links(ifindex_of(dev))[0]
    stats = link.get_attr("IFLA_STATS64") or {}
    return int(stats.get("tx_packets", 0)), int(stats.get("tx_dropped", 0))


def template(dev: str | int, dst: str, *, dport: int = 9, src: str | None = None, sport: int = 1024,
             dst_mac: bytes | None = None, src_mac: bytes | None = None, size: int = 64, vlan: int = 0) -> bytes:
    """The frame the generator sends (flow 0), ``size`` bytes."""
    family = ipaddress.ip_address(dst).version
    check_int("size", size, MIN_SIZE[family] + (4 if vlan else 0), _MAX_SIZE)
    src = src or address_of(dev, family)
    dst_mac = dst_mac if dst_mac is not None else neighbour_mac(dst, dev)
    src_mac = src_mac if src_mac is not None else mac_of(dev)
    hdr = _header(dst_mac, src_mac, (src, sport), (dst, dport), vlan, 64)
    return bytes(_native.udp_frame(hdr, bytes(size - MIN_SIZE[family] - (4 if vlan else 0))))


def _pick(method: str) -> str:
    caps = capabilities()
    if method == "auto":
        return "bpf" if caps.bpf_prog_run_live_frames else "xsk"
    if method == "bpf" and not caps.bpf_prog_run_live_frames:
        raise OSError(errno.EOPNOTSUPP, "the bpf engine needs BPF_PROG_RUN with live frames: "
                                        f"{caps['bpf_prog_run_live_frames'].detail}")
    return method


class _Pacer:
    """Sleeps so that frame n leaves no earlier than n / rate seconds in."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], object] = time.sleep):
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.t0 = clock()

    def wait(self, done: int) -> None:
        if self.rate is not None:
            ahead = self.t0 + done / self.rate - self.clock()
            if ahead > 0:
                self.sleep(ahead)


def _next_call(n: int, took: float, left: float, rate: float | None) -> int:
    """Frames for the next BPF_PROG_RUN, after one of ``n`` frames took
    ``took`` seconds with ``left`` seconds of the run to go. Unpaced: what
    the last call's rate (its fixed wait included, so a low estimate) sends
    in _CALL_SECONDS or the time left, at most 16 times the last call.
    Paced: the last chunk while a call of it takes no longer than the rate
    allows it (chunk / rate), else the chunk the rate sends in twice the
    time the last call took, so that the calls keep up."""
    took = max(took, 1e-6)
    if rate is None:
        want = n / took * min(_CALL_SECONDS, max(left, 0.0))
        return max(1, min(int(want), n * 16, _MAX_CALL))
    if took <= n / rate:
        return n
    return max(n, min(int(rate * took * 2), int(rate * _CALL_SECONDS) + 1, _MAX_CALL))


def _bpf_calls(call: Callable[[int], object], budget: tuple[float, int | None], rate: float | None,
               clock: Callable[[], float] = time.perf_counter,
               sleep: Callable[[float], object] = time.sleep) -> tuple[int, float]:
    """Drive ``call(n)`` (one BPF_PROG_RUN of n frames) for the run's
    budget (seconds, count) at ``rate``; (frames sent, seconds)."""
    seconds, count = budget
    pace = _Pacer(rate, clock, sleep)
    done, n = 0, _FIRST_CALL if rate is None else max(1, min(_FIRST_CALL, int(rate / 1000)))
    while (count is None or done < count) and clock() - pace.t0 < seconds:
        if count is not None:
            n = min(n, count - done)
        t = clock()
        call(n)
        took = clock() - t
        done += n
        pace.wait(done)
        n = _next_call(n, took, seconds - (clock() - pace.t0), rate)
    return done, clock() - pace.t0


def _bpf_engine(frame: bytes, ifindex: int, flows: int, sport: int, l4: int, budget: tuple[float, int | None],
                rate: float | None, batch: int) -> tuple[int, float, float | None]:
    """(frames, seconds, the kernel's ns per frame in its frame loops)."""
    prog = _bpf.load(_bpf.shipped("pktgen"), "pktgen")
    loop_ns = 0

    def call(n: int) -> None:
        nonlocal loop_ns
        _ret, per_frame, _out = _native.bpf_prog_run(prog.fd, frame, n, BPF_F_TEST_XDP_LIVE_FRAMES, batch,
                                                     ifindex, 0, 0)
        loop_ns += per_frame * n  # duration: the call's loop time over its repeat count

    try:
        prog.maps["gen_config"].update(0, struct.pack("<IHH", flows, sport, l4))
        frames, took = _bpf_calls(call, budget, rate)
        return frames, took, (loop_ns / frames if frames else None)
    finally:
        prog.close()


def _xsk_batches(frame: bytes, flows: int, sport: int, l4: int, csum_at: int | None) -> list[_native.PacketBatch]:
    """Pre-built frames, flow after flow, in batches of _BATCH."""
    batches = []
    for start in range(0, flows, _BATCH):
        b = _native.PacketBatch(_BATCH, len(frame))
        for j in range(_BATCH):
            f = bytearray(frame)
            port = sport + (start + j) % flows
            old = struct.unpack_from("!H", f, l4)[0]
            struct.pack_into("!H", f, l4, port)
            if csum_at is not None:  # RFC 1624 incremental update of the UDP checksum
                c = struct.unpack_from("!H", f, csum_at)[0]
                if c:
                    s = (~c & 0xFFFF) + (~old & 0xFFFF) + port
                    s = (s & 0xFFFF) + (s >> 16)
                    s = (s & 0xFFFF) + (s >> 16)
                    struct.pack_into("!H", f, csum_at, (~s & 0xFFFF) or 0xFFFF)
            b.append(bytes(f))
        batches.append(b)
    return batches


def _xsk_engine(dev: str | int, frame: bytes, flows: int, sport: int, l4: int, budget: tuple[float, int | None],
                rate: float | None) -> tuple[int, float]:
    batches = _xsk_batches(frame, flows, sport, l4, l4 + 6)
    seconds, count = budget
    with XskSocket(dev, 0, rx_size=0, fill_size=64, tx_size=2048, comp_size=2048) as xsk:
        pace = _Pacer(rate)
        done, k = 0, 0
        while (count is None or done < count) and time.perf_counter() - pace.t0 < seconds:
            n = _BATCH if count is None else min(_BATCH, count - done)
            done += xsk.send_batch(batches[k % len(batches)], 0, n, timeout=1.0)
            k += 1
            pace.wait(done)
        return done, time.perf_counter() - pace.t0


def run(dev: str | int, dst: str, *, dport: int = 9, src: str | None = None, sport: int = 1024,
        dst_mac: bytes | None = None, src_mac: bytes | None = None, size: int = 64, flows: int = 1,
        rate: float | None = None, seconds: float = 1.0, count: int | None = None, vlan: int = 0,
        method: str = "auto", batch: int = BATCH_DEFAULT) -> PktgenResult:
    """Send UDP frames of ``size`` bytes (Ethernet header to the end of the
    payload, no FCS) from ``src``:``sport``..``sport+flows-1`` to
    ``dst``:``dport`` out of ``dev`` (this thread's namespace), at ``rate``
    frames/s (None: as fast as it goes), for ``seconds`` or ``count`` frames,
    whichever ends first. The destination MAC comes from the neighbour table
    unless given; IPv6 when ``dst`` is an IPv6 address. ``batch`` (bpf
    engine, 1 to 256): frames per batch of the kernel's run; 256 sends the
    most frames per second, the default 64 lets a short burst into an idle
    receiver arrive whole (see BATCH_DEFAULT)."""
    check_choice("method", method, METHODS)
    check_int("batch", batch, 1, BATCH_MAX)
    check_int("flows", flows, 1, 65535)
    check_int("sport", sport, 1, 65535 - flows + 1)
    check_seconds("seconds", seconds, 0.001, 86400.0)
    if count is not None:
        check_int("count", count, 1, 2**62)
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 1 <= rate <= 1e9):
        raise ValueError(f"rate must be frames per second between 1 and 1e9, or None, got {rate!r}")
    engine = _pick(method)
    frame = template(dev, dst, dport=dport, src=src, sport=sport, dst_mac=dst_mac, src_mac=src_mac, size=size,
                     vlan=vlan)
    family = ipaddress.ip_address(dst).version
    l4 = MIN_SIZE[family] + (4 if vlan else 0) - 8
    name = dev if isinstance(dev, str) else socket.if_indextoname(ifindex_of(dev))
    before = device_counters(dev)
    ns_per_frame = None
    if engine == "bpf":
        frames, took, ns_per_frame = _bpf_engine(frame, ifindex_of(dev), flows, sport, l4, (seconds, count), rate,
                                                 batch)
    else:
        frames, took = _xsk_engine(dev, frame, flows, sport, l4, (seconds, count), rate)
    after = device_counters(dev)
    sent = dropped = None
    if before is not None and after is not None:
        sent, dropped = after[0] - before[0], after[1] - before[1]
    return PktgenResult(engine, name, size, flows, rate, frames, took, sent, dropped,
                        None if ns_per_frame is None else round(ns_per_frame, 1))
