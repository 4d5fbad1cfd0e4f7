"""``burstio doctor``: read the host's UDP receive path and its busy-poll and
NAPI setup, and say what to change. Changes nothing unless asked (--apply).

The UDP receive path: the socket buffer sysctls (net.core.rmem_default, what
a socket gets unless it asks; net.core.rmem_max, the most an unprivileged
SO_RCVBUF gets) against what burstio asks for, and the kernel's UDP drop
counters (/proc/net/snmp, /proc/net/snmp6: RcvbufErrors, InErrors); it
proposes the sysctl lines to run. Inside a network namespace it says which
host-wide values it cannot see, and that what it sees is the namespace's
own. Everything under /proc is read through ``udp_examine(proc=...)`` and
``_sysctls(proc)``, which tests point at fixture files.

Busy polling: the busy-poll sysctls, which of busy_poll()'s mechanisms the
kernel has (and which objects take each under "auto"), each device's queues, its interrupt
coalescing (ethtool netlink), its NAPI instances and their per-NAPI
settings (netdev netlink, or the device-wide sysfs files where the kernel
has no napi-set), and the interrupts behind them (/proc/interrupts, their
CPU affinity).

The recipe (for a latency-sensitive server that busy polls per epoll
instance, Linux >= 6.13): leave the system-wide net.core.busy_read/poll at 0
(each epoll instance gets its own busy-poll parameters instead); on every
NAPI instance the server uses, defer hard interrupts for a few empty polls,
arm a GRO flush timeout as the safety net, and let epoll suspend the
interrupt while it finds work (irq-suspend-timeout).
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._caps import disabled_by_env
from . import netdev

__all__ = ["examine", "recipe", "apply", "report", "RECIPE", "udp_examine", "udp_recipe", "RCVBUF_WANTED"]

#: per-NAPI settings of the recipe
RECIPE = {"defer_hard_irqs": 2, "gro_flush_timeout": 200_000, "irq_suspend_timeout": 20_000_000}
#: the per-epoll parameters the recipe pairs with them (burstio.napi.busypoll.BusyPollEpoll)
EPOLL_RECIPE = {"busy_poll_usecs": 64, "busy_poll_budget": 64, "prefer_busy_poll": True}
SYSCTLS = ("busy_poll", "busy_read", "netdev_budget", "netdev_budget_usecs", "dev_weight")
#: the socket buffer sysctls of the UDP receive path
RMEM = ("rmem_default", "rmem_max")
#: the receive buffer doctor proposes for a socket that takes bursts: ~4000 small datagrams
#: (a 64-byte datagram costs about 1 KiB of buffer), what ``burstio bench soak`` asks
RCVBUF_WANTED = 4 << 20
PROC = Path("/proc")
_CAP_NET_ADMIN = 12


def _read(proc: Path, rel: str) -> str | None:
    try:
        return (proc / rel).read_text()
    except OSError:
        return None


def _sysctl(proc: Path, name: str) -> int | None:
    text = _read(proc, f"sys/net/core/{name}")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _sysctls(proc: Path = PROC) -> dict[str, int | None]:
    return {f"net.core.{name}": _sysctl(proc, name) for name in SYSCTLS}


def _netns(proc: Path) -> dict[str, Any]:
    """Whether this process runs in a network namespace other than the host's: ``inside``
    True, False, or None (cannot tell), ``how`` it was told, and ``name`` when ``ip netns``
    named it. Told by comparing this process's namespace with process 1's; where process 1's
    cannot be read, by the sysctls the kernel shows only in the host's namespace
    (net.core.netdev_budget is there, net.core.somaxconn is in every namespace)."""
    try:
        st = os.stat(proc / "self/ns/net")
    except OSError:
        return {"inside": None, "how": "cannot read self/ns/net"}
    out: dict[str, Any]
    try:
        out = {"inside": st.st_ino != os.stat(proc / "1/ns/net").st_ino, "how": "process 1's namespace"}
    except OSError:
        core = proc / "sys/net/core"
        if (core / "somaxconn").exists():
            out = {"inside": not (core / "netdev_budget").exists(), "how": "the host-wide sysctls it can see"}
        else:
            return {"inside": None, "how": "neither process 1's namespace nor net.core sysctls readable"}
    with contextlib.suppress(OSError):
        for named in Path("/run/netns").iterdir():
            other = os.stat(named)
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                out["name"] = named.name
    return out


def _snmp(proc: Path) -> dict[str, dict[str, int]]:
    """The Udp and Udp6 counters (/proc/net/snmp: a header line and a value line per
    protocol; /proc/net/snmp6: one "Udp6Name value" per line)."""
    out: dict[str, dict[str, int]] = {}
    lines = (_read(proc, "net/snmp") or "").splitlines()
    for head, values in itertools.pairwise(lines):
        if head.startswith("Udp: ") and values.startswith("Udp: "):
            with contextlib.suppress(ValueError):
                out["Udp"] = dict(zip(head.split()[1:], map(int, values.split()[1:]), strict=True))
    six = {}
    for line in (_read(proc, "net/snmp6") or "").splitlines():
        words = line.split()
        if len(words) == 2 and words[0].startswith("Udp6") and words[1].isdigit():
            six[words[0][4:]] = int(words[1])
    if six:
        out["Udp6"] = six
    return out


def _privileged(proc: Path) -> bool:
    """CAP_NET_ADMIN in this process's effective set: burstio may then force a receive
    buffer past rmem_max (SO_RCVBUFFORCE)."""
    for line in (_read(proc, "self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            with contextlib.suppress(ValueError):
                return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    return False


def _asks() -> list[dict[str, Any]]:
    """What burstio asks for: who, how many bytes (None: the kernel's default)."""
    from ..bench.common import Options
    from ..bench.scenarios.rx import RCVBUF_PER_DATAGRAM
    from ..bench.scenarios.soak import RCVBUF

    queue = Options().queue
    return [
        {"who": "BurstSocket, burstio.aio endpoints, SocketSet sockets, burstio serve (rcvbuf not given)",
         "bytes": None},
        {"who": "burstio bench soak (every receiving socket)", "bytes": RCVBUF},
        {"who": f"burstio bench rx-many-flow, rx-gro (--queue {queue} x {RCVBUF_PER_DATAGRAM})",
         "bytes": queue * RCVBUF_PER_DATAGRAM},
    ]


def udp_examine(proc: Path = PROC) -> dict[str, Any]:
    """The UDP receive path, read from ``proc`` (normally /proc): the socket buffer sysctls,
    what burstio asks for and what it gets, the kernel's UDP drop counters, and whether this
    runs inside a network namespace (with the host-wide values it cannot see there)."""
    netns = _netns(proc)
    sysctls = {f"net.core.{n}": _sysctl(proc, n) for n in RMEM}
    rmem_default, rmem_max = sysctls["net.core.rmem_default"], sysctls["net.core.rmem_max"]
    privileged = _privileged(proc)
    asks = []
    for ask in _asks():
        n = ask["bytes"]
        if n is None:
            got, how = rmem_default, "net.core.rmem_default"
        elif rmem_max is None:
            got, how = None, "unknown (net.core.rmem_max not visible)"
        elif 2 * min(n, rmem_max) >= n:  # the kernel grants twice the request, up to twice rmem_max
            got, how = 2 * n, "granted"
        elif privileged:
            got, how = 2 * n, "granted past net.core.rmem_max (SO_RCVBUFFORCE: CAP_NET_ADMIN)"
        else:
            got, how = 2 * rmem_max, "capped by net.core.rmem_max (unprivileged)"
        asks.append({**ask, "gets": got, "how": how})
    return {"netns": netns, "sysctls": sysctls, "privileged": privileged, "asks": asks, "counters": _snmp(proc)}


def udp_recipe(udp: dict[str, Any]) -> list[str]:
    """The sysctl lines that would make the receive path hold what burstio asks for."""
    out = []
    rmem_default, rmem_max = udp["sysctls"]["net.core.rmem_default"], udp["sysctls"]["net.core.rmem_max"]
    if rmem_default is not None and rmem_default < RCVBUF_WANTED:
        out.append(f"sysctl -w net.core.rmem_default={RCVBUF_WANTED}   # was {rmem_default}: a socket that does "
                   "not ask (BurstSocket, burstio.aio, burstio serve) then holds a burst of ~4000 small datagrams")
    want_max = max([RCVBUF_WANTED] + [a["bytes"] for a in udp["asks"]
                                      if a["bytes"] is not None and not udp["privileged"]])
    if rmem_max is not None and rmem_max < want_max:
        out.append(f"sysctl -w net.core.rmem_max={want_max}   # was {rmem_max}: the most SO_RCVBUF grants "
                   "without CAP_NET_ADMIN")
    if out:
        out.append("# to keep them after a reboot: the same lines, without 'sysctl -w ', in "
                   "/etc/sysctl.d/90-burstio.conf")
    return out


def _devices(only: str | None) -> list[str]:
    if only is not None:
        if not Path(f"/sys/class/net/{only}").exists():
            raise netdev.NetdevError(errno.ENODEV, f"no network device named {only!r}")
        return [only]
    return sorted(d.name for d in Path("/sys/class/net").iterdir() if d.name != "lo")


def _queues(dev: str) -> dict[str, int]:
    q = [p.name for p in Path(f"/sys/class/net/{dev}/queues").iterdir()]
    return {"rx": sum(n.startswith("rx-") for n in q), "tx": sum(n.startswith("tx-") for n in q)}


def _coalesce(dev: str) -> dict[str, int] | str:
    """ethtool netlink coalesce-get; a string says why there is none."""
    try:
        from pyroute2.netlink import NLA_F_NESTED, NLM_F_REQUEST, genlmsg, nla
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.generic import GenericNetlinkSocket
    except ImportError:
        return "pyroute2 missing"

    class coalesce_msg(genlmsg):  # type: ignore[misc]  # pyroute2 has no type information
        nla_map = (("ETHTOOL_A_COALESCE_UNSPEC", "none"), ("ETHTOOL_A_COALESCE_HEADER", "dev_header"),
                   *((f"ETHTOOL_A_COALESCE_{n}", "uint32") for n in (
                       "RX_USECS", "RX_MAX_FRAMES", "RX_USECS_IRQ", "RX_MAX_FRAMES_IRQ", "TX_USECS",
                       "TX_MAX_FRAMES", "TX_USECS_IRQ", "TX_MAX_FRAMES_IRQ", "STATS_BLOCK_USECS")),
                   ("ETHTOOL_A_COALESCE_USE_ADAPTIVE_RX", "uint8"),
                   ("ETHTOOL_A_COALESCE_USE_ADAPTIVE_TX", "uint8"))

        class dev_header(nla):  # type: ignore[misc]  # pyroute2 has no type information
            nla_flags = NLA_F_NESTED
            nla_map = (("ETHTOOL_A_HEADER_UNSPEC", "none"), ("ETHTOOL_A_HEADER_DEV_INDEX", "uint32"),
                       ("ETHTOOL_A_HEADER_DEV_NAME", "asciiz"), ("ETHTOOL_A_HEADER_FLAGS", "uint32"))

    s = GenericNetlinkSocket()
    try:
        s.bind("ethtool", coalesce_msg)
        msg = coalesce_msg()
        msg["cmd"], msg["version"] = 19, 1  # ETHTOOL_MSG_COALESCE_GET
        msg["attrs"] = [("ETHTOOL_A_COALESCE_HEADER", {"attrs": [("ETHTOOL_A_HEADER_DEV_NAME", dev)]})]
        reply = list(s.nlm_request(msg, msg_type=s.prid, msg_flags=NLM_F_REQUEST))
    except NetlinkError as e:
        return f"not available ({os.strerror(e.code)})"
    finally:
        s.close()
    attrs = reply[0]["attrs"] if reply else []
    return {k[len("ETHTOOL_A_COALESCE_"):].lower(): v for k, v in attrs if k != "ETHTOOL_A_COALESCE_HEADER"}


def _irq_affinity(irq: int) -> str | None:
    try:
        return Path(f"/proc/irq/{irq}/smp_affinity_list").read_text().strip()
    except OSError:
        return None


def _napis(dev: str) -> tuple[list[dict[str, Any]], str]:
    """NAPI instances with settings (netlink), or the device-wide sysfs values."""
    try:
        napis = netdev.napi_list(dev)
    except netdev.NetdevError as e:
        try:
            return [{"device_wide": netdev.device_settings(dev)}], f"sysfs (netdev netlink: {e.strerror})"
        except netdev.NetdevError:
            return [], str(e)
    if not napis:
        return [], "netdev netlink: no NAPI instances (nothing to busy poll)"
    irqs: Mapping[str, Mapping[str, object]] = netdev.irq_counts()
    out = []
    for n in napis:
        d = asdict(n)
        if n.irq:
            d["irq_affinity"] = _irq_affinity(n.irq)
            d["irq_count"] = irqs.get(str(n.irq), {}).get("total")
        out.append(d)
    per_napi = any(n.defer_hard_irqs is not None for n in napis) and "netdev_napi_set" not in disabled_by_env()
    if not per_napi:  # kernel < 6.13 (or forced off): the settings are device-wide
        for d in out:
            for k in netdev.NAPI_KNOBS:
                d.pop(k, None)
        out.append({"device_wide": netdev.device_settings(dev)})
        return out, "netdev netlink (settings: device-wide sysfs, no per-NAPI settings)"
    return out, "netdev netlink"


def examine(dev: str | None = None, proc: Path = PROC) -> dict[str, Any]:
    """Everything doctor reads, as a dict (what is under /proc from ``proc``)."""
    udp = udp_examine(proc)
    sysctls = _sysctls(proc)
    hidden = sorted(k for k, v in {**sysctls, **udp["sysctls"]}.items() if v is None)
    out: dict[str, Any] = {"kernel": os.uname().release, "sysctls": sysctls, "udp": udp,
                           "netns": {**udp["netns"], "hidden": hidden}, "mechanisms": mechanisms(),
                           "devices": {}}
    for d in _devices(dev):
        try:
            napis, source = _napis(d)
            out["devices"][d] = {"queues": _queues(d), "coalesce": _coalesce(d), "napi": napis,
                                 "napi_source": source}
        except FileNotFoundError:  # the device went away while it was read (a namespace or veth removed)
            if dev is not None:
                raise netdev.NetdevError(errno.ENODEV, f"network device {d!r} went away while it was read") from None
    return out


def recipe(state: dict[str, Any]) -> list[str]:
    """The changes the busy-poll recipe would make, as commands/sentences."""
    changes = []
    for name in ("busy_poll", "busy_read"):
        v = state["sysctls"].get(f"net.core.{name}")
        if v:
            changes.append(f"sysctl net.core.{name}=0   # was {v}; busy poll per epoll instance instead")
    for dev, d in state["devices"].items():
        for n in d["napi"]:
            if "device_wide" in n:
                want = _device_wide_changes(n["device_wide"])
                if want:
                    changes.append(f"sysfs {dev}: " + " ".join(f"{k}={v}" for k, v in want.items())
                                   + "   # irq_suspend_timeout needs per-NAPI settings (Linux >= 6.13)")
                continue
            if "defer_hard_irqs" not in n:
                continue
            want = {k: v for k, v in RECIPE.items() if n.get(k) != v}
            if want:
                args = " ".join(f"{k}={v}" for k, v in want.items())
                changes.append(f"napi-set {dev} NAPI {n['id']}: {args}")
    if changes:
        e = EPOLL_RECIPE
        changes.append(f"in the server: BurstSocket.busy_poll({e['busy_poll_usecs']}, "
                       f"{e['busy_poll_budget']}, prefer=True) or BusyPollEpoll(busy_poll_usecs="
                       f"{e['busy_poll_usecs']}, busy_poll_budget={e['busy_poll_budget']}, prefer_busy_poll=True)")
    return changes


def _device_wide_changes(now: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in RECIPE.items() if k in now and now[k] != v}


def apply(state: dict[str, Any]) -> list[str]:
    """Make the per-NAPI changes of the recipe (sysctls are left alone:
    they are system-wide; doctor only reports them). Returns what it did."""
    done = []
    for dev, d in state["devices"].items():
        for n in d["napi"]:
            if "defer_hard_irqs" in n and any(n.get(k) != v for k, v in RECIPE.items()):
                netdev.napi_set(n["id"], **RECIPE)
                done.append(f"napi-set {dev} NAPI {n['id']}: " + " ".join(f"{k}={v}" for k, v in RECIPE.items()))
            elif "device_wide" in n:  # no per-NAPI settings: the device-wide files
                want = _device_wide_changes(n["device_wide"])
                if want:
                    netdev.set_device_settings(dev, **want)
                    done.append(f"sysfs {dev}: " + " ".join(f"{k}={v}" for k, v in want.items())
                                + " (irq_suspend_timeout needs per-NAPI settings)")
    return done


def _value(name: str, value: int | None, netns: dict[str, Any]) -> str:
    if value is not None:
        return f"  {name} = {value}"
    if netns.get("inside"):
        return f"  {name}: host-wide, not visible inside this network namespace (on the host: sysctl {name})"
    return f"  {name}: not available (this kernel has no /proc/sys/{name.replace('.', '/')})"


def _udp_report(udp: dict[str, Any], netns: dict[str, Any], changes: list[str]) -> list[str]:
    lines = ["UDP receive path:"]
    if netns.get("inside"):
        name = f" {netns['name']}" if netns.get("name") else ""
        lines.append(f"  inside network namespace{name} (told by {netns['how']}): the buffer sysctls and UDP "
                     "counters below are this namespace's own")
    elif netns.get("inside") is None:
        lines.append(f"  network namespace: cannot tell ({netns.get('how')})")
    lines += [_value(k, v, netns) for k, v in udp["sysctls"].items()]
    for ask in udp["asks"]:
        asked = "the default" if ask["bytes"] is None else f"{ask['bytes']} bytes"
        gets = "?" if ask["gets"] is None else f"{ask['gets']} bytes"
        lines.append(f"  {ask['who']}: asks {asked}, gets {gets} ({ask['how']})")
    since = "since the namespace was made" if netns.get("inside") else "since boot"
    for proto, c in udp["counters"].items():
        lines.append(f"  {proto} {since}: RcvbufErrors {c.get('RcvbufErrors', '?')} (receive buffer full), "
                     f"InErrors {c.get('InErrors', '?')} (all receive errors), InDatagrams {c.get('InDatagrams', '?')}")
        if c.get("RcvbufErrors"):
            lines.append(f"    {proto}: datagrams were dropped because a socket's buffer was full: a larger buffer "
                         "(below) or a faster reader; per socket: BurstSocket.counters['kernel_drops']")
    if not udp["counters"]:
        lines.append("  UDP counters: /proc/net/snmp not readable")
    lines.append("to change:" if changes else "the receive buffers hold what burstio asks for: nothing to change")
    lines += [f"  {c}" for c in changes]
    return lines


#: busy_poll()'s mechanisms: what each is, the capability it needs, who takes it under "auto"
MECHANISMS = {"socket": ("SO_BUSY_POLL", "so_busy_poll", "a BurstSocket (one socket: one system call per wake-up)"),
              "epoll": ("EPIOCSPARAMS", "epoll_busy_poll", "burstio.aio and an epoll SocketSet (many sockets)"),
              "io_uring": ("IORING_REGISTER_NAPI", "io_uring_napi", "an io_uring SocketSet (many sockets)")}


def mechanisms() -> dict[str, dict[str, Any]]:
    """busy_poll()'s mechanisms here: whether the kernel has each (the
    capability probe) and which objects take it under mechanism="auto"."""
    from .._caps import capabilities

    caps = capabilities()
    return {name: {"available": bool(caps[cap]), "detail": caps[cap].detail, "what": what, "auto_for": who}
            for name, (what, cap, who) in MECHANISMS.items()}


def report(state: dict[str, Any], changes: list[str], udp_changes: list[str] | None = None) -> str:
    """What doctor read and proposes, for people (``main`` prints it unless --json)."""
    netns = state.get("netns", {})
    lines = [f"kernel {state['kernel']}"]
    if "udp" in state:
        lines += _udp_report(state["udp"], netns, udp_changes if udp_changes is not None else udp_recipe(state["udp"]))
    lines.append("busy-poll sysctls:")
    lines += [_value(k, v, netns) for k, v in state["sysctls"].items()]
    if "mechanisms" in state:
        lines.append("busy_poll() mechanisms (\"auto\" picks per object; describe() says which it took):")
        lines += [f"  {name:<9}{m['what']:<21}{'yes' if m['available'] else 'no ':<4} {m['auto_for']}"
                  + ("" if m["available"] else f" - {m['detail']}") for name, m in state["mechanisms"].items()]
    for dev, d in state["devices"].items():
        q = d["queues"]
        lines.append(f"device {dev}: {q['rx']} rx / {q['tx']} tx queues; NAPI from {d['napi_source']}")
        c = d["coalesce"]
        lines.append("  coalescing: " + (c if isinstance(c, str) else
                                         ", ".join(f"{k}={v}" for k, v in c.items()) or "none reported"))
        for n in d["napi"]:
            if "id" not in n:
                lines.append(f"  device-wide: {n.get('device_wide')}")
                continue
            if "defer_hard_irqs" not in n:
                lines.append(f"  NAPI {n['id']}" + (f", irq {n['irq']}" if n.get("irq") else ""))
                continue
            irq = (f", irq {n['irq']} on CPUs {n.get('irq_affinity')} ({n.get('irq_count')} so far)"
                   if n.get("irq") else "")
            lines.append(f"  NAPI {n['id']}: defer_hard_irqs={n['defer_hard_irqs']} "
                         f"gro_flush_timeout={n['gro_flush_timeout']} "
                         f"irq_suspend_timeout={n['irq_suspend_timeout']}{irq}")
    lines.append("the busy-poll recipe would change:" if changes else "the busy-poll recipe would change nothing")
    lines += [f"  {c}" for c in changes]
    return "\n".join(lines)


def main(dev: str | None = None, as_json: bool = False, do_apply: bool = False) -> int:
    state = examine(dev)
    changes = recipe(state)
    udp_changes = udp_recipe(state["udp"])
    applied = apply(state) if do_apply else []
    if as_json:
        print(json.dumps({"state": state, "recipe": changes, "udp_recipe": udp_changes, "applied": applied},
                         indent=2))
    else:
        print(report(state, changes, udp_changes))
        if do_apply:
            print("applied:" if applied else "applied: nothing to do")
            print("\n".join(f"  {a}" for a in applied))
    return 0
