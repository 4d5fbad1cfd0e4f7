"""aioquic (from PyPI, unmodified) over burstio's transport: HTTP/3 round trips.

Server and client run in this process on one loop, each end over asyncio's
transport or burstio's (``burstio.aio.install``), on asyncio's loop and on
uvloop. Downloads are checked byte for byte. Skipped, saying why, without
aioquic.
"""
from __future__ import annotations

import hashlib
import select

import pytest

import burstio.aio
from burstio.aio._transport import BurstDatagramTransport
from support.loops import run_on_loop
from support.net import V4

try:
    import aioquic  # noqa: F401 - imported only to learn whether it is installed
except ImportError:
    pytest.skip("aioquic is not installed (pip install aioquic)", allow_module_level=True)

from burstio.apps import quic


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return quic.self_signed_certificate(str(tmp_path_factory.mktemp("quic-cert")))


def _counting(base):
    """The client protocol, counting the bursts it is given."""
    class Counting(base):
        bursts = 0

        def datagrams_received(self, batch):
            self.bursts += 1
            super().datagrams_received(batch)
    if not hasattr(base, "datagrams_received"):
        del Counting.datagrams_received
    return Counting


def run(loop_kind: str, coro_fn):
    return run_on_loop(loop_kind, coro_fn, 60)


async def _download(certificate, server_transport, client_transport, client_base, sizes):
    config = quic.server_configuration(*certificate)
    server = await quic.serve_h3(V4, 0, config, server_transport)
    port = server._transport.get_extra_info("sockname")[1]
    server_kind = type(server._transport)
    burstio.aio.uninstall()  # the client decides for itself
    results = []
    async with quic.connect_h3(V4, port, transport=client_transport, protocol=_counting(client_base),
                               gro=True) as client:
        client_kind = type(client._transport)
        digests: dict = {}
        client.on_data = lambda stream, data: digests.setdefault(stream, hashlib.sha256()).update(data)
        for size in sizes:
            stream = client._quic.get_next_available_stream_id()
            status, got = await client.get(V4, f"/bytes/{size}")
            digest = digests.get(stream, hashlib.sha256()).hexdigest()
            results.append((status, got, digest == hashlib.sha256(quic.body(size)).hexdigest()))
        status, _ = await client.get(V4, "/nothing")
        bursts = client.bursts
        received = client.datagrams
    server.close()
    return results, status, server_kind, client_kind, bursts, received


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("server_transport, client_transport", [
    ("burstio", "burstio"), ("asyncio", "burstio"), ("burstio", "asyncio")])
def test_http3_download_over_burstio(certificate, loop_kind, server_transport, client_transport):
    sizes = [0, 1, 100_000, 3_000_000]
    out = run(loop_kind, lambda: _download(certificate, server_transport, client_transport,
                                           quic.H3Client, sizes))
    results, status404, server_kind, client_kind, bursts, received = out
    assert results == [(200, n, True) for n in sizes]
    assert status404 == 404
    assert (server_kind is BurstDatagramTransport) == (server_transport == "burstio")
    assert (client_kind is BurstDatagramTransport) == (client_transport == "burstio")
    assert received > 3_000_000 // 1500


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_burst_client_takes_bursts(certificate, loop_kind):
    sizes = [2_000_000, 10]
    out = run(loop_kind, lambda: _download(certificate, "burstio", "burstio", quic.BurstH3Client, sizes))
    results, status404, _, client_kind, bursts, received = out
    assert results == [(200, n, True) for n in sizes] and status404 == 404
    assert client_kind is BurstDatagramTransport
    assert 0 < bursts < received  # several datagrams per call


def test_burst_client_on_the_asyncio_transport_works_per_datagram(certificate):
    out = run("asyncio", lambda: _download(certificate, "asyncio", "asyncio", quic.BurstH3Client, [500_000]))
    results, _, _, client_kind, bursts, received = out
    assert results == [(200, 500_000, True)]
    assert client_kind is not BurstDatagramTransport and bursts == 0 and received > 0


