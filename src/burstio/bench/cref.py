"""The C reference programs: compiled from the package's sources at bench
time (so the reference is built with this machine's compiler and flags)."""
from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

CFLAGS = ["-O2", "-std=c11", "-Wall"]


class BuildError(RuntimeError):
    """A C reference could not be compiled (no compiler, or the compiler failed)."""


@functools.cache
def build(name: str) -> Path:
    """Compile bench/c/NAME.c; returns the executable (cached per process)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BuildError(f"the C reference {name} is compiled at bench time and needs a C compiler: "
                         "no cc or gcc on PATH (Debian: apt install gcc)")
    src = resources.files("burstio.bench") / "c" / f"{name}.c"
    out = Path(_tmpdir()) / name
    with resources.as_file(src) as path:
        r = subprocess.run([cc, *CFLAGS, "-o", str(out), str(path)], capture_output=True, check=False, text=True)
    if r.returncode != 0:
        raise BuildError(f"building the C reference {name} failed:\n{r.stderr}")
    return out


@functools.lru_cache(maxsize=1)
def _tmpdir() -> str:
    d = tempfile.TemporaryDirectory(prefix="burstio-cref-")
    _keep.append(d)
    return d.name


_keep: list[tempfile.TemporaryDirectory[str]] = []
