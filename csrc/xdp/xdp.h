/* XDP and AF_XDP: the structs the files of csrc/xdp/ share.
 *
 *   bpf.c     the bpf() syscall: maps, program load, links
 *   bpfrun.c  the bpf() syscall: BPF_PROG_RUN (live frames), object info, ids
 *   umem.c    Umem: the frames, their owners, the free list; XskLease
 *   ring.c    the four rings: mmap, producer/consumer with their barriers
 *   xsk.c     XskSocket: socket, bind, counters, close, the Python type
 *   rx.c      receive: rx ring -> a lease -> batch entries into the UMEM
 *   tx.c      send: batch entries -> tx ring (copy or zero copy), completions
 *   frames.c  UdpFrames: the vectorised Ethernet/VLAN/IP/UDP parse
 *   build.c   UDP frames built in C: headers, checksums; send_udp
 *
 * Where a frame goes: the XDP program (src/burstio/xdp/bpf/) redirects it to
 * the socket of its receive queue; the kernel copies it into a frame the
 * fill ring gave it and puts a descriptor on the rx ring; rx.c lends it to
 * a PacketBatch (a lease); the lease's frames go back to the free list, and
 * from there to the fill ring, only when the batch and every memoryview of
 * them let go. tx.c puts a batch's entries on the tx ring (this UMEM's own
 * frames as they are, anything else copied into free frames); the
 * completion ring gives them back.
 */
#ifndef BIO_XDP_H
#define BIO_XDP_H

#include "batch/batch.h"
#include "core/compat.h"
#include "core/core.h"

#include <sys/types.h>

/* ---- frames and their owners (umem.c) -------------------------------------- */

/* What holds a frame (Umem.state[f], bits): none of them means it is on the
 * free list. Only code holding the GIL reads or changes them. */
#define BIO_FRAME_FILL 0x1u /* in a fill ring, or the kernel received into it */
#define BIO_FRAME_LENT 0x2u /* lent to a batch (Umem.lease_of[f] says which) */
#define BIO_FRAME_TX 0x4u   /* on a tx ring until its completion */
#define BIO_FRAME_PORT 0x8u /* in a slot of a port region on this Umem's memfd
                             * (lease_of[f] is that BioPortRegion; ports/frames.c) */

/* Where the kernel puts a received frame's first byte inside its UMEM frame,
 * after the Umem's own headroom (XDP_PACKET_HEADROOM). */
#define BIO_XDP_HEADROOM 256u

enum {
    BIO_UMEM_FILL_STARVED, /* a refill found the free list empty */
    BIO_UMEM_LENT,         /* frames lent to batches */
    BIO_UMEM_RETURNED,     /* frames back from leases */
    BIO_UMEM_NCOUNTERS
};

typedef struct {
    PyObject_HEAD
    unsigned char *area; /* frames * frame_size bytes, page aligned */
    size_t size;
    uint32_t frame_size, headroom, frames;
    uint32_t frame_shift; /* log2(frame_size): frame sizes are powers of two */
    uint8_t *state;    /* per frame: BIO_FRAME_* */
    void **lease_of;   /* per frame: the lease holding it (LENT), else NULL */
    uint32_t *free;    /* free list: frame indices */
    uint32_t nfree;
    int fd;            /* the AF_XDP socket the UMEM is registered on; -1 once the
                        * XskSocket that took it closed it */
    int fd_taken;      /* the first XskSocket took fd: it binds and closes it */
    int sockets;       /* XskSockets open on this UMEM */
    int switched;      /* its frames are a switch's: a pass moves them without the GIL, so
                        * nothing else may take or give one (no pipes, no other socket) */
    pid_t pid;         /* the process that registered it */
    uint64_t file_dev, file_ino; /* the memfd the frames are mapped from (0: anonymous) */
    uint64_t counters[BIO_UMEM_NCOUNTERS];
    PyObject *weakrefs;
} BioUmem;

extern PyTypeObject BioUmem_Type, BioXskLease_Type;

