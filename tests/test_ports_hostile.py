"""Ports under attack (burstio.ports): switch clients that write anything into
their regions or kick for nothing, hostile processes sharing a region, threads
racing a copy, close/fork/signals during every blocking call, and the region's
fuzz target.

A switch trusts nothing in a client's region: a misbehaving client is isolated
(counted, logged once, its port closed) and the others go on. Child processes
are forked and killed in ``finally``; nothing here measures time (LIMIT only
bounds how long a broken build can make a test wait).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import burstio
from burstio import ports
from support.kernel import BLOCKING_SYSCALLS_X86_64, require_syscall_introspection
from support.net import Sockets
from support.ports import FORK, LIMIT, child, finished, full, hold, receive, send
from support.proc import wait_for

HEADER, PARTY = 192, 64  # csrc/ports/layout.h: sizeof(BioPortHeader), offsetof(.., party)
PARTY_FIELD = {"state": 0, "generation": 4, "pid": 8, "start_time": 16, "pidns": 24}
SIDE_WORD = {"pos": 0, "sleeping": 4, "wake_at": 8}
PROD, CONS = 0, 1
CLOSED = 2  # BIO_PORT_CLOSED


def party_word(port, party: int, field: str) -> memoryview:
    """One u32 of a claim record in the port's region (writable)."""
    off = PARTY + 64 * party + PARTY_FIELD[field]
    return port.memory[off:off + 4].cast("I")


def side_word(port, ring: int, side: int, word: str) -> memoryview:
    """One u32 of a ring's control block: ``side`` PROD or CONS (writable)."""
    off = port.region.layout()["ctl"][ring] + 128 * side + SIDE_WORD[word]
    return port.memory[off:off + 4].cast("I")


# A switch client is party 1 of its region: its TX is ring 1, its RX ring 0.
def published(client) -> memoryview:
    return side_word(client, 1, PROD, "pos")


def released(client) -> memoryview:
    return side_word(client, 0, CONS, "pos")


@pytest.fixture
def switch(request):
    """A switch forwarded by hand (``sw.forward(0)``), closed afterwards."""
    kw = getattr(request, "param", {})
    sw = ports.Switch(slots=8, slot_size=64, linger=0, **kw)
    yield sw
    sw.close()


def isolation_logged(caplog, sw, port) -> bool:
    text = f"switch: port {port.switch_index} isolated, its client misbehaved: {sw.isolation_reason(port)}"
    return [r.getMessage() for r in caplog.records if r.name == "burstio"] == [text]


# ---- the switch: what a client writes into its own region ---------------------------


@pytest.mark.parametrize("field, value, before_first_forward, reason", [
    ("generation", 777, False, "port 0 was taken over by process 0: this handle is stale"),
    ("state", CLOSED, True, "port 0 of this region was closed by its owner"),
])
def test_a_client_rewriting_the_switch_claim_is_isolated_and_the_others_served(
        switch, caplog, field, value, before_first_forward, reason):
    evil, a, b = switch.add_port(key=1), switch.add_port(key=2), switch.add_port(key=3)
    if not before_first_forward:
        switch.forward(0)  # the switch holds every port now
    party_word(evil, 0, "pid")[0] = 0
    party_word(evil, 0, field)[0] = value
    send(a, b"to b", dst=3)
    with caplog.at_level(logging.WARNING, logger="burstio"):
        assert switch.forward(0) == 1  # no exception: one client cannot stop the switch
        assert switch.forward(0) == 0
    assert receive(b, 1) == [b"to b"]
    assert switch.port_state(evil) == "isolated" and switch.port_state(a) == "live"
    assert switch.isolation_reason(evil).startswith(
        f"the switch could not use its side of the region: {reason}")
    assert isolation_logged(caplog, switch, evil)  # once, with the reason
    c = switch.counters
    assert (c["ports_isolated"], c["ports_gone"], c["forwarded"]) == (1, 1, 1)
    send(a, b"to evil", dst=1)
    switch.forward(0)
    assert switch.counters["gone_drops"] == 1  # its traffic is dropped and counted


