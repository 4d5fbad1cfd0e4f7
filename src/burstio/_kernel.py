"""Kernel constants: the one place Python code takes them from.

The values are those the C extension was compiled with (csrc/core/constants.c
exports them; csrc/core/compat.h supplies the ones older headers lack), so
Python and C can never disagree. Names the socket module also has are the
same numbers there; tests/test_constants.py checks that.
"""
from __future__ import annotations

import struct

from . import _native

__all__ = [
    "SOL_UDP", "UDP_SEGMENT", "UDP_GRO", "SO_TIMESTAMPNS", "SCM_TIMESTAMPNS", "SO_RXQ_OVFL", "SO_MEMINFO",
    "SK_MEMINFO_DROPS", "SK_MEMINFO_VARS", "SO_BUSY_POLL", "SO_INCOMING_NAPI_ID", "SO_ZEROCOPY", "MSG_ZEROCOPY",
    "SO_PREFER_BUSY_POLL", "SO_BUSY_POLL_BUDGET", "SO_RCVBUFFORCE", "SO_SNDBUFFORCE", "SO_NO_CHECK", "AF_XDP",
    "EPIOCSPARAMS", "EPIOCGPARAMS", "EPOLL_PARAMS", "SO_ATTACH_REUSEPORT_CBPF", "IP_PKTINFO", "IPV6_RECVPKTINFO",
    "IPV6_PKTINFO", "IP_RECVTOS", "IP_TOS", "IPV6_RECVTCLASS", "IPV6_TCLASS", "IP_MTU_DISCOVER",
    "IPV6_MTU_DISCOVER", "IP_PMTUDISC_DO", "IPV6_PMTUDISC_DO", "IP_MTU", "IPV6_MTU", "SO_TXTIME", "SCM_TXTIME",
    "SIOCGSKNS", "SIOCINQ", "SIOCOUTQ", "CLONE_NEWNET", "SO_NETNS_COOKIE",
    # XDP and AF_XDP
    "SOL_XDP", "XDP_SHARED_UMEM", "XDP_COPY", "XDP_ZEROCOPY", "XDP_USE_NEED_WAKEUP", "XDP_USE_SG", "XDP_PKT_CONTD",
    "XDP_MAX_TX_SKB_BUDGET", "XDP_PACKET_HEADROOM", "BPF_MAP_TYPE_HASH", "BPF_MAP_TYPE_ARRAY",
    "BPF_MAP_TYPE_PERCPU_ARRAY", "BPF_MAP_TYPE_XSKMAP", "BPF_PROG_TYPE_XDP", "BPF_XDP", "BPF_LINK_TYPE_XDP",
    "BPF_PSEUDO_MAP_FD", "BPF_ANY", "BPF_NOEXIST", "BPF_EXIST", "BPF_F_TEST_XDP_LIVE_FRAMES", "BPF_F_XDP_HAS_FRAGS",
    "XDP_FLAGS_SKB_MODE",
    "XDP_FLAGS_DRV_MODE", "XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT",
]

SOL_UDP: int = _native.SOL_UDP
UDP_SEGMENT: int = _native.UDP_SEGMENT
UDP_GRO: int = _native.UDP_GRO
SO_TIMESTAMPNS: int = _native.SO_TIMESTAMPNS
SCM_TIMESTAMPNS: int = _native.SCM_TIMESTAMPNS
SO_RXQ_OVFL: int = _native.SO_RXQ_OVFL
SO_MEMINFO: int = _native.SO_MEMINFO
SK_MEMINFO_DROPS: int = _native.SK_MEMINFO_DROPS
SK_MEMINFO_VARS: int = _native.SK_MEMINFO_VARS
SO_BUSY_POLL: int = _native.SO_BUSY_POLL
SO_INCOMING_NAPI_ID: int = _native.SO_INCOMING_NAPI_ID
SO_ZEROCOPY: int = _native.SO_ZEROCOPY
MSG_ZEROCOPY: int = _native.MSG_ZEROCOPY
SO_PREFER_BUSY_POLL: int = _native.SO_PREFER_BUSY_POLL
SO_BUSY_POLL_BUDGET: int = _native.SO_BUSY_POLL_BUDGET
SO_RCVBUFFORCE: int = _native.SO_RCVBUFFORCE
SO_SNDBUFFORCE: int = _native.SO_SNDBUFFORCE
SO_NO_CHECK: int = _native.SO_NO_CHECK
AF_XDP: int = _native.AF_XDP
EPIOCSPARAMS: int = _native.EPIOCSPARAMS
EPIOCGPARAMS: int = _native.EPIOCGPARAMS
#: struct epoll_params: busy_poll_usecs u32, busy_poll_budget u16, prefer_busy_poll u8, pad u8
EPOLL_PARAMS = struct.Struct("IHBB")
SO_ATTACH_REUSEPORT_CBPF: int = _native.SO_ATTACH_REUSEPORT_CBPF
IP_PKTINFO: int = _native.IP_PKTINFO
IPV6_RECVPKTINFO: int = _native.IPV6_RECVPKTINFO
IPV6_PKTINFO: int = _native.IPV6_PKTINFO
IP_RECVTOS: int = _native.IP_RECVTOS
IP_TOS: int = _native.IP_TOS
IPV6_RECVTCLASS: int = _native.IPV6_RECVTCLASS
IPV6_TCLASS: int = _native.IPV6_TCLASS
IP_MTU_DISCOVER: int = _native.IP_MTU_DISCOVER
IPV6_MTU_DISCOVER: int = _native.IPV6_MTU_DISCOVER
IP_PMTUDISC_DO: int = _native.IP_PMTUDISC_DO
IPV6_PMTUDISC_DO: int = _native.IPV6_PMTUDISC_DO
IP_MTU: int = _native.IP_MTU
IPV6_MTU: int = _native.IPV6_MTU
SO_TXTIME: int = _native.SO_TXTIME
SCM_TXTIME: int = _native.SCM_TXTIME

