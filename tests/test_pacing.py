"""Paced sends: BurstSocket(paced=True) on every variant (support.variants.UDP;
the portable backend's Python pacer is the oracle of the C pacer thread),
and SO_TXTIME up to the kernel boundary (no qdisc here honours it).

What is asserted is order, counts and accounting, never intervals: which
datagrams arrived, in which order, which were counted late, which close()
reported unsent. Transmit times far in the future (an hour) stand for "still
waiting"; times in the past for "late".
"""
from __future__ import annotations

import errno
import os
import platform
import re
import signal
import socket
import struct
import time
from pathlib import Path

import pytest

import burstio
import burstio._udp_meta
from burstio import PacketBatch, Unsent, _native, _txtime
from burstio._kernel import SO_TXTIME
from support.kernel import require_kernel
from support.net import Sockets
from support.proc import Helper, wait_for

HOUR = 3600 * 10**9
MS = 10**6


@pytest.fixture
def sockets(udp_variant):
    with Sockets(**udp_variant.kwargs) as s:
        yield s


def arrivals(sock: burstio.BurstSocket, expect: int, timeout: float = 5.0) -> list[bytes]:
    """The payloads of ``expect`` datagrams, in arrival order (fewer if a
    receive times out)."""
    batch = PacketBatch(64, 256)
    got: list[bytes] = []
    while len(got) < expect and sock.recv_batch(batch, timeout):
        got += [bytes(batch[i]) for i in range(len(batch))]
    return got


def timed_arrivals(sock: burstio.BurstSocket, expect: int, timeout: float = 5.0) -> list[tuple[int, int]]:
    """(index the payload names, CLOCK_MONOTONIC ns read after its receive) of
    up to ``expect`` datagrams, in arrival order."""
    batch = PacketBatch(64, 64)
    got: list[tuple[int, int]] = []
    while len(got) < expect and sock.recv_batch(batch, timeout):
        arrived = time.monotonic_ns()
        got += [(int(bytes(batch[i])), arrived) for i in range(len(batch))]
    return got


def schedule(dest, times: list[int], tag: bytes = b"") -> PacketBatch:
    """A batch of datagrams b"<tag><i>" to dest, entry i at times[i]."""
    b = PacketBatch(max(1, len(times)), 64)
    for i, t in enumerate(times):
        b.append(tag + str(i).encode(), dest, txtime=t)
    return b


def paced_in_order(sockets, slack: int, times: list[int]) -> tuple[burstio.BurstSocket, list[tuple[int, int]]]:
    """Send datagram i at times[i] from a paced socket with this slack (ns);
    the sender and timed_arrivals() of them all, which came in order."""
    rx, tx = sockets.pair(tx={"paced": True, "pacer_slack": slack / 1e9})
    tx.send_batch(schedule(rx.getsockname(), times))
    got = timed_arrivals(rx, len(times))
    assert [i for i, _ in got] == list(range(len(times)))
    return tx, got


def test_pacing_is_reported(sockets):
    s = sockets.burst(paced=True)
    assert s.pacing == "pacer"
    caps = burstio.capabilities()
    why = caps["txtime_qdisc"].detail if caps.so_txtime else caps["so_txtime"].detail
    assert s.describe().endswith(f"paced by burstio's pacer thread, pacer_slack 1 ms (SO_TXTIME not used: {why})")
    assert "pacer_slack 0.25 ms" in sockets.burst(paced=True, pacer_slack=0.00025).describe()
    if caps.so_txtime and not caps.txtime_qdisc:
        assert "no fq or etf qdisc" in why
    assert sockets.burst().pacing == "off"


def test_order_kept_and_nothing_lost(sockets):
    rx, tx = sockets.pair(tx={"paced": True})
    now = time.monotonic_ns()
    # rising times, a run with one time (a GSO run), "now" (0) and one earlier
    # than its predecessor: all leave in queue order
    times = [now + 2 * MS, now + 4 * MS, now + 4 * MS, now + 4 * MS, 0, now + 3 * MS, now + 6 * MS]
    times += [now + 6 * MS + i * 100_000 for i in range(40)]
    assert tx.next_sequence == 0
    assert tx.send_batch(schedule(rx.getsockname(), times)) == len(times)
    assert tx.next_sequence == len(times)
    assert tx.flush(10.0)
    assert arrivals(rx, len(times)) == [str(i).encode() for i in range(len(times))]
    c = tx.counters
    assert c["paced_queued"] == c["tx_datagrams"] == len(times)
    assert c["paced_unsent"] == 0 and tx.paced_errors() == []


