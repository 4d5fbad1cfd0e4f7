"""burstio.testing, the pytest plugin: the ``burstio_lab`` fixture and its
marker, and ``lab_or_skip``. The fixture's lab is checked from the outside:
present while the test runs, gone afterwards whether the test passed or
failed. Tests that make a lab skip without root.
"""
from __future__ import annotations

import errno
import json
import subprocess

import pytest

import burstio.testing
from burstio.napi._labrecord import state_dir
from burstio.napi.lab import LabError, leftover_namespaces
from burstio.testing import lab_or_skip


def test_the_marker_is_registered(pytestconfig):
    assert any(line.startswith("burstio_lab(") for line in pytestconfig.getini("markers"))


def test_lab_or_skip_names_each_lab_apart():
    a, b = lab_or_skip(), lab_or_skip(queues=3)
    assert a.name != b.name and a.subnet != b.subnet
    assert (a.queues, b.queues) == (2, 3)  # keyword arguments go to the Lab
    assert lab_or_skip(subnet="10.1.2").subnet == "10.1.2"  # a subnet asked for is kept


@pytest.mark.parametrize("error, why", [
    (PermissionError(errno.EPERM, "the burstio lab needs CAP_NET_ADMIN (run it as root)"),
     "the burstio lab needs CAP_NET_ADMIN (run it as root)"),
    (LabError("the burstio lab needs `ethtool` (Debian: apt install ethtool)"),
     "the burstio lab needs `ethtool` (Debian: apt install ethtool)"),
])
def test_lab_or_skip_skips_saying_why(monkeypatch, error, why):
    def refuse() -> None:
        raise error

    monkeypatch.setattr(burstio.testing, "require_privileges", refuse)
    with pytest.raises(pytest.skip.Exception) as ei:
        lab_or_skip()
    assert why in str(ei.value)


@pytest.mark.burstio_lab(queues=1)
def test_the_marker_gives_the_lab_its_arguments(burstio_lab):
    assert burstio_lab.queues == 1
    assert sorted(leftover_namespaces(burstio_lab.name)) == sorted(burstio_lab.ns.values())
    assert len(burstio_lab.napi_ids("b")) == 1


def test_the_lab_is_gone_after_a_passing_and_a_failing_test(pytester):
    lab_or_skip()  # skips here, saying why, where the inner tests could make no lab
    pytester.makeconftest('pytest_plugins = ["burstio.testing"]\n')
    pytester.makepyfile('''
        import json
        import pathlib


        def note(lab):
            with pathlib.Path("labs.jsonl").open("a") as f:
                f.write(json.dumps({"name": lab.name, "devices": list(lab.dev.values())}) + "\\n")


        def test_passes(burstio_lab):
            note(burstio_lab)


        def test_fails(burstio_lab):
            note(burstio_lab)
            raise AssertionError("on purpose")
    ''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    labs = [json.loads(line) for line in (pytester.path / "labs.jsonl").read_text().splitlines()]
    assert len(labs) == 2 and labs[0]["name"] != labs[1]["name"]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for lab in labs:
        assert leftover_namespaces(lab["name"]) == []
        assert not (state_dir() / f"lab-{lab['name']}.json").exists()
        assert not any(dev in links for dev in lab["devices"])