def test_header_fields_the_switch_does_not_use_cannot_hurt(switch):
    evil, other = switch.add_port(key=1), switch.add_port(key=2)
    switch.forward(0)
    evil.memory[:64] = bytes(range(64))  # magic, version, dimensions, size, kind
    for field in ("pid", "start_time", "pidns"):
        party_word(evil, 0, field)[0] = 0xDEAD  # only words in errors and the client's watch
    send(evil, b"still fine", dst=2)
    assert switch.forward(0) == 1
    assert receive(other, 1) == [b"still fine"]
    assert switch.port_state(evil) == "live" and switch.counters["ports_isolated"] == 0


@pytest.mark.parametrize("switch", [{"on_full": "wait"}], indirect=True)
def test_a_published_position_moving_back_isolates_and_drops_what_waited(switch, caplog):
    evil, full_one, a, b = (switch.add_port(key=k) for k in (1, 2, 3, 4))
    for i in range(7):
        evil.tx.put(b"%d" % i, dst=2)
    evil.tx.sync()
    assert switch.forward(0) == 7  # full_one's ring is full now (it never reads)
    for i in range(3):
        evil.tx.put(b"%d" % (7 + i), dst=2)
    evil.tx.sync()
    assert switch.forward(0) == 0  # seen, waiting for room (lossless)
    published(evil)[0] = 8  # the client takes back what it published
    send(a, b"fine", dst=4)
    with caplog.at_level(logging.WARNING, logger="burstio"):
        switch.forward(0)
    assert switch.isolation_reason(evil) == ("its TX ring's published position 8 is impossible "
                                             "(the switch read up to 10 and took up to 7 of 8 slots)")
    assert isolation_logged(caplog, switch, evil)
    assert switch.counters["isolated_drops"] == 3  # published, never taken: counted
    assert receive(b, 1) == [b"fine"] and switch.port_state(full_one) == "live"
    with pytest.raises(BrokenPipeError, match="port 0 was closed by its owner"):
        evil.rx.wait(1, timeout=LIMIT)  # the client is told: no silent hang


def test_a_published_position_beyond_the_ring_isolates(switch):
    evil, other = switch.add_port(key=1), switch.add_port(key=2)
    switch.forward(0)
    evil.tx.put(b"x", dst=2)
    evil.tx.sync()
    published(evil)[0] = 1000
    assert switch.forward(0) == 0
    assert switch.isolation_reason(evil) == ("its TX ring's published position 1000 is impossible "
                                             "(the switch read up to 0 and took up to 0 of 8 slots)")
    send(other, b"to self", dst=2)
    switch.forward(0)
    assert switch.counters["filtered"] == 1  # the rest goes on


def test_a_released_position_beyond_what_was_published_isolates(switch):
    a, evil = switch.add_port(key=1), switch.add_port(key=2)
    for i in range(7):
        a.tx.put(b"%d" % i, dst=2)
    a.tx.sync()
    assert switch.forward(0) == 7  # evil's RX ring is full
    released(evil)[0] = 50  # "I have read 50 of your 7 packets"
    send(a, b"one more", dst=2)
    switch.forward(0)
    assert switch.port_state(evil) == "isolated"
    assert switch.isolation_reason(evil) == ("its RX ring's released position 50 is impossible "
                                             "(the switch published up to 7, saw 0 released, of 8 slots)")
    assert switch.counters["gone_drops"] == 1


@pytest.mark.parametrize("ring", ["TX", "RX"])
def test_a_slot_naming_a_buffer_outside_the_pool_isolates(switch, ring):
    evil, other = switch.add_port(key=1), switch.add_port(key=2)
    if ring == "TX":
        evil.tx.put(b"bad index", dst=2)
        evil.tx.put(b"never taken", dst=2)
        evil.tx.indices[0] = 10**6  # a buffer outside its pool
        evil.tx.sync()
    else:
        evil.rx.indices[0] = 10**6  # where the switch copies the next packet for it
        send(other, b"for evil", dst=1)
    switch.forward(0)
    assert switch.isolation_reason(evil) == f"slot 0 of its {ring} ring names buffer 1000000 but its pool has 16"
    c = switch.counters
    assert c["bad_slots"] == 1 and c["ports_isolated"] == 1
    assert c["isolated_drops" if ring == "TX" else "gone_drops"] == (2 if ring == "TX" else 1)
    send(other, b"to self", dst=2)
    switch.forward(0)
    assert switch.counters["filtered"] == 1


