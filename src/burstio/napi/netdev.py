"""netdev generic netlink: devices, queues, NAPI instances and their knobs.

Since Linux 6.13 every NAPI instance has its own defer-hard-irqs,
gro-flush-timeout and irq-suspend-timeout, read and written over the
"netdev" generic netlink family (napi-get / napi-set); queue-get maps
queues to NAPI IDs and qstats-get gives per-queue counters. pyroute2 does
the netlink work (sockets, family resolution, message framing and
attribute parsing); this module declares the netdev family's messages
(numbers from include/uapi/linux/netdev.h) and the policy around them.
Where the kernel lacks per-NAPI settings, the device-wide sysfs files
(napi_defer_hard_irqs, gro_flush_timeout) are the fallback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import re
import socket
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, overload

from .. import _native
from .._checks import check_int
from .._kernel import CLONE_NEWNET, SIOCGSKNS

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["Device", "Napi", "Queue", "NetdevError", "device_list", "napi_list", "queue_list", "qstats",
           "napi_get", "napi_set", "configure_napi", "device_settings", "set_device_settings", "irq_counts", "netns_of",
           "NAPI_KNOBS"]

NETDEV_CMD_DEV_GET = 1
NETDEV_CMD_QUEUE_GET = 10
NETDEV_CMD_NAPI_GET = 11
NETDEV_CMD_QSTATS_GET = 12
NETDEV_CMD_NAPI_SET = 14
NETDEV_QUEUE_TYPE = {0: "rx", 1: "tx"}
NETDEV_QSTATS_SCOPE_QUEUE = 1

#: per-NAPI settings napi_set() takes, and their limits
NAPI_KNOBS = {
    "defer_hard_irqs": (0, 2**31 - 1),
    "gro_flush_timeout": (0, 2**64 - 1),  # ns
    "irq_suspend_timeout": (0, 2**64 - 1),  # ns
}


class NetdevError(OSError):
    """A netdev netlink request failed (errno set), or the family is missing."""


@dataclass(frozen=True)
class Device:
    ifindex: int
    ifname: str
    xdp_features: list[str] = field(default_factory=list)
    xdp_zc_max_segs: int | None = None


@dataclass(frozen=True)
class Napi:
    id: int
    ifindex: int
    ifname: str
    irq: int | None = None
    pid: int | None = None  # the NAPI thread, when threaded
    defer_hard_irqs: int | None = None
    gro_flush_timeout: int | None = None
    irq_suspend_timeout: int | None = None


@dataclass(frozen=True)
class Queue:
    id: int
    ifindex: int
    ifname: str
    type: str  # "rx" or "tx"
    napi_id: int | None = None
    stats: dict[str, int] = field(default_factory=dict)


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"if{ifindex}"


def _ifindex(dev: str | int) -> int:
    if isinstance(dev, int):
        return dev
    try:
        return socket.if_nametoindex(dev)
    except OSError:
        raise NetdevError(errno.ENODEV, f"no network device named {dev!r}") from None


# ---- the netdev family for pyroute2 ------------------------------------------

def _messages() -> tuple[type[Any], type[Any], type[Any], type[Any]]:
    """The netdev message classes (built on first use: pyroute2 is imported
    only by code that talks netlink)."""
    from pyroute2.netlink import genlmsg

    class napi_msg(genlmsg):  # type: ignore[misc]  # pyroute2 has no type information
        prefix = "NETDEV_A_NAPI_"
        nla_map = (
            ("NETDEV_A_NAPI_UNSPEC", "none"),
            ("NETDEV_A_NAPI_IFINDEX", "uint32"),
            ("NETDEV_A_NAPI_ID", "uint32"),
            ("NETDEV_A_NAPI_IRQ", "uint32"),
            ("NETDEV_A_NAPI_PID", "uint32"),
            ("NETDEV_A_NAPI_DEFER_HARD_IRQS", "uint32"),
            # NLA_UINT: 4 or 8 bytes (pyroute2 has no such type): raw, see _uint
            ("NETDEV_A_NAPI_GRO_FLUSH_TIMEOUT", "cdata"),
            ("NETDEV_A_NAPI_IRQ_SUSPEND_TIMEOUT", "cdata"),
            ("NETDEV_A_NAPI_THREADED", "uint32"),
        )

    class dev_msg(genlmsg):  # type: ignore[misc]  # pyroute2 has no type information
        prefix = "NETDEV_A_DEV_"
        nla_map = (
            ("NETDEV_A_DEV_UNSPEC", "none"),
            ("NETDEV_A_DEV_IFINDEX", "uint32"),
            ("NETDEV_A_DEV_PAD", "none"),
            ("NETDEV_A_DEV_XDP_FEATURES", "uint64"),
            ("NETDEV_A_DEV_XDP_ZC_MAX_SEGS", "uint32"),
            ("NETDEV_A_DEV_XDP_RX_METADATA_FEATURES", "uint64"),
            ("NETDEV_A_DEV_XSK_FEATURES", "uint64"),
        )

    class queue_msg(genlmsg):  # type: ignore[misc]  # pyroute2 has no type information
        prefix = "NETDEV_A_QUEUE_"
        nla_map = (
            ("NETDEV_A_QUEUE_UNSPEC", "none"),
            ("NETDEV_A_QUEUE_ID", "uint32"),
            ("NETDEV_A_QUEUE_IFINDEX", "uint32"),
            ("NETDEV_A_QUEUE_TYPE", "uint32"),
            ("NETDEV_A_QUEUE_NAPI_ID", "uint32"),
        )

    names = ["UNSPEC", "IFINDEX", "QUEUE_TYPE", "QUEUE_ID", "SCOPE", "UNUSED5", "UNUSED6", "UNUSED7",
             "RX_PACKETS", "RX_BYTES", "TX_PACKETS", "TX_BYTES", "RX_ALLOC_FAIL", "RX_HW_DROPS",
             "RX_HW_DROP_OVERRUNS", "RX_CSUM_COMPLETE", "RX_CSUM_UNNECESSARY", "RX_CSUM_NONE",
             "RX_CSUM_BAD", "RX_HW_GRO_PACKETS", "RX_HW_GRO_BYTES", "RX_HW_GRO_WIRE_PACKETS",
             "RX_HW_GRO_WIRE_BYTES", "RX_HW_DROP_RATELIMITS", "TX_HW_DROPS", "TX_HW_DROP_ERRORS",
             "TX_CSUM_NONE", "TX_NEEDS_CSUM", "TX_HW_GSO_PACKETS", "TX_HW_GSO_BYTES",
             "TX_HW_GSO_WIRE_PACKETS", "TX_HW_GSO_WIRE_BYTES", "TX_HW_DROP_RATELIMITS", "TX_STOP",
             "TX_WAKE"]

    class qstats_msg(genlmsg):  # type: ignore[misc]  # pyroute2 has no type information
        prefix = "NETDEV_A_QSTATS_"
        nla_map = tuple(
            ("NETDEV_A_QSTATS_" + n, "none" if n.startswith("UNUSED") or n == "UNSPEC"
             else ("uint32" if n in ("IFINDEX", "QUEUE_TYPE", "QUEUE_ID") else "cdata"))
            for n in names)
    return napi_msg, queue_msg, qstats_msg, dev_msg


_CLASSES: list[type[Any]] = []


def _classes() -> list[type[Any]]:
    if not _CLASSES:
        _CLASSES.extend(_messages())
    return _CLASSES


def _request(cmd: int, kind: int, attrs: Sequence[tuple[str, object]] | None = None,
             dump: bool = True) -> list[Any]:
    """One netdev request; returns the replies, converted (see _decoded).
    kind: 0 napi, 1 queue, 2 qstats, 3 dev."""
    try:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.generic import GenericNetlinkSocket
    except ImportError:
        raise NetdevError(errno.ENOSYS, "netdev netlink needs pyroute2: pip install 'burstio[napi]'") from None
    cls = _classes()[kind]
    s = GenericNetlinkSocket()
    try:
        try:
            s.bind("netdev", cls)
        except NetlinkError as e:
            raise NetdevError(errno.ENOENT, f"no netdev generic netlink family (Linux >= 6.8): {e}") from None
        msg = cls()
        msg["cmd"] = cmd
        msg["version"] = 1
        msg["attrs"] = attrs or []
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        with _reply_errors(cmd):
            return _decoded(kind, s.nlm_request(msg, msg_type=s.prid, msg_flags=flags), s.prid)
    finally:
        s.close()


@contextlib.contextmanager
def _reply_errors(cmd: int) -> Iterator[None]:
    """The kernel's refusal, or a reply pyroute2 cannot decode, as NetdevError."""
    from pyroute2.netlink.exceptions import NetlinkDecodeError, NetlinkError

    try:
        yield
    except NetlinkError as e:
        if not (isinstance(e.code, int) and 0 < e.code < 4096):  # the kernel's errors are 1 to 4095
            raise NetdevError(errno.EBADMSG, f"malformed reply to netdev request {cmd}: error {e.code!r}") from None
        raise NetdevError(e.code, f"netdev request {cmd} failed: {os.strerror(e.code)}") from None
    except (NetlinkDecodeError, struct.error, OverflowError) as e:
        # pyroute2's decoder on a malformed reply (OverflowError: it words an error message
        # carrying a code beyond the int range with os.strerror, which overflows)
        raise NetdevError(errno.EBADMSG, f"malformed reply to netdev request {cmd}: {e}") from None


