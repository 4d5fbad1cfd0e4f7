"""The `burstio` command: help, argument errors, and one short bench smoke run.

Every mistake a user can make on the command line ends the same way: exactly one line on
stderr naming what was wrong, no traceback, exit status 2 (a failure after a good start: 1).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import select
import signal
import socket
import struct
import subprocess
import sys

import pytest

import burstio
from burstio import bench
from burstio._cli import build_parser, main
from burstio._cliargs import napi_settings_arg as _napi_settings
from support.paths import ROOT
from support.proc import subprocess_env

SCENARIOS = ("rx-many-flow", "rx-gro", "tx-many", "tx-gso", "latency", "rx-many-sockets", "tx-redundant",
             "tx-zerocopy", "latency-lab", "pipes", "dns", "quic", "pacing", "soak", "xdp", "port")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burstio", *args], capture_output=True, text=True,
                          env=subprocess_env(), cwd=ROOT, timeout=timeout)


COMMANDS = ("caps", "bench", "serve", "lab", "fuzz", "doctor", "pktgen", "xdp", "switch")


def test_help():
    """`burstio --help` lists every subcommand with a one-line description."""
    r = run("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: burstio ")
    text = r.stdout.replace("\n              ", " ")  # argparse wraps long descriptions
    listed = dict(re.findall(r"^    (\w+) +(\S.*)$", text, re.MULTILINE))
    assert set(COMMANDS) <= set(listed), listed
    assert all(len(listed[c]) > 10 for c in COMMANDS)


@pytest.mark.parametrize("argv", [["serve", "sockperf"], ["serve", "dns"], ["serve", "quic"], ["bench"],
                                  ["lab"], ["fuzz"], ["doctor"], ["caps"]])
def test_every_option_has_help_and_defaults_are_shown(argv):
    if argv == ["serve", "quic"] and importlib.util.find_spec("aioquic") is None:
        pytest.skip("aioquic is not installed")
    parser = build_parser()
    for name in argv:
        parser = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._actions[-1]))
                      ).choices[name]
    for action in parser._actions:
        assert action.help, (argv, action.option_strings or action.dest)
    r = run(*argv, "--help")
    assert r.returncode == 0, r.stderr
    defaulted = [a for a in parser._actions if a.option_strings and a.default not in (None, False, "==SUPPRESS==")]
    for action in defaulted:
        assert f"(default: {action.default})" in " ".join(r.stdout.split()), (argv, action.dest)


def test_serve_lists_its_servers():
    r = run("serve", "--help")
    assert r.returncode == 0, r.stderr
    for server in ("sockperf", "dns", "quic"):
        assert re.search(rf"^    {server} +\S", r.stdout, re.MULTILINE), server


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
    # perf counts every variant's syscalls; without it (not root) burstio's socket counters
    # stand in for burstio's variants, and the others have none (n/a)
    perf = d["syscall_source"].startswith("perf")
    for name, v in d["variants"].items():
        counted = ("syscalls_per_datagram",) if perf or name.startswith("burstio") else ()
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
    """--napi of `burstio serve sockperf`: K=V pairs, the keys named when wrong."""
    assert _napi_settings("defer_hard_irqs=2,gro_flush_timeout=20000") == {"defer_hard_irqs": 2,
                                                                            "gro_flush_timeout": 20000}
    with pytest.raises(SystemExit):
        main(["serve", "sockperf", "--napi", "defer_hard_irqs=x"])
    err = capsys.readouterr().err
    assert "expected K=V with K one of defer_hard_irqs, gro_flush_timeout, irq_suspend_timeout" in err
    assert "'defer_hard_irqs=x'" in err


# ---- mistakes: one line on stderr, no traceback, exit status 2 ------------------------------------


def one_line_error(r: subprocess.CompletedProcess, status: int = 2) -> str:
    """The one line a failed command printed on stderr (and that it printed nothing else)."""
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


MISTAKES = [
    ([], "burstio: the following arguments are required: COMMAND"),
    (["frobnicate"], "burstio: argument COMMAND: invalid choice: 'frobnicate'"),
    (["serve"], "burstio serve: the following arguments are required: SERVER"),
    (["serve", "sockperf", "--port", "99999"],
     "burstio serve sockperf: argument --port: must be between 0 and 65535, got 99999"),
    (["serve", "dns", "--port", "-1"], "burstio serve dns: argument --port: must be between 0 and 65535, got -1"),
    (["serve", "quic", "--port", "http"], "burstio serve quic: argument --port: must be an integer, got 'http'"),
    (["serve", "dns", "--host", "no-such-host.invalid"],
     "burstio serve dns: argument --host: 'no-such-host.invalid' is neither an IP address nor a name that resolves"),
    (["serve", "sockperf", "--batch", "0"], "burstio serve sockperf: argument --batch: must be between 1 and 1024"),
    (["serve", "sockperf", "--busy-poll-budget", "70000"],
     "burstio serve sockperf: argument --busy-poll-budget: must be between 1 and 65535, got 70000"),
    (["serve", "sockperf", "--backend", "fast"], "burstio serve sockperf: argument --backend: invalid choice: 'fast'"),
    (["serve", "sockperf", "--busy-poll-mechanism", "spin"],
     "burstio serve sockperf: argument --busy-poll-mechanism: invalid choice: 'spin'"),
    (["serve", "dns", "--workers", "0"], "burstio serve dns: argument --workers: must be between 1 and 1024, got 0"),
    (["serve", "dns", "--host", "192.0.2.7"],
     "burstio serve dns: cannot bind UDP 192.0.2.7:5353: 192.0.2.7 is not an address of this machine (EADDRNOTAVAIL)"),
    (["serve", "quic", "--cert", "/no/such/cert.pem", "--key", "/no/such/key.pem"],
     "burstio serve quic: no such file: /no/such/cert.pem"),
    (["bench", "tx-gso", "--plot", "/no/such/dir/x.png"],
     "burstio bench: argument --plot: cannot write /no/such/dir/x.png: directory /no/such/dir does not exist"),
    (["bench", "tx-gso", "--plot", "/"], "burstio bench: argument --plot: / is a directory"),
    (["bench", "--seconds", "0"], "burstio bench: argument --seconds: must be > 0 and <= 86400 seconds, got 0"),
    (["bench", "--seconds", "nan"], "burstio bench: argument --seconds: must be > 0 and <= 86400 seconds, got nan"),
    (["bench", "--size", "70000"], "burstio bench: argument --size: must be between 1 and 1472, got 70000"),
    (["bench", "--queue", "x"], "burstio bench: argument --queue: must be an integer, got 'x'"),
    (["bench", "tx-gso", "--cpu", "4095"], "burstio bench: --cpu 4095: this process may run only on CPUs"),
    (["bench", "soak", "--paths", "mmsg,teleport"], "burstio bench: unknown soak path teleport; choose from"),
    (["lab", "up", "--name", "Bad-Name"],
     "burstio lab: argument --name: must be 1-10 lowercase letters/digits starting with a letter, got 'Bad-Name'"),
    (["lab", "up", "--queues", "65"], "burstio lab: argument --queues: must be between 1 and 64, got 65"),
    (["lab", "status", "--all"], "burstio lab: --all goes with `lab down` only"),
    (["lab", "sideways"], "burstio lab: argument action: invalid choice: 'sideways'"),
    (["doctor", "--dev", "nosuchdev0"], "burstio doctor: --dev nosuchdev0: no network device of that name here"),
    (["fuzz", "nope"], "burstio fuzz: unknown target nope; choose from"),
    (["fuzz", "--inputs", "0"], "burstio fuzz: argument --inputs: must be between 1 and 1000000000000, got 0"),
]


@pytest.mark.parametrize(("argv", "expected"), MISTAKES, ids=[" ".join(a) or "(none)" for a, _ in MISTAKES])
def test_a_mistake_is_one_line_and_status_2(argv, expected):
    if "quic" in argv and importlib.util.find_spec("aioquic") is None:
        pytest.skip("aioquic is not installed")
    line = one_line_error(run(*argv, timeout=60))
    assert line.startswith(expected), line


def test_plot_path_checked_before_the_bench_runs(tmp_path):
    """An unwritable --plot stops `burstio bench` before any scenario runs (no output at all)."""
    import os

    if os.geteuid() == 0:
        target = "/sys/burstio-plot.png"  # root may write anywhere, but sysfs makes no new files
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "x.png")
    r = run("bench", "tx-gso", "--seconds", "30", "--plot", target)
    assert one_line_error(r) == (f"burstio bench: argument --plot: cannot write {target}: permission denied "
                                 "(see burstio bench --help)")
    assert r.stdout == ""


def test_plot_check_leaves_no_file(tmp_path):
    """The early check of --plot leaves nothing behind (the bench makes the file at the end)."""
    from burstio._cliargs import writable_file_arg

    target = tmp_path / "plot.png"
    assert writable_file_arg(str(target)) == str(target)
    assert not target.exists()


def apps_main(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=subprocess_env(), cwd=ROOT, timeout=timeout)


@contextlib.contextmanager
def taken_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.mark.parametrize("command", [["burstio", "serve", "sockperf"], ["burstio", "serve", "dns"],
                                     ["burstio", "serve", "quic"], ["burstio.apps.dns"],
                                     ["burstio.apps.quic", "serve"], ["burstio", "serve", "dns", "--workers", "2"]],
                         ids=" ".join)
def test_port_in_use_is_one_line_naming_the_address(command):
    if "quic" in " ".join(command) and importlib.util.find_spec("aioquic") is None:
        pytest.skip("aioquic is not installed")
    with taken_udp_port() as port:
        r = apps_main(*command, "--host", "127.0.0.1", "--port", str(port))
    prog = {"burstio": "burstio " + " ".join(command[1:3]), "burstio.apps.dns": "python -m burstio.apps.dns",
            "burstio.apps.quic": "python -m burstio.apps.quic"}[command[0]]
    assert one_line_error(r) == (f"{prog}: UDP 127.0.0.1:{port} is already in use (EADDRINUSE): choose another "
                                 "--port, or stop what is bound there")


def test_apps_mains_report_mistakes_in_one_line():
    line = one_line_error(apps_main("burstio.apps.dns", "--port", "65536"))
    assert line.startswith("python -m burstio.apps.dns: argument --port: must be between 0 and 65535, got 65536")
    if importlib.util.find_spec("aioquic") is None:
        return
    line = one_line_error(apps_main("burstio.apps.quic", "get", "https://127.0.0.1:99999/bytes/1"))
    assert line.startswith("python -m burstio.apps.quic get: argument url: bad port in "
                           "'https://127.0.0.1:99999/bytes/1' (0..65535)")
    line = one_line_error(apps_main("burstio.apps.quic", "get", "ftp://127.0.0.1/x"))
    assert line.startswith("python -m burstio.apps.quic get: argument url: expected https://HOST[:PORT]/PATH")


# ---- servers: started, answering, stopped; spread over workers ---------------------------------


def start(*argv: str) -> tuple[subprocess.Popen, str, int]:
    """A `burstio serve ...` process and the address its first line names."""
    p = subprocess.Popen([sys.executable, "-m", "burstio", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=subprocess_env(), cwd=ROOT)
    ready, _, _ = select.select([p.stdout], [], [], 60)
    line = p.stdout.readline() if ready else ""
    m = re.search(r" on (\S+):(\d+)", line)
    if not m:
        p.kill()
        raise AssertionError(f"no start line: {line!r} {p.communicate()}")
    return p, m.group(1), int(m.group(2))


def stop(p: subprocess.Popen) -> tuple[str, str]:
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, (p.returncode, out, err)
    return out, err


def worker_counts(out: str, workers: int) -> dict[int, int]:
    """What each worker said it served, from its closing line."""
    counts = {int(i): int(n) for i, n in re.findall(r"^worker (\d+) \(pid \d+\): (?:served|answered) (\d+)",
                                                     out, re.MULTILINE)}
    assert sorted(counts) == list(range(workers)), out
    return counts


def sockperf_ping(addr: tuple[str, int], clients: int) -> None:
    """One sockperf pong request from each of `clients` sockets (so, flows), each answered."""
    for seq in range(clients):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(10)
            c.sendto(struct.pack("!QHI", seq, 1 | 2, 14), addr)
            reply = c.recv(64)
            assert struct.unpack("!QHI", reply) == (seq, 2, 14)


def dns_query(addr: tuple[str, int], clients: int) -> None:
    import dns.message
    import dns.query

    for _ in range(clients):  # dnspython takes a new source port per query
        answer = dns.query.udp(dns.message.make_query("example.com", "A"), addr[0], port=addr[1], timeout=10)
        assert [rr.to_text() for rrset in answer.answer for rr in rrset] == ["192.0.2.1"]


def quic_get(addr: tuple[str, int], clients: int) -> None:
    import asyncio

    from burstio.apps.quic import connect_h3

    async def main() -> None:
        for _ in range(clients):  # each connection from a new source port
            async with asyncio.timeout(20), connect_h3(addr[0], addr[1]) as client:
                assert await client.get(f"{addr[0]}:{addr[1]}", "/bytes/1000") == (200, 1000)

    asyncio.run(main())


CLIENTS = {"sockperf": sockperf_ping, "dns": dns_query, "quic": quic_get}


@pytest.mark.parametrize("server", ["sockperf", "dns", "quic"])
def test_serve_answers_and_stops(server):
    if server == "quic" and importlib.util.find_spec("aioquic") is None:
        pytest.skip("aioquic is not installed")
    p, host, port = start("serve", server, "--host", "127.0.0.1", "--port", "0")
    try:
        CLIENTS[server]((host, port), 2)
    finally:
        out, err = stop(p)
    assert "Traceback" not in err
    assert re.search(r"^(served|answered) [1-9]", out, re.MULTILINE), out


@pytest.mark.parametrize("server", ["sockperf", "dns", "quic"])
def test_workers_all_answer(server):
    """`--workers 2`: two processes on one port (SO_REUSEPORT); flows from many source ports
    are spread by the kernel's hash, and each worker answers some (each says so on exit)."""
    if server == "quic" and importlib.util.find_spec("aioquic") is None:
        pytest.skip("aioquic is not installed")
    p, host, port = start("serve", server, "--host", "127.0.0.1", "--port", "0", "--workers", "2")
    try:
        CLIENTS[server]((host, port), 24)  # all to one worker: 2**-23
    finally:
        out, err = stop(p)
    assert "Traceback" not in err, err
    counts = worker_counts(out, 2)
    assert all(n > 0 for n in counts.values()), out
    assert sum(counts.values()) >= 24


