"""Differential tests: every backend against the portable oracle and the bytes sent.

GRO splitting: a buffer sent with send_segments to a gro=True receiver must
come back as exactly the datagrams sent, with the same entries (bytes,
order, source, flags, segment sizes) as the portable backend returns.
GSO coalescing: random batches sent with send_batch by each backend must
arrive identically (received with the portable backend).
"""
from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import burstio
from burstio import FLAG_GRO, PacketBatch
from conftest import ORACLE, VARIANTS, Sockets, kernel_caps, pattern, recv_all, variant_env

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAMILY = st.sampled_from([socket.AF_INET, socket.AF_INET6])


def runnable_variants():
    out = []
    for v in VARIANTS.values():
        try:
            with variant_env(v):
                out.append(v)
        except pytest.skip.Exception:
            pass
    return out


def gro_round(variant, family: int, data: bytes, seg: int) -> tuple[list[tuple], int, bool]:
    """send_segments(data, seg) from a ``variant`` sender to a ``variant``
    receiver with gro=True. Returns (entries as (bytes, source is sender,
    flags, segment_size), send_segments' return, whether the datagrams could
    arrive coalesced: GSO on the sender and GRO on the receiver)."""
    want = -(-len(data) // seg)
    with variant_env(variant), Sockets(variant.backend) as socks:
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
    caps = kernel_caps()
    if not caps.udp_segment:
        pytest.skip(f"kernel lacks udp_segment: {caps['udp_segment'].detail}")
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

    for v in runnable_variants():
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
    for v in runnable_variants():
        with variant_env(v), Sockets(v.backend) as socks:
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
