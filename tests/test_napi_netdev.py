"""burstio.napi.netdev: /proc/interrupts parsing, netlink attribute decoding,
argument errors, and the netdev family's listings and per-NAPI settings (in a
burstio lab: root). Nothing here measures time.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burstio.napi import netdev
from burstio.napi.lab import Lab
from support.paths import ROOT
from support.proc import subprocess_env

# ---- pure helpers: /proc/interrupts, netlink attributes, arguments -------------------


SAMPLE_INTERRUPTS = """\
           CPU0       CPU1
  0:         16          0   IO-APIC   2-edge      timer
 24:          5        117   PCI-MSI 49152-edge      virtio0-input.0
NMI:          0          3   Non-maskable interrupts
ERR:          0
garbage line
"""


def test_irq_counts_sample():
    got = netdev.irq_counts(SAMPLE_INTERRUPTS)
    assert got["0"] == {"cpus": [16, 0], "total": 16, "name": "IO-APIC   2-edge      timer"}
    assert got["24"] == {"cpus": [5, 117], "total": 122, "name": "PCI-MSI 49152-edge      virtio0-input.0"}
    assert got["NMI"] == {"cpus": [0, 3], "total": 3, "name": "Non-maskable interrupts"}
    assert got["ERR"] == {"cpus": [0], "total": 0, "name": ""}
    assert set(got) == {"0", "24", "NMI", "ERR"}
    assert netdev.irq_counts("") == {}
    real = netdev.irq_counts()
    assert real and all(v["total"] == sum(v["cpus"]) for v in real.values())


_label = st.one_of(st.integers(0, 4095).map(str), st.sampled_from(["NMI", "LOC", "ERR", "MIS", "RES"]))
# a name never starts with a digit (it would read as one more count) and has no line break
_name = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30).filter(
    lambda t: not t.strip()[:1].isdigit())
_row = st.tuples(_label, st.lists(st.integers(0, 2**40), min_size=1, max_size=6), _name)
_noise = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40).map(lambda t: "~" + t)


@settings(max_examples=300, deadline=None)
@given(ncpu=st.integers(1, 6), rows=st.lists(_row, max_size=12, unique_by=lambda r: r[0]),
       noise=st.lists(_noise, max_size=4), seed=st.randoms())
def test_irq_counts_fuzz(ncpu, rows, noise, seed):
    header = "".join(f"       CPU{i}" for i in range(ncpu))
    lines = [f"{lab}: " + " ".join(map(str, nums)) + f"   {name}" for lab, nums, name in rows] + noise
    seed.shuffle(lines)
    got = netdev.irq_counts("\n".join([header, *lines]))
    assert set(got) == {lab for lab, _, _ in rows}  # every row, no noise
    for lab, nums, name in rows:
        cpus = nums[:ncpu]
        assert got[lab]["cpus"] == cpus and got[lab]["total"] == sum(cpus)
        # the counts past the CPU columns lead the name; blanks around it go
        assert got[lab]["name"] == " ".join([*map(str, nums[ncpu:]), name.lstrip()]).strip()


@given(st.integers(0, 2**64 - 1))
def test_nla_uint_round_trip(value):
    raw = netdev._encode_uint(value)
    assert netdev._uint(raw) == value
    if value < 2**32:  # the kernel sends the short form when the value fits
        assert netdev._uint(value.to_bytes(4, sys.byteorder)) == value


@given(st.binary(max_size=12).filter(lambda b: len(b) not in (4, 8)))
def test_nla_uint_bad_length(raw):
    with pytest.raises(netdev.NetdevError, match=f"NLA_UINT attribute of {len(raw)} bytes \\(want 4 or 8 bytes\\)"):
        netdev._uint(raw)


def test_netdev_argument_errors():
    with pytest.raises(ValueError, match="napi_id must be between 1 and 4294967295, got 0"):
        netdev.napi_get(0)
    with pytest.raises(TypeError, match="napi_id must be int, got bool"):
        netdev.napi_set(True, defer_hard_irqs=1)
    with pytest.raises(TypeError, match="napi_set\\(\\) needs at least one of defer_hard_irqs"):
        netdev.napi_set(5)
    with pytest.raises(TypeError, match="napi_set\\(\\) got an unknown setting 'budget'"):
        netdev.napi_set(5, budget=1)
    with pytest.raises(ValueError, match="gro_flush_timeout must be between 0 and 18446744073709551615, got -1"):
        netdev.napi_set(5, gro_flush_timeout=-1)
    with pytest.raises(netdev.NetdevError, match="no network device named 'nosuchdev0'") as ei:
        netdev.napi_list("nosuchdev0")
    assert ei.value.errno == errno.ENODEV
    with pytest.raises(TypeError, match="irq_suspend_timeout is per NAPI only"):
        netdev.set_device_settings("lo", irq_suspend_timeout=5)


def test_qstats_match_the_device_counters():
    """Per-queue counters (qstats-get, NLA_UINT values) summed over a
    device's queues agree with its sysfs totals, read around them."""
    try:
        devs = {d.ifname for d in netdev.device_list()}
    except netdev.NetdevError as e:
        pytest.skip(str(e))
    for dev in sorted(devs):
        low = int(Path(f"/sys/class/net/{dev}/statistics/rx_packets").read_text())
        per_queue = [q for q in netdev.queue_list(dev, stats=True) if q.type == "rx" and "rx_packets" in q.stats]
        high = int(Path(f"/sys/class/net/{dev}/statistics/rx_packets").read_text())
        if not per_queue:
            continue
        assert low <= sum(q.stats["rx_packets"] for q in per_queue) <= high, dev
        return
    pytest.skip("no device here reports per-queue counters")


