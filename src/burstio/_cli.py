"""The ``burstio`` command (also ``python -m burstio``)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TypeVar

from . import __version__

_Number = TypeVar("_Number", int, float)


def _cmd_caps(args: argparse.Namespace) -> int:
    from ._caps import capabilities

    caps = capabilities()
    if args.json:
        json.dump(caps.as_dict(), sys.stdout, indent=2)
        print()
        return 0
    width = max(map(len, caps))
    for name, c in caps.items():
        state = "yes" if c.available else ("off" if c.forced_off else "no")
        print(f"{name.ljust(width)}  {state:3}  {c.detail}")
    print(f"{'gso_max_segments'.ljust(width)}  {caps.gso_max_segments}")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_bench(args: argparse.Namespace) -> int:
    import signal

    from . import bench

    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: every scenario's
    # finally blocks run, so namespaces and servers it made are removed
    signal.signal(signal.SIGTERM, _interrupt)

    names = args.scenario or list(bench.SCENARIOS)
    unknown = [n for n in names if n not in bench.SCENARIOS]
    if unknown:
        print(f"burstio bench: unknown scenario {', '.join(unknown)}; "
              f"choose from {', '.join(bench.SCENARIOS)}", file=sys.stderr)
        return 2
    seconds = args.seconds if args.seconds is not None else (3.0 if args.scenario else 2.0)
    opts = bench.Options(seconds=seconds, size=args.size, batch=args.batch, queue=args.queue, cpu=args.cpu)
    bench.run(names, opts, as_json=args.json, plot_path=args.plot, progress=not args.quiet)
    return 0


def _napi_settings(text: str) -> dict[str, int]:
    from .napi.netdev import NAPI_KNOBS

    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in NAPI_KNOBS or not value.isdigit():
            raise argparse.ArgumentTypeError(f"expected K=V with K one of {', '.join(NAPI_KNOBS)} and V a "
                                             f"non-negative integer, got {item!r}")
        out[key] = int(value)
    return out


def _cmd_serve(args: argparse.Namespace) -> int:
    from .apps import sockperf

    return sockperf.main(args.host, args.port, batch=args.batch, backend=args.backend, quiet=args.quiet,
                         mode=args.mode, busy_poll_usecs=args.busy_poll_usecs,
                         busy_poll_budget=args.busy_poll_budget, napi_settings=args.napi_settings)


def _cmd_lab(args: argparse.Namespace) -> int:
    from .napi.lab import Lab, LabError, leftover_namespaces

    try:
        if args.action == "up":
            lab = Lab(args.name, queues=args.queues, ifb=args.ifb).up(persist=True)
            print(json.dumps(lab.status(), indent=2))
        elif args.action == "down":
            names = [args.name] if not args.all else sorted({ns.rsplit("-", 1)[0] for ns in leftover_namespaces("")
                                                             if ns.endswith(("-a", "-b"))})
            for name in names:
                try:
                    Lab.load(name).down()
                except LabError:
                    Lab(name).down()  # no state file: delete what the names say
                print(f"lab {name}: down")
        else:
            print(json.dumps(Lab.load(args.name).status(), indent=2))
    except (LabError, PermissionError, ValueError) as e:
        print(f"burstio lab: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .napi import doctor
    from .napi.netdev import NetdevError

    try:
        return doctor.main(args.dev, as_json=args.json, do_apply=args.apply)
    except (NetdevError, PermissionError) as e:
        print(f"burstio doctor: {e}", file=sys.stderr)
        return 1


def _positive(kind: Callable[[str], _Number]) -> Callable[[str], _Number]:
    def parse(text: str) -> _Number:
        v = kind(text)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="burstio", description="Batched, offloaded UDP I/O for Python on Linux.")
    p.add_argument("--version", action="version", version=f"burstio {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("caps", help="probe and list what this kernel offers",
                       description="Probe each capability by trying it; BURSTIO_DISABLE=a,b forces some off.")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_cmd_caps)

    from .bench import SCENARIOS

    b = sub.add_parser("bench", help="side-by-side benchmarks on loopback",
                       description="Scenarios: " + ", ".join(SCENARIOS) + ". None given: all, briefly.")
    b.add_argument("scenario", nargs="*", help="scenario(s) to run (default: all)")
    b.add_argument("--seconds", type=_positive(float), help="time budget per scenario (default 3; 2 for all)")
    b.add_argument("--size", type=int, default=64, help="datagram payload bytes (default 64)")
    b.add_argument("--batch", type=_positive(int), default=64, help="datagrams per receive call (default 64)")
    b.add_argument("--queue", type=_positive(int), default=50_000,
                   help="datagrams pre-filled per receive round (default 50000)")
    b.add_argument("--cpu", type=int, help="CPU to pin the measuring process to (default: the last)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    b.add_argument("--plot", metavar="FILE.png", help="also draw the results (needs matplotlib)")
    b.add_argument("--quiet", action="store_true", help="no progress display")
    b.set_defaults(func=_cmd_bench)

    s = sub.add_parser("serve", help="run a server built on burstio")
    ss = s.add_subparsers(dest="server", required=True, metavar="SERVER")
    sp = ss.add_parser("sockperf", help="answer the sockperf 3.x UDP protocol (ping-pong, under-load)")
    sp.add_argument("--port", type=int, default=11111, help="UDP port (default 11111)")
    sp.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    sp.add_argument("--batch", type=_positive(int), default=64, help="datagrams per receive call")
    sp.add_argument("--backend", default="auto", choices=["auto", "mmsg", "msg", "portable"])
    sp.add_argument("--quiet", action="store_true", help="no start/stop lines")
    sp.add_argument("--mode", default="blocking", choices=["blocking", "busy-poll", "busy-poll-suspend"],
                    help="how to wait for requests (default blocking)")
    sp.add_argument("--busy-poll-usecs", type=_positive(int), default=50, help="busy-poll modes: usecs per poll")
    sp.add_argument("--busy-poll-budget", type=_positive(int), default=8, help="busy-poll modes: packets per poll")
    sp.add_argument("--napi", dest="napi_settings", type=_napi_settings, default=None, metavar="K=V,...",
                    help="busy-poll-suspend: settings for the traffic's NAPI instance (default "
                         "defer_hard_irqs=2,gro_flush_timeout=200000,irq_suspend_timeout=20000000; ns)")
    sp.set_defaults(func=_cmd_serve)

    la = sub.add_parser("lab", help="network namespaces joined by a NAPI veth pair (needs root)",
                        description="up: make namespaces <name>-a/<name>-b joined by veth with N queues and NAPI on; "
                                    "down: remove them; status: what is there.")
    la.add_argument("action", choices=["up", "down", "status"])
    la.add_argument("--name", default="burstio", help="lab name (default burstio)")
    la.add_argument("--queues", type=_positive(int), default=2, help="rx/tx queues per veth (default 2)")
    la.add_argument("--ifb", action="store_true", help="also an ifb transmit sink in namespace b")
    la.add_argument("--all", action="store_true", help="down: every lab left on this host")
    la.set_defaults(func=_cmd_lab)

    d = sub.add_parser("doctor", help="read busy-poll/NAPI settings; say what the recipe would change",
                       description="Reads sysctls, queues, coalescing, NAPI settings and IRQ affinity; "
                                   "changes nothing unless --apply (per-NAPI settings only).")
    d.add_argument("--dev", help="only this device")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.add_argument("--apply", action="store_true", help="make the per-NAPI changes of the recipe")
    d.set_defaults(func=_cmd_doctor)

    from .xdp._cli import add_parsers

    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ._caps import disabled_by_env

    try:
        disabled_by_env()
    except ValueError as e:
        print(f"burstio: {e}", file=sys.stderr)
        return 2
    try:
        status: int = args.func(args)
        return status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