def test_isolation_is_reported_by_a_running_switch_at_once(caplog):
    with caplog.at_level(logging.WARNING, logger="burstio"), ports.Switch(slots=8, slot_size=64) as sw:
        evil, a, b = sw.add_port(key=1), sw.add_port(key=2), sw.add_port(key=3)
        for p in (evil, a, b):
            p.claim()
        sw.start()
        evil.tx.put(b"x", dst=3)
        evil.tx.sync()
        assert receive(b, 1) == [b"x"]
        published(evil)[0] = 500
        evil.tx.sync()  # nothing new to publish: no kick, the switch sleeps on
        evil_kick = socket.socket(fileno=os.dup(evil.region.fds(1)[1][0]))
        with evil_kick:
            evil_kick.send(b"!")  # wakes it: it looks, and isolates
        assert wait_for(lambda: sw.port_state(evil) == "isolated")
        assert wait_for(lambda: isolation_logged(caplog, sw, evil))
        send(a, b"after", dst=3)
        assert receive(b, 1) == [b"after"]


# ---- the switch: waking it ------------------------------------------------------------


def kicker(port) -> socket.socket:
    """The client's end of its data wake socket, as a socket object."""
    return socket.socket(fileno=os.dup(port.region.fds(port.party)[1][0]))


def test_a_client_kicking_for_nothing_is_isolated_and_cannot_make_the_switch_spin():
    with ports.Switch(slots=8, slot_size=64, linger=0) as sw:
        evil, a, b = sw.add_port(key=1), sw.add_port(key=2), sw.add_port(key=3)
        for p in (evil, a, b):
            p.claim()
        sw.start()
        stop = threading.Event()

        def spam():
            with kicker(evil) as k:
                while not stop.is_set():
                    with contextlib.suppress(BlockingIOError):
                        k.send(b"!", socket.MSG_DONTWAIT)
                    time.sleep(0.0002)  # not a measurement: one wake at a time

        t = threading.Thread(target=spam, daemon=True)
        t.start()
        try:
            assert wait_for(lambda: sw.port_state(evil) == "isolated")
            assert sw.isolation_reason(evil) == ("it woke the switch 64 times in a row without "
                                                 "publishing, releasing, claiming or closing anything")
            assert sw.counters["idle_kicks"] == 64
            send(a, b"served", dst=3)
            assert receive(b, 1) == [b"served"]
            woken = sw.counters["wakeups"]  # (timed re-checks of unwatched clients are not wake-ups)
            time.sleep(0.1)  # not a measurement: evil keeps kicking meanwhile
            assert sw.counters["wakeups"] <= woken + 1  # its kicks no longer wake the switch
        finally:
            stop.set()
            t.join(LIMIT)


def test_a_client_holding_its_sleeping_flag_up_gets_one_kick_per_publish_at_most():
    with ports.Switch(slots=8, slot_size=64, linger=0) as sw:
        evil, a = sw.add_port(key=1), sw.add_port(key=2)
        evil.claim()
        a.claim()
        sleeping = side_word(evil, 0, CONS, "sleeping")
        wake_at = side_word(evil, 0, CONS, "wake_at")
        stop = threading.Event()

        def raise_flag():
            while not stop.is_set():
                wake_at[0], sleeping[0] = 0, 1
                time.sleep(0)

        t = threading.Thread(target=raise_flag, daemon=True)
        t.start()
        sw.start()
        try:
            for i in range(20):
                send(a, b"%d" % i, dst=1)
                assert receive(evil, 1) == [b"%d" % i]
            assert sw.port_state(evil) == "live"  # raising one's own flag is allowed
            kicks = side_word(evil, 0, PROD, "pos")  # (the switch published 20)
            assert kicks[0] == 20
            sent = evil.rx.peer_counters()["kicks"]
            assert 1 <= sent <= 20  # one kick per publish at most, never a loop
            woken = sw.counters["wakeups"]
            time.sleep(0.1)  # not a measurement: the flag stays up meanwhile
            assert sw.counters["wakeups"] <= woken + 1  # idle: the switch sleeps (a stale kick at most)
        finally:
            stop.set()
            t.join(LIMIT)


