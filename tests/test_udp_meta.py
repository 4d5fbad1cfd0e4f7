"""Per-datagram metadata: the local address (pktinfo), the ECN codepoint and
don't-fragment, on every BurstSocket variant (support.variants.UDP, the
portable backend the oracle), and PacketBatch's metadata arrays.

Everything here runs on loopback: 127.0.0.0/8 is all local, so a server
bound to 0.0.0.0 is multi-homed there. Replies across a veth with two
addresses, ECN over veth and a small MTU are tests/test_udp_lab.py.
"""
from __future__ import annotations

import errno
import logging
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import burstio
from burstio import PacketBatch, SendError, _native
from burstio._kernel import (
    IP_MTU_DISCOVER,
    IP_PKTINFO,
    IP_PMTUDISC_DO,
    IP_RECVTOS,
    IP_TOS,
    IPV6_MTU_DISCOVER,
    IPV6_PMTUDISC_DO,
    SO_RXQ_OVFL,
)
from support.kernel import require_kernel
from support.net import Sockets
from support.variants import UDP, set_disable, use_variant, variant_env

ECT1, ECT0, CE = 1, 2, 3
LOCALS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


@pytest.fixture
def sockets(udp_variant):
    with Sockets(**udp_variant.kwargs) as s:
        yield s


def recv_meta(sock: burstio.BurstSocket, expect: int, batch: PacketBatch | None = None) -> list[tuple]:
    """Receive ``expect`` datagrams (or until a call times out): [(payload,
    peer, local address, ecn, ifindex)] of each."""
    batch = batch or PacketBatch(16, 256)
    got: list[tuple] = []
    while len(got) < expect and sock.recv_batch(batch, 2.0):
        got += [(bytes(batch[i]), batch.addr(i), batch.local_addr(i), batch.ecn[i], batch.ifindexes[i])
                for i in range(len(batch))]
    return got


# ---- PacketBatch's metadata arrays ---------------------------------------------------------


def test_metadata_is_made_on_first_use_only():
    b = PacketBatch(4, 64)
    b.append(b"x", ("127.0.0.1", 9))
    b.append(b"y", ("127.0.0.1", 9), ecn=0, txtime=0, local=None)  # the defaults ask for nothing
    assert not b.has_metadata
    assert b.local_addr(0) is None
    b.append(b"z", ("127.0.0.1", 9), ecn=ECT0)
    assert b.has_metadata
    assert list(b.ecn[:3]) == [0, 0, ECT0]
    assert b.local_addrs.shape == (4, 16) and b.ifindexes.format == "I" and b.txtimes.format == "q"


def test_metadata_arrays_are_writable_views():
    b = PacketBatch(4, 64)
    b.append(b"a")
    b.append(b"b", local="::1")
    b.ecn[0] = CE
    b.txtimes[1] = 123
    b.set_local_addr(0, "10.1.2.3", 7)
    assert b.local_addr(0) == "10.1.2.3" and b.ifindexes[0] == 7
    assert bytes(b.local_addrs)[:16] == bytes(10) + b"\xff\xff" + socket.inet_aton("10.1.2.3")
    assert b.local_addr(1) == "::1" and b.txtimes[1] == 123 and b.ecn[0] == CE
    b.set_local_addr(1, None)
    assert b.local_addr(1) is None


def test_keep_and_clear_carry_metadata():
    b = PacketBatch(4, 64)
    for i in range(3):
        b.append(bytes([i]), local=LOCALS[i], ecn=i, txtime=i * 10)
    assert b.keep(bytearray([1, 0, 1])) == 2
    assert [b.local_addr(i) for i in range(2)] == [LOCALS[0], LOCALS[2]]
    assert list(b.ecn[:2]) == [0, 2] and list(b.txtimes[:2]) == [0, 20]
    b.clear()
    b.append(b"new")  # an appended entry starts with no metadata
    assert (b.local_addr(0), b.ecn[0], b.txtimes[0], b.ifindexes[0]) == (None, 0, 0, 0)


