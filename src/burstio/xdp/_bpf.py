"""BPF objects from Python without libbpf: the ELF loader, maps, programs, links.

A program burstio ships (src/burstio/xdp/bpf/*.bpf.c, compiled by
scripts/build-bpf.sh) is an ELF object with its code in section ``xdp``,
its license in ``license`` and each map declared as a ``struct bio_map``
(type, key size, value size, max entries, flags) in section ``maps``. The
loader reads the ELF here, creates each map (``bpf_map_create``), patches
each map's descriptor into the ``ld_imm64`` instructions that the
relocations of ``.relxdp`` name (``BPF_PSEUDO_MAP_FD``), loads the program
and attaches it with a BPF link: the kernel detaches it when the last
descriptor of the link closes, also when the process dies.

Where a frame goes through it: nowhere; the programs loaded here decide
where every frame of the device goes.
"""
from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .. import _native
from .._kernel import (
    BPF_ANY,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_PROG_TYPE_XDP,
    BPF_PSEUDO_MAP_FD,
    BPF_XDP,
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_SKB_MODE,
)

__all__ = ["ElfProgram", "MapSpec", "Map", "Program", "Link", "read_elf", "load", "shipped", "possible_cpus",
           "privilege_error", "BPF_PRIVILEGES"]

BPF_PRIVILEGES = "CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN)"
_LOG_SIZE = 1 << 20
_MAP_DEF = struct.Struct("<5I")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")
SHT_SYMTAB, SHT_REL = 2, 9
STT_SECTION = 3
R_BPF_64_64 = 1
LD_IMM64 = 0x18


def privilege_error(what: str, e: OSError) -> OSError:
    """``e`` reworded when it is a missing privilege (EPERM; the verifier
    says EACCES when it refuses a program)."""
    if e.errno == errno.EPERM:
        return PermissionError(e.errno, f"{what} needs {BPF_PRIVILEGES}: {e.strerror}")
    return e


# ---- the ELF object -----------------------------------------------------------

@dataclass(frozen=True)
class MapSpec:
    """A map as the object declares it."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class ElfProgram:
    """What the loader needs from an object: code, license, maps, and where
    each map's descriptor goes (instruction index -> map name)."""

    name: str
    insns: bytes
    license: str
    maps: tuple[MapSpec, ...]
    relocations: tuple[tuple[int, str], ...]