/* Frames lent to one batch: the private record (never the batch's
 * writable offsets) of what goes back to the free list when the last of
 * the batch and the memoryviews of it lets go (tp_dealloc). Exports the
 * whole UMEM, so the batch's offsets are UMEM offsets. */
typedef struct {
    PyObject_VAR_HEAD
    BioUmem *umem;
    Py_ssize_t n;
    uint32_t frames[1];
} BioXskLease;

/* The frame index of UMEM offset addr, or -1 if it lies outside. */
static inline int64_t
bio_umem_frame_of(const BioUmem *u, uint64_t addr)
{
    return addr < u->size ? (int64_t)(addr >> u->frame_shift) : -1;
}

/* Where addr lies inside its frame. */
static inline uint64_t
bio_umem_in_frame(const BioUmem *u, uint64_t addr)
{
    return addr & (u->frame_size - 1);
}
/* Take a frame off the free list: its index, or -1 when none is free.
 * Sets `state` on it. GIL held. (Inline, as bio_umem_drop: both run once
 * per frame on the receive path.) */
static inline int64_t
bio_umem_take(BioUmem *u, uint8_t state)
{
    if (u->nfree == 0)
        return -1;
    uint32_t f = u->free[--u->nfree];
    u->state[f] = state;
    return f;
}

/* Clear `bits` of frame f's state; a frame left with none goes back to the
 * free list. GIL held. */
static inline void
bio_umem_drop(BioUmem *u, uint32_t f, uint8_t bits)
{
    uint8_t s = u->state[f];
    if (!(s & bits))
        return; /* not held that way: never free a frame twice */
    s = (uint8_t)(s & ~bits);
    u->state[f] = s;
    if (bits & (BIO_FRAME_LENT | BIO_FRAME_PORT))
        u->lease_of[f] = NULL; /* a frame is lent or in a port, never both */
    if (s == 0)
        u->free[u->nfree++] = f;
}
/* A new, empty lease of up to n frames; NULL with an error. */
BioXskLease *bio_xsk_lease_new(BioUmem *u, Py_ssize_t n);
/* RuntimeError unless this process made the UMEM (not a forked child).
 * 0 or -1. */
int bio_umem_check_pid(BioUmem *u);
/* This process's pid (xdp/umem.c keeps it across fork()s). */
extern pid_t bio_xdp_pid;
/* Whether this process made the UMEM (it keeps the frame table). */
static inline int
bio_umem_ours(const BioUmem *u)
{
    return u->pid == bio_xdp_pid;
}
int bio_umem_init_type(PyObject *module);

/* ---- rings (ring.c) ------------------------------------------------------------ */

typedef struct {
    uint32_t *producer, *consumer, *flags;
    void *desc;     /* uint64_t (fill, completion) or struct xdp_desc (rx, tx) */
    uint32_t size;  /* entries, a power of two */
    uint32_t cached_prod, cached_cons;
    void *map;
    size_t map_len;
} BioXskRing;

/* mmap ring `which` (its XDP_PGOFF_*) of `size` entries of `esize` bytes on
 * fd at the offsets `off`. 0 or -errno. */
int bio_ring_map(BioXskRing *r, int fd, uint64_t pgoff, const struct xdp_ring_offset *off,
                 uint32_t size, size_t esize);
void bio_ring_unmap(BioXskRing *r);
/* Producer side (fill, tx): free entries, at most want (a load-acquire of
 * the kernel's consumer when the cached view is short). */
uint32_t bio_ring_prod_free(BioXskRing *r, uint32_t want);
/* Publish n entries written after the producer (a store-release). */
void bio_ring_prod_submit(BioXskRing *r, uint32_t n);
/* Consumer side (rx, completion): entries ready, at most want (a
 * load-acquire of the kernel's producer). */
uint32_t bio_ring_cons_ready(BioXskRing *r, uint32_t want);
/* Hand n consumed entries back to the kernel (a store-release). */
void bio_ring_cons_release(BioXskRing *r, uint32_t n);
/* The kernel asks to be woken (XDP_RING_NEED_WAKEUP). */
int bio_ring_needs_wakeup(const BioXskRing *r);

