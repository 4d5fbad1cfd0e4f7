"""burstio.xdp: XDP programs and AF_XDP sockets, kernel bypass from Python.

::

    with burstio.xdp.Steer([Rule(proto="udp", dport=9000)]).attach("eth0") as steer, \\
            burstio.xdp.XskSocket("eth0", queue=0) as xsk:
        steer.add(xsk)                       # frames that match go to xsk, the rest to the kernel
        batch = burstio.PacketBatch(64)
        n = xsk.recv_batch(batch, timeout=1.0)   # entries point into the UMEM: no copy
        frames = burstio.xdp.udp.parse(batch)    # every header of the burst, as arrays

- ``Steer`` and ``Filter`` (burstio.xdp.programs): the XDP programs burstio
  ships, loaded without libbpf, attached with BPF links (detached by the
  kernel when the process ends), driven by rules (``Rule``) changed at run time.
- ``Umem`` and ``XskSocket``: AF_XDP sockets with the PacketBatch model:
  receive lends frames, send copies or forwards them (zero copy).
- ``burstio.xdp.udp``: the vectorised UDP parse, and UDP sends with
  headers and checksums built in C.
- ``burstio.xdp.pktgen``: a packet generator (``burstio pktgen``).

docs/ARCHITECTURE.md walks a frame through all of it.
"""
from .. import _native
from ._xsk import FRAME_SIZES, MODES, Umem, XskSocket
from .programs import MAX_RULES, Filter, Rule, RuleCount, Steer

#: entry flag: a multi-buffer packet goes on in the next entry (all its parts but the last)
FLAG_CONTINUES: int = _native.FLAG_CONTINUES

__all__ = ["Umem", "XskSocket", "Steer", "Filter", "Rule", "RuleCount", "MAX_RULES", "MODES", "FRAME_SIZES",
           "FLAG_CONTINUES"]