# ---- in a lab ----------------------------------------------------------------------


def test_lab_netdev_listing(burstio_lab):
    lab = burstio_lab
    with lab.inside("b"):
        devs = {d.ifname: d for d in netdev.device_list()}
        queues = netdev.queue_list(lab.dev["b"], stats=True)
        napis = netdev.napi_list(lab.dev["b"])
    assert lab.dev["b"] in devs and "basic" in devs[lab.dev["b"]].xdp_features
    assert sorted((q.type, q.id) for q in queues) == sorted(
        [("rx", i) for i in range(lab.queues)] + [("tx", i) for i in range(lab.queues)])
    assert all(q.ifname == lab.dev["b"] for q in queues)
    assert [n.id for n in napis] == lab.napi_ids("b")
    assert all(n.ifname == lab.dev["b"] for n in napis)


def test_napi_settings_round_trip(burstio_lab):
    lab = burstio_lab
    first, second = lab.napi_ids("b")[:2]
    with lab.inside("b"):
        n0 = netdev.napi_get(first)
        if n0.defer_hard_irqs is None:
            pytest.skip(f"no per-NAPI settings on {os.uname().release} (Linux >= 6.13)")
        other = netdev.napi_get(second)
        got = netdev.napi_set(first, defer_hard_irqs=3, gro_flush_timeout=123456, irq_suspend_timeout=7_890_000)
        assert (got.defer_hard_irqs, got.gro_flush_timeout, got.irq_suspend_timeout) == (3, 123456, 7_890_000)
        assert netdev.napi_get(first) == got
        assert netdev.napi_get(second) == other  # per NAPI: the other instance is untouched
        assert netdev.napi_settings(first) == {"defer_hard_irqs": 3, "gro_flush_timeout": 123456,
                                               "irq_suspend_timeout": 7_890_000}
        back = netdev.napi_set(first, defer_hard_irqs=n0.defer_hard_irqs, gro_flush_timeout=n0.gro_flush_timeout,
                               irq_suspend_timeout=n0.irq_suspend_timeout)
        assert back == n0
        with pytest.raises(netdev.NetdevError, match="no NAPI instance 4000000000") as ei:
            netdev.napi_get(4_000_000_000)
        assert ei.value.errno == errno.ENOENT


def in_lab(lab: Lab, side: str, code: str, **env: str) -> dict:
    """Run python `code` in the lab's namespace `side` through `ip netns
    exec` (which mounts that namespace's /sys); it prints one JSON value."""
    r = subprocess.run(lab.command(side, [sys.executable, "-c", code]), capture_output=True, text=True,
                       env={**subprocess_env(), **env}, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


FALLBACK = """
import json, errno
from burstio.napi import netdev
nid, dev = {nid}, {dev!r}
out = {{"how": netdev.configure_napi(nid, defer_hard_irqs=4, gro_flush_timeout=50000),
        "device": netdev.device_settings(dev), "read_back": netdev.napi_settings(nid),
        "napis": [(n.defer_hard_irqs, n.gro_flush_timeout) for n in netdev.napi_list(dev)]}}
try:
    netdev.configure_napi(nid, irq_suspend_timeout=1000)
except netdev.NetdevError as e:
    out["irq_suspend"] = [e.errno, e.strerror]
print(json.dumps(out))
"""


def test_napi_settings_device_wide_fallback(burstio_lab):
    """With per-NAPI settings forced off, configure_napi writes the
    device-wide sysfs files (every NAPI of the device) and refuses
    irq_suspend_timeout, which has no device-wide file."""
    lab = burstio_lab
    out = in_lab(lab, "b", FALLBACK.format(nid=lab.napi_ids("b")[0], dev=lab.dev["b"]),
                 BURSTIO_DISABLE="netdev_napi_set")
    assert out["how"] == "device"
    assert out["device"] == out["read_back"] == {"defer_hard_irqs": 4, "gro_flush_timeout": 50000}
    if out["napis"][0][0] is not None:  # device-wide writes reach every NAPI instance
        assert {tuple(n) for n in out["napis"]} == {(4, 50000)}
    assert out["irq_suspend"][0] == errno.EOPNOTSUPP
    assert out["irq_suspend"][1].startswith("irq_suspend_timeout needs per-NAPI settings (napi-set, Linux >= 6.13)")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "tests" / "corpus" / "netdev").glob("bug-*.bin")))
def test_malformed_replies_are_netdev_errors(name):
    """Replies the fuzzer found (the bug- files of tests/corpus/netdev): each is a
    NetdevError (EBADMSG), never an exception from inside the decoder."""
    data = (ROOT / "tests" / "corpus" / "netdev" / name).read_bytes()
    with pytest.raises(netdev.NetdevError) as ei:
        netdev._decode_replies(data[1:], data[0] % 4)
    assert ei.value.errno == errno.EBADMSG
