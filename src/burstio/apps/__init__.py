"""Applications on ``burstio.aio``: a DNS responder (``burstio.apps.dns``) and
aioquic's HTTP/3 over burstio (``burstio.apps.quic``)."""

import asyncio
import signal


async def until_signalled() -> None:
    """Return once the process gets SIGTERM or SIGINT (the servers' main loop)."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
