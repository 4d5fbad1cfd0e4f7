"""burstio.napi.doctor (`burstio doctor`): it reads the host and changes nothing
without --apply; with --apply in a burstio lab (root) it sets what it
recommends. Nothing here measures time.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import burstio
from burstio.napi import doctor, netdev
from support.paths import ROOT
from support.proc import subprocess_env
from support.variants import set_disable


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


# ---- the UDP receive path, from fake /proc content -----------------------------------------------

SNMP = """\
Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 1000 3 {errors} 900 {rcvbuf} 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
"""
SNMP6 = ("Ip6InReceives                   \t10\nUdp6InDatagrams                 \t5\n"
         "Udp6InErrors                    \t2\nUdp6RcvbufErrors                \t2\n")
HOST_ONLY = {"busy_poll": 0, "busy_read": 0, "netdev_budget": 300, "netdev_budget_usecs": 8000, "dev_weight": 64}


def fake_proc(root, *, rmem_default=212992, rmem_max=212992, rcvbuf_errors=0, cap_eff=0, inside=False,
              pid1_readable=True):
    """A directory laid out as the parts of /proc the doctor reads."""
    core = root / "sys/net/core"
    core.mkdir(parents=True)
    values = {"rmem_default": rmem_default, "rmem_max": rmem_max, "somaxconn": 4096}
    if not inside:  # the kernel shows these only in the host's namespace
        values |= HOST_ONLY
    for name, v in values.items():
        (core / name).write_text(f"{v}\n")
    (root / "net").mkdir()
    (root / "net/snmp").write_text(SNMP.format(errors=rcvbuf_errors + 1, rcvbuf=rcvbuf_errors))
    (root / "net/snmp6").write_text(SNMP6)
    for d in ("self/ns", "1/ns"):
        (root / d).mkdir(parents=True)
    (root / "self/status").write_text(f"Name:\tpython\nCapEff:\t{cap_eff:016x}\n")
    (root / "self/ns/net").write_text("")
    if pid1_readable:
        if inside:
            (root / "1/ns/net").write_text("")  # another file: another namespace
        else:
            (root / "1/ns/net").symlink_to(root / "self/ns/net")  # the same one
    return root


def examine_fake(monkeypatch, proc):
    monkeypatch.setattr(doctor, "_devices", lambda only: [])  # the devices are not under /proc
    state = doctor.examine(proc=proc)
    return state, doctor.report(state, doctor.recipe(state))


def test_udp_small_buffers_unprivileged(tmp_path, monkeypatch):
    """Kernel defaults, no CAP_NET_ADMIN, drops counted: doctor names what each asker gets,
    the drops, and the sysctl lines that fix it."""
    proc = fake_proc(tmp_path, rcvbuf_errors=17)
    state, text = examine_fake(monkeypatch, proc)
    udp = state["udp"]
    assert state["netns"]["inside"] is False and state["netns"]["hidden"] == []
    assert udp["sysctls"] == {"net.core.rmem_default": 212992, "net.core.rmem_max": 212992}
    assert udp["counters"]["Udp"]["RcvbufErrors"] == 17 and udp["counters"]["Udp"]["InErrors"] == 18
    assert udp["counters"]["Udp6"] == {"InDatagrams": 5, "InErrors": 2, "RcvbufErrors": 2}
    default, soak, rx = udp["asks"]
    assert default["bytes"] is None and default["gets"] == 212992
    assert soak["bytes"] == 4 << 20 and soak["gets"] == 2 * 212992 and "capped" in soak["how"]
    changes = doctor.udp_recipe(udp)
    assert changes[0].startswith("sysctl -w net.core.rmem_default=4194304   # was 212992")
    assert changes[1].startswith(f"sysctl -w net.core.rmem_max={rx['bytes']}   # was 212992")
    assert "/etc/sysctl.d/" in changes[2]
    assert "Udp since boot: RcvbufErrors 17 (receive buffer full), InErrors 18" in text
    assert "BurstSocket.counters['kernel_drops']" in text
    assert "  sysctl -w net.core.rmem_default=4194304" in text
    assert "None" not in text


def test_udp_enough_buffer_privileged(tmp_path, monkeypatch):
    """Buffers of 4 MiB and CAP_NET_ADMIN: everything burstio asks for is granted; nothing to change."""
    proc = fake_proc(tmp_path, rmem_default=4 << 20, rmem_max=4 << 20, cap_eff=1 << 12)
    state, text = examine_fake(monkeypatch, proc)
    assert doctor.udp_recipe(state["udp"]) == []
    assert all("granted" in a["how"] or a["bytes"] is None for a in state["udp"]["asks"])
    assert "the receive buffers hold what burstio asks for: nothing to change" in text


@pytest.mark.parametrize("pid1_readable", [True, False])
def test_udp_inside_a_namespace_says_what_it_cannot_see(tmp_path, monkeypatch, pid1_readable):
    """In a network namespace (told by process 1's namespace, or, where that cannot be read,
    by the host-only sysctls missing): the host-wide values are named as not visible, never
    printed as None, and the counters are the namespace's own."""
    proc = fake_proc(tmp_path, inside=True, pid1_readable=pid1_readable)
    state, text = examine_fake(monkeypatch, proc)
    assert state["netns"]["inside"] is True
    assert state["netns"]["hidden"] == sorted(f"net.core.{n}" for n in HOST_ONLY)
    for name in HOST_ONLY:
        assert (f"  net.core.{name}: host-wide, not visible inside this network namespace "
                f"(on the host: sysctl net.core.{name})") in text
    assert "the buffer sysctls and UDP counters below are this namespace's own" in text
    assert "Udp since the namespace was made:" in text
    assert "None" not in text


