"""The ``burstio pktgen`` and ``burstio xdp`` commands.

- ``burstio pktgen --dev D --dst IP ...``: the packet generator
  (burstio.xdp.pktgen); prints offered and sent Mpps, or one JSON object.
- ``burstio xdp show``: the XDP programs attached with BPF links (every
  namespace) and to this namespace's devices.
- ``burstio xdp detach (--link ID | --dev D)``: detach a BPF link, or
  what is attached to a device of this namespace.
- ``burstio xdp filter --dev D --rule 'proto=udp,dport=53' ...``: drop
  matching frames in the driver hook for --seconds (or until Ctrl-C),
  printing each rule's counters; the program goes when the command ends.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from typing import Any


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise argparse.ArgumentTypeError(f"a MAC address is 6 bytes like 02:00:00:00:00:01, got {text!r}")
    return raw


def _cmd_pktgen(args: argparse.Namespace) -> int:
    from .pktgen import run
    from .udp import neighbour_mac

    try:
        dst = args.dst or _first_neighbour(args.dev, 6 if args.ipv6 else 4)
        if args.ipv6 != (":" in dst):
            raise ValueError(f"--dst {dst} is not an IPv{6 if args.ipv6 else 4} address"
                             + (" (drop --ipv6)" if not args.ipv6 else " (--ipv6 needs an IPv6 --dst)"))
        dst_mac = args.dst_mac if args.dst_mac is not None else neighbour_mac(dst, args.dev)
        res = run(args.dev, dst, dport=args.dport, src=args.src, sport=args.sport, dst_mac=dst_mac,
                  src_mac=args.src_mac, size=args.size, flows=args.flows, rate=None if args.max else args.rate,
                  seconds=args.seconds, count=args.count, method=args.method, batch=args.batch)
    except (OSError, LookupError, ValueError, ImportError) as e:
        print(f"burstio pktgen: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(res.as_dict(), sys.stdout, indent=2)
        print()
        return 0
    sent = "-" if res.sent_pps is None else f"{res.sent_pps / 1e6:.3f}"
    print(f"{res.dev}: {res.frames} frames of {res.size} B, {res.flows} flows, {res.seconds:.3f} s, "
          f"engine {res.method}")
    print(f"offered {res.offered_pps / 1e6:.3f} Mpps, sent {sent} Mpps (device: {res.device_sent} sent, "
          f"{res.device_dropped} dropped)")
    if res.ns_per_frame is not None:
        print(f"the generator's CPU: {res.ns_per_frame:.1f} ns per frame in the kernel's frame loops")
    return 0


def _first_neighbour(dev: str, family: int) -> str:
    from .udp import _ipr

    with _ipr() as ipr:
        for n in ipr.get_neighbours(family=socket.AF_INET6 if family == 6 else socket.AF_INET,
                                    ifindex=socket.if_nametoindex(dev)):
            dst = n.get_attr("NDA_DST")
            if dst and n.get_attr("NDA_LLADDR") and not dst.startswith("fe80"):
                return str(dst)
    raise ValueError(f"give --dst: {dev} has no IPv{family} neighbour to send to")


def _links() -> list[dict[str, Any]]:
    from .. import _native
    from ._bpf import xdp_links

    out = []
    for link in xdp_links():
        try:
            name = socket.if_indextoname(link["ifindex"])
        except OSError:
            name = None
        prog = {}
        with contextlib.suppress(OSError):
            fd = _native.bpf_fd_by_id("prog", link["prog_id"])
            try:
                prog = _native.bpf_prog_info(fd)
            finally:
                os.close(fd)
        out.append({**link, "program": prog.get("name"), "dev_here": name})
    return out


def _attached_here() -> list[dict[str, Any]]:
    """Devices of this namespace with an XDP program, from netlink."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return []
    out = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            xdp = link.get_attr("IFLA_XDP")
            attrs = dict(xdp.get("attrs", [])) if xdp else {}
            if attrs.get("IFLA_XDP_PROG_ID"):
                out.append({"dev": link.get_attr("IFLA_IFNAME"), "ifindex": link["index"],
                            "prog_id": attrs["IFLA_XDP_PROG_ID"], "attached": attrs.get("IFLA_XDP_ATTACHED")})
    return out


