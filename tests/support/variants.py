"""The backend-variant matrices: every subsystem's contract runs once per variant.

A variant is one way of running a subsystem: the constructor's keyword
arguments, what BURSTIO_DISABLE forces off (so that each fallback path runs
too), the capabilities the variant needs (without them it skips, saying
why), and what the object must then report (its backend or mechanism). The
capability probe caches per BURSTIO_DISABLE value and every object reads it
when it is made, so a variant is applied before anything is made.

A matrix's oracle, where it has one, is its portable variant: UDP "portable",
ZEROCOPY "copy", AIO "stdlib".

Applying a variant:

- ``use_variant(variant, monkeypatch)`` in a fixture (restored by monkeypatch);
- ``with variant_env(variant):`` where monkeypatch is not at hand (inside a
  hypothesis example, around an event loop);
- ``variant_fixture(MATRIX)`` makes a fixture parametrized over a matrix that
  applies each variant in turn.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

import burstio
from burstio._caps import ENV_DISABLE


@dataclass(frozen=True)
class Variant:
    """One way of running a subsystem."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # the constructor's keyword arguments
    disable: str = ""                # the BURSTIO_DISABLE value ("" = nothing forced off)
    needs: tuple[str, ...] = ()      # capabilities that must be available (with ``disable`` applied)
    expect: str = ""                 # the backend or mechanism the object must report
    extras: Mapping[str, Any] = field(default_factory=dict)  # what one subsystem alone needs to know

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def backend(self) -> str | None:
        """The ``backend=`` keyword argument, if the variant passes one."""
        return self.kwargs.get("backend")

    @property
    def forced_off(self) -> frozenset[str]:
        """The capabilities BURSTIO_DISABLE forces off."""
        return frozenset(filter(None, (n.strip() for n in self.disable.split(","))))

    def extended(self, *, off: Iterable[str] = (), needs: Iterable[str] = ()) -> Variant:
        """This variant with more forced off and more needed."""
        off, needs = list(off), list(needs)
        name = self.name + "".join(f" -{n}" for n in off) + "".join(f" +{n}" for n in needs)
        return dataclasses.replace(self, name=name, disable=",".join(filter(None, [self.disable, *off])),
                                   needs=(*self.needs, *needs))


def matrix(*variants: Variant) -> dict[str, Variant]:
    """Variants by name, in order."""
    return {v.name: v for v in variants}


# ---- applying a variant ---------------------------------------------------------------


def set_disable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """BURSTIO_DISABLE = value ("" unsets it) until monkeypatch undoes it."""
    if value:
        monkeypatch.setenv(ENV_DISABLE, value)
    else:
        monkeypatch.delenv(ENV_DISABLE, raising=False)


@contextlib.contextmanager
def _disabled(value: str) -> Iterator[None]:
    """BURSTIO_DISABLE = value ("" unsets it) inside the block; restored after."""
    old = os.environ.get(ENV_DISABLE)
    if value:
        os.environ[ENV_DISABLE] = value
    else:
        os.environ.pop(ENV_DISABLE, None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_DISABLE, None)
        else:
            os.environ[ENV_DISABLE] = old


def unmet_need(variant: Variant, caps: burstio.Capabilities | None = None) -> str | None:
    """Why ``variant`` cannot run here (the first capability it needs that is
    unavailable, and what the probe saw), or None. ``caps`` must be what the
    probe says with the variant's BURSTIO_DISABLE set; without it, the probe
    is asked so."""
    if caps is None:
        with _disabled(variant.disable):
            caps = burstio.capabilities()
    for name in variant.needs:
        if not caps[name].available:
            return f"variant {variant.name} needs {name}: {caps[name].detail}"
    return None


def skip_unless_runnable(variant: Variant, caps: burstio.Capabilities) -> None:
    """Skip, saying why, when ``caps`` lack what ``variant`` needs."""
    why = unmet_need(variant, caps)
    if why:
        pytest.skip(why)


def use_variant(variant: Variant, monkeypatch: pytest.MonkeyPatch) -> burstio.Capabilities:
    """Apply ``variant`` until the test ends (its BURSTIO_DISABLE, through
    monkeypatch), or skip saying why; returns the capabilities objects made
    now will see."""
    set_disable(monkeypatch, variant.disable)
    caps = burstio.capabilities()
    skip_unless_runnable(variant, caps)
    return caps


@contextlib.contextmanager
def variant_env(variant: Variant) -> Iterator[burstio.Capabilities]:
    """Apply ``variant`` inside the block (restored after), or skip saying
    why; yields the capabilities objects made in the block will see."""
    with _disabled(variant.disable):
        caps = burstio.capabilities()
        skip_unless_runnable(variant, caps)
        yield caps


def runnable(variants: Mapping[str, Variant]) -> list[Variant]:
    """The variants that can run here, in order."""
    return [v for v in variants.values() if unmet_need(v) is None]