def _decoded(kind: int, messages: Iterable[Any], family: int) -> list[Any]:
    """The family's messages among ``messages``, converted (Napi, Queue, a
    qstats entry, Device). A message that lacks what its kind needs, or has
    it in the wrong shape, raises NetdevError (EBADMSG)."""
    convert = (_napi, _queue, _qstats_entry, _device)[kind]
    out = []
    for m in messages:
        error = m["header"].get("error")
        if error is not None:
            raise error
        if m["header"].get("type") == family:
            out.append(convert(m))
    return out


#: the message type _decode_replies gives the netdev family (the kernel assigns the real one)
FUZZ_FAMILY_ID = 0x20


def _decode_replies(data: bytes, kind: int) -> list[Any]:
    """Decode raw reply bytes the way a netdev request does after reading
    them from its socket (pyroute2's Marshal with our message classes, then
    _decoded), for the fuzzer; messages of type FUZZ_FAMILY_ID are netdev's.
    Returns what _decoded returns, or raises NetdevError."""
    from pyroute2.netlink.generic import GENL_ID_CTRL, ctrlmsg
    from pyroute2.netlink.nlsocket import Marshal

    marshal = Marshal()
    marshal.msg_map[GENL_ID_CTRL] = ctrlmsg
    marshal.msg_map[FUZZ_FAMILY_ID] = _classes()[kind]
    with _reply_errors(0):
        return _decoded(kind, tuple(marshal.parse(data, 0)), FUZZ_FAMILY_ID)


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _int_attr(msg: Any, name: str) -> int | None:
    """An integer attribute, or None when absent; NetdevError (EBADMSG) when not an integer."""
    value = msg.get_attr(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise NetdevError(errno.EBADMSG, f"netdev reply: {name} is {type(value).__name__}, not an integer")
    return value


def _required(msg: Any, name: str) -> int:
    value = _int_attr(msg, name)
    if value is None:
        raise NetdevError(errno.EBADMSG, f"netdev reply without {name}")
    return value


@overload
def _uint(raw: bytes) -> int: ...
@overload
def _uint(raw: None) -> None: ...
def _uint(raw: bytes | None) -> int | None:
    """An NLA_UINT attribute's value: a native-endian u32 or u64 (by its
    length). NetdevError (EBADMSG) for any other length or type."""
    if raw is None:
        return None
    if not isinstance(raw, (bytes, bytearray)) or len(raw) not in (4, 8):
        size = f"{len(raw)} bytes" if isinstance(raw, (bytes, bytearray)) else type(raw).__name__
        raise NetdevError(errno.EBADMSG, f"NLA_UINT attribute of {size} (want 4 or 8 bytes)")
    return int.from_bytes(raw, sys.byteorder)


def _encode_uint(value: int) -> bytes:
    return value.to_bytes(8, sys.byteorder)


def _napi(msg: Any) -> Napi:
    ifindex = _required(msg, "NETDEV_A_NAPI_IFINDEX")
    return Napi(id=_required(msg, "NETDEV_A_NAPI_ID"), ifindex=ifindex, ifname=_ifname(ifindex),
                irq=_int_attr(msg, "NETDEV_A_NAPI_IRQ"), pid=_int_attr(msg, "NETDEV_A_NAPI_PID"),
                defer_hard_irqs=_int_attr(msg, "NETDEV_A_NAPI_DEFER_HARD_IRQS"),
                gro_flush_timeout=_uint(_attr(msg, "NETDEV_A_NAPI_GRO_FLUSH_TIMEOUT")),
                irq_suspend_timeout=_uint(_attr(msg, "NETDEV_A_NAPI_IRQ_SUSPEND_TIMEOUT")))


def _queue(msg: Any) -> Queue:
    ifindex = _required(msg, "NETDEV_A_QUEUE_IFINDEX")
    qtype = NETDEV_QUEUE_TYPE.get(_required(msg, "NETDEV_A_QUEUE_TYPE"), "?")
    return Queue(_required(msg, "NETDEV_A_QUEUE_ID"), ifindex, _ifname(ifindex), qtype,
                 _int_attr(msg, "NETDEV_A_QUEUE_NAPI_ID"))


_QSTATS_KEY = ("NETDEV_A_QSTATS_IFINDEX", "NETDEV_A_QSTATS_QUEUE_TYPE", "NETDEV_A_QSTATS_QUEUE_ID",
               "NETDEV_A_QSTATS_SCOPE")


def _qstats_entry(msg: Any) -> tuple[tuple[int, str, int], dict[str, int]]:
    key = (_required(msg, "NETDEV_A_QSTATS_IFINDEX"),
           NETDEV_QUEUE_TYPE.get(_required(msg, "NETDEV_A_QSTATS_QUEUE_TYPE"), "?"),
           _required(msg, "NETDEV_A_QSTATS_QUEUE_ID"))
    return key, {name[len("NETDEV_A_QSTATS_"):].lower(): _uint(value) for name, value in msg["attrs"]
                 if name not in _QSTATS_KEY and value is not None}


def _device(msg: Any) -> Device:
    ifindex = _required(msg, "NETDEV_A_DEV_IFINDEX")
    bits = _int_attr(msg, "NETDEV_A_DEV_XDP_FEATURES") or 0
    return Device(ifindex, _ifname(ifindex), [f for i, f in enumerate(XDP_FEATURES) if bits >> i & 1],
                  _int_attr(msg, "NETDEV_A_DEV_XDP_ZC_MAX_SEGS"))


#: NETDEV_XDP_ACT_* bits (include/uapi/linux/netdev.h)
XDP_FEATURES = ("basic", "redirect", "ndo-xmit", "xsk-zerocopy", "rx-sg", "ndo-xmit-sg")


def device_list() -> list[Device]:
    """Every device the netdev family knows (this namespace), with the XDP
    features its driver declares."""
    return sorted(_request(NETDEV_CMD_DEV_GET, 3), key=lambda d: d.ifindex)


def napi_list(dev: str | int | None = None) -> list[Napi]:
    """Every NAPI instance (of `dev` if given), with its settings."""
    attrs = [("NETDEV_A_NAPI_IFINDEX", _ifindex(dev))] if dev is not None else []
    return sorted(_request(NETDEV_CMD_NAPI_GET, 0, attrs), key=lambda n: n.id)


def napi_get(napi_id: int) -> Napi:
    """One NAPI instance by ID."""
    _check_id(napi_id)
    try:
        msgs = _request(NETDEV_CMD_NAPI_GET, 0, [("NETDEV_A_NAPI_ID", napi_id)], dump=False)
    except NetdevError as e:
        if e.errno == errno.ENOENT:
            raise NetdevError(errno.ENOENT, f"no NAPI instance {napi_id}") from None
        raise
    if not msgs:
        raise NetdevError(errno.EBADMSG, f"netdev napi-get {napi_id}: no reply")
    napi: Napi = msgs[0]
    return napi


def _check_id(napi_id: int) -> None:
    check_int("napi_id", napi_id, 1, 2**32 - 1)


def napi_set(napi_id: int, **knobs: int) -> Napi:
    """Set per-NAPI defer_hard_irqs, gro_flush_timeout (ns), irq_suspend_timeout
    (ns) (Linux >= 6.13, CAP_NET_ADMIN); returns the instance as it is now."""
    _check_id(napi_id)
    if not knobs:
        raise TypeError(f"napi_set() needs at least one of {', '.join(NAPI_KNOBS)}")
    attrs: list[tuple[str, int | bytes]] = [("NETDEV_A_NAPI_ID", napi_id)]
    for name, value in knobs.items():
        if name not in NAPI_KNOBS:
            raise TypeError(f"napi_set() got an unknown setting {name!r}; known: {', '.join(NAPI_KNOBS)}")
        lo, hi = NAPI_KNOBS[name]
        check_int(name, value, lo, hi)
        attrs.append(("NETDEV_A_NAPI_" + name.upper(), value if name == "defer_hard_irqs" else _encode_uint(value)))
    _request(NETDEV_CMD_NAPI_SET, 0, attrs, dump=False)
    return napi_get(napi_id)


def configure_napi(napi_id: int, **knobs: int) -> str:
    """Apply settings to NAPI instance `napi_id` the best way this kernel
    offers; returns how: "napi" (napi-set, Linux >= 6.13: this instance
    only) or "device" (the device-wide sysfs files: every NAPI instance of
    its device). irq_suspend_timeout exists per NAPI only: without napi-set
    it is an error. BURSTIO_DISABLE=netdev_napi_set forces the fallback.

    Netlink works in the calling thread's network namespace; the sysfs
    fallback in the one /sys was mounted for (``ip netns exec`` mounts the
    namespace's own)."""
    napi = napi_get(napi_id)
    if settings_mechanism(napi) == "napi":
        napi_set(napi_id, **knobs)
        return "napi"
    if "irq_suspend_timeout" in knobs:
        raise NetdevError(errno.EOPNOTSUPP, "irq_suspend_timeout needs per-NAPI settings (napi-set, "
                                            f"Linux >= 6.13); this kernel is {os.uname().release}")
    set_device_settings(napi.ifname, **knobs)
    return "device"


def settings_mechanism(napi: Napi) -> str:
    """How configure_napi() will set this instance: "napi" or "device"."""
    from .._caps import disabled_by_env

    if napi.defer_hard_irqs is not None and "netdev_napi_set" not in disabled_by_env():
        return "napi"
    return "device"


def napi_settings(napi_id: int, how: str | None = None) -> dict[str, int]:
    """The settings configure_napi() changes, as they are now: per NAPI
    (how="napi") or the device-wide files (how="device"); None: the way
    configure_napi() would set them."""
    napi = napi_get(napi_id)
    if (how or settings_mechanism(napi)) == "device":
        return device_settings(napi.ifname)
    return {k: getattr(napi, k) for k in NAPI_KNOBS if getattr(napi, k) is not None}


def queue_list(dev: str | int | None = None, *, stats: bool = False) -> list[Queue]:
    """Every queue (of `dev`) with the NAPI instance that services it, and
    with stats=True the per-queue counters (qstats-get)."""
    want = _ifindex(dev) if dev is not None else None
    per_queue = qstats(dev) if stats else {}
    out = [dataclasses.replace(q, stats=per_queue.get((q.ifindex, q.type, q.id), {}))
           for q in _request(NETDEV_CMD_QUEUE_GET, 1) if want is None or q.ifindex == want]
    return sorted(out, key=lambda q: (q.ifindex, q.type, q.id))


def qstats(dev: str | int | None = None) -> dict[tuple[int, str, int], dict[str, int]]:
    """Per-queue counters: {(ifindex, "rx"/"tx", queue id): {name: value}}.
    Devices whose driver keeps none are absent."""
    attrs: list[tuple[str, int | bytes]] = [("NETDEV_A_QSTATS_SCOPE", _encode_uint(NETDEV_QSTATS_SCOPE_QUEUE))]
    if dev is not None:
        attrs.append(("NETDEV_A_QSTATS_IFINDEX", _ifindex(dev)))
    try:
        msgs = _request(NETDEV_CMD_QSTATS_GET, 2, attrs)
    except NetdevError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENODEV):
            return {}
        raise
    return dict(msgs)


