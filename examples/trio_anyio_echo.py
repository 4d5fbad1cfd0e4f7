"""burstio under trio or anyio: an echo server whose BurstSocket is driven by the event
loop's readiness wait (trio.lowlevel.wait_readable, anyio.wait_readable) and a
non-blocking recv_batch (timeout=0). burstio does the batching; the loop does the waiting.

Run:   python examples/trio_anyio_echo.py --lib trio --port 9300
       python examples/trio_anyio_echo.py --lib anyio --port 9300    (anyio on asyncio)
Try:   any UDP client, as for examples/echo_server.py.
Needs: pip install trio anyio.
"""
import argparse
import signal

import burstio


async def serve(sock, wait_readable, stop_after):
    batch = burstio.PacketBatch(64)
    echoed = 0
    while stop_after is None or echoed < stop_after:
        await wait_readable(sock)                 # the loop waits; other tasks run meanwhile
        n = sock.recv_batch(batch, timeout=0)     # never blocks: takes what is queued (maybe 0)
        if n:
            sock.send_batch(batch, 0, n, on_error="skip")
            echoed += n
    return echoed


def main() -> None:
    ap = argparse.ArgumentParser(description="BurstSocket echo under trio or anyio")
    ap.add_argument("--lib", choices=("trio", "anyio"), default="trio")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9300, help="0: any free port")
    ap.add_argument("--count", type=int, help="stop after echoing this many datagrams")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C

    sock = burstio.BurstSocket.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    print(f"echoing on {host}:{port} under {args.lib}", flush=True)
    try:
        if args.lib == "trio":
            import trio
            echoed = trio.run(serve, sock, trio.lowlevel.wait_readable, args.count)
        else:
            import anyio
            echoed = anyio.run(serve, sock, anyio.wait_readable, args.count)  # backend="trio" works too
        print(f"echoed {echoed} datagrams in {sock.counters['rx_syscalls']} receive calls", flush=True)
    except KeyboardInterrupt:
        print(f"stopped after {sock.counters['tx_datagrams']} datagrams", flush=True)
    finally:
        sock.close()


if __name__ == "__main__":
    main()
