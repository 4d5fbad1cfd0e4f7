"""burstio.xdp.programs: Rules, and the Steer and Filter programs: matching
(run on crafted frames with BPF_PROG_RUN), counters, rules changed at run
time, attach modes, and real traffic in a lab."""
from __future__ import annotations

import socket
import struct

import pytest

import burstio
from burstio._caps import ENV_DISABLE
from burstio._kernel import XDP_DROP, XDP_PASS, XDP_REDIRECT
from burstio.xdp import MAX_RULES, Filter, Rule, Steer
from burstio.xdp.programs import rules_from
from burstio.xdp.udp import frame
from support.proc import run_without_caps
from support.xdp import flood, lab_xsk, needs_xdp, needs_xdp_lab

MACS = (b"\x02" * 6, b"\x04" * 6)


def udp4(src="10.0.0.1", dst="10.0.0.2", sport=1000, dport=53, vlan=0):
    return frame(*MACS, (src, sport), (dst, dport), b"payload", vlan=vlan)


def udp6(src="2001:db8::1", dst="2001:db8::2", sport=1000, dport=53):
    return frame(*MACS, (src, sport), (dst, dport), b"payload")


def with_proto(f, proto, at=14 + 9):
    b = bytearray(f)
    b[at] = proto
    return bytes(b)


def ipv6_with_ext(dport=53, fragment_offset=0):
    """IPv6 / fragment header / UDP."""
    f = bytearray(udp6(dport=dport))
    ip, l4 = f[14:54], f[54:]
    ip[6] = 44
    ext = struct.pack("!BBHI", 17, 0, fragment_offset << 3, 1)
    ip[4:6] = struct.pack("!H", len(l4) + 8)
    return bytes(f[:14] + ip + ext + l4)


# ---- rules -------------------------------------------------------------------------

def test_rule_checks_name_the_field():
    with pytest.raises(ValueError, match="proto must be one of 'udp', 'tcp', 'icmp', 'icmpv6' or a number, got 'sctp'"):
        Filter([Rule(proto="sctp")])
    with pytest.raises(ValueError, match="dport must be between 0 and 65535, got 70000"):
        Filter([Rule(dport=70000)])
    with pytest.raises(ValueError, match="dport high must be between 100 and 65535, got 50"):
        Filter([Rule(dport=(100, 50))])
    with pytest.raises(ValueError, match="src must be an IPv4 or IPv6 address or prefix"):
        Filter([Rule(src="10.0.0.0/33")])
    with pytest.raises(ValueError, match="disagree on the IP version"):
        Filter([Rule(src="10.0.0.0/8", dst="2001:db8::/32")])
    with pytest.raises(ValueError, match="dport applies to TCP and UDP only"):
        Filter([Rule(proto="icmp", dport=1)])
    with pytest.raises(ValueError, match="action must be 'drop' or 'pass', got 'steer'"):
        Filter([Rule(action="steer")])
    with pytest.raises(TypeError, match=r"rules\[0\] must be a Rule, got str"):
        Filter(["udp"])
    with pytest.raises(ValueError, match=f"a program holds at most {MAX_RULES} rules, got {MAX_RULES + 1}"):
        Filter([Rule()] * (MAX_RULES + 1))


