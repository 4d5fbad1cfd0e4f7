"""The ``burstio pktgen`` and ``burstio xdp`` commands (burstio.xdp._cli)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from burstio.xdp import Filter, Rule
from burstio.xdp.udp import mac_of
from support.paths import ROOT
from support.proc import subprocess_env
from support.xdp import needs_xdp, needs_xdp_lab


def burstio_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "burstio", *args]


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=timeout,
                          check=False)


def test_help_lists_pktgen_and_xdp():
    r = run(burstio_cmd("--help"))
    assert r.returncode == 0
    assert re.search(r"^\s+pktgen\s", r.stdout, re.MULTILINE) and re.search(r"^\s+xdp\s", r.stdout, re.MULTILINE)
    r = run(burstio_cmd("xdp", "--help"))
    assert all(a in r.stdout for a in ("show", "detach", "filter"))


@needs_xdp
def test_xdp_show_json():
    r = run(burstio_cmd("xdp", "show", "--json"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) == {"links", "devices"}


@needs_xdp_lab
def test_pktgen_command(burstio_lab):
    lab = burstio_lab
    with lab.inside("b"), Filter([Rule(proto="udp", dport=4000)]) as f:
        f.attach(lab.dev["b"])
        mac_b = mac_of(lab.dev["b"]).hex(":")
        r = run(lab.command("a", burstio_cmd("pktgen", "--dev", lab.dev["a"], "--dst", lab.addr("b"), "--dport",
                                             "4000", "--dst-mac", mac_b, "--count", "1000", "--flows", "4", "--size",
                                             "128", "--json")))
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["frames"] == 1000 and d["flows"] == 4 and d["size"] == 128 and d["method"] == "bpf"
        assert d["offered_mpps"] > 0 and d["ns_per_frame"] > 0
        assert f.counters()[0].packets == 1000
        r = run(lab.command("a", burstio_cmd("pktgen", "--dev", lab.dev["a"], "--dst", lab.addr("b"), "--dst-mac",
                                             mac_b, "--count", "10", "--rate", "1000")))
        assert r.returncode == 0 and re.search(r"offered [\d.]+ Mpps, sent [\d.]+ Mpps", r.stdout), r.stdout
        assert re.search(r"the generator's CPU: [\d.]+ ns per frame", r.stdout), r.stdout
    r = run(lab.command("a", burstio_cmd("pktgen", "--dev", lab.dev["a"], "--dst", f"{lab.subnet}.99", "--count",
                                         "1")))
    assert r.returncode == 1 and f"no neighbour entry for {lab.subnet}.99" in r.stderr
    r = run(lab.command("a", burstio_cmd("pktgen", "--dev", lab.dev["a"], "--ipv6", "--dst", lab.addr("b"))))
    assert r.returncode == 1 and "is not an IPv6 address" in r.stderr


@needs_xdp_lab
def test_filter_then_detach_commands(burstio_lab):
    lab = burstio_lab
    filt = subprocess.Popen(lab.command("b", burstio_cmd("xdp", "filter", "--dev", lab.dev["b"], "--rule",
                                                         "proto=udp,dport=4001")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=ROOT)
    try:
        first = filt.stdout.readline()
        assert first.startswith(f"filter on {lab.dev['b']} (native"), first + filt.stderr.read()
        show = run(lab.command("b", burstio_cmd("xdp", "show")))
        assert re.search(rf"{lab.dev['b']}: program \d+", show.stdout), show.stdout
        r = run(lab.command("b", burstio_cmd("xdp", "detach", "--dev", lab.dev["b"])))
        assert r.returncode == 0 and re.fullmatch(r"link \d+: detached\n", r.stdout), r.stdout + r.stderr
        show = run(lab.command("b", burstio_cmd("xdp", "show", "--json")))
        assert json.loads(show.stdout)["devices"] == []
        r = run(lab.command("b", burstio_cmd("xdp", "detach", "--dev", lab.dev["b"])))
        assert r.returncode == 1 and "no XDP BPF link on" in r.stderr
    finally:
        filt.terminate()
        filt.wait(30)


@needs_xdp_lab
def test_filter_command_counts(burstio_lab):
    lab = burstio_lab
    filt = subprocess.Popen(lab.command("b", burstio_cmd("xdp", "filter", "--dev", lab.dev["b"], "--rule",
                                                         "proto=udp,dport=4002", "--seconds", "60")),
                            stdout=subprocess.PIPE, text=True, env=subprocess_env(), cwd=ROOT)
    try:
        assert filt.stdout.readline().startswith("filter on")
        with lab.inside("b"):
            mac_b = mac_of(lab.dev["b"]).hex(":")
        r = run(lab.command("a", burstio_cmd("pktgen", "--dev", lab.dev["a"], "--dst", lab.addr("b"), "--dport",
                                             "4002", "--dst-mac", mac_b, "--count", "777")))
        assert r.returncode == 0, r.stderr
        seen = []
        for line in filt.stdout:  # counters every second until --seconds ends
            seen.append(line)
            if re.match(r"\s+rule 0 .*: 777 packets, 49728 bytes", line):
                break
        assert seen and seen[-1].strip().endswith("777 packets, 49728 bytes"), seen[-3:]
    finally:
        filt.terminate()
        filt.wait(30)


def test_filter_command_refuses_a_bad_rule():
    r = run(burstio_cmd("xdp", "filter", "--dev", "lo", "--rule", "port=1"))
    assert r.returncode == 1 and "a rule is KEY=VALUE" in r.stderr
