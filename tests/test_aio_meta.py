"""burstio.aio and per-datagram metadata: a batch protocol gets the arrays,
a plain protocol reads the datagram's own with get_extra_info inside
datagram_received, sendto takes local_addr/ecn/txtime, and a paced
transport hands its datagrams to the pacer thread (its refusals reach
error_received, a full pacer pauses the protocol, close waits for it).
On asyncio's loop and uvloop's.
"""
from __future__ import annotations

import asyncio
import errno
import socket
import time

import pytest

import burstio
import burstio.aio
from burstio import PacketBatch
from support.loops import run_on_loop
from support.net import force_rcvbuf

LOOPS = pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
ECN = burstio.capabilities().ecn


class Recorder(asyncio.DatagramProtocol):
    """Records (payload, peer, local address, ecn) of each datagram, and errors."""

    def __init__(self):
        self.got: list[tuple] = []
        self.errors: list[OSError] = []
        self.transport = None
        self.lost = asyncio.get_event_loop().create_future()
        self.paused = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        t = self.transport
        self.got.append((data, addr, t.get_extra_info("local_address"), t.get_extra_info("ecn")))

    def error_received(self, exc):
        self.errors.append(exc)

    def pause_writing(self):
        self.paused += 1

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class BatchRecorder(burstio.aio.BatchDatagramProtocol, Recorder):
    def datagrams_received(self, batch):
        self.got += [(bytes(batch[i]), batch.addr(i), batch.local_addr(i), batch.ecn[i]) for i in range(len(batch))]


async def until(pred, limit: float = 5.0) -> None:
    """Let the loop run until pred() holds (at most ``limit`` seconds: a bound, not a measure)."""
    for _ in range(int(limit / 0.005)):
        if pred():
            return
        await asyncio.sleep(0.005)
    assert pred()


@LOOPS
@pytest.mark.parametrize("protocol", [Recorder, BatchRecorder], ids=["datagram", "batch"])
def test_server_answers_from_where_each_request_arrived(loop_kind, protocol):
    async def main():
        loop = asyncio.get_running_loop()
        st, server = await burstio.aio.create_datagram_endpoint(loop, protocol, local_addr=("0.0.0.0", 0),
                                                                pktinfo=True, ecn=True)
        ct, client = await burstio.aio.create_datagram_endpoint(loop, Recorder, local_addr=("127.0.0.1", 0),
                                                                ecn=True)
        port = st.get_extra_info("sockname")[1]
        for host, cp in (("127.0.0.2", 2), ("127.0.0.3", 3)):
            ct.sendto(host.encode(), (host, port), ecn=cp)
        await until(lambda: len(server.got) == 2)
        assert sorted((d, local, e) for d, _a, local, e in server.got) == \
            [(b"127.0.0.2", "127.0.0.2", 2 if ECN else 0), (b"127.0.0.3", "127.0.0.3", 3 if ECN else 0)]
        assert st.get_extra_info("local_address") is None  # outside datagram_received
        for data, addr, local, _e in server.got:
            st.sendto(data, addr, local_addr=local, ecn=1)
        await until(lambda: len(client.got) == 2)
        assert sorted((d, a[0], e) for d, a, _l, e in client.got) == \
            [(b"127.0.0.2", "127.0.0.2", 1 if ECN else 0), (b"127.0.0.3", "127.0.0.3", 1 if ECN else 0)]
        st.close()
        ct.close()
    run_on_loop(loop_kind, main, 20)


@LOOPS
def test_paced_transport_keeps_order_reports_refusals_and_drains_on_close(loop_kind):
    async def main():
        loop = asyncio.get_running_loop()
        rsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        force_rcvbuf(rsock, 8 << 20)
        rsock.bind(("127.0.0.1", 0))
        rt, rx = await burstio.aio.create_datagram_endpoint(loop, Recorder, sock=rsock)
        tt, tx = await burstio.aio.create_datagram_endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), paced=True)
        dest = rt.get_extra_info("sockname")
        bsock = tt.get_extra_info("burst_socket")
        assert bsock.pacing == "pacer"
        now = time.monotonic_ns() + 50_000_000
        count = 5000  # more than the pacer holds (4096): the transport waits for room
        for i in range(count):
            tt.sendto(b"%d" % i, dest, txtime=now + i * 20_000)
        tt.sendto(b"refused", (dest[0], 0))  # port 0: the kernel says EINVAL, asynchronously
        await until(lambda: len(rx.got) == count and tx.errors, 30)
        assert [d for d, *_ in rx.got] == [b"%d" % i for i in range(count)]
        assert [e.errno for e in tx.errors] == [errno.EINVAL] and tx.errors[0].mtu is None
        assert bsock.counters["paced_queued"] == count + 1
        tt.sendto(b"last", dest, txtime=time.monotonic_ns() + 20_000_000)
        tt.close()  # waits for the pacer to drain, then loses the connection
        assert await tx.lost is None
        await until(lambda: len(rx.got) == count + 1)
        assert tt.get_extra_info("burst_socket").unsent == []
        rt.close()
    run_on_loop(loop_kind, main, 60)


