"""The `burstio` command: help, argument errors, and one short bench smoke run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import burstio
from burstio import bench
from burstio._cli import _napi_settings, build_parser, main
from support.paths import ROOT
from support.proc import subprocess_env

SCENARIOS = ("rx-many-flow", "rx-gro", "tx-many", "tx-gso", "latency", "rx-many-sockets", "tx-redundant",
             "tx-zerocopy", "latency-lab", "pipes", "dns", "quic", "pacing", "soak")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burstio", *args], capture_output=True, text=True,
                          env=subprocess_env(), cwd=ROOT, timeout=timeout)


def test_help():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: burstio ")
    for command in ("caps", "bench", "serve", "lab", "doctor", "fuzz"):
        assert command in r.stdout


def test_version():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"burstio {burstio.__version__}"


def test_bench_help_lists_scenarios():
    assert tuple(bench.SCENARIOS) == SCENARIOS
    r = run("bench", "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # argparse wraps lines
    assert "Scenarios: " + ", ".join(SCENARIOS) in text
    for option in ("--seconds", "--json", "--plot", "--quiet"):
        assert option in r.stdout


def test_serve_help():
    r = run("serve", "sockperf", "--help")
    assert r.returncode == 0, r.stderr
    for option in ("--port", "--host", "--batch", "--backend", "--quiet"):
        assert option in r.stdout


def test_unknown_scenario_exits_2():
    r = run("bench", "warp-drive", "--seconds", "0.1")
    assert r.returncode == 2
    assert r.stderr.strip() == ("burstio bench: unknown scenario warp-drive; choose from " + ", ".join(SCENARIOS))
    assert r.stdout == ""


def test_unknown_scenario_in_process(capsys):
    assert main(["bench", "tx-gso", "nope"]) == 2
    assert "unknown scenario nope" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["bench", "--seconds", "0"], ["bench", "--seconds", "-1"],
                                  ["bench", "--batch", "0"], ["serve"], ["serve", "sockperf", "--backend", "fast"]])
def test_argument_errors_exit_2(argv):
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(argv)
    assert ei.value.code == 2


def test_bench_smoke_json():
    r = run("bench", "tx-gso", "--seconds", "0.3", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["scenario"] == "tx-gso"
    assert set(d["variants"]) >= {"stdlib", "burstio-gso"}
    # perf counts every variant's syscalls; without it (not root) the stdlib loop's count and
    # burstio's socket counter stand in, and the other variants have none
    perf = d["syscall_source"].startswith("perf")
    for name, v in d["variants"].items():
        counted = ("syscalls_per_datagram",) if perf or name in ("stdlib", "burstio-gso") else ()
        for key in ("datagrams_per_s", "ns_per_datagram", *counted, "cpu_s"):
            assert isinstance(v[key], (int, float)) and not isinstance(v[key], bool), (name, key)
            assert v[key] > 0, (name, key)


def test_unknown_capability_in_env_is_a_clear_error():
    r = subprocess.run([sys.executable, "-m", "burstio", "caps"], capture_output=True, text=True,
                       env=subprocess_env(BURSTIO_DISABLE="udp_segment,warp"), cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("burstio: BURSTIO_DISABLE names unknown capabilities ['warp']; known: recvmmsg")
    assert "Traceback" not in r.stderr


def test_serve_napi_settings_argument(capsys):
    assert _napi_settings("defer_hard_irqs=2,gro_flush_timeout=20000") == {"defer_hard_irqs": 2,
                                                                            "gro_flush_timeout": 20000}
    with pytest.raises(SystemExit):
        main(["serve", "sockperf", "--napi", "defer_hard_irqs=x"])
    err = capsys.readouterr().err
    assert "expected K=V with K one of defer_hard_irqs, gro_flush_timeout, irq_suspend_timeout" in err
    assert "'defer_hard_irqs=x'" in err
