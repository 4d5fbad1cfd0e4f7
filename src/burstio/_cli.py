"""The ``burstio`` command (also ``python -m burstio``).

Each subcommand has its own ``_add_<name>_parser`` and ``_cmd_<name>``. Every argument is
checked before work starts; a mistake is one line on stderr and exit status 2
(src/burstio/_cliargs.py words them), a failure later on one line and status 1. Output is for
people by default; ``--json`` prints one JSON object instead.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import __version__
from ._cliargs import CommandError, Parser, int_arg, run_command, seconds_arg, writable_file_arg

if TYPE_CHECKING:
    from .bench.report import ScenarioResult

# ---- caps -------------------------------------------------------------------------------------


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


def _add_caps_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("caps", help="probe and list what this kernel offers, with what each probe saw",
                       description="Probe each capability by trying it; BURSTIO_DISABLE=a,b forces some off.")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_cmd_caps)


# ---- bench ------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_bench(args: argparse.Namespace) -> int:
    import signal

    from . import bench
    from .bench import cref

    names = args.scenario or [n for n in bench.SCENARIOS if n not in bench.LONG]
    unknown = [n for n in names if n not in bench.SCENARIOS]
    if unknown:
        raise CommandError(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(bench.SCENARIOS)}", 2)
    from .bench.scenarios.soak import PATHS
    paths = tuple(filter(None, (args.paths or "").split(",")))
    if set(paths) - set(PATHS):
        raise CommandError(f"unknown soak path {', '.join(sorted(set(paths) - set(PATHS)))}; "
                           f"choose from {', '.join(PATHS)}", 2)
    if args.cpu is not None and args.cpu not in os.sched_getaffinity(0):
        raise CommandError(f"--cpu {args.cpu}: this process may run only on CPUs "
                           f"{', '.join(map(str, sorted(os.sched_getaffinity(0))))}", 2)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise CommandError("--plot needs matplotlib (pip install matplotlib, or the 'bench' extra)", 2)
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: every scenario's
    # finally blocks run, so namespaces and servers it made are removed
    signal.signal(signal.SIGTERM, _interrupt)
    seconds = args.seconds if args.seconds is not None else (3.0 if args.scenario else 2.0)
    opts = bench.Options(seconds=seconds, size=args.size, batch=args.batch, queue=args.queue, cpu=args.cpu,
                         datagrams=args.datagrams, paths=paths)
    try:
        results = bench.run(names, opts, as_json=args.json, plot_path=args.plot, progress=not args.quiet)
    except cref.BuildError as e:
        raise CommandError(str(e)) from None
    return _bench_status(results, args.fail_on_miss)


def _bench_status(results: list[ScenarioResult], fail_on_miss: bool) -> int:
    """0 for a completed bench; with ``fail_on_miss``, a missed target (never an n/a one) stops
    it with status 1 and one line naming the misses."""
    from .bench.report import TargetSummary

    missed = TargetSummary.of(results).missed
    if fail_on_miss and missed:
        raise CommandError(f"{len(missed)} target{'s' if len(missed) > 1 else ''} missed (--fail-on-miss): "
                           + "; ".join(missed))
    return 0


def _add_bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .bench import LONG, SCENARIOS

    b = sub.add_parser("bench", help="side-by-side benchmarks on loopback (tables, --json, --plot)",
                       description="Scenarios: " + ", ".join(SCENARIOS) + ". None given: all but "
                                   + ", ".join(LONG) + ", briefly.")
    b.add_argument("scenario", nargs="*", help="scenario(s) to run (none: all)")
    b.add_argument("--seconds", type=seconds_arg(0, 86400),
                   help="time budget per scenario (3 for named scenarios; 2 each when all run)")
    b.add_argument("--size", type=int_arg(1, 1472), default=64,
                   help="datagram payload bytes (at most one Ethernet frame's)")
    b.add_argument("--batch", type=int_arg(1, 1024), default=64, help="datagrams per receive call")
    b.add_argument("--queue", type=int_arg(1, 500_000), default=50_000,
                   help="datagrams pre-filled per receive round")
    b.add_argument("--cpu", type=int_arg(0, 4095),
                   help="CPU to pin the measuring process to (the last one when not given)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    b.add_argument("--plot", metavar="FILE.png", type=writable_file_arg,
                   help="also draw the results (needs matplotlib; the path is checked before anything runs)")
    b.add_argument("--quiet", action="store_true",
                   help="no progress on stderr (scenario i of N, round, time left; never on stdout)")
    b.add_argument("--fail-on-miss", action="store_true",
                   help="exit status 1 when any target is MISSED (n/a targets are not misses); "
                        "without it a completed bench exits 0")
    b.add_argument("--datagrams", type=int_arg(1, 10**12),
                   help="soak: datagrams in all, split evenly across the paths (100000000 when not given)")
    b.add_argument("--paths", help="soak: comma-separated paths (all when not given: mmsg, socketset-uring, "
                                   "socketset-epoll, pipe, aio-asyncio, aio-uvloop)")
    b.set_defaults(func=_cmd_bench)


# ---- serve ------------------------------------------------------------------------------------


def _cmd_serve_sockperf(args: argparse.Namespace) -> int:
    from .apps import sockperf

    return sockperf.run(args)


def _cmd_serve_dns(args: argparse.Namespace) -> int:
    from .apps import dns

    return dns.run(args)


def _cmd_serve_quic(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("aioquic") is None:
        raise CommandError("serve quic needs aioquic (pip install 'burstio[apps]')", 2)
    from .apps import quic

    return quic.run_serve(args)


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # the options come from _cliargs: building the parser imports no app (nor burstio.aio, aioquic)
    from ._cliargs import add_dns_arguments, add_quic_serve_arguments, add_sockperf_arguments

    s = sub.add_parser("serve", help="run a server built on burstio: sockperf, dns or quic (HTTP/3)",
                       description="Servers built on burstio. --workers N runs N processes on one port "
                                   "(SO_REUSEPORT, burstio.napi.ReusePortGroup).")
    ss = s.add_subparsers(dest="server", required=True, metavar="SERVER")
    sp = ss.add_parser("sockperf", help="answer the sockperf 3.x UDP protocol (ping-pong, under-load, throughput)",
                       description="A sockperf-compatible UDP server on recv_batch/send_batch; try it with "
                                   "`sockperf pp -i HOST -p PORT`.")
    add_sockperf_arguments(sp)
    sp.set_defaults(func=_cmd_serve_sockperf)
    sd = ss.add_parser("dns", help="a fixed-answer DNS responder on burstio.aio",
                       description="Every A query gets 192.0.2.1, AAAA 2001:db8::1, anything else an empty "
                                   "NOERROR; try it with `dig @HOST -p PORT example.com` or dnsperf.")
    add_dns_arguments(sd)
    sd.set_defaults(func=_cmd_serve_dns)
    sq = ss.add_parser("quic", help="an HTTP/3 server (aioquic) on burstio.aio: GET /bytes/N",
                       description="HTTP/3 over aioquic on burstio's transport: GET /bytes/N answers N bytes, "
                                   "anything else 404. Fetch with `python -m burstio.apps.quic get URL`.")
    add_quic_serve_arguments(sq)
    sq.set_defaults(func=_cmd_serve_quic)


# ---- lab --------------------------------------------------------------------------------------


_LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")


def _lab_name(text: str) -> str:
    if not _LAB_NAME.match(text):
        raise argparse.ArgumentTypeError(f"must be 1-10 lowercase letters/digits starting with a letter, got {text!r}")
    return text


def _lab_text(status: dict[str, Any]) -> str:
    """A lab's status for people."""
    present = status.get("present", {})
    state = "up" if present and all(present.values()) else ("partly there" if any(present.values()) else "not there")
    lines = [f"lab {status['name']}: {state}; {status['queues']} queues per veth, MTU {status['mtu']}"]
    for side in ("a", "b"):
        napi = status.get("napi", {}).get(side)
        lines.append(f"  {side}: namespace {status['namespaces'][side]}, device {status['devices'][side]}, "
                     f"address {status['addresses'][side]}" + (f", NAPI IDs {napi}" if napi else "")
                     + ("" if present.get(side, True) else " (missing)"))
    if status.get("sink"):
        lines.append(f"  ifb sink: device {status['sink']['device']}, reached at {status['sink']['addr']} from b")
    made = status.get("made_by")
    if made:
        lines.append(f"  made by process {made['pid']} ({'running' if made['alive'] else 'gone'}; "
                     + ("stays until `burstio lab down`" if made["persist"] else "removed when it exits") + ")")
    ns = status["namespaces"]
    lines.append(f"  run in it: ip netns exec {ns['b']} CMD; remove it: burstio lab down --name {status['name']}")
    return "\n".join(lines)


