"""``tx-zerocopy``: 64 KiB UDP GSO sends by plain copy, MSG_ZEROCOPY and
io_uring SEND_ZC, into a transmit sink where the kernel does not copy.

The sink is an ``ifb`` device in a network namespace the bench makes for
itself (``burstio-zc-<pid>``): ifb is NOARP and drops what it is given to
transmit, so a zero-copy send there is really not copied, and no receiver's
cost is mixed in. The sends are timed in a worker process inside the
namespace (``burstio.bench.workers.zerocopy``), which reports its own CPU time; the
variants alternate round by round. The loopback part sends to a local
receiver, where the kernel must copy: there the adaptive mode sees
"copied" notifications and switches zero copy off.

Needs root and ``ip`` for the sink part (skipped, saying why, otherwise).
The namespace is deleted whatever happens, ^C included.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..._caps import Capabilities, capabilities
from ..common import Options, rounds
from ..report import Progress, ScenarioResult, Target, Variant
from ..workers import zerocopy as zcworker

SINK_VARIANTS = ["copy", "msg-zerocopy", "uring-send-zc"]
LOOPBACK_VARIANTS = ["copy-loopback", "msg-zerocopy-loopback", "uring-send-zc-loopback"]
SINK_PREFIX = "10.77.0.1/24"  # ifb0's address; the worker sends to zcworker.SINK_ADDR


# ---- the namespace ------------------------------------------------------------

def sink_unavailable() -> str | None:
    """Why the ifb sink cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if shutil.which("ip") is None:
        return "needs the ip command (Debian: iproute2)"
    return None


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, check=False, text=True, start_new_session=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _delete_namespace(ns: str) -> None:
    """Delete ns with SIGINT held off (a ^C must not leave it behind); the
    ip process runs in its own session, out of reach of the terminal's ^C."""
    main = sys.platform == "linux" and hasattr(signal, "pthread_sigmask")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if main else None
    try:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, start_new_session=True)
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def ifb_sink_namespace(name: str | None = None) -> Iterator[str]:
    """A network namespace whose only route leads to ifb0, a transmit sink;
    yields its name and deletes it (and with it ifb0) on the way out."""
    ns = name or f"burstio-zc-{os.getpid()}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "add", "ifb0", "type", "ifb")
        _ip("-n", ns, "addr", "add", SINK_PREFIX, "dev", "ifb0")
        _ip("-n", ns, "link", "set", "ifb0", "up")
        yield ns
    finally:
        _delete_namespace(ns)


# ---- the worker ---------------------------------------------------------------

def worker_env() -> dict[str, str]:
    """The environment for a worker: it imports this same burstio."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Worker:
    """A zcworker process (``--serve``), in namespace ``ns`` or here."""

    def __init__(self, ns: str | None, cpu: int | None):
        # -c, not -m: the package already imports zcworker (for its constants)
        cmd = [sys.executable, "-c", ("import sys; from burstio.bench.workers.zerocopy import main; "
                                      "sys.exit(main(sys.argv[1:]))"), "--serve"]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        if ns is not None:
            cmd = ["ip", "netns", "exec", ns, *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=worker_env(), start_new_session=True)

    def run(self, variant: str, seconds: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{variant} {seconds}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"zcworker exited (status {self.proc.wait()}) running {variant}")
        result: dict[str, Any] = json.loads(line)  # one JSON object per run
        return result

    def close(self) -> None:
        """Ask the worker to finish (it ends after the run in progress)."""
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- the scenario ---------------------------------------------------------------

def _available(caps: Capabilities) -> dict[str, str]:
    """variant base name -> why it cannot run here (absent: it can)."""
    out = {}
    if not caps.udp_segment:
        out["*"] = f"UDP GSO unavailable: {caps['udp_segment'].detail}"
    if not caps.so_zerocopy:
        out["msg-zerocopy"] = f"MSG_ZEROCOPY unavailable: {caps['so_zerocopy'].detail}"
    if not caps.io_uring_send_zc:
        out["uring-send-zc"] = f"io_uring SEND_ZC unavailable: {caps['io_uring_send_zc'].detail}"
    return out


def _record(res: ScenarioResult, totals: dict[str, Any], out: dict[str, Any]) -> None:
    name = out["variant"]
    if "error" in out:
        if name not in totals["errors"]:
            totals["errors"].add(name)
            res.notes.append(f"{name}: {out['error']}")
        return
    res.variants[name].add(out["datagrams"], out["seconds"], out["cpu_s"])
    t = totals.setdefault(name, {"bytes": 0, "syscalls": 0, "runs_switched_off": 0, "counters": {}})
    t["bytes"] += out["bytes"]
    t["syscalls"] += out["syscalls"]
    t["runs_switched_off"] += bool(out["counters"]["zerocopy_disabled"])
    for k, v in out["counters"].items():
        t["counters"][k] = t["counters"].get(k, 0) + v
    t["describe"] = out["describe"]


def _finish(res: ScenarioResult, totals: dict[str, Any]) -> None:
    """Per-variant GB/s, CPU s per GB and the kernel's notifications."""
    for name, v in res.variants.items():
        t = totals.get(name)
        if not t or not v.seconds or not t["bytes"]:
            continue
        c = t["counters"]
        gb = t["bytes"] / 1e9
        v.syscalls, v.syscall_datagrams = t["syscalls"], v.datagrams
        v.extra.update(gb_per_s=gb / v.seconds, cpu_s_per_gb=v.cpu_s / gb, bytes=t["bytes"],
                       zerocopy_sends=c["zerocopy_sends"], copy_sends=c["copy_sends"],
                       notifications=c["notifications"], copied_notifications=c["copied_notifications"],
                       zerocopy_disabled=t["runs_switched_off"] / v.rounds, errors=c["errors"],
                       describe=t["describe"])
        off = f", zero copy switched off in {t['runs_switched_off']}/{v.rounds} runs" \
            if t["runs_switched_off"] else ""
        res.notes.append(f"{name}: {gb / v.seconds:.2f} GB/s, {v.cpu_s / gb:.4f} CPU s/GB, "
                         f"{c['copied_notifications']}/{c['notifications']} notifications said copied; "
                         f"{c['zerocopy_sends']} zero-copy + {c['copy_sends']} copy sends{off}")


