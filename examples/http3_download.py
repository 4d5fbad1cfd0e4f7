"""HTTP/3 on burstio: aioquic's server and client (unmodified, from PyPI) on burstio's
batched transport. The server answers GET /bytes/N with N bytes; the client downloads and
checks them. With --url it only downloads, from a server started elsewhere
(`burstio serve quic --port 4433`).

Run:   python examples/http3_download.py --size 2000000
       python examples/http3_download.py --url https://127.0.0.1:4433/bytes/1000000
Needs: pip install 'burstio[apps]' (aioquic).
"""
import argparse
import asyncio
import hashlib
import socket
import tempfile
import time
from urllib.parse import urlparse

from burstio.apps import quic


async def download(host: str, port: int, path: str) -> None:
    digest = hashlib.sha256()
    async with asyncio.timeout(30), quic.connect_h3(host, port, transport="burstio") as client:
        client.on_data = lambda stream_id, data: digest.update(data)  # the body, as it arrives
        t0 = time.perf_counter()
        status, size = await client.get(f"{host}:{port}", path)
        seconds = time.perf_counter() - t0
    print(f"status {status}, {size} bytes in {seconds:.3f} s over burstio, "
          f"{client.datagrams} datagrams received, sha256 {digest.hexdigest()[:16]}", flush=True)


async def main() -> None:
    ap = argparse.ArgumentParser(description="HTTP/3 download over burstio.aio")
    ap.add_argument("--size", type=int, default=1_000_000, help="bytes to serve and download")
    ap.add_argument("--url", help="only download this https://HOST:PORT/bytes/N")
    args = ap.parse_args()
    if args.url:
        url = urlparse(args.url)
        await download(url.hostname, url.port or 443, url.path)
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))                                  # any free port
    port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = quic.self_signed_certificate(tmp)            # a throw-away certificate
        config = quic.server_configuration(cert, key)
        server = await quic.serve_h3("127.0.0.1", port, config, sock=sock)
    print(f"serving HTTP/3 on 127.0.0.1:{port}", flush=True)
    try:
        await download("127.0.0.1", port, f"/bytes/{args.size}")
        print(f"expected sha256 {hashlib.sha256(quic.body(args.size)).hexdigest()[:16]}", flush=True)
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
