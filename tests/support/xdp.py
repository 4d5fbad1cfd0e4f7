"""What the XDP and AF_XDP tests share: the skip when the kernel or the
privileges lack XDP, a lab with one queue, an AF_XDP socket steered to in a
lab's namespace, floods from the packet generator (children with
capabilities dropped: support/proc.py's run_without_caps, re-exported)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

import burstio
from burstio.napi.lab import Lab
from burstio.xdp import Rule, Steer, XskSocket

from .proc import run_without_caps  # re-exported: the XDP tests take it from here

__all__ = ["needs_xdp", "needs_xdp_lab", "lab_xsk", "flood", "run_without_caps", "xdp_reason"]

F = TypeVar("F", bound=Callable[..., Any])


def xdp_reason() -> str | None:
    """Why XDP tests cannot run here, or None."""
    caps = burstio.capabilities()
    for name in ("bpf", "af_xdp", "xdp_link"):
        if not caps[name].available:
            return f"{name}: {caps[name].detail}"
    return None


#: skip (saying why) where BPF, XDP links or AF_XDP are missing
needs_xdp = pytest.mark.skipif(xdp_reason() is not None, reason=str(xdp_reason()))


def needs_xdp_lab(fn: F) -> F:
    """needs_xdp, and the burstio_lab fixture with one queue per veth (so
    every frame arrives on queue 0, where the test's socket is)."""
    return needs_xdp(pytest.mark.burstio_lab(queues=1)(fn))  # type: ignore[no-any-return]


@contextlib.contextmanager
def lab_xsk(lab: Lab, side: str = "b", rules: list[Rule] | None = None,
            **kwargs: Any) -> Iterator[tuple[XskSocket, Steer]]:
    """Inside namespace ``side``: a Steer program (UDP by default) on its
    veth and an XskSocket on queue 0 it steers to; both closed after."""
    with lab.inside(side), Steer(rules if rules is not None else [Rule(proto="udp")]) as steer:
        steer.attach(lab.dev[side])
        with XskSocket(lab.dev[side], 0, **kwargs) as xsk:
            steer.add(xsk)
            yield xsk, steer


def flood(lab: Lab, count: int, *, side: str = "a", dport: int = 9000, size: int = 64, flows: int = 1,
          **kwargs: Any) -> Any:
    """Send exactly ``count`` UDP frames from ``side`` to the other side
    (the packet generator); returns its result."""
    from burstio.xdp import pktgen

    other = "b" if side == "a" else "a"
    with lab.inside(other):
        from burstio.xdp.udp import mac_of
        dst_mac = mac_of(lab.dev[other])
    with lab.inside(side):
        return pktgen.run(lab.dev[side], lab.addr(other), dport=dport, dst_mac=dst_mac, size=size, flows=flows,
                          count=count, seconds=60, **kwargs)
