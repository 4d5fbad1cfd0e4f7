"""A multi-process pipeline over burstio.ports: capture -> workers -> results.

The capture process receives UDP datagrams a batch at a time (recvmmsg) and puts each batch
on its port's ring for the next worker (``tx.recv_from(sock)`` would receive straight into the
ring instead, a whole ring's worth for one worker); each worker parses its readings
("SEQ VALUE") and sends a result to the results port; this process collects them. A
ports.Switch (a thread here) forwards by destination key, copying between the processes'
regions, so no process shares memory with another. No pickling, no per-message lock.

Run:   python examples/pipeline.py --port 9100 --workers 2 --count 1000
Feed:  python -c "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
           [s.sendto(b'%d %d' % (i, i), ('127.0.0.1', 9100)) for i in range(1000)]"
It prints each worker's share and the sum of the squares, then exits.
"""
import argparse
import contextlib
import multiprocessing as mp
import socket

import burstio
from burstio import ports

CAPTURE, RESULTS, WORKER0 = 1, 2, 10          # switch keys: who is who


def capture(port, sock, workers):
    """Receive up to 64 datagrams per call (one recvmmsg), each batch to the next worker."""
    sock = burstio.BurstSocket(sock)
    batch = burstio.PacketBatch(64, 256)
    with contextlib.suppress(KeyboardInterrupt), port.claim():  # this process holds the port from now on
        turn = 0
        while True:
            n = sock.recv_batch(batch)
            done = 0
            while done < n:                   # copy the batch into the ring, waiting for room if full
                done += port.tx.put_batch(batch, done, n - done, dst=WORKER0 + turn, src=CAPTURE)
                port.tx.sync()                # publish: the switch takes them to the worker
                if done < n:
                    port.tx.wait(n - done)
            turn = (turn + 1) % workers


def worker(port):
    """Parse each reading in place (rx[i] is a view of shared memory) and send a result."""
    with contextlib.suppress(KeyboardInterrupt), port.claim():
        rx, tx = port.rx, port.tx
        while True:
            n = rx.wait(1)                    # sleeps when there is nothing to do
            for i in range(n):
                seq, value = bytes(rx[i]).split()
                if not len(tx):
                    tx.wait(1)
                tx.put(b"%d %d %d" % (port.key, int(seq), int(value) ** 2), dst=RESULTS, src=port.key)
            rx.advance(n)
            tx.sync()


def main() -> None:
    ap = argparse.ArgumentParser(description="capture -> workers -> results over burstio.ports")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100, help="0: any free port")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--count", type=int, default=1000, help="results to collect before exiting")
    args = ap.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # room for a burst while busy
    ctx = mp.get_context("fork")
    with ports.Switch(slots=1024, slot_size=256, learning=False) as sw:
        results = sw.add_port(key=RESULTS)
        procs = [ctx.Process(target=capture, args=(sw.add_port(key=CAPTURE), sock, args.workers), daemon=True)]
        procs += [ctx.Process(target=worker, args=(sw.add_port(key=WORKER0 + i),), daemon=True)
                  for i in range(args.workers)]
        for p in procs:
            p.start()
        sw.start()                            # forward on a thread of this process
        host, port = sock.getsockname()[:2]
        print(f"capturing on {host}:{port} with {args.workers} workers", flush=True)

        share, total = {}, 0
        for packet in results.rx.packets():   # results as they come, freed as we go
            key, _, square = bytes(packet).split()
            share[int(key) - WORKER0] = share.get(int(key) - WORKER0, 0) + 1
            total += int(square)
            if sum(share.values()) == args.count:
                break
        for p in procs:
            p.terminate()
    print(f"{args.count} results; per worker {dict(sorted(share.items()))}; sum of squares {total}", flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
        main()