def _cmd_lab(args: argparse.Namespace) -> int:
    from .napi.lab import Lab, LabError

    try:
        if args.action == "down":
            return _lab_down(args)
        if args.all:
            raise CommandError("--all goes with `lab down` only", 2)
        if args.action == "up":
            status = Lab(args.name, queues=args.queues, ifb=args.ifb).up(persist=True).status()
        else:
            status = Lab.load(args.name).status()
    except (LabError, PermissionError) as e:
        raise CommandError(str(e)) from None
    print(json.dumps(status, indent=2) if args.json else _lab_text(status))
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
            raise CommandError(f"{e}; burstio removes only what it made"
                               + "".join(f"; left alone: {why}" for why in left)) from None
        removed, left = [args.name], lab.down()
    if args.json:
        print(json.dumps({"removed": removed, "left_alone": left}, indent=2))
        return 0
    for name in removed:
        print(f"lab {name}: down")
    if not removed:
        print("no lab to remove")
    for why in left:  # not an error, but what the user should know: beside errors
        print(f"burstio lab: left alone: {why}", file=sys.stderr)
    return 0


def _add_lab_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    la = sub.add_parser("lab", help="network namespaces joined by a veth with NAPI on (needs root)",
                        description="up: make namespaces <name>-a/<name>-b joined by veth with N queues and NAPI on; "
                                    "down: remove them (only what burstio made: it keeps a record in /run/burstio, "
                                    "or $BURSTIO_LAB_STATE); status: what is there.")
    la.add_argument("action", choices=["up", "down", "status"], help="what to do")
    la.add_argument("--name", type=_lab_name, default="burstio", help="lab name")
    la.add_argument("--queues", type=int_arg(1, 64), default=2, help="up: rx/tx queues per veth")
    la.add_argument("--ifb", action="store_true", help="up: also an ifb transmit sink in namespace b")
    la.add_argument("--all", action="store_true",
                    help="down: every lab burstio made on this host (from its records; not those in use)")
    la.add_argument("--json", action="store_true", help="print one JSON object")
    la.set_defaults(func=_cmd_lab)


