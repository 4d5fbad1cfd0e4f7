"""The XDP programs burstio ships: Steer (frames that match go to the
AF_XDP socket of their queue, the rest to the kernel) and Filter (early
drop with per-rule counters), both driven by Rules changed at run time.

Where a frame goes: the device's driver hook runs the program on it before
the kernel allocates anything; the first rule that matches decides (Steer:
to the queue's XskSocket, or on to the kernel; Filter: dropped, or on to
the kernel) and counts it; a frame no rule matches goes on to the kernel
and is counted as unmatched. The programs' source is
src/burstio/xdp/bpf/ (rules.h is the rule layout this module writes).

Policy here: the attach mode (native where the driver has it, generic
otherwise; ``mode=`` forces one), the rules' wording and checks, the
double-buffered rule update, counter sums over CPUs.
"""
from __future__ import annotations

import errno
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .._caps import capabilities
from .._checks import check_choice, check_int
from .._kernel import BPF_F_XDP_HAS_FRAGS, XDP_DROP, XDP_PASS, XDP_REDIRECT
from . import _bpf
from ._xsk import XskSocket, ifindex_of

__all__ = ["Rule", "RuleCount", "Steer", "Filter", "XdpProgram", "MAX_RULES", "ATTACH_MODES", "attach_mode",
           "rules_from"]

#: rules a program holds (BIO_MAX_RULES in rules.h)
MAX_RULES = 32
ATTACH_MODES = ("auto", "native", "generic")
_PROTOS = {"udp": 17, "tcp": 6, "icmp": 1, "icmpv6": 58}
# struct bio_rule: family u8, proto u8, dport_lo u16, dport_hi u16, action u8, pad u8, then 4 x 16 bytes
_RULE = struct.Struct("<BBHHBx16s16s16s16s")
_RULES_HEAD = struct.Struct("<II")  # count, depth
#: how far the program parses a frame for a set of rules (BIO_DEPTH_* in bpf.h): every field, or only what tells
#: the IP version (a set whose rules name nothing else leaves the IP and transport headers unread)
_DEPTH_ALL, _DEPTH_FAMILY = 0, 1
_COUNTER = struct.Struct("<QQ")
_CONFIG = struct.Struct("<II")


def _prefix(name: str, text: str | None) -> tuple[int, bytes, bytes]:
    """(family, address, mask) of an address or prefix, 16 bytes each (IPv4
    in the first 4); (0, zeros, zeros) for None."""
    if text is None:
        return 0, bytes(16), bytes(16)
    if not isinstance(text, str):
        raise TypeError(f"{name} must be an address or prefix string, got {type(text).__name__}")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise ValueError(f"{name} must be an IPv4 or IPv6 address or prefix like '10.0.0.0/8', got {text!r}") from e
    addr = net.network_address.packed.ljust(16, b"\0")
    mask = net.netmask.packed.ljust(16, b"\0")
    return net.version, addr, mask


