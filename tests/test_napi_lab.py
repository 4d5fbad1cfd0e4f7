"""burstio.napi.lab: the lab (two network namespaces joined by a veth pair with
NAPI on), its arguments, the privileges it needs, what sockets in it see,
that it leaves nothing behind, and that it removes only what it made (its
record, namespaces of the same names made by someone else, stale records).
Tests that make a lab or a namespace skip without root, and remove what they
made. Nothing here measures time.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from burstio.napi._labrecord import ENV_STATE, LabRecord, state_dir
from burstio.napi.busypoll import napi_id
from burstio.napi.lab import Lab, LabError, down_all, leftover_namespaces
from burstio.testing import lab_or_skip
from support.net import recv_one
from support.paths import ROOT
from support.proc import subprocess_env


def test_lab_arguments():
    with pytest.raises(ValueError, match="lab name must be 1-10 lowercase letters/digits"):
        Lab("Bad-Name")
    with pytest.raises(ValueError, match="lab name must be 1-10"):
        Lab("abcdefghijk")
    with pytest.raises(ValueError, match="queues must be between 1 and 64, got 0"):
        Lab("x", queues=0)
    with pytest.raises(ValueError, match=re.escape("subnet must be three octets like '10.99.0', got '10.0'")):
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
        assert recv_one(srv) == b"hello"
        assert napi_id(srv) in ids
    status = lab.status()
    assert status["present"] == {"a": True, "b": True}


# ---- the lab leaves nothing behind ----------------------------------------------------


def _record_path(name: str) -> Path:
    return state_dir() / f"lab-{name}.json"


def _remove_if_left(name: str) -> None:
    """Remove lab ``name`` if it is still there (a failing test must not leave the host changed)."""
    with contextlib.suppress(LabError):
        Lab.load(name).down()


def _nothing_left(lab: Lab) -> None:
    assert leftover_namespaces(lab.name) == []
    assert not _record_path(lab.name).exists()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert lab.dev["a"] not in links and lab.dev["b"] not in links


def test_lab_removed_when_the_block_fails():
    lab = lab_or_skip(queues=1, ifb=True)
    with pytest.raises(RuntimeError, match="test failure"), lab:
        assert sorted(leftover_namespaces(lab.name)) == sorted(lab.ns.values())
        assert _record_path(lab.name).exists()
        raise RuntimeError("test failure")
    _nothing_left(lab)


def test_lab_removed_when_the_process_is_interrupted():
    lab = lab_or_skip(queues=1)
    code = ("import time\n"
            "from burstio.napi.lab import Lab\n"
            f"Lab({lab.name!r}, queues=1, subnet={lab.subnet!r}).up()\n"
            "print('up', flush=True)\n"
            "time.sleep(60)\n")
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
        _remove_if_left(lab.name)  # in case the test fails: never leave the host changed
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
        r = cli("up", "--queues", "2", "--json")
        assert r.returncode == 0, r.stderr
        made = json.loads(r.stdout)
        assert made["namespaces"] == lab.ns and made["queues"] == 2
        r = cli("status", "--json")
        assert r.returncode == 0, r.stderr
        st_ = json.loads(r.stdout)
        assert st_["present"] == {"a": True, "b": True}
        assert len(st_["napi"]["b"]) == 2 and all(st_["napi"]["b"])
        r = cli("status")  # for people: the state, each side's namespace, device, address and NAPI IDs
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == f"lab {lab.name}: up; 2 queues per veth, MTU 1500"
        for side in ("a", "b"):
            assert (f"  {side}: namespace {lab.ns[side]}, device {lab.dev[side]}, address {st_['addresses'][side]}, "
                    f"NAPI IDs {st_['napi'][side]}") in lines
        r = cli("up")
        assert r.returncode != 0 and f"lab {lab.name} is up" in r.stderr
    finally:
        r = cli("down", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"removed": [lab.name], "left_alone": []}
    _nothing_left(lab)


# ---- the lab removes only what it made ------------------------------------------------


@pytest.fixture
def private_records(tmp_path, monkeypatch) -> Path:
    """Lab records in a directory of this test's own, so that `lab down --all`
    here sees only the labs this test made (never another user's)."""
    d = tmp_path / "records"
    monkeypatch.setenv(ENV_STATE, str(d))
    return d


@contextlib.contextmanager
def foreign_namespaces(*names: str):
    """Namespaces made by "someone else" (this test, with `ip netns add`),
    deleted afterwards whatever happens."""
    made = []
    try:
        for ns in names:
            r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"ip netns add {ns} failed: {r.stderr.strip()}")
            made.append(ns)
        yield
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def lab_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burstio", "lab", *args], capture_output=True, text=True,
                          env=subprocess_env(), cwd=ROOT, timeout=120)


