"""SocketSet and per-datagram metadata, on every backend of
support.variants.SOCKETSET: receives fill local_addrs/ifindexes/ecn only for
sockets that asked (pktinfo or ECN on), sends honour the source address and
the codepoint, and a paced set releases each entry at its transmit time.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time

import numpy as np
import pytest

import burstio
from burstio import FLAG_GRO, PacketBatch, SocketSet, Unsent
from support.kernel import gso_sendmsg, require_kernel
from support.variants import SOCKETSET, variant_fixture

socketset_variant = variant_fixture(SOCKETSET)
HOUR = 3600 * 10**9


@pytest.fixture
def stack():
    with contextlib.ExitStack() as s:
        yield s


def make_set(stack, variant, **kw) -> SocketSet:
    return stack.enter_context(SocketSet(**{**variant.kwargs, **kw}))


def bound(stack, host: str = "127.0.0.1", **kw) -> burstio.BurstSocket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return stack.enter_context(burstio.BurstSocket.bind((host, 0), family=family, **kw))


def take(sset: SocketSet, expect: int) -> list[tuple]:
    """(payload, socket index, local address, ecn, ifindex > 0) of ``expect`` datagrams."""
    batch = PacketBatch(32, 256)
    got: list[tuple] = []
    while len(got) < expect and sset.recv_batch(batch, 2.0):
        got += [(bytes(batch[i]), batch.sockets[i], batch.local_addr(i), batch.ecn[i], batch.ifindexes[i] > 0)
                for i in range(len(batch))]
    return sorted(got)


def test_only_sockets_that_asked_get_metadata(stack, socketset_variant):
    sset = make_set(stack, socketset_variant)
    asking = bound(stack, "0.0.0.0", pktinfo=True, ecn=True)
    plain = bound(stack)
    i, j = sset.add(asking), sset.add(plain)
    tx = bound(stack)
    out = PacketBatch(4, 64)
    out.append(b"asked", ("127.0.0.3", asking.getsockname()[1]), ecn=3)
    out.append(b"plain", plain.getsockname(), ecn=3)
    assert tx.send_batch(out) == 2
    ecn = 3 if burstio.capabilities().ecn else 0
    assert take(sset, 2) == [(b"asked", i, "127.0.0.3", ecn, True), (b"plain", j, None, 0, False)]


def test_a_set_without_metadata_sockets_makes_no_metadata(stack, socketset_variant):
    sset = make_set(stack, socketset_variant)
    rx = bound(stack)
    sset.add(rx)
    tx = bound(stack)
    out = PacketBatch(2, 64)
    out.append(b"x", rx.getsockname())
    tx.send_batch(out)
    batch = PacketBatch(4, 64)
    assert sset.recv_batch(batch, 2.0) == 1 and not batch.has_metadata


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_replies_from_the_address_each_request_came_to(stack, socketset_variant, host):
    if host == "::":
        require_kernel("ipv6")
    sset = make_set(stack, socketset_variant)
    server = bound(stack, host, pktinfo=True)
    sset.add(server)
    client = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client.bind(("127.0.0.1", 0))
    client.settimeout(2.0)
    port = server.getsockname()[1]
    for h in ("127.0.0.2", "127.0.0.3"):
        client.sendto(h.encode(), (h, port))
    batch = PacketBatch(8, 256)
    n = 0
    while n < 2:
        got = sset.recv_batch(batch, 2.0)
        assert got
        assert sset.send_batch(batch) == got  # the batch echoed: each from where it arrived
        n += got
    assert sorted(client.recvfrom(64) for _ in range(2)) == \
        [(h.encode(), (h, port)) for h in ("127.0.0.2", "127.0.0.3")]


def test_gro_after_add_splits_with_each_datagrams_metadata(stack, socketset_variant):
    """A socket that asked for metadata and had UDP_GRO turned on after
    add(): the coalesced receive is split into one entry per datagram, and
    every entry carries the local address and interface it arrived at (its
    message's cmsgs, read once for the split and the metadata both)."""
    caps = burstio.capabilities()
    if not (caps.udp_gro and caps.udp_segment):
        pytest.skip("UDP GRO and GSO are needed to make a coalesced receive")
    sset = make_set(stack, socketset_variant)
    asking = bound(stack, "0.0.0.0", pktinfo=True)
    i = sset.add(asking)
    asking.sock.setsockopt(burstio._native.SOL_UDP, burstio._native.UDP_GRO, 1)
    tx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    batch = PacketBatch(32, 2048)
    sset.recv_batch(batch, 0)  # armed
    gso_sendmsg(tx, b"".join(b"%020d" % k for k in range(8)), 20, ("127.0.0.3", asking.getsockname()[1]))
    got: list[tuple] = []
    while len(got) < 8 and (n := sset.recv_batch(batch, 2.0)):
        got += [(bytes(batch[k]), int(batch.flags[k]), batch.sockets[k], batch.local_addr(k),
                 batch.ifindexes[k] > 0) for k in range(n)]
    assert got == [(b"%020d" % k, FLAG_GRO, i, "127.0.0.3", True) for k in range(8)]


def test_ipv6_local_address_on_an_ipv4_socket_refused(stack, socketset_variant):
    sset = make_set(stack, socketset_variant)
    sock = bound(stack)
    sock.connect(("127.0.0.1", 9))
    i = sset.add(sock)
    out = PacketBatch(2, 64)
    out.append(b"x", None, local="::1")  # to the connected peer: only the socket's family can tell
    out.sockets[0] = i
    with pytest.raises(ValueError, match=f"datagram 0: its local address is IPv6 but socket {i} is IPv4"):
        sset.send_batch(out)


def test_transmit_time_refused_unless_paced(stack, socketset_variant):
    sset = make_set(stack, socketset_variant)
    i = sset.add(bound(stack))
    out = PacketBatch(2, 64)
    out.append(b"x", ("127.0.0.1", 9), txtime=5)
    out.sockets[0] = i
    with pytest.raises(ValueError, match=r"datagram 0: it has a transmit time .* \(paced=True does\)"):
        sset.send_batch(out)


def test_paced_set_keeps_each_sockets_order_and_reports_unsent(stack, socketset_variant):
    sset = make_set(stack, socketset_variant, paced=True)
    senders = [bound(stack), bound(stack)]
    idx = [sset.add(s) for s in senders]
    rx = bound(stack, rcvbuf=1 << 20)
    now = time.monotonic_ns()
    out = PacketBatch(16, 64)
    for k in range(10):
        out.append(b"%d" % k, rx.getsockname(), txtime=now + k * 200_000)
        out.sockets[k] = idx[k % 2]
    out.append(b"later", rx.getsockname(), txtime=now + HOUR)
    out.sockets[10] = idx[0]
    assert sset.send_batch(out) == 11
    batch = PacketBatch(16, 64)
    got: list[tuple] = []
    while len(got) < 10 and rx.recv_batch(batch, 5.0):
        got += [(bytes(batch[i]), batch.addr(i)) for i in range(len(batch))]
    for s, sender in enumerate(senders):  # each socket's datagrams in its queue order
        mine = [p for p, a in got if a == sender.getsockname()]
        assert mine == [b"%d" % k for k in range(s, 10, 2)]
    assert not sset.flush(0.01)
    assert sset.close() == [Unsent(10, rx.getsockname(), 5)]
    assert sset.counters["paced_queued"] == 11 and sset.counters["paced_unsent"] == 1


def test_paced_set_releases_what_is_due_within_the_slack_together(stack, socketset_variant):
    """The set's pacer honours pacer_slack as BurstSocket's does (1 ms by
    default): datagrams due within it of the first go in its one wake-up."""
    assert make_set(stack, socketset_variant, paced=True)._pacer.slack_ns == 1_000_000
    sset = make_set(stack, socketset_variant, paced=True, pacer_slack=0.05)
    senders = [bound(stack), bound(stack)]
    idx = [sset.add(s) for s in senders]
    rx = bound(stack, rcvbuf=1 << 20)
    t0 = time.monotonic_ns() + 20_000_000
    out = PacketBatch(8, 64)
    for k in range(8):
        out.append(b"%d" % k, rx.getsockname(), txtime=t0 + k * 1_000_000)
        out.sockets[k] = idx[k % 2]
    assert sset.send_batch(out) == 8
    assert sset.flush(10.0)
    batch = PacketBatch(16, 64)
    got: list[bytes] = []
    while len(got) < 8 and rx.recv_batch(batch, 5.0):
        got += [bytes(batch[i]) for i in range(len(batch))]
    assert sorted(got) == [b"%d" % k for k in range(8)]
    c = sset.counters
    assert c["paced_releases"] == 1 and c["tx_datagrams"] == 8



def _arrivals(rx: burstio.BurstSocket, expect: int) -> list[tuple[bytes, int]]:
    batch = PacketBatch(16, 256)
    got: list[tuple[bytes, int]] = []
    while len(got) < expect and rx.recv_batch(batch, 2.0):
        got += [(bytes(batch[i]), int(batch.ecn[i])) for i in range(len(batch))]
    return got


@pytest.mark.parametrize("sizes", [[30, 30, 30], [30]], ids=["gso-run", "single"])
def test_refused_codepoint_downgrades_and_delivers_everything(stack, socketset_variant, caplog, sizes):
    """The kernel refuses the TOS cmsg (EINVAL): as a BurstSocket does, the
    set sends the datagrams again without it, codepoints stay off for the
    set, counted, logged once; nothing is flagged or lost. (ecn_cmsg=2 makes
    every kernel refuse it: a TOS byte out of range.)"""
    require_kernel("ecn")
    sset = make_set(stack, socketset_variant)
    rx = bound(stack, ecn=True)
    index = sset.add(bound(stack))
    sset._io.ecn_cmsg = 2
    out = PacketBatch(8, 64)
    for k, n in enumerate(sizes):
        out.append(bytes([65 + k]) * n, rx.getsockname(), ecn=2)
    out.append(b"after", rx.getsockname(), ecn=1)
    np.asarray(out.sockets)[:len(out)] = index
    with caplog.at_level(logging.WARNING, logger="burstio"):
        assert sset.send_batch(out) == len(out)
        assert out.send_errors() == []
        assert sset.send_batch(out) == len(out)  # no codepoints from now on
    got = _arrivals(rx, 2 * len(out))
    assert sorted(got) == sorted([(bytes(out[i]), 0) for i in range(len(out))] * 2)
    c = sset.counters
    assert (c["ecn_downgrades"], c["tx_errors"], c["tx_ecn_unmarked"], c["tx_datagrams"]) == \
        (1, 0, 2 * len(out), 2 * len(out))
    assert sum("refused the ECN codepoint" in r.message for r in caplog.records) == 1


def test_refused_codepoint_downgrades_a_redundant_send(stack, socketset_variant):
    require_kernel("ecn")
    sset = make_set(stack, socketset_variant)
    peers = [bound(stack, ecn=True) for _ in range(2)]
    group = []
    for p in peers:
        path = bound(stack)
        path.connect(p.getsockname())
        group.append(sset.add(path))
    sset._io.ecn_cmsg = 2
    out = PacketBatch(4, 64)
    for k in range(3):
        out.append(b"r%d" % k, ecn=2)
    assert sset.send_redundant(out, group) == (6, [])
    for p in peers:
        assert sorted(_arrivals(p, 3)) == [(b"r0", 0), (b"r1", 0), (b"r2", 0)]
    assert (sset.counters["ecn_downgrades"], sset.counters["tx_errors"]) == (1, 0)


def test_a_datagram_refused_anyway_stays_flagged_and_ecn_stays_on(stack, socketset_variant):
    """EINVAL on a datagram with a codepoint that the kernel refuses without
    it too (port 0): not the cmsg's fault; flagged, ECN stays on."""
    require_kernel("ecn")
    sset = make_set(stack, socketset_variant)
    rx = bound(stack, ecn=True)
    index = sset.add(bound(stack))
    out = PacketBatch(4, 64)
    out.append(b"bad", ("127.0.0.1", 0), ecn=2)
    out.append(b"good", rx.getsockname(), ecn=2)
    np.asarray(out.sockets)[:2] = index
    assert sset.send_batch(out) == 1
    assert out.send_errors() == [(0, errno.EINVAL)]
    assert _arrivals(rx, 1) == [(b"good", 2)]
    c = sset.counters
    assert (c["ecn_downgrades"], c["tx_errors"], sset._io.ecn_cmsg) == (0, 1, 1)
