"""Build of the private C extension burstio._native (sources in csrc/).

Needs the Python headers, a C11 compiler and the system's liburing
(Debian: liburing-dev); scripts/bootstrap.sh installs them.
"""
from pathlib import Path

from setuptools import Extension, setup

sources = sorted(str(p) for p in Path("csrc").glob("*.c"))

setup(
    ext_modules=[
        Extension(
            "burstio._native",
            sources=sources,
            depends=["csrc/burstio.h"],
            include_dirs=["csrc"],
            libraries=["uring"],
            define_macros=[("_GNU_SOURCE", "1")],
            extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra",
                                "-Wno-missing-field-initializers",
                                "-Wno-cast-function-type", "-Wno-unused-parameter"],
        )
    ]
)
