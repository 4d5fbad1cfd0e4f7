"""Processes, threads, descriptors and waiting, for the tests.

Nothing here measures time: deadlines only bound how long a broken library
can make a test wait.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import burstio
from burstio._caps import ENV_DISABLE

from .paths import ROOT


def subprocess_env(**extra: str) -> dict:
    """The environment for a Python subprocess that imports the same burstio
    as these tests (installed or in place), with nothing forced off, plus
    ``extra``."""
    env = dict(os.environ)
    here = str(Path(burstio.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop(ENV_DISABLE, None)
    env.update(extra)
    return env


@contextlib.contextmanager
def rescue(addr, after: float = 15.0, count: int = 1100):
    """A separate process that floods ``addr`` after ``after`` seconds, so a
    receive that wrongly keeps blocking ends (and its test fails) instead of
    hanging the suite. A process, not a thread: it needs no GIL."""
    code = ("import socket,sys,time\n"
            "time.sleep(float(sys.argv[3]))\n"
            "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(int(sys.argv[4])): s.sendto(b'rescue', (sys.argv[1], int(sys.argv[2])))\n")
    p = subprocess.Popen([sys.executable, "-I", "-S", "-c", code, addr[0], str(addr[1]), str(after), str(count)])
    try:
        yield
    finally:
        p.kill()
        p.wait()


def open_fds() -> set[int]:
    """This process's open descriptors (not counting the one listing them)."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            continue
        out.add(int(name))
    return out


def wait_for(pred, limit: float = 10.0, step: float = 0.002) -> bool:
    """Poll ``pred`` until true or ``limit`` seconds pass."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Helper(threading.Thread):
    """A thread running ``fn``; SIGALRM is blocked in it so that process
    signals land on the main thread. Re-raises its exception on join()."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.error: BaseException | None = None

    def run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            self.fn()
        except BaseException as e:  # noqa: BLE001 (handed to the test, which re-raises it)
            self.error = e

    def join(self, timeout: float | None = 10.0) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def run_without_caps(caps: list[str], code: str, *, memlock: int | None = None,
                     timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a child that lacks ``caps`` (capsh --drop),
    with RLIMIT_MEMLOCK set to ``memlock`` bytes if given."""
    capsh = shutil.which("capsh")
    if capsh is None:
        pytest.skip("capsh (Debian: libcap2-bin) is needed to drop capabilities in a child")
    argv = [capsh, f"--drop={','.join(caps)}", "--", "-c", 'exec "$0" -c "$1"', sys.executable, code]
    if memlock is not None:
        argv = ["prlimit", f"--memlock={memlock}:{memlock}", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=timeout,
                          check=False)