@pytest.mark.parametrize("kwargs,error,msg", [
    ({"ecn": 4}, ValueError, "ecn must be between 0 and 3, got 4"),
    ({"ecn": "2"}, TypeError, "ecn must be int, got str"),
    ({"txtime": -1}, ValueError, "txtime must be between 0 and"),
    ({"local": "example.org"}, ValueError, "local must be a numeric IPv4 or IPv6 address, got 'example.org'"),
    ({"local": 1}, TypeError, "local must be str or None, got int"),
])
def test_append_metadata_checked(kwargs, error, msg):
    b = PacketBatch(2, 64)
    with pytest.raises(error, match=msg):
        b.append(b"x", **kwargs)
    assert len(b) == 0  # nothing half-appended
    with pytest.raises(IndexError):
        b.local_addr(0)


def test_send_messages_carry_every_cmsg():
    """The control bytes of outgoing messages, as the kernel gets them:
    UDP_SEGMENT, the source address, the codepoint as IP_TOS and IPV6_TCLASS
    (each stack reads its own), SCM_TXTIME plus the clock's offset."""
    dest = ("127.0.0.1", 9)
    b = PacketBatch(8, 64)
    for _ in range(3):  # one GSO run: same destination, size, source, codepoint, time
        b.append(b"x" * 10, dest, local="127.0.0.2", ecn=ECT0, txtime=5000)
    b.append(b"x" * 10, dest, local="127.0.0.2", ecn=CE, txtime=5000)  # another codepoint: another message
    b.append(b"y", dest)  # no metadata: no cmsgs
    msgs = _native.send_messages_for_test(b, socket.AF_INET, 1, 1, 0x20, 1, 700)
    assert [(first, n) for first, n, _c in msgs] == [(0, 3), (3, 1), (4, 1)]
    assert msgs[2][2] == b""

    def cmsg(level, kind, data):
        return struct.pack("QiI", socket.CMSG_LEN(len(data)), level, kind) + data.ljust(
            socket.CMSG_SPACE(len(data)) - 16, b"\0")

    pktinfo = struct.pack("i", 0) + socket.inet_aton("127.0.0.2") + bytes(4)
    tos = struct.pack("i", 0x20 | ECT0)
    assert msgs[0][2] == (cmsg(17, 103, struct.pack("H", 10)) + cmsg(0, 8, pktinfo) + cmsg(0, 1, tos)
                          + cmsg(41, 67, tos) + cmsg(socket.SOL_SOCKET, 61, struct.pack("Q", 5700)))
    # without transmit-time cmsgs a transmit time is refused, with the entry named
    with pytest.raises(ValueError, match=r"datagram 0: it has a transmit time \(batch.txtimes\) but this socket "
                                         r"does not pace"):
        _native.send_messages_for_test(b, socket.AF_INET, 1, 1, 0, 0)


# ---- the options, on every variant ---------------------------------------------------------


def test_pktinfo_reply_leaves_from_the_address_each_request_came_to(sockets):
    server = sockets.track(burstio.BurstSocket.bind(("0.0.0.0", 0), pktinfo=True, **sockets_kwargs(sockets)))
    port = server.getsockname()[1]
    client = sockets.plain()
    for host in LOCALS:
        client.sendto(host.encode(), (host, port))
    batch = PacketBatch(8, 256)
    assert server.recv_batch(batch, 2.0) == 3  # loopback queued them as they were sent
    assert [(bytes(batch[i]).decode(), batch.ifindexes[i] > 0) for i in range(len(batch))] == \
        [(batch.local_addr(i), True) for i in range(len(batch))]
    assert server.send_batch(batch) == 3  # the received batch, echoed: each from where it arrived
    client.settimeout(2)
    replies = {client.recvfrom(64) for _ in LOCALS}
    assert replies == {(h.encode(), (h, port)) for h in LOCALS}


def sockets_kwargs(sockets: Sockets) -> dict:
    return {"backend": sockets.backend}


def test_pktinfo_on_a_dual_stack_socket_names_ipv4_dotted(sockets):
    require_kernel("ipv6")
    server = sockets.track(burstio.BurstSocket.bind(("::", 0), pktinfo=True, **sockets_kwargs(sockets)))
    port = server.getsockname()[1]
    client = sockets.plain()
    client.sendto(b"v4", ("127.0.0.2", port))
    v6 = sockets.plain(socket.AF_INET6)
    v6.sendto(b"v6", ("::1", port))
    assert receive_with_meta(server, 2) == [(b"v4", "127.0.0.2"), (b"v6", "::1")]


