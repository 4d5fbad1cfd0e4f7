"""Per-datagram metadata and paced sends across a veth, in the lab (two
namespaces, removed after each test whether it passes or not): a
multi-homed server's replies, ECN codepoints, EMSGSIZE with the path MTU
on a small-MTU link, and a pacer meeting a full socket.

Each test runs every BurstSocket variant (support.variants.UDP) that can
run here against the one lab it made.
"""
from __future__ import annotations

import contextlib
import errno
import subprocess
import time

import pytest

import burstio
from burstio import PacketBatch, SendError
from support.variants import UDP, runnable, variant_env

ECT1, ECT0, CE = 1, 2, 3


def v6_prefix(lab) -> str:
    """A ULA /64 of this lab's own (from its IPv4 subnet)."""
    _a, b, c = lab.subnet.split(".")
    return f"fd00:{int(b):x}:{int(c):x}::"


def ip(lab, side: str, *args: str) -> None:
    subprocess.run(lab.command(side, ["ip", *args]), check=True, capture_output=True, text=True)


def add_addresses(lab) -> dict[str, list[str]]:
    """Two IPv4 and two IPv6 addresses on b's veth, one of each on a's."""
    p = v6_prefix(lab)
    ip(lab, "b", "addr", "add", f"{lab.subnet}.3/24", "dev", lab.dev["b"])
    for side, hosts in (("a", ["1"]), ("b", ["2", "3"])):
        for h in hosts:
            ip(lab, side, "-6", "addr", "add", f"{p}{h}/64", "dev", lab.dev[side], "nodad")
    return {"v4": [f"{lab.subnet}.2", f"{lab.subnet}.3"], "v6": [f"{p}2", f"{p}3"]}


@contextlib.contextmanager
def closing(*socks):
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def receive(sock: burstio.BurstSocket, expect: int) -> list[tuple]:
    """(payload, peer host, local address, ecn) of ``expect`` datagrams."""
    batch = PacketBatch(16, 2048)
    got: list[tuple] = []
    while len(got) < expect and sock.recv_batch(batch, 5.0):
        got += [(bytes(batch[i]), batch.addr(i)[0], batch.local_addr(i), batch.ecn[i]) for i in range(len(batch))]
    return got


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_wildcard_server_replies_from_the_address_each_request_came_to(burstio_lab, family):
    lab = burstio_lab
    hosts = add_addresses(lab)[family]
    wildcard, client_host = ("0.0.0.0", lab.addr("a")) if family == "v4" else ("::", f"{v6_prefix(lab)}1")
    for variant in runnable(UDP):
        with variant_env(variant):
            with lab.inside("b"):
                server = burstio.BurstSocket.bind((wildcard, 0), pktinfo=True, **variant.kwargs)
            with lab.inside("a"):
                client = burstio.BurstSocket.bind((client_host, 0), **variant.kwargs)
        with closing(server, client):
            port = server.getsockname()[1]
            out = PacketBatch(4, 64)
            for h in hosts:
                out.append(h.encode(), (h, port))
            assert client.send_batch(out) == 2
            batch = PacketBatch(8, 256)
            got = []
            while len(got) < 2 and server.recv_batch(batch, 5.0):
                got += [(bytes(batch[i]).decode(), batch.local_addr(i)) for i in range(len(batch))]
                assert all(batch.ifindexes[i] > 0 for i in range(len(batch)))
                server.send_batch(batch)  # echoed: each reply from where its request arrived
            assert sorted(got) == [(h, h) for h in hosts], variant.name
            replies = receive(client, 2)
            # what the client sees: the source of each reply is the address it asked
            assert sorted((p.decode(), src) for p, src, _l, _e in replies) == [(h, h) for h in hosts], variant.name


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_ecn_codepoints_cross_the_veth(burstio_lab, family):
    lab = burstio_lab
    add_addresses(lab)
    src, dst = (lab.addr("a"), lab.addr("b")) if family == "v4" else (f"{v6_prefix(lab)}1", f"{v6_prefix(lab)}2")
    for variant in runnable(UDP):
        with variant_env(variant) as caps:
            if not caps.ecn:
                pytest.skip(f"kernel lacks ecn: {caps['ecn'].detail}")
            with lab.inside("b"):
                rx = burstio.BurstSocket.bind((dst, 0), ecn=True, **variant.kwargs)
            with lab.inside("a"):
                tx = burstio.BurstSocket.bind((src, 0), **variant.kwargs)
        with closing(rx, tx):
            out = PacketBatch(8, 64)
            for cp in (ECT0, ECT1, CE, 0):
                out.append(bytes([cp]), rx.getsockname(), ecn=cp)
            assert tx.send_batch(out) == 4
            assert [(p[0], e) for p, _s, _l, e in receive(rx, 4)] == [(cp, cp) for cp in (ECT0, ECT1, CE, 0)], \
                variant.name


