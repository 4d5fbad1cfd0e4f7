"""The two sides of the ``quic`` bench, each in its own process.

    python -m burstio.bench.workers.quic server TRANSPORT PORT CERT KEY
    python -m burstio.bench.workers.quic client

The server (aioquic's ``serve()`` with ``H3Server`` over TRANSPORT, "asyncio"
or "burstio", or ``PacedH3Server`` over "burstio-paced") prints ``ready``
and serves until SIGTERM. The client reads
one JSON command per stdin line and answers each with one JSON line:

    {"cmd": "connect", "name": N, "transport": T, "port": P, "bursts": B}
        open connection N (over T; B: the client takes bursts,
        ``BurstH3Client``, else ``H3Client``), closing an earlier one of
        that name, and download once to warm up:
        {"status", "bytes", "kernel_drops"}
    {"cmd": "get", "name": N, "size": S}
        download S bytes on connection N:
        {"status", "bytes", "wall_s", "cpu_s", "datagrams", "kernel_drops"}

cpu_s is this process's CPU time during the download; kernel_drops counts,
since the connection was opened, the datagrams the kernel dropped for the
client's socket (its receive buffer was full).
"""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import sys
import time
from contextlib import AbstractAsyncContextManager
from typing import cast

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol

from ..._kernel import SO_MEMINFO
from ...apps import quic

IDLE_TIMEOUT = 600.0  # connections wait between rounds
WARMUP_BYTES = 4 << 20


def _kernel_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for this socket so far (full receive buffer)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9)
    drops: int = struct.unpack(f"{len(raw) // 4}I", raw)[8]
    return drops


async def _server(transport: str, port: int, certfile: str, keyfile: str) -> None:
    config = quic.server_configuration(certfile, keyfile, idle_timeout=IDLE_TIMEOUT)
    server = await quic.serve_h3("127.0.0.1", port, config, transport)
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, finish)
    print("ready", flush=True)
    try:
        await stop
    finally:
        server.close()


async def _client() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    clients: dict[str, quic.H3Client] = {}
    # name: the connect() context holding that connection
    opened: dict[str, AbstractAsyncContextManager[QuicConnectionProtocol]] = {}
    context: AbstractAsyncContextManager[QuicConnectionProtocol]
    reply: dict[str, float]
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "connect":
                if cmd["name"] in opened:
                    await opened.pop(cmd["name"]).__aexit__(None, None, None)
                # a paced server's client is burstio's, unpaced (it mostly acknowledges)
                quic.use_transport("burstio" if cmd["transport"] == "burstio-paced" else cmd["transport"], gro=True)
                proto = quic.BurstH3Client if cmd.get("bursts") else quic.H3Client
                context = connect("127.0.0.1", cmd["port"], create_protocol=proto,
                                  configuration=quic.client_configuration(idle_timeout=IDLE_TIMEOUT))
                client = cast(quic.H3Client, await context.__aenter__())  # made by `proto`
                opened[cmd["name"]] = context
                clients[cmd["name"]] = client
                status, got = await client.get("127.0.0.1", f"/bytes/{WARMUP_BYTES}")
                transport = cast(asyncio.DatagramTransport, client._transport)  # connected
                reply = {"status": status, "bytes": got,
                         "kernel_drops": _kernel_drops(transport.get_extra_info("socket"))}
            else:
                client = clients[cmd["name"]]
                d0, c0, t0 = client.datagrams, time.process_time(), time.perf_counter()
                status, got = await client.get("127.0.0.1", f"/bytes/{cmd['size']}")
                t1, c1 = time.perf_counter(), time.process_time()
                transport = cast(asyncio.DatagramTransport, client._transport)  # connected
                reply = {"status": status, "bytes": got, "wall_s": t1 - t0, "cpu_s": c1 - c0,
                         "datagrams": client.datagrams - d0,
                         "kernel_drops": _kernel_drops(transport.get_extra_info("socket"))}
            print(json.dumps(reply), flush=True)
    finally:
        for context in opened.values():
            await context.__aexit__(None, None, None)


def main(argv: list[str]) -> int:
    if argv[:1] == ["server"] and len(argv) == 5:
        asyncio.run(_server(argv[1], int(argv[2]), argv[3], argv[4]))
    elif argv == ["client"]:
        asyncio.run(_client())
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
