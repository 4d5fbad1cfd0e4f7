"""Build of the private C extension burstio._native (sources in csrc/).

Needs the Python headers, a C11 compiler and the system's liburing
(Debian: liburing-dev); scripts/bootstrap.sh installs them. Every .c file
under csrc/ is compiled (csrc/module.c lists them); every header is a
dependency. BURSTIO_WERROR=1 turns warnings into errors.
"""
import os
from pathlib import Path

from setuptools import Extension, setup

sources = sorted(str(p) for p in Path("csrc").rglob("*.c"))
headers = sorted(str(p) for p in Path("csrc").rglob("*.h"))

# -Wno-unused-parameter: CPython's callback signatures (self, args, closure)
# name parameters that many entry points do not use.
compile_args = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
if os.environ.get("BURSTIO_WERROR") == "1":
    compile_args.append("-Werror")

setup(
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
    ]
)
