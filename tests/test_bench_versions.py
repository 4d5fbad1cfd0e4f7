"""burstio.bench.versions: what a bench run was measured with, every key there and of its type,
read on this machine only; liburing's version from the file the extension loaded, and the
external tools' from what they print."""
from __future__ import annotations

import os
import platform
import re
import shutil
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pytest

import burstio
from burstio.bench.report import ScenarioResult, used_tools
from burstio.bench.versions import LIBRARIES, liburing_version, tool_version, versions

KEYS = {"burstio", "python", "python_implementation", "kernel", "numpy", "uvloop", "aioquic", "liburing", "tools",
        "cpu_model", "cpus", "date"}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_every_key_with_its_type():
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    v = versions([], started)
    assert set(v) == KEYS
    assert v["burstio"] == burstio.__version__
    assert (v["python_implementation"], v["python"]) == (platform.python_implementation(), platform.python_version())
    assert v["kernel"] == os.uname().release
    for name in LIBRARIES:
        assert v[name] == _installed(name)
    assert v["liburing"] is None or re.fullmatch(r"\d+(\.\d+)*", v["liburing"])
    assert v["tools"] == {}
    assert v["cpu_model"] is None or (isinstance(v["cpu_model"], str) and v["cpu_model"])
    assert isinstance(v["cpus"], int) and v["cpus"] >= 1
    assert v["date"] == "2026-01-02T03:04:05+00:00"
    assert datetime.fromisoformat(versions()["date"]).tzinfo is not None


def test_liburing_version_from_the_loaded_file():
    line = "7f00-7f01 r-xp 00000000 08:01 123  {}"
    assert liburing_version(line.format("/usr/lib/x86_64-linux-gnu/liburing.so.2.3")) == "2.3"
    assert liburing_version(line.format("/venv/lib/burstio.libs/liburing-1a2b3c4d.so.2")) == "2"  # a wheel's copy
    assert liburing_version(line.format("/usr/lib/liburing.so")) is None  # no version in the name
    assert liburing_version(line.format("/usr/lib/libc.so.6")) is None


def test_liburing_version_of_this_process():
    """The extension links liburing dynamically: the system's (a source build) or its own copy (a
    wheel); either file's name carries at least the major version."""
    found = liburing_version()
    assert found is not None and re.fullmatch(r"\d+(\.\d+)*", found)
    maps = Path("/proc/self/maps").read_text().splitlines()
    assert any("/liburing" in ln and ln.endswith(f".so.{found}") for ln in maps)


def test_tool_version_from_its_output(tmp_path, monkeypatch):
    fake = tmp_path / "sockperf"
    fake.write_text("#!/bin/sh\necho 'sockperf, version 9.9-test'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tool_version("sockperf") == "9.9-test"
    assert tool_version("dnsperf") is None  # not installed
    assert versions(["sockperf", "dnsperf"])["tools"] == {"sockperf": "9.9-test", "dnsperf": None}


@pytest.mark.skipif(shutil.which("sockperf") is None, reason="sockperf is not installed")
def test_the_installed_sockperf_says_its_version():
    assert tool_version("sockperf")


def test_only_the_tools_of_scenarios_that_ran():
    ran = ScenarioResult("latency", {}, {}, tools=("sockperf",))
    skipped = ScenarioResult("dns", {}, {}, tools=("dnsperf",), skipped="dnsperf is not installed")
    assert used_tools([ran, skipped, ScenarioResult("tx-gso", {}, {})]) == ["sockperf"]
