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
from typing import Any

from . import _native
from ._checks import check_choice, check_int, check_timeout
from .ports import _EFD_FLAGS, _SLOT_SIZE_MAX, _SLOTS_MAX, BROADCAST, LINGER, SLOT_SIZE, SLOTS, Port, _linger_ns, _new_region

log = logging.getLogger("burstio")

_UNKNOWN = ("flood", "drop")
_ON_FULL = ("wait", "drop")
_GONE = {0: "live", -errno.EPIPE: "closed", -errno.ECONNRESET: "exited", -errno.EPROTO: "isolated"}


class Switch:
    """Joins N ports by copying: each client gets a region of its own (it
    shares no memory with the other clients) and the switch copies every
    packet into the RX ring of the port its ``dst`` key names.

    ``Switch(*, slots=1024, slot_size=2048, max_ports=64, learning=True,
    unknown="flood", on_full="wait", linger=LINGER, table_size=4096)``

    Routing: ``add_port(key=K)`` installs a static route K -> that port;
    with ``learning`` the switch also learns every packet's ``src`` key
    (0 means none). ``dst=BROADCAST`` goes to every other port; an unknown
    ``dst`` is flooded (``unknown="flood"``) or dropped and counted
    (``"drop"``). A full destination ring makes the packet wait
    (``on_full="wait"``: lossless; a stuck receiver holds up its senders) or
    drops it (``"drop"``: a slow receiver cannot hold anyone up). Packets to
    a port whose client closed or exited are dropped (``gone_drops``).

    Clients are untrusted: nothing a client writes into its region makes the
    switch raise, block or read outside it. A client that writes something
    impossible there (a position beyond its ring or moving back, a slot
    naming a buffer outside its pool, the switch's claim record) or keeps
    waking the switch for nothing is isolated: its port is closed (its waits
    raise BrokenPipeError), what it had published is dropped
    (``isolated_drops``), packets for it are dropped (``gone_drops``),
    ``port_state`` says ``"isolated"`` and ``isolation_reason`` why, and a
    warning is logged once (logger ``burstio``). The other ports go on.

    The switch runs ``run()`` wherever you call it: ``start()`` runs it on a
    thread of this process (forwarding releases the GIL), or call ``run()``
    in a process of its own (e.g. a ``multiprocessing.Process`` forked after
    the ports are added) for the best throughput. Isolation holds against a
    client that holds only its own port's descriptors (received through
    ``send_port``, ``attach`` or pickling into a spawned process): a forked
    child inherits every descriptor of its parent.
    """

    def __init__(self, *, slots: int = SLOTS, slot_size: int = SLOT_SIZE, max_ports: int = 64,
                 learning: bool = True, unknown: str = "flood", on_full: str = "wait",
                 linger: float = LINGER, table_size: int = 4096):
        check_choice("unknown", unknown, _UNKNOWN)
        check_choice("on_full", on_full, _ON_FULL)
        self._slots = check_int("slots", slots, 2, _SLOTS_MAX, power_of_two=True)
        self._slot_size = check_int("slot_size", slot_size, 1, _SLOT_SIZE_MAX)
        check_int("max_ports", max_ports, 1, 4096)
        check_int("table_size", table_size, 16, 1 << 24, power_of_two=True)
        linger_ns = _linger_ns(linger)
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
        self._sides: list[Port] = []  # the switch's own side of every region
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False

    def add_port(self, key: int | None = None, *, linger: float | None = None) -> Port:
        """A new port for a client (hand it to the client's process). With
        ``key``, packets whose ``dst`` is key are routed to it."""
        if key is not None:
            check_int("key", key, 1, BROADCAST - 1)
        if self._closed:
            raise ValueError("add_port() on a closed switch")
        region = _new_region(self._slots, self._slot_size, 1)
        side = Port(region, 0, linger=0)
        index = self._native.add(side.rx, side.tx)
        self._sides.append(side)
        client = Port(region, 1, linger=self._linger if linger is None else linger)
        if key is not None:
            self._native.route(key, index)
            client.key = key
        client.switch_index = index
        return client

    def _index(self, port: Port | int) -> int:
        if isinstance(port, Port):
            index: int | None = getattr(port, "switch_index", None)
            if index is None or index >= len(self._sides) or self._sides[index].region is not port.region:
                raise ValueError("that port does not belong to this switch")
            return index
        return check_int("port", port, 0, len(self._sides) - 1)

    def route(self, key: int, port: Port | int | None) -> None:
        """Static route: ``dst == key`` goes to ``port`` (a Port from
        ``add_port`` or its index); None removes the key."""
        check_int("key", key, 1, BROADCAST - 1)
        self._native.route(key, None if port is None else self._index(port))

    @property
    def routes(self) -> dict[int, tuple[int, bool]]:
        """{key: (port index, static)} for every known destination."""
        return self._native.routes()

    @property
    def counters(self) -> dict[str, int]:
        """forwarded flooded unknown_drops full_drops gone_drops filtered
        bad_slots learned table_full passes sleeps wakeups ports_gone
        ports_isolated isolated_drops idle_kicks. Counted in the process
        that runs the switch."""
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
            side.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Switch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Switch {len(self._sides)} ports, {self._slots} slots x {self._slot_size} B>"
