/* burstio._native: the module definition. Every C file, one line each:
 *
 *   module.c               this file: the module, and the order types are added
 *   core/core.h            the small core every file includes: conventions, BIO_COUNT
 *   core/compat.h          every kernel and liburing constant fallback
 *   core/constants.c       kernel constants exported to Python (SOL_UDP, UDP_GRO, ...)
 *   core/memory.c          Memory: an mmap'd region exported as a buffer
 *   core/args.c            fast argument parsing; the one int-argument check
 *   core/counters.c        counters to a dict, count(name, n)
 *   core/addr.c            address tuples <-> sockaddr
 *   core/wait.c            GIL release, poll/epoll_wait, EINTR, OSError; close wakes waiters, fork
 *   batch/batch.h          PacketBatch's struct, flags and limits
 *   batch/batch.c          PacketBatch: allocation, sequence, addresses, keep(), attributes
 *   batch/array.c          _Array: one metadata array through the buffer protocol
 *   batch/build.c          append() and add_slices(): building a batch to send
 *   batch/msgs.c           entries -> outgoing messages (GSO runs), a send's start/count
 *   batch/meta.c           per-datagram metadata: local address, ECN, transmit time
 *   batch/cmsg.c           control messages: a receive's read, a send's written
 *   udp/udp.h              UdpIo's struct and counters
 *   udp/io.c               UdpIo: the type, its settings and counters
 *   udp/recv.c             receive: recvmmsg (or recvmsg) -> cmsgs -> GRO split -> entries
 *   udp/send.c             send: messages -> sendmmsg (or sendmsg); send_segments()
 *   udp/pacer.h            the pacer's queue and thread state
 *   udp/pacer.c            Pacer: timed sends queued, flushed, closed
 *   udp/pacer_thread.c     the pacer's sender thread
 *   udp/fuzz.c             udp_parse_for_fuzz(): the receive's finishing step on made-up cmsgs
 *   socketset/socketset.h  SocketSet's shared struct and the backends' hooks
 *   socketset/base.c       SocketSetBase: sockets, errors, the recv/send entry points
 *   socketset/uring.h      the io_uring set's struct, user_data encoding, its two files' contract
 *   socketset/uring.c      UringSocketSet: set-up, multishot RECVMSG armed, waits, SENDMSG
 *   socketset/uring_completions.c  its completions: receives into the batch, buffers back
 *   socketset/epoll.c      EpollSocketSet: epoll + recvmmsg per ready socket, sendmmsg
 *   socketset/meta.c       a SocketSet's receive cmsgs (GRO, metadata) and metadata checks
 *   zerocopy/zerocopy.h    zero-copy send's pool, buffers, sender and Completion
 *   zerocopy/pool.c        ZeroCopyPool and ZeroCopyBuffer: the buffers and their states
 *   zerocopy/sender.c      ZeroCopyIo: send, acquire, poll, close, setup
 *   zerocopy/completion.c  the bookkeeping of a send, waiting, ZeroCopyCompletion
 *   zerocopy/uring.c       io_uring SEND_ZC (fixed buffers) and SENDMSG
 *   zerocopy/msg.c         sendmsg with MSG_ZEROCOPY (error queue ids) or a plain copy
 *   ports/layout.h         the shared-memory layout of a port region (the ABI)
 *   ports/ports.h          ports' process-local structs
 *   ports/region.c         PortRegion: create, attach and check a region
 *   ports/claim.c          PortClaim: who holds a port, fork detection
 *   ports/ring.c           port rings: positions, publish, kick, shared entry points
 *   ports/wait.c           linger, sleep and wake, watching the peer's process
 *   ports/tx.c             PortTx: put, claim, put_batch, recv_from
 *   ports/rx.c             PortRx: rx[i], peek, forward (swap or copy), metadata
 *   ports/switch.c         SwitchCore: forwarding between ports by key or MAC
 *   ports/forward.c        the switch's table, groups, copies, isolating a client
 *   ports/frames.c         frames of a shared pool: which region holds each
 *   ports/nic.c            NicCore: an AF_XDP socket behind a port's rings
 *   napi/napi.h            busy polling and NAPI: the module functions
 *   napi/napi.c            reuseport BPF, io_uring NAPI, setns
 *   probe/probe.h          the capability probes
 *   probe/mmsg.c           probe_mmsg(): sendmmsg/recvmmsg on loopback
 *   probe/uring.c          probe_uring(): io_uring setup flags, opcodes, buffer rings
 *   xdp/xdp.h              XDP and AF_XDP: frames and their owners, rings, the socket, UDP frames
 *   xdp/bpf.c              bpf(): maps, program load, BPF links
 *   xdp/bpfrun.c           bpf(): BPF_PROG_RUN (live frames), object information, ids
 *   xdp/umem.c             Umem: frames, their states, the free list; XskLease
 *   xdp/ring.c             the four AF_XDP rings: mmap, producer/consumer, barriers
 *   xdp/xsk.c              XskSocket: socket, bind, options, statistics, close; the XDP init
 *   xdp/rx.c               AF_XDP receive: fill ring refill, rx ring -> lease -> entries
 *   xdp/tx.c               AF_XDP send: entries -> tx ring (zero copy or copied), completions
 *   xdp/build.c            UDP frames: headers and checksums; send_udp
 *   xdp/frames.c           UdpFrames: the vectorised Ethernet/VLAN/IP/UDP parse
 *
 * Where a datagram goes: udp/recv.c (or socketset/, or ports/tx.c's
 * recv_from) puts it into a PacketBatch (batch/); udp/send.c,
 * socketset/ or zerocopy/ send it; ports/ carry it between processes;
 * xdp/rx.c lends AF_XDP frames to a batch and xdp/tx.c sends them.
 */
#include "batch/batch.h"
#include "core/core.h"
#include "napi/napi.h"
#include "ports/ports.h"
#include "probe/probe.h"
#include "socketset/socketset.h"
#include "udp/udp.h"
#include "xdp/xdp.h"
#include "zerocopy/zerocopy.h"

static struct PyModuleDef bio_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "burstio._native",
    .m_doc = "burstio's C core: syscalls and memory. Private; use burstio.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *m = PyModule_Create(&bio_module);
    if (m == NULL)
        return NULL;
    if (bio_fork_init() < 0 || bio_constants_init(m) < 0 || bio_probe_init(m) < 0 || bio_memory_init_type(m) < 0 ||
        bio_batch_init_type(m) < 0 || bio_udp_init_type(m) < 0 ||
        bio_socketset_init_types(m) < 0 || bio_zerocopy_init_types(m) < 0 ||
        bio_ports_init_types(m) < 0 || bio_napi_init(m) < 0 || bio_xdp_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