class Holding(quic.BurstH3Client):
    """The burst client, recording where it held reads and what came while they were held."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.holds = 0
        self.bursts_while_held = 0
        self.timer_ran_before_read = 0
        self._held_timer_due = False

    def _hold_reads(self):
        held = self._reads_held
        super()._hold_reads()
        if self._reads_held and not held:
            self.holds += 1
            assert not self._transport.is_reading()

    def _handle_timer(self):
        if self._reads_held:  # the timer reads waited for: is anything waiting in the socket?
            fd = self._transport.get_extra_info("socket").fileno()
            self._held_timer_due = bool(select.select([fd], [], [], 0)[0])
        super()._handle_timer()

    def transmit(self):
        if self._held_timer_due:
            self.timer_ran_before_read += 1  # it sent before what waited was read
            self._held_timer_due = False
        super().transmit()

    def datagrams_received(self, batch):
        self._held_timer_due = False
        if self._reads_held:
            self.bursts_while_held += 1
        super().datagrams_received(batch)


async def _hold_download(certificate, client_protocol, sizes):
    config = quic.server_configuration(*certificate)
    server = await quic.serve_h3(V4, 0, config, "burstio")
    port = server._transport.get_extra_info("sockname")[1]
    burstio.aio.uninstall()
    async with quic.connect_h3(V4, port, transport="burstio", protocol=client_protocol, gro=True) as client:
        results = [await client.get(V4, f"/bytes/{size}") for size in sizes]
        # a request made while reads wait reads again at once, for its answer
        client._transport.pause_reading()
        client._reads_held = True
        client.transmit()
        released = client._transport.is_reading() and not client._reads_held
        out = results, released, client.holds, client.bursts_while_held, client.timer_ran_before_read
    server.close()
    return out


def test_burst_client_holds_reads_until_its_ack_is_due(certificate):
    """Between bursts the client leaves datagrams in the socket until its
    (ACK) timer; nothing is delivered while reads wait; the data that
    waited is read before that timer runs; downloads arrive whole."""
    sizes = [3_000_000, 10, 1_000_000]
    results, released, holds, while_held, timer_first = run(
        "asyncio", lambda: _hold_download(certificate, Holding, sizes))
    assert results == [(200, n) for n in sizes]
    assert holds > 0 and while_held == 0 and timer_first == 0
    assert released


class NotHolding(Holding):
    hold_reads = 0


@pytest.mark.parametrize("loop_kind, protocol", [("asyncio", NotHolding), ("uvloop", Holding)])
def test_burst_client_reads_every_burst_without_hold_reads_or_off_asyncio(certificate, loop_kind, protocol):
    """hold_reads = 0, or a loop that runs a due timer before the socket's
    callback (uvloop): every burst is read as it arrives."""
    results, released, holds, _, _ = run(loop_kind, lambda: _hold_download(certificate, protocol, [2_000_000]))
    assert results == [(200, 2_000_000)]
    assert holds == 0 and released


def test_use_transport_refuses_unknown_names():
    async def go():
        with pytest.raises(ValueError, match="transport must be one of"):
            quic.use_transport("tcp")
    run("asyncio", go)


# ---- pacing handed to burstio, codepoints carried ----------------------------------------------


class MarkingServer(quic.PacedH3Server):
    send_ecn = 2  # ECT(0) on everything the server sends


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_paced_server_hands_its_pacing_to_burstio(certificate, loop_kind):
    """Over "burstio-paced", aioquic's pacer is evaluated ahead and each
    datagram goes to burstio's pacer thread with its release time; the
    download arrives whole; the client counts the codepoints it got."""
    async def main():
        config = quic.server_configuration(*certificate)
        server = await quic.serve_h3(V4, 0, config, "burstio-paced", protocol=MarkingServer)
        transport = server._transport
        bsock = transport.get_extra_info("burst_socket")
        times: list[int] = []
        send = transport.sendto

        def recording(data, addr=None, **kw):
            times.append(kw.get("txtime", 0))
            send(data, addr, **kw)
        transport.sendto = recording
        port = transport.get_extra_info("sockname")[1]
        burstio.aio.uninstall()
        async with quic.connect_h3(V4, port, transport="burstio-paced") as client:
            status, got = await client.get(V4, "/bytes/2000000")
            counts = dict(client.ecn_counts)
            received = client.datagrams
        server.close()
        return status, got, times, bsock, counts, received
    status, got, times, bsock, counts, received = run(loop_kind, main)
    assert (status, got) == (200, 2_000_000)
    assert bsock.pacing == "pacer"
    c = bsock.counters
    assert c["paced_queued"] == len(times) == c["tx_datagrams"] + c["tx_errors"]
    assert any(t > 0 for t in times)  # aioquic's pacer held datagrams back: each went with its release time
    assert sum(counts.values()) == received
    assert counts == ({2: received} if burstio.capabilities().ecn else {0: received})
