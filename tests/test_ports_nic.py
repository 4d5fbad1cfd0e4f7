"""NIC ports (burstio.ports.nic_port): an AF_XDP queue behind a port's rings,
the frame pool it shares with pipes for worker processes, zero-copy
forwarding and fan-out, the frame table's checks against a hostile worker,
and the switch bridging a NIC queue and worker processes.

The shared interface is tests/test_ports_contract.py's; this module is what
only a NIC port has. Everything runs in a lab (skipped with the reason
without root or AF_XDP) and is removed afterwards; forked children are
killed. Nothing measures time.
"""
from __future__ import annotations

import errno
import os
import pickle
import struct

import pytest

import burstio
from burstio import ports
from burstio.xdp import Filter, Rule, Steer
from burstio.xdp.udp import mac_of
from support.ports import FORK, LIMIT, child, finished, full
from support.xdp import flood, needs_xdp, needs_xdp_lab

DPORT = 9000


@pytest.fixture
def nic(burstio_lab):
    """A NIC port on queue 0 of b's veth, steered UDP to DPORT, and a Filter
    on a's veth counting (and dropping) the UDP frames that come back."""
    lab = burstio_lab
    with lab.inside("b"), Steer([Rule(proto="udp", dport=DPORT)]) as steer:
        steer.attach(lab.dev["b"])
        port = ports.nic_port(lab.dev["b"], 0, slots=512, steer=steer, linger=0)
        port.lab = lab  # type: ignore[attr-defined]
        port.mac_b = mac_of(lab.dev["b"])  # type: ignore[attr-defined]
        with lab.inside("a"), Filter([Rule(proto="udp", dport=DPORT)]) as back:
            back.attach(lab.dev["a"])
            port.back = back  # type: ignore[attr-defined]
            try:
                yield port
            finally:
                if port._switch is None:
                    port.close()


def take(port: ports.Port, n: int) -> int:
    """Wait until port.rx owns n packets (fails instead of hanging)."""
    k = port.rx.wait(n, timeout=LIMIT)
    assert k == n, f"{k} of {n} frames arrived"
    return k


def swap_macs(view: memoryview) -> None:
    view[0:12] = bytes(view[6:12]) + bytes(view[0:6])


def src_port(frame: bytes | memoryview) -> int:
    return int(struct.unpack_from("!H", frame, 34)[0])


# ---- arguments (no root needed: refused before any socket is made) ------------------

def test_nic_port_arguments_are_checked():
    with pytest.raises(ValueError, match=full("slots must be a power of two between 2 and 65536, got 100")):
        ports.nic_port("lo", slots=100)
    with pytest.raises(ValueError, match=full("frame_size must be 2048 or 4096, got 3000")):
        ports.nic_port("lo", frame_size=3000)
    with pytest.raises(ValueError, match=full("frames must be between 4352 and 4194304, got 100")):
        ports.nic_port("lo", slots=256, frames=100)
    with pytest.raises(TypeError, match=full("fill_size must be int, got str")):
        ports.nic_port("lo", fill_size="x")


# ---- frames and their owners ---------------------------------------------------------------

@needs_xdp_lab
def test_every_frame_is_accounted_for(nic):
    umem = nic.umem
    states = umem.frame_states()
    assert states["port"] == nic.slots  # the TX ring's free slots hold one each
    assert states["fill"] == 2048 and sum(states.values()) == umem.frames
    near, far = nic.pipe(slots=64)
    assert umem.frame_states()["port"] == nic.slots + 2 * 64
    flood(nic.lab, 300, dport=DPORT)
    assert take(nic, 300) == 300
    assert nic.rx.forward(near.tx) == 63  # the pipe holds 63 in flight
    states = umem.frame_states()
    assert sum(states.values()) == umem.frames and states["lent"] == states["tx"] == 0
    del far
    near.close()
    nic.rx.advance()
    nic.rx.sync()  # released: their frames go back to the fill ring