# ---- fuzz -------------------------------------------------------------------------------------


def _cmd_fuzz(args: argparse.Namespace) -> int:
    from ._fuzz import TARGETS
    from ._fuzz.runner import format_reports, fuzz

    unknown = [n for n in args.target if n not in TARGETS]
    if unknown:
        raise CommandError(f"unknown target {', '.join(unknown)}; choose from {', '.join(TARGETS)}", 2)
    crash_dir = Path(args.crash_dir)
    if crash_dir.exists() and not crash_dir.is_dir():
        raise CommandError(f"--crash-dir {crash_dir} is not a directory", 2)
    reports = fuzz(args.target, args.inputs, args.seed, crash_dir)
    print(format_reports(reports, args.seed, args.json))
    return 1 if any(r.crash_count for r in reports) else 0


def _add_fuzz_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ._fuzz import TARGETS

    f = sub.add_parser("fuzz", help="run the fuzz targets (parsers of what peers, the kernel and shared memory send)",
                       description="Targets: " + ", ".join(TARGETS) + ". Each runs in a child process: an "
                                   "exception outside the target's documented set, or the process dying or "
                                   "hanging, is a crash, and the input is saved. Exit status 1 if anything "
                                   "crashed.")
    f.add_argument("target", nargs="*", help="target(s) to run (none: all)")
    f.add_argument("--inputs", type=int_arg(1, 10**12), default=1_000_000, help="inputs per target")
    f.add_argument("--seed", type=int_arg(0, 2**63 - 1), default=1, help="the run's seed: same seed, same inputs")
    f.add_argument("--crash-dir", default="fuzz-crashes", help="where crashing inputs go")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=_cmd_fuzz)


# ---- doctor -----------------------------------------------------------------------------------


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .napi import doctor
    from .napi.netdev import NetdevError

    if args.dev is not None and not Path(f"/sys/class/net/{args.dev}").exists():
        raise CommandError(f"--dev {args.dev}: no network device of that name here "
                           "(ip link lists them; in a namespace, run doctor inside it)", 2)
    try:
        return doctor.main(args.dev, as_json=args.json, do_apply=args.apply)
    except (NetdevError, PermissionError) as e:
        raise CommandError(str(e)) from None


def _add_doctor_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("doctor", help="read the UDP receive path and busy-poll/NAPI settings; say what to change",
                       description="Reads the socket buffer sysctls against what burstio asks for, the kernel's "
                                   "UDP drop counters, the busy-poll sysctls, which busy_poll() mechanisms the kernel "
                                   "has, queues, coalescing, NAPI settings "
                                   "and IRQ affinity; prints the commands that would fix what it finds. Changes "
                                   "nothing unless --apply (per-NAPI settings only, never sysctls).")
    d.add_argument("--dev", help="only this device (every device but lo when not given)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.add_argument("--apply", action="store_true", help="make the per-NAPI changes of the busy-poll recipe")
    d.set_defaults(func=_cmd_doctor)


# ---- the command ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="burstio", description="Batched, offloaded UDP I/O for Python on Linux. "
                                           "`burstio COMMAND --help` says more about each command.")
    p.add_argument("--version", action="version", version=f"burstio {__version__}")
    # the subcommands' parsers are Parsers too (argparse makes them of the parent's class)
    sub = cast("argparse._SubParsersAction[argparse.ArgumentParser]",
               p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands"))
    _add_caps_parser(sub)
    _add_bench_parser(sub)
    _add_serve_parser(sub)
    _add_lab_parser(sub)
    _add_fuzz_parser(sub)
    _add_doctor_parser(sub)
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
    prog = " ".join(filter(None, ("burstio", args.command, getattr(args, "server", None))))
    status: int = run_command(prog, lambda: args.func(args))
    return status


if __name__ == "__main__":
    sys.exit(main())
