"""The DNS responder (burstio.apps.dns): its answers, checked with dnspython,
and its servers on every transport, checked with a burst of real queries and
(when installed) with the real dnsperf client."""
from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burstio import BurstSocket, PacketBatch
from burstio.aio._transport import BurstDatagramTransport
from burstio.apps.dns import TRANSPORTS, Answers, answer, serve
from support.kernel import require_kernel
from support.loops import run_on_loop
from support.net import V4, free_udp_port
from support.proc import subprocess_env

try:
    import dns.flags
    import dns.message
    import dns.name
    import dns.opcode
    import dns.rcode
    import dns.rdatatype
except ImportError:
    pytest.skip("dnspython is not installed (pip install dnspython)", allow_module_level=True)


def ask(qname: str, rdtype: str, **kw) -> tuple[dns.message.Message, dns.message.Message]:
    q = dns.message.make_query(qname, rdtype, **kw)
    wire = answer(q.to_wire())
    assert wire is not None
    return q, dns.message.from_wire(wire)


# ---- answers -------------------------------------------------------------------------


@pytest.mark.parametrize("rdtype, expect", [("A", "192.0.2.1"), ("AAAA", "2001:db8::1")])
def test_address_queries_get_the_fixed_answer(rdtype, expect):
    q, r = ask("www.example.com", rdtype)
    assert q.is_response(r) and r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.QR and r.flags & dns.flags.AA and r.flags & dns.flags.RD
    assert [str(rr) for rrset in r.answer for rr in rrset] == [expect]
    assert r.answer[0].name == q.question[0].name and r.answer[0].ttl == 300
    assert r.edns < 0  # no OPT asked, none given


def test_other_types_get_an_empty_answer():
    q, r = ask("example.com", "MX")
    assert q.is_response(r) and r.rcode() == dns.rcode.NOERROR and r.answer == []


def test_edns_query_gets_an_opt_record():
    q, r = ask("example.com", "A", use_edns=0, payload=4096)
    assert q.is_response(r) and r.edns == 0 and r.payload == 1232
    assert [str(rr) for rrset in r.answer for rr in rrset] == ["192.0.2.1"]


def test_configured_answers():
    q = dns.message.make_query("a.test", "A")
    r = dns.message.from_wire(answer(q.to_wire(), Answers(a="10.1.2.3", ttl=5)))
    assert [str(rr) for rrset in r.answer for rr in rrset] == ["10.1.2.3"] and r.answer[0].ttl == 5


