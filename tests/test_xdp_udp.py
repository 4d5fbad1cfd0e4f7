"""burstio.xdp.udp: the vectorised parse against a pure-Python oracle, UDP
frames built in C (checksums checked here and by the kernel), neighbours."""
from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import burstio
from burstio.xdp import udp
from support.xdp import lab_xsk, needs_xdp_lab

# ---- the oracle --------------------------------------------------------------------

IPV6_EXT = {0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254}


class VerdictError(Exception):
    """The oracle's answer for a frame: its status."""

    def __init__(self, status: int):
        self.status = status


def _l2(frame: bytes, row: dict) -> tuple[int, int]:
    """(ethertype, offset of the L3 header) behind up to two VLAN tags."""
    if len(frame) < 14:
        raise VerdictError(udp.UDP_TRUNCATED)
    (etype,) = struct.unpack_from("!H", frame, 12)
    at = 14
    for tag in range(2):
        if etype not in (0x8100, 0x88A8):
            break
        if len(frame) < at + 4:
            raise VerdictError(udp.UDP_TRUNCATED)
        tci, etype = struct.unpack_from("!HH", frame, at)
        if tag == 0:
            row["vlan"] = tci & 0xFFF
        row["flags"] |= udp.UDP_F_VLAN
        at += 4
    return etype, at


def _ipv4(frame: bytes, at: int, row: dict) -> tuple[int, int]:
    """(offset, length) of the IPv4 payload."""
    avail = len(frame) - at
    if avail < 20:
        raise VerdictError(udp.UDP_TRUNCATED)
    vihl, _tos, total, _id, frag, _ttl, proto = struct.unpack_from("!BBHHHBB", frame, at)
    ihl = (vihl & 15) * 4
    if vihl >> 4 != 4 or ihl < 20:
        raise VerdictError(udp.UDP_MALFORMED)
    if ihl > avail:
        raise VerdictError(udp.UDP_TRUNCATED)
    if total < ihl:
        raise VerdictError(udp.UDP_MALFORMED)
    if total > avail:
        raise VerdictError(udp.UDP_TRUNCATED)
    row.update(family=4, proto=proto, src=frame[at + 12:at + 16] + bytes(12),
               dst=frame[at + 16:at + 20] + bytes(12))
    row["flags"] |= (udp.UDP_F_IP_OPTIONS if ihl > 20 else 0) | (udp.UDP_F_PADDED if total < avail else 0)
    if proto != 17:
        raise VerdictError(udp.UDP_NOT_UDP)
    if frag & 0x3FFF:
        raise VerdictError(udp.UDP_FRAGMENT)
    return at + ihl, total - ihl


def _ipv6(frame: bytes, at: int, row: dict) -> tuple[int, int]:
    """(offset, length) of the IPv6 payload."""
    avail = len(frame) - at
    if avail < 40:
        raise VerdictError(udp.UDP_TRUNCATED)
    if frame[at] >> 4 != 6:
        raise VerdictError(udp.UDP_MALFORMED)
    (plen,) = struct.unpack_from("!H", frame, at + 4)
    nh = frame[at + 6]
    if 40 + plen > avail:
        raise VerdictError(udp.UDP_TRUNCATED)
    row.update(family=6, proto=nh, src=frame[at + 8:at + 24], dst=frame[at + 24:at + 40])
    if 40 + plen < avail:
        row["flags"] |= udp.UDP_F_PADDED
    if nh in IPV6_EXT:
        raise VerdictError(udp.UDP_IPV6_EXT)
    if nh != 17:
        raise VerdictError(udp.UDP_NOT_UDP)
    return at + 40, plen


def _udp(frame: bytes, at: int, length: int, base: int, row: dict) -> None:
    if length < 8:
        raise VerdictError(udp.UDP_MALFORMED)
    sport, dport, ulen, check = struct.unpack_from("!HHHH", frame, at)
    if ulen < 8 or ulen > length:
        raise VerdictError(udp.UDP_MALFORMED)
    row["flags"] |= (udp.UDP_F_PADDED if ulen < length else 0) | (
        udp.UDP_F_CSUM_ZERO if row["family"] == 4 and check == 0 else 0)
    row.update(sport=sport, dport=dport, offset=base + at + 8, length=ulen - 8)


