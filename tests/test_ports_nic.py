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
import gc
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys

import pytest

import burstio
from burstio import ports
from burstio.xdp import Filter, Rule, Steer
from burstio.xdp.udp import frame, mac_of
from support.paths import ROOT
from support.ports import FORK, LIMIT, child, finished, full
from support.proc import subprocess_env, wait_for
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


def src_port(data: bytes | memoryview) -> int:
    return int(struct.unpack_from("!H", data, 34)[0])


def mac_a(nic: ports.NicPort) -> bytes:
    lab = nic.lab  # type: ignore[attr-defined]
    with lab.inside("a"):
        return mac_of(lab.dev["a"])


def to_a(nic: ports.NicPort, payload: bytes, i: int = 0) -> bytes:
    """A UDP frame from b to a's DPORT: what the Filter on a counts."""
    lab = nic.lab  # type: ignore[attr-defined]
    return frame(mac_a(nic), nic.mac_b, (lab.addr("b"), 5000 + i), (lab.addr("a"), DPORT), payload)  # type: ignore[attr-defined]


def frames_changed(before: bytes, after: bytes, size: int) -> list[int]:
    return [i // size for i in range(0, len(before), size) if before[i:i + size] != after[i:i + size]]


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
    with pytest.raises(ValueError, match=full("fill_frames must be between 1 and 64, got 65")):
        ports.nic_port("lo", fill_size=64, fill_frames=65)


# ---- frames and their owners ---------------------------------------------------------------

@needs_xdp_lab
def test_every_frame_is_accounted_for(nic):
    umem = nic.umem
    states = umem.frame_states()
    assert states["port"] == nic.slots  # the TX ring's free slots hold one each
    assert states["fill"] == 1024 and sum(states.values()) == umem.frames  # fill_frames: half the ring
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
def test_the_pump_keeps_fill_frames_in_the_fill_ring(nic):
    """The pump tops the fill ring up to fill_frames (half of fill_size by
    default), not to its size: fewer frames in flight."""
    umem = nic.umem
    assert umem.frame_states()["fill"] == 1024  # bind() filled it to that too
    for _ in range(3):
        flood(nic.lab, 400, dport=DPORT)
        assert take(nic, 400) == 400
        nic.rx.advance()
        nic.rx.sync()  # released; the pump refills
    states = umem.frame_states()
    assert states["fill"] == 1024 and sum(states.values()) == umem.frames


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
    alone; a put into a TX slot naming a frame that went back to the fill
    ring is refused (the kernel may be writing it), and such a slot published
    anyway is dropped (counted) instead of transmitted."""
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
    with pytest.raises(OSError, match=f"names frame {shared}, which its region does not hold") as e:
        nic.tx.put(b"\xff" * 60)  # into the TX slot that still names `shared`
    assert e.value.errno == errno.EBADMSG
    nic.tx.advance(1)  # published as it is
    nic.tx.sync()
    assert nic.counters["nic"]["tx_bad"] == 1 and nic.counters["nic"]["tx_frames"] == 0
    assert nic.back.counters()[0].packets == 0
    nic.tx.put(to_a(nic, b"the slot has a frame of its own again"))
    nic.tx.sync()
    assert wait_for(lambda: nic.back.counters()[0].packets == 1)


@needs_xdp_lab
def test_the_nic_side_never_writes_a_frame_a_worker_named_but_does_not_hold(nic):
    """A worker writes the index of a frame in the fill ring into the free
    slots of the NIC side's TX ring: put, claim and put_batch there raise
    EBADMSG, and not a byte of that frame changes (nor is it handed back to
    the worker)."""
    near, far = nic.pipe(slots=8)
    before = bytes(nic.buffers[:nic.umem.frame_size])
    for i in range(8):
        far.rx.indices[i] = 0  # frame 0: in the fill ring
    batch = burstio.PacketBatch(1)
    batch.append(b"q" * 60, ("127.0.0.1", 9))
    for call in (lambda: near.tx.put(b"p" * 60), lambda: near.tx.claim(60), lambda: near.tx.put_batch(batch)):
        with pytest.raises(OSError, match="names frame 0, which its region does not hold") as e:
            call()
        assert e.value.errno == errno.EBADMSG
    assert near.tx.sync() == near.tx.capacity and far.rx.sync() == 0
    assert bytes(nic.buffers[:nic.umem.frame_size]) == before


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
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, pytest.raises(TypeError, match="a NIC port works in the process that opened its queue"):
        ports.send_port(a, nic)

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
@pytest.mark.parametrize("gather", [0, 100e-6])
def test_the_switch_bridges_a_nic_queue_and_worker_processes(nic, gather):
    """Frames for b's MAC go to the workers by flow; their replies (MACs
    swapped) go back out through the NIC, to the MAC learned there. Every
    frame arrives too when the switch gathers the queue's frames
    (nic_gather): it looks at the queue again when each gathering ends."""
    sw = ports.Switch(slots=256, forward_by="mac", linger=0, nic_gather=gather)
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


# ---- hostile workers, forks and the pool's bounds ----------------------------------------

@needs_xdp_lab
def test_spread_names_the_ring_a_hostile_worker_broke(nic):
    """A worker writes a frame its pipe does not hold into every slot of its
    pipe (the NIC side's free TX slots too): spread() refuses that pipe, says
    which one it was, and the others take everything once it is left out."""
    pipes = [nic.pipe(slots=128) for _ in range(3)]
    _bad_near, bad_far = pipes[1]
    stray = nic.umem.frames - 1  # the pool's last frame: free (frames go out lowest first)
    for i in range(128):
        bad_far.rx.indices[i] = stray
    flood(nic.lab, 120, dport=DPORT, flows=12)
    take(nic, 120)
    rings = [near.tx for near, _far in pipes]
    with pytest.raises(OSError, match=f"frame {stray} is not one the ring's region holds") as e:
        nic.rx.spread(rings)
    assert e.value.errno == errno.EBADMSG and e.value.index == 1
    del rings[1]
    assert nic.rx.spread(rings) == 120 - e.value.sent
    got = 0
    for near, far in (pipes[0], pipes[2]):
        near.tx.sync()
        got += far.rx.sync()
    assert got == 120 and nic.umem.frame_states()["fill"] == 1024  # fill_frames: half the ring


def worker_echo(far: ports.Port, ready: object) -> None:
    """A worker that sends back whatever reaches it, until it is killed or
    its pipe closes."""
    with far.claim():
        ready.set()  # type: ignore[attr-defined]
        while True:
            try:
                if far.rx.wait(1, timeout=LIMIT):
                    far.rx.forward(far.tx)
                    far.tx.sync()
                    far.rx.sync()
            except (BrokenPipeError, ConnectionResetError):
                os._exit(0)


@needs_xdp_lab
@pytest.mark.parametrize("end", ["killed", "exits"])
def test_every_frame_comes_back_after_a_worker_ends(nic, end):
    """Frames in flight through a worker that is SIGKILLed mid-burst, or
    that leaves cleanly: once the pipe's ports are closed and gone, the
    pool is as it was before the pipe, frame for frame."""
    umem = nic.umem
    idle = umem.frame_states()
    near, far = nic.pipe(slots=64)
    ready = FORK.Event()
    with child(worker_echo, far, ready) as p:
        far.close()
        assert ready.wait(LIMIT)
        flood(nic.lab, 100, dport=DPORT)
        take(nic, 100)
        sent = nic.rx.forward(near.tx)
        near.tx.sync()
        nic.rx.sync()
        assert wait_for(lambda: near.rx.sync() > 0)  # mid-burst: some came back, some are in the worker
        if end == "killed":
            os.kill(p.pid, signal.SIGKILL)
        else:
            near.close()
        p.join(LIMIT)
    assert sent == 63
    states = umem.frame_states()
    assert sum(states.values()) == umem.frames
    near.close()
    near = far = p = None  # the pipe's ports are gone
    gc.collect()
    nic.rx.advance()
    nic.rx.sync()
    assert umem.frame_states() == idle


@needs_xdp_lab
def test_pipes_until_the_pool_runs_out_and_back(nic):
    """Each pipe takes 2 x slots frames; the NIC port keeps what its own
    rings need; a pipe too many is a ValueError saying so, and a pipe that
    is closed and gone gives its frames back."""
    umem = nic.umem
    free = umem.frame_states()["free"]
    reserve = nic.slots + 2048  # its RX ring's slots and its tx ring
    n = (free - reserve) // 512
    held = [nic.pipe(slots=256) for _ in range(n)]
    left = free - n * 512
    with pytest.raises(ValueError, match=full(
            f"pipe(): a pipe of 256 slots needs 512 frames and the pool has {left} free, of which the NIC "
            f"port keeps {reserve} for its own rings: make the pool bigger (nic_port(frames=...)) or close "
            "and drop pipes no longer used")):
        nic.pipe(slots=256)
    for near, far in held[:2]:
        near.close()
        far.close()
    del held[:2], near, far
    gc.collect()
    assert umem.frame_states()["free"] == left + 1024
    assert nic.describe()["pipes"] == n - 2
    held.append(nic.pipe(slots=256))
    nic.close()
    with pytest.raises(ValueError, match=full("pipe() on a closed NIC port")):
        nic.pipe(slots=8)


@needs_xdp_lab
def test_a_forked_child_cannot_take_the_nic_port_over(nic):
    """A child touching the parent's NIC port gets RuntimeError from every
    call (it would otherwise take the port's claim and strand the parent),
    and the parent goes on."""
    nic.tx.sync()
    nic.rx.sync()

    def forked() -> None:
        calls = (lambda: nic.tx.put(b"x" * 60), lambda: nic.rx.advance(0), nic.tx.sync,
                 lambda: nic.rx.peek(burstio.PacketBatch(4)))
        for call in calls:
            try:
                call()
            except RuntimeError as e:
                if "a forked child cannot use" not in str(e):
                    os._exit(4)
                continue
            os._exit(5)
        os._exit(0)

    p = FORK.Process(target=forked)
    p.start()
    assert finished(p) == 0
    nic.tx.put(to_a(nic, b"after the fork"))
    nic.tx.sync()
    assert wait_for(lambda: nic.back.counters()[0].packets == 1)


def forked_copier(f1: ports.Port, f2: ports.Port) -> None:
    with f1.claim(), f2.claim():
        n = f1.rx.wait(2, timeout=LIMIT)
        moved = f1.rx.forward(f2.tx)
        f2.tx.sync()
        f1.rx.sync()
        os._exit(0 if n == moved == 2 and f1.rx.counters()["forwarded_copied"] == 2 else 3)


@needs_xdp_lab
def test_a_worker_forwarding_between_two_pipes_of_a_pool_copies(nic):
    """Only the NIC port's process has the frame table: a worker holding
    two pipes of the pool copies between them (a swap there would leave
    the table behind, and the NIC side would refuse every frame after)."""
    (n1, f1), (n2, f2) = nic.pipe(slots=8), nic.pipe(slots=8)
    with child(forked_copier, f1, f2) as p:
        for i in range(2):
            n1.tx.put(to_a(nic, b"via two pipes", i))
        n1.tx.sync()
        assert finished(p) == 0
    assert n2.rx.wait(2, timeout=LIMIT) == 2
    assert n2.rx.forward(nic.tx) == 2
    nic.tx.sync()
    assert wait_for(lambda: nic.back.counters()[0].packets == 2)


@needs_xdp
def test_a_nic_port_over_rlimit_memlock_says_what_it_needs():
    from support.xdp import run_without_caps

    r = run_without_caps(["cap_ipc_lock"], "from burstio import ports\nports.nic_port('lo', 0)", memlock=1 << 20)
    assert r.returncode == 1
    assert "over RLIMIT_MEMLOCK (1048576 bytes): it needs CAP_IPC_LOCK or a higher limit" in r.stderr, r.stderr


# ---- the switch and a NIC queue: slots, ownership, closing ------------------------------------

@needs_xdp_lab
def test_a_frame_too_big_for_the_nic_is_dropped_never_cut(nic):
    """A switch whose slots are bigger than the NIC port's: a client's frame
    that does not fit a NIC slot is dropped and counted, and nothing beyond
    a slot of the pool is written."""
    with ports.Switch(slots=64, slot_size=4096, forward_by="mac", linger=0) as sw:
        sw.route(mac_a(nic), sw.add_nic(nic))
        client = sw.add_port(linger=0)
        client.tx.put(to_a(nic, b"B" * 3900))
        client.tx.put(to_a(nic, b"s" * 100))
        before = bytes(nic.buffers)
        client.tx.sync()
        sw.forward(0)
        assert len(frames_changed(before, bytes(nic.buffers), nic.umem.frame_size)) == 1  # the small one's
        assert sw.counters["oversize_drops"] == 1 and sw.counters["forwarded"] == 1
        assert wait_for(lambda: nic.back.counters()[0].packets == 1)


@needs_xdp_lab
def test_a_frame_too_big_for_a_client_arrives_cut_to_its_slot(nic):
    """A switch whose slots are smaller than the NIC port's: frames from the
    NIC arrive cut to the client's slot and flagged, and the client's other
    buffers stay untouched."""
    with ports.Switch(slots=64, slot_size=256, forward_by="mac", linger=0) as sw:
        sw.add_nic(nic)
        client = sw.add_port(linger=0)
        sw.route(nic.mac_b, client)  # type: ignore[attr-defined]
        flood(nic.lab, 4, dport=DPORT, size=1000)
        assert wait_for(lambda: sw.forward(0) >= 0 and client.rx.sync() == 4)
        assert [len(client.rx[i]) for i in range(4)] == [256] * 4
        assert all(client.rx.flags(i) & burstio.FLAG_TRUNCATED for i in range(4))
        layout, mem = client.region.layout(), client.memory
        unused = [client.rx.indices[i] for i in range(4, 64)]
        assert not any(any(mem[layout["bufs"] + b * layout["stride"]:][:layout["stride"]]) for b in unused)


@needs_xdp_lab
def test_a_nic_port_in_a_switch_is_the_switchs_alone(nic):
    """Attached, its rings are moved by the switch's thread without the GIL:
    the application's calls on them raise, no pipe shares its frames, and a
    NIC port whose pipes still hold frames cannot be attached."""
    near, far = nic.pipe(slots=8)
    with ports.Switch(slots=64, forward_by="mac", linger=0) as sw:
        with pytest.raises(ValueError, match=full(
                "add_nic(): 16 frames of the NIC port's pool are in its pipes: a NIC port in a switch shares "
                "its frames with no one (close and drop its pipes first)")):
            sw.add_nic(nic)
        near.close()
        far.close()
        del near, far
        gc.collect()
        sw.add_nic(nic)
        other = ports.pipe(slots=8)[0]
        calls = (lambda: nic.tx.put(b"x" * 60), nic.rx.advance, lambda: nic.rx.peek(burstio.PacketBatch(4)),
                 lambda: nic.rx.forward(other.tx), lambda: nic.rx[0], nic.tx.sync)
        for call in calls:
            with pytest.raises(RuntimeError, match="this NIC port belongs to a switch"):
                call()
        with pytest.raises(RuntimeError, match=full("pipe(): this NIC port belongs to a switch: its frames are "
                                                    "the switch's")):
            nic.pipe(slots=8)


CLOSE_WHILE_FORWARDING = """
import sys, threading
from burstio import ports
from burstio.xdp import Rule, Steer

dev, rounds = sys.argv[1], int(sys.argv[2])
big = b"\\xff" * 6 + bytes.fromhex("020000000001") + b"\\x08\\x00" + bytes(1700)
with Steer([Rule(proto="udp", dport=9000)]) as steer:
    steer.attach(dev)
    for _ in range(rounds):
        nic = ports.nic_port(dev, 0, slots=256, steer=steer, linger=0)
        sw = ports.Switch(slots=256, forward_by="mac", linger=0, on_full="drop")
        sw.add_nic(nic)
        clients = [sw.add_port(linger=0) for _ in range(32)]
        for c in clients:
            for _ in range(255):
                c.tx.put(big)

        def run():
            try:
                sw.forward(None)
            except ValueError:
                pass  # closed while it ran

        t = threading.Thread(target=run)
        t.start()
        for c in clients:
            c.tx.sync()
        sw.close()  # while a pass floods every client's frames, the NIC queue's too
        t.join()
        assert nic.xsk.closed
print("survived")
"""


@needs_xdp_lab
def test_closing_a_switch_while_it_forwards_in_another_thread(burstio_lab):
    """close() from another thread while a pass pumps a NIC queue: the
    queue's socket (and the rings the pass reads) goes only once the pass is
    over. Run in a process of its own: what failed here was a segfault."""
    lab = burstio_lab
    argv = lab.command("b", [sys.executable, "-c", CLOSE_WHILE_FORWARDING, lab.dev["b"], "20"])
    r = subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300,
                       check=False)
    assert (r.returncode, r.stdout.strip()) == (0, "survived"), r.stderr[-2000:]


@needs_xdp_lab
def test_no_client_takes_over_an_address_of_the_wire_or_the_nic(nic):
    """The NIC queue's own MAC is never learned (who gets its frames is a
    static route's business), and an address learned on the NIC queue stays
    there when a client sends from it: replies keep going out of the NIC."""
    lab = nic.lab
    with ports.Switch(slots=64, forward_by="mac", linger=0) as sw:
        index = sw.add_nic(nic)
        spoofer, honest = sw.add_port(linger=0), sw.add_port(linger=0)
        flood(lab, 1, dport=DPORT)  # from a: its MAC is learned on the NIC queue
        assert wait_for(lambda: sw.forward(0) >= 0 and honest.rx.sync() == 1)
        assert sw.routes == {mac_a(nic).hex(":"): (index, False)}
        spoofer.tx.put(frame(b"\xff" * 6, mac_a(nic), ("10.0.0.1", 1), ("10.0.0.2", 2), b"i am a"))
        spoofer.tx.put(frame(b"\xff" * 6, nic.mac_b, ("10.0.0.1", 1), ("10.0.0.2", 2), b"i am b"))
        spoofer.tx.sync()
        sw.forward(0)
        assert sw.routes == {mac_a(nic).hex(":"): (index, False)}
        assert sw.counters["learn_refused"] == 1
        honest.tx.put(to_a(nic, b"reply"))
        honest.tx.sync()
        sw.forward(0)
        assert wait_for(lambda: nic.back.counters()[0].packets == 1)  # out of the NIC, not to the spoofer
        spoofer.rx.sync()
        assert [bytes(spoofer.rx[i])[42:] for i in range(len(spoofer.rx))] == [bytes(honest.rx[0])[42:]]


@needs_xdp_lab
def test_a_broadcast_from_the_wire_is_never_flooded_back_to_it(nic):
    """Broadcast frames from the NIC queue go to every client, never back
    out of the device they came in on (a storm would loop)."""
    with ports.Switch(slots=64, forward_by="mac", linger=0) as sw:
        sw.add_nic(nic)
        clients = [sw.add_port(linger=0) for _ in range(2)]
        with nic.lab.inside("a"):  # type: ignore[attr-defined]
            from burstio.xdp import pktgen
            pktgen.run(nic.lab.dev["a"], nic.lab.addr("b"), dport=DPORT, dst_mac=b"\xff" * 6, count=50,  # type: ignore[attr-defined]
                       seconds=60)
        assert wait_for(lambda: sw.forward(0) >= 0 and all(c.rx.sync() == 50 for c in clients))
        assert sw.counters["flooded"] == 50 and sw.counters["forwarded"] == 100
        assert nic.counters["nic"]["tx_frames"] == 0 and nic.back.counters()[0].packets == 0  # type: ignore[attr-defined]