def test_not_a_standard_query_is_not_implemented():
    q = dns.message.make_query("example.com", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    r = dns.message.from_wire(answer(q.to_wire()))
    assert r.id == q.id and r.rcode() == dns.rcode.NOTIMP and r.opcode() == dns.opcode.NOTIFY


@pytest.mark.parametrize("wire", [
    struct.pack("!HHHHHH", 7, 0x0100, 2, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01" * 2,  # two questions
    struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01a\x00\x00\x01",            # cut short
    struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",     # a pointer
    struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x05ab",                        # label past the end
], ids=["two-questions", "truncated", "pointer", "label-overrun"])
def test_malformed_queries_get_formerr(wire):
    r = dns.message.from_wire(answer(wire))
    assert r.id == 7 and r.rcode() == dns.rcode.FORMERR


def _question(*labels: bytes, qtype: int = 1) -> bytes:
    """A one-question query, its name built from raw labels (no limits checked)."""
    name = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)


def test_names_at_the_rfc_1035_limits():
    """A label of 63 octets and a name of 255 octets on the wire (length
    bytes and the final zero included) are answered; one octet more is a
    FORMERR, not a NOERROR echoing a name no resolver could send."""
    longest = [b"a" * 63] * 3 + [b"b" * 61]  # 3 * 64 + 62 + 1 = 255 octets
    r = dns.message.from_wire(answer(_question(*longest)))
    assert r.rcode() == dns.rcode.NOERROR and len(r.question[0].name.to_wire()) == 255
    assert [str(rr) for rrset in r.answer for rr in rrset] == ["192.0.2.1"]
    for too_long in ([b"a" * 63] * 3 + [b"b" * 62],    # 256 octets
                     [b"a" * 63] * 4 + [b"c"],          # 259
                     [b"x"] * 128):                     # 257, in short labels
        reply = answer(_question(*too_long))
        assert reply is not None and reply[3] & 0x0F == dns.rcode.FORMERR and reply[:2] == b"\x00\x07"
    # a length byte of 64 or more is not a label (0x40, 0x80: unknown types; 0xC0: a pointer)
    for first in (64, 0x80, 0xC0):
        wire = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + bytes([first]) + b"a" * 70 + b"\x00\x00\x01\x00\x01"
        assert answer(wire)[3] & 0x0F == dns.rcode.FORMERR


@pytest.mark.parametrize("wire", [b"", b"\x00" * 11, struct.pack("!HHHHHH", 7, 0x8000, 0, 0, 0, 0)],
                         ids=["empty", "short", "a-response"])
def test_no_answer_to_what_is_not_a_query(wire):
    assert answer(wire) is None


@settings(max_examples=150, deadline=None)
@given(labels=st.lists(st.binary(min_size=1, max_size=20), min_size=0, max_size=5),
       rdtype=st.sampled_from(["A", "AAAA", "TXT", "MX", "NS", "SOA", "ANY"]),
       rd=st.booleans(), qid=st.integers(0, 65535))
def test_any_question_is_echoed_and_answered(labels, rdtype, rd, qid):
    name = dns.name.Name([*labels, b""])
    q = dns.message.make_query(name, rdtype, id=qid)
    if not rd:
        q.flags &= ~dns.flags.RD
    r = dns.message.from_wire(answer(q.to_wire()))
    assert q.is_response(r) and r.question == q.question
    assert bool(r.flags & dns.flags.RD) == rd
    want = {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]}.get(rdtype, [])
    assert [str(rr) for rrset in r.answer for rr in rrset] == want


# ---- servers ---------------------------------------------------------------------------


def _run(loop_kind: str, coro_fn):
    return run_on_loop(loop_kind, coro_fn, 20)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_answers_a_burst_from_several_clients(transport, loop_kind):
    async def go():
        loop = asyncio.get_running_loop()
        t, p = await serve(V4, 0, transport)
        addr = t.get_extra_info("sockname")
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        queries = {}
        for i in range(90):
            q = dns.message.make_query(f"h{i}.example.com", "AAAA" if i % 2 else "A", id=i)
            queries[i] = q
            clients[i % 3].sendto(q.to_wire(), addr)
        answers = {}
        for c in clients:
            c.setblocking(False)
            for _ in range(30):
                r = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(c, 4096), 5))
                answers[r.id] = (r, c)
        kind = type(t)
        t.close()
        for c in clients:
            c.close()
        return queries, answers, kind, p.queries

    queries, answers, kind, counted = _run(loop_kind, go)
    assert sorted(answers) == list(range(90)) and counted == 90
    for i, (r, _) in answers.items():
        assert queries[i].is_response(r)
        assert [str(rr) for rrset in r.answer for rr in rrset] == ["2001:db8::1" if i % 2 else "192.0.2.1"]
    assert (kind is BurstDatagramTransport) == (transport != "asyncio")