@pytest.mark.burstio_lab(mtu=1280)
@pytest.mark.parametrize("family", ["v4", "v6"])
def test_emsgsize_reports_the_path_mtu(burstio_lab, family):
    """Don't-fragment on a 1280-byte link: a larger datagram fails with
    EMSGSIZE, per datagram, and the path MTU comes with it; without it,
    IPv4 fragments and the datagram arrives."""
    lab = burstio_lab
    add_addresses(lab)
    src, dst = (lab.addr("a"), lab.addr("b")) if family == "v4" else (f"{v6_prefix(lab)}1", f"{v6_prefix(lab)}2")
    for variant in runnable(UDP):
        with variant_env(variant):
            with lab.inside("b"):
                rx = burstio.BurstSocket.bind((dst, 0), rcvbuf=1 << 20, **variant.kwargs)
            with lab.inside("a"):
                tx = burstio.BurstSocket.bind((src, 0), dont_fragment=True, **variant.kwargs)
                paced = burstio.BurstSocket.bind((src, 0), dont_fragment=True, paced=True, **variant.kwargs)
                plain = burstio.BurstSocket.bind((src, 0), **variant.kwargs)
        with closing(rx, tx, paced, plain):
            dest = rx.getsockname()
            out = PacketBatch(8, 2048)
            for n in (100, 1400, 1400, 200):
                out.append(b"m" * n, dest)
            with pytest.raises(SendError) as ei:
                tx.send_batch(out)
            assert (ei.value.errno, ei.value.index, ei.value.sent, ei.value.mtu) == (errno.EMSGSIZE, 1, 1, 1280)
            assert "path MTU 1280" in str(ei.value)
            assert tx.send_batch(out, on_error="skip") == 4
            assert out.send_errors() == [(1, errno.EMSGSIZE), (2, errno.EMSGSIZE)]
            assert tx.path_mtu(dest) == 1280  # unconnected: asked in the socket's namespace
            tx.connect(dest)
            assert tx.path_mtu() == 1280  # connected: IP_MTU / IPV6_MTU
            paced.send_batch(out)
            assert paced.flush(10.0)
            assert [(e.sequence, e.errno, e.mtu) for e in paced.paced_errors()] == \
                [(1, errno.EMSGSIZE, 1280), (2, errno.EMSGSIZE, 1280)]
            got = receive(rx, 5)  # what fits: the raised send's first, then the skipping and the paced ones
            assert [len(p) for p, *_ in got] == [100, 100, 200, 100, 200], variant.name
            if family == "v4":  # no DF: the kernel fragments, the datagram arrives
                big = PacketBatch(1, 2048)
                big.append(b"f" * 1400, dest)
                assert plain.send_batch(big) == 1
                assert [len(p) for p, *_ in receive(rx, 1)] == [1400]


def test_pacer_waits_for_a_full_socket_without_spinning(burstio_lab):
    """A tbf qdisc holds what a tiny send buffer lets through: the pacer's
    sends meet EAGAIN; it waits for POLLOUT and sends everything, in order."""
    lab = burstio_lab
    r = subprocess.run(lab.command("a", ["tc", "qdisc", "add", "dev", lab.dev["a"], "root", "tbf", "rate", "2mbit",
                                         "burst", "3000", "limit", "1000000"]), capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no tbf qdisc here: {r.stderr.strip()}")
    count = 60
    for variant in runnable(UDP):
        with variant_env(variant):
            with lab.inside("b"):
                rx = burstio.BurstSocket.bind((lab.addr("b"), 0), rcvbuf=1 << 20, **variant.kwargs)
            with lab.inside("a"):
                tx = burstio.BurstSocket.bind((lab.addr("a"), 0), sndbuf=4096, paced=True, gso=False,
                                              **variant.kwargs)
        with closing(rx, tx):
            out = PacketBatch(count, 2048)
            now = time.monotonic_ns()
            for i in range(count):
                out.append(b"%03d" % i + b"w" * 900, rx.getsockname(), txtime=now if i % 2 else 0)
            assert tx.send_batch(out) == count
            assert tx.flush(60.0)
            assert [p[:3] for p, *_ in receive(rx, count)] == [b"%03d" % i for i in range(count)], variant.name
            c = tx.counters
            assert c["paced_waits"] >= 1, variant.name
            assert c["tx_syscalls"] <= 2 * (count + c["paced_waits"]), (variant.name, c)
