"""Helpers shared by the scenarios: options, CPU pinning, timed calls,
syscall counting with a fallback, and round scheduling."""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .perfcount import SyscallCounter, perf_available

__all__ = ["Options", "pinned", "timed", "rounds", "count_syscalls", "syscall_source", "measure_sends"]

if TYPE_CHECKING:
    from .report import Progress, ScenarioResult


@dataclass
class Options:
    seconds: float = 3.0  # wall-clock budget per scenario (timed rounds)
    size: int = 64  # datagram payload bytes
    batch: int = 64  # datagrams per burstio call
    queue: int = 50_000  # datagrams pre-filled per receive round
    cpu: int | None = None  # pin the measuring process here (None: last CPU)
    min_rounds: int = 3
    max_rounds: int = 200
    datagrams: int | None = None  # soak: datagrams in all (None: its default)
    paths: tuple[str, ...] = ()  # soak: the paths to run (empty: all)


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[int | None]:
    """Run the block on one CPU (the last one by default); restore after."""
    try:
        before = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        yield None
        return
    target = cpu if cpu is not None else max(before)
    os.sched_setaffinity(0, {target})
    try:
        yield target
    finally:
        os.sched_setaffinity(0, before)


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    """Run fn; return (its result, wall seconds, process CPU seconds)."""
    c0, t0 = time.process_time_ns(), time.perf_counter_ns()
    n = fn()
    t1, c1 = time.perf_counter_ns(), time.process_time_ns()
    return n, (t1 - t0) / 1e9, (c1 - c0) / 1e9


def rounds(opts: Options, names: list[str], progress: Progress) -> Iterator[tuple[int, list[str]]]:
    """Yield (round, variant order) until the time budget is spent; the
    order rotates so that no variant always runs first. ``progress`` hears
    of each round, with how many there should be and how long they need."""
    start = time.monotonic()
    r = 0
    while r < opts.max_rounds and (r < opts.min_rounds or time.monotonic() < start + opts.seconds):
        progress.round(r + 1, *expected_rounds(opts, r, time.monotonic() - start))
        k = r % len(names)
        yield r, names[k:] + names[:k]
        r += 1
    progress.rounds_over()


def expected_rounds(opts: Options, done: int, elapsed: float) -> tuple[int | None, float]:
    """(rounds in all, seconds they still need), estimated when ``done`` rounds took ``elapsed``
    seconds and another starts: rounds go on until the budget is spent, at least ``min_rounds``
    and at most ``max_rounds`` of them (in all: None before the first round ends)."""
    if done == 0 or elapsed <= 0:
        return None, opts.seconds
    per_round = elapsed / done
    total = done + math.ceil(max(0.0, opts.seconds - elapsed) / per_round)
    total = min(opts.max_rounds, max(opts.min_rounds, total, done + 1))
    return total, (total - done) * per_round


def count_syscalls(pid: int, work: Callable[[], int], start: Callable[[], None] | None = None) -> int | None:
    """Run ``start`` (if given) then ``work``, and return the syscalls ``pid``
    made meanwhile (perf tracepoint), or None if perf cannot count here: the
    work runs either way."""
    ok, _why = perf_available()
    if not ok:
        if start:
            start()
        work()
        return None
    counter = SyscallCounter(pid)
    try:
        counter.enable()
        if start:
            start()
        work()
        counter.disable()
    finally:
        count = counter.close()
    return count


OWN_COUNTER = "burstio's own counter (the syscalls its C code made; perf unavailable)"


def syscall_source() -> str:
    """How this run counts syscalls: perf's tracepoint, or why not."""
    ok, why = perf_available()
    return why if ok else f"not measured by perf ({why}): n/a unless the variant's own counter says"


def measure_sends(res: ScenarioResult, opts: Options, progress: Progress, runs: dict[str, Callable[[], int]],
                  settle: Callable[[], int],
                  own_syscalls: dict[str, Callable[[], int]] | None = None) -> None:
    """Send scenarios: alternate the variants' timed runs (each returns the
    datagrams it sent; ``settle`` drains the receivers and returns how many
    arrived, a shortfall is noted once per variant), then run each once more
    to count its syscalls with perf. Without perf, a variant with a counter
    of its own in ``own_syscalls`` (a burstio socket's) reports that count,
    labelled; the others stay unmeasured (n/a)."""
    names = list(runs)
    for _r, order in rounds(opts, names, progress):
        for name in order:
            progress.show(name)
            sent, wall, cpu = timed(runs[name])
            res.variants[name].add(sent, wall, cpu)
            got = settle()
            if got != sent and not res.variants[name].extra.get("lost"):
                res.variants[name].extra["lost"] = True
                res.notes.append(f"{name}: receivers got {got} of {sent} datagrams in a round")
    progress.show("counting syscalls")
    own = own_syscalls or {}
    for name in names:
        box: list[int] = []
        before = own[name]() if name in own else 0

        def work() -> int:
            box.append(runs[name]())  # noqa: B023 - called right here, in this iteration
            return 0

        calls = count_syscalls(os.getpid(), work)
        if calls is None and name in own:
            calls = own[name]() - before
            res.variants[name].syscalls_by = OWN_COUNTER
        settle()
        res.variants[name].syscalls = calls
        res.variants[name].syscall_datagrams = box[0]