def variant_fixture(variants: Mapping[str, Variant]):
    """A fixture parametrized over ``variants`` (ids: their names) that applies
    each in turn and returns it. Bind it to the fixture's name::

        udp_variant = variant_fixture(UDP)
    """
    @pytest.fixture(params=list(variants.values()), ids=list(variants))
    def fixture(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Variant:
        """Each variant of the matrix in turn, applied (skipped, saying why, where it cannot run)."""
        use_variant(request.param, monkeypatch)
        return request.param

    return fixture


# ---- the matrices ------------------------------------------------------------------------

_SYSCALLS = {  # what BurstSocket.describe() names for each backend: (receive, send)
    "portable": ("socket.recvmsg_into", "socket.sendmsg"),
    "msg": ("recvmsg", "sendmsg"),
    "mmsg": ("recvmmsg", "sendmmsg"),
}


def _udp(name: str, backend: str, expect: str, *, disable: str = "", needs: tuple[str, ...] = ()) -> Variant:
    rx, tx = _SYSCALLS[expect]
    return Variant(name, {"backend": backend}, disable, needs, expect, {"rx_syscall": rx, "tx_syscall": tx})


#: BurstSocket: the pure-Python "portable" backend is the oracle, "msg" and
#: "mmsg" are the C paths; the "auto" variants force one capability off each.
UDP = matrix(
    _udp("portable", "portable", "portable"),
    _udp("msg", "msg", "msg"),
    _udp("mmsg", "mmsg", "mmsg", needs=("recvmmsg", "sendmmsg")),
    _udp("auto-no-gso", "auto", "mmsg", disable="udp_segment", needs=("recvmmsg",)),
    _udp("auto-no-gro", "auto", "mmsg", disable="udp_gro", needs=("recvmmsg",)),
    _udp("auto-no-mmsg", "auto", "msg", disable="recvmmsg,sendmmsg"),
)

_URING = ("io_uring", "io_uring_buf_ring")

#: SocketSet: io_uring with and without SQPOLL or single wakeups, epoll, and
#: io_uring forced off so that "auto" falls back to epoll.
SOCKETSET = matrix(
    Variant("uring", {"backend": "uring"}, needs=_URING, expect="uring"),
    Variant("uring-sqpoll", {"backend": "uring", "sqpoll": True}, needs=(*_URING, "io_uring_sqpoll"),
            expect="uring"),
    Variant("uring-single", {"backend": "uring", "single_wakeup": True}, needs=_URING, expect="uring"),
    Variant("epoll", {"backend": "epoll"}, expect="epoll"),
    Variant("auto-no-uring", {"backend": "auto"}, disable="io_uring", expect="epoll"),
)

#: ZeroCopySender: io_uring SEND_ZC, MSG_ZEROCOPY, and the copying fallback
#: (the oracle); "auto" with capabilities forced off picks each fallback.
ZEROCOPY = matrix(
    Variant("uring", {"backend": "uring"}, needs=("io_uring_send_zc",), expect="uring"),
    Variant("msg_zerocopy", {"backend": "msg_zerocopy"}, needs=("so_zerocopy",), expect="msg_zerocopy"),
    Variant("copy", {"backend": "copy"}, expect="copy"),
    Variant("auto", {"backend": "auto"}, needs=("io_uring_send_zc",), expect="uring"),
    Variant("auto-no-uring", {"backend": "auto"}, disable="io_uring_send_zc", needs=("so_zerocopy",),
            expect="msg_zerocopy"),
    Variant("auto-no-zerocopy", {"backend": "auto"}, disable="io_uring_send_zc,so_zerocopy", expect="copy"),
)

#: Datagram endpoints: asyncio's own transport (the oracle), burstio's on
#: asyncio's loop, with its fallbacks forced, through ``install(loop)``, and
#: on uvloop. ``expect`` is the transport's kind; ``extras["loop"]`` the event
#: loop, ``extras["endpoint"]`` how the endpoint is made: the loop's own
#: ``create_datagram_endpoint`` ("stdlib"), ``burstio.aio.create_datagram_endpoint``
#: ("burstio"), or the loop's after ``burstio.aio.install(loop)`` ("installed").
AIO = matrix(
    Variant("stdlib", expect="asyncio", extras={"loop": "asyncio", "endpoint": "stdlib"}),
    Variant("burstio", expect="burstio", extras={"loop": "asyncio", "endpoint": "burstio"}),
    Variant("burstio-fallback", disable="recvmmsg,sendmmsg,udp_segment,udp_gro", expect="burstio",
            extras={"loop": "asyncio", "endpoint": "burstio"}),
    Variant("burstio-installed", expect="burstio", extras={"loop": "asyncio", "endpoint": "installed"}),
    Variant("burstio-uvloop", expect="burstio", extras={"loop": "uvloop", "endpoint": "burstio"}),
)
