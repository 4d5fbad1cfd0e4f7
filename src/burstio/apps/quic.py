"""HTTP/3 over burstio: aioquic (unmodified, from PyPI) on burstio's transport.

aioquic's asyncio helpers open their UDP endpoints through
``loop.create_datagram_endpoint``; ``burstio.aio.install(loop)`` routes that
to burstio, so its ``serve()``/``connect()`` and protocols run as they are.
The datagrams aioquic sends one ``sendto`` at a time (a congestion window per
``transmit()``) then leave in one ``sendmmsg``, as GSO runs to the peer, and
a receive takes every queued datagram in one ``recvmmsg`` (with GRO, one
coalesced receive per 64).

Pacing: aioquic paces with a token bucket (``QuicPacketPacer``: one
``packet_time`` per datagram from cwnd/srtt, a burst allowance
``bucket_max``) and an event-loop timer: when the bucket is empty it stops
building packets, sets ``_pacing_at``, and the protocol arms ``call_at`` for
it -- a timer callback per datagram or small group. On a paced burstio
transport (``transport="burstio-paced"``) ``BurstPacing.transmit`` evaluates
that same pacer ahead of time instead: it calls ``datagrams_to_send(now=t)``
at each ``_pacing_at`` the pacer gives, up to ``pacing_horizon`` ahead, and
hands each datagram to burstio's pacer thread with its release time t (so
aioquic also stamps the packet sent at t: its RTT samples stay right). aioquic
still does congestion control, loss recovery, the pacing rate and the
bucket; burstio only releases. A loop timer remains, once per horizon.

ECN: aioquic has none (it sends plain ACK frames, reads an ACK_ECN's counts
and drops them, and never reacts to CE), so a peer cannot validate ECN
marks from it and RFC 9000 (section 13.4.2) then says not to mark. The
protocols here carry the codepoints anyway: with ``ecn`` on, the received
ones are counted (``ecn_counts``), and ``send_ecn`` marks what is sent (0,
Not-ECT, by default).

This module adds what aioquic keeps in its examples: a small HTTP/3 server
(``GET /bytes/N`` answers N bytes, anything else 404) and client, and a
throw-away self-signed certificate.

    python -m burstio.apps.quic serve --port 4433 --transport burstio
    python -m burstio.apps.quic get https://127.0.0.1:4433/bytes/1000000
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, cast
from urllib.parse import urlparse

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent

from .. import aio
from .._native import PacketBatch
from . import until_signalled

__all__ = ["H3Server", "H3Client", "BurstQuicProtocol", "BurstH3Client", "BurstPacing", "PacedH3Server",
           "serve_h3", "connect_h3", "server_configuration", "client_configuration", "self_signed_certificate",
           "body", "use_transport", "TRANSPORTS"]

TRANSPORTS = ("asyncio", "burstio", "burstio-paced")
#: datagrams_to_send() calls one transmit() makes ahead at most
_AHEAD_MAX = 4096
_CHUNK = bytes(range(256)) * 4096  # 1 MiB; a body of N bytes is the first N of this, repeated


def body(size: int) -> bytes:
    """What ``GET /bytes/N`` answers (for checking a download)."""
    return (_CHUNK * (size // len(_CHUNK) + 1))[:size]


def use_transport(transport: str, loop: asyncio.AbstractEventLoop | None = None, **options: Any) -> None:
    """Make the (running) loop's datagram endpoints "asyncio" (its own),
    "burstio" (``burstio.aio.install`` with ``options``) or "burstio-paced"
    (the same, paced by burstio's pacer thread, ECN read)."""
    loop = loop or asyncio.get_running_loop()
    if transport == "burstio":
        aio.install(loop, **options)
    elif transport == "burstio-paced":
        aio.install(loop, **{"paced": True, "ecn": True, **options})
    elif transport == "asyncio":
        aio.uninstall(loop)
    else:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")


class H3Server(QuicConnectionProtocol):
    """HTTP/3: ``GET /bytes/N`` -> 200 with N bytes (``body(N)``); else 404."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._http: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._http = H3Connection(self._quic)
        if self._http is not None:
            for h3_event in self._http.handle_event(event):
                self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived):
            return
        http = cast(H3Connection, self._http)  # made before any HTTP/3 event
        headers = dict(event.headers)
        path = headers.get(b":path", b"/").decode()
        size = _requested_size(path) if headers.get(b":method") == b"GET" else None
        if size is None:
            http.send_headers(event.stream_id, [(b":status", b"404")], end_stream=True)
        else:
            http.send_headers(event.stream_id, [(b":status", b"200"), (b"content-length", str(size).encode())])
            while size > len(_CHUNK):
                http.send_data(event.stream_id, _CHUNK, end_stream=False)
                size -= len(_CHUNK)
            http.send_data(event.stream_id, _CHUNK[:size], end_stream=True)
        self.transmit()


def _requested_size(path: str) -> int | None:
    parts = path.split("/")
    if len(parts) == 3 and parts[1] == "bytes" and parts[2].isdigit():
        return int(parts[2])
    return None


class BurstPacing(QuicConnectionProtocol):
    """aioquic's pacing, released by burstio's pacer thread (see the module
    docstring) on a paced burstio transport; elsewhere aioquic's own."""

    #: how far ahead (seconds) one transmit() evaluates aioquic's pacer
    pacing_horizon = 0.005
    #: the ECN codepoint sent datagrams carry (0: Not-ECT; see the module docstring)
    send_ecn = 0

    def transmit(self) -> None:
        transport = self._transport
        bsock = transport.get_extra_info("burst_socket") if transport is not None else None
        if bsock is None or bsock.pacing == "off" or not hasattr(self._quic, "_pacing_at"):
            super().transmit()  # aioquic's pacing: a loop timer per datagram or small group
            return
        self._transmit_task = None
        now, now_ns = self._loop.time(), time.monotonic_ns()
        t, horizon = now, now + self.pacing_horizon
        sendto = cast(aio.BurstDatagramTransport, transport).sendto
        for _ in range(_AHEAD_MAX):
            datagrams = self._quic.datagrams_to_send(now=t)
            txtime = 0 if t <= now else now_ns + int((t - now) * 1e9)  # the pacer's slot, on the pacer's clock
            for data, addr in datagrams:
                sendto(data, addr, txtime=txtime, ecn=self.send_ecn)
            at = self._quic._pacing_at  # set only when aioquic's pacer held a packet back
            if at is None or at > horizon or (not datagrams and at <= t):
                break
            t = at
        self._arm_timer()

    def _arm_timer(self) -> None:
        """aioquic's transmit() tail: the connection's next timer (losses,
        ACKs, idle; pacing only past the horizon)."""
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at


class BurstQuicProtocol(QuicConnectionProtocol):
    """aioquic's connection protocol, taking a burst at a time on burstio.

    aioquic's ``datagram_received`` processes events and calls
    ``transmit()`` after every datagram; here a burst is received first and
    then processed and answered once (one ACK for the burst, as GRO lets a
    TCP receiver do). On other transports, ``datagram_received`` works as
    aioquic wrote it."""

    @property
    def ecn_counts(self) -> Counter[int]:
        """Received datagrams by ECN codepoint (with ``ecn`` on): {0: Not-ECT,
        1: ECT(1), 2: ECT(0), 3: CE}. aioquic cannot use them."""
        counts: Counter[int] = self.__dict__.setdefault("_ecn_counts", Counter())
        return counts

    def datagrams_received(self, batch: PacketBatch) -> None:
        self.datagrams = getattr(self, "datagrams", 0) + len(batch)
        if batch.has_metadata:
            self.ecn_counts.update(batch.ecn[:len(batch)])
        now = self._loop.time()
        receive = self._quic.receive_datagram
        addrs = batch.addresses()
        for i in range(len(batch)):
            receive(bytes(batch[i]), addrs[i], now=now)
        self._process_events()
        self.transmit()


class H3Client(QuicConnectionProtocol):
    """``await client.get(authority, path)`` -> (status, body bytes received).
    Set ``on_data(stream_id, data)`` to see the body as it arrives."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._requests: dict[int, list[Any]] = {}  # stream id: [future, status, bytes received]
        self.datagrams = 0  # received, counted the same way whatever the transport
        self.on_data: Callable[[int, bytes], object] | None = None

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self.datagrams += 1
        super().datagram_received(data, addr)

    async def get(self, authority: str, path: str) -> tuple[int, int]:
        stream_id = self._quic.get_next_available_stream_id()
        done: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        self._requests[stream_id] = [done, 0, 0]
        self._http.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"),
                                            (b":authority", authority.encode()),
                                            (b":path", path.encode())], end_stream=True)
        self.transmit()
        return await done

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self._http.handle_event(event):
            stream_id: int = getattr(h3_event, "stream_id", -1)
            req = self._requests.get(stream_id)
            if req is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                req[1] = int(dict(h3_event.headers).get(b":status", b"0"))
            elif isinstance(h3_event, DataReceived):
                req[2] += len(h3_event.data)
                if self.on_data is not None:
                    self.on_data(h3_event.stream_id, h3_event.data)
            if getattr(h3_event, "stream_ended", False):
                del self._requests[stream_id]
                if not req[0].done():
                    req[0].set_result((req[1], req[2]))


class BurstH3Client(BurstQuicProtocol, H3Client):
    """H3Client taking bursts (``BurstQuicProtocol``)."""


class PacedH3Server(BurstPacing, H3Server):
    """H3Server whose pacing burstio's pacer thread releases (``BurstPacing``)."""


def self_signed_certificate(directory: str, host: str = "localhost") -> tuple[str, str]:
    """Write a throw-away certificate and key for ``host`` (and 127.0.0.1,
    ::1) into ``directory``; returns (certfile, keyfile)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    alt = x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7)).add_extension(alt, critical=False)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(certfile, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyfile, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return certfile, keyfile


def server_configuration(certfile: str, keyfile: str, **kwargs: Any) -> QuicConfiguration:
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, **kwargs)
    config.load_cert_chain(certfile, keyfile)
    return config


def client_configuration(**kwargs: Any) -> QuicConfiguration:
    """A client configuration that accepts the throw-away certificate."""
    return QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE, **kwargs)


async def serve_h3(host: str, port: int, configuration: QuicConfiguration, transport: str = "burstio",
                   protocol: type[H3Server] | None = None, **options: Any) -> QuicServer:
    """aioquic's ``serve()`` with ``protocol`` (default ``H3Server``, or
    ``PacedH3Server`` over "burstio-paced") over the chosen transport."""
    use_transport(transport, **options)
    if protocol is None:
        protocol = PacedH3Server if transport == "burstio-paced" else H3Server
    return await serve(host, port, configuration=configuration, create_protocol=protocol)


@contextlib.asynccontextmanager
async def connect_h3(host: str, port: int, configuration: QuicConfiguration | None = None,
                     transport: str = "burstio", protocol: type[H3Client] | None = None,
                     **options: Any) -> AsyncIterator[H3Client]:
    """aioquic's ``connect()`` with an HTTP/3 client protocol (default:
    ``BurstH3Client`` over burstio, ``H3Client`` over asyncio) over the
    chosen transport."""
    use_transport(transport, **options)
    if protocol is None:
        protocol = BurstH3Client if transport.startswith("burstio") else H3Client
    async with connect(host, port, configuration=configuration or client_configuration(),
                       create_protocol=protocol) as client:
        yield cast(H3Client, client)  # made by `protocol`


# ---- command line -----------------------------------------------------------


async def _serve_main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="burstio-quic-") as tmp:
        certfile, keyfile = (args.cert, args.key) if args.cert else self_signed_certificate(tmp)
        server = await serve_h3(args.host, args.port, server_configuration(certfile, keyfile),
                                args.transport)
    print(f"HTTP/3 on {args.host}:{args.port} over {args.transport}", flush=True)
    try:
        await until_signalled()
    finally:
        server.close()


async def _get_main(args: argparse.Namespace) -> None:
    url = urlparse(args.url)
    async with connect_h3(url.hostname, url.port or 443, transport=args.transport, gro=True) as client:
        t0 = time.perf_counter()
        status, size = await client.get(url.netloc, url.path or "/")
        wall = time.perf_counter() - t0
    print(f"{status} {size} bytes in {wall:.3f} s ({size * 8 / wall / 1e6:.1f} Mbit/s) over {args.transport}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m burstio.apps.quic", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="HTTP/3 server: GET /bytes/N")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=4433)
    s.add_argument("--cert", help="certificate (PEM; default: a throw-away self-signed one)")
    s.add_argument("--key", help="private key (PEM)")
    s.add_argument("--transport", choices=TRANSPORTS, default="burstio")
    g = sub.add_parser("get", help="HTTP/3 GET, prints status, size and rate")
    g.add_argument("url")
    g.add_argument("--transport", choices=TRANSPORTS, default="burstio")
    args = ap.parse_args(argv)
    asyncio.run(_serve_main(args) if args.command == "serve" else _get_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
