"""burstio.napi.reuseport: the cBPF program that picks a worker by receive
queue, and SO_REUSEPORT groups whose workers each claim a NAPI instance (in a
burstio lab: root). Nothing here measures time.
"""
from __future__ import annotations

import logging
import os
import socket
import struct

import pytest

from burstio.napi.lab import Lab
from burstio.napi.reuseport import ReusePortGroup, Worker, queue_steering_program


def test_queue_steering_program():
    prog = queue_steering_program(3)
    insns = [struct.unpack_from("HBBI", prog, 8 * i) for i in range(len(prog) // 8)]
    # A = queue_mapping (ancillary load); A %= 3; return A
    assert insns == [(0x20, 0, 0, (-0x1000 + 24) & 0xFFFFFFFF), (0x94, 0, 0, 3), (0x16, 0, 0, 0)]
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"workers must be between 1 and 4096, got {bad}"):
            queue_steering_program(bad)
    for bad in (True, 1.0):
        with pytest.raises(TypeError, match=f"workers must be int, got {type(bad).__name__}"):
            queue_steering_program(bad)


# ---- in a lab ----------------------------------------------------------------------


def _steering_group(lab: Lab, proto: str, claims: list[int]) -> ReusePortGroup:
    cpus = sorted(os.sched_getaffinity(0))
    workers = [Worker(cpu=cpus[i % len(cpus)], napi_id=c) for i, c in enumerate(claims)]
    with lab.inside("b"):
        return ReusePortGroup((lab.addr("b"), 0), workers, proto=proto, device=lab.dev["b"])


def _flows(lab: Lab, proto: str, addr: tuple, n: int = 24) -> set:
    """n flows from namespace a, each one request answered; returns the
    client ports."""
    peers = set()
    for i in range(n):
        with lab.inside("a"):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
        with c:
            c.settimeout(5)
            msg = f"flow {i}".encode()
            if proto == "udp":
                c.sendto(msg, addr)
                assert c.recv(100) == msg
            else:
                c.connect(addr)
                c.sendall(msg)
                assert c.recv(100) == msg
            peers.add(c.getsockname()[1])
    return peers


@pytest.fixture
def worker_log(tmp_path):
    """The burstio logger's records, from every process forked meanwhile,
    in a file; yields a function that reads it."""
    path = tmp_path / "burstio.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(process)d %(message)s"))
    logger = logging.getLogger("burstio")
    logger.addHandler(handler)
    try:
        yield lambda: (handler.flush(), path.read_text())[1]
    finally:
        logger.removeHandler(handler)
        handler.close()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_steering_puts_each_flow_on_the_worker_of_its_napi(burstio_lab, proto, worker_log):
    lab = burstio_lab
    ids = lab.napi_ids("b")
    with _steering_group(lab, proto, ids) as group:
        group.start()
        peers = _flows(lab, proto, group.address)
        stats = group.stop()
    seen = [{p[1] for p in s.peers} for s in stats]
    assert set().union(*seen) == peers  # every flow reached a worker ...
    assert sum(len(s) for s in seen) == len(peers)  # ... exactly one
    for s in stats:
        assert s.flows == len(s.peers)
        assert s.mismatched_flows == 0, s
        if s.flows:
            assert s.socket_napi_id == s.claim.napi_id  # its traffic came through the NAPI it claimed
    assert all(s.flows > 0 for s in stats), [s.flows for s in stats]  # 24 flows hash onto both queues
    assert "arrived through NAPI" not in worker_log()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_steering_reports_flows_from_another_napi(burstio_lab, proto, worker_log):
    lab = burstio_lab
    ids = lab.napi_ids("b")
    with _steering_group(lab, proto, list(reversed(ids))) as group:  # every claim is wrong
        group.start()
        peers = _flows(lab, proto, group.address, n=12)
        stats = group.stop()
    assert sum(s.flows for s in stats) == len(peers)
    for s in stats:
        assert s.mismatched_flows == s.flows
    err = worker_log()
    assert err.count("arrived through NAPI") == len(peers)
    assert f"(claims NAPI {ids[-1]}, CPU" in err
