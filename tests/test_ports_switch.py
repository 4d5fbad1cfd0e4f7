"""The switch as a bridge (burstio.ports.Switch with forward_by="mac"):
learning source MAC addresses, forwarding by destination, flooding broadcast
and unknown ones, static MAC routes, groups of ports by flow hash or in turn,
runts, isolation; and PortRx.spread, the same fan-out without a switch.

Key-mode routing, isolation of hostile clients and the switch's thread are
tests/test_ports.py's and tests/test_ports_hostile.py's; the switch with a
NIC queue is tests/test_ports_nic.py's. One process, forward(0) by hand:
nothing here waits.
"""
from __future__ import annotations

import pytest

from burstio import ports
from burstio.xdp.udp import frame
from support.ports import full

MAC = {k: bytes([2, 0, 0, 0, 0, k]) for k in range(1, 9)}
BCAST = b"\xff" * 6


def eth(dst: bytes, src: bytes, sport: int = 1000, payload: bytes = b"x") -> bytes:
    return frame(dst, src, (f"10.1.0.{src[5]}", sport), (f"10.1.0.{dst[5] or 255}", 9000), payload)


def put(port: ports.Port, *frames: bytes) -> None:
    for f in frames:
        port.tx.put(f)
    port.tx.sync()


def drain(port: ports.Port) -> list[bytes]:
    n = port.rx.sync()
    out = [bytes(port.rx[i]) for i in range(n)]
    port.rx.advance()
    port.rx.sync()
    return out


@pytest.fixture
def sw():
    with ports.Switch(slots=64, slot_size=256, forward_by="mac", linger=0) as s:
        yield s


def test_learns_sources_and_floods_unknown_destinations(sw):
    p1, p2, p3 = sw.add_port(), sw.add_port(), sw.add_port()
    put(p1, eth(MAC[9 - 1], MAC[1]))  # to no one known: flooded
    sw.forward(0)
    assert (len(drain(p2)), len(drain(p3)), sw.counters["flooded"]) == (1, 1, 1)
    assert sw.routes == {"02:00:00:00:00:01": (0, False)}  # learned on the port it came from
    put(p2, eth(MAC[1], MAC[2], payload=b"reply"))
    sw.forward(0)
    assert [f[42:] for f in drain(p1)] == [b"reply"] and drain(p3) == []  # unicast now
    assert sw.routes["02:00:00:00:00:02"] == (1, False)
    put(p3, eth(MAC[1], MAC[2]))  # MAC 2 moves to p3 (a host moved)
    sw.forward(0)
    assert sw.routes["02:00:00:00:00:02"] == (2, False)


def test_broadcast_and_multicast_go_everywhere_else(sw):
    p1, p2, p3 = sw.add_port(), sw.add_port(), sw.add_port()
    put(p1, eth(BCAST, MAC[1]), eth(bytes.fromhex("01005e000001"), MAC[1]))
    sw.forward(0)
    assert (len(drain(p1)), len(drain(p2)), len(drain(p3))) == (0, 2, 2)


def test_runts_are_dropped_and_counted(sw):
    p1, p2 = sw.add_port(), sw.add_port()
    put(p1, b"\xff" * 13, b"")
    sw.forward(0)
    assert (drain(p2), sw.counters["runt_drops"]) == ([], 2)


def test_static_routes_hold_against_learning(sw):
    p1, p2, p3 = sw.add_port(key=MAC[1]), sw.add_port(), sw.add_port()
    put(p3, eth(MAC[2], MAC[1]))  # p3 claims MAC 1 as its source
    sw.forward(0)
    assert len(drain(p1)) == len(drain(p2)) == 1  # (to no one known: flooded)
    put(p2, eth(MAC[1], MAC[2]))
    sw.forward(0)
    assert len(drain(p1)) == 1 and sw.routes["02:00:00:00:00:01"] == (0, True)
    sw.route(MAC[1], None)
    assert "02:00:00:00:00:01" not in sw.routes