# XDP and AF_XDP: socket options, bind and descriptor flags, BPF objects, XDP actions
SOL_XDP: int = _native.SOL_XDP
XDP_SHARED_UMEM: int = _native.XDP_SHARED_UMEM
XDP_COPY: int = _native.XDP_COPY
XDP_ZEROCOPY: int = _native.XDP_ZEROCOPY
XDP_USE_NEED_WAKEUP: int = _native.XDP_USE_NEED_WAKEUP
XDP_USE_SG: int = _native.XDP_USE_SG
XDP_PKT_CONTD: int = _native.XDP_PKT_CONTD
XDP_MAX_TX_SKB_BUDGET: int = _native.XDP_MAX_TX_SKB_BUDGET
XDP_PACKET_HEADROOM: int = _native.XDP_PACKET_HEADROOM
BPF_MAP_TYPE_HASH: int = _native.BPF_MAP_TYPE_HASH
BPF_MAP_TYPE_ARRAY: int = _native.BPF_MAP_TYPE_ARRAY
BPF_MAP_TYPE_PERCPU_ARRAY: int = _native.BPF_MAP_TYPE_PERCPU_ARRAY
BPF_MAP_TYPE_XSKMAP: int = _native.BPF_MAP_TYPE_XSKMAP
BPF_PROG_TYPE_XDP: int = _native.BPF_PROG_TYPE_XDP
BPF_XDP: int = _native.BPF_XDP
BPF_LINK_TYPE_XDP: int = _native.BPF_LINK_TYPE_XDP
BPF_PSEUDO_MAP_FD: int = _native.BPF_PSEUDO_MAP_FD
BPF_ANY: int = _native.BPF_ANY
BPF_NOEXIST: int = _native.BPF_NOEXIST
BPF_EXIST: int = _native.BPF_EXIST
BPF_F_TEST_XDP_LIVE_FRAMES: int = _native.BPF_F_TEST_XDP_LIVE_FRAMES
BPF_F_XDP_HAS_FRAGS: int = _native.BPF_F_XDP_HAS_FRAGS
XDP_FLAGS_SKB_MODE: int = _native.XDP_FLAGS_SKB_MODE
XDP_FLAGS_DRV_MODE: int = _native.XDP_FLAGS_DRV_MODE
XDP_ABORTED: int = _native.XDP_ABORTED
XDP_DROP: int = _native.XDP_DROP
XDP_PASS: int = _native.XDP_PASS
XDP_TX: int = _native.XDP_TX
XDP_REDIRECT: int = _native.XDP_REDIRECT

# ioctls and flags the extension does not use (the socket module lacks them)
#: a socket's network namespace, as a descriptor (Linux >= 4.9)
SIOCGSKNS = 0x894C
#: FIONREAD on a socket: bytes received, not yet read
SIOCINQ = 0x541B
#: TIOCOUTQ on a socket: bytes the kernel took and the peer has not acknowledged
SIOCOUTQ = 0x5411
#: setns(2): join a network namespace
CLONE_NEWNET = 0x40000000
#: a socket's network namespace cookie, u64, never reused while the machine runs (Linux >= 5.14)
SO_NETNS_COOKIE = 71
