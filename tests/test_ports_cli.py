"""The ``burstio switch`` command (burstio._ports_cli): named ports other
processes attach to, NIC queues in a lab (skipped with the reason without
root or AF_XDP), the final report. Every command is bounded by --seconds."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from burstio import ports
from burstio.xdp.udp import frame, mac_of
from support.paths import ROOT
from support.ports import LIMIT, receive
from support.proc import subprocess_env, wait_for
from support.xdp import flood, needs_xdp_lab

W1, W2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                            cwd=ROOT)


def burstio_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "burstio", *args]


def published(name: str) -> bool:
    """Whether a port is published as ``name`` in this thread's network
    namespace (its listening socket's abstract address)."""
    with open("/proc/thread-self/net/unix") as f:
        return any(line.split()[-1] == "@" + ports._NAME_PREFIX + name for line in f.readlines()[1:]
                   if len(line.split()) == 8)


def test_help_lists_switch():
    r = subprocess.run(burstio_cmd("--help"), capture_output=True, text=True, env=subprocess_env(), cwd=ROOT,
                       timeout=60, check=False)
    assert r.returncode == 0 and re.search(r"^\s+switch\s", r.stdout, re.MULTILINE)


def test_switch_command_bridges_ports_other_processes_attach():
    name = f"cli-test-{id(W1)}"
    proc = start(burstio_cmd("switch", "--port", f"{name}-1={W1}", "--port", f"{name}-2={W2}", "--seconds", "30",
                             "--json"))
    try:
        a, b = ports.attach(f"{name}-1", timeout=LIMIT), ports.attach(f"{name}-2", timeout=LIMIT)
        f = frame(bytes.fromhex(W2.replace(":", "")), bytes.fromhex(W1.replace(":", "")), ("10.0.0.1", 1),
                  ("10.0.0.2", 2), b"through the command")
        a.tx.put(f)
        a.tx.sync()
        assert receive(b, 1) == [f]
        a.close()
        b.close()
    finally:
        proc.send_signal(2)  # SIGINT: it reports and ends
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["counters"]["forwarded"] == 1
    assert report["routes"] == {W1: [0, True], W2: [1, True]}
    assert report["ports"] == {f"{name}-1": "closed", f"{name}-2": "closed"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(burstio_cmd(*args), capture_output=True, text=True, env=subprocess_env(), cwd=ROOT,
                          timeout=60, check=False)


@pytest.mark.parametrize(("args", "why"), [
    ((), "give at least one --nic or --port"),
    (("--nic", ":0"), "--nic ':0': a NIC queue is DEV or DEV:QUEUE (QUEUE a number)"),
    (("--nic", "lo:x"), "--nic 'lo:x': a NIC queue is DEV or DEV:QUEUE (QUEUE a number)"),
    (("--nic", "nosuchdev0"), "--nic 'nosuchdev0': no network device named 'nosuchdev0' in this network namespace"),
    (("--nic", "lo", "--nic", "lo:0"), "--nic 'lo:0': queue 0 of lo is given twice"),
    (("--port", "=02:00:00:00:00:01"), ("--port '=02:00:00:00:00:01': a port is NAME or NAME=DEST (NAME not empty, "
                                         "without '=' or ',')")),
    (("--port", "w=zz"), "--port 'w=zz': a MAC address is 6 bytes, written like 02:00:00:00:00:01, got 'zz'"),
    (("--port", "w=7"), "--port 'w=7': a MAC address is 6 bytes, written like 02:00:00:00:00:01, got '7'"),
    (("--forward-by", "key", "--port", "w=x"), "--port 'w=x': a key is an integer from 1 to 4294967294, got 'x'"),
    (("--port", "w", "--port", "w"), "--port 'w': the name w is given twice"),
    (("--port", "x", "--route", f"{W1}=y"), (f"--route '{W1}=y': DEST=NAME[,NAME...] of the ports and NIC queues "
                                             "given here (no y)")),
    (("--port", "x", "--route", "zz=x"), ("--route 'zz=x': a MAC address is 6 bytes, written like "
                                          "02:00:00:00:00:01, got 'zz'")),
    (("--port", "x", "--slots", "100"), "--slots: must be a power of two from 2 to 65536, got 100"),
    (("--port", "x", "--nic-gather", "0.5"),
     "argument --nic-gather: must be >= 0 and <= 0.01 seconds, got 0.5 (see burstio switch --help)"),
    (("--port", "x", "--rule", "proto"), ("--rule 'proto': a rule is KEY=VALUE,... with KEY proto, dport, src, dst, "
                                          "family or action; got 'proto'")),
])
def test_switch_command_refuses_bad_specs_before_making_anything(args, why):
    """One line on stderr, exit status 2, and nothing made: no switch (it
    would say "switch up"), no port published, no XDP program."""
    r = run_cli("switch", *args, "--seconds", "0")
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"burstio switch: {why}"] and r.stdout == ""


@needs_xdp_lab
@pytest.mark.parametrize("gather", ["0", "100e-6"])
def test_switch_command_feeds_a_port_from_a_nic_queue(burstio_lab, gather):
    lab = burstio_lab
    with lab.inside("b"):
        mac_b = mac_of(lab.dev["b"]).hex(":")
    proc = start(lab.command("b", burstio_cmd("switch", "--nic", f"{lab.dev['b']}:0", "--port", "w",
                                              "--route", f"{mac_b}=w", "--rule", "proto=udp,dport=9000",
                                              "--nic-gather", gather, "--seconds", "60", "--json")))
    try:
        with lab.inside("b"):  # the port's name lives in b's network namespace
            w = ports.attach("w", timeout=LIMIT)
        flood(lab, 100, dport=9000, flows=4)
        got = receive(w, 100)
        assert {int.from_bytes(f[34:36], "big") for f in got} == {1024, 1025, 1026, 1027}
        w.close()
    finally:
        proc.send_signal(2)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["counters"]["forwarded"] == 100
    assert report["ports"] == {f"{lab.dev['b']}:0": "live", "w": "closed"}


@needs_xdp_lab
def test_switch_command_leaves_nothing_after_sigterm(burstio_lab):
    """SIGTERM: the report, exit status 0, and nothing left of what it made:
    no XDP program on the device, no port published under its name."""
    lab = burstio_lab
    proc = start(lab.command("b", burstio_cmd("switch", "--nic", lab.dev["b"], "--port", "kept", "--json")))
    try:
        with lab.inside("b"):
            assert wait_for(lambda: "xdp" in subprocess.run(["ip", "link", "show", "dev", lab.dev["b"]],
                                                            capture_output=True, text=True).stdout)
            assert wait_for(lambda: published("kept"))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["ports"] == {lab.dev["b"]: "live", "kept": "live"}
    with lab.inside("b"):
        assert "xdp" not in subprocess.run(["ip", "link", "show", "dev", lab.dev["b"]], capture_output=True,
                                           text=True).stdout
        assert not published("kept")