def oracle(frame: bytes, base: int = 0) -> dict:
    """What parse() must say about one frame, worked out with struct alone."""
    row = {"status": udp.UDP_OK, "family": 0, "proto": 0, "flags": 0, "vlan": 0, "src": bytes(16),
           "dst": bytes(16), "sport": 0, "dport": 0, "offset": 0, "length": 0}
    try:
        etype, at = _l2(frame, row)
        if etype == 0x0800:
            l4_at, l4_len = _ipv4(frame, at, row)
        elif etype == 0x86DD:
            l4_at, l4_len = _ipv6(frame, at, row)
        else:
            raise VerdictError(udp.UDP_NOT_IP)
        _udp(frame, l4_at, l4_len, base, row)
    except VerdictError as v:
        row["status"] = v.status
    return row


def parsed(frames_list: list[bytes]) -> list[dict]:
    batch = burstio.PacketBatch(len(frames_list) or 1, 4096)
    for f in frames_list:
        batch.append(f)
    out = udp.parse(batch)
    assert out.count == len(frames_list)
    src, dst = bytes(out.src.cast("B")), bytes(out.dst.cast("B"))
    return [{"status": out.statuses[i], "family": out.families[i], "proto": out.protocols[i],
             "flags": out.flags[i], "vlan": out.vlans[i], "src": src[16 * i:16 * i + 16],
             "dst": dst[16 * i:16 * i + 16], "sport": out.src_ports[i], "dport": out.dst_ports[i],
             "offset": out.payload_offsets[i], "length": out.payload_lengths[i]} for i in range(len(frames_list))]


# ---- frames to parse ---------------------------------------------------------------

