"""The capability probe: names, forcing off by BURSTIO_DISABLE, `burstio caps`."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import burstio
from burstio import _caps as caps_mod
from burstio._caps import CAPABILITY_NAMES, ENV_DISABLE, disabled_by_env
from support.paths import ROOT
from support.proc import subprocess_env

DOCUMENTED = (
    "recvmmsg", "sendmmsg", "udp_segment", "udp_gro", "so_timestampns", "so_rxq_ovfl", "so_meminfo", "ipv6",
    "io_uring", "io_uring_recvmsg", "io_uring_sendmsg", "io_uring_send_zc", "io_uring_sendmsg_zc",
    "io_uring_poll_add", "io_uring_buf_ring", "io_uring_defer_taskrun", "io_uring_sqpoll",
    "io_uring_napi",
    "so_zerocopy", "epoll_busy_poll", "so_incoming_napi_id", "so_busy_poll", "so_prefer_busy_poll",
    "so_busy_poll_budget", "af_xdp", "bpf", "xdp_link", "xdp_generic", "xdp_native", "bpf_prog_run_live_frames",
    "xsk_need_wakeup", "xsk_zerocopy", "xsk_multi_buffer",
    "ip_pktinfo", "ipv6_pktinfo", "ecn", "so_txtime", "txtime_qdisc",
)
BPF_DEPENDENTS = ["xdp_link", "xdp_generic", "xdp_native", "bpf_prog_run_live_frames"]
XSK_DEPENDENTS = ["xsk_need_wakeup", "xsk_zerocopy", "xsk_multi_buffer"]
URING_DEPENDENTS = [n for n in CAPABILITY_NAMES if n.startswith("io_uring_")]


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(ENV_DISABLE, raising=False)
    return monkeypatch


def test_names_and_shape(clean_env):
    assert CAPABILITY_NAMES == DOCUMENTED
    c = burstio.capabilities()
    assert isinstance(c, burstio.Capabilities)
    assert tuple(c) == CAPABILITY_NAMES and len(c) == len(CAPABILITY_NAMES)
    for name in CAPABILITY_NAMES:
        cap = c[name]
        assert isinstance(cap, burstio.Capability)
        assert cap.name == name
        assert isinstance(cap.available, bool)
        assert isinstance(cap.detail, str) and cap.detail
        assert cap.forced_off is False
        assert bool(cap) == cap.available == getattr(c, name)
    assert isinstance(c.gso_max_segments, int)
    assert c.gso_max_segments >= 1
    assert (c.gso_max_segments > 1) == c.udp_segment
    assert re.fullmatch(rf"<Capabilities \d+/{len(DOCUMENTED)} available>", repr(c))


def test_unknown_attribute(clean_env):
    with pytest.raises(AttributeError, match=re.escape("no capability named 'warp_drive'")):
        burstio.capabilities().warp_drive  # noqa: B018 - the attribute access is what must raise
    with pytest.raises(KeyError):
        burstio.capabilities()["warp_drive"]


def test_cached_per_setting(clean_env):
    a = burstio.capabilities()
    assert burstio.capabilities() is a
    clean_env.setenv(ENV_DISABLE, "udp_gro")
    b = burstio.capabilities()
    assert b is not a and burstio.capabilities() is b
    clean_env.delenv(ENV_DISABLE)
    assert burstio.capabilities() is a
    fresh = burstio.capabilities(refresh=True)
    assert fresh is not a and burstio.capabilities() is fresh
    assert {n: c.available for n, c in fresh.items()} == {n: c.available for n, c in a.items()}


def test_disable_forces_named_capabilities_off(clean_env):
    clean_env.setenv(ENV_DISABLE, " udp_gro , recvmmsg,,")
    c = burstio.capabilities()
    for name in ("udp_gro", "recvmmsg"):
        assert c[name].forced_off and not c[name].available and not getattr(c, name)
        assert c[name].detail == f"disabled by {ENV_DISABLE}"
    untouched = [n for n in CAPABILITY_NAMES if n not in ("udp_gro", "recvmmsg")]
    assert not any(c[n].forced_off for n in untouched)


def test_disable_udp_segment_also_drops_gso_segments(clean_env):
    clean_env.setenv(ENV_DISABLE, "udp_segment")
    c = burstio.capabilities()
    assert not c.udp_segment and c.gso_max_segments == 1


def test_io_uring_dependents_follow_io_uring(clean_env):
    clean_env.setenv(ENV_DISABLE, "io_uring")
    c = burstio.capabilities()
    assert c["io_uring"].forced_off and not c.io_uring
    for name in URING_DEPENDENTS:
        assert not c[name].available, name
        assert c[name].forced_off, name
        assert c[name].detail.startswith("needs io_uring: "), name


@pytest.mark.parametrize("base,dependents", [("bpf", BPF_DEPENDENTS), ("af_xdp", XSK_DEPENDENTS)])
def test_xdp_dependents_follow_their_base(clean_env, base, dependents):
    clean_env.setenv(ENV_DISABLE, base)
    c = burstio.capabilities()
    for name in dependents:
        assert not c[name].available and c[name].forced_off, name
        assert c[name].detail.startswith(f"needs {base}: "), name


def test_the_xdp_probe_runs_only_when_one_of_its_capabilities_is_asked_for(clean_env, monkeypatch):
    from burstio.xdp import _probe

    runs = []
    real = _probe.probe_xdp
    monkeypatch.setattr(_probe, "probe_xdp", lambda af_xdp: runs.append(1) or real(af_xdp))
    c = burstio.capabilities(refresh=True)
    assert c.udp_segment in (True, False) and runs == []  # a UDP program pays nothing for XDP
    assert isinstance(c.xdp_native, bool) and runs == [1]
    assert isinstance(c["xsk_zerocopy"].detail, str) and runs == [1]  # probed together, once
    monkeypatch.undo()
    burstio.capabilities(refresh=True)


def test_the_xdp_probe_leaves_nothing_behind(clean_env):
    """It works on a veth in a namespace of its own thread: afterwards the
    host has no new namespace, device or XDP link."""
    from burstio.xdp._bpf import xdp_links

    before = (subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout,
              sorted(x["id"] for x in xdp_links()) if burstio.capabilities().bpf else [],
              subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout)
    c = burstio.capabilities(refresh=True)
    after = (subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout,
             sorted(x["id"] for x in xdp_links()) if c.bpf else [],
             subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout)
    assert "bioprobe" not in after[0]
    assert after[1] == before[1] and after[2] == before[2]


def test_disabling_one_dependent_leaves_the_others(clean_env):
    base = burstio.capabilities()
    clean_env.setenv(ENV_DISABLE, "io_uring_sqpoll")
    c = burstio.capabilities()
    assert c["io_uring_sqpoll"].forced_off
    for name in URING_DEPENDENTS:
        if name != "io_uring_sqpoll":
            assert c[name].available == base[name].available, name


def test_unknown_name_raises(clean_env):
    clean_env.setenv(ENV_DISABLE, "udp_gro,warp_drive")
    msg = f"{ENV_DISABLE} names unknown capabilities ['warp_drive']; known: "
    with pytest.raises(ValueError, match=re.escape(msg)):
        burstio.capabilities()
    with pytest.raises(ValueError, match="warp_drive"):
        disabled_by_env({ENV_DISABLE: "warp_drive"})
    assert disabled_by_env({ENV_DISABLE: ""}) == frozenset()
    assert disabled_by_env({}) == frozenset()


def test_as_dict(clean_env):
    clean_env.setenv(ENV_DISABLE, "af_xdp")
    d = burstio.capabilities().as_dict()
    assert set(d) == {"capabilities", "gso_max_segments"}
    assert list(d["capabilities"]) == list(CAPABILITY_NAMES)
    assert d["capabilities"]["af_xdp"] == {"available": False, "detail": f"disabled by {ENV_DISABLE}",
                                           "forced_off": True}


def test_failing_probe_reports_instead_of_raising(clean_env, monkeypatch):
    def broken():
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setitem(caps_mod._PROBES, "af_xdp", broken)
    c = burstio.capabilities(refresh=True)
    try:
        assert not c.af_xdp
        assert c["af_xdp"].detail.startswith("probe failed: ")
    finally:
        monkeypatch.undo()
        burstio.capabilities(refresh=True)


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burstio", *args], capture_output=True, text=True,
                          env=subprocess_env(**env), cwd=ROOT, timeout=120)


def test_caps_json_command():
    r = run_cli("caps", "--json", **{ENV_DISABLE: "udp_gro,io_uring"})
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert list(d["capabilities"]) == list(CAPABILITY_NAMES)
    assert isinstance(d["gso_max_segments"], int)
    for name, cap in d["capabilities"].items():
        assert set(cap) == {"available", "detail", "forced_off"}, name
    assert d["capabilities"]["udp_gro"]["forced_off"] is True
    assert d["capabilities"]["udp_gro"]["available"] is False
    assert all(d["capabilities"][n]["available"] is False for n in URING_DEPENDENTS)


def test_caps_text_command():
    r = run_cli("caps", **{ENV_DISABLE: "udp_gro"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [*list(CAPABILITY_NAMES), "gso_max_segments"]
    gro = next(line for line in lines if line.startswith("udp_gro "))
    assert gro.split()[1] == "off" and "disabled by BURSTIO_DISABLE" in gro


def test_caps_command_with_unknown_name_fails():
    r = run_cli("caps", **{ENV_DISABLE: "warp_drive"})
    assert r.returncode != 0
    assert "warp_drive" in r.stderr