def test_deadlines_in_the_past_go_at_once_and_are_counted(sockets):
    rx, tx = sockets.pair(tx={"paced": True})
    now = time.monotonic_ns()
    times = [now - 50 * MS, now - 40 * MS, 0, now - 1, now + HOUR]
    tx.send_batch(schedule(rx.getsockname(), times))
    assert arrivals(rx, 4) == [b"0", b"1", b"2", b"3"]
    assert tx.counters["paced_late"] == 3  # 0 means "now", never late
    assert not tx.flush(0.05)  # the last one waits its hour
    assert tx.close() == [Unsent(4, rx.getsockname(), 1)]


def test_close_reports_what_was_not_sent(sockets, caplog):
    rx, tx = sockets.pair(tx={"paced": True})
    dest = rx.getsockname()
    now = time.monotonic_ns()
    tx.send_batch(schedule(dest, [0, 0, now + HOUR, now + HOUR, now + HOUR], tag=b"a"))
    tx.send_batch(schedule(dest, [0], tag=b"b"))  # queued behind the hour: waits too
    assert arrivals(rx, 2) == [b"a0", b"a1"]
    unsent = tx.close()
    assert unsent == [Unsent(2, dest, 2), Unsent(3, dest, 2), Unsent(4, dest, 2), Unsent(5, dest, 2)]
    assert tx.unsent == unsent
    assert tx.counters["paced_unsent"] == 4
    assert "4 paced datagrams unsent (sequences 2 to 5)" in caplog.text
    assert tx.close() == unsent  # again: nothing more
    assert arrivals(rx, 1, timeout=0.1) == []


def test_gso_runs_for_coinciding_times(sockets):
    """Without slack, each group of coinciding times is one release and one
    GSO run (both groups are one if the second is due when the first leaves)."""
    rx, tx = sockets.pair(tx={"paced": True, "pacer_slack": 0})
    now = time.monotonic_ns()
    times = [now + MS] * 8 + [now + 2 * MS] * 8
    b = PacketBatch(16, 64)
    for t in times:
        b.append(b"g" * 32, rx.getsockname(), txtime=t)
    tx.send_batch(b)
    assert tx.flush(10.0)
    assert len(arrivals(rx, 16)) == 16
    c = tx.counters
    assert c["paced_releases"] in (1, 2)
    if tx.gso:
        assert c["tx_gso_messages"] == c["paced_releases"] and c["tx_gso_datagrams"] == 16
    else:
        assert c["tx_gso_messages"] == 0


def test_metadata_travels_with_paced_datagrams(sockets):
    rx = sockets.track(burstio.BurstSocket.bind(("0.0.0.0", 0), pktinfo=True, ecn=True,
                                                backend=sockets.backend))
    tx = sockets.burst(paced=True)
    port = rx.getsockname()[1]
    b = PacketBatch(4, 64)
    b.append(b"x", ("127.0.0.2", port), local="127.0.0.1", ecn=2, txtime=time.monotonic_ns() + MS)
    b.append(b"y", ("127.0.0.3", port), local="127.0.0.1", ecn=3)
    tx.send_batch(b)
    batch = PacketBatch(4, 64)
    got = []
    while len(got) < 2 and rx.recv_batch(batch, 5.0):
        got += [(bytes(batch[i]), batch.addr(i)[0], batch.local_addr(i), batch.ecn[i]) for i in range(len(batch))]
    ecn = burstio.capabilities().ecn
    assert got == [(b"x", "127.0.0.1", "127.0.0.2", 2 if ecn else 0), (b"y", "127.0.0.1", "127.0.0.3", 3 if ecn else 0)]


