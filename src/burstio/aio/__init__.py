"""burstio for asyncio (and uvloop): a datagram transport that batches underneath.

    transport, protocol = await burstio.aio.create_datagram_endpoint(
        loop, MyProtocol, local_addr=("127.0.0.1", 9000))

The contract is asyncio's: ``connection_made``, ``datagram_received(data,
addr)``, ``error_received(exc)``, ``connection_lost(exc)``,
``transport.sendto(data, addr=None)``, ``get_extra_info``, ``close``,
``abort``, write flow control (``pause_writing``/``resume_writing`` around
``get_write_buffer_size()`` and the high/low water marks). Underneath, a
readiness event drains the socket with one ``recvmmsg`` (up to four while
each fills the batch) and the datagrams a callback sends leave together, in
one ``sendmmsg`` with UDP GSO for runs to one peer (see ``burstio.aio._transport`` for the path of a datagram).

Two additions for code that wants bursts: a protocol with a
``datagrams_received(batch)`` method (``BatchDatagramProtocol``) gets each
burst as one ``PacketBatch``, and ``transport.sendto_many()`` sends many
datagrams, or a whole batch, at once.

``install(loop)`` makes ``loop.create_datagram_endpoint`` use burstio, so
libraries that open their own endpoints (aioquic, ...) run over it unchanged.

Differences from asyncio's transport, all in what asyncio leaves loose:
errors of a datagram reach ``error_received`` when its burst is sent (at the
end of the callback or loop iteration), not inside ``sendto``, and what
``error_received`` sends leaves on the next loop iteration; a malformed
address (not a tuple, a bad port) raises from ``sendto`` rather than closing
the transport; an IPv6 socket can send to an IPv4 address (dual stack);
``sendto`` after ``close()`` is dropped, connected or not.
"""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias, TypeVar, cast

from .. import _native
from .._types import Address
from .._udp import PACER_SLACK
from ._transport import BurstDatagramTransport

__all__ = [
    "create_datagram_endpoint",
    "BatchDatagramProtocol",
    "BurstDatagramTransport",
    "install",
    "uninstall",
    "installed",
]

_ENDPOINT_OPTIONS = ("gro", "backend", "rx_slots", "tx_batch", "pktinfo", "ecn", "dont_fragment", "paced",
                     "pacer_queue", "pacer_slack")
_ProtocolT = TypeVar("_ProtocolT", bound=asyncio.BaseProtocol)
#: one getaddrinfo() result: (family, type, proto, canonname, sockaddr)
_AddrInfo: TypeAlias = tuple[int, int, int, str, Any]


class BatchDatagramProtocol(asyncio.DatagramProtocol):
    """A datagram protocol that takes a burst at a time.

    On a burstio transport, ``datagrams_received(batch)`` is called once per
    burst with the transport's ``PacketBatch``: ``batch[i]`` (a memoryview),
    ``batch.addr(i)``, the metadata arrays (with ``pktinfo``/``ecn`` on,
    ``batch.local_addr(i)``, ``batch.ifindexes``, ``batch.ecn``). The batch is
    reused for the next burst, so copy what you keep. Answer with ``transport.sendto()`` per
    datagram, or change the batch in place and ``transport.sendto_many(batch)``.

    Other transports (asyncio's, uvloop's) call ``datagram_received(data,
    addr)`` instead, so a protocol meant to run on both implements both. The
    default ``datagrams_received`` here calls ``datagram_received`` for each
    entry.
    """

    def datagrams_received(self, batch: _native.PacketBatch) -> None:
        """Called with each received burst (a PacketBatch, valid during the call);
        this default calls ``datagram_received`` for each entry."""
        addrs = cast("list[Address]", batch.addresses())  # every received datagram has its sender's
        for i in range(len(batch)):
            self.datagram_received(bytes(batch[i]), addrs[i])