def receive_with_meta(sock: burstio.BurstSocket, expect: int) -> list[tuple[bytes, str | None]]:
    """(payload, local address) of ``expect`` datagrams, sorted by payload."""
    batch = PacketBatch(8, 256)
    got: list[tuple[bytes, str | None]] = []
    while len(got) < expect and sock.recv_batch(batch, 2.0):
        got += [(bytes(batch[i]), batch.local_addr(i)) for i in range(len(batch))]
    return sorted(got)


def test_pktinfo_forced_off_is_refused_with_the_reason(monkeypatch):
    set_disable(monkeypatch, "ip_pktinfo")
    with pytest.raises(OSError, match="pktinfo needs ip_pktinfo: disabled by BURSTIO_DISABLE") as ei:
        burstio.BurstSocket(pktinfo=True)
    assert ei.value.errno == errno.EOPNOTSUPP
    require_kernel("ipv6")
    set_disable(monkeypatch, "ipv6")
    with pytest.raises(OSError, match="pktinfo needs ipv6_pktinfo: needs ipv6: disabled by BURSTIO_DISABLE"):
        burstio.BurstSocket(family=socket.AF_INET6, pktinfo=True)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_ecn_codepoints_round_trip(sockets, udp_variant, family):
    rx, tx = sockets.pair(family, rx={"ecn": True}, tx={"ecn": True})
    caps = burstio.capabilities()
    assert rx.ecn == caps.ecn and tx.ecn_marking == caps.ecn
    dest = rx.getsockname()
    out = PacketBatch(8, 64)
    for cp in (0, ECT1, ECT0, CE, ECT0, ECT0):
        out.append(bytes([cp]), dest, ecn=cp)
    assert tx.send_batch(out) == 6
    got = recv_meta(rx, 6)
    want = [0, ECT1, ECT0, CE, ECT0, ECT0] if caps.ecn else [0] * 6
    assert [g[0][0] for g in got] == [0, ECT1, ECT0, CE, ECT0, ECT0]
    assert [g[3] for g in got] == want
    assert tx.counters["tx_ecn_unmarked"] == (0 if caps.ecn else 5)


def test_ecn_forced_off_sends_unmarked_and_counts(monkeypatch, udp_variant):
    use_variant(udp_variant.extended(off=["ecn"]), monkeypatch)
    with Sockets(**udp_variant.kwargs) as s:
        rx = s.receiver()
        tx = s.burst(ecn=True)
        plain_rx = s.plain()
        plain_rx.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
        assert not tx.ecn and not tx.ecn_marking
        out = PacketBatch(4, 64)
        out.append(b"ce", plain_rx.getsockname(), ecn=CE)
        assert tx.send_batch(out) == 1
        plain_rx.settimeout(2)
        data, anc, _f, _a = plain_rx.recvmsg(64, 64)
        assert data == b"ce" and [d[0] & 3 for lvl, kind, d in anc if kind == IP_TOS] == [0]
        assert tx.counters["tx_ecn_unmarked"] == 1
        del rx


def test_no_metadata_costs_nothing_when_not_asked(sockets):
    rx, tx = sockets.pair()
    out = PacketBatch(4, 64)
    out.append(b"plain", rx.getsockname())
    tx.send_batch(out)
    batch = PacketBatch(4, 64)
    assert rx.recv_batch(batch, 2.0) == 1
    assert not batch.has_metadata and not out.has_metadata
    # a batch that has metadata gets it cleared by a socket that asks for none
    batch.ecn[0] = CE
    batch.set_local_addr(0, "10.0.0.1", 3)
    tx.send_batch(out)
    assert rx.recv_batch(batch, 2.0) == 1
    assert (batch.local_addr(0), batch.ifindexes[0], batch.ecn[0], batch.txtimes[0]) == (None, 0, 0, 0)