def test_refused_codepoint_downgrades_in_the_pacer_thread(sockets, caplog):
    require_kernel("ecn")
    rx, tx = sockets.pair(rx={"ecn": True}, tx={"paced": True})
    tx._pacer.ecn_cmsg = 2  # the kernel refuses the cmsg from now on
    b = PacketBatch(8, 64)
    for i in range(3):
        b.append(b"e%d" % i, rx.getsockname(), ecn=1)
    tx.send_batch(b)
    assert tx.flush(10.0)
    assert arrivals(rx, 3) == [b"e0", b"e1", b"e2"]
    c = tx.counters
    assert c["ecn_downgrades"] == 1 and c["tx_errors"] == 0 and c["tx_ecn_unmarked"] == 3
    assert not tx.ecn_marking
    assert "pacing without ECN from now on" in caplog.text


def test_refusals_are_reported_per_datagram(sockets):
    rx, tx = sockets.pair(tx={"paced": True})
    good, bad = rx.getsockname(), (rx.getsockname()[0], 0)  # port 0: EINVAL
    b = PacketBatch(4, 64)
    for i, dest in enumerate([good, bad, good]):
        b.append(b"r%d" % i, dest)
    tx.send_batch(b)
    assert tx.flush(10.0)
    assert arrivals(rx, 2) == [b"r0", b"r2"]
    errors = tx.paced_errors()
    assert [(e.sequence, e.errno, e.addr, e.mtu) for e in errors] == [(1, errno.EINVAL, bad, None)]
    assert tx.paced_errors() == [] and tx.counters["tx_errors"] == 1


def test_full_queue_nonblocking_returns_what_fitted(sockets):
    rx, tx = sockets.pair(tx={"paced": True, "pacer_queue": 4})
    tx.setblocking(False)
    far = time.monotonic_ns() + HOUR
    assert tx.send_batch(schedule(rx.getsockname(), [far] * 6)) == 4
    with pytest.raises(BlockingIOError, match="the pacer's queue is full; nothing was queued"):
        tx.send_batch(schedule(rx.getsockname(), [far]))
    assert len(tx.close()) == 4


def test_close_wakes_a_send_waiting_for_room(sockets):
    rx, tx = sockets.pair(tx={"paced": True, "pacer_queue": 2})
    far = time.monotonic_ns() + HOUR
    errors = []

    def send():
        try:
            tx.send_batch(schedule(rx.getsockname(), [far] * 5))
        except OSError as e:
            errors.append(e)

    t = Helper(send)
    t.start()
    assert wait_for(lambda: tx.counters["paced_queued"] == 2)
    unsent = tx.close()
    t.join()
    assert [u.sequence for u in unsent] == [0, 1]
    assert len(errors) == 1 and errors[0].errno == errno.EBADF and "closed while waiting" in str(errors[0])
    assert getattr(errors[0], "sent", 2) == 2


def test_flush_waits_and_times_out(sockets):
    rx, tx = sockets.pair(tx={"paced": True})
    assert tx.flush(0)  # nothing queued
    tx.send_batch(schedule(rx.getsockname(), [time.monotonic_ns() + 20 * MS]))
    assert tx.flush(10.0) and tx.counters["paced_queued"] == tx.counters["tx_datagrams"] == 1
    tx.send_batch(schedule(rx.getsockname(), [time.monotonic_ns() + HOUR]))
    assert not tx.flush(0.01)
    tx.close()
    with pytest.raises(OSError):
        tx.flush(0)


def _blocked(tid: int) -> bool:
    """Thread tid waits in the kernel (poll for the C pacer, a futex for the Python one)."""
    try:
        text = Path(f"/proc/self/task/{tid}/syscall").read_text().split()
    except OSError:
        return False
    return bool(text) and text[0] in ("7", "202", "271")


def test_signal_handler_that_raises_ends_a_wait_for_room(sockets):
    rx, tx = sockets.pair(tx={"paced": True, "pacer_queue": 2})
    far = time.monotonic_ns() + HOUR

    class HandlerError(Exception):
        pass

    def handler(signum, frame):
        raise HandlerError("from the handler")

    def interrupt():
        assert wait_for(lambda: tx.counters["paced_queued"] == 2 and _blocked(main))
        signal.setitimer(signal.ITIMER_REAL, 0.001)

    main = __import__("threading").main_thread().native_id
    old = signal.signal(signal.SIGALRM, handler)
    try:
        t = Helper(interrupt)
        t.start()
        with pytest.raises(HandlerError):
            tx.send_batch(schedule(rx.getsockname(), [far] * 4))
        t.join()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert [u.sequence for u in tx.close()] == [0, 1]  # and nothing else was queued


