"""burstio.xdp._bpf: the ELF loader (against the shipped objects and a fresh
compile), maps, program load, BPF links (attach, detach, gone when the
owner is killed), and the privilege errors."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from burstio import _native
from burstio._kernel import BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_XSKMAP, XDP_PASS
from burstio.xdp import _bpf
from support.paths import ROOT
from support.proc import subprocess_env
from support.xdp import needs_xdp, needs_xdp_lab, run_without_caps

PROGRAMS = ("steer", "filter", "pktgen")


@pytest.mark.parametrize("name", PROGRAMS)
def test_shipped_objects_parse(name):
    elf = _bpf.read_elf(_bpf.shipped(name))
    assert elf.license == "Dual MIT/GPL"
    assert len(elf.insns) % 8 == 0 and elf.insns
    names = {m.name for m in elf.maps}
    assert {n for _at, n in elf.relocations} <= names
    for at, _n in elf.relocations:
        assert elf.insns[at * 8] == 0x18  # every relocation patches an ld_imm64
    if name == "steer":
        types = {m.name: m.type for m in elf.maps}
        assert types == {"rules": BPF_MAP_TYPE_ARRAY, "config": BPF_MAP_TYPE_ARRAY,
                         "counters": BPF_MAP_TYPE_PERCPU_ARRAY, "xsks": BPF_MAP_TYPE_XSKMAP}


def test_the_shipped_bytecode_is_what_the_sources_make():
    """scripts/build-bpf.sh makes the shipped objects from the sources:
    every program's instructions, maps, relocations and license agree."""
    clang = shutil.which(os.environ.get("CLANG", "clang"))
    if clang is None:
        pytest.skip("clang is not installed (scripts/bootstrap.sh test installs it): the bytecode check needs it")
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run(["bash", str(ROOT / "scripts" / "build-bpf.sh"), out], capture_output=True, text=True,
                           check=False)
        assert r.returncode == 0, r.stderr
        for name in PROGRAMS:
            fresh = _bpf.read_elf((Path(out) / f"{name}.bpf.o").read_bytes())
            shipped = _bpf.read_elf(_bpf.shipped(name))
            assert fresh == shipped, f"{name}.bpf.o differs from a fresh build: run scripts/build-bpf.sh"


def test_read_elf_refuses_what_it_cannot_load():
    with pytest.raises(ValueError, match="not a little-endian 64-bit ELF object"):
        _bpf.read_elf(b"\x7fELF\x01" + bytes(100))
    with pytest.raises(ValueError, match="no 'tc' section"):
        _bpf.read_elf(_bpf.shipped("filter"), "tc")


def test_possible_cpus():
    assert _bpf.possible_cpus() >= os.cpu_count()


@needs_xdp
def test_load_run_and_maps():
    prog = _bpf.load(_bpf.shipped("filter"), "filter")
    try:
        assert prog.id > 0 and set(prog.maps) == {"rules", "config", "counters"}
        counters = prog.maps["counters"]
        assert counters.per_cpu and counters.cpus == _bpf.possible_cpus()
        # no rules: every frame passes and counts as unmatched (row 32 of slot 0)
        action, out = prog.run(bytes(60))
        assert action == XDP_PASS and out == bytes(60)
        rows = [struct.unpack("<QQ", v) for v in counters.lookup_per_cpu(32)]
        assert sum(p for p, _b in rows) == 1 and sum(b for _p, b in rows) == 60
        counters.update(32, struct.pack("<QQ", 0, 0))
        assert all(v == bytes(16) for v in counters.lookup_per_cpu(32))
        with pytest.raises(ValueError, match="takes 16-byte values, got 3"):
            counters.update(0, b"abc")
        assert prog.maps["config"].lookup(5) is None  # past max_entries
        with pytest.raises(OSError) as e:
            prog.maps["config"].delete(0)  # array elements cannot be deleted
        assert e.value.errno == errno.EINVAL
    finally:
        prog.close()
    assert prog.fd == -1 and all(m.fd == -1 for m in prog.maps.values())


@needs_xdp
def test_a_refused_program_says_why_with_the_verifier_log():
    bad = bytes([0x95, 0, 0, 0, 0, 0, 0, 0])  # exit without setting r0
    elf = _bpf.ElfProgram("xdp", bad, "GPL", (), ())
    with pytest.raises(OSError, match=r"(?s)the kernel refused XDP program .bad.: Permission denied.*R0 !read_ok"):
        _bpf.Program(elf, "bad")


def test_bpf_privilege_errors_name_the_capabilities():
    r = run_without_caps(["cap_bpf", "cap_sys_admin", "cap_perfmon"],
                         "from burstio.xdp import Filter\nFilter([])")
    assert r.returncode != 0
    assert "PermissionError" in r.stderr and "needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN)" in r.stderr


def _xdp_prog_id(lab, side):
    r = subprocess.run(lab.command(side, ["ip", "-d", "-j", "link", "show", lab.dev[side]]), capture_output=True,
                       text=True, check=True)
    xdp = json.loads(r.stdout)[0].get("xdp")
    return None if not xdp else xdp.get("prog", {}).get("id")


@needs_xdp_lab
def test_attach_and_detach(burstio_lab):
    lab = burstio_lab
    with lab.inside("b"):
        prog = _bpf.load(_bpf.shipped("filter"), "filter")
        try:
            link = prog.attach(socket.if_nametoindex(lab.dev["b"]), "generic")
            assert _xdp_prog_id(lab, "b") == prog.id
            assert link.id in [x["id"] for x in _bpf.xdp_links()]
            link.detach()
            assert _xdp_prog_id(lab, "b") is None
            with pytest.raises(OSError):
                _native.bpf_fd_by_id("link", 0x7FFFFFFF)
        finally:
            prog.close()


@needs_xdp_lab
def test_the_kernel_detaches_when_the_owner_is_killed(burstio_lab):
    """A BPF link lives as long as its descriptors: SIGKILL the process that
    attached, and the program is gone from the device."""
    lab = burstio_lab
    code = ("import sys, time\n"
            "from burstio.xdp import Filter, Rule\n"
            "f = Filter([Rule(proto='udp')]).attach(sys.argv[1])\n"
            "print(f.link.id, f.describe()['id'], flush=True)\n"
            "time.sleep(600)\n")
    child = subprocess.Popen(lab.command("b", [sys.executable, "-c", code, lab.dev["b"]]), stdout=subprocess.PIPE,
                             text=True, env=subprocess_env())
    try:
        line = child.stdout.readline()
        link_id, prog_id = map(int, line.split())
        assert _xdp_prog_id(lab, "b") == prog_id
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert _xdp_prog_id(lab, "b") is None
    assert link_id not in [x["id"] for x in _bpf.xdp_links()]