def _sections(data: bytes) -> list[tuple[str, int, int, int, int, int]]:
    """(name, type, offset, size, link, info) of every section."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian 64-bit ELF object")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    strtab = raw[shstrndx]

    def name(off: int) -> str:
        start = strtab[4] + off
        return data[start:data.index(b"\0", start)].decode()

    return [(name(s[0]), s[1], s[4], s[5], s[6], s[7]) for s in raw]


def read_elf(data: bytes, section: str = "xdp") -> ElfProgram:
    """Parse a burstio BPF object (see the module docstring). ValueError
    names what is missing or not as expected."""
    secs = _sections(data)
    index = {s[0]: i for i, s in enumerate(secs)}
    for need in (section, "license", ".symtab"):
        if need not in index:
            raise ValueError(f"the BPF object has no {need!r} section")
    _n, _t, off, size, _l, _i = secs[index[section]]
    insns = data[off:off + size]
    lic = data[secs[index["license"]][2]:secs[index["license"]][2] + secs[index["license"]][3]]
    sym_sec = secs[index[".symtab"]]
    str_off = secs[sym_sec[4]][2]
    syms = [_SYM.unpack_from(data, sym_sec[2] + k * _SYM.size) for k in range(sym_sec[3] // _SYM.size)]

    def sym_name(k: int) -> str:
        start = str_off + syms[k][0]
        return data[start:data.index(b"\0", start)].decode()

    maps_idx = index.get("maps", -1)
    maps: dict[int, MapSpec] = {}  # by offset in "maps"
    if maps_idx >= 0:
        base = secs[maps_idx][2]
        for k, (_name, info, _other, shndx, value, _size) in enumerate(syms):
            if shndx == maps_idx and info & 0xF != STT_SECTION:
                maps[value] = MapSpec(sym_name(k), *_MAP_DEF.unpack_from(data, base + value))
    relocs = []
    rel_idx = index.get(f".rel{section}", -1)
    if rel_idx >= 0:
        _n, _t, roff, rsize, _l, _i = secs[rel_idx]
        for k in range(rsize // _REL.size):
            r_off, r_info = _REL.unpack_from(data, roff + k * _REL.size)
            sym, kind = r_info >> 32, r_info & 0xFFFFFFFF
            at = r_off // 8
            if kind != R_BPF_64_64 or insns[at * 8] != LD_IMM64:
                raise ValueError(f"relocation {k} of {section!r} is not a map reference (type {kind})")
            _name, info, _other, shndx, value, _size = syms[sym]
            if shndx != maps_idx:
                raise ValueError(f"relocation {k} of {section!r} points outside section 'maps' (global data "
                                 "is not supported)")
            if info & 0xF == STT_SECTION:  # section-relative: the offset is in the instruction
                value += struct.unpack_from("<i", insns, at * 8 + 4)[0]
            relocs.append((at, maps[value].name))
    return ElfProgram(section, insns, lic.rstrip(b"\0").decode(), tuple(maps.values()), tuple(relocs))


def shipped(name: str) -> bytes:
    """The compiled object of a program burstio ships (``steer``, ``filter``, ``pktgen``)."""
    return (resources.files("burstio.xdp") / "bpf" / f"{name}.bpf.o").read_bytes()


# ---- maps ---------------------------------------------------------------------

def possible_cpus() -> int:
    """CPUs a per-CPU map has a slot for (/sys/devices/system/cpu/possible)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _sep, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