def test_fork_child_does_not_send_the_parents_queue(sockets):
    rx, tx = sockets.pair(tx={"paced": True})
    dest = rx.getsockname()
    tx.send_batch(schedule(dest, [time.monotonic_ns() + HOUR], tag=b"parent"))
    pid = os.fork()
    if pid == 0:  # the child: its own pacer, empty; it paces its own datagram
        code = 1
        try:
            tx.send_batch(schedule(dest, [0], tag=b"child"))
            code = 0 if tx.flush(10.0) and tx.close() == [] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert arrivals(rx, 2, timeout=1.0) == [b"child0"]
    assert [u.sequence for u in tx.close()] == [0]  # the parent's is still its own


def test_paced_socket_argument_checks(sockets):
    tx = sockets.burst(paced=True)
    b = schedule(("127.0.0.1", 9), [5])
    b.txtimes[0] = -1
    with pytest.raises(ValueError, match=r"datagram 0: its transmit time \(batch.txtimes\) is negative"):
        tx.send_batch(b)
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', got 'ignore'"):
        tx.send_batch(b, on_error="ignore")
    with pytest.raises(ValueError, match="send_segments does not pace"):
        tx.send_segments(b"x" * 10, 5, ("127.0.0.1", 9))
    with pytest.raises(ValueError, match="pacer_queue must be between 1 and 1048576, got 0"):
        burstio.BurstSocket(paced=True, pacer_queue=0)
    assert tx.counters["paced_queued"] == 0


# ---- SO_TXTIME, up to the kernel boundary -----------------------------------------------


def test_txtime_probe_says_why_not_here():
    caps = burstio.capabilities()
    ok, detail = _txtime.probe_qdisc()
    assert caps.txtime_qdisc == ok or not caps.so_txtime
    kinds = _txtime.qdisc_kinds()
    assert ok == any(k in ("fq", "etf") for qs in kinds.values() for k, _c in qs)
    if not ok:
        assert detail.startswith("no fq or etf qdisc on any device (")


def test_so_txtime_socket_sends_scm_txtime_to_the_kernel(monkeypatch, udp_variant):
    """Where a device's qdisc honours SO_TXTIME, the kernel paces: the socket
    gets SO_TXTIME and every datagram an SCM_TXTIME cmsg. No qdisc here
    does, so the choice is forced; the kernel takes the cmsgs (and, with a
    qdisc that ignores them, sends at once)."""
    require_kernel("so_txtime")
    forced = ("so_txtime", "fq qdisc on lo (forced)")
    monkeypatch.setattr(burstio._udp_meta, "_choose_pacing", lambda sock, caps: forced)
    with Sockets(**udp_variant.kwargs) as s:
        rx = s.receiver()
        tx = s.burst(paced=True)
        assert tx.pacing == "so_txtime"
        assert tx.describe().endswith("paced by the kernel (SO_TXTIME: fq qdisc on lo (forced))")
        assert struct.unpack("iI", tx.sock.getsockopt(socket.SOL_SOCKET, SO_TXTIME, 8)) == (_txtime.CLOCK_MONOTONIC, 0)
        now = time.monotonic_ns()
        assert tx.send_batch(schedule(rx.getsockname(), [now - MS, now + 5 * MS, 0])) == 3
        assert arrivals(rx, 3) == [b"0", b"1", b"2"]
        c = tx.counters
        assert c["tx_late"] == 1 and c["paced_queued"] == 0 and tx.flush(0)


def test_scm_txtime_bytes_with_the_clock_offset():
    b = schedule(("127.0.0.1", 9), [10**9, 0])
    msgs = _native.send_messages_for_test(b, socket.AF_INET, 1, 1, 0, 1, 37 * 10**9)
    cm = struct.pack("QiI", socket.CMSG_LEN(8), socket.SOL_SOCKET, SO_TXTIME) + struct.pack("Q", 38 * 10**9)
    assert msgs == [(0, 1, cm), (1, 1, b"")]  # a time of 0 ("now") carries no cmsg
    assert _txtime.clock_offset(_txtime.CLOCK_MONOTONIC) == 0


