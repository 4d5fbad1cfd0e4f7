"""burstio.xdp Umem and XskSocket: receive into a batch without a copy,
frames lent and never recycled under the user, send (copy and zero-copy
forwarding), accounting, modes and fallbacks, sharing a Umem, close, fork,
bad arguments and missing privileges."""
from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import threading

import pytest

import burstio
from burstio._caps import ENV_DISABLE
from burstio.xdp import Filter, Rule, Umem, XskSocket
from burstio.xdp.udp import mac_of
from support.proc import wait_for
from support.xdp import flood, lab_xsk, needs_xdp, needs_xdp_lab, run_without_caps


def send_udp(lab, n, port=9000, payload=b"x" * 18):
    """n datagrams from namespace a's kernel to b:port."""
    with lab.inside("a"), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(n):
            tx.sendto(payload[:-4] + i.to_bytes(4, "big"), (lab.addr("b"), port))


def recv_all(xsk, want, batch=None, timeout=5.0):
    """Receive until want frames came (or a receive times out): their bytes."""
    batch = burstio.PacketBatch(64) if batch is None else batch
    got = []
    while len(got) < want:
        n = xsk.recv_batch(batch, timeout)
        if n == 0:
            break
        got.extend(bytes(batch[i]) for i in range(n))
    return got


# ---- receive -------------------------------------------------------------------------