@dataclass(frozen=True)
class Rule:
    """What a frame must be to match: every field given must hold.

    - ``proto``: "udp", "tcp", "icmp", "icmpv6" or an IP protocol number;
    - ``dport``: a destination port or an inclusive ``(low, high)`` range
      (TCP and UDP; a frame without ports, such as a later fragment, does
      not match a port rule);
    - ``src`` and ``dst``: an IPv4 or IPv6 address or prefix ("10.0.0.0/8");
    - ``family``: 4 or 6 (implied by src and dst);
    - ``action``: Filter "drop" (default) or "pass"; Steer "steer"
      (default) or "pass". The first matching rule wins.

    ``Rule()`` matches every IPv4 and IPv6 frame (not ARP and the like).
    """

    proto: str | int | None = None
    dport: int | tuple[int, int] | None = None
    src: str | None = None
    dst: str | None = None
    family: int | None = None
    action: str | None = None

    def ports(self) -> tuple[int, int]:
        """The destination ports matched, as (low, high) inclusive ((0, 65535):
        any); ValueError for a malformed ``dport``."""
        if self.dport is None:
            return 0, 0xFFFF
        if isinstance(self.dport, tuple):
            if len(self.dport) != 2:
                raise ValueError(f"dport must be a port or a (low, high) pair, got {self.dport!r}")
            lo = check_int("dport low", self.dport[0], 0, 65535)
            hi = check_int("dport high", self.dport[1], lo, 65535)
            return lo, hi
        port = check_int("dport", self.dport, 0, 65535)
        return port, port

    def protocol(self) -> int:
        """The IP protocol number matched (0: any); ValueError for an unknown
        ``proto``."""
        if self.proto is None:
            return 0
        if isinstance(self.proto, str):
            if self.proto.lower() not in _PROTOS:
                raise ValueError(f"proto must be one of {', '.join(map(repr, _PROTOS))} or a number, "
                                 f"got {self.proto!r}")
            return _PROTOS[self.proto.lower()]
        return check_int("proto", self.proto, 1, 255)

    def pack(self, actions: dict[str, int], default: str) -> bytes:
        """The rule as rules.h lays it out; ValueError names a bad field."""
        sf, saddr, smask = _prefix("src", self.src)
        df, daddr, dmask = _prefix("dst", self.dst)
        family = self.family
        if family is not None and family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, got {family!r}")
        implied = {f for f in (sf, df) if f}
        if len(implied) > 1 or (family and implied and family not in implied):
            raise ValueError(f"src, dst and family disagree on the IP version: {self!r}")
        family = family or (implied.pop() if implied else 0)
        action = check_choice("action", self.action or default, list(actions))
        lo, hi = self.ports()
        proto = self.protocol()
        if (lo, hi) != (0, 0xFFFF) and proto not in (0, 6, 17):
            raise ValueError(f"dport applies to TCP and UDP only, got proto {self.proto!r}")
        return _RULE.pack(family, proto, lo, hi, actions[action], saddr, smask, daddr, dmask)


def _names_family_only(packed: bytes) -> bool:
    """Whether a packed rule names nothing but the IP version: no protocol,
    ports or addresses, so the program need not parse past the IP header's
    presence for it."""
    _family, proto, lo, hi, _action, _s, smask, _d, dmask = _RULE.unpack(packed)
    return proto == 0 and (lo, hi) == (0, 0xFFFF) and not any(smask) and not any(dmask)


@dataclass(frozen=True)
class RuleCount:
    """A rule's counters: frames and bytes it matched (rule None: frames no
    rule matched)."""

    rule: Rule | None
    packets: int
    bytes: int


def attach_mode(dev: str | int, mode: str) -> tuple[str, str]:
    """(the mode to try first, why) for ``mode`` "auto", "native" or "generic"."""
    caps = capabilities()
    if mode != "auto":
        return mode, f"mode={mode!r}"
    if caps["xdp_native"].forced_off:
        return "generic", "xdp_native disabled by BURSTIO_DISABLE"
    try:
        from ..napi.netdev import device_list

        ifindex = ifindex_of(dev)
        features = next((d.xdp_features for d in device_list() if d.ifindex == ifindex), None)
    except Exception:  # noqa: BLE001 - no netlink library or family here: try native and see
        features = None
    if features is not None and "basic" not in features:
        return "generic", "the driver has no native XDP (netdev xdp-features lack 'basic')"
    why = "netdev xdp-features: " + ", ".join(features) if features else "native XDP tried first"
    return "native", why