@needs_xdp_lab
def test_a_pipe_shares_the_frames_with_a_worker_process(nic):
    """NIC -> pipe -> forked worker -> pipe -> NIC, every hop a swap of frame
    indices; what comes back is counted in namespace a."""
    near, far = nic.pipe(slots=64)

    def worker() -> None:
        with far.claim():
            done = 0
            while done < 200:
                n = far.rx.wait(1, timeout=LIMIT)
                if not n:
                    os._exit(3)
                for i in range(n):
                    swap_macs(far.rx[i])
                moved = far.rx.forward(far.tx)
                far.tx.sync()
                far.rx.sync()
                done += moved
            far.tx.wait(far.tx.capacity, timeout=LIMIT)  # everything it sent was taken

    with child(worker) as p:
        far.close()  # the worker's now
        flood(nic.lab, 200, dport=DPORT)
        there = back = 0
        while back < 200:
            if there < 200 and nic.rx.wait(1, timeout=0.01):
                there += nic.rx.forward(near.tx)
                near.tx.sync()
                nic.rx.sync()
            near.rx.wait(1, timeout=0.01)
            back += near.rx.forward(nic.tx)
            nic.tx.sync()
            near.rx.sync()
        assert finished(p) == 0
    nic.tx.wait(nic.tx.capacity, timeout=LIMIT)  # transmitted, completions taken
    assert nic.back.counters()[0].packets == 200
    assert nic.rx.counters()["forwarded_zerocopy"] == near.rx.counters()["forwarded_zerocopy"] == 200
    assert nic.rx.counters()["forwarded_copied"] == near.rx.counters()["forwarded_copied"] == 0
    assert nic.counters["nic"]["tx_frames"] == 200 and nic.counters["nic"]["tx_bad"] == 0


@needs_xdp_lab
def test_a_hostile_worker_cannot_hand_the_kernel_a_frame_it_does_not_hold(nic):
    """The worker writes its slots as it likes: a frame in the fill ring, a
    frame of another pipe, one frame twice. The NIC side refuses each before
    the kernel sees it, and the other pipe goes on."""
    near, far = nic.pipe(slots=8)
    other_near, other_far = nic.pipe(slots=8)
    umem = nic.umem
    filled = umem.frame_states()["fill"]
    other_frame = other_far.tx.indices[0]
    # a frame in the fill ring: the lowest frames go there first (free list order)
    fill_frame = 0
    assert fill_frame not in set(far.tx.indices) | set(nic.tx.indices)
    for idx in (fill_frame, other_frame):
        far.tx.put(b"x" * 60)
        far.tx.indices[(far.tx.head - 1) % 8] = idx
        far.tx.sync()
        near.rx.sync()
        with pytest.raises(OSError, match=f"frame {idx} is not one the ring's region holds") as e:
            near.rx.forward(nic.tx)
        assert e.value.errno == errno.EBADMSG and e.value.sent == 0
        assert len(near.rx) == 1  # not taken
        near.rx.advance()
        near.rx.sync()
    twice = far.tx.indices[far.tx.head % 8]
    for _ in range(2):  # the same frame in two slots
        far.tx.put(b"y" * 60)
        far.tx.indices[(far.tx.head - 1) % 8] = twice
    far.tx.sync()
    near.rx.sync()
    with pytest.raises(OSError, match=f"frame {twice} is not one") as e:
        near.rx.forward(nic.tx)
    assert e.value.sent == 1  # the first went, the copy of it did not
    nic.tx.sync()
    assert umem.frame_states()["fill"] == filled  # nothing left the fill ring
    assert nic.counters["nic"]["tx_bad"] == 0
    other_far.tx.put(b"z" * 60)  # the other pipe is served as before
    other_far.tx.sync()
    other_near.rx.sync()
    assert other_near.rx.forward(nic.tx) == 1


@needs_xdp_lab
def test_indices_rewritten_in_the_nic_ports_own_rings_never_reach_the_kernel_twice(nic):
    """The application's RX and TX slots are checked as a worker's are: a
    released RX slot naming another region's frame is counted and left
    alone; a TX slot naming a frame that went back to the fill ring is
    dropped (counted) instead of transmitted."""
    near, _far = nic.pipe(slots=8)
    flood(nic.lab, 4, dport=DPORT)
    take(nic, 4)
    port_frames = nic.umem.frame_states()["port"]
    nic.rx.indices[nic.rx.head] = near.tx.indices[0]  # the pipe's frame: not the NIC port's to free
    shared = nic.tx.indices[nic.tx.head]  # a frame of its own TX ring, named by an RX slot too
    nic.rx.indices[(nic.rx.head + 1) % nic.slots] = shared
    nic.rx.advance()
    nic.rx.sync()
    assert nic.counters["nic"]["returned_bad"] == 1
    assert nic.umem.frame_states()["port"] == port_frames - 3  # shared went back with the 2 honest ones
    nic.tx.put(b"\xff" * 60)  # into the TX slot that still names `shared`
    nic.tx.sync()
    assert nic.counters["nic"]["tx_bad"] == 1 and nic.counters["nic"]["tx_frames"] == 0
    assert nic.back.counters()[0].packets == 0


