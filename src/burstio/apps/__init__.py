"""Applications on ``burstio.aio``: a DNS responder (``burstio.apps.dns``) and
aioquic's HTTP/3 over burstio (``burstio.apps.quic``)."""

import asyncio
import signal

__all__ = ["until_signalled"]


async def until_signalled() -> None:
    """Return once the process gets SIGTERM or SIGINT (the servers' main loop)."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish)
    await stop
