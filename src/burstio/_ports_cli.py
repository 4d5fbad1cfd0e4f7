"""The ``burstio switch`` command: a bridge of NIC queues and named ports.

``burstio switch [--nic DEV[:QUEUE]]... [--port NAME[=DEST]]...
[--route DEST=NAME[,NAME...]]... [--forward-by mac|key] [--rule RULE]...
[--seconds S] [--json]`` runs a ``ports.Switch`` on this process: each
``--nic`` queue is a NIC port (``ports.nic_port``) fed by a Steer program of
the ``--rule`` rules on its device, each ``--port`` is published under its
name (another process takes it with ``burstio.ports.attach(NAME)``, once),
with a static route from DEST to it; ``--route`` sends DEST to several
ports (by flow, ``--spread``). It runs until --seconds pass or SIGINT/
SIGTERM, then prints the switch's counters and routes, and every port's
state. Everything it made goes with it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from typing import Any


def _nic_spec(text: str) -> tuple[str, int]:
    dev, _, queue = text.partition(":")
    if not dev or (queue and not queue.isdigit()):
        raise argparse.ArgumentTypeError(f"a NIC queue is DEV or DEV:QUEUE (queue a number), got {text!r}")
    return dev, int(queue or 0)


def _dest(text: str, by: str) -> int | str:
    return text if by == "mac" else int(text)


def _build(args: argparse.Namespace, stack: contextlib.ExitStack) -> tuple[Any, dict[str, Any]]:
    """The switch, its NIC ports and its published ports, by name."""
    from .ports import Switch, nic_port, publish
    from .xdp.programs import Steer, rules_from

    sw = stack.enter_context(Switch(slots=args.slots, forward_by=args.forward_by, on_full=args.on_full))
    named: dict[str, Any] = {}
    rules = rules_from(args.rule or ["proto=udp"])
    for spec in args.nic:
        dev, queue = _nic_spec(spec)
        steer = Steer(rules)
        stack.enter_context(steer)
        steer.attach(dev)
        nic = nic_port(dev, queue, slots=args.slots, steer=steer)
        sw.add_nic(nic)
        named[spec] = nic
    for spec in args.port:
        name, _, dest = spec.partition("=")
        port = sw.add_port(key=_dest(dest, args.forward_by) if dest else None)
        publish(port, name)
        named[name] = port
    for spec in args.route:
        dest, _, names = spec.partition("=")
        unknown = [n for n in names.split(",") if n not in named]
        if not dest or not names or unknown:
            raise ValueError(f"--route {spec!r}: DEST=NAME[,NAME...] of ports and NIC queues given here"
                             + (f" (no {', '.join(unknown)})" if unknown else ""))
        targets = [named[n] for n in names.split(",")]
        sw.route(_dest(dest, args.forward_by), targets[0] if len(targets) == 1 else targets, spread=args.spread)
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
    if not args.nic and not args.port:
        print("burstio switch: give at least one --nic or --port", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        with contextlib.ExitStack() as stack:
            sw, named = _build(args, stack)
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
    s.add_argument("--slots", type=int, default=1024, help="slots per ring (a power of two)")
    s.add_argument("--on-full", choices=("wait", "drop"), default="wait",
                   help="a frame for a full ring waits (default) or is dropped and counted")
    s.add_argument("--seconds", type=float, default=None, help="run this long (default: until Ctrl-C)")
    s.add_argument("--json", action="store_true", help="print the final counters as one JSON object")
    s.set_defaults(func=_cmd_switch)