async def create_datagram_endpoint(
        loop: asyncio.AbstractEventLoop | None, protocol_factory: Callable[[], _ProtocolT],
        local_addr: tuple[str, int] | None = None, remote_addr: tuple[str, int] | None = None, *,
        family: int = 0, proto: int = 0, flags: int = 0, reuse_port: bool | None = None,
        allow_broadcast: bool | None = None, sock: socket.socket | None = None,
        gro: bool = False, backend: str = "auto", rx_slots: int = 16,
        tx_batch: int = 128, pktinfo: bool = False, ecn: bool = False, dont_fragment: bool = False,
        paced: bool = False, pacer_queue: int = 4096,
        pacer_slack: float = PACER_SLACK) -> tuple[BurstDatagramTransport, _ProtocolT]:
    """Make a UDP endpoint like ``loop.create_datagram_endpoint``, with a
    burstio transport. ``loop`` None means the running loop.

    The asyncio arguments mean what they mean there (IPv4 and IPv6 only).
    burstio's: ``gro`` turns on UDP GRO for the socket (bulk receivers: one
    receive carries up to 64 datagrams of a flow), ``backend`` is
    ``BurstSocket``'s, ``rx_slots`` is how many datagrams one receive takes
    (each slot holds 64 KiB, so any datagram arrives whole), ``tx_batch``
    how many datagrams may wait for the end of a callback before they are
    sent there and then. ``pktinfo``, ``ecn``, ``dont_fragment``, ``paced``,
    ``pacer_queue`` and ``pacer_slack`` are BurstSocket's per-datagram options (see
    ``BurstDatagramTransport.sendto`` and ``get_extra_info``).
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    if sock is not None:
        _check_given_socket(sock, local_addr=local_addr, remote_addr=remote_addr, family=family,
                            proto=proto, flags=flags, reuse_port=reuse_port,
                            allow_broadcast=allow_broadcast)
        sock.setblocking(False)
        r_addr = None
    else:
        sock, r_addr = await _open_socket(loop, local_addr, remote_addr, family, proto, flags,
                                          reuse_port, allow_broadcast)
    try:
        protocol = protocol_factory()
        waiter = loop.create_future()
        transport = BurstDatagramTransport(loop, sock, protocol, r_addr, waiter, gro=gro,
                                           backend=backend, rx_slots=rx_slots, tx_batch=tx_batch,
                                           pktinfo=pktinfo, ecn=ecn, dont_fragment=dont_fragment, paced=paced,
                                           pacer_queue=pacer_queue, pacer_slack=pacer_slack)
    except BaseException:
        sock.close()
        raise
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    return transport, protocol


def _check_given_socket(sock: Any, **modifiers: Any) -> None:
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"A UDP Socket was expected, got {sock!r}")
    if any(modifiers.values()):
        problems = ", ".join(f"{k}={v}" for k, v in modifiers.items() if v)
        raise ValueError(f"socket modifier keyword arguments can not be used "
                         f"when sock is specified. ({problems})")
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"burstio endpoints are IPv4 or IPv6 UDP; got a {sock.family.name} socket")


async def _resolve(loop: asyncio.AbstractEventLoop, addr: Any, family: int, proto: int,
                   flags: int) -> Sequence[_AddrInfo]:
    if not (isinstance(addr, tuple) and len(addr) == 2):
        raise TypeError("2-tuple is expected")
    host, port = addr
    try:  # a numeric host needs no lookup (and no executor thread)
        return socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM, proto,
                                  flags | socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM,
                                   proto=proto, flags=flags)
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    return infos


async def _open_socket(loop: asyncio.AbstractEventLoop, local_addr: tuple[str, int] | None,
                       remote_addr: tuple[str, int] | None, family: int, proto: int, flags: int,
                       reuse_port: bool | None, allow_broadcast: bool | None) -> tuple[socket.socket, Address | None]:
    """asyncio's way of making a datagram socket (base_events), for IPv4/IPv6."""
    if family not in (0, socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"burstio endpoints are IPv4 or IPv6 UDP; got family {family!r}")
    if not (local_addr or remote_addr):
        if family == 0:
            raise ValueError("unexpected address family")
        pairs: list[tuple[tuple[int, int], Any]] = [((family, proto), (None, None))]
    else:
        by_family: dict[tuple[int, int], list[Address | None]] = {}
        for idx, addr in ((0, local_addr), (1, remote_addr)):
            if addr is not None:
                for fam, _, pro, _, address in await _resolve(loop, addr, family, proto, flags):
                    by_family.setdefault((fam, pro), [None, None])[idx] = address
        pairs = [(key, pair) for key, pair in by_family.items()
                 if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))]
        if not pairs:
            raise ValueError("can not get address information")
    exceptions = []
    for (fam, pro), (local, remote) in pairs:
        sock = None
        try:
            sock = socket.socket(family=fam, type=socket.SOCK_DGRAM, proto=pro)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if allow_broadcast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setblocking(False)
            if local_addr:
                sock.bind(local)
            if remote_addr:
                if not allow_broadcast:
                    sock.connect(remote)  # UDP: no handshake, never blocks
                return sock, remote
            return sock, None
        except OSError as exc:
            if sock is not None:
                sock.close()
            exceptions.append(exc)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
    raise exceptions[0]


