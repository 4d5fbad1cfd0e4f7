"""The switch between ports (``burstio.ports.Switch``): its policy (routing
options, ports, NIC queues, the thread that runs it, reporting isolated
clients) over the C core (csrc/ports/switch.c, csrc/ports/forward.c).

Where a packet goes: a client puts it on its port's TX ring; the switch
(party 0 of every client's region) reads it, finds its destination (the
``dst`` key, or the destination MAC address of the frame), copies it into the
RX ring of each port it goes to and publishes; a NIC queue attached with
``add_nic`` is a port whose other side is an AF_XDP socket (csrc/ports/nic.c).
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from . import _native
from ._checks import check_choice, check_int, check_seconds, check_timeout
from .ports import (
    _EFD_FLAGS,
    _SLOT_SIZE_MAX,
    _SLOTS_MAX,
    BROADCAST,
    LINGER,
    SLOT_SIZE,
    SLOTS,
    Port,
    _linger_ns,
    _new_region,
)

if TYPE_CHECKING:
    from ._ports_nic import NicPort

log = logging.getLogger("burstio")

#: a destination: a key (forward_by="key") or a MAC address (forward_by="mac")
Key: TypeAlias = "int | str | bytes"

_UNKNOWN = ("flood", "drop")
_ON_FULL = ("wait", "drop")
_BY = ("key", "mac")
_SPREAD = {"flow": 0, "round-robin": 1}
_MAC_TAG = 1 << 48  # csrc/ports/switch.h: a MAC-mode key is this | the address


def mac_key(mac: object) -> int:
    """The switch's key of a MAC address ("02:00:00:00:00:01", or 6 bytes)."""
    if isinstance(mac, str):
        parts = mac.split(":")
        try:
            raw = bytes(int(p, 16) for p in parts) if len(parts) == 6 and all(len(p) == 2 for p in parts) else b""
        except ValueError:
            raw = b""
    elif isinstance(mac, (bytes, bytearray)):
        raw = bytes(mac)
    else:
        raise TypeError(f"a MAC address must be str or bytes, got {type(mac).__name__}")
    if len(raw) != 6:
        raise ValueError(f"a MAC address is 6 bytes, written like 02:00:00:00:00:01, got {mac!r}")
    return _MAC_TAG | int.from_bytes(raw, "big")


def _key_text(key: int) -> int | str:
    return key if key < _MAC_TAG else (key & ((1 << 48) - 1)).to_bytes(6, "big").hex(":")
_GONE = {0: "live", -errno.EPIPE: "closed", -errno.ECONNRESET: "exited", -errno.EPROTO: "isolated"}