def test_every_change_of_the_table_reaches_the_next_packet(sw):
    """The switch remembers, per port, where its last packet went and that
    its source was known: a route, a removal, or an address learned or moved
    on another port changes what that port's next packet does."""
    p1, p2, p3 = sw.add_port(), sw.add_port(), sw.add_port()
    put(p1, eth(MAC[5], MAC[1]), eth(MAC[5], MAC[1]))  # to no one known: flooded
    sw.forward(0)
    assert (len(drain(p2)), len(drain(p3))) == (2, 2)
    put(p3, eth(BCAST, MAC[5]))  # MAC 5 learned on p3 by another port's packet
    sw.forward(0)
    drain(p1), drain(p2)
    put(p1, eth(MAC[5], MAC[1]))
    sw.forward(0)
    assert (len(drain(p2)), len(drain(p3))) == (0, 1)  # unicast now
    sw.route(MAC[5], p2)  # a static route over the learned one
    put(p1, eth(MAC[5], MAC[1]))
    sw.forward(0)
    assert (len(drain(p2)), len(drain(p3))) == (1, 0)
    sw.route(MAC[5], None)  # removed: unknown, flooded again
    put(p1, eth(MAC[5], MAC[1]))
    sw.forward(0)
    assert (len(drain(p2)), len(drain(p3))) == (1, 1)
    put(p2, eth(BCAST, MAC[2]))
    sw.forward(0)
    put(p3, eth(BCAST, MAC[2]))  # MAC 2 moves to p3 ...
    sw.forward(0)
    assert sw.routes["02:00:00:00:00:02"] == (2, False)
    put(p2, eth(BCAST, MAC[2]))  # ... and back to p2, whose last packet came from it too
    sw.forward(0)
    assert sw.routes["02:00:00:00:00:02"] == (1, False)


def test_a_group_keeps_each_flow_on_one_port(sw):
    src, a, b, c = (sw.add_port() for _ in range(4))
    sw.route("02:00:00:00:00:07", [a, b, c], spread="flow")
    put(src, *[eth(MAC[7], MAC[1], sport=2000 + i % 16, payload=b"%d" % i) for i in range(48)])
    sw.forward(0)
    got = [{int.from_bytes(f[34:36], "big") for f in drain(p)} for p in (a, b, c)]
    assert sum(map(len, got)) == 16 and len(set().union(*got)) == 16  # each flow at one port only
    assert all(got)
    assert sw.routes["02:00:00:00:00:07"] == ((1, 2, 3), True)


def test_a_round_robin_group_and_a_member_gone(sw):
    src, a, b = sw.add_port(), sw.add_port(), sw.add_port()
    sw.route(MAC[7], [a, b], spread="round-robin")
    put(src, *[eth(MAC[7], MAC[1]) for _ in range(6)])
    sw.forward(0)
    assert (len(drain(a)), len(drain(b))) == (3, 3)
    b.close()
    sw.forward(0)
    assert sw.port_state(b) == "closed"
    put(src, *[eth(MAC[7], MAC[1]) for _ in range(4)])
    sw.forward(0)
    assert len(drain(a)) == 4 and sw.counters["gone_drops"] == 0
    a.close()
    sw.forward(0)
    put(src, eth(MAC[7], MAC[1]))
    sw.forward(0)
    assert sw.counters["gone_drops"] == 1  # no live member: dropped, counted


def test_a_hostile_client_is_isolated_by_a_mac_switch_too(sw):
    evil, a, b = sw.add_port(), sw.add_port(), sw.add_port(key=MAC[3])
    evil.tx.put(eth(MAC[3], MAC[6]))
    evil.tx.indices[0] = 10**6
    evil.tx.sync()
    put(a, eth(MAC[3], MAC[1], payload=b"hello"))
    sw.forward(0)
    assert sw.port_state(evil) == "isolated"
    assert [f[42:] for f in drain(b)] == [b"hello"]