static inline uint64_t *
bio_ring_addr(BioXskRing *r, uint32_t i)
{
    return &((uint64_t *)r->desc)[i & (r->size - 1)];
}

static inline struct xdp_desc *
bio_ring_desc(BioXskRing *r, uint32_t i)
{
    return &((struct xdp_desc *)r->desc)[i & (r->size - 1)];
}

/* ---- the socket (xsk.c, rx.c, tx.c) ------------------------------------------- */

/* Entry flag (batch.flags) of a multi-buffer packet's every part but its
 * last (XDP_PKT_CONTD): the packet goes on in the next entry. Apart from
 * the batch's own FLAG_* bits. */
#define BIO_XSK_FLAG_CONTINUES 0x100u

enum {
    BIO_XSK_RX_FRAMES, BIO_XSK_RX_BYTES, BIO_XSK_RX_BATCHES, BIO_XSK_RX_WAITS,
    BIO_XSK_RX_BAD_DESCS, BIO_XSK_FILL_FRAMES, BIO_XSK_FILL_STARVED,
    BIO_XSK_TX_FRAMES, BIO_XSK_TX_BYTES, BIO_XSK_TX_BATCHES, BIO_XSK_TX_COPIED,
    BIO_XSK_TX_ZEROCOPY, BIO_XSK_TX_KICKS, BIO_XSK_TX_DROPPED, BIO_XSK_TX_RING_FULL,
    BIO_XSK_TX_NO_FRAME,
    BIO_XSK_COMPLETIONS, BIO_XSK_BAD_COMPLETIONS,
    BIO_XSK_NCOUNTERS
};

typedef struct {
    PyObject_HEAD
    BioUmem *umem;
    int fd;          /* -1 once closed */
    int umem_fd;     /* fd is the Umem's registration socket (the first one) */
    int wake_fd;     /* eventfd: close() wakes waiters through it */
    uint32_t ifindex, queue;
    uint32_t bind_flags;
    int zerocopy;    /* XDP_OPTIONS says the kernel bound zero copy */
    int busy;        /* a call is using the rings (maybe without the GIL) */
    int closing;     /* close() asked while busy: the call closes on its way out */
    pid_t pid;
    uint32_t fill_batch; /* a refill tops the fill ring up when this many are free */
    uint32_t fill_target; /* a refill stops at this many frames in the fill ring (0: its size) */
    BioXskRing fill, comp, rx, tx;
    struct xdp_desc *scratch; /* rx descriptors read with the GIL released */
    uint32_t scratch_size;
    uint64_t counters[BIO_XSK_NCOUNTERS];
    PyObject *weakrefs;
} BioXsk;

extern PyTypeObject BioXsk_Type;

/* 0, or -1 with OSError(EBADF)/RuntimeError set: closed, in use by another
 * call, or a forked child. Marks the socket busy on success. */
int bio_xsk_enter(BioXsk *x, const char *what);
/* End a call bio_xsk_enter began; closes the socket if close() came meanwhile. */
void bio_xsk_leave(BioXsk *x);
/* Top the fill ring up from the free list (to fill_target frames when set).
 * GIL held. Returns frames given. */
uint32_t bio_xsk_refill(BioXsk *x);
/* Take completed tx frames back. GIL held. Returns how many. */
uint32_t bio_xsk_reap(BioXsk *x);
/* Wait until fd is readable (1), the deadline passes (0), close() wakes us
 * (-EBADF) or -errno; nogil. */
int bio_xsk_poll_nogil(BioXsk *x, short events, int64_t deadline_ns);

