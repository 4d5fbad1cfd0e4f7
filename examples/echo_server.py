"""A UDP echo server on BurstSocket: one recvmmsg takes every queued datagram, one
sendmmsg sends them all back (runs of equal datagrams to one client as one GSO send).

Run:   python examples/echo_server.py --port 9000
Try:   python -c "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
           s.sendto(b'hi', ('127.0.0.1', 9000)); print(s.recv(64))"
Stop:  Ctrl-C (it prints what it served).
"""
import argparse
import signal

import burstio


def main() -> None:
    ap = argparse.ArgumentParser(description="UDP echo server on burstio.BurstSocket")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000, help="0: any free port")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C

    sock = burstio.BurstSocket.bind((args.host, args.port))
    batch = burstio.PacketBatch(64)              # 64 slots, allocated once and reused
    host, port = sock.getsockname()[:2]
    print(f"echoing on {host}:{port}", flush=True)
    try:
        while True:
            n = sock.recv_batch(batch)           # waits for the first datagram, takes all queued
            sock.send_batch(batch, 0, n, on_error="skip")  # entry i goes back to batch.addr(i)
    except KeyboardInterrupt:
        pass
    c = sock.counters
    print(f"echoed {c['tx_datagrams']} datagrams with {c['rx_syscalls']} receive "
          f"and {c['tx_syscalls']} send calls", flush=True)
    sock.close()


if __name__ == "__main__":
    main()
