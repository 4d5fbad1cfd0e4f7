"""The ``burstio switch`` command (burstio._ports_cli): named ports other
processes attach to, NIC queues in a lab (skipped with the reason without
root or AF_XDP), the final report. Every command is bounded by --seconds."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from burstio import ports
from burstio.xdp.udp import frame, mac_of
from support.paths import ROOT
from support.ports import LIMIT, receive
from support.proc import subprocess_env
from support.xdp import flood, needs_xdp_lab

W1, W2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                            cwd=ROOT)


def burstio_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "burstio", *args]


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


def test_switch_command_refuses_bad_specs():
    r = subprocess.run(burstio_cmd("switch", "--seconds", "0"), capture_output=True, text=True,
                       env=subprocess_env(), cwd=ROOT, timeout=60, check=False)
    assert r.returncode == 2 and "give at least one --nic or --port" in r.stderr
    r = subprocess.run(burstio_cmd("switch", "--port", "x", "--route", f"{W1}=y", "--seconds", "0"),
                       capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=60, check=False)
    assert r.returncode == 1 and "(no y)" in r.stderr


@needs_xdp_lab
def test_switch_command_feeds_a_port_from_a_nic_queue(burstio_lab):
    lab = burstio_lab
    with lab.inside("b"):
        mac_b = mac_of(lab.dev["b"]).hex(":")
    proc = start(lab.command("b", burstio_cmd("switch", "--nic", f"{lab.dev['b']}:0", "--port", "w",
                                              "--route", f"{mac_b}=w", "--rule", "proto=udp,dport=9000",
                                              "--seconds", "60", "--json")))
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
