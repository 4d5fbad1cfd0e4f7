"""What a bench run was measured with: burstio, Python, the kernel, the libraries the
scenarios use, the liburing the extension loaded, the external tools a scenario ran, the CPU
and the date. Everything is read on this machine (package metadata, /proc, the tools' own
version output); nothing here touches the network, and what cannot be told is None."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__

__all__ = ["LIBRARIES", "TOOLS", "versions", "liburing_version", "tool_version"]

#: the Python libraries whose versions go with the figures (None: not installed)
LIBRARIES = ("numpy", "uvloop", "aioquic")

#: external programs a scenario may run: the command that prints the version, and how to find it
TOOLS: dict[str, tuple[tuple[str, ...], str]] = {
    "sockperf": (("sockperf", "--version"), r"version\s+(\S+)"),
    "dnsperf": (("dnsperf", "-h"), r"Version\s+(\S+)"),
}


def versions(tools: Iterable[str] = (), date: datetime | None = None) -> dict[str, Any]:
    """The versions as one JSON-ready dict: strings, or None where they cannot be told;
    ``tools`` names the external programs used (each one's version under ``"tools"``);
    ``date`` is when the run started (now when not given), in UTC."""
    return {
        "burstio": __version__,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "kernel": os.uname().release,
        **{name: _library(name) for name in LIBRARIES},
        "liburing": liburing_version(),
        "tools": {name: tool_version(name) for name in tools},
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "date": (date or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds"),
    }


def _library(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def liburing_version(maps: str | None = None) -> str | None:
    """The version of the liburing that burstio's extension loaded (the system's for a source
    build, the one bundled in a wheel), from the file name mapped into this process
    (``liburing.so.2.3``: "2.3"); None when no liburing is mapped or its name has no version.
    ``maps`` stands in for /proc/self/maps."""
    if maps is None:
        from .. import _native  # noqa: F401 - loads liburing, when the extension links it

        maps = Path("/proc/self/maps").read_text()
    for line in maps.splitlines():
        m = re.search(r"/liburing[^/]*\.so\.(\d+(?:\.\d+)*)$", line)
        if m:
            return m.group(1)
    return None


def tool_version(name: str) -> str | None:
    """What the external program ``name`` (a key of TOOLS) says its version is, or None."""
    argv, pattern = TOOLS[name]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else None


def _cpu_model() -> str | None:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None
    m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return m.group(1).strip() if m else (platform.processor() or None)
