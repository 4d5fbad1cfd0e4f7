"""The public surface, pinned: what each public module exports in ``__all__``.

A change to a public module's ``__all__`` changes this file too, on purpose:
adding or removing a public name is an API decision, not a side effect.
Modules whose name (or a parent's) starts with ``_`` are private and not
pinned here.
"""
from __future__ import annotations

import importlib
import pkgutil

import pytest

import burstio

PUBLIC: dict[str, list[str]] = {
    "burstio": [
        "BurstSocket", "Capabilities", "Capability", "Completion", "FLAG_COALESCED", "FLAG_GRO", "FLAG_SEND_ERROR",
        "FLAG_TRUNCATED", "GRO_SLOT_MIN", "MAX_UDP_PAYLOAD", "PacedError", "PacketBatch", "RedundantResult",
        "SendError", "SocketSet", "Unsent", "ZeroCopyBuffer", "ZeroCopyPool", "ZeroCopySender", "capabilities",
    ],
    "burstio.aio": [
        "BatchDatagramProtocol", "BurstDatagramTransport", "create_datagram_endpoint", "install", "installed",
        "uninstall",
    ],
    "burstio.ports": [
        "BROADCAST", "LINGER", "NicPort", "Port", "PortRx", "PortTx", "SLOTS", "SLOT_SIZE", "Switch", "attach",
        "nic_port", "pipe", "publish", "recv_port", "send_port",
    ],
    "burstio.napi": [
        "BUDGET_MAX", "BusyPollEpoll", "EpollParams", "ReusePortGroup", "Worker", "WorkerStats", "napi_id",
        "queue_steering_program", "register_uring_napi", "set_busy_poll", "set_busy_poll_budget",
        "set_prefer_busy_poll",
    ],
    "burstio.napi.busypoll": [
        "BUDGET_MAX", "BusyPollEpoll", "EpollParams", "napi_id", "register_uring_napi", "set_busy_poll",
        "set_busy_poll_budget", "set_prefer_busy_poll",
    ],
    "burstio.napi.netdev": [
        "Device", "NAPI_KNOBS", "Napi", "NetdevError", "Queue", "configure_napi", "device_list", "device_settings",
        "irq_counts", "napi_get", "napi_list", "napi_set", "netns_of", "qstats", "queue_list", "set_device_settings",
    ],
    "burstio.napi.reuseport": ["ReusePortGroup", "Worker", "WorkerStats", "queue_steering_program"],
    "burstio.napi.lab": ["Lab", "LabError", "down_all", "leftover_namespaces", "require_privileges"],
    "burstio.napi.doctor": ["RCVBUF_WANTED", "RECIPE", "apply", "examine", "recipe", "report", "udp_examine",
                            "udp_recipe"],
    "burstio.apps": ["until_signalled"],
    "burstio.apps.dns": ["Answers", "AsyncioResponder", "BurstResponder", "TRANSPORTS", "add_arguments", "answer",
                         "main", "run", "serve"],
    "burstio.apps.quic": [
        "BurstH3Client", "BurstPacing", "BurstQuicProtocol", "H3Client", "H3Server", "PacedH3Server", "TRANSPORTS",
        "add_get_arguments", "add_serve_arguments", "body", "client_configuration", "connect_h3", "main", "run_get",
        "run_serve", "self_signed_certificate", "serve_h3", "server_configuration", "use_transport",
    ],
    "burstio.apps.sockperf": [
        "FLAG_CLIENT", "FLAG_PONG_REQUEST", "FLAG_WARMUP", "HEADER", "MODES", "SUSPEND_NAPI", "SockperfServer",
        "add_arguments", "main", "mark_replies", "run",
    ],
    "burstio.xdp": [
        "FLAG_CONTINUES", "FRAME_SIZES", "Filter", "MAX_RULES", "MODES", "Rule", "RuleCount", "Steer", "Umem",
        "XskSocket",
    ],
    "burstio.xdp.programs": [
        "ATTACH_MODES", "Filter", "MAX_RULES", "Rule", "RuleCount", "Steer", "XdpProgram", "attach_mode", "rules_from",
    ],
    "burstio.xdp.udp": [
        "STATUS_NAMES", "UDP_FRAGMENT", "UDP_F_CSUM_ZERO", "UDP_F_IP_OPTIONS", "UDP_F_PADDED", "UDP_F_VLAN",
        "UDP_IPV6_EXT", "UDP_MALFORMED", "UDP_NOT_IP", "UDP_NOT_UDP", "UDP_OK", "UDP_TRUNCATED", "UdpFrames",
        "UdpSender", "address", "address_of", "frame", "mac_of", "neighbour_mac", "parse",
    ],
    "burstio.xdp.pktgen": ["BATCH_DEFAULT", "BATCH_MAX", "METHODS", "MIN_SIZE", "PktgenResult", "device_counters",
                           "run", "template"],
    "burstio.testing": ["burstio_lab", "lab_or_skip"],
    "burstio.bench": ["LONG", "Options", "SCENARIOS", "run"],
    "burstio.bench.report": [
        "Progress", "ScenarioResult", "Target", "Variant", "format_result", "percentile", "plot", "write_json",
    ],
    "burstio.bench.common": [
        "Options", "count_syscalls", "measure_sends", "pinned", "rounds", "syscall_source", "timed",
    ],
}

#: the public subpackages and modules of burstio, as burstio.SUBMODULES names them
SUBMODULES = ["aio", "apps", "bench", "napi", "ports", "testing", "xdp"]


def _all(name: str) -> list[str]:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    return list(module.__all__)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_all_is_pinned(name: str):
    assert sorted(_all(name)) == PUBLIC[name]


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_name_in_all_exists(name: str):
    module = importlib.import_module(name)
    names = _all(name)
    assert len(names) == len(set(names)), f"{name}.__all__ lists a name twice"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module lacks: {missing}"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_no_public_module_exports_a_private_name(name: str):
    private = [n for n in _all(name) if n.startswith("_")]
    assert not private, f"{name}.__all__ exports private names: {private}"


def test_star_import_gives_exactly_all():
    for name, exported in PUBLIC.items():
        namespace: dict[str, object] = {}
        exec(f"from {name} import *", namespace)
        assert sorted(set(namespace) - {"__builtins__"}) == exported, name


def test_submodules_lists_the_public_subpackages():
    assert sorted(burstio.SUBMODULES) == SUBMODULES
    found = sorted(m.name for m in pkgutil.iter_modules(burstio.__path__) if not m.name.startswith("_"))
    assert found == SUBMODULES, "a public submodule that burstio.SUBMODULES does not list, or the reverse"
    for name in SUBMODULES:
        assert f"burstio.{name}" in PUBLIC, name
        assert getattr(burstio, name) is importlib.import_module(f"burstio.{name}")  # PEP 562 access


def test_every_public_module_of_a_public_package_is_pinned():
    """burstio.napi, burstio.apps and burstio.xdp are public all the way down."""
    for package in ("burstio.napi", "burstio.apps", "burstio.xdp"):
        path = importlib.import_module(package).__path__
        for m in pkgutil.iter_modules(path):
            if not m.name.startswith("_"):
                assert f"{package}.{m.name}" in PUBLIC, f"{package}.{m.name} is public but not pinned"
