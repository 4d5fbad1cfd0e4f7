"""The ``burstio switch`` command: a bridge of NIC queues and named ports.

``burstio switch [--nic DEV[:QUEUE]]... [--port NAME[=DEST]]...
[--route DEST=NAME[,NAME...]]... [--forward-by mac|key] [--rule RULE]...
[--seconds S] [--json]`` runs a ``ports.Switch`` on this process: each
``--nic`` queue is a NIC port (``ports.nic_port``) fed by a Steer program of
the ``--rule`` rules on its device, each ``--port`` is published under its
name (another process takes it with ``burstio.ports.attach(NAME)``, once),
with a static route from DEST to it; ``--route`` sends DEST to several
ports (by flow, ``--spread``). Every option is checked before anything is
made (a mistake is one line, exit status 2). It runs until --seconds pass or
SIGINT/SIGTERM, then prints the switch's counters and routes, and every
port's state. Everything it made goes with it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from ._cliargs import CommandError, seconds_arg


@dataclass
class _Plan:
    """What the command line asks for, every value checked: nothing is made
    before all of it is known to be possible to ask for."""

    nics: list[tuple[str, str, int]] = field(default_factory=list)  # (spec, device, queue)
    ports: list[tuple[str, int | str | None]] = field(default_factory=list)  # (name, destination)
    routes: list[tuple[int | str, list[str]]] = field(default_factory=list)  # (destination, names)
    rules: list[Any] = field(default_factory=list)


def _mistake(option: str, text: str, why: str) -> CommandError:
    return CommandError(f"{option} {text!r}: {why}", 2)


def _nic_spec(text: str) -> tuple[str, int]:
    dev, _, queue = text.partition(":")
    if not dev or (queue and not queue.isdigit()) or ":" in queue:
        raise _mistake("--nic", text, "a NIC queue is DEV or DEV:QUEUE (QUEUE a number)")
    try:
        socket.if_nametoindex(dev)
    except (OSError, ValueError):
        raise _mistake("--nic", text, f"no network device named {dev!r} in this network namespace") from None
    return dev, int(queue or 0)


def _dest(option: str, spec: str, text: str, by: str) -> int | str:
    """A destination: a MAC address (``by="mac"``) or a key, checked."""
    from ._ports_switch import mac_key
    from .ports import BROADCAST

    if by == "mac":
        try:
            mac_key(text)
        except ValueError as e:
            raise _mistake(option, spec, str(e)) from None
        return text
    if not text.isdigit() or not 1 <= int(text) < BROADCAST:
        raise _mistake(option, spec, f"a key is an integer from 1 to {BROADCAST - 1}, got {text!r}")
    return int(text)


def _plan(args: argparse.Namespace) -> _Plan:
    """Every option checked (CommandError, status 2: the user's mistake)."""
    from .ports import _address
    from .xdp.programs import rules_from

    if not args.nic and not args.port:
        raise CommandError("give at least one --nic or --port", 2)
    if not 2 <= args.slots <= 65536 or args.slots & (args.slots - 1):
        raise CommandError(f"--slots: must be a power of two from 2 to 65536, got {args.slots}", 2)
    plan = _Plan()
    for spec in args.rule or ["proto=udp"]:
        try:
            plan.rules += rules_from([spec])
        except (ValueError, TypeError) as e:
            raise _mistake("--rule", spec, str(e)) from None
    names: set[str] = set()
    for spec in args.nic:
        dev, queue = _nic_spec(spec)
        if any((dev, queue) == (d, q) for _, d, q in plan.nics):
            raise _mistake("--nic", spec, f"queue {queue} of {dev} is given twice")
        plan.nics.append((spec, dev, queue))
        names.add(spec)
    for spec in args.port:
        name, eq, dest = spec.partition("=")
        if not name or "," in name or (eq and not dest):
            raise _mistake("--port", spec, "a port is NAME or NAME=DEST (NAME not empty, without '=' or ',')")
        try:
            _address(name)
        except ValueError as e:
            raise _mistake("--port", spec, str(e)) from None
        if name in names:
            raise _mistake("--port", spec, f"the name {name} is given twice")
        names.add(name)
        plan.ports.append((name, _dest("--port", spec, dest, args.forward_by) if dest else None))
    for spec in args.route:
        dest, _, listed = spec.partition("=")
        targets = listed.split(",") if listed else []
        unknown = [n for n in targets if n not in names]
        if not dest or not targets or unknown:
            raise _mistake("--route", spec, "DEST=NAME[,NAME...] of the ports and NIC queues given here"
                           + (f" (no {', '.join(unknown)})" if unknown else ""))
        plan.routes.append((_dest("--route", spec, dest, args.forward_by), targets))
    return plan


def _build(args: argparse.Namespace, plan: _Plan, stack: contextlib.ExitStack) -> tuple[Any, dict[str, Any]]:
    """The switch, its NIC ports and its published ports, by name."""
    from .ports import Switch, nic_port, publish
    from .xdp.programs import Steer

    sw = stack.enter_context(Switch(slots=args.slots, forward_by=args.forward_by, on_full=args.on_full,
                                    nic_gather=args.nic_gather))
    named: dict[str, Any] = {}
    for spec, dev, queue in plan.nics:
        steer = Steer(plan.rules)
        stack.enter_context(steer)
        steer.attach(dev)
        nic = nic_port(dev, queue, slots=args.slots, steer=steer)
        sw.add_nic(nic)
        named[spec] = nic
    for name, dest in plan.ports:
        port = sw.add_port(key=dest)
        publish(port, name)
        named[name] = port
    for dest, targets in plan.routes:
        ports = [named[n] for n in targets]
        sw.route(dest, ports[0] if len(ports) == 1 else ports, spread=args.spread)
    return sw, named


def _report(sw: Any, named: dict[str, Any], as_json: bool) -> None:
    states = {name: sw.port_state(p.switch_index) for name, p in named.items()}
    out = {"counters": sw.counters, "routes": {str(k): v for k, v in sw.routes.items()}, "ports": states}
    if as_json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return
    print("ports: " + ", ".join(f"{n} ({s})" for n, s in states.items()))
    print("counters: " + " ".join(f"{k}={v}" for k, v in out["counters"].items()))
    for dest, (target, static) in out["routes"].items():
        print(f"route {dest} -> {target}{' (static)' if static else ''}")


def _cmd_switch(args: argparse.Namespace) -> int:
    plan = _plan(args)  # a mistake stops here, before anything is made
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        with contextlib.ExitStack() as stack:
            sw, named = _build(args, plan, stack)
            sw.start()
            if not args.json:
                print(f"switch up: {', '.join(named)}; take a port with burstio.ports.attach(NAME)", flush=True)
            done.wait(args.seconds)
            sw.stop()
            sw._native.stopping = 0
            sw.forward(0)  # a last pass: what the ports did before the stop is in the report
            _report(sw, named, args.json)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        print(f"burstio switch: {e}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: Any) -> None:
    """Add the ``switch`` subcommand to the burstio command's parsers."""
    s = sub.add_parser("switch", help="a bridge of NIC queues (AF_XDP) and ports other processes attach to",
                       description="Run a ports.Switch: NIC queues (--nic) and named ports (--port) that other "
                                   "processes take with burstio.ports.attach(NAME). Frames are routed by "
                                   "destination MAC (a learning bridge) or by key.")
    s.add_argument("--nic", action="append", default=[], metavar="DEV[:QUEUE]",
                   help="attach this device queue (needs root): a Steer program of --rule sends it its frames")
    s.add_argument("--port", action="append", default=[], metavar="NAME[=DEST]",
                   help="a port published as NAME; with DEST (a MAC, or a key) a static route to it")
    s.add_argument("--route", action="append", default=[], metavar="DEST=NAME[,NAME...]",
                   help="send DEST to these ports and NIC queues (several: a group, see --spread)")
    s.add_argument("--forward-by", choices=("mac", "key"), default="mac", help="route by (default: mac)")
    s.add_argument("--spread", choices=("flow", "round-robin"), default="flow",
                   help="how a group of ports shares its frames (default: flow)")
    s.add_argument("--rule", action="append", metavar="RULE",
                   help="what the NIC queues get, as burstio xdp filter takes it (default: proto=udp)")
    s.add_argument("--slots", type=int, default=1024, help="slots per ring (a power of two from 2 to 65536)")
    s.add_argument("--on-full", choices=("wait", "drop"), default="wait",
                   help="a frame for a full ring waits (default) or is dropped and counted")
    s.add_argument("--nic-gather", type=seconds_arg(0, 0.01, open_low=False), default=0.0, metavar="SECONDS",
                   help="under load, take a NIC queue's frames at most this often instead of at each of the "
                        "kernel's wake-ups (Switch(nic_gather=); keep it below what fills the ports' rings) "
                        "(default: 0, at each wake-up)")
    s.add_argument("--seconds", type=seconds_arg(0, open_low=False), default=None,
                   help="run this long (default: until Ctrl-C or SIGTERM)")
    s.add_argument("--json", action="store_true", help="print the final counters as one JSON object")
    s.set_defaults(func=_cmd_switch)
