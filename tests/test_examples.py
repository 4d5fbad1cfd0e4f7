"""Every program in examples/ runs end to end: started as a user would start it, fed by a
client, its output checked. Deadlines only bound how long a broken example can make a test
wait; nothing here measures time."""
from __future__ import annotations

import ast
import importlib.util
import re
import select
import signal
import socket
import struct
import subprocess
import sys

import pytest

from support.paths import ROOT
from support.proc import subprocess_env

EXAMPLES = ROOT / "examples"
if not EXAMPLES.is_dir():  # e.g. scripts/wheel-check.sh: tests beside an installed wheel
    pytest.skip("the repository's examples/ is not here", allow_module_level=True)


def needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (the test extra has them)")


class Example:
    """An example program running in a subprocess, and the address its first line names."""

    def __init__(self, name: str, *args: str):
        self.p = subprocess.Popen([sys.executable, str(EXAMPLES / name), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=ROOT)
        ready, _, _ = select.select([self.p.stdout], [], [], 60)
        self.first = self.p.stdout.readline() if ready else ""
        m = re.search(r" on (\S+):(\d+)", self.first)
        if not m:
            self.p.kill()
            raise AssertionError(f"{name}: no start line: {self.first!r} {self.p.communicate()}")
        self.addr = (m.group(1), int(m.group(2)))

    def finish(self, interrupt: bool = True) -> str:
        """Its output after the first line, once it has exited (after Ctrl-C, if asked)."""
        if interrupt:
            self.p.send_signal(signal.SIGINT)
        out, err = self.p.communicate(timeout=60)
        assert self.p.returncode == 0, (self.p.returncode, out, err)
        assert "Traceback" not in err, err
        return out

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.communicate()


def client() -> socket.socket:
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(10)
    return c


def test_every_example_says_how_to_run_it():
    for path in sorted(EXAMPLES.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and f"python examples/{path.name}" in doc, path.name
        assert "Run:" in doc, path.name


def echo_roundtrip(addr: tuple[str, int]) -> None:
    with client() as c:
        for i in range(20):
            c.sendto(b"ping %d" % i, addr)
        assert sorted(c.recv(64) for _ in range(20)) == sorted(b"ping %d" % i for i in range(20))


def test_echo_server():
    ex = Example("echo_server.py", "--port", "0")
    try:
        echo_roundtrip(ex.addr)
        out = ex.finish()
    finally:
        ex.kill()
    assert re.match(r"echoed 20 datagrams with \d+ receive and \d+ send calls", out), out


def test_dns_responder():
    needs("dns")
    import dns.message
    import dns.query

    ex = Example("dns_responder.py", "--port", "0")
    try:
        for name in ("example.com", "burstio.test"):
            r = dns.query.udp(dns.message.make_query(name, "A"), ex.addr[0], port=ex.addr[1], timeout=10)
            assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["192.0.2.1"]
            assert r.answer[0].name.to_text() == name + "."
        r = dns.query.udp(dns.message.make_query("example.com", "TXT"), ex.addr[0], port=ex.addr[1], timeout=10)
        assert r.answer == []
        out = ex.finish()
    finally:
        ex.kill()
    assert re.match(r"answered 3 queries in \d+ receive calls", out), out


def test_http3_download():
    needs("aioquic")
    r = subprocess.run([sys.executable, str(EXAMPLES / "http3_download.py"), "--size", "300000"], capture_output=True,
                       text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("serving HTTP/3 on 127.0.0.1:")
    m = re.match(r"status 200, 300000 bytes in \S+ s over burstio, \d+ datagrams received, sha256 (\w+)$", lines[1])
    assert m, lines
    assert lines[2] == f"expected sha256 {m.group(1)}"


def test_http3_download_from_burstio_serve_quic():
    needs("aioquic")
    server = subprocess.Popen([sys.executable, "-m", "burstio", "serve", "quic", "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=ROOT)
    try:
        ready, _, _ = select.select([server.stdout], [], [], 60)
        line = server.stdout.readline() if ready else ""
        host, port = re.search(r" on (\S+):(\d+)", line).groups()
        r = subprocess.run([sys.executable, str(EXAMPLES / "http3_download.py"), "--url",
                            f"https://{host}:{port}/bytes/5000"], capture_output=True, text=True,
                           env=subprocess_env(), cwd=ROOT, timeout=120)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("status 200, 5000 bytes in ")


def test_pipeline():
    ex = Example("pipeline.py", "--port", "0", "--workers", "2", "--count", "600")
    try:
        with client() as c:
            for i in range(600):
                c.sendto(b"%d %d" % (i, i), ex.addr)
        out = ex.finish(interrupt=False)  # it exits by itself after --count results
    finally:
        ex.kill()
    m = re.match(r"600 results; per worker \{0: (\d+), 1: (\d+)\}; sum of squares (\d+)$", out.strip())
    assert m, out
    assert int(m.group(1)) + int(m.group(2)) == 600
    assert int(m.group(3)) == sum(i * i for i in range(600))


def test_telemetry_numpy():
    needs("numpy")
    ex = Example("telemetry_numpy.py", "--port", "0", "--count", "1001")
    try:
        with client() as c:
            for i in range(1000):
                c.sendto(struct.pack("<HIf", i % 4, i, 0.5 + i % 4), ex.addr)
            c.sendto(b"not a reading", ex.addr)
        out = ex.finish(interrupt=False)
    finally:
        ex.kill()
    lines = out.splitlines()
    assert re.match(r"1001 datagrams, 1 not readings, \d+ receive calls$", lines[0]), lines
    assert lines[1] == "per sensor (count x mean): 0: 250 x 0.500, 1: 250 x 1.500, 2: 250 x 2.500, 3: 250 x 3.500"


@pytest.mark.parametrize("lib", ["trio", "anyio"])
def test_trio_anyio_echo(lib):
    needs(lib)
    ex = Example("trio_anyio_echo.py", "--lib", lib, "--port", "0", "--count", "20")
    try:
        assert ex.first.strip().endswith(f"under {lib}")
        echo_roundtrip(ex.addr)
        out = ex.finish(interrupt=False)
    finally:
        ex.kill()
    assert re.match(r"echoed 20 datagrams in \d+ receive calls$", out.strip()), out


def test_trio_echo_stops_on_ctrl_c():
    needs("trio")
    ex = Example("trio_anyio_echo.py", "--lib", "trio", "--port", "0")
    try:
        echo_roundtrip(ex.addr)
        out = ex.finish()
    finally:
        ex.kill()
    assert out.strip() == "stopped after 20 datagrams"