def syncs_kicking_a_peer_that_never_reads(a, b, rounds: int) -> None:
    """Child body: sync with the peer's flag forced up, so that every sync
    sends it a wake-up it never reads; exit 0 once all syncs returned."""
    sleeping = side_word(b, 0, CONS, "sleeping")  # b's RX flag on ring 0: "kick me"
    released_by_b = side_word(b, 0, CONS, "pos")
    with kicker(b) as mine:
        mine.setblocking(True)  # b's own description: it may do anything with it
    for _ in range(rounds):
        sleeping[0] = 1
        a.tx.put(b"x")
        a.tx.sync()  # a kick each time; b's queue fills; never blocks
        released_by_b[0] = side_word(b, 0, PROD, "pos")[0]  # b "reads" everything
    kicks = a.tx.counters()["kicks"]
    os._exit(0 if 0 < kicks < rounds else 3)  # a full queue of wake-ups is enough


def test_a_peer_that_never_reads_its_wake_socket_cannot_block_a_sync():
    a, b = ports.pipe(slots=4, slot_size=16, linger=0)
    b.claim()
    with child(syncs_kicking_a_peer_that_never_reads, a, b, 2000) as p:  # (a blocked kick would hold the GIL)
        assert finished(p) == 0


# ---- close() wakes every waiter ---------------------------------------------------------


def blocked_in_syscall(thread: threading.Thread) -> bool:
    """Whether ``thread`` sits in a blocking syscall (poll, recvmmsg ...) now."""
    try:
        text = Path(f"/proc/self/task/{thread.native_id}/syscall").read_text().split()
    except OSError:
        return False
    return bool(text) and text[0].isdigit() and int(text[0]) in BLOCKING_SYSCALLS_X86_64