def _cmd_show(args: argparse.Namespace) -> int:
    try:
        links, here = _links(), _attached_here()
    except OSError as e:
        print(f"burstio xdp show: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump({"links": links, "devices": here}, sys.stdout, indent=2)
        print()
        return 0
    print("XDP links (every namespace; the device name is this namespace's for that index):")
    for link in links or [{}]:
        if link:
            print(f"  link {link['id']}: program {link['prog_id']} ({link['program']}) on ifindex {link['ifindex']}"
                  f" ({link['dev_here'] or 'not in this namespace'})")
        else:
            print("  none")
    print("devices of this namespace with an XDP program:")
    for d in here or [{}]:
        print(f"  {d['dev']}: program {d['prog_id']}" if d else "  none")
    return 0


def _cmd_detach(args: argparse.Namespace) -> int:
    from .. import _native

    try:
        ids = [args.link] if args.link is not None else _links_of(args.dev)
        if not ids:
            print(f"burstio xdp detach: no XDP BPF link on {args.dev}", file=sys.stderr)
            return 1
        for lid in ids:
            fd = _native.bpf_fd_by_id("link", lid)
            try:
                _native.bpf_link_detach(fd)
            finally:
                os.close(fd)
            print(f"link {lid}: detached")
    except OSError as e:
        print(f"burstio xdp detach: {e}", file=sys.stderr)
        return 1
    return 0


def _links_of(dev: str) -> list[int]:
    """The BPF links of this namespace's device dev (its attached program's)."""
    progs = {d["prog_id"] for d in _attached_here() if d["dev"] == dev}
    index = socket.if_nametoindex(dev)
    return [link["id"] for link in _links() if link["ifindex"] == index and link["prog_id"] in progs]


def _cmd_filter(args: argparse.Namespace) -> int:
    from .programs import Filter, rules_from

    try:
        rules = rules_from(args.rule)
        prog = Filter(rules).attach(args.dev, args.mode)
    except (OSError, ValueError, TypeError) as e:
        print(f"burstio xdp filter: {e}", file=sys.stderr)
        return 1
    with prog:
        if not args.json:
            print(f"filter on {args.dev} ({prog.mode}: {prog.mode_reason}); Ctrl-C ends it", flush=True)
        end = time.monotonic() + args.seconds if args.seconds else None
        try:
            while end is None or time.monotonic() < end:
                time.sleep(min(1.0, max(0.0, end - time.monotonic())) if end else 1.0)
                if not args.json:
                    _print_counters(prog.counters())
        except KeyboardInterrupt:
            pass
        counts = prog.counters()
    if args.json:
        json.dump([{"rule": c.rule.__dict__ if c.rule else None, "packets": c.packets, "bytes": c.bytes}
                   for c in counts], sys.stdout, indent=2)
        print()
    return 0


def _print_counters(counts: list[Any]) -> None:
    for i, c in enumerate(counts):
        what = f"rule {i} {c.rule}" if c.rule else "unmatched (passed)"
        print(f"  {what}: {c.packets} packets, {c.bytes} bytes")
    sys.stdout.flush()


def _positive(kind: Any) -> Any:
    def parse(text: str) -> Any:
        v = kind(text)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse


def add_parsers(sub: Any) -> None:
    """Add ``pktgen`` and ``xdp`` to the burstio command's subparsers."""
    g = sub.add_parser("pktgen", help="send UDP frames at a given or the highest rate (XDP live frames or AF_XDP)",
                       description="A packet generator: UDP frames of --size bytes from --flows source ports, out of "
                                   "--dev (run it inside a namespace with `ip netns exec`).")
    g.add_argument("--dev", required=True, help="device to send out of")
    g.add_argument("--dst", help="destination address (default: the device's first neighbour)")
    g.add_argument("--dport", type=int, default=9, help="destination UDP port (default 9)")
    g.add_argument("--src", help="source address (default: the device's)")
    g.add_argument("--sport", type=int, default=1024, help="first source port; flows count up (default 1024)")
    g.add_argument("--dst-mac", type=_mac, help="destination MAC (default: from the neighbour table)")
    g.add_argument("--src-mac", type=_mac, help="source MAC (default: the device's)")
    g.add_argument("--ipv6", action="store_true", help="IPv6 (the --dst must be an IPv6 address)")
    g.add_argument("--size", type=int, default=64, help="frame bytes, Ethernet header to payload end (default 64)")
    g.add_argument("--flows", type=_positive(int), default=1, help="distinct source ports (default 1)")
    rate = g.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=_positive(float), help="frames per second")
    rate.add_argument("--max", action="store_true", help="as fast as it goes (the default)")
    g.add_argument("--seconds", type=_positive(float), default=1.0, help="how long (default 1)")
    g.add_argument("--count", type=_positive(int), help="stop after this many frames")
    g.add_argument("--method", default="auto", choices=["auto", "bpf", "xsk"],
                   help="engine: bpf (BPF_PROG_RUN live frames) or xsk (AF_XDP tx ring); auto: bpf where it works")
    g.add_argument("--batch", type=_positive(int), default=64,
                   help="bpf engine: frames per batch of the kernel's run, at most 256; 256 sends the most frames "
                        "per second, 64 lets a short burst into an idle receiver arrive whole (default 64)")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.set_defaults(func=_cmd_pktgen)

    x = sub.add_parser("xdp", help="XDP programs: show, detach, run the early-drop filter")
    xs = x.add_subparsers(dest="xdp_command", required=True, metavar="ACTION")
    s = xs.add_parser("show", help="XDP BPF links and the devices of this namespace with a program")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_cmd_show)
    d = xs.add_parser("detach", help="detach a BPF link (by id, or the one on a device of this namespace)")
    which = d.add_mutually_exclusive_group(required=True)
    which.add_argument("--link", type=int, help="BPF link id (burstio xdp show)")
    which.add_argument("--dev", help="device of this namespace")
    d.set_defaults(func=_cmd_detach)
    f = xs.add_parser("filter", help="drop matching frames in the driver hook, with per-rule counters",
                      description="Rules are KEY=VALUE,... with KEY proto (udp, tcp, number), dport (N or LO-HI), "
                                  "src, dst (address or prefix), family (4, 6), action (drop, pass); the first "
                                  "match wins. The program is detached when the command ends.")
    f.add_argument("--dev", required=True, help="device of this namespace")
    f.add_argument("--rule", action="append", default=[], help="a rule (repeat for more)")
    f.add_argument("--mode", default="auto", choices=["auto", "native", "generic"], help="attach mode")
    f.add_argument("--seconds", type=_positive(float), help="run this long (default: until Ctrl-C)")
    f.add_argument("--json", action="store_true", help="print the final counters as JSON")
    f.set_defaults(func=_cmd_filter)
