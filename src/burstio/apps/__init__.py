"""Applications on ``burstio.aio``: a DNS responder (``burstio.apps.dns``) and
aioquic's HTTP/3 over burstio (``burstio.apps.quic``)."""