# ---- namespaces ------------------------------------------------------------------



@contextlib.contextmanager
def netns_of(sock: FileDescriptorLike) -> Iterator[None]:
    """Run the block (this thread) in the network namespace `sock` belongs
    to, where its device and NAPI instances are visible over netlink."""
    fd = sock if isinstance(sock, int) else sock.fileno()
    with entered_netns(fcntl.ioctl(fd, SIOCGSKNS)):
        yield


@contextlib.contextmanager
def entered_netns(target: int) -> Iterator[None]:
    """Run the block (this thread) in the network namespace open as
    descriptor ``target`` (closed afterwards), then come back."""
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    except BaseException:
        os.close(target)
        raise
    try:
        _native.setns(target, CLONE_NEWNET)
        try:
            yield
        finally:
            _native.setns(home, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)


# ---- the device-wide fallback (sysfs) -----------------------------------------

_SYSFS = Path("/sys/class/net")


def device_settings(dev: str) -> dict[str, int]:
    """The device-wide napi_defer_hard_irqs and gro_flush_timeout (sysfs:
    the namespace /sys was mounted for, see configure_napi)."""
    out = {}
    for name, fname in (("defer_hard_irqs", "napi_defer_hard_irqs"), ("gro_flush_timeout", "gro_flush_timeout")):
        try:
            out[name] = int((_SYSFS / dev / fname).read_text())
        except FileNotFoundError:
            raise NetdevError(errno.ENODEV, f"no network device named {dev!r}") from None
    return out


