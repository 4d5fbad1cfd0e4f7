"""Exact syscall counts from the kernel's raw_syscalls:sys_enter tracepoint.

``perf stat`` attaches to a process with its events disabled; ``enable()`` and
``disable()`` (through perf's control FIFO, acknowledged) bracket exactly the
code being measured, so start-up and set-up syscalls are not counted.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time

EVENT = "raw_syscalls:sys_enter"


@functools.lru_cache(maxsize=1)
def perf_available() -> tuple[bool, str]:
    """Whether perf can count the tracepoint here, and why not if it cannot."""
    perf = shutil.which("perf")
    if perf is None:
        return False, "perf not installed (Debian: linux-perf)"
    try:
        r = subprocess.run([perf, "stat", "-x", ",", "-e", EVENT, "true"],
                           capture_output=True, check=False, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"perf failed: {e}"
    if r.returncode != 0 or EVENT not in r.stderr or "not supported" in r.stderr:
        return False, f"perf cannot count {EVENT}: {r.stderr.strip()[:200]}"
    return True, f"perf stat -e {EVENT}"


def parse_count(output: str) -> int | None:
    """The count of EVENT in ``perf stat -x ,`` output ("COUNT,UNIT,EVENT,..."
    per line), or None when perf printed none ("<not counted>",
    "<not supported>", or no line for the event)."""
    count = None
    for line in output.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] == EVENT:
            count = int(fields[0]) if fields[0].isdigit() else None
    return count


class SyscallCounter:
    """Count the syscalls process ``pid`` makes between enable() and disable().

    Use as a context manager; ``count`` holds the total after exit.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.count: int | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="burstio-perf-")
        ctl = os.path.join(self._dir.name, "ctl")
        ack = os.path.join(self._dir.name, "ack")
        os.mkfifo(ctl)
        os.mkfifo(ack)
        self._proc = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", EVENT, "-D", "-1",
             "--control", f"fifo:{ctl},{ack}", "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._ctl = self._open_when_ready(ctl, os.O_WRONLY)
        self._ack = os.open(ack, os.O_RDONLY)

    def _open_when_ready(self, path: str, flags: int) -> int:
        """Open the control FIFO once perf has it open (fail if perf died)."""
        deadline = time.monotonic() + 20
        while True:
            try:
                return os.open(path, flags | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    err = self._proc.stderr.read() if self._proc.stderr else ""
                    raise RuntimeError(f"perf stat did not start: {err.strip()[:300]}") from None
                time.sleep(0.005)

    def _command(self, cmd: str) -> None:
        os.write(self._ctl, cmd.encode() + b"\n")
        reply = b""
        while b"\n" not in reply:  # perf writes "ack\n\0"
            chunk = os.read(self._ack, 64)
            if not chunk:
                raise RuntimeError(f"perf did not acknowledge {cmd!r}")
            reply += chunk

    def enable(self) -> None:
        self._command("enable")

    def disable(self) -> None:
        # the target may have exited, and perf with it: its count is final
        with contextlib.suppress(BrokenPipeError, RuntimeError):
            self._command("disable")

    def close(self) -> int:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        _, err = self._proc.communicate(timeout=20)
        os.close(self._ctl)
        os.close(self._ack)
        self._dir.cleanup()
        self.count = parse_count(err)
        if self.count is None:
            raise RuntimeError(f"no {EVENT} count in perf output: {err.strip()[:300]}")
        return self.count

    def __enter__(self) -> SyscallCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
