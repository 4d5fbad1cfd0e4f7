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
aioquic also stamps the packet sent at t: its RTT samples stay right, to
within half the pacer's ``pacer_slack``, 1 ms by default, by which a
datagram may leave early or late; Chromium's pacer sends what is due
within 1 ms). aioquic
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

    burstio serve quic --port 4433          # or: python -m burstio.apps.quic serve --port 4433
    python -m burstio.apps.quic get https://127.0.0.1:4433/bytes/1000000

``get`` gives up after ``--connect-timeout`` seconds (default 5) without an
answer, and exits with status 1 on an HTTP error status (400 and above).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast
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

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

__all__ = ["H3Server", "H3Client", "BurstQuicProtocol", "BurstH3Client", "BurstPacing", "PacedH3Server",
           "serve_h3", "connect_h3", "server_configuration", "client_configuration", "self_signed_certificate",
           "body", "use_transport", "TRANSPORTS", "add_serve_arguments", "add_get_arguments", "run_serve",
           "run_get", "main"]

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
    """HTTP/3: ``GET /bytes/N`` -> 200 with N bytes (``body(N)``); else 404.
    ``H3Server.requests_served`` counts the requests this process answered."""

    requests_served = 0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._http: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        """Start HTTP/3 once ALPN says h3, then answer its requests."""
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._http = H3Connection(self._quic)
        if self._http is not None:
            for h3_event in self._http.handle_event(event):
                self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived):
            return
        http = cast(H3Connection, self._http)  # made before any HTTP/3 event
        H3Server.requests_served += 1
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
        """Send what aioquic has to send: on a paced burstio transport, every
        datagram its pacer releases within ``pacing_horizon``, each with its
        release time for burstio's pacer thread; elsewhere aioquic's own
        transmit()."""
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
    aioquic wrote it.

    Between bursts it lets datagrams gather in the socket until they are
    due: when, after a burst, the connection's next timer is at most
    ``hold_reads`` seconds ahead (aioquic acknowledges 1 ms after the first
    unacknowledged packet: while data streams in, that ACK is the timer),
    the transport stops reading until the timer fires; then what arrived
    meanwhile is received as one burst and acknowledged by the ACK that was
    due then anyway, and only then does the timer's own work run. The
    receiver wakes at most about twice per ACK instead of once for every datagram
    or two that a peer's small sends bring, and the peer gets fewer, larger
    ACKs. A datagram may wait up to ``hold_reads`` (plus the loop's timer
    granularity, 1 ms on asyncio's loop) before it is processed: a
    ``transmit()`` from elsewhere (a request, whose answer is awaited)
    reads again at once, and ``hold_reads = 0`` reads every burst as it
    arrives. Reads wait only on asyncio's own (selector) loops, which run
    the socket's callback before a timer that is due in the same iteration;
    elsewhere (uvloop runs timers first) every burst is read as it
    arrives."""

    #: seconds: the farthest timer after a burst until which reading waits (0: never waits)
    hold_reads = 0.001
    _reads_held = False

    @property
    def ecn_counts(self) -> Counter[int]:
        """Received datagrams by ECN codepoint (with ``ecn`` on): {0: Not-ECT,
        1: ECT(1), 2: ECT(0), 3: CE}. aioquic cannot use them."""
        counts: Counter[int] = self.__dict__.setdefault("_ecn_counts", Counter())
        return counts

    def datagrams_received(self, batch: PacketBatch) -> None:
        """Feed every datagram of the burst to the connection, then process
        events and transmit once; then let the next datagrams gather until
        the connection's timer, when it is near (``hold_reads``)."""
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
        self._hold_reads()

    def _hold_reads(self) -> None:
        """Stop reading until the connection's timer (armed by transmit())
        when it fires within ``hold_reads``; reading already paused by
        anyone is left alone."""
        at = self._timer_at
        transport = cast(aio.BurstDatagramTransport, self._transport)  # the one that gives bursts
        if (self.hold_reads <= 0 or at is None or self._reads_held or not transport.is_reading()
                or not isinstance(self._loop, asyncio.selector_events.BaseSelectorEventLoop)):
            return
        if 0 < at - self._loop.time() <= self.hold_reads:
            transport.pause_reading()
            self._reads_held = True

    def _release_reads(self) -> None:
        self._reads_held = False
        cast(aio.BurstDatagramTransport, self._transport).resume_reading()  # held only there

    def _handle_timer(self) -> None:
        """The connection's timer: when reading waited for it, read first
        (the loop runs the socket's callback before a due timer) and run
        the timer right after."""
        if self._reads_held:
            self._release_reads()
            self._timer = self._loop.call_at(cast(float, self._timer_at), self._handle_timer)  # armed with it
            return
        super()._handle_timer()

    def transmit(self) -> None:
        """aioquic's transmit(); one made while reading waits (a request,
        say) reads again at once, for the answer."""
        super().transmit()
        if self._reads_held:
            self._release_reads()


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
        """Count the datagram and hand it to aioquic."""
        self.datagrams += 1
        super().datagram_received(data, addr)

    async def get(self, authority: str, path: str) -> tuple[int, int]:
        """GET ``path`` from ``authority``; returns (status, body bytes received)."""
        stream_id = self._quic.get_next_available_stream_id()
        done: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        self._requests[stream_id] = [done, 0, 0]
        self._http.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"),
                                            (b":authority", authority.encode()),
                                            (b":path", path.encode())], end_stream=True)
        self.transmit()
        return await done

    def quic_event_received(self, event: QuicEvent) -> None:
        """Track each request's status and body as HTTP/3 events arrive."""
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
    """A server configuration for HTTP/3 with this certificate and key."""
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, **kwargs)
    config.load_cert_chain(certfile, keyfile)
    return config