def test_every_cmsg_at_once_fits(sockets):
    """GRO + SO_RXQ_OVFL + SCM_TIMESTAMPNS + IPV6_PKTINFO + IP_PKTINFO +
    IP_TOS on a dual-stack socket receiving IPv4: the biggest set of
    receive cmsgs, all read (csrc/batch/batch.h sizes the slot for it)."""
    require_kernel("ipv6")
    rx = sockets.track(burstio.BurstSocket.bind(("::", 0), pktinfo=True, ecn=True, gro=True, timestamps=True,
                                                **sockets_kwargs(sockets)))
    rx.sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    rx.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)  # both pktinfo cmsgs
    tx = sockets.burst(socket.AF_INET, ecn=True)
    out = PacketBatch(4, 64)
    out.append(b"all", ("127.0.0.3", rx.getsockname()[1]), ecn=CE)
    tx.send_batch(out)
    batch = PacketBatch(64, burstio.GRO_SLOT_MIN, slots=1)
    assert rx.recv_batch(batch, 2.0) == 1 and bytes(batch[0]) == b"all"
    assert batch.local_addr(0) == "127.0.0.3" and batch.ifindexes[0] > 0
    assert batch.ecn[0] == (CE if burstio.capabilities().ecn else 0)
    assert batch.timestamps[0] > 0 or not rx.timestamps


def test_metadata_splits_gso_runs(sockets):
    rx, tx = sockets.pair(rx={"ecn": True, "pktinfo": True})
    port = rx.getsockname()[1]
    out = PacketBatch(16, 64)
    plan = [("127.0.0.1", 0)] * 3 + [("127.0.0.1", ECT0)] * 3 + [("127.0.0.1", 0)] * 2
    for host, cp in plan:
        out.append(b"s" * 20, (host, port), ecn=cp)
    assert tx.send_batch(out) == 8
    got = recv_meta(rx, 8)
    assert [(g[2], g[3]) for g in got] == [("127.0.0.1", cp if rx.ecn else 0) for _h, cp in plan]
    gso = burstio.capabilities().udp_segment and tx.gso
    assert tx.counters["tx_gso_messages"] == (3 if gso else 0)


@pytest.mark.parametrize("setup,msg", [
    (lambda b: b.ecn.__setitem__(1, 7), r"datagram 1: its ECN codepoint \(batch.ecn\) is 7; codepoints are 0 to 3"),
    (lambda b: b.txtimes.__setitem__(0, 5), r"datagram 0: it has a transmit time .* does not pace \(paced=True does\)"),
    (lambda b: b.txtimes.__setitem__(1, -5), r"datagram 1: its transmit time \(batch.txtimes\) is negative"),
    (lambda b: b.set_local_addr(0, "::1"), "datagram 0: its local address is IPv6 but the socket is IPv4"),
])
def test_bad_metadata_is_refused_naming_the_datagram(sockets, setup, msg):
    rx, tx = sockets.pair()
    out = PacketBatch(4, 64)
    out.append(b"a", rx.getsockname())
    out.append(b"b", rx.getsockname())
    setup(out)
    with pytest.raises(ValueError, match=msg):
        tx.send_batch(out)
    assert tx.counters["tx_datagrams"] == 0  # checked before anything went


def test_local_and_destination_of_different_families_refused(sockets):
    require_kernel("ipv6")
    tx = sockets.burst(socket.AF_INET6)
    out = PacketBatch(2, 64)
    out.append(b"a", ("::1", 9), local="127.0.0.1")
    with pytest.raises(ValueError, match="datagram 0: its local address and its destination are of different "
                                         "families"):
        tx.send_batch(out)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("sizes", [[30, 30, 30], [30]], ids=["gso-run", "single"])
