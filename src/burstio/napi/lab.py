"""A network lab: two network namespaces joined by a multi-queue veth pair
with NAPI on, for busy polling, NAPI steering and latency work.

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
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._checks import check_int

__all__ = ["Lab", "LabError", "require_privileges", "leftover_namespaces"]

STATE_DIR = Path("/run/burstio")
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

    # ---- addresses -----------------------------------------------------

    def addr(self, side: str) -> str:
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
        down when this process exits."""
        require_privileges()
        taken = [ns for ns in self.ns.values() if ns in leftover_namespaces(self.name)]
        if taken:
            raise LabError(f"namespaces {', '.join(taken)} already exist: `burstio lab down --name {self.name}`")
        if not persist:
            atexit.register(self.down)
        self._up = True
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        self._save()
        return self

    def _build(self) -> None:
        a, b = self.ns["a"], self.ns["b"]
        q = str(self.queues)
        _run("ip", "netns", "add", a)
        _run("ip", "netns", "add", b)
        _run("ip", "link", "add", self.dev["a"], "numtxqueues", q, "numrxqueues", q, "type", "veth",
             "peer", "name", self.dev["b"], "numtxqueues", q, "numrxqueues", q)
        for side in ("a", "b"):
            ns, dev = self.ns[side], self.dev[side]
            _run("ip", "link", "set", dev, "netns", ns)
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

    def down(self) -> None:
        """Delete the namespaces (and with them everything the lab made).
        Safe to call twice, and when up() failed half way."""
        for ns in self.ns.values():
            _run("ip", "netns", "del", ns, check=False)
        with contextlib.suppress(OSError):
            (STATE_DIR / f"lab-{self.name}.json").unlink()
        self._up = False
        atexit.unregister(self.down)

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: Any) -> None:
        self.down()

    def _save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / f"lab-{self.name}.json").write_text(json.dumps(self.describe()))

    @classmethod
    def load(cls, name: str = "burstio") -> Lab:
        """The lab `burstio lab up --name NAME` made (from its state file)."""
        try:
            d = json.loads((STATE_DIR / f"lab-{name}.json").read_text())
        except FileNotFoundError:
            raise LabError(f"no lab named {name!r} is up (no {STATE_DIR}/lab-{name}.json)") from None
        lab = cls(d["name"], queues=d["queues"], subnet=d["subnet"], ifb=d["ifb"], mtu=d["mtu"])
        lab._up = True
        return lab

    def describe(self) -> dict[str, Any]:
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
        """What is there now: namespaces, links, NAPI instances."""
        out = self.describe()
        out["present"] = {s: ns in leftover_namespaces(self.name) for s, ns in self.ns.items()}
        if all(out["present"].values()):
            with contextlib.suppress(Exception):
                out["napi"] = {s: self.napi_ids(s) for s in ("a", "b")}
        return out
