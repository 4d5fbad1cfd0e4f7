"""pytest support for code that uses burstio.

Load it from a conftest.py::

    pytest_plugins = ["burstio.testing"]

Fixtures:

- ``burstio_lab``: a fresh ``burstio.napi.lab.Lab`` for one test (namespaces
  joined by a veth pair with NAPI on), removed after the test whether it
  passed, failed or was interrupted (and at interpreter exit, should the
  fixture's teardown not run). Skips, saying why, without root or without
  `ip`/`ethtool`. ``@pytest.mark.burstio_lab(queues=4, ifb=True)`` changes
  what it makes (the Lab keyword arguments).
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from .napi.lab import Lab, LabError, require_privileges

__all__ = ["burstio_lab", "lab_or_skip"]

_serial = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "burstio_lab(**kwargs): keyword arguments of the burstio_lab fixture's Lab")


def lab_or_skip(**kwargs: Any) -> Lab:
    """A Lab with a name and subnet no other lab of this process or of a
    concurrent test run uses (not yet up); pytest.skip without privileges."""
    try:
        require_privileges()
    except (PermissionError, LabError) as e:
        pytest.skip(str(e))
    n = next(_serial)
    pid = os.getpid()
    kwargs.setdefault("subnet", f"10.{200 + pid % 50}.{n % 250}")
    return Lab(f"t{pid % 100000}x{n % 1000}", **kwargs)


@pytest.fixture
def burstio_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh lab (burstio.napi.lab.Lab) for the test, up and removed afterwards
    whatever happens; skips without root. ``@pytest.mark.burstio_lab(...)``
    passes its keyword arguments to the Lab (``queues=4``, ``ifb=True``)."""
    marker = request.node.get_closest_marker("burstio_lab")
    lab = lab_or_skip(**(marker.kwargs if marker else {}))
    with lab:
        yield lab