def test_refused_codepoint_downgrades_and_delivers_everything(sockets, udp_variant, caplog, on_error, sizes):
    """quinn-udp's downgrade: the kernel refuses the TOS cmsg (EINVAL): the
    datagram is sent without it, ECN stays off for the socket, counted, logged
    once. Tests make every kernel refuse it with an out-of-range TOS byte."""
    require_kernel("ecn")
    rx, tx = sockets.pair(rx={"ecn": True}, tx={"ecn": True})
    tx._io.ecn_cmsg = 2  # the kernel refuses the cmsg from now on
    out = PacketBatch(8, 64)
    for n in sizes:
        out.append(b"d" * n, rx.getsockname(), ecn=ECT0)
    out.append(b"after", rx.getsockname(), ecn=ECT1)
    with caplog.at_level(logging.WARNING, logger="burstio"):
        assert tx.send_batch(out, on_error=on_error) == len(sizes) + 1
        assert tx.send_batch(out, on_error=on_error) == len(sizes) + 1
    got = recv_meta(rx, 2 * len(sizes) + 2)
    assert len(got) == 2 * len(sizes) + 2
    assert {g[3] for g in got} == {0}
    assert not tx.ecn_marking
    c = tx.counters
    assert c["ecn_downgrades"] == 1 and c["tx_ecn_unmarked"] == len(got) and c["tx_errors"] == 0
    assert sum("refused the ECN codepoint" in r.message for r in caplog.records) == 1


def test_a_send_without_codepoints_is_that_call_alone(sockets):
    """What the ECN downgrade resends with (``send_raw(ecn=False)``, as
    ``gso=False``) leaves the codepoints off for that call only: the socket's
    setting is never switched off and on, so a send of another thread
    meanwhile keeps its codepoints."""
    require_kernel("ecn")
    rx, tx = sockets.pair(rx={"ecn": True}, tx={"ecn": True})
    out = PacketBatch(4, 64)
    out.append(b"plain", rx.getsockname(), ecn=ECT0)
    assert tx._io.send_raw(out, ecn=False) == (1, 0, -1, 0)
    assert tx.ecn_marking and tx.counters["tx_ecn_unmarked"] == 1
    assert tx.send_batch(out) == 1
    got = recv_meta(rx, 2)
    assert [(g[0], g[3]) for g in got] == [(b"plain", 0), (b"plain", ECT0)]
    assert tx.counters["tx_ecn_unmarked"] == 1 and tx.counters["ecn_downgrades"] == 0


def test_refused_codepoint_on_a_datagram_refused_anyway_keeps_ecn(sockets, udp_variant):
    """EINVAL with the codepoint and again without it: the datagram was bad,
    not the cmsg. The send reports it, and ECN stays on for the socket."""
    require_kernel("ecn")
    rx, tx = sockets.pair(rx={"ecn": True}, tx={"ecn": True})
    tx._io.ecn_cmsg = 2  # the kernel refuses the cmsg from now on
    out = PacketBatch(4, 64)
    out.append(b"bad", ("127.0.0.1", 0), ecn=ECT0)  # port 0: EINVAL with or without the cmsg
    with pytest.raises(SendError) as ei:
        tx.send_batch(out)
    assert ei.value.errno == errno.EINVAL and ei.value.index == 0 and ei.value.sent == 0
    assert tx._io.ecn_cmsg == 2 and tx.counters["ecn_downgrades"] == 0


def test_dont_fragment_sets_the_option_and_path_mtu_answers(sockets):
    s = sockets.burst(dont_fragment=True)
    assert s.dont_fragment
    assert s.sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_DO
    peer = sockets.plain()
    lo_mtu = s.path_mtu(peer.getsockname())  # unconnected: asked of a throw-away connected socket
    assert lo_mtu >= 1280
    s.connect(peer.getsockname())
    assert s.path_mtu() == lo_mtu  # connected: IP_MTU on the socket itself
    plain = sockets.burst()
    with pytest.raises(OSError) as ei:
        plain.path_mtu()
    assert ei.value.errno == errno.ENOTCONN
    require_kernel("ipv6")
    s6 = sockets.burst(socket.AF_INET6, dont_fragment=True)
    assert s6.sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER) == IPV6_PMTUDISC_DO
    assert s6.sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_DO  # its IPv4 destinations
    assert s6.path_mtu(("::1", 9)) >= 1280 and s6.path_mtu(("127.0.0.1", 9)) == lo_mtu


def test_send_error_has_no_mtu_unless_emsgsize(sockets):
    tx = sockets.burst()
    out = PacketBatch(2, 64)
    out.append(b"x", ("127.0.0.1", 0))  # port 0: EINVAL
    with pytest.raises(SendError) as ei:
        tx.send_batch(out)
    assert ei.value.errno == errno.EINVAL and ei.value.mtu is None


