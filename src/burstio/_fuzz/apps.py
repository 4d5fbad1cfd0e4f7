"""Fuzz targets of the applications: what a peer's datagram reaches first.

- ``sockperf``: the sockperf server's reading of message headers
  (``burstio.apps.sockperf.mark_replies``) over a received burst, then
  ``PacketBatch.keep`` of the answers, as ``serve_once`` does. Input: messages
  each preceded by one length byte. Oracle: exactly the messages with a whole
  header and the pong-request flag are answered, each with only the client
  flag cleared, in order; nothing else in the batch changes.
- ``dns``: the DNS responder's ``answer()``. Input: one DNS message. Oracle:
  silence only for what is not a query; an answer carries the query's ID and
  QR; a NOERROR answer echoes one question whose name keeps RFC 1035's limits
  (labels of up to 63 octets, 255 in all) and fits a 512-byte message.
  Nothing is documented to raise: any exception is a crash.
"""
from __future__ import annotations

import struct

from .. import _native
from ..apps import dns, sockperf
from . import Target

__all__ = ["SOCKPERF", "DNS"]


# ---- sockperf ----------------------------------------------------------------------


def _messages(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while i < len(data) and len(out) < 64:
        n = data[i]
        out.append(data[i + 1:i + 1 + n])
        i += 1 + n
    return out


def run_sockperf(data: bytes) -> str:
    msgs = _messages(data)
    if not msgs:
        return "empty"
    batch = _native.PacketBatch(len(msgs), 256)
    for m in msgs:
        batch.append(m)
    mask = bytearray(len(msgs))
    replies = sockperf.mark_replies(batch.arena, batch.offsets, batch.lengths, mask, len(msgs))
    want = [len(m) >= sockperf.HEADER.size and bool(m[9] & sockperf.FLAG_PONG_REQUEST) for m in msgs]
    assert list(mask) == [int(w) for w in want], f"marked {list(mask)}, want {want}"
    assert replies == sum(want)
    answered = []
    for i, (m, w) in enumerate(zip(msgs, want, strict=True)):
        after = bytes(batch[i])
        expect = m[:9] + bytes([m[9] & ~sockperf.FLAG_CLIENT & 0xFF]) + m[10:] if w else m
        assert after == expect, f"message {i} became {after.hex()}, want {expect.hex()}"
        if w:
            answered.append(expect)
    if 0 < replies < len(msgs):
        assert batch.keep(mask) == replies
        assert [bytes(batch[i]) for i in range(len(batch))] == answered
    return "none" if not replies else ("all" if replies == len(msgs) else "some")


def _sockperf_seeds() -> list[bytes]:
    def msg(seq: int, flags: int, size: int) -> bytes:
        body = sockperf.HEADER.pack(seq, flags, size) + bytes(max(0, size - sockperf.HEADER.size))
        return bytes([len(body)]) + body

    ping = sockperf.FLAG_CLIENT | sockperf.FLAG_PONG_REQUEST
    return [msg(1, ping, 14), msg(2, ping, 64) + msg(3, sockperf.FLAG_CLIENT, 64) + msg(4, ping, 14),
            msg(5, ping | sockperf.FLAG_WARMUP, 100), msg(6, sockperf.FLAG_CLIENT, 14) * 3,
            b"\x0d" + bytes(13), b""]


SOCKPERF = Target("sockperf", run_sockperf, (), _sockperf_seeds, max_len=2048)


# ---- dns ---------------------------------------------------------------------------------

_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _name_end(msg: bytes, i: int) -> int:
    """Offset past the uncompressed name at i, checking RFC 1035's limits."""
    start = i
    while msg[i]:
        assert msg[i] <= 63, f"a label of {msg[i]} octets"
        i += msg[i] + 1
    assert i + 1 - start <= dns.MAX_NAME, f"a name of {i + 1 - start} octets"
    return i + 1


def run_dns(data: bytes) -> str:
    reply = dns.answer(data)
    if reply is None:
        assert len(data) < 12 or data[2] & 0x80, "a query went unanswered"
        return "silent"
    assert len(data) >= 12, "answered what is not a query"
    assert not data[2] & 0x80, "answered what is not a query"
    assert reply[:2] == data[:2], "the answer lacks the query's ID"
    assert reply[2] & 0x80, "the answer lacks QR"
    assert len(reply) <= 512, f"an answer of {len(reply)} bytes"
    rcode = reply[3] & 0x0F
    if rcode == 0:
        qdcount = struct.unpack_from("!H", reply, 4)[0]
        assert qdcount == 1, f"NOERROR with {qdcount} questions"
        end = _name_end(reply, 12) + 4
        assert reply[12:end] == data[12:end], "the question is not the query's"
    return _RCODES.get(rcode, f"rcode {rcode}")


def _dns_seeds() -> list[bytes]:
    def query(qid: int, name: bytes, qtype: int, flags: int = 0x0100, edns: bool = False) -> bytes:
        head = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
        qname = b"".join(bytes([len(x)]) + x for x in name.split(b".") if x) + b"\x00"
        opt = b"\x00" + struct.pack("!HHIH", 41, 4096, 0, 0) if edns else b""
        return head + qname + struct.pack("!HH", qtype, 1) + opt

    return [query(1, b"www.example.com", 1), query(2, b"example.com", 28, edns=True),
            query(3, b"a.b.c.d.e.f", 15, flags=0), query(4, b".".join([b"x" * 63] * 3 + [b"y" * 61]), 1),
            query(5, b"example.com", 1, flags=0x2800), b"\x00\x07\x81\x80" + bytes(8)]


DNS = Target("dns", run_dns, (), _dns_seeds, max_len=1024)
