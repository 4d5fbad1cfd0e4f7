"""The sockperf-compatible server (burstio.apps.sockperf): serve_once by hand on
every BurstSocket variant, the real sockperf client, and the busy-poll-suspend
mode in a burstio lab (root)."""
from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from burstio.apps.sockperf import FLAG_CLIENT, FLAG_PONG_REQUEST, FLAG_WARMUP, HEADER, SUSPEND_NAPI, SockperfServer
from burstio.napi import netdev
from burstio.napi.busypoll import napi_id
from support.kernel import require_kernel
from support.net import V4, free_udp_port, recv_one
from support.paths import ROOT
from support.proc import subprocess_env

SOCKPERF = shutil.which("sockperf") or shutil.which("sockperf", path="/usr/bin")


def message(seq: int, flags: int, size: int = 64) -> bytes:
    head = HEADER.pack(seq, flags, size)
    return head + bytes((seq + i) & 0xFF for i in range(size - len(head)))


def test_header_layout():
    assert HEADER.format == "!QHI" and HEADER.size == 14
    assert (FLAG_CLIENT, FLAG_PONG_REQUEST, FLAG_WARMUP) == (1, 2, 4)
    assert message(1, 3)[8:10] == b"\x00\x03"


# ---- in process -------------------------------------------------------------------


@pytest.fixture
def server(udp_variant):
    """The server on each BurstSocket variant (support.variants.UDP)."""
    s = SockperfServer(V4, 0, batch=16, **udp_variant.kwargs)
    assert s.sock.backend == udp_variant.expect
    yield s
    s.close()


@pytest.fixture
def client():
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind((V4, 0))
    c.settimeout(2.0)
    yield c
    c.close()


def replies(c: socket.socket, expect: int) -> list[bytes]:
    c.settimeout(2.0)
    got = [c.recv(70000) for _ in range(expect)]
    c.settimeout(0.05)
    with contextlib.suppress(TimeoutError):
        got.append(c.recv(70000))  # nothing more may come
    return got


def cleared(msg: bytes) -> bytes:
    seq, flags, size = HEADER.unpack_from(msg)
    return HEADER.pack(seq, flags & ~FLAG_CLIENT, size) + msg[HEADER.size:]


def test_single_pong_request_answered(server, client):
    req = message(7, FLAG_CLIENT | FLAG_PONG_REQUEST)
    client.sendto(req, server.address)
    assert server.serve_once(2.0) == 1
    got = replies(client, 1)
    assert got == [cleared(req)]
    assert HEADER.unpack_from(got[0]) == (7, FLAG_PONG_REQUEST, 64)
    assert (server.requests, server.replies) == (1, 1)


@pytest.mark.parametrize("msg", [
    message(1, FLAG_CLIENT),                    # not a pong request
    message(2, FLAG_CLIENT | FLAG_WARMUP),      # warm-up without pong request
    message(3, FLAG_CLIENT | FLAG_PONG_REQUEST)[:13],  # shorter than the header
    b"\x02" * 10,                               # short, "flag" byte set
    b"",
], ids=["no-request", "warmup-no-request", "13-bytes", "10-bytes", "empty"])
def test_single_message_not_answered(server, client, msg):
    client.sendto(msg, server.address)
    assert server.serve_once(2.0) == 1
    assert replies(client, 0) == []
    assert (server.requests, server.replies) == (1, 0)


def test_burst_answers_only_pong_requests_in_order(server, client):
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind((V4, 0))
    other.settimeout(2.0)
    try:
        sent = [
            (client, message(1, FLAG_CLIENT | FLAG_PONG_REQUEST)),
            (client, message(2, FLAG_CLIENT)),
            (client, message(3, FLAG_CLIENT | FLAG_PONG_REQUEST)[:10]),
            (other, message(4, FLAG_CLIENT | FLAG_PONG_REQUEST | FLAG_WARMUP, 100)),
            (client, message(5, FLAG_CLIENT | FLAG_PONG_REQUEST | FLAG_WARMUP)),
            (client, message(6, FLAG_CLIENT | FLAG_PONG_REQUEST, 14)),
            (other, message(7, FLAG_CLIENT)),
        ]
        for sock, msg in sent:
            sock.sendto(msg, server.address)
        assert server.serve_once(2.0) == len(sent)
        assert replies(client, 3) == [cleared(sent[0][1]), cleared(sent[4][1]), cleared(sent[5][1])]
        assert replies(other, 1) == [cleared(sent[3][1])]
        assert HEADER.unpack_from(cleared(sent[3][1]))[1] == FLAG_PONG_REQUEST | FLAG_WARMUP
        assert (server.requests, server.replies) == (7, 4)
    finally:
        other.close()


def test_serve_once_timeout(server):
    assert server.serve_once(0.01) == 0
    assert (server.requests, server.replies) == (0, 0)


@pytest.mark.parametrize("mechanism", ["auto", "socket", "epoll"])
def test_busy_poll_mode_busy_polls_as_asked(udp_variant, client, mechanism):
    """The busy-poll mode takes busy_poll's "auto" choice, which for the
    server's one socket is the socket (SO_BUSY_POLL), or the mechanism asked
    for; describe() says which, and the server answers while busy polling."""
    require_kernel("epoll_busy_poll" if mechanism == "epoll" else "so_busy_poll")
    s = SockperfServer(V4, 0, batch=16, mode="busy-poll", busy_poll_usecs=20, busy_poll_mechanism=mechanism,
                       **udp_variant.kwargs)
    try:
        assert s.start_busy_poll() == ("socket" if mechanism == "auto" else mechanism)
        assert f"({mechanism}: " in s.sock.describe()
        request = message(7, FLAG_CLIENT | FLAG_PONG_REQUEST)
        client.sendto(request, s.address)
        assert s.serve_once(5.0) == 1
        assert replies(client, 1) == [cleared(request)]
    finally:
        s.close()
    with pytest.raises(ValueError, match="busy_poll_mechanism must be 'auto', 'socket' or 'epoll', got 'io_uring'"):
        SockperfServer(V4, 0, busy_poll_mechanism="io_uring")


