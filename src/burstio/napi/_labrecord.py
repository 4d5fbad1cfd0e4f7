"""The lab's record of what it made, so that it only ever removes that.

A lab writes ``<state dir>/lab-<name>.json`` (``/run/burstio`` unless
``BURSTIO_LAB_STATE`` names another directory) before it makes anything:
who made it (pid and that process's start time, so a reused pid is not
taken for the maker), whether it outlives its maker (``burstio lab up``),
and, as each is made, the identity of every namespace: the device and
inode of ``/run/netns/<ns>`` and the namespace's cookie (SO_NETNS_COOKIE,
never reused while the machine runs). A namespace is the lab's only while
all three still match: a namespace deleted by someone else and made again
under the same name is someone else's.

The record is claimed with O_EXCL (two ``lab up`` of one name: one wins),
rewritten by rename, and read only if this user owns it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._kernel import SO_NETNS_COOKIE

__all__ = ["LabRecord", "NsIdentity", "state_dir", "ns_identity", "process_start", "all_records"]

ENV_STATE = "BURSTIO_LAB_STATE"
NETNS_DIR = Path("/run/netns")
VERSION = 2


def state_dir() -> Path:
    """Where lab records live: $BURSTIO_LAB_STATE, else /run/burstio."""
    return Path(os.environ.get(ENV_STATE) or "/run/burstio")


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot, field 22 of
    /proc/PID/stat), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return int(stat[stat.rindex(")") + 2:].split()[19])


@dataclass(frozen=True)
class NsIdentity:
    """What tells one network namespace from another of the same name."""

    dev: int
    inode: int
    cookie: int | None  # None where the kernel lacks SO_NETNS_COOKIE (Linux < 5.14)

    def as_dict(self) -> dict[str, int | None]:
        return {"dev": self.dev, "inode": self.inode, "cookie": self.cookie}


def _netns_cookie(path: Path) -> int | None:
    from .netdev import entered_netns

    try:
        with entered_netns(os.open(path, os.O_RDONLY)), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    except OSError:
        return None


def ns_identity(ns: str) -> NsIdentity | None:
    """The identity of the namespace /run/netns/<ns> now, or None if there is none."""
    path = NETNS_DIR / ns
    try:
        st = path.stat()
    except OSError:
        return None
    return NsIdentity(st.st_dev, st.st_ino, _netns_cookie(path))


@dataclass
class LabRecord:
    """One lab's record: its settings, its maker, what it made."""

    name: str
    settings: dict[str, Any]
    pid: int = field(default_factory=os.getpid)
    start: int | None = None
    persist: bool = False
    made: dict[str, dict[str, Any]] = field(default_factory=dict)  # ns name -> identity
    veth: dict[str, int] = field(default_factory=dict)  # device -> ifindex, while in this namespace

    def __post_init__(self) -> None:
        if self.start is None and self.pid == os.getpid():
            self.start = process_start(self.pid)

    @property
    def path(self) -> Path:
        return state_dir() / f"lab-{self.name}.json"

    def maker_alive(self) -> bool:
        """Whether the process that made the lab still runs (same pid, same start)."""
        return self.start is not None and process_start(self.pid) == self.start

    def as_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "name": self.name, "settings": self.settings, "pid": self.pid,
                "start": self.start, "persist": self.persist, "made": self.made, "veth": self.veth}

    # ---- on disk -----------------------------------------------------------------

    def claim(self) -> None:
        """Write the record, failing with FileExistsError if one exists."""
        d = state_dir()
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(self.as_dict(), f)

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.as_dict()))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @classmethod
    def load(cls, name: str) -> LabRecord | None:
        """The record of lab ``name``; None if there is none. ValueError if
        it is not this user's or not a lab record."""
        path = state_dir() / f"lab-{name}.json"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        with os.fdopen(fd) as f:
            if os.fstat(f.fileno()).st_uid != os.geteuid():
                raise ValueError(f"{path} is not owned by this user: not a record of ours")
            try:
                d = json.load(f)
                if d.get("version") != VERSION or d["name"] != name:
                    raise ValueError("unknown version or name")
                return cls(d["name"], dict(d["settings"]), int(d["pid"]), d["start"], bool(d["persist"]),
                           dict(d["made"]), dict(d.get("veth", {})))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path} is not a lab record burstio can read ({e})") from None

    # ---- what the lab made --------------------------------------------------------

    def note_made(self, ns: str) -> None:
        """Namespace ns was just made by this lab: record its identity."""
        ident = ns_identity(ns)
        if ident is not None:
            self.made[ns] = ident.as_dict()
            self.save()

    def ours(self, ns: str) -> tuple[bool, str]:
        """Whether /run/netns/<ns> is the namespace this lab made, and if not, why."""
        if ns not in self.made:
            return False, f"{ns}: the lab has no record of making it"
        now = ns_identity(ns)
        if now is None:
            return False, f"{ns}: gone"
        want = self.made[ns]
        if (now.dev, now.inode) != (want["dev"], want["inode"]):
            return False, (f"{ns}: not the namespace lab {self.name} made (inode {want['inode']}, "
                           f"now {now.inode}): someone made it again")
        if want["cookie"] is not None and now.cookie != want["cookie"]:
            return False, (f"{ns}: not the namespace lab {self.name} made (cookie {want['cookie']}, "
                           f"now {now.cookie}): someone made it again")
        return True, ""


def all_records() -> list[str]:
    """The names of the labs that have a record."""
    try:
        paths = sorted(state_dir().glob("lab-*.json"))
    except OSError:
        return []
    return [p.name[len("lab-"):-len(".json")] for p in paths]