@needs_xdp_lab
def test_receive_points_into_the_umem(burstio_lab):
    lab = burstio_lab
    with lab_xsk(lab) as (xsk, _steer):
        send_udp(lab, 10)
        batch = burstio.PacketBatch(64)
        frames = recv_all(xsk, 10, batch)
        assert len(frames) == 10
        assert [int.from_bytes(f[-4:], "big") for f in frames] == list(range(10))
        assert all(f[12:14] == b"\x08\x00" for f in frames)  # raw Ethernet frames
        umem = memoryview(batch.buffer)
        assert len(umem) == xsk.umem.size  # offsets are UMEM offsets
        off = batch.offsets[len(batch) - 1]
        assert bytes(umem[off:off + batch.lengths[len(batch) - 1]]) == frames[-1]
        c = xsk.counters
        assert c["rx_frames"] == 10 and c["rx_bad_descs"] == 0
        assert set(xsk.statistics()) == {"rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                                         "rx_fill_ring_empty_descs", "tx_ring_empty_descs"}


@needs_xdp_lab
def test_every_frame_is_delivered_or_counted(burstio_lab):
    lab = burstio_lab
    n = 30_000
    with lab_xsk(lab, rx_size=512, fill_size=512) as (xsk, _steer):
        got = []

        def consume():
            got.append(len(recv_all(xsk, n, timeout=2.0)))

        t = threading.Thread(target=consume)
        t.start()
        sent = flood(lab, n, flows=8)
        t.join(timeout=120)
        s = xsk.statistics()
    assert sent.frames == n
    assert got[0] + s["rx_dropped"] + s["rx_ring_full"] + s["rx_invalid_descs"] == n, (got, s)


@needs_xdp_lab
def test_a_viewed_frame_is_never_recycled(burstio_lab):
    """A memoryview of a received frame keeps it lent through many refills
    of the batch (more traffic than the UMEM has frames): its bytes never
    change under the user; once released the frames come back."""
    lab = burstio_lab
    with lab.inside("b"), Umem(512) as umem, lab_xsk(lab, rx_size=256, fill_size=256, tx_size=0, comp_size=64,
                                                umem=umem) as (xsk, _steer):
        send_udp(lab, 1)
        batch = burstio.PacketBatch(64)
        assert xsk.recv_batch(batch, 5) == 1
        held = batch[0]
        before = bytes(held)
        states = xsk.umem.frame_states()
        assert states["lent"] == 1
        for _ in range(6):  # 6 x 200 datagrams through 512 frames
            send_udp(lab, 200, payload=b"\xee" * 60)
            recv_all(xsk, 200, batch)
        assert bytes(held) == before
        assert xsk.umem.frame_states()["lent"] >= 1
        batch.clear()
        del held
        assert xsk.umem.frame_states()["lent"] == 0
        assert sum(xsk.umem.frame_states().values()) == 512


@needs_xdp_lab
def test_recycling_ignores_the_writable_offsets(burstio_lab):
    """The frames go back by the lease's own record: rewriting the batch's
    offsets (another thread could) neither frees the wrong frames nor loses any."""
    lab = burstio_lab
    with lab.inside("b"), Umem(512) as umem, lab_xsk(lab, umem=umem, rx_size=256, fill_size=256, tx_size=0,
                                                comp_size=64) as (xsk, _steer):
        send_udp(lab, 20)
        batch = burstio.PacketBatch(64)
        n = len(recv_all(xsk, 20, batch))
        for i in range(64):
            batch.offsets[i] = 0  # every entry claims frame 0
        assert xsk.recv_batch(batch, 0) == 0  # the refill returns the 20 frames it lent
        states = xsk.umem.frame_states()
        assert n == 20 and states["lent"] == 0 and sum(states.values()) == 512
        assert xsk.counters["rx_bad_descs"] == 0


@needs_xdp_lab
def test_received_entries_carry_nothing_an_earlier_use_left(burstio_lab):
    """A receive writes each entry's offset, length and flags and clears the rest of it (segment size,
    timestamp, socket, error, address, metadata) whatever the batch held before; the batch then points
    into the UMEM: append() is refused until clear(), and batch[i] and batch.buffer hold the frames."""
    lab = burstio_lab
    with lab_xsk(lab) as (xsk, _steer):
        batch = burstio.PacketBatch(64)
        for _ in range(8):
            batch.append(b"stale", ("10.0.0.9", 99))
        for i in range(8):
            batch.flags[i], batch.segment_sizes[i], batch.timestamps[i] = 0x8, 7, 5
            batch.sockets[i], batch.errnos[i], batch.ecn[i], batch.ifindexes[i] = 3, 11, 2, 4
        send_udp(lab, 5)
        n = xsk.recv_batch(batch, 5)
        assert 1 <= n <= 5
        for i in range(n):
            assert (batch.flags[i], batch.segment_sizes[i], batch.timestamps[i], batch.sockets[i],
                    batch.errnos[i], batch.ecn[i], batch.ifindexes[i]) == (0, 0, 0, 0, 0, 0, 0), i
            assert batch.addr(i) is None
        with pytest.raises(ValueError, match="points into an external buffer"):
            batch.append(b"x")
        first, umem = batch[0], batch.buffer
        assert bytes(first)[12:14] == b"\x08\x00" and len(umem) == xsk.umem.size
        batch.clear()
        assert xsk.umem.frame_states()["lent"] == n  # the views hold the lease
        del first, umem
        assert xsk.umem.frame_states()["lent"] == 0
        assert batch.append(b"fresh") == 0 and bytes(batch[0]) == b"fresh"


# ---- send ----------------------------------------------------------------------------

@needs_xdp_lab
def test_copy_send_of_raw_frames(burstio_lab):
    lab = burstio_lab
    with lab.inside("a"):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((lab.addr("a"), 7000))
        rx.settimeout(5)
        mac_a = mac_of(lab.dev["a"])
    with lab_xsk(lab) as (xsk, _steer):
        from burstio.xdp.udp import frame
        out = burstio.PacketBatch(8)
        for i in range(5):
            out.append(frame(mac_a, mac_of(lab.dev["b"]), (lab.addr("b"), 9000), (lab.addr("a"), 7000), b"%d" % i))
        assert xsk.send_batch(out, timeout=5) == 5
        assert sorted(rx.recv(16) for _ in range(5)) == [b"0", b"1", b"2", b"3", b"4"]
        c = xsk.counters
        assert c["tx_copied"] == 5 and c["tx_zerocopy"] == 0
        with pytest.raises(ValueError, match="frame 0: 3000 bytes do not fit a 2048-byte frame"):
            big = burstio.PacketBatch(1, 4096)
            big.append(bytes(3000))
            xsk.send_batch(big)
        out.offsets[0] = 1 << 40
        with pytest.raises(ValueError, match=r"datagram 0: offset .* runs past"):
            xsk.send_batch(out)


@needs_xdp_lab
def test_forwarding_is_zero_copy(burstio_lab):
    """l2fwd: received frames, MACs swapped in place, go back out as they
    are (zero copy); namespace a sees every one of them come back."""
    lab = burstio_lab
    n = 200
    with lab.inside("a"), Filter([Rule(proto="udp", dport=9000)]) as back:
        back.attach(lab.dev["a"])
        with lab_xsk(lab) as (xsk, _steer):
            send_udp(lab, n)
            batch = burstio.PacketBatch(64)
            forwarded = 0
            while forwarded < n:
                k = xsk.recv_batch(batch, 5)
                assert k > 0
                mem = batch.buffer
                for i in range(k):
                    o = batch.offsets[i]
                    mem[o:o + 12] = bytes(mem[o + 6:o + 12]) + bytes(mem[o:o + 6])
                forwarded += xsk.send_batch(batch, timeout=5)
            c = xsk.counters
            assert c["tx_zerocopy"] == n and c["tx_copied"] == 0
            assert wait_for(lambda: back.counters()[0].packets == n, 10)
            assert wait_for(lambda: (xsk.recv_batch(batch, 0.01), xsk.umem.frame_states())[1]["tx"] == 0, 10)
            batch.clear()
            assert xsk.umem.frame_states()["lent"] > 0  # `mem` still views the last batch's frames
            del mem
            assert xsk.umem.frame_states()["lent"] == 0


@needs_xdp_lab
def test_frames_of_another_batch_are_copied(burstio_lab):
    lab = burstio_lab
    with lab_xsk(lab) as (xsk, _steer):
        send_udp(lab, 3)
        first = burstio.PacketBatch(8)
        assert len(recv_all(xsk, 3, first)) == 3
        other = burstio.PacketBatch(8)
        other.add_slices(first.buffer, lengths=[first.lengths[0]])
        other.offsets[0] = first.offsets[0]
        assert xsk.send_batch(other, timeout=5) == 1
        assert xsk.counters["tx_copied"] == 1 and xsk.counters["tx_zerocopy"] == 0


# ---- close, threads, fork ------------------------------------------------------------

@needs_xdp_lab
def test_close_wakes_a_waiting_receive(burstio_lab):
    lab = burstio_lab
    with lab_xsk(lab) as (xsk, _steer):
        errors = []
        batch = burstio.PacketBatch(8)

        def wait():
            try:
                xsk.recv_batch(batch, 60)
            except OSError as e:
                errors.append(e)

        t = threading.Thread(target=wait)
        t.start()
        other = burstio.PacketBatch(8)
        assert wait_for(lambda: _busy(xsk, other), 5)
        xsk.close()
        t.join(10)
        assert not t.is_alive() and errors and errors[0].errno == errno.EBADF
        with pytest.raises(OSError, match="the XskSocket is closed"):
            xsk.recv_batch(batch, 0)


def _busy(xsk, batch):
    """True once a receive in another thread holds the socket."""
    try:
        xsk.recv_batch(batch, 0)
    except RuntimeError as e:
        assert "in use by another call" in str(e)
        return True
    return False


@needs_xdp_lab
def test_a_forked_child_cannot_use_the_socket(burstio_lab):
    lab = burstio_lab
    with lab_xsk(lab) as (xsk, _steer):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            try:
                xsk.recv_batch(burstio.PacketBatch(4), 0)
                os.write(w, b"used it")
            except RuntimeError as e:
                os.write(w, str(e).encode())
            finally:
                os._exit(0)
        os.close(w)
        msg = os.read(r, 500).decode()
        os.waitpid(pid, 0)
        assert f"belongs to process {os.getpid()}" in msg and "forked child" in msg
        send_udp(lab, 1)
        assert len(recv_all(xsk, 1)) == 1  # the parent's socket still works


# ---- modes, fallbacks, sharing ---------------------------------------------------------

@needs_xdp_lab
def test_auto_mode_falls_back_to_copy_and_says_why(burstio_lab):
    with lab_xsk(burstio_lab) as (xsk, _steer):
        d = xsk.describe()
        assert d["mode"] == "copy" and "refused a zero-copy bind (EOPNOTSUPP" in d["mode_reason"]
        assert d["need_wakeup"] and "copy mode never sets the flag" in d["need_wakeup_note"]
        assert d["tx_budget"] == 2048
        assert xsk.busy_poll(50) == "no effect"
        assert "SO_INCOMING_NAPI_ID is 0" in xsk.describe()["busy_poll"]["why"]
        assert xsk.busy_poll(0) == "off"


@needs_xdp_lab
def test_zerocopy_mode_is_refused_on_a_veth(burstio_lab):
    lab = burstio_lab
    with lab.inside("b"), pytest.raises(OSError, match="the driver refused a zero-copy bind") as e:
        XskSocket(lab.dev["b"], 0, mode="zerocopy")
    assert e.value.errno == errno.EOPNOTSUPP


@needs_xdp_lab
@pytest.mark.parametrize("disable,check", [
    ("xsk_zerocopy", lambda d: d["mode"] == "copy"
     and d["mode_reason"] == "xsk_zerocopy disabled by BURSTIO_DISABLE"),
    ("xsk_need_wakeup", lambda d: not d["need_wakeup"]),
])
def test_forced_fallbacks_still_receive(burstio_lab, monkeypatch, disable, check):
    monkeypatch.setenv(ENV_DISABLE, disable)
    lab = burstio_lab
    with lab_xsk(lab) as (xsk, _steer):
        assert check(xsk.describe())
        send_udp(lab, 5)
        assert len(recv_all(xsk, 5)) == 5


@needs_xdp
@pytest.mark.burstio_lab(queues=2)
def test_sockets_on_two_queues_share_a_umem(burstio_lab):
    lab = burstio_lab
    with lab.inside("b"), Umem(4096) as umem, burstio.xdp.Steer([Rule(proto="udp", dport=9000)]) as steer:
        steer.attach(lab.dev["b"])
        first = XskSocket(lab.dev["b"], 0, umem=umem, fill_size=1024, rx_size=1024)
        second = XskSocket(lab.dev["b"], 1, umem=umem, fill_size=1024, rx_size=1024)
        steer.add(first)
        steer.add(second)
        assert second.describe()["umem"] == {"frames": 4096, "frame_size": 2048, "headroom": 0, "sockets": 2,
                                             "shared": True}
        with pytest.raises(ValueError, match="already has a socket on queue 1"):
            XskSocket(lab.dev["b"], 1, umem=umem)
        with pytest.raises(ValueError, match="takes its mode, need_wakeup and multi_buffer"):
            XskSocket(lab.dev["b"], 1, umem=umem, mode="copy")
        n = 400
        with lab.inside("a"):
            senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
            for i in range(n):
                senders[i % 16].sendto(b"%d" % i, (lab.addr("b"), 9000))
        got = []
        for _ in range(100):
            for xsk in (first, second):
                got.extend(recv_all(xsk, n, timeout=0.05))
            if len(got) >= n:
                break
        assert len(got) == n
        assert first.counters["rx_frames"] + second.counters["rx_frames"] == n


# ---- bad arguments and privileges -------------------------------------------------------

@needs_xdp
def test_bad_arguments_are_named():
    with pytest.raises(OSError, match="no network device named 'nope0' in this network namespace"):
        XskSocket("nope0")
    with pytest.raises(ValueError, match="rx_size must be a power of two between 0 and 65536, got 1000"):
        XskSocket("lo", rx_size=1000)
    with pytest.raises(ValueError, match="mode must be 'auto', 'zerocopy' or 'copy', got 'fast'"):
        XskSocket("lo", mode="fast")
    with pytest.raises(ValueError, match="frame_size must be 2048 or 4096, got 3000"):
        Umem(64, 3000)
    with pytest.raises(TypeError, match="frames must be int, got str"):
        Umem("64")
    with pytest.raises(ValueError, match="rx_size and tx_size are both 0"):
        XskSocket("lo", rx_size=0, tx_size=0)


@needs_xdp_lab
def test_a_queue_the_device_lacks(burstio_lab):
    with burstio_lab.inside("b"), pytest.raises(OSError, match="does the device have that many queues"):
        XskSocket(burstio_lab.dev["b"], 5)


def test_af_xdp_without_cap_net_raw_says_so():
    r = run_without_caps(["cap_net_raw"], "from burstio.xdp import Umem\nUmem(64)")
    assert r.returncode != 0 and "AF_XDP sockets need CAP_NET_RAW" in r.stderr, r.stderr


def test_a_umem_over_rlimit_memlock_says_what_it_needs():
    r = run_without_caps(["cap_ipc_lock"], "from burstio.xdp import Umem\nUmem(4096)", memlock=1 << 20)
    assert r.returncode != 0
    assert "over RLIMIT_MEMLOCK (1048576 bytes): it needs CAP_IPC_LOCK or a higher limit" in r.stderr, r.stderr


# ---- multi-buffer ------------------------------------------------------------------------

@needs_xdp
@pytest.mark.burstio_lab(queues=1, mtu=9000)
def test_jumbo_frames_arrive_in_parts(burstio_lab):
    """With multi_buffer, a 6000-byte datagram arrives as parts of 2048-byte
    frames, every part but the last flagged FLAG_CONTINUES."""
    if not burstio.capabilities().xsk_multi_buffer:
        pytest.skip(f"xsk_multi_buffer: {burstio.capabilities()['xsk_multi_buffer'].detail}")
    lab = burstio_lab
    payload = bytes(range(256)) * 23 + b"end"
    with lab_xsk(lab, multi_buffer=True) as (xsk, _steer):
        assert xsk.describe()["multi_buffer"]
        with lab.inside("a"), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(payload, (lab.addr("b"), 9000))
        batch = burstio.PacketBatch(64)
        parts = []
        while not parts or batch.flags[len(batch) - 1] & burstio.xdp.FLAG_CONTINUES:
            assert xsk.recv_batch(batch, 5) > 0
            parts.extend((bytes(batch[i]), batch.flags[i]) for i in range(len(batch)))
        assert len(parts) >= 3
        assert all(f & burstio.xdp.FLAG_CONTINUES for _b, f in parts[:-1]) and not parts[-1][1]
        frame = b"".join(b for b, _f in parts)
        assert frame[14 + 20 + 8:] == payload


@needs_xdp
@pytest.mark.burstio_lab(queues=1, mtu=9000)
def test_a_jumbo_frame_sent_in_parts(burstio_lab):
    if not burstio.capabilities().xsk_multi_buffer:
        pytest.skip(f"xsk_multi_buffer: {burstio.capabilities()['xsk_multi_buffer'].detail}")
    from burstio.xdp.udp import frame

    lab = burstio_lab
    payload = bytes(range(256)) * 23 + b"end"
    with lab.inside("a"):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((lab.addr("a"), 7000))
        rx.settimeout(5)
        mac_a = mac_of(lab.dev["a"])
    with lab_xsk(lab, multi_buffer=True) as (xsk, _steer):
        whole = frame(mac_a, mac_of(lab.dev["b"]), (lab.addr("b"), 9000), (lab.addr("a"), 7000), payload)
        out = burstio.PacketBatch(8)
        for start in range(0, len(whole), 1500):
            i = out.append(whole[start:start + 1500])
            out.flags[i] = burstio.xdp.FLAG_CONTINUES if start + 1500 < len(whole) else 0
        assert xsk.send_batch(out, timeout=5) == len(out)
        assert rx.recv(9000) == payload


@needs_xdp_lab
def test_multi_buffer_forced_off_is_refused_with_the_reason(burstio_lab, monkeypatch):
    monkeypatch.setenv(ENV_DISABLE, "xsk_multi_buffer")
    with burstio_lab.inside("b"), pytest.raises(OSError, match=r"multi-buffer AF_XDP \(XDP_USE_SG\) is not "
                                                                 "available: disabled by BURSTIO_DISABLE") as e:
        XskSocket(burstio_lab.dev["b"], multi_buffer=True)
    assert e.value.errno == errno.EOPNOTSUPP


@needs_xdp
def test_af_xdp_forced_off_is_refused(monkeypatch):
    monkeypatch.setenv(ENV_DISABLE, "af_xdp")
    with pytest.raises(OSError, match="AF_XDP sockets are not available: disabled by BURSTIO_DISABLE"):
        XskSocket("lo")


@needs_xdp_lab
def test_a_signal_handler_runs_during_a_wait_and_its_exception_propagates(burstio_lab):
    """PEP 475: a receive waiting in poll() runs the handler; an exception
    from it ends the receive."""
    class StopError(Exception):
        pass

    def handler(signum, frame):
        raise StopError

    lab = burstio_lab
    old = signal.signal(signal.SIGALRM, handler)
    try:
        with lab_xsk(lab) as (xsk, _steer):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(StopError):
                xsk.recv_batch(burstio.PacketBatch(8), 30)
            send_udp(lab, 1)  # the socket works on after the interruption
            assert len(recv_all(xsk, 1)) == 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@needs_xdp
@pytest.mark.burstio_lab(queues=2)
def test_a_socket_dropped_without_close_leaves_its_umem(burstio_lab):
    """The Umem tracks its sockets weakly: once one is dropped (and closed by
    its collection) another socket may take its queue on the same Umem."""
    lab = burstio_lab
    with lab.inside("b"), Umem(256) as umem:
        first = XskSocket(lab.dev["b"], 0, umem=umem, fill_size=64, rx_size=64, tx_size=64, comp_size=64)
        second = XskSocket(lab.dev["b"], 1, umem=umem, fill_size=64, rx_size=64, tx_size=64, comp_size=64)
        assert umem.sockets == [first, second]
        del second
        gc.collect()
        assert umem.sockets == [first]
        again = XskSocket(lab.dev["b"], 1, umem=umem, fill_size=64, rx_size=64, tx_size=64, comp_size=64)
        assert umem.sockets == [first, again] and again.shared