def client_configuration(**kwargs: Any) -> QuicConfiguration:
    """A client configuration that accepts the throw-away certificate."""
    return QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE, **kwargs)


async def serve_h3(host: str, port: int, configuration: QuicConfiguration, transport: str = "burstio",
                   *, sock: socket.socket | None = None, protocol: type[H3Server] | None = None,
                   **options: Any) -> QuicServer:
    """aioquic's ``serve()`` with ``protocol`` (default ``H3Server``, or
    ``PacedH3Server`` over "burstio-paced") over the chosen transport.
    ``sock``: serve on this bound UDP socket instead of binding ``(host, port)``."""
    use_transport(transport, **options)
    if protocol is None:
        protocol = PacedH3Server if transport == "burstio-paced" else H3Server
    if sock is None:
        return await serve(host, port, configuration=configuration, create_protocol=protocol)
    loop = asyncio.get_running_loop()
    create = protocol
    _, server = await loop.create_datagram_endpoint(
        lambda: QuicServer(configuration=configuration, create_protocol=create), sock=sock)
    return server


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


async def _serve_main(args: argparse.Namespace, sock: socket.socket | None = None, stop: Event | None = None,
                      label: str = "") -> None:
    from .._cliargs import bind_failure, say, when_set

    announce = sock is None
    if sock is None:
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((args.host, args.port))
        except OSError as e:
            sock.close()
            raise bind_failure(e, args.host, args.port) from None
    with tempfile.TemporaryDirectory(prefix="burstio-quic-") as tmp:
        certfile, keyfile = (args.cert, args.key) if args.cert else self_signed_certificate(tmp)
        server = await serve_h3(args.host, args.port, server_configuration(certfile, keyfile),
                                args.transport, sock=sock)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    if announce and not args.quiet:
        host, port = sock.getsockname()[:2]
        print(f"HTTP/3 on {host}:{port} over {args.transport}", flush=True)
    if stop is not None:
        when_set(stop, lambda: loop.call_soon_threadsafe(_finish, finished))
    try:
        await asyncio.wait([asyncio.ensure_future(until_signalled()), finished],
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.close()
        if not args.quiet:
            say(f"{label}answered {H3Server.requests_served} requests")


def _finish(f: asyncio.Future[None]) -> None:
    if not f.done():
        f.set_result(None)


async def _get_main(args: argparse.Namespace) -> int:
    from .._cliargs import CommandError

    url = urlparse(args.url)
    host, port = url.hostname or "", url.port or 443
    # aioquic's connect() waits through asyncio.shield(): a handshake given up on leaves a
    # future that later fails with ConnectionError, which no one is left to retrieve
    asyncio.get_running_loop().set_exception_handler(_quiet_abandoned_handshake)
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(args.connect_timeout):
                    client = await stack.enter_async_context(
                        connect_h3(host, port, transport=args.transport, gro=True))
            except TimeoutError:
                raise CommandError(f"no answer from {host}:{port} within {args.connect_timeout:g} s "
                                   "(is an HTTP/3 server there? see --connect-timeout)") from None
            t0 = time.perf_counter()
            status, size = await client.get(url.netloc, url.path or "/")
            wall = time.perf_counter() - t0
    except ConnectionError as e:
        raise CommandError(f"connection to {host}:{port} failed: {e or type(e).__name__}") from None
    except OSError as e:
        raise CommandError(f"cannot reach {host}:{port}: {e.strerror or e}") from None
    rate = f" ({size * 8 / wall / 1e6:.1f} Mbit/s)" if wall > 0 else ""
    print(f"{status} {size} bytes in {wall:.3f} s{rate} over {args.transport}", flush=True)
    if status >= 400:
        raise CommandError(f"HTTP {status} for {args.url}")
    return 0


def _quiet_abandoned_handshake(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if isinstance(context.get("exception"), ConnectionError) and "never retrieved" in context.get("message", ""):
        return
    loop.default_exception_handler(context)


def _https_url(text: str) -> str:
    url = urlparse(text)
    try:
        port = url.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r} (0..65535)") from None
    if url.scheme != "https" or not url.hostname:
        raise argparse.ArgumentTypeError(f"expected https://HOST[:PORT]/PATH, got {text!r}")
    del port
    return text


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``burstio serve quic`` (and ``python -m burstio.apps.quic serve``)."""
    from .._cliargs import add_quic_serve_arguments

    add_quic_serve_arguments(parser)


def add_get_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m burstio.apps.quic get``."""
    from .._cliargs import seconds_arg

    parser.add_argument("url", type=_https_url, help="https://HOST:PORT/bytes/N (the server answers N bytes)")
    parser.add_argument("--transport", choices=TRANSPORTS, default="burstio",
                        help="the loop's datagram transport: asyncio's own, or burstio's (batched)")
    parser.add_argument("--connect-timeout", type=seconds_arg(0), default=5.0,
                        help="seconds to wait for the QUIC handshake before giving up")


def run_serve(args: argparse.Namespace) -> int:
    """Serve with parsed arguments (``add_serve_arguments``) until SIGTERM or Ctrl-C."""
    from .._cliargs import CommandError, serve_workers

    if bool(args.cert) != bool(args.key):
        raise CommandError("--cert and --key go together", 2)
    for path in filter(None, (args.cert, args.key)):
        if not os.path.isfile(path):
            raise CommandError(f"no such file: {path}", 2)
    if args.workers == 1:
        asyncio.run(_serve_main(args))
        return 0

    def worker(index: int, sock: socket.socket, stop: Event) -> None:
        asyncio.run(_serve_main(args, sock, stop, f"worker {index} (pid {os.getpid()}): "))

    return serve_workers(args, f"HTTP/3 ({args.transport})", worker)


def run_get(args: argparse.Namespace) -> int:
    """GET with parsed arguments (``add_get_arguments``): prints status, size and rate; exit
    status 1 on an HTTP error status, or when the server does not answer."""
    return asyncio.run(_get_main(args))


def main(argv: list[str] | None = None) -> int:
    """``python -m burstio.apps.quic serve|get ...``."""
    from .._cliargs import Parser, run_command

    ap = Parser(prog="python -m burstio.apps.quic", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_arguments(sub.add_parser("serve", help="HTTP/3 server: GET /bytes/N answers N bytes",
                                       description="HTTP/3 server: GET /bytes/N answers N bytes, "
                                                   "anything else 404."))
    add_get_arguments(sub.add_parser("get", help="HTTP/3 GET: prints status, size and rate",
                                     description="HTTP/3 GET: prints status, size and rate; exit status 1 "
                                                 "on an HTTP error status or no answer."))
    args = ap.parse_args(argv)
    return run_command(ap.prog, lambda: run_serve(args) if args.command == "serve" else run_get(args))


if __name__ == "__main__":
    sys.exit(main())
