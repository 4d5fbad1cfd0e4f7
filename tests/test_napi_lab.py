"""burstio.napi.lab: the lab (two network namespaces joined by a veth pair with
NAPI on), its arguments, the privileges it needs, what sockets in it see, and
that it leaves nothing behind. Tests that make a lab skip without root.
Nothing here measures time.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from burstio.napi.busypoll import napi_id
from burstio.napi.lab import STATE_DIR, Lab, leftover_namespaces
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


def _nothing_left(lab: Lab) -> None:
    assert leftover_namespaces(lab.name) == []
    assert not (STATE_DIR / f"lab-{lab.name}.json").exists()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert lab.dev["a"] not in links and lab.dev["b"] not in links


def test_lab_removed_when_the_block_fails():
    lab = lab_or_skip(queues=1, ifb=True)
    with pytest.raises(RuntimeError, match="test failure"), lab:
        assert sorted(leftover_namespaces(lab.name)) == sorted(lab.ns.values())
        assert (STATE_DIR / f"lab-{lab.name}.json").exists()
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
