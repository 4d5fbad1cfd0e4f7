"""Build of the private C extension burstio._native (sources in csrc/).

Needs the Python headers, a C11 compiler and the system's liburing
(Debian: liburing-dev); scripts/bootstrap.sh installs them. Before anything is
compiled, build_ext checks that each is there and otherwise stops with one line
naming the package to install. Every .c file under csrc/ is compiled
(csrc/module.c lists them); every header is a dependency. BURSTIO_WERROR=1
turns warnings into errors. A wheel that needs none of this on the target
machine: scripts/wheel.sh.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
from collections.abc import Iterable
from pathlib import Path

WHERE = "(Debian, Ubuntu) or dnf install {rpm} (Fedora)"
NO_COMPILER = "burstio needs a C compiler ({cc} not found): apt install gcc " + WHERE.format(rpm="gcc")
NO_PYTHON_HEADERS = ("burstio needs the Python headers (no Python.h in {where}): apt install python3-dev "
                     + WHERE.format(rpm="python3-devel"))
NO_LIBURING = "burstio needs liburing's development files: apt install liburing-dev " + WHERE.format(rpm="liburing-devel")


def configured_compiler() -> list[str]:
    """The compiler command setuptools will run: $CC, else the one Python was built with."""
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def compiler_include_dirs(cc: list[str]) -> list[str]:
    """The directories ``cc`` searches for ``#include <...>`` (from its -v report), plus
    -I directories in $CPPFLAGS/$CFLAGS and pkg-config's for liburing."""
    r = subprocess.run([*cc, "-E", "-v", "-x", "c", "-"], input="", capture_output=True, text=True, check=False)
    lines = r.stderr.splitlines()
    dirs = []
    if "#include <...> search starts here:" in lines:
        start = lines.index("#include <...> search starts here:") + 1
        for line in lines[start:]:
            if not line.startswith(" "):
                break
            dirs.append(line.strip())
    flags = shlex.split(os.environ.get("CPPFLAGS", "") + " " + os.environ.get("CFLAGS", ""))
    if shutil.which("pkg-config"):
        pc = subprocess.run(["pkg-config", "--cflags-only-I", "liburing"], capture_output=True, text=True, check=False)
        flags += shlex.split(pc.stdout) if pc.returncode == 0 else []
    dirs += [f[2:] for f in flags if f.startswith("-I") and len(f) > 2]
    return dirs


def check_compiler(cc: list[str]) -> str | None:
    """None when the compiler command ``cc`` can be found, else the line naming what to install."""
    if cc and shutil.which(cc[0]):
        return None
    return NO_COMPILER.format(cc=cc[0] if cc else "no compiler configured")


def check_python_headers(include_dir: str) -> str | None:
    """None when Python.h is in ``include_dir``, else the line naming what to install."""
    if (Path(include_dir) / "Python.h").is_file():
        return None
    return NO_PYTHON_HEADERS.format(where=include_dir)


def check_liburing(include_dirs: Iterable[str]) -> str | None:
    """None when liburing.h is in one of ``include_dirs``, else the line naming what to install."""
    if any((Path(d) / "liburing.h").is_file() for d in include_dirs):
        return None
    return NO_LIBURING


def check_build_prerequisites(extra_include_dirs: Iterable[str] = ()) -> str | None:
    """What the extension's build needs, in order (compiler, Python headers, liburing):
    None when all are there, else one line naming the first that is missing."""
    cc = configured_compiler()
    return (check_compiler(cc)
            or check_python_headers(sysconfig.get_paths()["include"])
            or check_liburing([*extra_include_dirs, *compiler_include_dirs(cc)]))


def main() -> None:
    from setuptools import Extension, setup
    from setuptools.command.build import build
    from setuptools.command.build_ext import build_ext

    checked: list[str | None] = []

    def stop_if_missing(include_dirs: Iterable[str]) -> None:
        if not checked:
            checked.append(check_build_prerequisites(include_dirs))
        if checked[0]:
            raise SystemExit(checked[0])

    class Build(build):
        """build, checked before anything else runs (pip's wheel build starts here)."""

        def run(self) -> None:
            stop_if_missing(())
            super().run()

    class BuildExt(build_ext):
        """build_ext, checked before compiling (setup.py build_ext, editable installs)."""

        def run(self) -> None:
            stop_if_missing(self.include_dirs or ())
            super().run()

    sources = sorted(str(p) for p in Path("csrc").rglob("*.c"))
    headers = sorted(str(p) for p in Path("csrc").rglob("*.h"))

    # -Wno-unused-parameter: CPython's callback signatures (self, args, closure)
    # name parameters that many entry points do not use.
    compile_args = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    if os.environ.get("BURSTIO_WERROR") == "1":
        compile_args.append("-Werror")

    setup(
        cmdclass={"build": Build, "build_ext": BuildExt},
        ext_modules=[
            Extension(
                "burstio._native",
                sources=sources,
                depends=headers,
                include_dirs=["csrc"],
                libraries=["uring"],
                define_macros=[("_GNU_SOURCE", "1")],
                extra_compile_args=compile_args,
            )
        ],
    )


if __name__ == "__main__":
    main()
