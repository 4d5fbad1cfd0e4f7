"""setup.py's check before a source build: a missing C compiler, missing Python headers or a
missing liburing each stop the build with one line naming the package to install. The checks
run here on their own (setup.py is imported, nothing is compiled)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from support.paths import ROOT

if not (ROOT / "setup.py").is_file():
    pytest.skip("no setup.py beside the tests", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("burstio_setup", ROOT / "setup.py")
assert _spec and _spec.loader
setup_py = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(setup_py)  # defines the checks; the build runs only as __main__

NO_LIBURING = ("burstio needs liburing's development files: apt install liburing-dev (Debian, Ubuntu) "
               "or dnf install liburing-devel (Fedora)")


def test_a_missing_compiler_is_one_line_naming_gcc():
    assert setup_py.check_compiler(["no-such-cc-for-burstio", "-pthread"]) == (
        "burstio needs a C compiler (no-such-cc-for-burstio not found): apt install gcc (Debian, Ubuntu) "
        "or dnf install gcc (Fedora)")


def test_a_missing_liburing_header_is_one_line_naming_liburing_dev(tmp_path):
    (tmp_path / "stdio.h").write_text("")
    assert setup_py.check_liburing([str(tmp_path), str(tmp_path / "nowhere")]) == NO_LIBURING
    (tmp_path / "liburing.h").write_text("")
    assert setup_py.check_liburing([str(tmp_path / "nowhere"), str(tmp_path)]) is None


def test_missing_python_headers_are_one_line_naming_python3_dev(tmp_path):
    assert setup_py.check_python_headers(str(tmp_path)) == (
        f"burstio needs the Python headers (no Python.h in {tmp_path}): apt install python3-dev (Debian, Ubuntu) "
        "or dnf install python3-devel (Fedora)")
    (tmp_path / "Python.h").write_text("")
    assert setup_py.check_python_headers(str(tmp_path)) is None


def test_the_compiler_is_checked_first(monkeypatch):
    monkeypatch.setenv("CC", "no-such-cc-for-burstio")
    why = setup_py.check_build_prerequisites()
    assert why is not None and why.startswith("burstio needs a C compiler (no-such-cc-for-burstio not found)")
    assert "\n" not in why


def test_setup_py_stops_before_building_with_that_one_line(tmp_path):
    """`setup.py build` with a compiler that is not there: exit 1, that line on stderr,
    nothing built."""
    setuptools = pytest.importorskip("setuptools")
    build_requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    needed = next(r for r in map(Requirement, build_requires) if r.name == "setuptools")
    if setuptools.__version__ not in needed.specifier:
        pytest.skip(f"setup.py needs {needed} (pyproject.toml's build-system), this is {setuptools.__version__}")
    r = subprocess.run([sys.executable, str(ROOT / "setup.py"), "-q", "build", "--build-base", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "CC": "no-such-cc-for-burstio"})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == setup_py.check_compiler(["no-such-cc-for-burstio"])
    assert list(tmp_path.iterdir()) == []


def test_this_machine_can_build_burstio():
    """Where a compiler is, everything else the build needs must be found too (as on every
    machine that built this checkout)."""
    cc = setup_py.configured_compiler()
    if setup_py.check_compiler(cc):
        pytest.skip(f"no C compiler here ({cc[0]}): a source build is not possible, only a wheel install")
    if not (ROOT / "csrc").is_dir():
        pytest.skip("no csrc/ beside the tests: not a checkout to build")
    assert setup_py.check_build_prerequisites() is None