def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@st.composite
def frames(draw):
    """Frames of every kind: UDP over IPv4/IPv6 behind 0-2 VLAN tags, other
    protocols, options, fragments, extension headers, lengths that lie,
    truncation anywhere, and plain noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=80))
    payload = draw(st.binary(max_size=64))
    family = draw(st.sampled_from([4, 4, 4, 6, 6, 6, 0]))
    proto = draw(st.sampled_from([17] * 8 + [6, 1, 0, 44, 60]))
    ulen = 8 + len(payload) + draw(st.sampled_from([0] * 8 + [-1, 1, -9]))
    l4 = struct.pack("!HHHH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)), ulen & 0xFFFF,
                     draw(st.sampled_from([0, 0x1234]))) + payload
    l4 += draw(st.binary(max_size=3))  # trailing bytes inside the IP packet
    if family == 4:
        options = b"\x01" * 4 * draw(st.integers(0, 2))
        ihl = 5 + len(options) // 4
        total = 4 * ihl + len(l4) + draw(st.sampled_from([0] * 8 + [1, -1, -40, 300]))
        frag = draw(st.sampled_from([0] * 6 + [0x2000, 0x0005, 0x4000]))
        version = draw(st.sampled_from([0x40] * 8 + [0x60]))
        ip = struct.pack("!BBHHHBBH4s4s", version | ihl, 0, total & 0xFFFF, 1, frag, 64, proto, 0,
                         draw(st.binary(min_size=4, max_size=4)), draw(st.binary(min_size=4, max_size=4)))
        l3, etype = ip + options + l4, 0x0800
    elif family == 6:
        plen = len(l4) + draw(st.sampled_from([0] * 8 + [1, -1, 200]))
        version = draw(st.sampled_from([0x60] * 8 + [0x40]))
        ip = struct.pack("!BBHHBB16s16s", version, 0, 0, plen & 0xFFFF, proto, 64,
                         draw(st.binary(min_size=16, max_size=16)), draw(st.binary(min_size=16, max_size=16)))
        l3, etype = ip + l4, 0x86DD
    else:
        l3, etype = draw(st.binary(max_size=60)), draw(st.sampled_from([0x0806, 0x88CC]))
    ntags = draw(st.sampled_from([0] * 6 + [1, 1, 2, 3]))
    tags = b"".join(struct.pack("!HH", draw(st.sampled_from([0x8100, 0x88A8])), draw(st.integers(0, 65535)))
                    for _ in range(ntags))
    frame = b"\x02" * 6 + b"\x04" * 6 + tags + struct.pack("!H", etype) + l3
    frame += draw(st.binary(max_size=4))  # Ethernet padding
    if draw(st.integers(0, 5)) == 0:  # truncated anywhere
        frame = frame[:draw(st.integers(0, len(frame)))]
    return frame


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=1, max_size=16))
def test_parse_agrees_with_the_oracle(batch_frames):
    rows = parsed(batch_frames)
    base = 0
    for i, f in enumerate(batch_frames):
        assert rows[i] == oracle(f, base), (i, f.hex())
        base += 4096  # one slot per appended frame


def test_every_status_is_reached():
    eth = b"\x02" * 6 + b"\x04" * 6
    good = udp.frame(b"\x02" * 6, b"\x04" * 6, ("10.0.0.1", 5), ("10.0.0.2", 7), b"hi")
    v6 = udp.frame(b"\x02" * 6, b"\x04" * 6, ("2001:db8::1", 5), ("2001:db8::2", 7), b"hi")
    ext = bytearray(v6)
    ext[14 + 6] = 0  # hop-by-hop
    frag = bytearray(good)
    frag[14 + 6] = 0x20  # more fragments
    tcp = bytearray(good)
    tcp[14 + 9] = 6
    rows = parsed([good, good[:30], eth + b"\x08\x00" + b"\x35" + good[15:], eth + b"\x08\x06" + bytes(28),
                   bytes(tcp), bytes(frag), bytes(ext), v6])
    assert [r["status"] for r in rows] == [udp.UDP_OK, udp.UDP_TRUNCATED, udp.UDP_MALFORMED, udp.UDP_NOT_IP,
                                           udp.UDP_NOT_UDP, udp.UDP_FRAGMENT, udp.UDP_IPV6_EXT, udp.UDP_OK]
    assert set(udp.STATUS_NAMES) == {r["status"] for r in rows}


def test_vlan_tagged_frame():
    plain = udp.frame(b"\x02" * 6, b"\x04" * 6, ("10.0.0.1", 5), ("10.0.0.2", 7), b"hello", vlan=0x2005)
    out = udp.parse(_batch([plain]))
    assert out.statuses[0] == udp.UDP_OK and out.flags[0] & udp.UDP_F_VLAN and out.vlans[0] == 5
    assert udp.address(out, 0) == ("10.0.0.1", 5) and udp.address(out, 0, "dst") == ("10.0.0.2", 7)
    assert out.payload_lengths[0] == 5 and out.payload_offsets[0] == 14 + 4 + 20 + 8


def test_address_checks_its_arguments():
    out = udp.parse(_batch([b"\0" * 20]))
    with pytest.raises(IndexError, match="row 1 is out of range"):
        udp.address(out, 1)
    with pytest.raises(ValueError, match="which must be 'src' or 'dst'"):
        udp.address(out, 0, "mid")


def test_parse_refuses_a_batch_larger_than_its_arrays():
    with pytest.raises(ValueError, match="the batch holds 2 frames; these UdpFrames hold 1"):
        burstio.xdp.udp.UdpFrames(1).parse(_batch([b"x", b"y"]))


def test_parse_refuses_entries_outside_their_buffer():
    b = _batch([bytes(60)])
    b.offsets[0] = 1 << 40  # the arrays are writable: parse checks before it reads
    with pytest.raises(ValueError, match="runs past the"):
        udp.parse(b)


def _batch(frames_list):
    b = burstio.PacketBatch(max(1, len(frames_list)), 2048)
    for f in frames_list:
        b.append(f)
    return b


# ---- frames built in C ----------------------------------------------------------------

@pytest.mark.parametrize("src,dst", [(("10.1.2.3", 1234), ("10.9.8.7", 53)),
                                     (("2001:db8::1", 1234), ("2001:db8::53", 53))])
@pytest.mark.parametrize("size", [0, 1, 17, 1400])
def test_frame_checksums(src, dst, size):
    payload = bytes(range(256)) * 6
    payload = payload[:size]
    f = udp.frame(b"\x0a" * 6, b"\x0b" * 6, src, dst, payload)
    v6 = ":" in src[0]
    ip = f[14:]
    hl = 40 if v6 else 20
    if not v6:
        assert csum(ip[:20]) == 0  # the header checksum makes the header sum to 0xffff
        assert struct.unpack_from("!H", ip, 2)[0] == 20 + 8 + size
    l4 = ip[hl:]
    s, d = ipaddress.ip_address(src[0]).packed, ipaddress.ip_address(dst[0]).packed
    pseudo = s + d + (struct.pack("!BBH", 0, 17, len(l4)) if not v6 else struct.pack("!IxxxB", len(l4), 17))
    assert csum(pseudo + l4) == 0
    assert struct.unpack_from("!HHH", l4) == (src[1], dst[1], 8 + size)
    assert l4[8:] == payload


def test_frame_refuses_mixed_families():
    with pytest.raises(ValueError, match="different IP versions"):
        udp.frame(b"\0" * 6, b"\0" * 6, ("10.0.0.1", 1), ("::1", 2))


# ---- in a lab: the kernel checks what burstio builds -------------------------------------

@needs_xdp_lab
def test_sent_datagrams_pass_the_kernels_checksum_checks(burstio_lab):
    """Datagrams built by burstio arrive at a normal UDP socket across the
    veth: the receiving kernel verified their IP and UDP checksums."""
    lab = burstio_lab
    with lab.inside("a"):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((lab.addr("a"), 7000))
        rx.settimeout(5)
    with lab_xsk(lab, "b") as (xsk, _steer):
        sender = udp.UdpSender(xsk, (lab.addr("b"), 9000))
        out = burstio.PacketBatch(64)
        sizes = [0, 1, 2, 3, 100, 1000, 1472]
        for n in sizes:
            out.append(bytes([n & 0xFF]) * n, (lab.addr("a"), 7000))
        assert sender.send(out, timeout=5) == len(sizes)
        got = sorted(len(rx.recv(2048)) for _ in sizes)
        assert got == sorted(sizes)
        assert xsk.counters["tx_frames"] == len(sizes)


@needs_xdp_lab
def test_a_bad_checksum_is_dropped_by_the_kernel(burstio_lab):
    """The negative control: the same path with a corrupted UDP checksum
    delivers nothing, so the test above really is the kernel's check."""
    lab = burstio_lab
    with lab.inside("a"):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((lab.addr("a"), 7001))
        rx.settimeout(0.5)
        dst_mac = udp.mac_of(lab.dev["a"])
    with lab_xsk(lab, "b") as (xsk, _steer):
        good = udp.frame(dst_mac, udp.mac_of(lab.dev["b"]), (lab.addr("b"), 9000), (lab.addr("a"), 7001), b"ok")
        bad = bytearray(good)
        bad[14 + 20 + 6] ^= 0xFF
        batch = _batch([bytes(bad), good])
        assert xsk.send_batch(batch, timeout=5) == 2
        assert rx.recv(64) == b"ok"
        with pytest.raises(TimeoutError):
            rx.recv(64)


@needs_xdp_lab
def test_an_unresolvable_neighbour_names_the_ip_and_device(burstio_lab):
    lab = burstio_lab
    with lab_xsk(lab, "b") as (xsk, _steer):
        with pytest.raises(LookupError, match=rf"no neighbour entry for {lab.subnet}\.77 on {lab.dev['b']}"):
            udp.neighbour_mac(f"{lab.subnet}.77", lab.dev["b"], timeout=0.3)
        sender = udp.UdpSender(xsk, (lab.addr("b"), 9000), resolve_timeout=0.3)
        out = burstio.PacketBatch(4)
        out.append(b"x", (f"{lab.subnet}.77", 9))
        with pytest.raises(LookupError, match=rf"{lab.subnet}\.77"):
            sender.send(out, timeout=1)
        assert xsk.counters["tx_frames"] == 0
