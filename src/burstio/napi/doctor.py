"""``burstio doctor``: read the host's busy-poll and NAPI setup and say what
the busy-poll recipe would change. Changes nothing unless asked (--apply).

It reads: the busy-poll sysctls, each device's queues, its interrupt
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

import errno
import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._caps import disabled_by_env
from . import netdev

__all__ = ["examine", "recipe", "apply", "report", "RECIPE"]

#: per-NAPI settings of the recipe
RECIPE = {"defer_hard_irqs": 2, "gro_flush_timeout": 200_000, "irq_suspend_timeout": 20_000_000}
#: the per-epoll parameters the recipe pairs with them (burstio.napi.busypoll.BusyPollEpoll)
EPOLL_RECIPE = {"busy_poll_usecs": 64, "busy_poll_budget": 64, "prefer_busy_poll": True}
SYSCTLS = ("busy_poll", "busy_read", "netdev_budget", "netdev_budget_usecs", "dev_weight")


def _sysctls() -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in SYSCTLS:
        try:
            out[f"net.core.{name}"] = int(Path(f"/proc/sys/net/core/{name}").read_text())
        except (OSError, ValueError):
            out[f"net.core.{name}"] = None
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


def examine(dev: str | None = None) -> dict[str, Any]:
    """Everything doctor reads, as a dict."""
    out: dict[str, Any] = {"kernel": os.uname().release, "sysctls": _sysctls(), "devices": {}}
    for d in _devices(dev):
        napis, source = _napis(d)
        out["devices"][d] = {"queues": _queues(d), "coalesce": _coalesce(d), "napi": napis,
                             "napi_source": source}
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


def report(state: dict[str, Any], changes: list[str]) -> str:
    lines = [f"kernel {state['kernel']}", "busy-poll sysctls:"]
    lines += [f"  {k} = {v}" for k, v in state["sysctls"].items()]
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
    applied = apply(state) if do_apply else []
    if as_json:
        print(json.dumps({"state": state, "recipe": changes, "applied": applied}, indent=2))
    else:
        print(report(state, changes))
        if do_apply:
            print("applied:" if applied else "applied: nothing to do")
            print("\n".join(f"  {a}" for a in applied))
    return 0
