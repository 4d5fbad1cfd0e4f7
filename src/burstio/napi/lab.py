"""A network lab: two network namespaces joined by a multi-queue veth pair
with NAPI on, for busy polling, NAPI steering and latency work::

    with burstio.napi.lab.Lab(queues=2) as lab:
        with lab.inside("b"):                     # sockets made here live in ns b
            server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            server.bind((lab.addr("b"), 9000))
        with lab.inside("a"):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.sendto(b"hi", (lab.addr("b"), 9000))

A veth delivers through NAPI (so SO_INCOMING_NAPI_ID, busy polling and the
per-NAPI settings apply) only when GRO is requested on the receiving end and
the packet is eligible for it: the lab turns GRO off and on and TSO off on
both ends, so UDP and TCP both take the NAPI path. UDP GRO forwarding stays
off: with it GRO holds plain UDP datagrams until the NAPI poll completes,
which under busy polling means until the busy poll ends. Each veth queue has its own NAPI instance; a flow's
packets go to the queue its sender's transmit queue selects.

Everything the lab makes lives in its two namespaces: deleting them removes
it all, and down() (the context manager, atexit, ``burstio lab down``) does.
It deletes only what it made: a record (``burstio.napi._labrecord``), written
before anything is made, names each namespace the lab made and its identity;
a namespace with a lab's name that the record does not name, or that someone
made again after the lab's was deleted, is left alone, and down() says so.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._checks import check_int
from ._labrecord import LabRecord, all_records, ns_identity, state_dir

__all__ = ["Lab", "LabError", "require_privileges", "leftover_namespaces", "down_all"]

_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21


class LabError(RuntimeError):
    """A lab command failed; the message has the command and its output."""


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def require_privileges() -> None:
    """PermissionError unless this process may make namespaces and links."""
    caps = _effective_caps()
    missing = [n for n, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))
               if not caps >> bit & 1]
    if missing:
        raise PermissionError(errno.EPERM, f"the burstio lab needs {' and '.join(missing)} "
                                           "(run it as root) to create network namespaces and veth links")
    for tool, package in (("ip", "iproute2"), ("ethtool", "ethtool")):
        if shutil.which(tool) is None:
            raise LabError(f"the burstio lab needs `{tool}` (Debian: apt install {package})")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, check=False, text=True)
    if check and r.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r


def leftover_namespaces(prefix: str = "burstio") -> list[str]:
    """Network namespaces whose name starts with prefix (a lab not torn down)."""
    r = _run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.startswith(prefix)]


class Lab:
    """Namespaces ``<name>-a`` and ``<name>-b`` joined by veth ``<name>a`` /
    ``<name>b`` (``queues`` rx and tx queues each), addresses
    ``<subnet>.1`` (a) and ``<subnet>.2`` (b) on a /24; with ``ifb=True`` an
    ifb transmit sink in b at ``<subnet2>.1`` (packets routed to it are
    dropped at transmit, never copied)."""

    def __init__(self, name: str = "burstio", *, queues: int = 2, subnet: str = "10.99.0",
                 ifb: bool = False, mtu: int = 1500):
        if not _NAME.match(name):
            raise ValueError(f"lab name must be 1-10 lowercase letters/digits starting with a letter, got {name!r}")
        check_int("queues", queues, 1, 64)
        if not re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}", subnet):
            raise ValueError(f"subnet must be three octets like '10.99.0', got {subnet!r}")
        self.name, self.queues, self.subnet, self.ifb, self.mtu = name, queues, subnet, ifb, mtu
        self.ns = {"a": f"{name}-a", "b": f"{name}-b"}
        self.dev = {"a": f"{name}a", "b": f"{name}b"}
        self.sink_dev = f"{name}s"
        self._up = False
        self._record: LabRecord | None = None  # what this lab made (up() writes it, load() reads it)

    # ---- addresses -----------------------------------------------------

    def addr(self, side: str) -> str:
        """The address of side 'a' or 'b' (``SUBNET.1``, ``SUBNET.2``)."""
        return f"{self.subnet}.{ {'a': 1, 'b': 2}[self._side(side)] }"

    @property
    def sink_addr(self) -> str:
        """An address routed to the ifb sink (ifb=True), reachable from b."""
        a, b, c = self.subnet.split(".")
        return f"{a}.{b}.{(int(c) + 1) % 256}.2"

    @staticmethod
    def _side(side: str) -> str:
        if side not in ("a", "b"):
            raise ValueError(f"side must be 'a' or 'b', got {side!r}")
        return side

    # ---- up and down ---------------------------------------------------

    def up(self, *, persist: bool = False) -> Lab:
        """Make the lab. Unless persist (``burstio lab up``), it is also torn
        down when this process exits (not when a child forked from it does)."""
        require_privileges()
        self._claim(persist)
        if not persist:
            atexit.register(self._down_at_exit)
        self._up = True
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _claim(self, persist: bool) -> None:
        """Write the lab's record before anything is made, or say why not."""
        try:
            old = LabRecord.load(self.name)
        except ValueError as e:
            raise LabError(str(e)) from None
        if old is not None:
            if any(old.ours(ns)[0] for ns in old.made):
                maker = "" if old.persist or old.maker_alive() else f" (left by process {old.pid}, which is gone)"
                raise LabError(f"lab {self.name} is up{maker}: `burstio lab down --name {self.name}`")
            if not old.persist and old.maker_alive():
                raise LabError(f"lab {self.name} is being made by process {old.pid}")
            old.remove()  # stale: its maker is gone and nothing it made is left
        taken = [ns for ns in self.ns.values() if ns_identity(ns) is not None]
        if taken:
            raise LabError(f"namespaces {', '.join(taken)} already exist and lab {self.name} did not make them: "
                           "choose another name")
        record = LabRecord(self.name, self.settings(), persist=persist)
        try:
            record.claim()
        except FileExistsError:
            raise LabError(f"lab {self.name} is being made by another process") from None
        self._record = record

    def _build(self) -> None:
        a, b = self.ns["a"], self.ns["b"]
        q = str(self.queues)
        record = self._record
        assert record is not None  # _claim() made it
        for ns in (a, b):
            _run("ip", "netns", "add", ns)
            record.note_made(ns)
        _run("ip", "link", "add", self.dev["a"], "numtxqueues", q, "numrxqueues", q, "type", "veth",
             "peer", "name", self.dev["b"], "numtxqueues", q, "numrxqueues", q)
        record.veth = {dev: socket.if_nametoindex(dev) for dev in self.dev.values()}
        record.save()
        for side in ("a", "b"):
            ns, dev = self.ns[side], self.dev[side]
            _run("ip", "link", "set", dev, "netns", ns)
            del record.veth[dev]
            record.save()
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "link", "set", dev, "mtu", str(self.mtu))
            _run("ip", "-n", ns, "addr", "add", f"{self.addr(side)}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            # NAPI on: GRO requested (off, then on); with TSO off on the
            # sender every packet is eligible (drivers/net/veth.c). UDP GRO
            # forwarding stays off: with it, GRO holds plain UDP datagrams
            # until the NAPI poll completes, which a busy poll delays.
            _run("ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "off")
            _run("ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "on", "rx-udp-gro-forwarding", "off",
                 "tso", "off")
        if self.ifb:
            a1, b1, c1 = self.subnet.split(".")
            sink_net = f"{a1}.{b1}.{(int(c1) + 1) % 256}"
            _run("ip", "-n", b, "link", "add", self.sink_dev, "type", "ifb")
            _run("ip", "-n", b, "link", "set", self.sink_dev, "up")
            _run("ip", "-n", b, "addr", "add", f"{sink_net}.1/24", "dev", self.sink_dev)

    def down(self) -> list[str]:
        """Delete the namespaces this lab made (and with them everything in
        them). Returns what it left alone, and why: namespaces with the lab's
        names that it did not make, or that someone made again. Safe to call
        twice, and when up() failed half way."""
        record = self._record
        if record is None:
            return [f"{ns}: the lab has no record of making it" for ns in self.ns.values()
                    if ns_identity(ns) is not None]
        left, failed = [], False
        for dev, ifindex in record.veth.items():  # a veth made but not yet moved into its namespace
            with contextlib.suppress(OSError):
                if socket.if_nametoindex(dev) == ifindex:
                    _run("ip", "link", "del", dev, check=False)
        for ns in self.ns.values():
            if ns_identity(ns) is None:
                continue
            ours, why = record.ours(ns)
            if not ours:
                left.append(why)
                continue
            r = _run("ip", "netns", "del", ns, check=False)
            if record.ours(ns)[0]:
                failed = True
                left.append(f"{ns}: `ip netns del` failed: {r.stderr.strip()}")
        if not failed:
            record.remove()
            self._record = None
        self._up = False
        atexit.unregister(self._down_at_exit)
        return left

    def _down_at_exit(self) -> None:
        if self._record is not None and self._record.pid == os.getpid():  # not in a forked child
            self.down()

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: Any) -> None:
        self.down()

    @classmethod
    def load(cls, name: str = "burstio") -> Lab:
        """The lab named ``name`` that burstio made (from its record)."""
        try:
            record = LabRecord.load(name)
        except ValueError as e:
            raise LabError(str(e)) from None
        if record is None:
            raise LabError(f"no record of a lab named {name!r} (no {state_dir()}/lab-{name}.json)")
        st = record.settings
        lab = cls(record.name, queues=st["queues"], subnet=st["subnet"], ifb=st["ifb"], mtu=st["mtu"])
        lab._record, lab._up = record, True
        return lab

    @property
    def record(self) -> LabRecord | None:
        """What the lab made and who made it (None before up())."""
        return self._record

    def settings(self) -> dict[str, Any]:
        """What the lab was made with (queues, subnet, ifb, mtu), as its record keeps it."""
        return {"queues": self.queues, "subnet": self.subnet, "ifb": self.ifb, "mtu": self.mtu}

    def describe(self) -> dict[str, Any]:
        """The lab's names and addresses: namespaces, devices, addresses, sink."""
        return {"name": self.name, "queues": self.queues, "subnet": self.subnet, "ifb": self.ifb,
                "mtu": self.mtu, "namespaces": self.ns, "devices": self.dev,
                "addresses": {s: self.addr(s) for s in ("a", "b")},
                "sink": {"device": self.sink_dev, "addr": self.sink_addr} if self.ifb else None}

    # ---- working inside ------------------------------------------------

    @contextlib.contextmanager
    def inside(self, side: str) -> Iterator[None]:
        """Run the block (this thread) in namespace a or b: sockets made in
        it belong to that namespace and stay there."""
        from .netdev import entered_netns

        with entered_netns(os.open(f"/run/netns/{self.ns[self._side(side)]}", os.O_RDONLY)):
            yield

    def command(self, side: str, argv: list[str]) -> list[str]:
        """argv, run in namespace `side` (for subprocess)."""
        return ["ip", "netns", "exec", self.ns[self._side(side)], *argv]

    def napi_ids(self, side: str = "b") -> list[int]:
        """The NAPI instances of side's veth, in queue order."""
        from . import netdev

        with self.inside(side):
            return [n.id for n in netdev.napi_list(self.dev[side])]

    def status(self) -> dict[str, Any]:
        """What is there now: the lab's namespaces (present: there and the
        ones it made), who made them, NAPI instances."""
        out = self.describe()
        record = self._record
        out["present"] = {s: record is not None and record.ours(ns)[0] for s, ns in self.ns.items()}
        if record is not None:
            out["made_by"] = {"pid": record.pid, "alive": record.maker_alive(), "persist": record.persist}
        if all(out["present"].values()):
            with contextlib.suppress(Exception):
                out["napi"] = {s: self.napi_ids(s) for s in ("a", "b")}
        return out


def down_all() -> tuple[list[str], list[str]]:
    """Remove every lab burstio made on this host (from their records),
    except labs whose maker still runs them (a ``Lab`` in a live process).
    Returns (labs removed, what was left alone and why)."""
    removed, left = [], []
    for name in all_records():
        try:
            lab = Lab.load(name)
        except LabError as e:
            left.append(f"lab {name}: {e}")
            continue
        record = lab.record
        assert record is not None
        if not record.persist and record.maker_alive() and record.pid != os.getpid():
            left.append(f"lab {name}: in use by process {record.pid}, which made it; not removed")
            continue
        left += lab.down()
        removed.append(name)
    recorded = set(all_records()) | set(removed)
    names = set(leftover_namespaces(""))
    for ns in sorted(names):
        base = ns[:-2]
        if ns.endswith("-a") and f"{base}-b" in names and _NAME.match(base) and base not in recorded:
            left.append(f"{base}-a, {base}-b: no record that burstio made them; left alone")
    return removed, left
