"""A fixed-answer DNS responder, on burstio and on plain asyncio.

Every A query is answered with one address, every AAAA query with one IPv6
address, anything else with an empty NOERROR answer; the name does not
matter. It is what a load balancer's health name or a sinkhole does, and it
keeps the per-query work small, so that what a benchmark of it measures is
the path a datagram takes, not the parsing. ``answer()`` is the whole DNS
logic; both servers call it for every query:

- ``AsyncioResponder``: an ``asyncio.DatagramProtocol`` (one ``datagram_received``
  and one ``sendto`` per query). On asyncio's transport that is one
  ``recvfrom`` and one ``sendto`` system call per query; on burstio's, the
  same protocol runs unchanged and the I/O is batched underneath.
- ``BurstResponder``: a ``BatchDatagramProtocol`` taking the burst as one
  ``PacketBatch``.

Run one: ``python -m burstio.apps.dns --port 5353 --transport burstio``.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import struct
import sys
from typing import Any, cast

from .. import aio
from .._native import PacketBatch
from .._types import Address
from . import until_signalled

__all__ = ["Answers", "answer", "AsyncioResponder", "BurstResponder", "serve", "main"]

TYPE_A, TYPE_AAAA, TYPE_OPT, CLASS_IN = 1, 28, 41, 1
RCODE_FORMERR, RCODE_NOTIMP = 1, 4
_HEADER = struct.Struct("!HBBHHHH")
_QR, _AA, _RD_MASK = 0x80, 0x04, 0x01
_EDNS_PAYLOAD = 1232  # what we advertise in our OPT record (DNS flag day 2020)
MAX_NAME = 255  # octets of a name on the wire (RFC 1035 2.3.4)


class Answers:
    """What the responder says: the address records and their TTL."""

    def __init__(self, a: str = "192.0.2.1", aaaa: str = "2001:db8::1", ttl: int = 300):
        self.a, self.aaaa, self.ttl = a, aaaa, ttl
        ptr = b"\xc0\x0c"  # the answer's name points at the question's
        self.rr = {
            TYPE_A: ptr + struct.pack("!HHIH", TYPE_A, CLASS_IN, ttl, 4) + ipaddress.IPv4Address(a).packed,
            TYPE_AAAA: ptr + struct.pack("!HHIH", TYPE_AAAA, CLASS_IN, ttl, 16)
            + ipaddress.IPv6Address(aaaa).packed,
        }
        self.opt = b"\x00" + struct.pack("!HHIH", TYPE_OPT, _EDNS_PAYLOAD, 0, 0)


DEFAULT = Answers()


def answer(query: bytes, answers: Answers = DEFAULT) -> bytes | None:
    """The response to one query message, or None to stay silent (not a
    query, or too short to carry an ID)."""
    if len(query) < 12 or query[2] & _QR:
        return None
    qid, flags, _, qdcount, _, _, arcount = _HEADER.unpack_from(query)
    rd = flags & _RD_MASK
    if (flags >> 3) & 0x0F:  # only standard queries (opcode 0)
        return _HEADER.pack(qid, _QR | (flags & 0x78) | rd, RCODE_NOTIMP, 0, 0, 0, 0)
    end = _question_end(query) if qdcount == 1 else -1
    if end < 0:
        return _HEADER.pack(qid, _QR | rd, RCODE_FORMERR, 0, 0, 0, 0)
    qtype, qclass = (query[end - 4] << 8) | query[end - 3], (query[end - 2] << 8) | query[end - 1]
    rr = answers.rr.get(qtype) if qclass == CLASS_IN else None
    edns = arcount == 1 and query[end:end + 3] == b"\x00\x00\x29"
    head = _HEADER.pack(qid, _QR | _AA | rd, 0, 1, 1 if rr else 0, 0, 1 if edns else 0)
    return b"".join((head, query[12:end], rr or b"", answers.opt if edns else b""))


def _question_end(query: bytes) -> int:
    """Offset just past the one question (name, type, class); -1 if malformed.

    RFC 1035 2.3.4: a label is at most 63 octets (a length byte with either
    of the top two bits set is a pointer or an unknown label type, neither
    of which a question may hold), a name at most 255 octets on the wire,
    length bytes and the final zero included."""
    i, n = 12, len(query)
    while i < n and i - 12 < MAX_NAME:
        length = query[i]
        if length == 0:
            return i + 5 if i + 5 <= n else -1
        if length & 0xC0:
            return -1
        i += length + 1
    return -1


class _Answering:
    """What both responders hold: the answers, the transport, a query count."""

    def __init__(self, answers: Answers = DEFAULT):
        self.answers = answers
        self.transport: asyncio.DatagramTransport = None  # type: ignore[assignment]  # until connection_made()
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's


class AsyncioResponder(_Answering, asyncio.DatagramProtocol):
    """One query per ``datagram_received``, one ``sendto`` per answer."""

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.queries += 1
        reply = answer(data, self.answers)
        if reply is not None:
            self.transport.sendto(reply, addr)


class BurstResponder(_Answering, aio.BatchDatagramProtocol):
    """The same answers, a burst at a time (burstio transports; on others
    it falls back to one query per call)."""

    def datagrams_received(self, batch: PacketBatch) -> None:
        n = len(batch)
        self.queries += n
        addrs = batch.addresses()
        sendto, answers = self.transport.sendto, self.answers
        for i in range(n):
            reply = answer(bytes(batch[i]), answers)
            if reply is not None:
                sendto(reply, addrs[i])

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.queries += 1
        reply = answer(data, self.answers)
        if reply is not None:
            self.transport.sendto(reply, addr)


TRANSPORTS = ("asyncio", "burstio-compat", "burstio")


async def serve(host: str, port: int, transport: str = "burstio", answers: Answers = DEFAULT,
                **options: Any) -> tuple[asyncio.DatagramTransport, AsyncioResponder | BurstResponder]:
    """Start a responder; returns (transport, protocol). ``transport``:
    "asyncio" (the loop's own, AsyncioResponder), "burstio-compat"
    (AsyncioResponder over burstio), "burstio" (BurstResponder over burstio)."""
    loop = asyncio.get_running_loop()
    if transport == "asyncio":
        return await loop.create_datagram_endpoint(lambda: AsyncioResponder(answers),
                                                   local_addr=(host, port))
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    factory = BurstResponder if transport == "burstio" else AsyncioResponder
    return await aio.create_datagram_endpoint(loop, lambda: factory(answers),
                                              local_addr=(host, port), **options)


async def _run(args: argparse.Namespace) -> None:
    t, p = await serve(args.host, args.port, args.transport)
    if not args.quiet:
        print(f"DNS responder ({args.transport}, {type(asyncio.get_running_loop()).__name__}) "
              f"on {t.get_extra_info('sockname')}", flush=True)
    try:
        await until_signalled()
    finally:
        t.close()
        if not args.quiet:
            print(f"answered {p.queries} queries", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m burstio.apps.dns", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5353)
    ap.add_argument("--transport", choices=TRANSPORTS, default="burstio")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop
        uvloop.run(_run(args))
    else:
        asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
