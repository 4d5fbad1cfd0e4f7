"""The fuzzer behind ``burstio fuzz``: targets, and what a crash is.

A target is one parser of bytes that come from outside the process (a
peer's datagram, a netlink reply, a shared-memory header, a kernel's cmsgs),
called with each input. Every call ends in one of three ways:

- it returns an *outcome*: a short label of what it made of the input
  ("NOERROR", "FORMERR", "silent" ...), checked against the target's own
  oracle where it has one (a broken invariant raises AssertionError);
- it raises an exception of the target's *documented* set (the error the
  API promises for bad input): the outcome is the exception's name;
- anything else is a *crash*: another exception, or the process dying
  (a signal, exit, a hang), which ``runner`` catches by running each target
  in a child process.

Targets live one family per module (``apps``, ``netlink``, ``native``);
``TARGETS`` names them, in the order ``burstio fuzz`` runs them.
Inputs come from ``mutate`` (random bytes and mutations of each target's
seeds, input i a function of (seed, target, i) alone).
"""
from __future__ import annotations

import errno
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Target", "TARGETS", "load", "run_one", "outcome_of"]


def _nothing_missing() -> str | None:
    return None


@dataclass(frozen=True)
class Target:
    """One fuzz target (see the module's docstring)."""

    name: str
    run: Callable[[bytes], str]  # one input -> its outcome
    documented: tuple[type[BaseException], ...]  # what bad input may raise
    seeds: Callable[[], list[bytes]]  # valid inputs to mutate
    missing: Callable[[], str | None] = field(default=_nothing_missing)  # why it cannot run here, or None
    max_len: int = 4096  # longest input the mutator makes


#: name -> "module:attribute" of its Target (imported on use: a target's
#: module may import what another target does not need)
TARGETS = {
    "sockperf": "burstio._fuzz.apps:SOCKPERF",
    "dns": "burstio._fuzz.apps:DNS",
    "netdev": "burstio._fuzz.netlink:NETDEV",
    "region-header": "burstio._fuzz.native:REGION_HEADER",
    "udp-parse": "burstio._fuzz.native:UDP_PARSE",
    "frame-parse": "burstio._fuzz.native:FRAME_PARSE",
}


def load(name: str) -> Target:
    """The target registered as ``name``, or one given as "module:attribute"
    (how the tests add a target of their own)."""
    spec = TARGETS.get(name, name)
    module, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"unknown fuzz target {name!r}; choose from {', '.join(TARGETS)}")
    target = getattr(importlib.import_module(module), attr)
    if not isinstance(target, Target):
        raise TypeError(f"{spec} is {type(target).__name__}, not a fuzz Target")
    return target


def outcome_of(exc: BaseException) -> str:
    """The outcome label of a documented exception: its type, and its errno's name if any."""
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code, str(code)) if isinstance(code, int) else None
    return f"{type(exc).__name__}({name})" if name else type(exc).__name__


def run_one(target: Target, data: bytes) -> tuple[str, Exception | None]:
    """Run one input: (outcome, None), or ("crash", the exception)."""
    try:
        return target.run(data), None
    except target.documented as exc:
        return outcome_of(exc), None
    except Exception as exc:  # noqa: BLE001 (a crash is what this reports)
        return "crash", exc
