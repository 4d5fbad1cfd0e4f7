"""Kernel constants exported by burstio._native (csrc/core/constants.c).

They are the values the extension was compiled with; the socket module is
the oracle wherever it has the name, and the rest are checked against the
Linux uapi values on the architectures that use the generic socket
numbering.
"""
from __future__ import annotations

import platform
import socket

import pytest

from burstio import _native

NAMES = [
    "SOL_UDP", "UDP_SEGMENT", "UDP_GRO",
    "SO_TIMESTAMPNS", "SCM_TIMESTAMPNS", "SO_RXQ_OVFL", "SO_MEMINFO", "SK_MEMINFO_DROPS", "SK_MEMINFO_VARS",
    "SO_BUSY_POLL", "SO_INCOMING_NAPI_ID", "SO_PREFER_BUSY_POLL", "SO_BUSY_POLL_BUDGET",
    "EPIOCSPARAMS", "EPIOCGPARAMS", "SO_ATTACH_REUSEPORT_CBPF",
    "SO_ZEROCOPY", "MSG_ZEROCOPY",
    "SO_RCVBUFFORCE", "SO_SNDBUFFORCE", "SO_NO_CHECK", "AF_XDP",
    "IP_PKTINFO", "IPV6_RECVPKTINFO", "IPV6_PKTINFO", "IP_RECVTOS", "IP_TOS", "IPV6_RECVTCLASS", "IPV6_TCLASS",
    "IP_MTU_DISCOVER", "IPV6_MTU_DISCOVER", "IP_PMTUDISC_DO", "IPV6_PMTUDISC_DO", "IP_MTU", "IPV6_MTU",
    "SO_TXTIME", "SCM_TXTIME",
    "SOL_XDP", "XDP_SHARED_UMEM", "XDP_COPY", "XDP_ZEROCOPY", "XDP_USE_NEED_WAKEUP", "XDP_USE_SG", "XDP_PKT_CONTD",
    "XDP_MAX_TX_SKB_BUDGET", "XDP_PACKET_HEADROOM", "BPF_MAP_TYPE_HASH", "BPF_MAP_TYPE_ARRAY",
    "BPF_MAP_TYPE_PERCPU_ARRAY", "BPF_MAP_TYPE_XSKMAP", "BPF_PROG_TYPE_XDP", "BPF_XDP", "BPF_LINK_TYPE_XDP",
    "BPF_PSEUDO_MAP_FD", "BPF_ANY", "BPF_NOEXIST", "BPF_EXIST", "BPF_F_TEST_XDP_LIVE_FRAMES", "BPF_F_XDP_HAS_FRAGS",
    "XDP_FLAGS_SKB_MODE",
    "XDP_FLAGS_DRV_MODE", "XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT",
]


def _ioc(direction: int, kind: int, nr: int, size: int) -> int:
    """The generic Linux _IOC encoding (x86, arm, arm64, riscv)."""
    return (direction << 30) | (size << 16) | (kind << 8) | nr


# Linux uapi values where the generic socket numbering applies (asm-generic).
GENERIC_LINUX = {
    "SOL_UDP": 17, "UDP_SEGMENT": 103, "UDP_GRO": 104,
    "SO_TIMESTAMPNS": 35, "SCM_TIMESTAMPNS": 35, "SO_RXQ_OVFL": 40, "SO_MEMINFO": 55,
    "SK_MEMINFO_DROPS": 8, "SK_MEMINFO_VARS": 9,
    "SO_BUSY_POLL": 46, "SO_INCOMING_NAPI_ID": 56, "SO_PREFER_BUSY_POLL": 69, "SO_BUSY_POLL_BUDGET": 70,
    # struct epoll_params is 8 bytes: _IOW(0x8A, 1, ...) and _IOR(0x8A, 2, ...)
    "EPIOCSPARAMS": _ioc(1, 0x8A, 0x01, 8), "EPIOCGPARAMS": _ioc(2, 0x8A, 0x02, 8),
    "SO_ATTACH_REUSEPORT_CBPF": 51, "SO_ZEROCOPY": 60, "MSG_ZEROCOPY": 0x4000000,
    "SO_RCVBUFFORCE": 33, "SO_SNDBUFFORCE": 32, "SO_NO_CHECK": 11, "AF_XDP": 44,
    "IP_PKTINFO": 8, "IPV6_RECVPKTINFO": 49, "IPV6_PKTINFO": 50, "IP_RECVTOS": 13, "IP_TOS": 1,
    "IPV6_RECVTCLASS": 66, "IPV6_TCLASS": 67, "IP_MTU_DISCOVER": 10, "IPV6_MTU_DISCOVER": 23,
    "IP_PMTUDISC_DO": 2, "IPV6_PMTUDISC_DO": 2, "IP_MTU": 14, "IPV6_MTU": 24,
    "SO_TXTIME": 61, "SCM_TXTIME": 61,
    # XDP and AF_XDP (linux/if_xdp.h, linux/bpf.h, linux/if_link.h)
    "SOL_XDP": 283, "XDP_SHARED_UMEM": 1, "XDP_COPY": 2, "XDP_ZEROCOPY": 4, "XDP_USE_NEED_WAKEUP": 8,
    "XDP_USE_SG": 16, "XDP_PKT_CONTD": 1, "XDP_MAX_TX_SKB_BUDGET": 9, "XDP_PACKET_HEADROOM": 256,
    "BPF_MAP_TYPE_HASH": 1, "BPF_MAP_TYPE_ARRAY": 2, "BPF_MAP_TYPE_PERCPU_ARRAY": 6, "BPF_MAP_TYPE_XSKMAP": 17,
    "BPF_PROG_TYPE_XDP": 6, "BPF_XDP": 37, "BPF_LINK_TYPE_XDP": 6, "BPF_PSEUDO_MAP_FD": 1, "BPF_ANY": 0,
    "BPF_NOEXIST": 1, "BPF_EXIST": 2, "BPF_F_TEST_XDP_LIVE_FRAMES": 2, "BPF_F_XDP_HAS_FRAGS": 32,
    "XDP_FLAGS_SKB_MODE": 2,
    "XDP_FLAGS_DRV_MODE": 4, "XDP_ABORTED": 0, "XDP_DROP": 1, "XDP_PASS": 2, "XDP_TX": 3, "XDP_REDIRECT": 4,
}
GENERIC_ARCH = platform.system() == "Linux" and platform.machine() in ("x86_64", "aarch64", "arm64")


@pytest.mark.parametrize("name", NAMES)
def test_exported_as_int(name):
    value = getattr(_native, name)
    assert type(value) is int
    assert value >= 0


@pytest.mark.parametrize("name", [n for n in NAMES if hasattr(socket, n)])
def test_agrees_with_socket_module(name):
    assert getattr(_native, name) == getattr(socket, name)


@pytest.mark.skipif(not GENERIC_ARCH, reason="socket numbering differs from asm-generic on this architecture")
@pytest.mark.parametrize("name", NAMES)
def test_linux_uapi_value(name):
    assert getattr(_native, name) == GENERIC_LINUX[name]


def test_every_expected_name_is_covered():
    assert sorted(GENERIC_LINUX) == sorted(NAMES)
    assert len(set(NAMES)) == len(NAMES)
