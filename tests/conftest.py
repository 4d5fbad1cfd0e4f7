"""Fixtures shared by the test modules (the helpers are in tests/support/).

Property tests search new examples on every run, except in CI
(HYPOTHESIS_PROFILE=ci), which replays the same ones so that a landing never
hinges on a lucky draw. A failure prints its example to reproduce.
"""
from __future__ import annotations

import os

from hypothesis import settings

from support.variants import UDP, variant_fixture

pytest_plugins = ["burstio.testing", "pytester"]  # the burstio_lab fixture; pytester for test_testing.py

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: Each BurstSocket variant (support.variants.UDP) in turn, applied.
udp_variant = variant_fixture(UDP)
