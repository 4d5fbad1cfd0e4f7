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
  ``PacketBatch``; each answer is written over its query in that batch and
  the batch goes back to the senders in one ``sendto_many`` (no per-answer
  ``sendto``, no address objects).

Run one: ``burstio serve dns --port 5353`` (or ``python -m burstio.apps.dns --port 5353``;
``--workers N`` for N processes on the port, ``--help`` for the rest).
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any, cast

from .. import aio
from .._native import PacketBatch
from .._types import Address
from . import until_signalled

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

__all__ = ["Answers", "answer", "AsyncioResponder", "BurstResponder", "serve", "main", "add_arguments", "run",
           "TRANSPORTS"]

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
        """Keep the transport the answers are sent on."""
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's


class AsyncioResponder(_Answering, asyncio.DatagramProtocol):
    """One query per ``datagram_received``, one ``sendto`` per answer."""

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Answer one query."""
        self.queries += 1
        reply = answer(data, self.answers)
        if reply is not None:
            self.transport.sendto(reply, addr)


class BurstResponder(_Answering, aio.BatchDatagramProtocol):
    """The same answers, a burst at a time (burstio transports; on others
    it falls back to one query per call)."""

    def datagrams_received(self, batch: PacketBatch) -> None:
        """Answer every query of the burst: each answer is written over its
        query, in the batch, and the batch goes back to the senders in one
        ``sendto_many`` (the batch API's way to answer a burst)."""
        n = len(batch)
        self.queries += n
        answers = self.answers
        if not _answerable_in_place(batch, n):
            addrs = batch.addresses()
            sendto = self.transport.sendto
            for i in range(n):
                reply = answer(bytes(batch[i]), answers)
                if reply is not None:
                    sendto(reply, addrs[i])
            return
        buf, offsets, lengths = batch.buffer, batch.offsets, batch.lengths
        silent: bytearray | None = None
        for i in range(n):
            reply = answer(bytes(batch[i]), answers)
            if reply is None:
                if silent is None:
                    silent = bytearray(b"\x01") * n
                silent[i] = 0
                continue
            off = offsets[i]
            end = off + len(reply)
            buf[off:end] = reply
            lengths[i] = end - off
        if silent is not None and not batch.keep(silent):
            return
        cast(aio.BurstDatagramTransport, self.transport).sendto_many(batch)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Answer one query (on transports that do not batch)."""
        self.queries += 1
        reply = answer(data, self.answers)
        if reply is not None:
            self.transport.sendto(reply, addr)


#: the longest answer(): header, the longest question, the longest record, OPT
_MAX_ANSWER = _HEADER.size + MAX_NAME + 4 + max(len(rr) for rr in DEFAULT.rr.values()) + len(DEFAULT.opt)


def _answerable_in_place(batch: PacketBatch, n: int) -> bool:
    """Whether each answer may be written over its query: every entry is a
    whole receive slot (none split from a GRO receive, none cut short), the
    slot holds any answer, and the batch carries no per-datagram metadata
    (whose received values are not what an answer is sent with)."""
    return batch.slot_size >= _MAX_ANSWER and not batch.has_metadata and not any(batch.flags[:n])


TRANSPORTS = ("asyncio", "burstio-compat", "burstio")


async def serve(host: str, port: int, transport: str = "burstio", answers: Answers = DEFAULT,
                *, sock: socket.socket | None = None,
                **options: Any) -> tuple[asyncio.DatagramTransport, AsyncioResponder | BurstResponder]:
    """Start a responder; returns (transport, protocol). ``transport``:
    "asyncio" (the loop's own, AsyncioResponder), "burstio-compat"
    (AsyncioResponder over burstio), "burstio" (BurstResponder over burstio).
    ``sock``: answer on this bound UDP socket instead of binding ``(host, port)``."""
    loop = asyncio.get_running_loop()
    where: dict[str, Any] = {"sock": sock} if sock is not None else {"local_addr": (host, port)}
    if transport == "asyncio":
        return await loop.create_datagram_endpoint(lambda: AsyncioResponder(answers), **where)
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    factory = BurstResponder if transport == "burstio" else AsyncioResponder
    return await aio.create_datagram_endpoint(loop, lambda: factory(answers), **where, **options)


async def _run(args: argparse.Namespace, sock: socket.socket | None = None, stop: Event | None = None,
               label: str = "") -> None:
    from .._cliargs import bind_failure, say, when_set

    try:
        t, p = await serve(args.host, args.port, args.transport, sock=sock)
    except OSError as e:
        raise bind_failure(e, args.host, args.port) from None
    if not args.quiet and sock is None:
        host, port = t.get_extra_info("sockname")[:2]
        print(f"DNS responder ({args.transport}, {type(asyncio.get_running_loop()).__name__}) "
              f"on {host}:{port}", flush=True)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    if stop is not None:
        when_set(stop, lambda: loop.call_soon_threadsafe(_finish, finished))
    try:
        await asyncio.wait([asyncio.ensure_future(until_signalled()), finished],
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        t.close()
        if not args.quiet:
            say(f"{label}answered {p.queries} queries")


def _finish(f: asyncio.Future[None]) -> None:
    if not f.done():
        f.set_result(None)


def _loop_run(args: argparse.Namespace, *a: Any) -> None:
    if args.loop == "uvloop":
        import uvloop
        uvloop.run(_run(args, *a))
    else:
        asyncio.run(_run(args, *a))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``burstio serve dns`` (and ``python -m burstio.apps.dns``)."""
    from .._cliargs import add_dns_arguments

    add_dns_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Serve with parsed arguments (``add_arguments``) until SIGTERM or Ctrl-C."""
    from .._cliargs import serve_workers

    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            from .._cliargs import CommandError
            raise CommandError("--loop uvloop needs uvloop (pip install uvloop)", 2) from None
    if args.workers == 1:
        _loop_run(args)
        return 0

    def worker(index: int, sock: socket.socket, stop: Event) -> None:
        _loop_run(args, sock, stop, f"worker {index} (pid {os.getpid()}): ")

    return serve_workers(args, f"DNS responder ({args.transport})", worker)


def main(argv: list[str] | None = None) -> int:
    """``python -m burstio.apps.dns [OPTIONS]``, the same as ``burstio serve dns``."""
    from .._cliargs import Parser, run_command

    ap = Parser(prog="python -m burstio.apps.dns", description=__doc__.split("\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    return run_command(ap.prog, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