def outcome_of(call) -> tuple[threading.Thread, list]:
    """Run call() on a thread; its result or exception lands in the list."""
    out: list = []

    def body():
        try:
            out.append(call())
        except BaseException as e:  # noqa: BLE001 (the test inspects it)
            out.append(e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


def full_tx(port):
    while len(port.tx) or port.tx.sync():
        port.tx.put(b"x")
    return port.tx


@pytest.mark.parametrize("call", ["rx.wait", "tx.wait", "packets", "recv_from"])
def test_close_in_another_thread_ends_a_blocked_call_at_once(call):
    require_syscall_introspection()
    a, b = ports.pipe(slots=4, slot_size=64, linger=0)
    go = FORK.Event()
    with Sockets() as socks, child(hold, b, go):  # a peer watched by pidfd: no timed re-checks
        assert go.wait(LIMIT)
        sock = socks.receiver()
        calls = {  # no timeouts: only the wake-up can end them (join(LIMIT) bounds a broken build)
            "rx.wait": lambda: a.rx.wait(1),
            "tx.wait": lambda: full_tx(a).wait(1),
            "packets": lambda: list(a.rx.packets()),
            "recv_from": lambda: a.tx.recv_from(sock),
        }
        t, out = outcome_of(calls[call])
        assert wait_for(lambda: blocked_in_syscall(t))
        a.close()
        t.join(LIMIT)
    assert not t.is_alive() and len(out) == 1
    assert isinstance(out[0], ValueError), out
    assert str(out[0]) == "I/O operation on a closed port (closed while this call waited)"
    assert b.region.party(0)[0] == CLOSED  # and the peer is told


@pytest.mark.parametrize("how", ["stop", "close"])
def test_stop_and_close_end_a_forward_in_another_thread_at_once(how):
    require_syscall_introspection()
    sw = ports.Switch(slots=8, slot_size=64, linger=0)
    p = sw.add_port(key=1)
    go = FORK.Event()
    with child(hold, p, go):  # a client watched by pidfd: no timed re-checks
        assert go.wait(LIMIT)
        t, out = outcome_of(lambda: sw.forward(None))  # only stop() or close() can end it
        assert wait_for(lambda: blocked_in_syscall(t))
        getattr(sw, how)()
        t.join(LIMIT)
        assert not t.is_alive() and len(out) == 1
        if how == "stop":
            assert out == [0]
            sw.close()
        else:
            assert isinstance(out[0], ValueError) and str(out[0]) == "the switch was closed while forward() ran"
            with pytest.raises(ValueError, match=full("forward() on a closed switch")):
                sw.forward(0)
        assert p.region.party(0)[0] == CLOSED  # its clients are told


def test_close_ends_run_on_the_switch_thread():
    sw = ports.Switch(slots=8, slot_size=64, linger=0).start()
    thread = sw._thread
    assert thread is not None and wait_for(lambda: sw.counters["sleeps"] >= 1)
    sw.close()
    assert not thread.is_alive()


def test_closing_a_published_port_withdraws_the_offer_at_once():
    a, b = ports.pipe(slots=4, slot_size=16)
    name = f"test-{os.getpid()}-withdrawn"
    t = ports.publish(b, name)  # no timeout: only the withdrawal can end it
    assert wait_for(lambda: blocked_in_syscall(t))
    b.close()
    t.join(LIMIT)
    assert not t.is_alive()
    with pytest.raises(FileNotFoundError):  # the name is free again
        ports.attach(name, timeout=0)
    with pytest.raises(ValueError, match=full("cannot publish a closed port")):
        ports.publish(b, name)


def test_publish_does_not_wait_forever_for_an_attacher_that_never_reads(monkeypatch):
    monkeypatch.setattr(ports, "_HANDOVER", 0.05)
    a, b = ports.pipe(slots=4, slot_size=16)
    name = f"test-{os.getpid()}-stuck"
    t = ports.publish(b, name, timeout=LIMIT)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with s:
        s.connect("\0burstio-rings:" + name)  # connects, then neither reads nor closes
        t.join(LIMIT)
        assert not t.is_alive()


# ---- signals during blocking calls ------------------------------------------------------


class AlarmError(Exception):
    """What the test's SIGALRM handler raises."""


@contextlib.contextmanager
def alarm_after(seconds: float, *, raising: bool):
    """SIGALRM on the main thread after ``seconds``; its handler raises AlarmError
    or does nothing (then the call must go on, PEP 475)."""
    fired = []

    def handler(signum, frame):
        fired.append(signum)
        if raising:
            raise AlarmError

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def blocking_calls(a, b, sock, sw, timeout: float | None = LIMIT):
    return {
        "wait": lambda: a.rx.wait(1, timeout=timeout),
        "packets": lambda: next(iter(a.rx.packets(timeout=timeout))),
        "recv_from": lambda: a.tx.recv_from(sock, timeout=timeout),
        "forward": lambda: sw.forward(timeout),
        "attach": lambda: ports.attach(f"test-{os.getpid()}-nobody", timeout=LIMIT),
    }


@pytest.mark.parametrize("call", ["wait", "packets", "recv_from", "forward", "attach"])
def test_a_signal_handler_that_raises_ends_a_blocking_call_and_leaves_it_usable(call):
    a, b = ports.pipe(slots=4, slot_size=64, linger=0)
    b.claim()
    sw = ports.Switch(slots=4, slot_size=64, linger=0)
    sw.add_port().claim()
    with Sockets() as socks, sw:
        sock = socks.receiver()
        fn = blocking_calls(a, b, sock, sw)[call]
        with alarm_after(0.05, raising=True), pytest.raises(AlarmError):
            fn()
        b.tx.put(b"after the signal")
        b.tx.sync()
        socks.plain().sendto(b"datagram", sock.getsockname())
        again = {"forward": lambda: sw.forward(0), "attach": lambda: None}.get(call, fn)
        again()  # usable again (not "in use by another call"), and not hanging


@pytest.mark.parametrize("call", ["wait", "recv_from"])
def test_a_signal_handler_that_returns_lets_the_call_go_on(call):
    a, b = ports.pipe(slots=4, slot_size=64, linger=0)
    b.claim()
    with Sockets() as socks:
        sock = socks.receiver()
        sender = socks.plain()

        def later():
            b.tx.put(b"late")
            b.tx.sync()
            sender.sendto(b"late", sock.getsockname())

        timer = threading.Timer(0.2, later)
        timer.start()
        with alarm_after(0.05, raising=False) as fired:
            assert blocking_calls(a, b, sock, None)[call]() == 1
        timer.join(LIMIT)
        assert fired == [signal.SIGALRM]


# ---- fork during blocking calls ---------------------------------------------------------


def forked(body) -> int:
    """Run body() in a bare forked child; its exit status (0: it returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("call", ["wait", "recv_from"])
def test_fork_during_a_blocked_call_child_takes_the_port_over_and_the_parent_is_told(call):
    require_syscall_introspection()
    a, b = ports.pipe(slots=4, slot_size=64, linger=0)
    go = FORK.Event()
    with Sockets() as socks, child(hold, b, go):  # a peer watched by pidfd: no timed re-checks
        assert go.wait(LIMIT)
        sock = socks.receiver()
        t, out = outcome_of(blocking_calls(a, b, sock, None, timeout=None)[call])
        assert wait_for(lambda: blocked_in_syscall(t))

        def child_uses_it():  # not "in use by another call": that thread is not here
            assert a.rx.wait(1, timeout=0) == 0
            assert a.tx.recv_from(sock, timeout=0) == 0

        assert forked(child_uses_it) == 0
        t.join(LIMIT)
    assert not t.is_alive() and isinstance(out[0], RuntimeError), out
    assert "was taken over by process" in str(out[0]) and "while this call waited" in str(out[0])


def test_fork_during_forward_leaves_the_child_a_usable_switch():
    require_syscall_introspection()
    with ports.Switch(slots=8, slot_size=64, linger=0) as sw:
        p = sw.add_port(key=1)
        p.claim()
        t, out = outcome_of(lambda: sw.forward(None))
        assert wait_for(lambda: blocked_in_syscall(t))

        def child_uses_it():  # neither busy nor locked by a thread that is not here
            sw.route(5, 0)
            assert sw.routes[5] == (0, True)
            assert sw.forward(0) == 0

        assert forked(child_uses_it) == 0
        sw.stop()
        t.join(LIMIT)
        assert out == [0]


# ---- threads racing a copy ------------------------------------------------------------


def rewriting(array: np.ndarray, bad: int, rows: int = 4000, every: int = 3):
    """A call that rewrites ``array`` ``rows`` times in order, in one numpy
    call without the GIL (np.put): its own values, a row of ``bad`` every
    ``every`` rows, its own values at the end."""
    indices = np.tile(np.arange(array.size), rows)
    values = np.tile(array.copy(), rows).reshape(rows, array.size)
    values[every // 2::every] = bad
    values = values.ravel()
    return lambda: np.put(array, indices, values)


def put_batch_while_rewritten(rounds: int, enough: int) -> None:
    """Child body: put_batch from a batch whose offsets and lengths another
    thread keeps rewriting without the GIL, for ``rounds`` or until a copy
    was caught ``enough`` times reading a rewritten entry."""
    a, b = ports.pipe(slots=1024, slot_size=64, linger=0)
    batch = burstio.PacketBatch(1000, 64)
    for i in range(1000):
        batch.append(b"%d" % i)
    rewrites = [rewriting(np.asarray(batch.offsets), 1 << 40), rewriting(np.asarray(batch.lengths), 60000)]
    stop = threading.Event()

    def rewrite():
        while not stop.is_set():
            for again in rewrites:
                again()

    t = threading.Thread(target=rewrite, daemon=True)
    t.start()
    changed = 0
    try:
        for _ in range(rounds):
            if changed >= enough:
                break
            try:
                n = a.tx.put_batch(batch)
            except ValueError as e:
                changed += "changed while put_batch() copied it" in str(e)
                assert a.tx.head == b.rx.head  # nothing was put
                continue
            a.tx.sync()
            assert b.rx.wait(n, timeout=0) == n
            assert [bytes(b.rx[k]) for k in range(n)] == [b"%d" % k for k in range(n)]
            b.rx.advance(n)
            b.rx.sync()
    finally:
        stop.set()
        t.join(LIMIT)
    print("rewritten during a copy:", changed)


def test_put_batch_never_reads_outside_the_batch_while_another_thread_rewrites_it():
    with child(put_batch_while_rewritten, 20000, 20) as p:
        assert finished(p) == 0  # a read outside the batch would have killed it (SIGSEGV)


# ---- hostile processes sharing the memory -------------------------------------------------


def scribble(memory: memoryview, lay: dict, rng: random.Random) -> None:
    """Write one hostile thing into a region: random bytes anywhere in the
    header, control blocks and slot arrays, or a chosen word where it hurts."""
    end = lay["names"][1] + 28 * lay["slots"]
    if rng.random() < 0.5:
        off = rng.randrange(0, end - 8)
        memory[off:off + 8] = rng.randbytes(8)
        return
    targets = [PARTY + 64 * p + f for p in (0, 1) for f in (0, 4, 8)]  # claim records
    targets += [lay["ctl"][r] + 128 * s + w for r in (0, 1) for s in (0, 1) for w in (0, 4, 8)]
    targets += [lay[k][r] + 4 * rng.randrange(lay["slots"]) for k in ("idx", "len", "dst") for r in (0, 1)]
    value = rng.choice([0, 1, 2, 3, lay["slots"], lay["buffers"], 1 << 31, 0xFFFFFFFF, rng.getrandbits(32)])
    struct.pack_into("<I", memory, rng.choice(targets), value)


def hostile(port, seed: int, rounds: int | None = None) -> None:
    """Child body: hold the port, then scribble over its region (and use it,
    to kick) until killed or done; finally make itself surely impossible."""
    rng = random.Random(seed)
    lay = port.region.layout()
    memory = port.memory
    with contextlib.suppress(Exception):
        port.claim()
    n = 0
    while rounds is None or n < rounds:
        n += 1
        scribble(memory, lay, rng)
        with contextlib.suppress(Exception):
            if len(port.tx) or port.tx.sync():
                port.tx.put(rng.randbytes(rng.randrange(40)), dst=rng.choice([0, 1, 2, 3, 99, ports.BROADCAST]))
            port.tx.sync()
    struct.pack_into("<I", memory, lay["ctl"][1], 0x7FFFFFFF)  # its published position
    with contextlib.suppress(Exception):
        kicker(port).send(b"!")
    time.sleep(60)


DOCUMENTED = (ValueError, RuntimeError, IndexError, BrokenPipeError, ConnectionResetError)


def honest_pipe_end(port, rounds: int) -> None:
    """Child body: use a pipe end whose peer scribbles; exit 3 on an error
    that is not documented (a crash shows as a signal)."""
    for i in range(rounds):
        try:
            if len(port.tx) or port.tx.sync():
                port.tx.put(b"%d" % i, dst=i)
            port.tx.sync()
            n = port.rx.wait(1, timeout=0 if i % 16 else 0.001)
            for k in range(min(n, 8)):
                bytes(port.rx[k])
                port.rx.dst(k), port.rx.addr(k), port.rx.flags(k)
            port.rx.advance(min(n, 8))
            port.rx.sync()
        except OSError as e:
            if e.errno not in (errno.EBADMSG, errno.EPIPE, errno.ECONNRESET):
                os._exit(3)
        except DOCUMENTED:
            pass


def test_a_hostile_peer_scribbling_over_a_pipe_causes_only_documented_errors():
    a, b = ports.pipe(slots=8, slot_size=64, linger=0)
    with child(hostile, b, 1) as evil, child(honest_pipe_end, a, 20000) as honest:
        assert finished(honest) == 0
        assert evil.is_alive()


def message(src: int, seq: int) -> bytes:
    body = struct.pack("<II", src, seq) + bytes((seq + k) & 0xFF for k in range(seq % 23))
    return body + struct.pack("<I", zlib.crc32(body))


def honest_client(port, me: int, peer: int, count: int) -> None:
    """Child body: send count messages to peer and receive its count, in
    order, intact; exit 4 if one is lost, 5 if one is wrong."""
    port.claim()
    sent = expect = 0
    while sent < count or expect < count:
        while sent < count and (len(port.tx) or port.tx.sync()):
            port.tx.put(message(me, sent), dst=peer, src=me)
            sent += 1
        port.tx.sync()
        if expect == count:
            continue
        n = port.rx.wait(1, timeout=LIMIT)
        if n == 0:
            os._exit(4)
        for k in range(n):
            data = bytes(port.rx[k])
            if port.rx.src(k) != peer or len(data) < 12:
                continue  # the hostile client's floods
            body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
            if zlib.crc32(body) != crc or struct.unpack_from("<II", body) != (peer, expect):
                os._exit(5)
            expect += 1
        port.rx.advance(n)
        port.rx.sync()
    port.close()


def switch_process(sw, stop, conn) -> None:
    """Child body: run the switch until stop is set, then report."""
    threading.Thread(target=lambda: (stop.wait(), sw.stop()), daemon=True).start()
    sw.run()
    sw._native.stopping = 0
    sw.forward(0)  # a last pass: the clients closed before the stop, and that is seen now
    conn.send((sw.counters, [sw.port_state(i) for i in range(3)], sw.isolation_reason(0)))


def test_a_hostile_client_scribbling_over_its_region_is_isolated_and_the_others_lose_nothing():
    sw = ports.Switch(slots=32, slot_size=64, linger=0)
    evil, p1, p2 = sw.add_port(key=3), sw.add_port(key=1), sw.add_port(key=2)
    stop, (mine, theirs) = FORK.Event(), FORK.Pipe()
    with child(switch_process, sw, stop, theirs) as switch, child(hostile, evil, 2, 3000), \
            child(honest_client, p1, 1, 2, 3000) as c1, child(honest_client, p2, 2, 1, 3000) as c2:
        assert finished(c1) == 0 and finished(c2) == 0  # every message, in order, intact
        stop.set()
        assert mine.poll(LIMIT)
        counters, states, reason = mine.recv()
        assert finished(switch) == 0
    assert states[1:] == ["closed", "closed"]  # served to the end, never isolated
    assert states[0] != "live" and counters["ports_isolated"] == (states[0] == "isolated")
    assert reason is None or states[0] == "isolated"
    assert counters["forwarded"] >= 6000


# ---- the fuzz target ---------------------------------------------------------------------


def fuzz_ok(data: bytes) -> None:
    """ports._fuzz_region_header(data) raising only what it documents."""
    try:
        ports._fuzz_region_header(data)
    except OSError as e:
        assert e.errno in (errno.EBADMSG, errno.EPIPE, errno.ECONNRESET), e
    except (ValueError, RuntimeError):
        pass


def patches(mode: int, *words: tuple[int, int]) -> bytes:
    return bytes([mode]) + b"".join(struct.pack("<HI", off, value) for off, value in words)


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x01", b"\x02", b"\x03", b"\x00" * 300, b"\xff" * 300, b"\x01" + b"\x00" * 200,
    patches(2, (16, 2), (17, 777)),          # the switch's claim: closed, then a new generation
    patches(2, (6, 8), (7, 32)),             # slots, slot_size: read once, at attach
    patches(3, (0, 1000)),                   # ring 0's producer position, impossible
    patches(3, (0, 1), (32, 3)),             # a plausible position, then its consumer's
    patches(3, (1, 1), (2, 0)),              # a sleeping flag up, waiting for position 0
    patches(3, (128, 0xFFFFFFFF), (129, 5)),
], ids=repr)
def test_fuzz_target_on_chosen_inputs(data):
    fuzz_ok(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_target_raises_only_documented_errors(data):
    fuzz_ok(data)


def test_fuzz_target_is_there_for_the_fuzz_command_and_works_in_a_forked_child():
    assert callable(getattr(ports, "_fuzz_region_header", None))
    fuzz_ok(b"\x03" + bytes(range(60)))  # this process's template exists now

    def in_child():
        for n in range(50):
            fuzz_ok(bytes([n & 3]) + random.Random(n).randbytes(n * 7))

    assert forked(in_child) == 0
    with pytest.raises(TypeError, match=full("data must be bytes, got str")):
        ports._fuzz_region_header("text")