class Map:
    """A BPF map this process made (its descriptor closes with ``close()``)."""

    def __init__(self, spec: MapSpec):
        self.spec = spec
        try:
            self.fd: int = _native.bpf_map_create(spec.type, spec.key_size, spec.value_size, spec.max_entries,
                                                  spec.flags, spec.name[:15])
        except OSError as e:
            raise privilege_error(f"creating BPF map {spec.name!r}", e) from None
        self.per_cpu = spec.type == BPF_MAP_TYPE_PERCPU_ARRAY
        self.cpus = possible_cpus() if self.per_cpu else 1
        self._stride = (spec.value_size + 7) & ~7

    def key(self, key: int | bytes) -> bytes:
        return key.to_bytes(self.spec.key_size, "little") if isinstance(key, int) else key

    def lookup(self, key: int | bytes) -> bytes | None:
        """The value (one CPU's value for a plain map), or None."""
        return _native.bpf_map_lookup(self.fd, self.key(key), self._stride * self.cpus)

    def lookup_per_cpu(self, key: int | bytes) -> list[bytes]:
        """Every CPU's value of a per-CPU map."""
        raw = self.lookup(key) or b""
        return [raw[i * self._stride:i * self._stride + self.spec.value_size] for i in range(self.cpus)]

    def update(self, key: int | bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Set the value (for a per-CPU map: the same on every CPU)."""
        if len(value) != self.spec.value_size:
            raise ValueError(f"map {self.spec.name!r} takes {self.spec.value_size}-byte values, got {len(value)}")
        if self.per_cpu:
            value = b"".join(value.ljust(self._stride, b"\0") for _ in range(self.cpus))
        _native.bpf_map_update(self.fd, self.key(key), value, flags)

    def delete(self, key: int | bytes) -> bool:
        return _native.bpf_map_delete(self.fd, self.key(key))

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __repr__(self) -> str:
        return f"<Map {self.spec.name} fd={self.fd}>"


# ---- programs and links ---------------------------------------------------------

class Link:
    """An attached program: the kernel detaches it when ``close()`` (or this
    process's end) closes the last descriptor of the link."""

    def __init__(self, fd: int, ifindex: int, mode: str):
        self.fd, self.ifindex, self.mode = fd, ifindex, mode

    @property
    def id(self) -> int:
        return int(_native.bpf_link_info(self.fd)["id"])

    def detach(self) -> None:
        """Detach now (BPF_LINK_DETACH) and close the link."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                _native.bpf_link_detach(self.fd)
        self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __repr__(self) -> str:
        return f"<Link fd={self.fd} ifindex={self.ifindex} mode={self.mode}>"


MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


class Program:
    """A loaded XDP program and the maps it uses (``maps[name]``)."""

    def __init__(self, elf: ElfProgram, name: str, flags: int = 0):
        self.name = name
        self.maps: dict[str, Map] = {}
        try:
            for spec in elf.maps:
                self.maps[spec.name] = Map(spec)
            insns = bytearray(elf.insns)
            for at, map_name in elf.relocations:
                insns[at * 8 + 1] = (insns[at * 8 + 1] & 0x0F) | (BPF_PSEUDO_MAP_FD << 4)
                struct.pack_into("<i", insns, at * 8 + 4, self.maps[map_name].fd)
                struct.pack_into("<i", insns, at * 8 + 12, 0)
            try:
                self.fd, _log = _native.bpf_prog_load(BPF_PROG_TYPE_XDP, bytes(insns), elf.license, name[:15],
                                                      BPF_XDP, flags, _LOG_SIZE)
            except OSError as e:
                log = getattr(e, "log", "")
                err = privilege_error(f"loading XDP program {name!r}", e)
                if err is e and log:
                    err = OSError(e.errno, f"the kernel refused XDP program {name!r}: {e.strerror}\n"
                                           f"{log[-4000:]}")
                raise err from None
        except BaseException:
            self.close()
            raise
        self.links: list[Link] = []

    def attach(self, ifindex: int, mode: str) -> Link:
        """Attach with a BPF link in mode "native" or "generic" (OSError as
        the kernel says: EOPNOTSUPP, EBUSY when a program is attached)."""
        try:
            fd = _native.bpf_link_create(self.fd, ifindex, BPF_XDP, MODE_FLAGS[mode])
        except OSError as e:
            raise privilege_error(f"attaching XDP program {self.name!r}", e) from None
        link = Link(fd, ifindex, mode)
        self.links.append(link)
        return link

    def run(self, frame: bytes, ifindex: int = 0, queue: int = 0) -> tuple[int, bytes]:
        """Run the program once on a copy of ``frame`` (BPF_PROG_RUN): the
        XDP action and the frame as the program left it."""
        ret, _ns, out = _native.bpf_prog_run(self.fd, frame, 1, 0, 0, ifindex, queue, max(len(frame), 64) + 256)
        return ret, out or b""

    @property
    def id(self) -> int:
        return int(_native.bpf_prog_info(self.fd)["id"])

    def close(self) -> None:
        """Detach every link and close the program and its maps."""
        for link in getattr(self, "links", []):
            link.close()
        fd, self.fd = getattr(self, "fd", -1), -1
        if fd >= 0:
            os.close(fd)
        for m in self.maps.values():
            m.close()

    def __repr__(self) -> str:
        return f"<Program {self.name} fd={self.fd}>"


def load(obj: bytes, name: str, flags: int = 0) -> Program:
    """Load the program of a burstio BPF object (bytes of the ELF file);
    flags are BPF_PROG_LOAD's prog_flags (BPF_F_XDP_HAS_FRAGS)."""
    return Program(read_elf(obj), name, flags)


def xdp_links() -> Iterator[dict[str, int]]:
    """Every XDP BPF link of this host: {'id', 'prog_id', 'ifindex'} (ifindex
    in the namespace that made it)."""
    start = 0
    while (lid := _native.bpf_next_id("link", start)) is not None:
        start = lid
        try:
            fd = _native.bpf_fd_by_id("link", lid)
        except OSError:
            continue  # gone meanwhile
        try:
            info = _native.bpf_link_info(fd)
        finally:
            os.close(fd)
        if info["ifindex"]:
            yield {"id": lid, "prog_id": info["prog_id"], "ifindex": info["ifindex"]}
