"""burstio.bench.cref: the C references are compiled at bench time, so they need a C compiler;
without one the bench stops with one line naming gcc (an installed wheel needs none otherwise)."""
from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys

import pytest

from burstio.bench import cref
from support.net import V4
from support.paths import ROOT
from support.proc import subprocess_env

NO_COMPILER = ("the C reference rx_recvmmsg is compiled at bench time and needs a C compiler: "
               "no cc or gcc on PATH (Debian: apt install gcc)")


def test_without_a_compiler_the_build_names_gcc(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no cc, no gcc
    cref.build.cache_clear()
    with pytest.raises(cref.BuildError) as ei:
        cref.build("rx_recvmmsg")
    assert str(ei.value) == NO_COMPILER


def test_without_a_compiler_the_bench_stops_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "burstio", "bench", "rx-many-flow", "--seconds", "0.1", "--quiet"],
                       capture_output=True, text=True, env=subprocess_env(PATH=str(tmp_path)), cwd=ROOT, timeout=120)
    assert (r.returncode, r.stderr.splitlines()) == (1, [f"burstio bench: {NO_COMPILER}"])


def test_the_reference_drains_a_socket():
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here (cc or gcc): the C reference is compiled at bench time")
    exe = cref.build("rx_recvmmsg")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind((V4, 0))
        for i in range(5):
            tx.sendto(b"%010d" % i, rx.getsockname())
        assert select.select([rx], [], [], 10)[0] == [rx]  # a deadline, not a measurement
        r = subprocess.run([str(exe), str(rx.fileno()), "4", "2048"], pass_fds=(rx.fileno(),), input="drain\n",
                           capture_output=True, text=True, timeout=60)  # one drain, then end of input
        assert r.returncode == 0, r.stderr
        drained = json.loads(r.stdout)
        rx.settimeout(10)
        left = [rx.recv(2048) for _ in range(5 - drained["datagrams"])]  # any not yet queued then
    assert 1 <= drained["datagrams"] <= 5 and drained["bytes"] == 10 * drained["datagrams"]
    assert drained["calls"] >= 2  # the last one found the socket empty
    assert all(len(d) == 10 for d in left)
    assert os.access(exe, os.X_OK)
