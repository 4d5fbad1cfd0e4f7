"""What the application benches (``dns``, ``quic``) share: server processes
pinned to a CPU, their CPU time, free ports."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any


def free_port() -> int:
    """A UDP port on 127.0.0.1 that nothing holds right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def favour(pid: int, nice: int = -20) -> bool:
    """Give process ``pid`` (started with ``start_new_session=True``) the CPU
    share of niceness ``nice``, against other sessions too: with autogroup
    scheduling a process's own niceness counts only inside its session, so a
    compile in another session would take half its CPU anyway; the
    session's autogroup gets ``nice`` as well (/proc/PID/autogroup). True
    when both were set."""
    ok = True
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError:
        ok = False
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:  # no autogroup scheduling in this kernel, or the process is gone
        ok = False
    return ok


def client_and_server_cpus() -> tuple[str, str]:
    """Two CPUs of this process's set (the same one twice on a single CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    return str(cpus[0]), str(cpus[-1])


def stop(procs: Iterable[subprocess.Popen[Any]]) -> None:
    """SIGTERM each process, then SIGKILL what has not exited after 10 s."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def finish(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """End a worker that serves commands on its stdin: close its stdin (its
    end of input), then SIGKILL it if it has not exited after ``timeout`` s."""
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_answering(port: int, proc: subprocess.Popen[Any], probe: bytes, answered: Callable[[bytes], bool],
                   what: str, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    """Send ``probe`` to a UDP server until ``answered(reply)`` is true;
    RuntimeError naming ``what`` when it exits or stays silent."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = proc.stderr.read()[-300:] if proc.stderr else ""
                raise RuntimeError(f"{what} exited with {proc.returncode} before answering {tail}".rstrip())
            s.sendto(probe, (host, port))
            try:
                if answered(s.recv(512)):
                    return
            except TimeoutError:
                continue
    raise RuntimeError(f"no answer from {what} on port {port} after {timeout:.0f}s")
