"""burstio.napi.doctor (`burstio doctor`): it reads the host and changes nothing
without --apply; with --apply in a burstio lab (root) it sets what it
recommends. Nothing here measures time.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from burstio.napi import doctor, netdev
from support.paths import ROOT
from support.proc import subprocess_env


def test_doctor_changes_nothing_without_apply():
    """doctor reads the host and reports; without --apply every setting it
    reads is the same afterwards."""
    before = doctor.examine()
    r = subprocess.run([sys.executable, "-m", "burstio", "doctor", "--json"], capture_output=True, text=True,
                       env=subprocess_env(), cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["applied"] == []
    assert set(out["state"]["sysctls"]) == {f"net.core.{n}" for n in doctor.SYSCTLS}
    after = doctor.examine()
    strip = lambda s: {d: [{k: v for k, v in n.items() if k != "irq_count"} for n in dd["napi"]]  # noqa: E731
                       for d, dd in s["devices"].items()}
    assert strip(before) == strip(after)
    assert before["sysctls"] == after["sysctls"]


def test_doctor_apply_in_the_lab(burstio_lab):
    """`burstio doctor --dev D --apply` in the lab's namespace b: the recipe
    lists every NAPI of D, apply sets them, and a second look finds nothing
    left to change."""
    lab = burstio_lab
    dev = lab.dev["b"]

    def doctor_json(*args: str) -> dict:
        r = subprocess.run(lab.command("b", [sys.executable, "-m", "burstio", "doctor", "--dev", dev, "--json",
                                             *args]), capture_output=True, text=True, env=subprocess_env(),
                           cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    first = doctor_json()
    napis = first["state"]["devices"][dev]["napi"]
    if not napis or "defer_hard_irqs" not in napis[0]:
        pytest.skip("no per-NAPI settings (Linux >= 6.13)")
    assert sum(c.startswith(f"napi-set {dev} NAPI ") for c in first["recipe"]) == lab.queues
    assert first["applied"] == []
    applied = doctor_json("--apply")
    assert len(applied["applied"]) == lab.queues
    with lab.inside("b"):
        for n in netdev.napi_list(dev):
            assert {k: getattr(n, k) for k in doctor.RECIPE} == doctor.RECIPE
    again = doctor_json("--apply")
    assert not any(c.startswith("napi-set") for c in again["recipe"])
    assert again["applied"] == []
