"""Busy polling, NAPI identity, netdev netlink, NAPI steering, the doctor and
the lab (issue 4).

Tests that need NAPI run in a burstio lab (two namespaces joined by a veth
pair with NAPI on, see burstio.testing); they skip without root. Nothing
here measures time.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import burstio
from burstio.napi import busypoll, doctor, netdev
from burstio.napi.busypoll import BusyPollEpoll, EpollParams, napi_id
from burstio._caps import ENV_DISABLE, EPIOCGPARAMS
from burstio.napi.lab import STATE_DIR, Lab, leftover_namespaces
from burstio.napi.reuseport import ReusePortGroup, Worker, queue_steering_program
from burstio.apps.sockperf import FLAG_CLIENT, FLAG_PONG_REQUEST, HEADER, SUSPEND_NAPI, SockperfServer
from burstio.testing import lab_or_skip
from conftest import ROOT, subprocess_env


def need(cap: str) -> None:
    c = burstio.capabilities()[cap]
    if not c.available:
        pytest.skip(f"kernel lacks {cap}: {c.detail}")


def recv_exactly(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    return sock.recv(65536)


# ---- per-epoll busy poll and the socket options ------------------------------------


def test_epoll_params_round_trip():
    need("epoll_busy_poll")
    with BusyPollEpoll(25, 16, True) as ep:
        assert ep.get_params() == EpollParams(25, 16, True)
        ep.set_params(7)
        assert ep.get_params() == EpollParams(7, 0, False)
        ep.set_params(0, 64, False)
        assert ep.get_params() == EpollParams(0, 64, False)
        # the kernel's own view, read without the wrapper
        raw = bytearray(8)
        fcntl.ioctl(ep.fileno(), EPIOCGPARAMS, raw)
        assert struct.unpack("IHBB", raw)[:3] == (0, 64, 0)
    assert ep.closed


def test_epoll_params_bad_arguments():
    need("epoll_busy_poll")
    with pytest.raises(TypeError, match="busy_poll_usecs must be int, got str"):
        BusyPollEpoll("5")
    with pytest.raises(ValueError, match="busy_poll_usecs must be between 0 and 2147483647, got -1"):
        BusyPollEpoll(-1)
    with pytest.raises(ValueError, match="busy_poll_budget must be between 0 and 65535, got 65536"):
        BusyPollEpoll(5, 65536)
    with BusyPollEpoll() as ep, pytest.raises(TypeError, match="busy_poll_budget must be int, got bool"):
        ep.set_params(5, True)


def test_epoll_busy_poll_still_delivers_events():
    need("epoll_busy_poll")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx, BusyPollEpoll(20, 8) as ep:
        rx.bind(("127.0.0.1", 0))
        ep.register(rx.fileno())
        assert ep.poll(0.01) == []
        tx.sendto(b"x", rx.getsockname())
        assert ep.poll(5) == [(rx.fileno(), select.EPOLLIN)]


def test_busy_poll_receive_waits_first_for_request_response_traffic():
    """Under epoll busy polling, a receive that found the socket empty makes
    the next one wait before receiving (epoll_wait + recvmmsg, not a third
    call), and a full batch makes the next one receive first again."""
    need("epoll_busy_poll")
    rx = burstio.BurstSocket.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        assert rx.busy_poll(10) == "epoll"
        batch = burstio.PacketBatch(4)

        def calls(receive) -> int:
            before = rx.counters["rx_syscalls"]
            receive()
            return rx.counters["rx_syscalls"] - before

        def late(payload: bytes = b"x") -> None:
            threading.Timer(0.02, tx.sendto, (payload, rx.getsockname())).start()
            assert rx.recv_batch(batch, 5.0) == 1 and bytes(batch[0]) == payload

        def ready(k: int) -> None:
            assert rx.recv_batch(batch, 5.0) == k

        def sequence() -> list[int]:
            seen = [calls(late) for _ in range(3)]
            for _ in range(5):
                tx.sendto(b"ready", rx.getsockname())
            time.sleep(0.05)
            seen += [calls(lambda: ready(4)), calls(lambda: ready(1)), calls(late), calls(late)]
            return seen

        # the probe's io_uring instances close in the background, and their
        # teardown may interrupt a wait (EINTR, retried: one call more)
        gc.collect()
        want = [2, 2,  # wait, receive (after a first receive that found it empty)
                2, 1,  # waited first (returned at once): a full batch, so receive first (finds one)
                3, 2]  # receive (empty), wait, receive; then wait, receive
        seen = [sequence() for _ in range(3)]
        assert want in [s[1:] for s in seen], seen


def test_socket_options_round_trip():
    need("so_busy_poll")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        busypoll.set_busy_poll(s, 40)
        assert s.getsockopt(socket.SOL_SOCKET, burstio._caps.SO_BUSY_POLL) == 40
        if burstio.capabilities().so_prefer_busy_poll:
            busypoll.set_prefer_busy_poll(s, True)
            assert s.getsockopt(socket.SOL_SOCKET, burstio._caps.SO_PREFER_BUSY_POLL) == 1
        if burstio.capabilities().so_busy_poll_budget:
            busypoll.set_busy_poll_budget(s, 16)  # (the kernel has no getsockopt for it)
        with pytest.raises(ValueError, match="usecs must be between 0 and 2147483647, got -5"):
            busypoll.set_busy_poll(s, -5)
        with pytest.raises(TypeError, match="budget must be int, got float"):
            busypoll.set_busy_poll_budget(s, 1.0)


def test_napi_id_is_zero_over_loopback():
    need("so_incoming_napi_id")
    rx = burstio.BurstSocket.bind(("127.0.0.1", 0))
    with rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(b"x", rx.getsockname())
        assert rx.recv_batch(burstio.PacketBatch(4, 64), 5) == 1
        assert napi_id(rx) == 0 == napi_id(rx.sock) == napi_id(rx.fileno())
    with pytest.raises(TypeError, match="need a socket or a file descriptor, got str"):
        napi_id("eth0")
    with pytest.raises(OSError) as ei:
        napi_id(-1)
    assert ei.value.errno == errno.EBADF


def test_busy_poll_without_any_mechanism_is_an_error(monkeypatch):
    monkeypatch.setenv(ENV_DISABLE, "epoll_busy_poll,so_busy_poll")
    with burstio.BurstSocket.bind(("127.0.0.1", 0)) as s:
        with pytest.raises(OSError, match="busy polling needs EPIOCSPARAMS") as ei:
            s.busy_poll(10)
        assert ei.value.errno == errno.EOPNOTSUPP
        assert s.busy_polling == "off"


@pytest.mark.parametrize("backend", ["epoll", "uring"])
def test_ring_busy_poll(backend):
    need("epoll_busy_poll")
    if backend == "uring":
        need("io_uring")
    with burstio.SocketSet(backend=backend) as ring, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        s.bind(("127.0.0.1", 0))
        ring.add(s)
        try:
            how = ring.busy_poll(30, 16, True)
        except OSError as e:  # IORING_REGISTER_NAPI missing: the message says which kernel
            pytest.skip(str(e))
        assert how == ("io_uring" if backend == "uring" else "epoll")
        if backend == "epoll":
            raw = bytearray(8)
            fcntl.ioctl(ring._io.epoll_fd, EPIOCGPARAMS, raw)
            assert struct.unpack("IHBB", raw)[:3] == (30, 16, 1)
        b = burstio.PacketBatch(8, 256)
        tx.sendto(b"ring", s.getsockname())
        assert ring.recv_batch(b, 5) == 1 and bytes(b[0]) == b"ring"
        assert ring.busy_poll(0) == "off"
    with pytest.raises(TypeError, match="register_uring_napi needs an io_uring SocketSet"):
        busypoll.register_uring_napi(object(), 10)


# ---- pure helpers: the cBPF program, /proc/interrupts, CLI parsing -------------------


def test_queue_steering_program():
    prog = queue_steering_program(3)
    insns = [struct.unpack_from("HBBI", prog, 8 * i) for i in range(len(prog) // 8)]
    # A = queue_mapping (ancillary load); A %= 3; return A
    assert insns == [(0x20, 0, 0, (-0x1000 + 24) & 0xFFFFFFFF), (0x94, 0, 0, 3), (0x16, 0, 0, 0)]
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"workers must be between 1 and 4096, got {bad}"):
            queue_steering_program(bad)
    for bad in (True, 1.0):
        with pytest.raises(TypeError, match=f"workers must be int, got {type(bad).__name__}"):
            queue_steering_program(bad)


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
    got = netdev.irq_counts("\n".join([header] + lines))
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
    with pytest.raises(ValueError, match=f"NLA_UINT attribute of {len(raw)} bytes \\(want 4 or 8\\)"):
        netdev._uint(raw)


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


def test_serve_napi_settings_argument(capsys):
    from burstio._cli import _napi_settings

    assert _napi_settings("defer_hard_irqs=2,gro_flush_timeout=20000") == {"defer_hard_irqs": 2,
                                                                            "gro_flush_timeout": 20000}
    with pytest.raises(SystemExit):
        burstio._cli.main(["serve", "sockperf", "--napi", "defer_hard_irqs=x"])
    err = capsys.readouterr().err
    assert "expected K=V with K one of defer_hard_irqs, gro_flush_timeout, irq_suspend_timeout" in err
    assert "'defer_hard_irqs=x'" in err


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


def test_lab_arguments():
    with pytest.raises(ValueError, match="lab name must be 1-10 lowercase letters/digits"):
        Lab("Bad-Name")
    with pytest.raises(ValueError, match="lab name must be 1-10"):
        Lab("abcdefghijk")
    with pytest.raises(ValueError, match="queues must be between 1 and 64, got 0"):
        Lab("x", queues=0)
    with pytest.raises(ValueError, match="subnet must be three octets like '10.99.0', got '10.0'"):
        Lab("x", subnet="10.0")
    with pytest.raises(ValueError, match="side must be 'a' or 'b', got 'c'"):
        Lab("x").addr("c")


def test_lab_refused_without_cap_net_admin():
    """`burstio lab up` from a root process whose capabilities lack
    CAP_NET_ADMIN and CAP_SYS_ADMIN: a clear refusal, and nothing made."""
    if not Path("/usr/bin/setpriv").exists():
        pytest.skip("setpriv (util-linux) is not installed")
    r = subprocess.run(["setpriv", "--inh-caps=-net_admin,-sys_admin", "--bounding-set=-net_admin,-sys_admin",
                        sys.executable, "-m", "burstio", "lab", "up", "--name", "nocaps"],
                       capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=60)
    if r.returncode == 0:
        subprocess.run([sys.executable, "-m", "burstio", "lab", "down", "--name", "nocaps"], env=subprocess_env())
    assert r.returncode != 0
    assert "the burstio lab needs CAP_NET_ADMIN and CAP_SYS_ADMIN (run it as root)" in r.stderr
    assert leftover_namespaces("nocaps") == []


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


# ---- in a lab ----------------------------------------------------------------------


def pair_in(lab: Lab, proto: int = socket.SOCK_DGRAM) -> tuple[socket.socket, socket.socket]:
    """(server in b bound to an ephemeral port, client in a)."""
    with lab.inside("b"):
        srv = socket.socket(socket.AF_INET, proto)
        srv.bind((lab.addr("b"), 0))
    with lab.inside("a"):
        cli = socket.socket(socket.AF_INET, proto)
    return srv, cli


def test_lab_napi_ids_seen_by_sockets(burstio_lab):
    lab = burstio_lab
    ids = lab.napi_ids("b")
    assert len(ids) == lab.queues and all(i > 0 for i in ids)
    srv, cli = pair_in(lab)
    with srv, cli:
        cli.sendto(b"hello", srv.getsockname())
        assert recv_exactly(srv) == b"hello"
        assert napi_id(srv) in ids
    status = lab.status()
    assert status["present"] == {"a": True, "b": True}


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


def _steering_group(lab: Lab, proto: str, claims: list[int]) -> ReusePortGroup:
    cpus = sorted(os.sched_getaffinity(0))
    workers = [Worker(cpu=cpus[i % len(cpus)], napi_id=c) for i, c in enumerate(claims)]
    with lab.inside("b"):
        return ReusePortGroup((lab.addr("b"), 0), workers, proto=proto, device=lab.dev["b"])


def _flows(lab: Lab, proto: str, addr: tuple, n: int = 24) -> set:
    """n flows from namespace a, each one request answered; returns the
    client ports."""
    peers = set()
    for i in range(n):
        with lab.inside("a"):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
        with c:
            c.settimeout(5)
            msg = f"flow {i}".encode()
            if proto == "udp":
                c.sendto(msg, addr)
                assert c.recv(100) == msg
            else:
                c.connect(addr)
                c.sendall(msg)
                assert c.recv(100) == msg
            peers.add(c.getsockname()[1])
    return peers


@pytest.fixture
def worker_log(tmp_path):
    """The burstio logger's records, from every process forked meanwhile,
    in a file; yields a function that reads it."""
    path = tmp_path / "burstio.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(process)d %(message)s"))
    logger = logging.getLogger("burstio")
    logger.addHandler(handler)
    try:
        yield lambda: (handler.flush(), path.read_text())[1]
    finally:
        logger.removeHandler(handler)
        handler.close()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_steering_puts_each_flow_on_the_worker_of_its_napi(burstio_lab, proto, worker_log):
    lab = burstio_lab
    ids = lab.napi_ids("b")
    with _steering_group(lab, proto, ids) as group:
        group.start()
        peers = _flows(lab, proto, group.address)
        stats = group.stop()
    seen = [{p[1] for p in s.peers} for s in stats]
    assert set().union(*seen) == peers  # every flow reached a worker ...
    assert sum(len(s) for s in seen) == len(peers)  # ... exactly one
    for s in stats:
        assert s.flows == len(s.peers)
        assert s.mismatched_flows == 0, s
        if s.flows:
            assert s.socket_napi_id == s.claim.napi_id  # its traffic came through the NAPI it claimed
    assert all(s.flows > 0 for s in stats), [s.flows for s in stats]  # 24 flows hash onto both queues
    assert "arrived through NAPI" not in worker_log()


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_steering_reports_flows_from_another_napi(burstio_lab, proto, worker_log):
    lab = burstio_lab
    ids = lab.napi_ids("b")
    with _steering_group(lab, proto, list(reversed(ids))) as group:  # every claim is wrong
        group.start()
        peers = _flows(lab, proto, group.address, n=12)
        stats = group.stop()
    assert sum(s.flows for s in stats) == len(peers)
    for s in stats:
        assert s.mismatched_flows == s.flows
    err = worker_log()
    assert err.count("arrived through NAPI") == len(peers)
    assert f"(claims NAPI {ids[-1]}, CPU" in err


def test_sockperf_server_busy_poll_suspend_tunes_and_restores(burstio_lab):
    need("epoll_busy_poll")
    lab = burstio_lab
    with lab.inside("b"):
        server = SockperfServer(lab.addr("b"), 0, mode="busy-poll-suspend", busy_poll_usecs=20)
        before = {n.id: n for n in netdev.napi_list(lab.dev["b"])}
    if next(iter(before.values())).defer_hard_irqs is None:
        server.close()
        pytest.skip("no per-NAPI settings (Linux >= 6.13)")
    with lab.inside("a"):
        cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t = threading.Thread(target=server.serve_forever, args=(0.05,))
    t.start()
    try:
        with cli:
            for seq in range(50):
                cli.sendto(HEADER.pack(seq, FLAG_CLIENT | FLAG_PONG_REQUEST, 64) + bytes(50), server.address)
                reply = recv_exactly(cli)
                assert HEADER.unpack_from(reply) == (seq, FLAG_PONG_REQUEST, 64)
            assert server.sock.busy_polling == "epoll"
            nid = napi_id(server.sock)
            assert nid in before
            with lab.inside("b"):
                now = netdev.napi_get(nid)
            assert {k: getattr(now, k) for k in SUSPEND_NAPI} == SUSPEND_NAPI
    finally:
        server.stop()
        t.join(10)
    with lab.inside("b"):
        assert {n.id: n for n in netdev.napi_list(lab.dev["b"])} == before  # put back
    assert server.sock.busy_polling == "off"
    server.close()


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


# ---- the lab leaves nothing behind ----------------------------------------------------


def _nothing_left(lab: Lab) -> None:
    assert leftover_namespaces(lab.name) == []
    assert not (STATE_DIR / f"lab-{lab.name}.json").exists()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert lab.dev["a"] not in links and lab.dev["b"] not in links


def test_lab_removed_when_the_block_fails():
    lab = lab_or_skip(queues=1, ifb=True)
    with pytest.raises(RuntimeError, match="test failure"):
        with lab:
            assert sorted(leftover_namespaces(lab.name)) == sorted(lab.ns.values())
            assert (STATE_DIR / f"lab-{lab.name}.json").exists()
            raise RuntimeError("test failure")
    _nothing_left(lab)


def test_lab_removed_when_the_process_is_interrupted():
    lab = lab_or_skip(queues=1)
    code = ("import time\n"
            "from burstio.napi.lab import Lab\n"
            "Lab(%r, queues=1, subnet=%r).up()\n"
            "print('up', flush=True)\n"
            "time.sleep(60)\n") % (lab.name, lab.subnet)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=subprocess_env())
    try:
        assert p.stdout.readline().strip() == "up", p.stderr.read()
        assert sorted(leftover_namespaces(lab.name)) == sorted(lab.ns.values())
        p.send_signal(signal.SIGINT)  # Ctrl-C
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        lab.down()  # in case the test fails: never leave the host changed
    assert p.returncode != 0
    assert "KeyboardInterrupt" in p.stderr.read()
    _nothing_left(lab)


def test_lab_cli_up_status_down():
    lab = lab_or_skip(queues=2)
    env = subprocess_env()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "burstio", "lab", *args, "--name", lab.name],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    try:
        r = cli("up", "--queues", "2")
        assert r.returncode == 0, r.stderr
        made = json.loads(r.stdout)
        assert made["namespaces"] == lab.ns and made["queues"] == 2
        r = cli("status")
        assert r.returncode == 0, r.stderr
        st_ = json.loads(r.stdout)
        assert st_["present"] == {"a": True, "b": True}
        assert len(st_["napi"]["b"]) == 2 and all(st_["napi"]["b"])
        r = cli("up")
        assert r.returncode != 0 and "already exist" in r.stderr
    finally:
        r = cli("down")
    assert r.returncode == 0, r.stderr
    _nothing_left(lab)