def test_udp_cannot_tell_the_namespace(tmp_path, monkeypatch):
    proc = fake_proc(tmp_path, pid1_readable=False)
    (proc / "sys/net/core/somaxconn").unlink()
    state, text = examine_fake(monkeypatch, proc)
    assert state["netns"]["inside"] is None
    assert "network namespace: cannot tell" in text


def test_doctor_in_a_namespace_made_here():
    """`burstio doctor` run in a network namespace this test makes (and removes): it says it is
    inside one, names it, and lists the host-wide sysctls it cannot see instead of None."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip (iproute2) to make a network namespace")
    ns = f"burstio-doctor-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"ip netns add failed: {r.stderr.strip()}")
    try:
        def doctor_in_ns(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "burstio", "doctor", *args],
                                  capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=120)
        r = doctor_in_ns("--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        text = doctor_in_ns()
        assert text.returncode == 0, text.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    netns = out["state"]["netns"]
    assert netns["inside"] is True and netns["name"] == ns
    assert {f"net.core.{n}" for n in ("busy_poll", "busy_read")} <= set(netns["hidden"])
    assert f"inside network namespace {ns}" in text.stdout
    assert "net.core.busy_poll: host-wide, not visible inside this network namespace" in text.stdout
    assert "None" not in text.stdout
    assert isinstance(out["udp_recipe"], list)


def test_a_device_that_goes_away_while_read_is_skipped(monkeypatch):
    """Another process removes a veth between doctor's listing and its reading: that device is
    left out of the report, not a traceback."""
    monkeypatch.setattr(doctor, "_devices", lambda only: ["burstiogone0"])
    state = doctor.examine()
    assert state["devices"] == {}


def test_doctor_names_each_busy_poll_mechanism(monkeypatch):
    """doctor says which of busy_poll()'s mechanisms the kernel has, from
    the capability probe: one forced off reads "no" with the probe's reason,
    in the report and in --json."""
    set_disable(monkeypatch, "epoll_busy_poll")
    m = doctor.mechanisms()
    assert list(m) == ["socket", "epoll", "io_uring"]
    assert m["epoll"] == {"available": False, "detail": "disabled by BURSTIO_DISABLE", "what": "EPIOCSPARAMS",
                          "auto_for": "burstio.aio and an epoll SocketSet (many sockets)"}
    caps = burstio.capabilities()
    assert m["socket"]["available"] == bool(caps.so_busy_poll)
    assert m["io_uring"]["available"] == bool(caps.io_uring_napi)
    text = doctor.report({"kernel": "k", "sysctls": {}, "mechanisms": m, "devices": {}}, [])
    assert ("  epoll    EPIOCSPARAMS         no   burstio.aio and an epoll SocketSet (many sockets) - disabled by "
            "BURSTIO_DISABLE") in text.splitlines()
    r = subprocess.run([sys.executable, "-m", "burstio", "doctor", "--json"], capture_output=True, text=True,
                       env=subprocess_env(BURSTIO_DISABLE="epoll_busy_poll"), cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"]["mechanisms"]["epoll"]["available"] is False
