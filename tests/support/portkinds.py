"""The kinds of port the port contract runs on, as pairs of ports where what
one puts on its TX ring arrives on the other's RX ring:

- "pipe": the two ends of ``ports.pipe()``;
- "switch": two ports of a ``Switch(forward_by="mac")`` running on a thread
  of this process, each with a static route for its MAC address;
- "nic": two NIC ports (``ports.nic_port``), one on each end of a lab's veth,
  each with a Steer program sending it the UDP frames of its port
  (needs root and AF_XDP: skipped with the reason otherwise).

Payloads are Ethernet/IPv4/UDP frames from a's MAC and address to b's (and
back), so that the same application code runs on every kind. Everything a
pair makes is closed after the test, also on failure (the lab removes its
namespaces).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from burstio import ports
from burstio.testing import lab_or_skip
from burstio.xdp.udp import frame

from .xdp import xdp_reason

KINDS = ("pipe", "switch", "nic")
UDP_PORT = 9000
SLOTS = 64


@dataclass
class Pair:
    kind: str
    a: ports.Port
    b: ports.Port
    mac: dict[str, bytes]
    ip: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)

    def frame(self, src: str, i: int, size: int = 0) -> bytes:
        """Frame i from side src ("a" or "b") to the other side: a UDP
        datagram whose payload starts with its number."""
        dst = "b" if src == "a" else "a"
        payload = b"frame %d " % i
        payload += bytes(max(0, size - 42 - len(payload)))
        return frame(self.mac[dst], self.mac[src], (self.ip[src], 40000 + i % 7), (self.ip[dst], UDP_PORT),
                     payload)


def _macs() -> dict[str, bytes]:
    return {"a": bytes.fromhex("02000000000a"), "b": bytes.fromhex("02000000000b")}


@contextlib.contextmanager
def _pipe() -> Iterator[Pair]:
    a, b = ports.pipe(slots=SLOTS, slot_size=2048, linger=0)
    with a, b:
        yield Pair("pipe", a, b, _macs(), {"a": "10.9.0.1", "b": "10.9.0.2"})


@contextlib.contextmanager
def _switch() -> Iterator[Pair]:
    mac = _macs()
    with ports.Switch(slots=SLOTS, slot_size=2048, forward_by="mac", linger=0) as sw:
        a, b = sw.add_port(key=mac["a"], linger=0), sw.add_port(key=mac["b"], linger=0)
        sw.start()
        with a, b:
            yield Pair("switch", a, b, mac, {"a": "10.9.0.1", "b": "10.9.0.2"}, {"switch": sw})


@contextlib.contextmanager
def _nic() -> Iterator[Pair]:
    why = xdp_reason()
    if why is not None:
        pytest.skip(f"NIC ports need XDP and AF_XDP: {why}")
    from burstio.xdp import Rule, Steer
    from burstio.xdp.udp import mac_of

    lab = lab_or_skip(queues=1)
    with lab, contextlib.ExitStack() as stack:
        side: dict[str, ports.NicPort] = {}
        mac: dict[str, bytes] = {}
        for s in "ab":
            with lab.inside(s):
                steer = stack.enter_context(Steer([Rule(proto="udp", dport=UDP_PORT)]))
                steer.attach(lab.dev[s])
                side[s] = ports.nic_port(lab.dev[s], 0, slots=SLOTS, steer=steer, linger=0)
                stack.callback(side[s].close)
                mac[s] = mac_of(lab.dev[s])
        yield Pair("nic", side["a"], side["b"], mac, {s: lab.addr(s) for s in "ab"}, {"lab": lab})


@contextlib.contextmanager
def make(kind: str) -> Iterator[Pair]:
    """The pair of ports of this kind, closed afterwards."""
    with {"pipe": _pipe, "switch": _switch, "nic": _nic}[kind]() as pair:
        yield pair