def test_route_arguments(sw):
    p = sw.add_port()
    with pytest.raises(ValueError, match=full("a MAC address is 6 bytes, written like 02:00:00:00:00:01, got 'zz'")):
        sw.route("zz", p)
    with pytest.raises(TypeError, match=full("a MAC address must be str or bytes, got int")):
        sw.route(5, p)
    with pytest.raises(ValueError, match=full("spread must be 'flow' or 'round-robin', got 'hash'")):
        sw.route(MAC[1], [p], spread="hash")
    with pytest.raises(ValueError, match=full("forward_by must be 'key' or 'mac', got 'ip'")):
        ports.Switch(forward_by="ip")
    with ports.Switch() as keyed:
        q = keyed.add_port()
        keyed.route(5, [q, q])
        assert keyed.routes == {5: ((0, 0), True)}


# ---- PortRx.spread ---------------------------------------------------------------------------

def test_spread_fans_a_ring_out_by_flow_or_in_turn():
    src, sink = ports.pipe(slots=64, slot_size=256)
    outs = [ports.pipe(slots=32, slot_size=256) for _ in range(3)]
    put(src, *[eth(MAC[2], MAC[1], sport=3000 + i % 6) for i in range(30)])
    sink.rx.sync()
    assert sink.rx.spread([near.tx for near, _ in outs]) == 30
    flows = []
    for near, far in outs:
        near.tx.sync()
        flows.append({int.from_bytes(f[34:36], "big") for f in drain(far)})
    assert sum(map(len, flows)) == 6 == len(set().union(*flows))
    assert sink.rx.counters()["forwarded_copied"] == 30  # other regions: copied
    put(src, *[eth(MAC[2], MAC[1]) for _ in range(6)])
    sink.rx.sync()
    assert sink.rx.spread([near.tx for near, _ in outs], by="round-robin") == 6
    for near, far in outs:
        near.tx.sync()
        assert len(drain(far)) == 2


def test_spread_stops_at_a_full_ring_and_keeps_order():
    src, sink = ports.pipe(slots=64, slot_size=256)
    (n1, _f1), (n2, _f2) = ports.pipe(slots=4, slot_size=256), ports.pipe(slots=4, slot_size=256)
    put(src, *[eth(MAC[2], MAC[1], payload=b"%d" % i) for i in range(10)])
    sink.rx.sync()
    assert sink.rx.spread([n1.tx, n2.tx], by="round-robin") == 6  # 3 + 3 slots in flight
    assert len(sink.rx) == 4
    with pytest.raises(TypeError, match="spread\\(\\) argument 1 must be a sequence of 1 to 64 TX rings"):
        sink.rx.spread([])
    with pytest.raises(ValueError, match=full("by must be 'flow' or 'round-robin'")):
        sink.rx.spread([n1.tx], by="x")


# ---- the forwarding table stays bounded and usable --------------------------------------------

def macs(n: int, base: int = 0x10) -> list[bytes]:
    return [bytes([2, 0, 0, base, n >> 8, n & 0xFF]) for n in range(n)]


def test_forgotten_addresses_free_their_table_entries():
    """A port that goes takes what was learned on it out of the table, and a
    removed route frees its entry: after a client filled the table with
    random sources and left, the others learn again."""
    with ports.Switch(slots=64, slot_size=256, forward_by="mac", linger=0, table_size=16) as sw:
        flooder, p2, p3 = sw.add_port(), sw.add_port(), sw.add_port()
        put(flooder, *[eth(MAC[2], m) for m in macs(40)])
        sw.forward(0)
        assert len(sw.routes) == 12 and sw.counters["table_full"] == 28  # 3/4 of 16 entries
        flooder.close()
        sw.forward(0)
        assert sw.routes == {}
        drain(p2)
        put(p2, *[eth(MAC[3], m) for m in macs(12, base=0x20)])
        sw.forward(0)
        assert len(sw.routes) == 12 and set(sw.routes.values()) == {(1, False)}
        for m in macs(12, base=0x20):
            sw.route(m, None)
        for m in macs(12, base=0x30):
            sw.route(m, p3)
        assert len(sw.routes) == 12 and sw.counters["table_full"] == 28