def test_quic_get_of_a_dead_port_fails_in_one_line():
    """No server: `get` gives up after its connect timeout (default 5 s) with one line, status 1."""
    if importlib.util.find_spec("aioquic") is None:
        pytest.skip("aioquic is not installed")
    with taken_udp_port() as port:  # bound, never answering
        r = apps_main("burstio.apps.quic", "get", f"https://127.0.0.1:{port}/bytes/10", timeout=40)
    assert one_line_error(r, 1) == (f"python -m burstio.apps.quic: no answer from 127.0.0.1:{port} within 5 s "
                                    "(is an HTTP/3 server there? see --connect-timeout)")


def test_quic_get_of_an_http_error_exits_1():
    if importlib.util.find_spec("aioquic") is None:
        pytest.skip("aioquic is not installed")
    p, host, port = start("serve", "quic", "--host", "127.0.0.1", "--port", "0")
    try:
        r = apps_main("burstio.apps.quic", "get", f"https://{host}:{port}/no/such/thing", "--connect-timeout", "20")
        ok = apps_main("burstio.apps.quic", "get", f"https://{host}:{port}/bytes/5000", "--connect-timeout", "20")
    finally:
        stop(p)
    assert one_line_error(r, 1) == f"python -m burstio.apps.quic: HTTP 404 for https://{host}:{port}/no/such/thing"
    assert r.stdout.startswith("404 0 bytes")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("200 5000 bytes")


