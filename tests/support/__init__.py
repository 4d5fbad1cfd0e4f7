"""Helpers for burstio's tests (the fixtures themselves are in conftest.py).

- ``variants``: the backend-variant matrices (BurstSocket, SocketSet,
  ZeroCopySender, the asyncio transport) and the one way to apply a variant:
  set BURSTIO_DISABLE, and skip, saying why, when the kernel lacks what the
  variant needs.
- ``kernel``: kernel constants the tests use, and checks of what this kernel
  offers or does.
- ``net``: loopback addresses, socket helpers, receiving and payloads.
- ``proc``: subprocesses, threads, descriptors, waiting.
- ``paths``: where the repository is.
- ``loops``: event loops (asyncio's and uvloop).
"""