@needs_xdp_lab
def test_spread_keeps_each_flow_on_one_pipe(nic):
    pipes = [nic.pipe(slots=256) for _ in range(3)]
    flood(nic.lab, 240, dport=DPORT, flows=12)
    take(nic, 240)
    assert nic.rx.spread([near.tx for near, _far in pipes]) == 240
    seen = []
    for near, far in pipes:
        near.tx.sync()
        n = far.rx.sync()
        seen.append({src_port(far.rx[i]) for i in range(n)})
    assert sum(len(s) for s in seen) == 12 and len(set().union(*seen)) == 12  # disjoint: one pipe per flow
    assert all(seen)
    assert nic.rx.counters()["forwarded_zerocopy"] == 240


@needs_xdp_lab
def test_the_nic_port_stays_with_its_process(nic):
    with pytest.raises(RuntimeError, match="in use by another call"):
        nic.xsk.recv_batch(burstio.PacketBatch(4), timeout=0)
    with pytest.raises(TypeError, match="a NIC port works in the process that opened its queue"):
        pickle.dumps(nic)

    def forked() -> None:
        try:
            nic.rx.sync()
        except RuntimeError as e:
            os._exit(0 if "a forked child cannot use" in str(e) else 4)
        os._exit(5)

    p = FORK.Process(target=forked)
    p.start()
    assert finished(p) == 0


@needs_xdp_lab
def test_frames_put_on_the_tx_ring_leave_through_the_device(nic):
    lab = nic.lab
    with lab.inside("a"):
        mac_a = mac_of(lab.dev["a"])
    from burstio.xdp.udp import frame

    frames = [frame(mac_a, nic.mac_b, (lab.addr("b"), 5000 + i), (lab.addr("a"), DPORT), b"out %d" % i)
              for i in range(50)]
    for f in frames:
        nic.tx.put(f)
    assert nic.tx.sync() <= nic.tx.capacity
    assert nic.tx.wait(nic.tx.capacity, timeout=LIMIT) == nic.tx.capacity  # every slot back
    assert nic.back.counters()[0].packets == 50
    assert nic.counters["xsk"]["tx_frames"] == 50


# ---- the switch as a bridge between a NIC queue and worker processes ------------------------

@needs_xdp_lab
def test_the_switch_bridges_a_nic_queue_and_worker_processes(nic):
    """Frames for b's MAC go to the workers by flow; their replies (MACs
    swapped) go back out through the NIC, to the MAC learned there."""
    sw = ports.Switch(slots=256, forward_by="mac", linger=0)
    index = sw.add_nic(nic)
    workers = [sw.add_port(linger=0) for _ in range(2)]
    sw.route(nic.mac_b, workers, spread="flow")
    with pytest.raises(RuntimeError, match="belongs to a switch"):
        nic.rx.sync()
    with pytest.raises(RuntimeError, match="close the switch"):
        nic.close()

    def worker(port: ports.Port) -> None:
        with port.claim():
            flows: set[int] = set()
            while True:
                n = port.rx.wait(1, timeout=LIMIT)
                if not n:
                    os._exit(7)
                for i in range(n):
                    f = bytes(port.rx[i])
                    flows.add(src_port(f))
                    port.tx.put(f[6:12] + f[0:6] + f[12:])
                port.tx.sync()
                port.rx.advance()
                port.rx.sync()

    procs = [FORK.Process(target=worker, args=(w,), daemon=True) for w in workers]
    try:
        for p in procs:
            p.start()
        sw.start()
        flood(nic.lab, 120, dport=DPORT, flows=8)
        deadline_checks = 0
        while nic.back.counters()[0].packets < 120 and deadline_checks < 1000:
            procs[0].join(0.01)
            deadline_checks += 1
        assert nic.back.counters()[0].packets == 120
        with nic.lab.inside("a"):
            mac_a = mac_of(nic.lab.dev["a"]).hex(":")
        assert sw.routes[mac_a] == (index, False)  # learned where a's frames came from
        assert sw.routes[nic.mac_b.hex(":")] == ((1, 2), True)
        c = sw.counters
        assert c["forwarded"] == 240 and c["full_drops"] == c["gone_drops"] == 0
    finally:
        for p in procs:
            p.kill()
        sw.close()
    assert nic.closed


@needs_xdp
def test_a_switch_refuses_what_is_not_a_nic_port():
    with ports.Switch() as sw, pytest.raises(TypeError, match="add_nic\\(\\) takes a NicPort"):
        sw.add_nic(sw.add_port())  # type: ignore[arg-type]