def test_caps_json_and_text():
    r = run("caps", "--json")
    assert r.returncode == 0, r.stderr
    caps = json.loads(r.stdout)["capabilities"]
    text = run("caps")
    assert text.returncode == 0
    for name, c in caps.items():  # every probe, with what it saw
        state = "yes" if c["available"] else ("off" if c["forced_off"] else "no")
        assert re.search(rf"^{name} +{state} +{re.escape(c['detail'])}$", text.stdout, re.MULTILINE), name


def test_lab_status_of_no_lab_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "burstio", "lab", "status", "--name", "nolabhere"], capture_output=True,
                       text=True, env=subprocess_env(BURSTIO_LAB_STATE=str(tmp_path)), cwd=ROOT, timeout=60)
    assert one_line_error(r, 1).startswith("burstio lab: no record of a lab named 'nolabhere'")





def test_the_parser_imports_no_app():
    """Building the `burstio` parser imports no app, no burstio.aio and no aioquic (a bench forks
    processes from it, and counts what they open), and the choices it declares are the apps' own."""
    code = ("import sys; from burstio._cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('burstio.apps', 'burstio.aio', 'aioquic'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    from burstio import _cliargs
    from burstio.apps import dns, sockperf

    assert _cliargs.SOCKPERF_MODES == sockperf.MODES and _cliargs.SOCKPERF_SUSPEND_NAPI == sockperf.SUSPEND_NAPI
    from burstio._busy_policy import SOCKET_MECHANISMS

    assert _cliargs.BUSY_POLL_MECHANISMS == SOCKET_MECHANISMS
    assert dns.TRANSPORTS == _cliargs.DNS_TRANSPORTS
    if importlib.util.find_spec("aioquic") is not None:
        from burstio.apps import quic
        assert quic.TRANSPORTS == _cliargs.QUIC_TRANSPORTS


@pytest.mark.parametrize("args", [["caps"], ["caps", "--json"]])
def test_a_reader_that_went_away_ends_the_command_quietly(args):
    """`burstio caps | head`: the pipe's reader is gone before anything is written (its end is
    closed before the command starts), so every write fails with EPIPE; the command stops with
    status 141 (128 + SIGPIPE, as a shell reports it) and no traceback."""
    import os

    rd, wr = os.pipe()
    os.close(rd)
    try:
        r = subprocess.run([sys.executable, "-m", "burstio", *args], stdout=wr, stderr=subprocess.PIPE, text=True,
                           env=subprocess_env(), cwd=ROOT, timeout=120)
    finally:
        os.close(wr)
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr
    assert r.returncode == 128 + signal.SIGPIPE, r.stderr