# ---- the slack: one wake-up for what is due within it ----------------------------------


def test_slack_releases_what_is_due_within_it_in_one_wake_up(sockets):
    """The pacer wakes at the first datagram's time and takes every datagram
    due within the slack with it: one release for the first group, as GSO
    runs where there is GSO (their times differ: the release honoured them);
    the group due after the slack has passed is a release of its own."""
    rx, tx = sockets.pair(tx={"paced": True, "pacer_slack": 0.05})
    t0 = time.monotonic_ns() + 20 * MS
    times = [t0 + i * MS for i in range(8)] + [t0 + 400 * MS + i * MS for i in range(8)]
    b = PacketBatch(16, 64)
    for i, t in enumerate(times):
        b.append(b"s%02d" % i + b"." * 13, rx.getsockname(), txtime=t)
    assert tx.send_batch(b) == 16
    assert tx.flush(10.0)
    assert arrivals(rx, 16) == [b"s%02d" % i + b"." * 13 for i in range(16)]  # order kept, nothing lost
    c = tx.counters
    assert c["paced_releases"] == 2  # lateness is not asserted: the second group is 350 ms past the slack
    assert c["tx_datagrams"] == 16 and c["paced_unsent"] == 0 and tx.paced_errors() == []
    if tx.gso:
        assert c["tx_gso_messages"] == 2 and c["tx_gso_datagrams"] == 16
    else:
        assert c["tx_gso_messages"] == 0


def test_a_release_larger_than_one_send_is_still_one_wake_up(sockets):
    """200 datagrams due within the slack, to 200 ports (no two in one GSO
    run): several sendmmsg calls of at most 64 messages, one release."""
    rx, tx = sockets.pair(tx={"paced": True, "pacer_slack": 0.5})
    host, port = rx.getsockname()
    t0 = time.monotonic_ns() + 20 * MS
    b = PacketBatch(200, 64)
    for i in range(200):
        b.append(b"r%d" % i, (host, port) if i % 2 == 0 else (host, 9), txtime=t0 + i * 10_000)
    assert tx.send_batch(b) == 200
    assert tx.flush(10.0)
    assert arrivals(rx, 100) == [b"r%d" % i for i in range(0, 200, 2)]
    c = tx.counters
    assert c["paced_releases"] == 1 and c["tx_datagrams"] == 200 and c["tx_gso_messages"] == 0
    assert c["tx_syscalls"] >= 4  # 200 messages: at least four sends of 64


