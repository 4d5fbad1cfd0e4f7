"""burstio.xdp.pktgen: exact frame counts, flows, checksums the kernel
accepts, pacing, IPv6, both engines (the xsk one also as the fallback when
live frames are forced off), and the checks of its arguments."""
from __future__ import annotations

import socket

import pytest

import burstio
from burstio._caps import ENV_DISABLE
from burstio.xdp import Filter, Rule, pktgen
from burstio.xdp.udp import mac_of, parse
from support.kernel import SO_RCVBUFFORCE
from support.xdp import flood, lab_xsk, needs_xdp, needs_xdp_lab

ENGINES = ["bpf", "xsk"]


@needs_xdp_lab
@pytest.mark.parametrize("method", ENGINES)
def test_exactly_count_frames_arrive(burstio_lab, method):
    lab = burstio_lab
    with lab.inside("b"), Filter([Rule(proto="udp", dport=7777)]) as f:
        f.attach(lab.dev["b"])
        res = flood(lab, 5000, dport=7777, size=100, method=method)
        counts = f.counters()
    assert res.method == method and res.frames == 5000 and res.size == 100
    # every frame arrived, or the sending device counted it as dropped (its peer's queue was full)
    assert counts[0].packets + res.device_dropped == 5000 and counts[0].bytes == counts[0].packets * 100
    assert res.device_sent + res.device_dropped >= 5000  # the device's count: the kernel may send too
    d = res.as_dict()
    assert d["frames"] == 5000 and d["offered_mpps"] > 0 and d["sent_mpps"] > 0
    # the generator's CPU per frame: the kernel's timing of the bpf engine's frame loops; the xsk engine has none
    assert d["ns_per_frame"] == res.ns_per_frame
    assert (res.ns_per_frame > 0) if method == "bpf" else (res.ns_per_frame is None)


@needs_xdp_lab
@pytest.mark.parametrize("method", ENGINES)
def test_flows_are_source_ports_with_valid_checksums(burstio_lab, method):
    """Each flow is a source port; the kernel's UDP stack accepts every
    frame, so the checksum updated for each port is right."""
    lab = burstio_lab
    with lab.inside("b"):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 23)  # a page per frame: room for all 60
        rx.bind((lab.addr("b"), 7000))
        rx.settimeout(5)
    flood(lab, 60, dport=7000, flows=6, method=method)
    ports = [rx.recvfrom(64)[1][1] for _ in range(60)]
    assert sorted(set(ports)) == list(range(1024, 1030))
    assert sorted(ports) == sorted(list(range(1024, 1030)) * 10)


@needs_xdp_lab
def test_live_frames_forced_off_falls_back_to_xsk(burstio_lab, monkeypatch):
    monkeypatch.setenv(ENV_DISABLE, "bpf_prog_run_live_frames")
    lab = burstio_lab
    with lab.inside("b"), Filter([Rule(proto="udp")]) as f:
        f.attach(lab.dev["b"])
        res = flood(lab, 300)
        assert res.method == "xsk" and f.counters()[0].packets == 300
        with lab.inside("a"), pytest.raises(OSError, match="the bpf engine needs BPF_PROG_RUN with live frames"):
            pktgen.run(lab.dev["a"], lab.addr("b"), dst_mac=b"\x02" * 6, method="bpf", count=1)


@needs_xdp_lab
def test_batches_of_the_kernels_most_send_and_are_counted(burstio_lab):
    lab = burstio_lab
    with lab.inside("b"), Filter([Rule(proto="udp", dport=7777)]) as f:
        f.attach(lab.dev["b"])
        res = flood(lab, 100_000, dport=7777, batch=pktgen.BATCH_MAX)
        counts = f.counters()
    assert res.frames == 100_000 and counts[0].packets + res.device_dropped == 100_000 and counts[0].packets > 0


