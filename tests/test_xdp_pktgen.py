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
def test_pacing_never_runs_ahead_of_the_rate(burstio_lab):
    lab = burstio_lab
    rate = 20_000
    with lab.inside("b"), Filter([Rule(proto="udp")]) as f:
        f.attach(lab.dev["b"])
        res = flood(lab, 2_000, rate=rate)
    assert res.rate == rate and res.frames == 2_000
    assert res.frames <= rate * res.seconds + max(1, rate // 1000)  # one chunk may leave early


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
        with pytest.raises(LookupError, match=r"no neighbour entry for 10\.0\.0\.1"):
            pktgen.run(dev, "10.0.0.1", count=1)


@needs_xdp
def test_template_is_a_udp_frame():
    frame = pktgen.template("lo", "127.0.0.1", src="127.0.0.1", dst_mac=b"\0" * 6, src_mac=b"\0" * 6, size=80)
    assert len(frame) == 80 and frame[12:14] == b"\x08\x00"
