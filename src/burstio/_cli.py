"""The ``burstio`` command (also ``python -m burstio``)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
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
    from .bench import cref

    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: every scenario's
    # finally blocks run, so namespaces and servers it made are removed
    signal.signal(signal.SIGTERM, _interrupt)

    names = args.scenario or [n for n in bench.SCENARIOS if n not in bench.LONG]
    unknown = [n for n in names if n not in bench.SCENARIOS]
    if unknown:
        print(f"burstio bench: unknown scenario {', '.join(unknown)}; "
              f"choose from {', '.join(bench.SCENARIOS)}", file=sys.stderr)
        return 2
    from .bench.scenarios.soak import PATHS
    paths = tuple(filter(None, (args.paths or "").split(",")))
    if set(paths) - set(PATHS):
        print(f"burstio bench: unknown soak path {', '.join(sorted(set(paths) - set(PATHS)))}; "
              f"choose from {', '.join(PATHS)}", file=sys.stderr)
        return 2
    seconds = args.seconds if args.seconds is not None else (3.0 if args.scenario else 2.0)
    opts = bench.Options(seconds=seconds, size=args.size, batch=args.batch, queue=args.queue, cpu=args.cpu,
                         datagrams=args.datagrams, paths=paths)
    try:
        bench.run(names, opts, as_json=args.json, plot_path=args.plot, progress=not args.quiet)
    except cref.BuildError as e:
        print(f"burstio bench: {e}", file=sys.stderr)
        return 1
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
    from .napi.lab import Lab, LabError

    try:
        if args.action == "up":
            lab = Lab(args.name, queues=args.queues, ifb=args.ifb).up(persist=True)
            print(json.dumps(lab.status(), indent=2))
        elif args.action == "down":
            return _lab_down(args)
        else:
            print(json.dumps(Lab.load(args.name).status(), indent=2))
    except (LabError, PermissionError, ValueError) as e:
        print(f"burstio lab: {e}", file=sys.stderr)
        return 1
    return 0


def _lab_down(args: argparse.Namespace) -> int:
    """Remove what a lab made (--name) or every lab made (--all); say what is left alone and why."""
    from .napi.lab import Lab, LabError, down_all

    if args.all:
        removed, left = down_all()
    else:
        try:
            lab = Lab.load(args.name)
        except LabError as e:
            left = Lab(args.name).down()  # what carries the name, left alone
            print(f"burstio lab: {e}; burstio removes only what it made"
                  + "".join(f"\n  left alone: {why}" for why in left), file=sys.stderr)
            return 1
        removed, left = [args.name], lab.down()
    for name in removed:
        print(f"lab {name}: down")
    for why in left:
        print(f"burstio lab: left alone: {why}", file=sys.stderr)
    return 0

def _cmd_doctor(args: argparse.Namespace) -> int:
    from .napi import doctor
    from .napi.netdev import NetdevError

    try:
        return doctor.main(args.dev, as_json=args.json, do_apply=args.apply)
    except (NetdevError, PermissionError) as e:
        print(f"burstio doctor: {e}", file=sys.stderr)
        return 1


def _cmd_fuzz(args: argparse.Namespace) -> int:
    from ._fuzz import TARGETS
    from ._fuzz.runner import format_reports, fuzz

    unknown = [n for n in args.target if n not in TARGETS]
    if unknown:
        print(f"burstio fuzz: unknown target {', '.join(unknown)}; choose from {', '.join(TARGETS)}",
              file=sys.stderr)
        return 2
    reports = fuzz(args.target, args.inputs, args.seed, Path(args.crash_dir))
    print(format_reports(reports, args.seed, args.json))
    return 1 if any(r.crash_count for r in reports) else 0


def _positive(kind: Callable[[str], _Number]) -> Callable[[str], _Number]:
    def parse(text: str) -> _Number:
        v = kind(text)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse


def _add_fuzz_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ._fuzz import TARGETS

    f = sub.add_parser("fuzz", help="run the fuzz targets (parsers of what peers, the kernel and shared memory send)",
                       description="Targets: " + ", ".join(TARGETS) + ". Each runs in a child process: an "
                                   "exception outside the target's documented set, or the process dying or "
                                   "hanging, is a crash, and the input is saved. Exit status 1 if anything "
                                   "crashed.")
    f.add_argument("target", nargs="*", help="target(s) to run (default: all)")
    f.add_argument("--inputs", type=_positive(int), default=1_000_000, help="inputs per target (default 1000000)")
    f.add_argument("--seed", type=int, default=1, help="the run's seed: same seed, same inputs (default 1)")
    f.add_argument("--crash-dir", default="fuzz-crashes", help="where crashing inputs go (default ./fuzz-crashes)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=_cmd_fuzz)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="burstio", description="Batched, offloaded UDP I/O for Python on Linux.")
    p.add_argument("--version", action="version", version=f"burstio {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("caps", help="probe and list what this kernel offers",
                       description="Probe each capability by trying it; BURSTIO_DISABLE=a,b forces some off.")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_cmd_caps)

    from .bench import LONG, SCENARIOS

    b = sub.add_parser("bench", help="side-by-side benchmarks on loopback",
                       description="Scenarios: " + ", ".join(SCENARIOS) + ". None given: all but "
                                   + ", ".join(LONG) + ", briefly.")
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
    b.add_argument("--datagrams", type=_positive(int),
                   help="soak: datagrams in all, split evenly across the paths (default 100000000)")
    b.add_argument("--paths", help="soak: comma-separated paths (default: all: mmsg, socketset-uring, "
                                   "socketset-epoll, pipe, aio-asyncio, aio-uvloop)")
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
                                    "down: remove them (only what burstio made: it keeps a record in /run/burstio, "
                                    "or $BURSTIO_LAB_STATE); status: what is there.")
    la.add_argument("action", choices=["up", "down", "status"])
    la.add_argument("--name", default="burstio", help="lab name (default burstio)")
    la.add_argument("--queues", type=_positive(int), default=2, help="rx/tx queues per veth (default 2)")
    la.add_argument("--ifb", action="store_true", help="also an ifb transmit sink in namespace b")
    la.add_argument("--all", action="store_true",
                    help="down: every lab burstio made on this host (from its records; not those in use)")
    la.set_defaults(func=_cmd_lab)

    _add_fuzz_parser(sub)

    d = sub.add_parser("doctor", help="read busy-poll/NAPI settings; say what the recipe would change",
                       description="Reads sysctls, queues, coalescing, NAPI settings and IRQ affinity; "
                                   "changes nothing unless --apply (per-NAPI settings only).")
    d.add_argument("--dev", help="only this device")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.add_argument("--apply", action="store_true", help="make the per-NAPI changes of the recipe")
    d.set_defaults(func=_cmd_doctor)

    from .xdp._cli import add_parsers

    add_parsers(sub)
    from ._ports_cli import add_parsers as add_ports_parsers

    add_ports_parsers(sub)
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