def test_serve_sockperf_busy_poll_says_how_it_busy_polls():
    """`burstio serve sockperf --mode busy-poll` busy polls as "auto" chooses
    for its one socket, and its start line says so."""
    require_kernel("so_busy_poll")
    proc = subprocess.Popen([sys.executable, "-m", "burstio", "serve", "sockperf", "--host", V4, "--port", "0",
                             "--mode", "busy-poll", "--busy-poll-usecs", "20"],
                            env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert "busy polling through the socket (SO_BUSY_POLL): 20 us, budget 8, prefer off (auto: one socket" in line, \
        (line, err)
    assert proc.returncode == 0, err


def test_a_stop_right_after_the_start_line_ends_the_server_cleanly():
    """SIGTERM (or Ctrl-C) that arrives just as the start line is written is a stop like any
    other: the closing line, exit status 0 (it used to escape as a KeyboardInterrupt, status
    130 from the command). The signal is made to land there: the start line's print raises."""
    code = (
        "import builtins, sys\n"
        "from burstio.apps import sockperf\n"
        "real = builtins.print\n"
        "def print_then_stop(*a, **k):\n"
        "    real(*a, **k)\n"
        "    if str(a[0]).startswith('burstio sockperf server on'):\n"
        "        raise KeyboardInterrupt\n"
        "builtins.print = print_then_stop\n"
        f"sys.exit(sockperf.main({V4!r}, 0))\n")
    r = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("burstio sockperf server on") and lines[1].startswith("served 0 messages"), lines


# ---- the real sockperf client against `burstio serve sockperf` -----------------------------


@pytest.fixture(scope="module")
def server_process():
    if SOCKPERF is None:
        pytest.skip("sockperf is not installed (Debian: apt-get install sockperf)")
    port = free_udp_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "burstio", "serve", "sockperf", "--host", V4, "--port", str(port), "--quiet"],
        env=subprocess_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = ""
    try:
        wait_until_answering(proc, port)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"server did not stop cleanly on SIGTERM: {err}"


def wait_until_answering(proc: subprocess.Popen, port: int) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.1)
    try:
        for seq in range(300):  # up to ~30 s for the server to start
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early: {proc.communicate()[1]}")
            probe.sendto(message(seq, FLAG_CLIENT | FLAG_PONG_REQUEST), (V4, port))
            try:
                probe.recv(100)
                return
            except TimeoutError:
                time.sleep(0.01)
        raise RuntimeError("server never answered")
    finally:
        probe.close()


def run_sockperf(*args: str) -> str:
    r = subprocess.run([SOCKPERF, *args], capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    return re.sub(r"\x1b\[[0-9;]*m", "", out)  # drop colour codes


def valid_duration(out: str) -> tuple[int, int]:
    m = re.search(r"\[Valid Duration\].*SentMessages=(\d+); ReceivedMessages=(\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_sockperf_ping_pong(server_process):
    out = run_sockperf("pp", "-i", V4, "-p", str(server_process), "-t", "1", "-m", "64")
    sent, received = valid_duration(out)
    assert sent > 0 and received >= sent - 1, out  # every ping got its pong (the last may be in flight)
    assert re.search(r"# dropped messages = 0;", out), out
    assert re.search(r"percentile 50\.000 =\s+[\d.]+", out), out


def test_sockperf_under_load(server_process):
    out = run_sockperf("ul", "-i", V4, "-p", str(server_process), "-t", "1", "-m", "64", "--mps", "2000")
    sent, received = valid_duration(out)
    assert sent > 0 and received > 0, out  # under load only some messages ask for a reply
    assert re.search(r"# dropped messages = 0;", out), out


# ---- busy polling with NAPI suspension, in a lab -------------------------------------


def test_sockperf_server_busy_poll_suspend_tunes_and_restores(burstio_lab):
    require_kernel("so_busy_poll")
    require_kernel("so_prefer_busy_poll")
    lab = burstio_lab
    with lab.inside("b"):
        server = SockperfServer(lab.addr("b"), 0, mode="busy-poll-suspend", busy_poll_usecs=20)
        before = {n.id: n for n in netdev.napi_list(lab.dev["b"])}
    if next(iter(before.values())).defer_hard_irqs is None:
        server.close()
        pytest.skip("no per-NAPI settings (Linux >= 6.13)")
    with lab.inside("a"):
        cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t = threading.Thread(target=server.serve_forever, args=(0.05,))
    t.start()
    try:
        with cli:
            for seq in range(50):
                cli.sendto(HEADER.pack(seq, FLAG_CLIENT | FLAG_PONG_REQUEST, 64) + bytes(50), server.address)
                reply = recv_one(cli)
                assert HEADER.unpack_from(reply) == (seq, FLAG_PONG_REQUEST, 64)
            assert server.sock.busy_polling == "socket"  # auto, for the one socket (root may prefer)
            nid = napi_id(server.sock)
            assert nid in before
            with lab.inside("b"):
                now = netdev.napi_get(nid)
            assert {k: getattr(now, k) for k in SUSPEND_NAPI} == SUSPEND_NAPI
    finally:
        server.stop()
        t.join(10)
    with lab.inside("b"):
        assert {n.id: n for n in netdev.napi_list(lab.dev["b"])} == before  # put back
    assert server.sock.busy_polling == "off"
    server.close()