def test_bad_rules_are_refused_before_the_kernel_is_asked():
    """Without the privileges to make a map, a bad rule still gets its own error: rules are
    checked before any program or map is made (a privilege error would hide the mistake)."""
    code = ("from burstio.xdp import Filter, Rule\n"
            "try:\n    Filter([Rule(dport=70000)])\nexcept ValueError as e:\n    print('ValueError:', e)\n"
            "try:\n    Filter([Rule(dport=53)])\nexcept PermissionError as e:\n    print('PermissionError')\n")
    r = run_without_caps(["cap_bpf", "cap_net_admin", "cap_sys_admin", "cap_perfmon"], code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["ValueError: dport must be between 0 and 65535, got 70000", "PermissionError"]


def test_rules_from_the_command_line():
    assert rules_from(["proto=udp,dport=53", "dport=1000-2000,src=10.0.0.0/8,action=pass"]) == [
        Rule(proto="udp", dport=53), Rule(dport=(1000, 2000), src="10.0.0.0/8", action="pass")]
    with pytest.raises(ValueError, match="a rule is KEY=VALUE"):
        rules_from(["port=53"])


# ---- matching, on crafted frames ------------------------------------------------------

CASES = [
    # rule, frame, matches
    (Rule(), udp4(), True),
    (Rule(), b"\xff" * 12 + b"\x08\x06" + bytes(28), False),  # ARP is not IP
    (Rule(proto="udp"), udp4(), True),
    (Rule(proto="tcp"), udp4(), False),
    (Rule(proto="tcp", dport=53), with_proto(udp4(), 6), True),
    (Rule(dport=53), udp4(dport=53), True),
    (Rule(dport=53), udp4(dport=54), False),
    (Rule(dport=(50, 60)), udp4(dport=60), True),
    (Rule(dport=(50, 60)), udp4(dport=61), False),
    (Rule(src="10.0.0.0/8"), udp4(src="10.200.1.1"), True),
    (Rule(src="10.0.0.0/8"), udp4(src="11.0.0.1"), False),
    (Rule(dst="10.0.0.2"), udp4(dst="10.0.0.2"), True),
    (Rule(dst="10.0.0.2"), udp4(dst="10.0.0.3"), False),
    (Rule(family=6), udp4(), False),
    (Rule(src="2001:db8::/32"), udp6(), True),
    (Rule(src="2001:db9::/32"), udp6(), False),
    (Rule(dst="2001:db8::2", dport=53), udp6(), True),
    (Rule(proto="udp", dport=53), udp4(dport=53, vlan=7), True),  # behind a VLAN tag
    (Rule(proto="udp", dport=53), ipv6_with_ext(53), True),  # behind an IPv6 fragment header
    (Rule(proto="udp", dport=53), ipv6_with_ext(53, fragment_offset=10), False),  # a later fragment: no ports
    (Rule(proto="udp"), ipv6_with_ext(53, fragment_offset=10), False),
    # rules naming nothing but the IP version: the parse stops at the IP header, with the same answers
    (Rule(), udp6(), True),
    (Rule(), udp4(vlan=7), True),
    (Rule(), ipv6_with_ext(53, fragment_offset=10), True),
    (Rule(family=4), udp4(), True),
    (Rule(family=6), udp6(), True),
    (Rule(family=4), udp6(), False),
    (Rule(), udp4()[:14 + 19], False),  # an IPv4 header cut short is not IP
    (Rule(), with_proto(udp4(), 0x44, at=14), False),  # IHL 4: not IP
    (Rule(), udp6()[:14 + 39], False),  # an IPv6 header cut short
]


@needs_xdp
@pytest.mark.parametrize("rule,data,matches", CASES)
def test_filter_matching(rule, data, matches):
    with Filter([rule]) as f:
        assert f.run(data) == (XDP_DROP if matches else XDP_PASS)
        counts = f.counters()
        assert (counts[0].packets, counts[1].packets) == ((1, 0) if matches else (0, 1))
        assert counts[0 if matches else 1].bytes == len(data)


@needs_xdp
def test_first_match_wins_and_pass_makes_an_exception():
    rules = [Rule(dport=22, action="pass"), Rule(proto="udp"), Rule()]
    with Filter(rules) as f:
        assert f.run(udp4(dport=22)) == XDP_PASS
        assert f.run(udp4(dport=23)) == XDP_DROP
        assert f.run(with_proto(udp4(), 1)) == XDP_DROP
        assert [c.packets for c in f.counters()] == [1, 1, 1, 0]


@needs_xdp
def test_steer_redirects_matches_and_passes_the_rest():
    with Steer([Rule(proto="udp", dport=9000)]) as s:
        # a match goes to the queue's socket; with none on queue 0 the kernel gets it (XDP_PASS)
        assert s.run(udp4(dport=9000)) == XDP_PASS
        assert s.run(udp4(dport=9001)) == XDP_PASS
        assert [c.packets for c in s.counters()] == [1, 1]
        assert s.ACTIONS["steer"] == XDP_REDIRECT


@needs_xdp
def test_rules_change_at_run_time_with_fresh_counters():
    with Filter([Rule(dport=53)]) as f:
        for _ in range(3):
            f.run(udp4(dport=53))
        assert f.counters()[0].packets == 3
        f.set_rules([Rule(dport=80), Rule(dport=53)])
        assert [c.packets for c in f.counters()] == [0, 0, 0]
        assert f.run(udp4(dport=53)) == XDP_DROP and f.run(udp4(dport=80)) == XDP_DROP
        assert f.run(udp4(dport=81)) == XDP_PASS
        assert [c.packets for c in f.counters()] == [1, 1, 1]
        f.set_rules([])
        assert f.run(udp4(dport=53)) == XDP_PASS
        assert [(c.rule, c.packets) for c in f.counters()] == [(None, 1)]


def test_rules_naming_only_the_ip_version_ask_for_a_shallow_parse():
    """The slot's head tells the program how deep to parse (rules.h, BIO_DEPTH_*): only what tells the IP
    version when no rule names a protocol, ports or addresses, everything otherwise."""
    def head(rules):
        return struct.unpack_from("<II", Filter._checked(rules)[1])

    family_only, everything = 1, 0
    assert head([]) == (0, family_only)
    assert head([Rule()]) == (1, family_only)
    assert head([Rule(family=6), Rule(dst="0.0.0.0/0")]) == (2, family_only)  # a /0 prefix names no address
    assert head([Rule(), Rule(dport=53)]) == (2, everything)
    assert head([Rule(proto="udp")]) == (1, everything)
    assert head([Rule(src="10.0.0.0/8")]) == (1, everything)
    assert head([Rule(dport=(0, 65535))]) == (1, family_only)  # every port: names none


@needs_xdp
def test_the_parse_depth_follows_rules_changed_at_run_time():
    arp = b"\xff" * 12 + b"\x08\x06" + bytes(28)
    with Filter([Rule(family=6)]) as f:
        assert f.run(udp6()) == XDP_DROP and f.run(udp4(dport=53)) == XDP_PASS
        f.set_rules([Rule(dport=53)])
        assert f.run(udp4(dport=53)) == XDP_DROP and f.run(udp4(dport=54)) == XDP_PASS
        f.set_rules([Rule()])
        assert f.run(udp4(dport=54)) == XDP_DROP and f.run(arp) == XDP_PASS
        assert [c.packets for c in f.counters()] == [1, 1]


# ---- in a lab ------------------------------------------------------------------------

@needs_xdp_lab
def test_filter_counts_a_known_flood_exactly(burstio_lab):
    lab = burstio_lab
    n = 20_000
    with lab.inside("b"), Filter([Rule(proto="udp", dport=9000), Rule(proto="udp", dport=9999)]) as f:
        f.attach(lab.dev["b"])
        sent = flood(lab, n, dport=9000, flows=16)
        assert sent.frames == n
        counts = f.counters()
    assert counts[0].packets == n and counts[0].bytes == n * 64
    assert counts[1].packets == 0


@needs_xdp_lab
def test_steer_passes_the_hosts_other_traffic(burstio_lab):
    """Steered frames reach the AF_XDP socket; a UDP socket on another port
    still gets its datagrams through the kernel."""
    lab = burstio_lab
    with lab.inside("b"):
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        plain.bind((lab.addr("b"), 9001))
        plain.settimeout(5)
    with lab_xsk(lab, "b", [Rule(proto="udp", dport=9000)]) as (xsk, steer):
        with lab.inside("a"):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx.sendto(b"to xsk", (lab.addr("b"), 9000))
            tx.sendto(b"to the kernel", (lab.addr("b"), 9001))
        batch = burstio.PacketBatch(8)
        assert xsk.recv_batch(batch, 5) == 1 and bytes(batch[0]).endswith(b"to xsk")
        assert plain.recv(64) == b"to the kernel"
        assert steer.counters()[0].packets == 1


@needs_xdp_lab
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_forced_attach_modes(burstio_lab, mode):
    with burstio_lab.inside("b"), Filter([Rule()]) as f:
        f.attach(burstio_lab.dev["b"], mode)
        assert f.mode == mode and f.describe()["mode_reason"] == f"mode={mode!r}"


@needs_xdp_lab
def test_auto_mode_is_native_on_a_veth_and_generic_when_native_is_disabled(burstio_lab, monkeypatch):
    lab = burstio_lab
    with lab.inside("b"), Filter([Rule()]) as f:
        f.attach(lab.dev["b"])
        assert f.mode == "native" and "basic" in f.mode_reason
    monkeypatch.setenv(ENV_DISABLE, "xdp_native")
    with lab.inside("b"), Filter([Rule()]) as f:
        f.attach(lab.dev["b"])
        assert f.mode == "generic" and f.mode_reason == "xdp_native disabled by BURSTIO_DISABLE"
        d = f.describe()
        assert d["dev"] == lab.dev["b"] and d["link_id"] == f.link.id


@needs_xdp_lab
def test_a_second_program_on_a_device_is_refused_clearly(burstio_lab):
    lab = burstio_lab
    with lab.inside("b"), Filter([Rule()]) as first, Filter([Rule()]) as second:
        first.attach(lab.dev["b"])
        with pytest.raises(OSError, match=f"{lab.dev['b']} has an XDP program attached already"):
            second.attach(lab.dev["b"], "native")
        with pytest.raises(ValueError, match=r"is attached to .* already: detach\(\) first"):
            first.attach(lab.dev["b"])
        first.detach()
        second.attach(lab.dev["b"])
        assert second.mode == "native"


def test_bpf_forced_off_is_refused(monkeypatch):
    monkeypatch.setenv(ENV_DISABLE, "bpf")
    with pytest.raises(OSError, match="XDP programs need bpf\\(\\): disabled by BURSTIO_DISABLE"):
        Filter([Rule()])