def test_a_port_learns_at_most_max_learned_addresses():
    """A client sending from ever new source addresses fills only its own
    share of the table; its frames are still forwarded, and the other
    ports still learn."""
    with ports.Switch(slots=64, slot_size=256, forward_by="mac", linger=0, max_learned=4) as sw:
        flooder, p2 = sw.add_port(), sw.add_port()
        put(flooder, *[eth(BCAST, m) for m in macs(10)])
        sw.forward(0)
        assert len(drain(p2)) == 10
        assert len(sw.routes) == 4 and sw.counters["learn_limited"] == 6
        put(p2, eth(BCAST, MAC[2]))
        sw.forward(0)
        assert sw.routes["02:00:00:00:00:02"] == (1, False)
        put(p2, *[eth(BCAST, m) for m in macs(3, base=0x20)])  # p2: 4 of its own now
        sw.forward(0)
        assert sw.counters["learn_limited"] == 6
        put(p2, eth(BCAST, macs(1)[0]))  # moving an address to p2 is learning one more: refused
        sw.forward(0)
        assert sw.routes[macs(1)[0].hex(":")] == (0, False) and sw.counters["learn_limited"] == 7
    with pytest.raises(ValueError, match=full("max_learned must be between 1 and 4096, got 0")):
        ports.Switch(max_learned=0)


def test_learning_in_key_mode_is_bounded_too():
    with ports.Switch(slots=64, slot_size=64, linger=0, max_learned=2) as sw:
        p1, p2 = sw.add_port(), sw.add_port(key=7)
        for src in (11, 12, 13):
            p1.tx.put(b"x", dst=7, src=src)
        p1.tx.sync()
        sw.forward(0)
        assert len(drain(p2)) == 3
        assert sw.routes == {7: (1, True), 11: (0, False), 12: (0, False)}
        assert sw.counters["learn_limited"] == 1


def test_nic_gather_is_checked():
    with pytest.raises(ValueError, match=full("nic_gather must be between 0 and 0.01 seconds, got 0.5")):
        ports.Switch(nic_gather=0.5)
    with pytest.raises(ValueError, match="nic_gather must be between"):
        ports.Switch(nic_gather=-1e-6)
    with pytest.raises(TypeError, match=full("nic_gather must be a number of seconds, got str")):
        ports.Switch(nic_gather="1ms")  # type: ignore[arg-type]
    with ports.Switch(nic_gather=100e-6) as sw:
        assert sw._native.nic_gather_ns == 100_000


@pytest.mark.parametrize("seed", range(4))
def test_the_table_after_any_mix_of_routes_and_removals_is_what_was_asked(seed):
    """Entries removed from the middle of a probe run leave every other key
    reachable (the table moves them back instead of leaving tombstones):
    routes() always equals a dict kept alongside, and a full table is full
    at exactly 3/4 of its size."""
    import errno
    import random

    rng = random.Random(seed)
    with ports.Switch(slots=2, table_size=16, max_ports=4) as sw:
        for _ in range(4):
            sw.add_port()
        model: dict[int, int] = {}
        for _ in range(3000):
            key = rng.randrange(1, 40)
            if rng.random() < 0.45:
                sw.route(key, None)
                model.pop(key, None)
            else:
                port = rng.randrange(4)
                if key not in model and len(model) == 12:
                    with pytest.raises(OSError) as e:
                        sw.route(key, port)
                    assert e.value.errno == errno.ENOSPC
                    continue
                sw.route(key, port)
                model[key] = port
            assert sw.routes == {k: (p, True) for k, p in model.items()}