def set_device_settings(dev: str, **knobs: int) -> dict[str, int]:
    """Set the device-wide values (every NAPI of the device): the fallback
    for kernels without napi-set. irq_suspend_timeout has no sysfs file."""
    files = {"defer_hard_irqs": "napi_defer_hard_irqs", "gro_flush_timeout": "gro_flush_timeout"}
    for name, value in knobs.items():
        if name not in files:
            raise TypeError(f"set_device_settings() got {name!r}; the device-wide files are "
                            f"{', '.join(files)} (irq_suspend_timeout is per NAPI only)")
        check_int(name, value, 0, 2**32 - 1)
        (_SYSFS / dev / files[name]).write_text(str(value))
    return device_settings(dev)


# ---- interrupts ----------------------------------------------------------------

_IRQ_LINE = re.compile(r"^\s*(\w+):((?:\s+\d+)+)\s*(.*)$")


class IrqCount(TypedDict):
    """One interrupt line of /proc/interrupts (``irq_counts``)."""

    cpus: list[int]
    total: int
    name: str


def irq_counts(text: str | None = None) -> dict[str, IrqCount]:
    """/proc/interrupts as {irq: {"cpus": [count per CPU], "total": n,
    "name": the rest of the line}}. Lines that do not parse are skipped."""
    if text is None:
        text = Path("/proc/interrupts").read_text()
    lines = text.splitlines()
    if not lines:
        return {}
    ncpu = len(lines[0].split())
    out: dict[str, IrqCount] = {}
    for line in lines[1:]:
        m = _IRQ_LINE.match(line)
        if not m:
            continue
        nums = [int(x) for x in m.group(2).split()]
        cpus, rest = nums[:ncpu], nums[ncpu:]
        name = " ".join([*map(str, rest), m.group(3)]).strip()
        out[m.group(1)] = {"cpus": cpus, "total": sum(cpus), "name": name}
    return out