def test_describe_names_the_options(sockets):
    s = sockets.burst(pktinfo=True, ecn=True, dont_fragment=True)
    d = s.describe()
    assert "pktinfo" in d and "don't fragment" in d and ("ECN" in d) == burstio.capabilities().ecn


# ---- differential: every variant against the oracle -------------------------------------------

ORACLE = UDP["portable"]
ENTRY = st.tuples(st.integers(0, 40), st.sampled_from([*LOCALS, None]), st.integers(0, 3))


def exchange(variant, entries) -> list[tuple]:
    """Send ``entries`` (length, source, codepoint) with a BurstSocket of
    ``variant`` to the oracle's pktinfo+ECN receiver: what arrived, as
    (payload, source, local address, codepoint)."""
    with Sockets(backend="portable") as r, Sockets(**variant.kwargs) as s:
        with variant_env(ORACLE):
            rx = r.track(burstio.BurstSocket.bind(("0.0.0.0", 0), pktinfo=True, ecn=True, rcvbuf=1 << 20,
                                                  backend="portable"))
        with variant_env(variant):
            tx = s.burst()
        out = PacketBatch(len(entries), 64)
        for n, local, cp in entries:
            out.append(bytes([n]) * n, (local or "127.0.0.1", rx.getsockname()[1]), local=local, ecn=cp)
        assert tx.send_batch(out) == len(entries)
        batch = PacketBatch(64, 64)
        got: list[tuple] = []
        while len(got) < len(entries) and rx.recv_batch(batch, 2.0):
            got += [(bytes(batch[i]), batch.addr(i)[0], batch.local_addr(i), batch.ecn[i]) for i in range(len(batch))]
        return got


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(entries=st.lists(ENTRY, min_size=1, max_size=24))
def test_metadata_arrives_as_the_oracle_sends_it(udp_variant, entries):
    """Random batches with sources and codepoints, sent by each variant and
    by the oracle to the oracle's pktinfo+ECN receiver: the same payloads,
    sources, local addresses and codepoints arrive, in order."""
    got = exchange(udp_variant, entries)
    assert got == exchange(ORACLE, entries)
    ecn = burstio.capabilities().ecn
    assert got == [(bytes([n]) * n, local or "127.0.0.1", local or "127.0.0.1", cp if ecn else 0)
                   for n, local, cp in entries]


# ---- racing writers -------------------------------------------------------------------------


@pytest.mark.parametrize("paced", [False, True], ids=["send", "paced"])
def test_metadata_rewritten_during_sends_never_reaches_the_kernel_unchecked(sockets, paced):
    """Another thread flips every entry's codepoint between a valid one and
    200 (no codepoint) while sends run: each send refuses the entry it read
    (ValueError) or sends the checked copy, so every TOS byte that arrives
    is a codepoint (0-3), never 200."""
    require_kernel("ecn")
    np = pytest.importorskip("numpy")
    import threading

    rx = sockets.plain()
    rx.setblocking(False)
    rx.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
    tx = sockets.burst(paced=paced)
    count = 256
    batch = PacketBatch(count, 16)
    for i in range(count):
        batch.append(b"m", rx.getsockname(), ecn=1 + i % 3)
    ecn = np.asarray(batch.ecn)[:count]
    good, bad = ecn.copy(), np.full(count, 200, dtype=np.uint8)
    halt = threading.Event()

    def flip():
        while not halt.is_set():
            ecn[:] = bad
            ecn[:] = good

    racer = threading.Thread(target=flip, daemon=True)
    racer.start()
    tos: set[int] = set()
    try:
        for _attempt in range(40):
            try:
                tx.send_batch(batch, on_error="skip")
            except ValueError as e:
                assert "codepoint" in str(e)
            if paced:
                assert tx.flush(10.0)
            while True:
                try:
                    _d, anc, _f, _a = rx.recvmsg(16, 64)
                except BlockingIOError:
                    break
                tos |= {data[0] for level, kind, data in anc if kind == IP_TOS}
    finally:
        halt.set()
        racer.join(10)
    assert tos and tos <= {1, 2, 3}