def test_slack_never_releases_a_datagram_before_its_time_less_half_the_slack(sockets):
    """Each datagram arrives (CLOCK_MONOTONIC, read by the receiver after it
    arrived, so later than it left) no earlier than its transmit time less
    half the slack (a release takes what is due within half the slack of
    it); how late is not asserted. Times 20 ms apart, slack 30 ms: each
    release takes a datagram or two, never the whole schedule."""
    slack = 30 * MS
    t0 = time.monotonic_ns() + 20 * MS
    times = [t0 + i * 20 * MS for i in range(10)]
    tx, got = paced_in_order(sockets, slack, times)
    early = [(i, times[i] - slack // 2 - arrived) for i, arrived in got if arrived < times[i] - slack // 2]
    assert early == []
    assert tx.counters["paced_releases"] >= len(times) // 2  # the slack covers at most two of them


def test_a_release_within_a_flow_is_centred_on_what_it_carries(sockets):
    """Slack 400 ms. The flow's first release goes at its first datagram's
    time and takes what is due within half the slack (0 and 100 ms); the
    next is centred on what it carries: it goes when the last datagram due
    within the slack of its first (650 ms, of 300, 350 and 650) is half the
    slack away, at 450 ms, so the one due at 350 ms leaves late by design
    (by less than half the slack) and none leaves more than half the slack
    early. (A first wake-up 150 ms late would take 350 with it; how late a
    datagram leaves beyond its release time is not asserted.)"""
    slack = 400 * MS
    t0 = time.monotonic_ns() + 50 * MS
    times = [t0 + d * MS for d in (0, 100, 300, 350, 650)]
    tx, got = paced_in_order(sockets, slack, times)
    assert [i for i, arrived in got if arrived < times[i] - slack // 2] == []
    assert got[3][1] >= t0 + 450 * MS  # centred: 350 waited for the release at 650 less half the slack
    assert tx.counters["paced_releases"] == 2


def test_a_dense_flow_is_released_every_half_slack(sockets):
    """Slack 200 ms, 64 datagrams 2 ms apart: 32 of them are due within half
    the slack, so the flow is dense and each release spans half the slack
    (50 ms either way of its time) where a sparse one spans the slack (100
    ms): none leaves more than a quarter of the slack early, and the flow
    still takes a few wake-ups, not one per datagram. Against the sparse
    rule, the first release would take the datagrams due up to 100 ms,
    50 ms too early."""
    slack = 200 * MS
    t0 = time.monotonic_ns() + 50 * MS
    times = [t0 + i * 2 * MS for i in range(64)]
    tx, got = paced_in_order(sockets, slack, times)
    assert [i for i, arrived in got if arrived < times[i] - slack // 4] == []
    assert 2 <= tx.counters["paced_releases"] <= 4  # the schedule spans 126 ms; releases are >= 50 ms apart


def test_slack_zero_and_the_default(sockets):
    rx, tx = sockets.pair(tx={"paced": True})
    assert tx._pacer.slack_ns == round(burstio._udp.PACER_SLACK * 1e9) == MS  # 1 ms, QUIC's pacers' granularity
    exact = sockets.burst(paced=True, pacer_slack=0)
    assert exact._pacer.slack_ns == 0


@pytest.mark.parametrize("value, error, message", [
    (2, ValueError, "pacer_slack must be between 0 and 1 seconds, got 2"),
    (-0.001, ValueError, "pacer_slack must be between 0 and 1 seconds, got -0.001"),
    (float("nan"), ValueError, "pacer_slack must be between 0 and 1 seconds, got nan"),
    ("1ms", TypeError, "pacer_slack must be a number of seconds, got str"),
    (True, TypeError, "pacer_slack must be a number of seconds, got bool"),
])
def test_bad_slack_is_refused(value, error, message):
    with pytest.raises(error) as e:
        burstio.BurstSocket(paced=True, pacer_slack=value)
    assert str(e.value) == message
    with pytest.raises(error) as e:
        burstio.SocketSet(paced=True, pacer_slack=value)
    assert str(e.value) == message


def _kernel_at_least(major: int, minor: int) -> bool:
    parts = platform.release().split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


def test_the_pacer_thread_is_named_and_asks_for_a_short_slice():
    """The C pacer's thread shows as burstio-pacer (top -H, perf) and, where
    the kernel takes a fair thread's own slice (Linux >= 6.12), runs with a
    0.1 ms one: a thread busy on its CPU does not hold a release back for
    the rest of its own slice."""
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pacer = _native.Pacer(tx.fileno())
    before = set(os.listdir("/proc/self/task"))
    try:
        pacer.queue(schedule(("127.0.0.1", 9), [time.monotonic_ns() + HOUR]))

        def comm(tid: str) -> str:
            try:
                return Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            except FileNotFoundError:  # a thread of another test, gone meanwhile
                return ""

        def named() -> list[str]:  # the thread names itself once it has asked for its slice
            return [t for t in set(os.listdir("/proc/self/task")) - before if comm(t) == "burstio-pacer"]
        assert wait_for(named)
        ours = named()
        assert len(ours) == 1
        sched = Path(f"/proc/self/task/{ours[0]}/sched").read_text()
        slice_ns = re.search(r"^se\.slice\s*:\s*(\d+)", sched, re.MULTILINE)
        if slice_ns is None or not _kernel_at_least(6, 12):
            pytest.skip(f"kernel {platform.release()} has no slice of a fair thread's own (Linux >= 6.12)")
        assert int(slice_ns.group(1)) == 100_000
        policy = re.search(r"^policy\s*:\s*(\d+)", sched, re.MULTILINE)
        assert policy is not None and int(policy.group(1)) == os.SCHED_OTHER  # policy and niceness kept
    finally:
        assert len(pacer.close()) == 1
        tx.close()
