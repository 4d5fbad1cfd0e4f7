"""What every command line of burstio shares: one-line mistakes, argument types, bind errors, workers.

The ``burstio`` command (src/burstio/_cli.py) and the apps' own mains (``python -m
burstio.apps.dns``, ``python -m burstio.apps.quic``) check every argument before any work
starts and report a mistake as one line on stderr with exit status 2, never a traceback:
``Parser`` words argparse's errors that way, the ``*_arg`` types check values (a port in
0..65535, a host that resolves, a size in range, a file that can be written), and
``bind_failure`` turns the OSError of a bind into a line naming the address. A failure that is
not the user's mistake (the kernel refused, a peer did not answer) is ``CommandError`` with
status 1.
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

__all__ = ["Parser", "CommandError", "port_arg", "host_arg", "int_arg", "seconds_arg", "writable_file_arg",
           "bind_failure", "run_command", "add_workers_argument", "serve_workers", "when_set", "say",
           "add_quic_serve_arguments", "add_dns_arguments", "add_sockperf_arguments", "napi_settings_arg",
           "SOCKPERF_MODES", "SOCKPERF_SUSPEND_NAPI", "BUSY_POLL_MECHANISMS", "DNS_TRANSPORTS", "QUIC_TRANSPORTS"]

# The servers' choices, declared here so that building the `burstio` parser imports no app and
# no burstio.aio (tests/test_cli.py checks them against the apps' own constants).
SOCKPERF_MODES = ("blocking", "busy-poll", "busy-poll-suspend")
SOCKPERF_SUSPEND_NAPI = {"defer_hard_irqs": 2, "gro_flush_timeout": 200_000, "irq_suspend_timeout": 20_000_000}
BUSY_POLL_MECHANISMS = ("auto", "socket", "epoll")  # a BurstSocket's (burstio._busy_policy.SOCKET_MECHANISMS)
DNS_TRANSPORTS = ("asyncio", "burstio-compat", "burstio")
QUIC_TRANSPORTS = ("asyncio", "burstio", "burstio-paced")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it has none to show (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported as one line (``PROG: MESSAGE``) and exit status 2,
    and every option's default shown in ``--help``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # argparse's own keywords, passed through

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class CommandError(Exception):
    """A command stops: ``str(e)`` is the one line to print, ``status`` the exit status
    (2: the user's mistake, found before or at start; 1: a failure later on)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def run_command(prog: str, func: Callable[[], int]) -> int:
    """``func()``, with a ``CommandError`` printed as ``PROG: MESSAGE`` on stderr, Ctrl-C
    as exit status 130, and a reader of the output that went away (``burstio caps | head``)
    as a quiet stop with status 141, as a shell reports a process SIGPIPE ended."""
    try:
        status = func()
        sys.stdout.flush()  # what is still buffered fails here, not in Python's flush at exit
        return status
    except CommandError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # nothing left may raise again when Python flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def int_arg(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""
    def integer(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {value}")
        return value
    return integer


def seconds_arg(lo: float, hi: float = float("inf"), *, open_low: bool = True) -> Callable[[str], float]:
    """An argparse type: a number of seconds, > lo (or >= lo) and <= hi."""
    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
        if math.isnan(value) or value > hi or value < lo or (open_low and value == lo):
            bound = f"> {lo:g}" if open_low else f">= {lo:g}"
            upper = f" and <= {hi:g}" if hi != float("inf") else ""
            raise argparse.ArgumentTypeError(f"must be {bound}{upper} seconds, got {text}")
        return value
    return seconds


port_arg = int_arg(0, 65535)
port_arg.__doc__ = "An argparse type: a UDP port, 0..65535 (0: any free port)."


def host_arg(text: str) -> str:
    """An argparse type: a numeric IPv4/IPv6 address, or a name that resolves (to its first
    address). burstio's sockets take numeric hosts."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(text, None, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as e:
        why = e.strerror if isinstance(e, socket.gaierror) else "not a valid host name"
        raise argparse.ArgumentTypeError(f"{text!r} is neither an IP address nor a name that resolves "
                                         f"({why})") from None
    return str(infos[0][4][0])


def writable_file_arg(text: str) -> str:
    """An argparse type: a file that can be written, checked before the work that ends by
    writing it: its directory exists, it is not a directory, and opening it for writing works
    (a file made by that check is removed again)."""
    path = Path(text)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: directory {parent} does not exist")
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {e.strerror.lower() if e.strerror else e}") from None
    if not existed:
        path.unlink()
    return text


def bind_failure(e: OSError, host: str, port: int, what: str = "UDP") -> CommandError:
    """The one line for a bind that failed: the address in use, not this machine's, or a
    privileged port; status 2 (the user's choice of address), else 1."""
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return CommandError(f"{what} {addr} is already in use (EADDRINUSE): choose another --port, "
                            "or stop what is bound there", 2)
    if e.errno == errno.EADDRNOTAVAIL:
        return CommandError(f"cannot bind {what} {addr}: {host} is not an address of this machine "
                            "(EADDRNOTAVAIL)", 2)
    if e.errno == errno.EACCES:
        return CommandError(f"cannot bind {what} {addr}: permission denied (EACCES; ports below 1024 need "
                            "root or CAP_NET_BIND_SERVICE)", 2)
    if e.errno == errno.EAFNOSUPPORT:
        return CommandError(f"cannot bind {what} {addr}: the address family is not supported here "
                            "(EAFNOSUPPORT)", 2)
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    return CommandError(f"cannot bind {what} {addr}: {e.strerror} ({name})", 1)


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """``--workers N``, ``--pin`` and ``--steer-by-queue``: one process per worker on one port
    (``burstio.napi.ReusePortGroup``)."""
    parser.add_argument("--workers", type=int_arg(1, 1024), default=1,
                        help="server processes sharing the port through SO_REUSEPORT "
                             "(burstio.napi.ReusePortGroup); the kernel spreads flows over them")
    parser.add_argument("--pin", action="store_true",
                        help="with --workers: pin worker i to the i-th CPU this process may run on")
    parser.add_argument("--steer-by-queue", action="store_true",
                        help="with --workers: give worker i the packets of receive queue i (classic BPF) "
                             "instead of a hash of the flow; for a device with at least as many queues "
                             "(on loopback every packet is queue 0, so worker 0 would take all)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_workers(args: argparse.Namespace, what: str,
                  server: Callable[[int, socket.socket, Event], object]) -> int:
    """Run ``server(index, sock, stop)`` in ``args.workers`` processes sharing
    ``(args.host, args.port)`` (``burstio.napi.ReusePortGroup``) until SIGTERM or Ctrl-C, or
    until a worker exits by itself (status 1). Each server prints its own closing line."""
    from .napi.reuseport import ReusePortGroup, Worker

    cpus = sorted(os.sched_getaffinity(0))
    workers = [Worker(cpu=cpus[i % len(cpus)] if args.pin else None) for i in range(args.workers)]
    try:
        group = ReusePortGroup((args.host, args.port), workers, steer=args.steer_by_queue)
    except OSError as e:
        raise bind_failure(e, args.host, args.port) from None
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends the servers like Ctrl-C
    with group:
        host, port = group.address[:2]
        group.start_servers(server)
        if not args.quiet:
            how = "receive queue i -> worker i" if args.steer_by_queue else "flows hashed over them"
            print(f"{what} on {host}:{port}: {args.workers} worker processes (SO_REUSEPORT, {how})", flush=True)
        try:
            while group.running() == args.workers:
                time.sleep(0.1)
        except KeyboardInterrupt:
            return 0
        finally:
            group.stop()
    raise CommandError("a worker process exited by itself; the others were stopped")


def when_set(stop: Event, then: Callable[[], object]) -> None:
    """Call ``then()`` on a daemon thread once ``stop`` is set (a worker's way to hear
    ``ReusePortGroup.stop()`` while it serves)."""
    def wait() -> None:
        stop.wait()
        then()
    threading.Thread(target=wait, daemon=True, name="burstio-worker-stop").start()


def say(line: str) -> None:
    """Print one line with one write(2), so that lines of worker processes sharing stdout never
    interleave."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (line + "\n").encode())


def add_quic_serve_arguments(parser: argparse.ArgumentParser, transports: tuple[str, ...] = QUIC_TRANSPORTS) -> None:
    """The options of ``burstio serve quic`` (``burstio.apps.quic.add_serve_arguments`` is this)."""
    parser.add_argument("--host", type=host_arg, default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=port_arg, default=4433, help="UDP port (0: any free port)")
    parser.add_argument("--cert", help="certificate (PEM; none: a throw-away self-signed one)")
    parser.add_argument("--key", help="private key of --cert (PEM)")
    parser.add_argument("--transport", choices=transports, default="burstio",
                        help="the loop's datagram transport: asyncio's own, burstio's (batched), or burstio's "
                             "with aioquic's pacing released by burstio's pacer thread (burstio-paced)")
    parser.add_argument("--quiet", action="store_true", help="no start/stop lines")
    add_workers_argument(parser)


def napi_settings_arg(text: str) -> dict[str, int]:
    """An argparse type: K=V,... per-NAPI settings (K one of burstio.napi.netdev.NAPI_KNOBS)."""
    from .napi.netdev import NAPI_KNOBS

    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in NAPI_KNOBS or not value.isdigit():
            raise argparse.ArgumentTypeError(f"expected K=V with K one of {', '.join(NAPI_KNOBS)} and V a "
                                             f"non-negative integer, got {item!r}")
        out[key] = int(value)
    return out


def add_sockperf_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``burstio serve sockperf`` (``burstio.apps.sockperf.add_arguments`` is this)."""
    parser.add_argument("--port", type=port_arg, default=11111, help="UDP port to answer on (0: any free port)")
    parser.add_argument("--host", type=host_arg, default="0.0.0.0", help="address to bind")
    parser.add_argument("--batch", type=int_arg(1, 1024), default=64, help="datagrams per receive call")
    parser.add_argument("--backend", default="auto", choices=["auto", "mmsg", "msg", "portable"],
                        help="BurstSocket backend (auto: recvmmsg/sendmmsg where the kernel has them)")
    parser.add_argument("--quiet", action="store_true", help="no start/stop lines")
    parser.add_argument("--mode", default="blocking", choices=list(SOCKPERF_MODES),
                        help="how to wait for requests: sleep, busy poll, or busy poll with the NAPI "
                             "instance's interrupts suspended")
    parser.add_argument("--busy-poll-usecs", type=int_arg(1, 2**31 - 1), default=50,
                        help="busy-poll modes: microseconds to poll before sleeping")
    parser.add_argument("--busy-poll-budget", type=int_arg(1, 65535), default=8,
                        help="busy-poll modes: packets per poll (over 64 needs CAP_NET_ADMIN)")
    parser.add_argument("--busy-poll-mechanism", default="auto", choices=list(BUSY_POLL_MECHANISMS),
                        help="busy-poll modes: through the socket (SO_BUSY_POLL: the receive polls, no "
                             "epoll_wait first), through an epoll instance (EPIOCSPARAMS), or auto: the socket "
                             "where it can have what is asked")
    parser.add_argument("--napi", dest="napi_settings", type=napi_settings_arg, default=None, metavar="K=V,...",
                        help="busy-poll-suspend: settings for the traffic's NAPI instance, ns (when not given: "
                             + ",".join(f"{k}={v}" for k, v in SOCKPERF_SUSPEND_NAPI.items()) + ")")
    add_workers_argument(parser)


def add_dns_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``burstio serve dns`` (``burstio.apps.dns.add_arguments`` is this)."""
    parser.add_argument("--host", type=host_arg, default="127.0.0.1", help="address to answer on")
    parser.add_argument("--port", type=port_arg, default=5353, help="UDP port (0: any free port)")
    parser.add_argument("--transport", choices=DNS_TRANSPORTS, default="burstio",
                        help="asyncio: the loop's own transport, one sendto per answer; burstio-compat: the "
                             "same protocol on burstio's transport; burstio: the batch protocol "
                             "(datagrams_received)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop")
    parser.add_argument("--quiet", action="store_true", help="no start/stop lines")
    add_workers_argument(parser)
