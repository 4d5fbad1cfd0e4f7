"""Event loops for the tests: asyncio's own, or uvloop's."""
from __future__ import annotations

import asyncio

import pytest


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop of kind "asyncio" or "uvloop" (skipped, saying why,
    when uvloop is not installed)."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            pytest.skip("uvloop is not installed (pip install uvloop)")
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_on_loop(kind: str, coro_fn, timeout: float):
    """Run coro_fn() to completion on a fresh event loop of ``kind``."""
    loop = new_loop(kind)
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), timeout))
    finally:
        loop.close()