@pytest.mark.parametrize("options", [{}, {"pktinfo": True}], ids=["in-place", "pktinfo"])
def test_batch_responder_answers_queries_and_ignores_the_rest_of_a_burst(options):
    """One burst holding queries, a response and runts: every query is answered
    (written over itself in the batch, or, with per-datagram metadata, sent
    one at a time), the rest gets nothing, and all are counted."""
    async def go():
        loop = asyncio.get_running_loop()
        t, p = await serve(V4, 0, "burstio", **options)
        addr = t.get_extra_info("sockname")
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        junk = iter([b"", b"\x00" * 11, struct.pack("!HHHHHH", 9, 0x8000, 0, 0, 0, 0)])  # runts, a response
        queries: dict[int, dns.message.Message] = {}
        for i in range(12):  # sent before the loop polls the socket: one burst
            c = clients[i % 2]
            if i % 4 == 3:
                c.sendto(next(junk), addr)
            else:
                queries[i] = dns.message.make_query(f"n{i}.example.com", "AAAA" if i % 2 else "A", id=i)
                c.sendto(queries[i].to_wire(), addr)
        answers, last = {}, []
        for k, c in enumerate(clients):
            c.setblocking(False)
            for _ in range(sum(i % 2 == k for i in queries)):
                r = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(c, 4096), 5))
                answers[r.id] = r
            # one more query: its answer is the next datagram (nothing answered the junk)
            c.sendto(dns.message.make_query("last.example.com", "A", id=100 + k).to_wire(), addr)
            last.append(dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(c, 4096), 5)).id)
        t.close()
        for c in clients:
            c.close()
        return queries, answers, last, p.queries

    queries, answers, last, counted = _run("asyncio", go)
    assert sorted(answers) == sorted(queries) and last == [100, 101] and counted == 14
    for i, r in answers.items():
        assert queries[i].is_response(r)
        assert [str(rr) for rrset in r.answer for rr in rrset] == ["2001:db8::1" if i % 2 else "192.0.2.1"]


def test_batch_responder_answers_a_gro_coalesced_burst():
    """Queries coalesced into one receive (GRO) share a slot: each answer,
    longer than its query, would overwrite the next query, so these are
    answered one sendto at a time; every answer is right."""
    require_kernel("udp_gro")

    async def go():
        loop = asyncio.get_running_loop()
        t, p = await serve(V4, 0, "burstio", gro=True)
        client = BurstSocket.bind((V4, 0))
        wires = [dns.message.make_query(f"n{i}.example.com", "AAAA" if i % 2 else "A", id=i).to_wire()
                 for i in range(10, 18)]  # one size: one GSO send, one GRO receive
        client.send_segments(b"".join(wires), len(wires[0]), t.get_extra_info("sockname"))
        batch = PacketBatch(16, 2048)
        answers = {}
        while len(answers) < len(wires):
            for k in range(await asyncio.wait_for(loop.run_in_executor(None, client.recv_batch, batch, 5), 10)):
                r = dns.message.from_wire(bytes(batch[k]))
                answers[r.id] = r
        gro = t.get_extra_info("burst_socket").counters["rx_gro_messages"]
        t.close()
        client.close()
        return answers, gro, p.queries

    answers, gro, counted = _run("asyncio", go)
    assert sorted(answers) == list(range(10, 18)) and counted == 8 and gro >= 1
    for i, r in answers.items():
        assert r.question[0].name.to_text() == f"n{i}.example.com."
        assert [str(rr) for rrset in r.answer for rr in rrset] == ["2001:db8::1" if i % 2 else "192.0.2.1"]


def test_serve_refuses_an_unknown_transport():
    async def go():
        with pytest.raises(ValueError, match="transport must be one of"):
            await serve(V4, 0, "tcp")
    _run("asyncio", go)


@pytest.mark.skipif(shutil.which("dnsperf") is None, reason="dnsperf is not installed (Debian: apt install dnsperf)")
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dnsperf_gets_every_answer(transport, tmp_path):
    """The real client: each query of the file once (-n 1), every one answered NOERROR."""
    port = free_udp_port()
    names = tmp_path / "queries.txt"
    names.write_text("".join(f"q{i}.example.com {'AAAA' if i % 4 == 0 else 'A'}\n" for i in range(2000)))
    server = subprocess.Popen([sys.executable, "-m", "burstio.apps.dns", "--port", str(port), "--transport",
                               transport], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env())
    try:
        assert "DNS responder" in server.stdout.readline()
        r = subprocess.run(["dnsperf", "-s", V4, "-p", str(port), "-d", str(names), "-n", "1", "-q", "100",
                            "-t", "5"], capture_output=True, text=True, timeout=60)
    finally:
        server.terminate()
        out, err = server.communicate(timeout=10)
    assert r.returncode == 0, r.stderr
    assert re.search(r"Queries sent:\s+2000\b", r.stdout), r.stdout
    assert re.search(r"Queries completed:\s+2000\b", r.stdout), r.stdout
    assert re.search(r"Response codes:\s+NOERROR 2000 \(100\.00%\)", r.stdout), r.stdout
    assert "answered 2000 queries" in out, err