@needs_xdp_lab
def test_pacing_never_runs_ahead_of_the_rate(burstio_lab):
    lab = burstio_lab
    rate = 20_000
    with lab.inside("b"), Filter([Rule(proto="udp")]) as f:
        f.attach(lab.dev["b"])
        res = flood(lab, 2_000, rate=rate)
    assert res.rate == rate and res.frames == 2_000
    assert res.frames <= rate * res.seconds + max(1, rate // 1000)  # one chunk may leave early


class _Kernel:
    """A simulated clock and BPF_PROG_RUN: each call of n frames costs the
    fixed wait of the kernel's two RCU grace periods (XDP dispatcher) plus
    n frames at ``pps``."""

    def __init__(self, wait=0.024, pps=10e6):
        self.now, self.wait, self.pps, self.calls = 0.0, wait, pps, []

    def clock(self):
        return self.now

    def sleep(self, s):
        self.now += s

    def call(self, n):
        self.calls.append(n)
        self.now += self.wait + n / self.pps


def test_unpaced_calls_are_long_enough_that_the_fixed_wait_hardly_counts():
    """Short calls left the device idle for the fixed wait of every call
    (~2 M frames/s of a possible 10 M with 64K frames per call): calls grow
    from the last call's rate, by 16x at most, to about _CALL_SECONDS each,
    and the last one fits the time left."""
    k = _Kernel()
    done, took = pktgen._bpf_calls(k.call, (3.0, None), None, k.clock, k.sleep)
    assert k.calls[0] == pktgen._FIRST_CALL
    assert all(b <= 16 * a for a, b in zip(k.calls, k.calls[1:], strict=False))
    assert max(k.calls) >= 0.9 * k.pps * pktgen._CALL_SECONDS
    assert done == sum(k.calls) and 3.0 <= took <= 3.0 + k.wait + 0.01
    assert done / took >= 0.9 * k.pps


def test_a_count_ends_exactly_and_a_deadline_bounds_the_calls():
    k = _Kernel()
    done, _took = pktgen._bpf_calls(k.call, (60.0, 25_000_000), None, k.clock, k.sleep)
    assert done == 25_000_000 == sum(k.calls)
    k = _Kernel(pps=1e5)  # a slow device: each call fits the time left, the run ends about on time
    done, took = pktgen._bpf_calls(k.call, (0.5, None), None, k.clock, k.sleep)
    assert len(k.calls) >= 3 and 0.5 <= took <= 0.5 + k.wait + 0.01


@pytest.mark.parametrize("rate", [20_000, 1_000_000])
def test_paced_calls_grow_until_they_keep_up_with_the_rate(rate):
    """A call of rate/1000 frames takes the fixed wait (~24 ms) whatever its
    size: the chunk grows until a call takes no longer than the rate allows
    it, so the run keeps its rate on average, and never runs ahead of it."""
    k = _Kernel()
    done, took = pktgen._bpf_calls(k.call, (2.0, None), rate, k.clock, k.sleep)
    assert done / took >= 0.9 * rate
    assert done <= rate * took + 1
    assert max(k.calls) <= rate * pktgen._CALL_SECONDS + 1


def test_next_call_is_checked_against_nonsense():
    assert pktgen._next_call(1000, 0.0, 1.0, None) == 16_000  # a call that took no time: 16x, no division by zero
    assert pktgen._next_call(1000, 1.0, -1.0, None) == 1  # no time left
    assert pktgen._next_call(10**9, 0.001, 10.0, None) == pktgen._MAX_CALL


@needs_xdp_lab
def test_ipv6_frames_reach_an_xsk(burstio_lab):
    lab = burstio_lab
    with lab_xsk(lab) as (xsk, _steer):
        mac_b = mac_of(lab.dev["b"])
        with lab.inside("a"):
            res = pktgen.run(lab.dev["a"], "2001:db8::2", src="2001:db8::1", dst_mac=mac_b, size=90, count=10,
                             dport=5353)
        assert res.frames == 10
        batch = burstio.PacketBatch(64)
        got = 0
        while got < 10 and (n := xsk.recv_batch(batch, 5)):
            frames = parse(batch)
            assert all(frames.families[i] == 6 and frames.dst_ports[i] == 5353 and frames.payload_lengths[i] == 90 - 62
                       for i in range(n))
            got += n
        assert got == 10


@needs_xdp_lab
def test_arguments_are_checked(burstio_lab):
    with burstio_lab.inside("a"):
        dev = burstio_lab.dev["a"]
        with pytest.raises(ValueError, match="size must be between 42 and 1792, got 20"):
            pktgen.run(dev, "10.0.0.1", dst_mac=b"\x02" * 6, size=20, count=1)
        with pytest.raises(ValueError, match="size must be between 62 and 1792, got 60"):
            pktgen.run(dev, "2001:db8::1", src="2001:db8::2", dst_mac=b"\x02" * 6, size=60, count=1)
        with pytest.raises(ValueError, match="method must be 'auto', 'bpf' or 'xsk', got 'raw'"):
            pktgen.run(dev, "10.0.0.1", method="raw")
        with pytest.raises(ValueError, match="rate must be frames per second"):
            pktgen.run(dev, "10.0.0.1", rate=0)
        for batch in (0, pktgen.BATCH_MAX + 1):
            with pytest.raises(ValueError, match=f"batch must be between 1 and 256, got {batch}"):
                pktgen.run(dev, "10.0.0.1", batch=batch)
        with pytest.raises(LookupError, match=r"no neighbour entry for 10\.0\.0\.1"):
            pktgen.run(dev, "10.0.0.1", count=1)


@needs_xdp
def test_template_is_a_udp_frame():
    frame = pktgen.template("lo", "127.0.0.1", src="127.0.0.1", dst_mac=b"\0" * 6, src_mac=b"\0" * 6, size=80)
    assert len(frame) == 80 and frame[12:14] == b"\x08\x00"
