"""NAPI-aware serving: a SO_REUSEPORT group steered by receive queue.

Busy polling pays off only when every socket a thread polls is fed by the
same NAPI instance (one device receive queue). ``ReusePortGroup`` builds
that arrangement:

- one socket per worker on the same address and port (SO_REUSEPORT),
  optionally tied to one device (SO_BINDTODEVICE);
- a classic-BPF program on the group (SO_ATTACH_REUSEPORT_CBPF) that gives
  each packet (or TCP connection request) to socket ``queue % workers``, so
  worker i sees exactly receive queue i;
- worker processes, each pinned to its CPU, each claiming one NAPI ID, and
  counting (and logging once per flow) any flow that arrives through
  another NAPI instance.

What the kernel lets a worker see: a TCP connection's NAPI ID follows its
packets, so every connection is checked; an unconnected UDP socket records
the NAPI ID of its first packet only (sk_mark_napi_id_once), so a UDP
worker checks its socket once, when traffic starts.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from .. import _native
from .._checks import check_int
from .._types import Address
from .busypoll import napi_id

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

    from .._udp import BurstSocket

__all__ = ["ReusePortGroup", "Worker", "WorkerStats", "queue_steering_program"]

log = logging.getLogger("burstio")

# classic BPF (linux/filter.h, linux/bpf_common.h)
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00  # BPF_ALU | BPF_MOD | BPF_K
_BPF_RET_A = 0x06 | 0x10  # BPF_RET | BPF_A
_SKF_AD_QUEUE = -0x1000 + 24  # SKF_AD_OFF + SKF_AD_QUEUE
_INSN = struct.Struct("HBBI")  # struct sock_filter: code, jt, jf, k
_STATS = ("datagrams", "flows", "mismatched_flows", "socket_napi_id", "connections")
#: what a UDP worker calls for every received batch: handler(sock, batch, n)
_UdpHandler: TypeAlias = "Callable[[BurstSocket, _native.PacketBatch, int], object]"
#: what a TCP worker calls for every connection: handler(conn)
_TcpHandler: TypeAlias = Callable[[socket.socket], object]
#: a whole server run by a worker: server(index, sock, stop), returning once stop is set
_Server: TypeAlias = "Callable[[int, socket.socket, Event], object]"


def queue_steering_program(workers: int) -> bytes:
    """The cBPF program: return (receive queue of the packet) % workers."""
    check_int("workers", workers, 1, 4096)
    return b"".join((_INSN.pack(_BPF_LD_W_ABS, 0, 0, _SKF_AD_QUEUE & 0xFFFFFFFF),
                     _INSN.pack(_BPF_ALU_MOD_K, 0, 0, workers),
                     _INSN.pack(_BPF_RET_A, 0, 0, 0)))


@dataclass(frozen=True)
class Worker:
    """One worker: the CPU it pins itself to and the NAPI ID it claims
    (None: do not pin / do not check)."""

    cpu: int | None = None
    napi_id: int | None = None


@dataclass
class WorkerStats:
    index: int
    claim: Worker
    datagrams: int = 0
    flows: int = 0
    mismatched_flows: int = 0
    socket_napi_id: int = 0
    connections: int = 0
    peers: list[Address] = field(default_factory=list)


def _udp_echo(sock: BurstSocket, batch: _native.PacketBatch, n: int) -> None:
    sock.send_batch(batch, 0, n, on_error="skip")


class ReusePortGroup:
    """``ReusePortGroup(addr, workers, *, proto="udp", device=None, steer=True)``

    ``workers`` is a count or a list of ``Worker(cpu, napi_id)``. Create it
    in the network namespace the sockets belong to. ``start(handler)``
    forks one process per worker; ``stop()`` ends them and returns each
    worker's ``WorkerStats`` (what it received, the flows it saw, the flows
    that came through a NAPI instance other than its claim).
    ``start_servers(server)`` forks the workers to run a server of your own
    on each socket instead (``burstio serve --workers N``).

    With ``steer=True`` worker i gets the packets of receive queue i, so a
    device needs at least as many receive queues as there are workers (on
    loopback every packet is queue 0); ``steer=False`` leaves the choice to
    the kernel's hash of each flow's addresses and ports.
    """

    def __init__(self, addr: Address, workers: int | list[Worker], *, proto: str = "udp",
                 device: str | None = None, steer: bool = True, backlog: int = 128):
        if proto not in ("udp", "tcp"):
            raise ValueError(f"proto must be 'udp' or 'tcp', got {proto!r}")
        self.workers = [Worker() for _ in range(workers)] if isinstance(workers, int) else list(workers)
        if not self.workers:
            raise ValueError("a ReusePortGroup needs at least one worker")
        self.proto, self.device, self.steer = proto, device, steer
        family = socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        self.sockets: list[socket.socket] = []
        try:
            for k in range(len(self.workers)):
                s = socket.socket(family, kind)
                self.sockets.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if device:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
                # the first takes the port (maybe ephemeral), the rest join it
                s.bind(addr if k == 0 else self.sockets[0].getsockname())
                if proto == "tcp":
                    s.listen(backlog)
            if steer:  # one program serves the whole group; index = order of bind
                _native.attach_reuseport_cbpf(self.sockets[0], queue_steering_program(len(self.workers)))
        except BaseException:
            self.close()
            raise
        self._procs: list[BaseProcess] = []
        self._stop = mp.Event()
        self._stats = mp.Array("q", len(self.workers) * len(_STATS))
        self._peers: Queue[tuple[int, Address]] = mp.Queue()

    @property
    def address(self) -> Address:
        """The address the group's sockets share (the port chosen, when 0 was asked)."""
        addr: Address = self.sockets[0].getsockname()
        return addr

    def start(self, handler: _UdpHandler | _TcpHandler | None = None) -> None:
        """Fork the workers. UDP handler(sock, batch, n) answers a received
        batch (default: echo); TCP handler(conn) serves a connection
        (default: echo one message)."""
        ctx = mp.get_context("fork")
        for i in range(len(self.workers)):
            p = ctx.Process(target=self._run, args=(i, handler), daemon=True)
            p.start()
            self._procs.append(p)

    def start_servers(self, server: _Server) -> None:
        """Fork the workers, each running ``server(index, sock, stop)``: its
        own socket of the group (the others closed in that process, pinned to
        its CPU), and ``stop``, a ``multiprocessing`` event that ``stop()``
        sets; ``server`` returns once it is set. The WorkerStats ``stop()``
        returns then count nothing: the server counts for itself."""
        ctx = mp.get_context("fork")
        for i in range(len(self.workers)):
            p = ctx.Process(target=self._run_server, args=(i, server), daemon=True)
            p.start()
            self._procs.append(p)

    def running(self) -> int:
        """How many worker processes are alive."""
        return sum(p.is_alive() for p in self._procs)

    def stop(self, timeout: float = 5.0) -> list[WorkerStats]:
        """End the workers and return what each saw."""
        self._stop.set()
        for p in self._procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join()
        peers: dict[int, list[Address]] = {i: [] for i in range(len(self.workers))}
        while True:
            try:
                i, peer = self._peers.get(timeout=0.05)
            except Exception:  # noqa: BLE001 - queue.Empty, or a queue broken by a killed worker: done
                break
            peers[i].append(peer)
        out = []
        k = len(_STATS)
        for i, w in enumerate(self.workers):
            vals = dict(zip(_STATS, self._stats[i * k:(i + 1) * k], strict=False))
            out.append(WorkerStats(i, w, peers=sorted(peers[i]), **vals))
        self._procs.clear()
        return out

    def close(self) -> None:
        """Close the group's sockets in this process (``stop()`` ends the workers)."""
        for s in self.sockets:
            s.close()

    def __enter__(self) -> ReusePortGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._procs:
            self.stop()
        self.close()

    # ---- inside a worker process ----------------------------------------

    def _count(self, i: int, name: str, n: int = 1, *, set_to: int | None = None) -> None:
        j = i * len(_STATS) + _STATS.index(name)
        with self._stats.get_lock():
            self._stats[j] = set_to if set_to is not None else self._stats[j] + n

    def _mismatch(self, i: int, peer: Any, seen: int) -> None:
        self._count(i, "mismatched_flows")
        log.warning("worker %d (claims NAPI %s, CPU %s): flow %s arrived through NAPI %d",
                    i, self.workers[i].napi_id, self.workers[i].cpu, peer, seen)

    def _enter_worker(self, i: int) -> None:
        for j, s in enumerate(self.sockets):  # a worker owns its socket only
            if j != i:
                s.close()
        cpu = self.workers[i].cpu
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    def _run_server(self, i: int, server: _Server) -> None:
        self._enter_worker(i)
        with contextlib.suppress(KeyboardInterrupt):
            server(i, self.sockets[i], self._stop)

    def _run(self, i: int, handler: Callable[..., object] | None) -> None:
        self._enter_worker(i)
        try:
            if self.proto == "udp":
                self._udp_loop(i, handler or _udp_echo)
            else:
                self._tcp_loop(i, handler)
        except KeyboardInterrupt:
            pass

    def _udp_loop(self, i: int, handler: _UdpHandler) -> None:
        from .._udp import BurstSocket

        sock = BurstSocket(self.sockets[i])
        batch = _native.PacketBatch(64, 2048)
        flows: set[Address]
        claim, flows, checked = self.workers[i].napi_id, set(), False
        while not self._stop.is_set():
            n = sock.recv_batch(batch, 0.05)
            if not n:
                continue
            self._count(i, "datagrams", n)
            seen = napi_id(sock)
            if not checked:  # the kernel records an unconnected socket's first NAPI only
                checked = True
                self._count(i, "socket_napi_id", set_to=seen)
            for peer in set(cast("list[Address]", batch.addresses())) - flows:  # received: all have one
                flows.add(peer)
                self._count(i, "flows")
                self._peers.put((i, peer))
                if claim and seen != claim:
                    self._mismatch(i, peer, seen)
            handler(sock, batch, n)

    def _tcp_loop(self, i: int, handler: _TcpHandler | None) -> None:
        listener, claim = self.sockets[i], self.workers[i].napi_id
        listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            with conn:
                self._count(i, "connections")
                self._count(i, "flows")
                self._peers.put((i, peer))
                conn.settimeout(2.0)
                try:
                    data = conn.recv(65536) if handler is None else None
                except OSError:
                    data = None
                seen = napi_id(conn)  # a connection's NAPI follows its packets
                self._count(i, "socket_napi_id", set_to=seen)
                if claim and seen != claim:
                    self._mismatch(i, peer, seen)
                if handler is not None:
                    handler(conn)
                elif data:
                    conn.sendall(data)