@LOOPS
def test_full_pacer_blocks_the_transport_not_the_socket(loop_kind):
    """A full pacer is what the transport waits for (the socket is writable):
    its datagrams count in the write buffer, and abort() drops them."""
    async def main():
        loop = asyncio.get_running_loop()
        tt, tx = await burstio.aio.create_datagram_endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), paced=True,
                                                            pacer_queue=4)
        bsock = tt.get_extra_info("burst_socket")
        later = time.monotonic_ns() + 3600 * 10**9
        for i in range(6):
            tt.sendto(b"w%d" % i, ("127.0.0.1", 9), txtime=later)
        await until(lambda: bsock.pacer_pending == 4 and tt.get_write_buffer_size() > 0)
        assert not loop.remove_writer(bsock.fileno())  # the loop does not watch the (writable) socket
        assert bsock.counters["paced_queued"] == 4 and tt.get_write_buffer_size() > 0
        tt.abort()
        await tx.lost
        assert [u.sequence for u in bsock.unsent] == [0, 1, 2, 3]
    run_on_loop(loop_kind, main, 20)


@LOOPS
def test_abort_drops_what_the_pacer_holds(loop_kind):
    async def main():
        loop = asyncio.get_running_loop()
        tt, tx = await burstio.aio.create_datagram_endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), paced=True)
        bsock = tt.get_extra_info("burst_socket")
        tt.sendto(b"never", ("127.0.0.1", 9), txtime=time.monotonic_ns() + 3600 * 10**9)
        await asyncio.sleep(0)  # the end-of-iteration flush queues it
        await until(lambda: bsock.pacer_pending == 1)
        tt.abort()
        await tx.lost
        assert [(u.sequence, u.length) for u in bsock.unsent] == [(0, 5)]
    run_on_loop(loop_kind, main, 20)


def test_sendto_metadata_checked():
    async def main():
        loop = asyncio.get_running_loop()
        t, _p = await burstio.aio.create_datagram_endpoint(loop, Recorder, local_addr=("127.0.0.1", 0))
        with pytest.raises(ValueError, match="ecn must be between 0 and 3, got 9"):
            t.sendto(b"x", ("127.0.0.1", 9), ecn=9)
        with pytest.raises(ValueError, match="local must be a numeric IPv4 or IPv6 address"):
            t.sendto(b"x", ("127.0.0.1", 9), local_addr="example.org")
        t.close()
    run_on_loop("asyncio", main, 10)


def test_install_passes_the_metadata_options():
    async def main():
        loop = burstio.aio.install(asyncio.get_running_loop(), pktinfo=True)
        try:
            t, p = await loop.create_datagram_endpoint(Recorder, local_addr=("0.0.0.0", 0))
            assert t.get_extra_info("burst_socket").pktinfo
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"hi", ("127.0.0.4", t.get_extra_info("sockname")[1]))
            s.close()
            await until(lambda: p.got)
            assert p.got[0][2] == "127.0.0.4"
            t.close()
        finally:
            burstio.aio.uninstall(loop)
    run_on_loop("asyncio", main, 10)


def test_pacer_slack_reaches_the_pacer():
    """pacer_slack is BurstSocket's: an endpoint option, an install() default,
    checked with the same words."""
    async def main():
        loop = asyncio.get_running_loop()
        t, _p = await burstio.aio.create_datagram_endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), paced=True)
        assert t.get_extra_info("burst_socket")._pacer.slack_ns == 1_000_000  # the default
        t.close()
        t, _p = await burstio.aio.create_datagram_endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), paced=True,
                                                           pacer_slack=0.002)
        assert t.get_extra_info("burst_socket")._pacer.slack_ns == 2_000_000
        t.close()
        with pytest.raises(ValueError, match=r"^pacer_slack must be between 0 and 1 seconds, got -1$"):
            await burstio.aio.create_datagram_endpoint(loop, Recorder, local_addr=("127.0.0.1", 0), paced=True,
                                                       pacer_slack=-1)
        burstio.aio.install(loop, paced=True, pacer_slack=0)
        try:
            t, _p = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
            assert t.get_extra_info("burst_socket")._pacer.slack_ns == 0
            t.close()
        finally:
            burstio.aio.uninstall(loop)
    run_on_loop("asyncio", main, 10)


def test_batch_protocol_batch_has_no_metadata_without_the_options():
    async def main():
        loop = asyncio.get_running_loop()
        seen = []

        class P(burstio.aio.BatchDatagramProtocol):
            def datagrams_received(self, batch: PacketBatch) -> None:
                seen.append(batch.has_metadata)

        t, _p = await burstio.aio.create_datagram_endpoint(loop, P, local_addr=("127.0.0.1", 0))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", t.get_extra_info("sockname"))
        s.close()
        await until(lambda: seen)
        assert seen == [False]
        t.close()
    run_on_loop("asyncio", main, 10)


def test_sendto_many_keeps_the_metadata_of_what_must_wait():
    """A batch sent with sendto_many: what the (full) pacer cannot take now is
    copied to wait, and keeps its codepoint and transmit time."""
    async def main():
        loop = asyncio.get_running_loop()
        rt, rx = await burstio.aio.create_datagram_endpoint(loop, BatchRecorder, local_addr=("127.0.0.1", 0),
                                                            ecn=True)
        tt, _tx = await burstio.aio.create_datagram_endpoint(loop, Recorder, local_addr=("127.0.0.1", 0),
                                                             paced=True, pacer_queue=2)
        soon = time.monotonic_ns() + 200_000_000
        batch = PacketBatch(4, 16)
        for i in range(4):
            batch.append(b"%d" % i, rt.get_extra_info("sockname"), ecn=i, txtime=soon)
        tt.sendto_many(batch)  # the pacer takes two; the other two wait in the transport
        assert tt.get_write_buffer_size() > 0
        batch.clear()  # the caller's batch is theirs again
        await until(lambda: len(rx.got) == 4)
        assert [(d, e) for d, _a, _l, e in rx.got] == [(b"%d" % i, i if ECN else 0) for i in range(4)]
        tt.close()
        rt.close()
    run_on_loop("asyncio", main, 20)