class Switch:
    """Joins N ports by copying: each client gets a region of its own (it
    shares no memory with the other clients) and the switch copies every
    packet into the RX ring of the port its destination names. NIC queues
    (``add_nic``) are ports too: the switch is then a VALE-style bridge
    between a device and processes.

    ``Switch(*, slots=1024, slot_size=2048, max_ports=64, learning=True,
    unknown="flood", on_full="wait", linger=LINGER, table_size=4096,
    forward_by="key", max_learned=None, nic_gather=0)``

    Routing by key (``forward_by="key"``): ``add_port(key=K)`` installs a
    static route K -> that port; with ``learning`` the switch also learns
    every packet's ``src`` key (0 means none). ``dst=BROADCAST`` goes to
    every other port. By MAC address (``forward_by="mac"``, a learning
    bridge): packets are Ethernet frames, routed by their destination MAC;
    with ``learning`` each frame's source MAC is learned on the port it came
    from; broadcast and multicast frames go to every other port; frames
    shorter than an Ethernet header are dropped (``runt_drops``); keys are
    MAC addresses ("02:00:00:00:00:01"). Either way ``route(key, [ports])``
    spreads a destination over a group of ports (by flow hash, or in turn),
    and an unknown destination is flooded (``unknown="flood"``) or dropped
    and counted (``"drop"``). A full destination ring makes the packet wait
    (``on_full="wait"``: lossless; a stuck receiver holds up its senders) or
    drops it (``"drop"``: a slow receiver cannot hold anyone up). Packets to
    a port whose client closed or exited are dropped (``gone_drops``). A
    packet longer than the destination's slots arrives cut to them
    (FLAG_TRUNCATED), except at a NIC queue: a frame that does not fit its
    slots, or was cut short already, is dropped there (``oversize_drops``).

    Learning (as a Linux bridge's, with its port limits and sticky entries):
    static routes are never changed by it; a port learns at most
    ``max_learned`` addresses at a time (default 256, or ``table_size`` if
    smaller), so that a client sending from ever
    new sources fills its own share of the table only (``learn_limited``
    counts the rest; their packets are forwarded all the same); a NIC
    queue's own MAC address is never learned (who receives its frames is a
    static route's business: without one it is an unknown destination); an
    address learned on a NIC queue, a host on the wire, is not taken over by
    a client's port (``learn_refused``), while one learned on a client moves
    to the port it shows up at next (a host that moved). What was learned on
    a port goes with it, and ``route(key, None)`` frees its entry: the table
    fills only with the living. Learned entries do not age otherwise.

    Clients are untrusted: nothing a client writes into its region makes the
    switch raise, block or read outside it. A client that writes something
    impossible there (a position beyond its ring or moving back, a slot
    naming a buffer outside its pool, the switch's claim record) or keeps
    waking the switch for nothing is isolated: its port is closed (its waits
    raise BrokenPipeError), what it had published is dropped
    (``isolated_drops``), packets for it are dropped (``gone_drops``),
    ``port_state`` says ``"isolated"`` and ``isolation_reason`` why, and a
    warning is logged once (logger ``burstio``). The other ports go on.

    NIC queues under load (``nic_gather``, seconds, at most 0.01): the
    kernel wakes an AF_XDP socket at each burst it delivers (64 frames on a
    veth), and a switch that sleeps on the socket wakes as often, paying a
    sleep, a wake-up and a pass each time. With ``nic_gather`` > 0, after a
    pass took frames from a NIC queue the switch looks at that queue again
    only once that long has passed, sleeping through the kernel's wake-ups
    meanwhile (clients still wake it at once): under load it takes the
    queue's frames a few hundred at a time, for up to ``nic_gather`` more
    latency. The first frame after a quiet spell still wakes it at once. 0
    (the default): at each of the kernel's wake-ups. Keep it shorter than
    the time a gathering's frames take to fill the clients' RX rings and the
    queue's ``fill_frames`` at the queue's rate: a gathering that brings more
    than a client's ring holds makes the switch wait for that client
    (``on_full="wait"``) or drop (``"drop"``, ``full_drops``), and one that
    empties the fill ring makes the kernel drop (its socket's
    ``statistics()``). On the port bench (2 clients of 256 slots, 2-3.6 M
    frames/s) 100 us gave the most, 200 us much less than none.

    The switch runs ``run()`` wherever you call it: ``start()`` runs it on a
    thread of this process (forwarding releases the GIL), or call ``run()``
    in a process of its own (e.g. a ``multiprocessing.Process`` forked after
    the ports are added) for the best throughput; a switch with NIC queues
    forwards in the process that made them. Isolation holds against a
    client that holds only its own port's descriptors (received through
    ``send_port``, ``attach`` or pickling into a spawned process): a forked
    child inherits every descriptor of its parent.
    """

    def __init__(self, *, slots: int = SLOTS, slot_size: int = SLOT_SIZE, max_ports: int = 64,
                 learning: bool = True, unknown: str = "flood", on_full: str = "wait",
                 linger: float = LINGER, table_size: int = 4096, forward_by: str = "key",
                 max_learned: int | None = None, nic_gather: float = 0.0):
        check_choice("unknown", unknown, _UNKNOWN)
        check_choice("forward_by", forward_by, _BY)
        check_choice("on_full", on_full, _ON_FULL)
        self._slots = check_int("slots", slots, 2, _SLOTS_MAX, power_of_two=True)
        self._slot_size = check_int("slot_size", slot_size, 1, _SLOT_SIZE_MAX)
        check_int("max_ports", max_ports, 1, 4096)
        check_int("table_size", table_size, 16, 1 << 24, power_of_two=True)
        max_learned = min(256, table_size) if max_learned is None else check_int("max_learned", max_learned, 1,
                                                                                  table_size)
        linger_ns = _linger_ns(linger)
        nic_gather_ns = int(check_seconds("nic_gather", nic_gather, 0, 0.01) * 1e9)
        self._linger = linger
        efd = os.eventfd(0, _EFD_FLAGS)  # the switch's own doorbell: stop() and add_port()
        try:
            self._native = _native.SwitchCore(efd, max_ports, table_size)
        except BaseException:
            os.close(efd)
            raise
        self._native.learning = int(bool(learning))
        self._native.flood_unknown = int(unknown == "flood")
        self._native.wait_full = int(on_full == "wait")
        self._native.linger_ns = linger_ns
        self._native.nic_gather_ns = nic_gather_ns
        self._native.by_mac = int(forward_by == "mac")
        self._native.max_learned = max_learned
        self.forward_by = forward_by
        self._sides: list[Port] = []  # the switch's own side of every region (a NIC port itself)
        self._nics: list[NicPort] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False

    def _key(self, key: Key) -> int:
        if self.forward_by == "mac":
            return mac_key(key)
        return check_int("key", key, 1, BROADCAST - 1)

    def add_port(self, key: Key | None = None, *, linger: float | None = None) -> Port:
        """A new port for a client (hand it to the client's process). With
        ``key`` (a MAC address with ``forward_by="mac"``), packets to key are
        routed to it."""
        if key is not None:
            key = self._key(key)
        if self._closed:
            raise ValueError("add_port() on a closed switch")
        region = _new_region(self._slots, self._slot_size, 1)
        side = Port(region, 0, linger=0)
        index = self._native.add(side.rx, side.tx)
        self._sides.append(side)
        client = Port(region, 1, linger=self._linger if linger is None else linger)
        if key is not None:
            self._native.route(key, index)
            client.key = key if key < _MAC_TAG else None
        client.switch_index = index
        return client

    def add_nic(self, nic: NicPort) -> int:
        """Attach a NIC queue (a ``ports.nic_port`` of this process): what it
        receives is routed like any port's packets, and what is routed to it
        leaves through its device. The switch drives it from now on (every
        call on its rings raises RuntimeError, and it makes no pipes: the
        switch moves its frames without the GIL) and forwards in this
        process; ``close()`` closes it. ValueError while pipes of it still
        hold frames (close and drop them first). With ``forward_by="mac"``
        the device's own MAC address is never learned on any port. Returns
        its port index (``nic.switch_index``)."""
        from ._ports_nic import NicPort

        if not isinstance(nic, NicPort):
            raise TypeError(f"add_nic() takes a NicPort (burstio.ports.nic_port), got {type(nic).__name__}")
        if self._closed:
            raise ValueError("add_nic() on a closed switch")
        index: int = self._native.add_nic(nic._core)
        if self.forward_by == "mac" and nic.mac is not None:
            self._native.local(mac_key(nic.mac))
        self._sides.append(nic)
        self._nics.append(nic)
        nic.switch_index = index
        nic._switch = self
        return index

    def _index(self, port: Port | int) -> int:
        if isinstance(port, Port):
            index: int | None = getattr(port, "switch_index", None)
            if index is None or index >= len(self._sides) or self._sides[index].region is not port.region:
                raise ValueError("that port does not belong to this switch")
            return index
        return check_int("port", port, 0, len(self._sides) - 1)

    def route(self, key: Key, port: Port | int | Sequence[Port | int] | None, *, spread: str = "flow") -> None:
        """Static route: packets to ``key`` (a dst key, or a MAC address with
        ``forward_by="mac"``) go to ``port`` (a Port from ``add_port``, a NIC
        port from ``add_nic``, or an index); None removes the key. A list of
        ports makes a group: each packet goes to one of its live ports, by
        the hash of its flow (``spread="flow"``: addresses, protocol and ports
        of an IP frame in MAC mode, the ``src`` key otherwise, so a flow stays
        on one port) or in turn (``"round-robin"``)."""
        check_choice("spread", spread, tuple(_SPREAD))
        key = self._key(key)
        if port is None or isinstance(port, (Port, int)):
            target = None if port is None else self._index(port)
        else:
            target = self._native.group([self._index(p) for p in port], _SPREAD[spread])
        self._native.route(key, target)

    @property
    def routes(self) -> dict[int | str, tuple[int | tuple[int, ...], bool]]:
        """{destination: (port index, or the indices of a group), static)} for
        every known destination (MAC addresses as text in MAC mode)."""
        groups = self._native.groups()
        return {_key_text(k): (t if t >= 0 else groups[-2 - t][0], static)
                for k, (t, static) in self._native.routes().items()}

    @property
    def counters(self) -> dict[str, int]:
        """forwarded flooded unknown_drops full_drops gone_drops filtered
        bad_slots learned table_full passes sleeps wakeups ports_gone
        ports_isolated isolated_drops idle_kicks runt_drops oversize_drops
        learn_refused learn_limited. Counted in the process that runs the
        switch (a NIC queue's own in its ``counters``)."""
        return self._native.counters()

    def port_state(self, port: Port | int) -> str:
        """'live', or why the switch stopped serving it: 'closed', 'exited',
        'isolated' (it misbehaved: ``isolation_reason`` says how)."""
        return _GONE.get(self._native.port_state(self._index(port)), "gone")

    def isolation_reason(self, port: Port | int) -> str | None:
        """Why the switch isolated ``port`` (None if it did not)."""
        return self._native.isolation_reason(self._index(port))

    def _report(self) -> bool:
        """Log each newly isolated port once; whether there was one."""
        news = self._native.take_isolations()
        for index, reason in news:
            log.warning("switch: port %d isolated, its client misbehaved: %s", index, reason)
        return bool(news)

    def forward(self, timeout: float | None = 0) -> int:
        """Forward for up to ``timeout`` seconds (0: what is there now;
        None: until ``stop()``). Returns the packets taken from clients.
        ``stop()`` from another thread makes it return at once, ``close()``
        makes it raise ValueError."""
        if self._closed:
            raise ValueError("forward() on a closed switch")
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        moved = 0
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            moved += self._native.forward(left)
            news = self._report()  # the native call returns at once after an isolation
            if self._closed:
                raise ValueError("the switch was closed while forward() ran")
            if not news or self._native.stopping:
                return moved

    def run(self) -> None:
        """Forward until ``stop()`` or ``close()`` (from another thread) or a
        signal."""
        while not self._stopping and not self._closed:
            self._native.forward(None)
            self._report()
            if self._native.stopping:
                break

    def start(self) -> Switch:
        """Run the switch on a daemon thread of this process."""
        if self._closed:
            raise ValueError("start() on a closed switch")
        if self._thread is not None:
            raise RuntimeError("the switch is already running")
        self._stopping = False
        self._native.stopping = 0
        self._thread = threading.Thread(target=self.run, name="burstio-switch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Make ``run()`` and ``forward()`` return (and join the thread
        ``start()`` made)."""
        self._stopping = True
        self._native.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop, and close the switch's side of every port: clients' waits
        raise BrokenPipeError; a ``forward()`` running in another thread
        raises ValueError."""
        self._closed = True
        self.stop()
        for side in self._sides:
            if side not in self._nics:
                side.close()
        for nic in self._nics:
            nic._switch = None
            nic.close()

    @property
    def closed(self) -> bool:
        """Whether close() has run."""
        return self._closed

    def __enter__(self) -> Switch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Switch {len(self._sides)} ports, {self._slots} slots x {self._slot_size} B>"