class XdpProgram:
    """A loaded burstio XDP program with rules; see Steer and Filter."""

    PROGRAM = ""
    ACTIONS: ClassVar[dict[str, int]] = {}
    DEFAULT_ACTION = ""

    def __init__(self, rules: Iterable[Rule] = ()):
        rules = self._checked(rules)[0]  # bad rules fail here, before a program or map is made
        caps = capabilities()
        if caps["bpf"].forced_off:  # otherwise the load itself says what is wrong (privileges, ...)
            raise OSError(errno.EOPNOTSUPP, f"XDP programs need bpf(): {caps['bpf'].detail}")
        self._program = self._load()
        self._rules: tuple[Rule, ...] = ()
        self._slot = 1  # the first set_rules writes slot 0
        self.link: _bpf.Link | None = None
        self.dev: str | int | None = None
        self.mode_reason = ""
        try:
            self.set_rules(rules)
        except BaseException:
            self._program.close()
            raise

    def _load(self) -> _bpf.Program:
        """The program, loaded to take multi-buffer frames (BPF_F_XDP_HAS_FRAGS,
        Linux >= 5.18: it reads only the first buffer, and a device with a
        jumbo MTU refuses programs that cannot take them), or without."""
        obj = _bpf.shipped(self.PROGRAM)
        try:
            return _bpf.load(obj, self.PROGRAM, BPF_F_XDP_HAS_FRAGS)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            return _bpf.load(obj, self.PROGRAM)

    # ---- rules -------------------------------------------------------------

    @classmethod
    def _checked(cls, rules: Iterable[Rule]) -> tuple[tuple[Rule, ...], bytes]:
        """The rules checked and packed as the program's map holds them, the
        head (count, parse depth) first (TypeError/ValueError naming what is
        wrong, before the kernel is asked anything)."""
        rules = tuple(rules)
        for i, r in enumerate(rules):
            if not isinstance(r, Rule):
                raise TypeError(f"rules[{i}] must be a Rule, got {type(r).__name__}")
        if len(rules) > MAX_RULES:
            raise ValueError(f"a program holds at most {MAX_RULES} rules, got {len(rules)}")
        packed = [r.pack(cls.ACTIONS, cls.DEFAULT_ACTION) for r in rules]
        depth = _DEPTH_FAMILY if all(_names_family_only(p) for p in packed) else _DEPTH_ALL
        return rules, _RULES_HEAD.pack(len(rules), depth) + b"".join(packed).ljust(MAX_RULES * _RULE.size, b"\0")

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The active rules, in the order they are tried."""
        return self._rules

    def set_rules(self, rules: Iterable[Rule]) -> None:
        """Replace the rules at run time: written to the inactive slot with
        its counters zeroed, then made active with one store (the program
        sees the old set or the new one, never a mix)."""
        rules, body = self._checked(rules)
        slot = 1 - self._slot
        maps = self._program.maps
        maps["rules"].update(slot, body)
        zero = _COUNTER.pack(0, 0)
        for row in range(MAX_RULES + 1):
            maps["counters"].update(slot * (MAX_RULES + 1) + row, zero)
        maps["config"].update(0, _CONFIG.pack(slot, 0))
        self._slot, self._rules = slot, rules

    def counters(self) -> list[RuleCount]:
        """Per rule (in order), then the unmatched frames: packets and bytes,
        summed over CPUs."""
        out = []
        counters = self._program.maps["counters"]
        for row in [*range(len(self._rules)), MAX_RULES]:
            packets = nbytes = 0
            for raw in counters.lookup_per_cpu(self._slot * (MAX_RULES + 1) + row):
                p, b = _COUNTER.unpack(raw)
                packets += p
                nbytes += b
            out.append(RuleCount(self._rules[row] if row < MAX_RULES else None, packets, nbytes))
        return out

    # ---- attach ------------------------------------------------------------

    def attach(self, dev: str | int, mode: str = "auto") -> XdpProgram:
        """Attach to ``dev`` (in this thread's namespace) with a BPF link:
        native mode where the driver has it, else generic (``mode`` forces
        one). The kernel detaches the program when this object is closed or
        the process ends. Returns self."""
        check_choice("mode", mode, ATTACH_MODES)
        if self.link is not None:
            raise ValueError(f"{self.PROGRAM} is attached to {self.dev} already: detach() first")
        ifindex = ifindex_of(dev)
        caps = capabilities()
        first, why = attach_mode(dev, mode)
        order = [first]
        if mode == "auto" and first == "native":
            order.append("generic")
        order = [m for m in order if not caps[f"xdp_{m}"].forced_off]
        if not order:
            raise OSError(errno.EOPNOTSUPP, f"xdp_{first} is disabled by BURSTIO_DISABLE")
        for m in order:
            try:
                self.link = self._program.attach(ifindex, m)
                break
            except OSError as e:
                if m == order[-1]:
                    if e.errno == errno.EBUSY:
                        raise OSError(e.errno, f"{dev} has an XDP program attached already (EBUSY)") from None
                    raise
                why = f"native mode refused ({errno.errorcode.get(e.errno or 0, e.errno)}: {e.strerror}); generic"
        self.dev, self.mode_reason = dev, why
        return self

    @property
    def mode(self) -> str | None:
        """"native" or "generic" while attached, else None."""
        return self.link.mode if self.link else None

    def detach(self) -> None:
        """Detach the program from its device (its BPF link); it stays loaded,
        and can be attached again."""
        if self.link is not None:
            self.link.detach()
            self._program.links.remove(self.link)
        self.link, self.dev = None, None

    def run(self, frame: bytes, queue: int = 0) -> int:
        """Run the program on a copy of ``frame`` (BPF_PROG_RUN, nothing is
        sent or delivered): its XDP action. Counters count it."""
        return self._program.run(frame, 0, queue)[0]

    def describe(self) -> dict[str, Any]:
        """The program, its id, device, attach mode and why that mode, the
        link's id and the rules."""
        return {"program": self.PROGRAM, "id": self._program.id, "dev": self.dev, "mode": self.mode,
                "mode_reason": self.mode_reason, "link_id": self.link.id if self.link else None,
                "rules": [r.__dict__ for r in self._rules]}

    def close(self) -> None:
        """Detach and unload."""
        self.link = None
        self._program.close()

    def __enter__(self) -> XdpProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" on {self.dev} ({self.mode})" if self.link else ""
        return f"<{type(self).__name__} {len(self._rules)} rules{where}>"


class Steer(XdpProgram):
    """Frames that match a rule go to the XskSocket of their receive queue
    (``add(xsk)``); the rest, and those of a queue without a socket, go on to
    the kernel's stack.

    ``Steer(rules)``: e.g. ``Steer([Rule(proto="udp", dport=9000)])``;
    ``Rule(action="pass")`` listed first makes an exception.
    """

    PROGRAM = "steer"
    ACTIONS: ClassVar[dict[str, int]] = {"steer": XDP_REDIRECT, "pass": XDP_PASS}
    DEFAULT_ACTION = "steer"

    def __init__(self, rules: Iterable[Rule] = ()):
        super().__init__(rules)
        self.sockets: dict[int, XskSocket] = {}

    def add(self, xsk: XskSocket) -> None:
        """Steer the matching frames of ``xsk.queue`` to ``xsk``."""
        if not isinstance(xsk, XskSocket):
            raise TypeError(f"xsk must be an XskSocket, got {type(xsk).__name__}")
        if xsk.closed:
            raise OSError(errno.EBADF, "the XskSocket is closed")
        self._program.maps["xsks"].update(xsk.queue, xsk.fileno().to_bytes(4, "little"))
        self.sockets[xsk.queue] = xsk

    def remove(self, xsk: XskSocket) -> None:
        """Stop steering to ``xsk`` (its queue's frames go to the kernel)."""
        if self.sockets.get(xsk.queue) is xsk:
            self._program.maps["xsks"].delete(xsk.queue)
            del self.sockets[xsk.queue]


class Filter(XdpProgram):
    """Early drop: frames that match a rule are dropped in the driver hook
    (or passed, for an exception listed first), counted per rule; the rest
    go on to the kernel's stack, counted as unmatched.

    ``Filter([Rule(proto="udp", dport=53, src="203.0.113.0/24")])``.
    """

    PROGRAM = "filter"
    ACTIONS: ClassVar[dict[str, int]] = {"drop": XDP_DROP, "pass": XDP_PASS}
    DEFAULT_ACTION = "drop"


def rules_from(specs: Sequence[str]) -> list[Rule]:
    """Rules from the command line's ``KEY=VALUE,...`` strings (proto, dport
    as N or LO-HI, src, dst, family, action)."""
    out = []
    for spec in specs:
        fields: dict[str, Any] = {}
        for item in filter(None, spec.split(",")):
            key, sep, value = item.partition("=")
            if not sep or key not in ("proto", "dport", "src", "dst", "family", "action"):
                raise ValueError(f"a rule is KEY=VALUE,... with KEY proto, dport, src, dst, family or action; "
                                 f"got {item!r}")
            if key == "dport":
                lo, dash, hi = value.partition("-")
                fields[key] = (int(lo), int(hi)) if dash else int(lo)
            elif key == "family":
                fields[key] = int(value)
            else:
                fields[key] = value
        out.append(Rule(**fields))
    return out