# ---- install: a loop whose create_datagram_endpoint is burstio's ----------


def install(loop: asyncio.AbstractEventLoop | None = None, **options: Any) -> asyncio.AbstractEventLoop:
    """Make ``loop.create_datagram_endpoint`` (the running loop's if None)
    create burstio endpoints, with ``options`` (``gro``, ``backend``,
    ``rx_slots``, ``tx_batch``, ``pktinfo``, ``ecn``, ``dont_fragment``,
    ``paced``, ``pacer_queue``, ``pacer_slack``) as defaults. Libraries that open their own
    endpoints through the loop (aioquic's ``serve``/``connect``, DNS
    clients, ...) then run over burstio unchanged. Endpoints burstio cannot
    serve (AF_UNIX) still get the loop's own transport. Works on asyncio's
    loops and uvloop's. Returns the loop; ``uninstall(loop)`` undoes it."""
    if loop is None:
        loop = asyncio.get_running_loop()
    unknown = sorted(set(options) - set(_ENDPOINT_OPTIONS))
    if unknown:
        raise TypeError(f"install() got unexpected option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(_ENDPOINT_OPTIONS)}")
    current = loop.create_datagram_endpoint
    original = getattr(current, "burstio_original", current)

    async def create(protocol_factory: Callable[[], _ProtocolT], local_addr: Any = None, remote_addr: Any = None,
                     **kwargs: Any) -> tuple[asyncio.DatagramTransport, _ProtocolT]:
        sock = kwargs.get("sock")
        if kwargs.get("family") == getattr(socket, "AF_UNIX", None) or (
                isinstance(sock, socket.socket) and sock.family not in (socket.AF_INET, socket.AF_INET6)):
            return await original(protocol_factory, local_addr, remote_addr, **kwargs)
        return await create_datagram_endpoint(loop, protocol_factory, local_addr, remote_addr,
                                              **{**options, **kwargs})

    # the loop's own method is kept on the function that replaces it (what uninstall undoes)
    create.burstio_original = original  # type: ignore[attr-defined]  # a function attribute
    create.burstio_options = dict(options)  # type: ignore[attr-defined]  # a function attribute
    loop.create_datagram_endpoint = create  # type: ignore[method-assign]  # this loop's, not the class's
    return loop


def uninstall(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Give ``loop`` its own create_datagram_endpoint back."""
    if loop is None:
        loop = asyncio.get_running_loop()
    if hasattr(loop.create_datagram_endpoint, "burstio_original"):
        del loop.create_datagram_endpoint


def installed(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Whether ``install`` routed this loop's datagram endpoints to burstio."""
    if loop is None:
        loop = asyncio.get_running_loop()
    return hasattr(loop.create_datagram_endpoint, "burstio_original")