def test_down_leaves_alone_namespaces_it_did_not_make(private_records):
    name = lab_or_skip().name  # a name no lab uses; skips without root
    with foreign_namespaces(f"{name}-a", f"{name}-b"):
        r = lab_cli("down", "--all")
        assert r.returncode == 0, r.stderr
        assert f"left alone: {name}-a, {name}-b: no record that burstio made them" in r.stderr
        r = lab_cli("down", "--name", name)
        assert r.returncode == 1
        assert f"no record of a lab named '{name}'" in r.stderr and "burstio removes only what it made" in r.stderr
        assert f"left alone: {name}-a: the lab has no record of making it" in r.stderr
        assert sorted(leftover_namespaces(name)) == [f"{name}-a", f"{name}-b"]
        r = lab_cli("up", "--name", name)
        assert r.returncode == 1 and "already exist and lab" in r.stderr and "did not make them" in r.stderr
        assert sorted(leftover_namespaces(name)) == [f"{name}-a", f"{name}-b"]


def test_down_removes_its_own_and_not_one_made_again_by_someone_else(private_records):
    lab = lab_or_skip(queues=1)
    try:
        assert lab_cli("up", "--name", lab.name, "--queues", "1").returncode == 0
        record = LabRecord.load(lab.name)
        assert record is not None and sorted(record.made) == sorted(lab.ns.values())
        # someone deletes namespace a and makes one of the same name
        subprocess.run(["ip", "netns", "del", lab.ns["a"]], check=True)
        with foreign_namespaces(lab.ns["a"]):
            r = lab_cli("down", "--name", lab.name)
            assert r.returncode == 0, r.stderr
            assert f"left alone: {lab.ns['a']}: not the namespace lab {lab.name} made" in r.stderr
            assert leftover_namespaces(lab.name) == [lab.ns["a"]]  # b, the lab's, is gone; a is someone else's
            assert not _record_path(lab.name).exists()  # nothing of the lab's is left to remember
    finally:
        _remove_if_left(lab.name)
    assert leftover_namespaces(lab.name) == []


def test_a_stale_record_is_handled(private_records):
    """A process that made a lab is killed (no atexit): its record names a
    process that is gone. `lab up` of that name refuses, saying so; `lab
    down --all` removes it. A record whose namespaces are gone too is
    replaced by the next `lab up`."""
    lab = lab_or_skip(queues=1)
    code = ("import os, signal\n"
            "from burstio.napi.lab import Lab\n"
            f"Lab({lab.name!r}, queues=1, subnet={lab.subnet!r}).up()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                           timeout=120)
        assert p.returncode == -signal.SIGKILL, p.stderr
        record = LabRecord.load(lab.name)
        assert record is not None and not record.maker_alive()
        assert sorted(leftover_namespaces(lab.name)) == sorted(lab.ns.values())
        r = lab_cli("up", "--name", lab.name)
        assert r.returncode == 1
        assert f"lab {lab.name} is up (left by process {record.pid}, which is gone)" in r.stderr
        r = lab_cli("down", "--all")
        assert r.returncode == 0 and f"lab {lab.name}: down" in r.stdout, r.stderr
        assert leftover_namespaces(lab.name) == [] and not _record_path(lab.name).exists()
        # a record whose maker and namespaces are all gone does not stop a new lab
        record.claim()
        r = lab_cli("up", "--name", lab.name, "--queues", "1")
        assert r.returncode == 0, r.stderr
        assert LabRecord.load(lab.name).pid != record.pid
    finally:
        _remove_if_left(lab.name)
    assert leftover_namespaces(lab.name) == []


def test_down_all_leaves_a_lab_in_use(private_records):
    """A lab made by a live process (a ``Lab`` in a test, here this one) is
    not removed by `lab down --all` from elsewhere; its maker removes it."""
    with lab_or_skip(queues=1) as lab:
        r = lab_cli("down", "--all")
        assert r.returncode == 0, r.stderr
        assert f"left alone: lab {lab.name}: in use by process {os.getpid()}, which made it" in r.stderr
        assert sorted(leftover_namespaces(lab.name)) == sorted(lab.ns.values())
        assert down_all() == ([lab.name], [])  # from its maker: removed
    assert leftover_namespaces(lab.name) == []


def test_a_forked_child_does_not_remove_its_parents_lab():
    """A child forked from the lab's maker exits normally (running the atexit
    handlers it inherited): the parent's lab stays."""
    lab = lab_or_skip(queues=1)
    code = ("import os, sys\n"
            "from burstio.napi.lab import Lab\n"
            f"lab = Lab({lab.name!r}, queues=1, subnet={lab.subnet!r}).up()\n"
            "if os.fork() == 0:\n"
            "    sys.exit(0)\n"
            "os.wait()\n"
            "print(os.path.exists('/run/netns/' + lab.ns['a']), flush=True)\n"
            "lab.down()\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "True"
    finally:
        _remove_if_left(lab.name)
    assert leftover_namespaces(lab.name) == []
