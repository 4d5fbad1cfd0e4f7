"""Busy polling and NAPI: making the thread that waits poll the device queue.

Where a datagram goes when busy polling is on: instead of sleeping until the
device's interrupt (NET_RX softirq on a veth) wakes it, the thread that waits
in ``epoll_wait``/``recvmmsg``/``io_uring_enter`` runs the NAPI poll of the
queue its sockets are fed by, and finds the datagram there.

Submodules:

- ``burstio.napi.busypoll``: per-epoll (``BusyPollEpoll``) and per-socket
  busy-poll settings, ``napi_id(sock)``, io_uring NAPI registration;
- ``burstio.napi.reuseport``: ``ReusePortGroup``, one worker per receive queue
  (SO_REUSEPORT steered by a classic-BPF program);
- ``burstio.napi.netdev``: the netdev netlink family (devices, queues, NAPI
  instances and their per-NAPI settings; needs pyroute2);
- ``burstio.napi.lab``: two network namespaces joined by a veth with NAPI on;
- ``burstio.napi.doctor``: reads the host's setup, proposes the recipe.

The names of ``busypoll`` and ``reuseport`` are re-exported here.
"""
from __future__ import annotations

from .busypoll import (
    BUDGET_MAX,
    BusyPollEpoll,
    EpollParams,
    napi_id,
    register_uring_napi,
    set_busy_poll,
    set_busy_poll_budget,
    set_prefer_busy_poll,
)
from .reuseport import ReusePortGroup, Worker, WorkerStats, queue_steering_program

__all__ = [
    "BusyPollEpoll", "EpollParams", "napi_id", "set_busy_poll", "set_prefer_busy_poll", "set_busy_poll_budget",
    "register_uring_napi", "BUDGET_MAX",
    "ReusePortGroup", "Worker", "WorkerStats", "queue_steering_program",
]