def _run_rounds(res: ScenarioResult, opts: Options, progress: Progress, workers: dict[str, Worker],
                names: list[str], totals: dict[str, Any]) -> None:
    per_run = min(0.5, max(0.05, opts.seconds / (len(names) * max(1, opts.min_rounds))))
    for _r, order in rounds(opts, names, progress):
        for name in order:
            progress.show(name)
            worker = workers["loopback" if name.endswith("-loopback") else "sink"]
            _record(res, totals, worker.run(name, per_run))


def tx_zerocopy(opts: Options, progress: Progress) -> ScenarioResult:
    caps = capabilities()
    missing = _available(caps)
    no_sink = sink_unavailable()
    names = [n for n in (SINK_VARIANTS if not no_sink else []) + LOOPBACK_VARIANTS
             if "*" not in missing and n.removesuffix("-loopback") not in missing]
    res = ScenarioResult(
        "tx-zerocopy",
        {"send_bytes": zcworker.SEND_BYTES, "segment_size": zcworker.SEGMENT,
         "segments_per_send": zcworker.SEGMENTS, "buffers": zcworker.BUFFERS,
         "sink": "ifb in a netns" if not no_sink else "none"},
        {n: Variant(n) for n in names},
        targets=[Target("uring-send-zc", "cpu_s_per_gb", "copy", 1.0, False, evidence="zerocopy_sends"),
                 Target("uring-send-zc", "copied_notifications", None, 0, False, evidence="notifications"),
                 Target("msg-zerocopy", "copied_notifications", None, 0, False, evidence="notifications"),
                 Target("uring-send-zc-loopback", "zerocopy_disabled", None, 1, True, evidence="notifications")],
        syscall_source="the sender's own count (C: sendmsg, io_uring_enter, error-queue reads, waits)",
        baselines=("copy", "copy-loopback"))
    if no_sink:
        res.notes.append(f"ifb sink part skipped: {no_sink}")
    res.notes.extend(f"{k}: skipped, {why}" for k, why in missing.items())
    if not names:
        res.skipped = "; ".join(missing.values()) or no_sink
        return res
    totals: dict[str, Any] = {"errors": set()}
    with contextlib.ExitStack() as stack:
        ns = None if no_sink else stack.enter_context(ifb_sink_namespace())
        workers = {"loopback": Worker(None, opts.cpu)}
        stack.callback(workers["loopback"].close)
        if ns is not None:
            workers["sink"] = Worker(ns, opts.cpu)
            stack.callback(workers["sink"].close)  # runs before the namespace goes
        _run_rounds(res, opts, progress, workers, names, totals)
    _finish(res, totals)
    return res
