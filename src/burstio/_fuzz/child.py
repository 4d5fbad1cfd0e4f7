"""The fuzzing child process: runs inputs [start, end) of one target.

    python -m burstio._fuzz.child SPEC START END SEED SHARED CRASH_DIR [SKIP,...]

Before each input it writes the input's index and bytes into the SHARED
file (mapped: a store, not a system call), so that when it dies the parent
knows which input killed it; every 1024 inputs, and at the end, it writes a
snapshot of its counts there (runner reads both). An exception outside the
target's documented set is a crash too: its first input per place in the
code is saved to CRASH_DIR (``<target>-<index>.bin`` and ``.txt`` with the
traceback), and the run goes on.
"""
from __future__ import annotations

import collections
import json
import mmap
import os
import resource
import signal
import struct
import sys
import traceback
from pathlib import Path
from typing import Any

from . import load, run_one
from .mutate import Mutator

__all__ = ["SHARED_SIZE", "INPUT_MAX", "read_current", "read_snapshot", "main"]

#: the shared file: u64 index + 1 of the input running (0: none yet), u32 its
#: length, the input; then u32 length and the JSON of the last snapshot
_CURRENT = struct.Struct("<QI4x")
INPUT_MAX = 1 << 16
_SNAPSHOT_AT = _CURRENT.size + INPUT_MAX
_SNAPSHOT_MAX = 1 << 20
SHARED_SIZE = _SNAPSHOT_AT + 4 + _SNAPSHOT_MAX
_SNAPSHOT_EVERY = 1024
_SAVED_PER_PLACE = 1


def read_current(shared: bytes) -> tuple[int, bytes] | None:
    """(index, input) of the input the child was running, or None."""
    index1, length = _CURRENT.unpack_from(shared)
    if not index1:
        return None
    return index1 - 1, bytes(shared[_CURRENT.size:_CURRENT.size + min(length, INPUT_MAX)])


def read_snapshot(shared: bytes) -> dict[str, Any] | None:
    (length,) = struct.unpack_from("<I", shared, _SNAPSHOT_AT)
    if not 0 < length <= _SNAPSHOT_MAX:
        return None
    try:
        snap: dict[str, Any] = json.loads(shared[_SNAPSHOT_AT + 4:_SNAPSHOT_AT + 4 + length])
    except ValueError:
        return None
    return snap


class _Child:
    def __init__(self, spec: str, start: int, seed: int, shared: mmap.mmap, crash_dir: Path):
        self.target = load(spec)
        seeds = self.target.seeds()
        self.mutator = Mutator(self.target.name, seed, seeds, min(self.target.max_len, INPUT_MAX))
        self.shared, self.crash_dir = shared, crash_dir
        self.next, self.ran = start, 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.crashes: list[dict[str, Any]] = []
        self.crash_count = 0
        self.places: collections.Counter[str] = collections.Counter()

    def run(self, end: int, skip: set[int]) -> None:
        shared, current = self.shared, _CURRENT
        for i in range(self.next, end):
            if i not in skip:
                data = self.mutator.input(i)
                current.pack_into(shared, 0, i + 1, len(data))
                shared[current.size:current.size + len(data)] = data
                outcome, exc = run_one(self.target, data)
                self.ran += 1
                if exc is None:
                    self.outcomes[outcome] += 1
                else:
                    self.crashed(i, data, exc)
            self.next = i + 1
            if self.next % _SNAPSHOT_EVERY == 0:
                self.snapshot()
        self.snapshot()

    def crashed(self, i: int, data: bytes, exc: Exception) -> None:
        self.crash_count += 1
        frames = traceback.extract_tb(exc.__traceback__)
        place = f"{type(exc).__name__} at {frames[-1].filename}:{frames[-1].lineno}" if frames else type(exc).__name__
        self.places[place] += 1
        if self.places[place] > _SAVED_PER_PLACE:
            return
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        path = self.crash_dir / f"{self.target.name}-{i}.bin"
        path.write_bytes(data)
        path.with_suffix(".txt").write_text("".join(traceback.format_exception(exc)))
        self.crashes.append({"index": i, "kind": "exception", "detail": f"{place}: {exc!r}"[:500],
                             "file": str(path)})

    def snapshot(self) -> None:
        snap = json.dumps({"next": self.next, "ran": self.ran, "outcomes": self.outcomes,
                           "crash_count": self.crash_count, "crashes": self.crashes}).encode()
        if len(snap) > _SNAPSHOT_MAX:  # never expected: crashes are few, outcome names short
            raise RuntimeError(f"fuzz snapshot of {len(snap)} bytes")
        self.shared[_SNAPSHOT_AT + 4:_SNAPSHOT_AT + 4 + len(snap)] = snap
        struct.pack_into("<I", self.shared, _SNAPSHOT_AT, len(snap))


def main(argv: list[str]) -> int:
    spec, start, end, seed, shared_path, crash_dir = argv[:6]
    skip = {int(x) for x in argv[6].split(",") if x} if len(argv) > 6 else set()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the parent's to handle
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves its input, not a core file
    fd = os.open(shared_path, os.O_RDWR)
    try:
        shared = mmap.mmap(fd, SHARED_SIZE)
    finally:
        os.close(fd)
    child = _Child(spec, int(start), int(seed), shared, Path(crash_dir))
    child.run(int(end), skip)
    shared.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