/* rx.c, tx.c: the entry points. */
PyObject *bio_xsk_recv_batch(BioXsk *x, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
PyObject *bio_xsk_send_batch(BioXsk *x, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
PyObject *bio_xsk_wait_tx(BioXsk *x, PyObject *args);
extern const char bio_xsk_wait_tx_doc[];
PyObject *bio_xsk_send_udp(BioXsk *x, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
extern const char bio_xsk_recv_batch_doc[], bio_xsk_send_batch_doc[], bio_xsk_send_udp_doc[];
/* Put desc (already checked) on the tx ring, which has room. GIL held. */
void bio_xsk_tx_put(BioXsk *x, uint64_t addr, uint32_t len, uint32_t options);
/* Kick the kernel to transmit what the tx ring holds (sendto, without the
 * GIL); reaps completions. 0 or -errno (EAGAIN/EBUSY/ENOBUFS: try later). */
int bio_xsk_kick(BioXsk *x);
/* The same without the GIL and without retrying EINTR (the caller kicks
 * again later): publish, sendto() until the kernel took everything, reap.
 * 0 or -errno. nogil (no Python object is touched). */
int bio_xsk_transmit_nogil(BioXsk *x);
int bio_xsk_init_type(PyObject *module);

/* ---- UDP frames (frames.c, build.c) ------------------------------------------ */

/* Parse status (UdpFrames.status[i]). */
#define BIO_UDP_OK 0
#define BIO_UDP_TRUNCATED 1  /* a header runs past the frame */
#define BIO_UDP_MALFORMED 2  /* a length or version field is impossible */
#define BIO_UDP_NOT_IP 3     /* neither IPv4 nor IPv6 */
#define BIO_UDP_NOT_UDP 4    /* IP, another protocol */
#define BIO_UDP_FRAGMENT 5   /* an IP fragment: no UDP header to trust */
#define BIO_UDP_IPV6_EXT 6   /* IPv6 extension headers (not walked) */

/* Parse flags (UdpFrames.flags[i], bits). */
#define BIO_UDP_F_VLAN 0x1u        /* one or two 802.1Q/802.1ad tags */
#define BIO_UDP_F_IP_OPTIONS 0x2u  /* IPv4 header longer than 20 bytes */
#define BIO_UDP_F_PADDED 0x4u      /* the frame is longer than the IP packet */
#define BIO_UDP_F_CSUM_ZERO 0x8u   /* IPv4 UDP without a checksum */

/* A UDP header to build: where it comes from and goes to. */
typedef struct {
    unsigned char dst_mac[6], src_mac[6];
    int family;                   /* 4 or 6 */
    unsigned char src[16], dst[16];
    uint16_t sport, dport;        /* host order */
    uint16_t vlan;                /* 0: untagged, else the 802.1Q tag (VID, PCP) */
    uint8_t ttl, tos;
} BioUdpHeader;

/* Bytes of headers build writes before the payload. */
size_t bio_udp_header_len(const BioUdpHeader *h);
/* Write Ethernet, IP and UDP headers for `len` payload bytes already at
 * out + bio_udp_header_len(h), with the IPv4 header checksum and the UDP
 * checksum (v4 and v6). Returns the frame length. */
size_t bio_udp_build(unsigned char *out, const BioUdpHeader *h, size_t len);
/* Parse a BioUdpHeader from Python: (dst_mac, src_mac, src_ip16, dst_ip16,
 * family, sport, dport, vlan, ttl) as send_udp and pktgen take it. 0/-1. */
int bio_udp_header_parse(PyObject *tuple, BioUdpHeader *h);
/* The 16-bit one's complement sum of n bytes, folded (not inverted). */
uint32_t bio_csum_add(uint32_t sum, const unsigned char *p, size_t n);
uint16_t bio_csum_fold(uint32_t sum);
int bio_frames_init_types(PyObject *module);
/* udp_frame() (build.c). */
int bio_build_init(PyObject *module);

/* ---- bpf() (bpf.c, bpfrun.c) --------------------------------------------------- */

int bio_bpf_init(PyObject *module);
/* bpfrun.c's functions (bpf_prog_run, info, ids), added by bio_bpf_init. */
int bio_bpf_test_run_init(PyObject *module);

/* Everything above, added to the module (xsk.c). */
int bio_xdp_init(PyObject *module);

#endif /* BIO_XDP_H */
