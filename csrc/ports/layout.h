/* The shared-memory layout of a port region: the ABI between the processes
 * that map it. Nothing else belongs here.
 *
 * A region is one sealed memfd (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
 * mapped MAP_SHARED by two parties. From offset 0:
 *
 *   BioPortHeader                        magic, layout version, dimensions,
 *                                        who holds each of the two ports
 *   BioPortCtl ctl[2]                    one per ring, 128-byte aligned
 *   ring 0's slot arrays, then ring 1's  idx, len, flags, dst, src (u32 each)
 *                                        and names (struct sockaddr_in6), each
 *                                        `nslots` long and 64-byte aligned
 *   buffers                              2 x nslots of `stride` bytes,
 *                                        page aligned (an inline pool)
 *
 * or, when the header's `pool` is BIO_PORT_POOL_SHARED, no buffers at all:
 * they are the frames of a pool, a second sealed memfd of `nbufs` frames of
 * `stride` bytes (a power of two) that several regions and an AF_XDP socket
 * (as its UMEM) share. Buffer i is then at byte pool_offset + i * stride
 * of the pool (pool_offset leaves the kernel's XDP headroom in front of a
 * frame received into it).
 *
 * bio_port_layout() computes every offset from (nslots, slot_size, and the
 * pool's stride); the header repeats the dimensions so that an attaching
 * process can check the files against them. Ring r carries party r's packets to party 1 - r: port
 * k produces into ring k (its TX) and consumes ring 1 - k (its RX). Slot i
 * of a ring names a buffer by index (idx[i], of the whole pool) with its
 * packet's length, flags, destination and source keys and socket address.
 *
 * Each ring is single producer / single consumer. Its control block has one
 * 128-byte side per party: the side's published position (free-running
 * u32: slots published by the producer, released by the consumer), its
 * sleeping flag and wake-up position, and its counters. A side is written
 * only by the party on that side, with atomics; the other party only reads
 * it (ports/ring.c and ports/wait.c say in which order).
 *
 * A change to anything below is a new BIO_PORT_LAYOUT_VERSION: a process
 * refuses a region whose magic, version or header size is not its own.
 */
#ifndef BIO_PORT_LAYOUT_H
#define BIO_PORT_LAYOUT_H

#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define BIO_PORT_MAGIC 0x31474e4952534942ULL /* "BISRING1", little-endian */
#define BIO_PORT_LAYOUT_VERSION 2u

#define BIO_PORT_LINE 64                      /* alignment of the slot arrays, stride */
#define BIO_PORT_PAGE 4096                    /* alignment of the buffers and the size */
#define BIO_PORT_SLOTS_MIN 2u                 /* slots per ring: a power of two */
#define BIO_PORT_SLOTS_MAX 65536u
#define BIO_PORT_SLOT_SIZE_MAX (16u << 20)    /* bytes per buffer */
#define BIO_PORT_SIZE_MAX ((uint64_t)1 << 34) /* bytes per region */
#define BIO_PORT_BROADCAST 0xffffffffu        /* a dst key meaning every other port */
#define BIO_PORT_FRAMES_MAX (1u << 22)        /* frames of a shared pool */
#define BIO_PORT_NO_BUFFER 0xffffffffu        /* a slot holding no buffer yet (a NIC port's RX) */

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "port rings need lock-free 32-bit atomics");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "port rings need lock-free 64-bit atomics");

/* The two sides of a ring: index of BioPortCtl.side. */
enum { BIO_PORT_PROD = 0, BIO_PORT_CONS = 1 };

/* BioPortHeader.pool: where the buffers are. */
enum { BIO_PORT_POOL_INLINE = 0, BIO_PORT_POOL_SHARED = 1 };

/* BioPortHeader.kind: what the region joins. */
enum { BIO_PORT_KIND_PIPE = 0, BIO_PORT_KIND_SWITCH = 1, BIO_PORT_KIND_NIC = 2 };

/* BioPortParty.state. */
enum { BIO_PORT_FREE = 0, BIO_PORT_OPEN = 1, BIO_PORT_CLOSED = 2 };

/* BioPortSide.counters: what one side of a ring did (each only ever added
 * to, by that side, with BIO_COUNT). */
enum bio_port_counter {
    BIO_PORT_C_SYNCS,       /* positions published */
    BIO_PORT_C_KICKS,       /* eventfd writes to wake the other side */
    BIO_PORT_C_SLEEPS,      /* waits that went to sleep in poll() */
    BIO_PORT_C_WAKEUPS,     /* sleeps ended by a kick */
    BIO_PORT_C_LINGER_HITS, /* waits satisfied while lingering */
    BIO_PORT_C_TIMEOUTS,    /* waits that ended at their deadline */
    BIO_PORT_C_FWD_SWAPPED, /* RX: packets forward() moved by swapping buffers (zero copy) */
    BIO_PORT_C_FWD_COPIED,  /* RX: packets forward() copied (no buffers to share) */
    BIO_PORT_NCOUNTERS
};

/* One side of a ring, written by that side only. */
typedef struct {
    /* the side's position, free-running: slots published (producer) or
     * released (consumer); a release store after the slots, read with an
     * acquire load */
    _Alignas(128) _Atomic uint32_t pos;
    _Atomic uint32_t sleeping; /* 1 while this side sleeps (or is about to) */
    _Atomic uint32_t wake_at;  /* ... until the other side's pos reaches this */
    uint32_t reserved;         /* 0 */
    uint64_t counters[BIO_PORT_NCOUNTERS]; /* enum bio_port_counter; atomic adds */
} BioPortSide;

/* The control block of one ring. */
typedef struct {
    BioPortSide side[2]; /* [BIO_PORT_PROD], [BIO_PORT_CONS] */
} BioPortCtl;

/* Who holds a port: written by its claimant. */
typedef struct {
    _Alignas(64) _Atomic uint32_t state; /* BIO_PORT_FREE / OPEN / CLOSED */
    _Atomic uint32_t generation;         /* bumped by every claim */
    _Atomic int32_t pid;                 /* of the claimant (0: never claimed) */
    uint32_t reserved;                   /* 0 */
    _Atomic uint64_t start_time;         /* /proc/<pid>/stat field 22 (0: unknown) */
    _Atomic uint64_t pidns;              /* inode of its pid namespace (0: unknown) */
} BioPortParty;

/* At offset 0. Written once by the creator, magic last (a release fence
 * before it): a half-made region is not a region. */
typedef struct {
    uint64_t magic;        /* BIO_PORT_MAGIC */
    uint32_t version;      /* BIO_PORT_LAYOUT_VERSION */
    uint32_t header_size;  /* sizeof(BioPortHeader) */
    uint64_t size;         /* bytes of the region, bio_port_layout()'s size */
    uint32_t nslots;       /* slots per ring */
    uint32_t slot_size;    /* bytes a buffer holds */
    uint32_t stride;       /* distance between buffers: slot_size rounded up to 64 (inline),
                            * the frame size (shared pool) */
    uint32_t nbufs;        /* buffers: 2 x nslots (inline), the pool's frames (shared) */
    uint32_t kind;         /* BIO_PORT_KIND_*: a pipe, a switch's port, a NIC queue's port */
    uint32_t pool;         /* BIO_PORT_POOL_INLINE or _SHARED */
    uint64_t pool_size;    /* bytes of the pool memfd: nbufs x stride (0: inline) */
    uint32_t pool_offset;  /* where buffer 0 starts in the pool (0: inline) */
    uint32_t reserved;     /* 0 */
    BioPortParty party[2]; /* port 0's holder, port 1's */
} BioPortHeader;

_Static_assert(sizeof(BioPortSide) == 128, "BioPortSide is one 128-byte block");
_Static_assert(offsetof(BioPortSide, sleeping) == 4 && offsetof(BioPortSide, wake_at) == 8 &&
               offsetof(BioPortSide, counters) == 16, "BioPortSide fields");
_Static_assert(16 + 8 * BIO_PORT_NCOUNTERS <= 128, "a side's counters fit its block");
_Static_assert(sizeof(BioPortCtl) == 256, "BioPortCtl is two sides");
_Static_assert(sizeof(BioPortParty) == 64, "BioPortParty is one cache line");
_Static_assert(offsetof(BioPortParty, generation) == 4 && offsetof(BioPortParty, pid) == 8 &&
               offsetof(BioPortParty, start_time) == 16 && offsetof(BioPortParty, pidns) == 24,
               "BioPortParty fields");
_Static_assert(offsetof(BioPortHeader, version) == 8 && offsetof(BioPortHeader, size) == 16 &&
               offsetof(BioPortHeader, nslots) == 24 && offsetof(BioPortHeader, nbufs) == 36 &&
               offsetof(BioPortHeader, kind) == 40 && offsetof(BioPortHeader, pool) == 44 &&
               offsetof(BioPortHeader, pool_size) == 48 &&
               offsetof(BioPortHeader, pool_offset) == 56 && offsetof(BioPortHeader, party) == 64,
               "BioPortHeader fields");
_Static_assert(sizeof(BioPortHeader) == 192, "BioPortHeader is 192 bytes");
_Static_assert(sizeof(struct sockaddr_in6) == 28, "a slot's address is 28 bytes");

/* Where everything of a region lies (byte offsets from its start). */
typedef struct {
    uint64_t ctl[2];                        /* BioPortCtl of ring 0, ring 1 */
    uint64_t idx[2], len[2], flags[2];      /* u32[nslots] per ring */
    uint64_t dst[2], src[2];                /* u32[nslots] per ring */
    uint64_t names[2];                      /* struct sockaddr_in6[nslots] per ring */
    uint64_t bufs, size;                    /* the buffers (in the pool if shared); the
                                             * region's bytes */
    uint32_t stride;                        /* bytes between buffers */
} BioPortLayout;

static inline uint64_t
bio_port_align(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

/* Offsets of everything in a region of these dimensions; pool_stride 0
 * for inline buffers, else the frame size of the shared pool the buffers
 * are in (a power of two from 2048 to 65536), buffer 0 at pool_offset.
 * 0, or -EINVAL (dimensions out of range) / -EFBIG (region too large). */
static inline int
bio_port_layout(BioPortLayout *L, uint32_t nslots, uint32_t slot_size, uint32_t pool_stride,
                uint32_t pool_offset)
{
    if (nslots < BIO_PORT_SLOTS_MIN || nslots > BIO_PORT_SLOTS_MAX || (nslots & (nslots - 1)) ||
        slot_size < 1 || slot_size > BIO_PORT_SLOT_SIZE_MAX)
        return -EINVAL;
    if (pool_stride && (pool_stride < 2048 || pool_stride > 65536 ||
                        (pool_stride & (pool_stride - 1)) || pool_offset >= pool_stride ||
                        slot_size > pool_stride - pool_offset))
        return -EINVAL;
    uint64_t off = bio_port_align(sizeof(BioPortHeader), BIO_PORT_LINE), n = nslots;
    for (int r = 0; r < 2; r++) {
        L->ctl[r] = off = bio_port_align(off, 128);
        off += sizeof(BioPortCtl);
    }
    for (int r = 0; r < 2; r++) {
        uint64_t *dest[] = {&L->idx[r], &L->len[r], &L->flags[r], &L->dst[r], &L->src[r]};
        for (int a = 0; a < 5; a++) {
            *dest[a] = off = bio_port_align(off, BIO_PORT_LINE);
            off += 4 * n;
        }
        L->names[r] = off = bio_port_align(off, BIO_PORT_LINE);
        off += sizeof(struct sockaddr_in6) * n;
    }
    if (pool_stride) {
        L->stride = pool_stride;
        L->bufs = pool_offset;
        L->size = bio_port_align(off, BIO_PORT_PAGE);
        return 0;
    }
    L->stride = (uint32_t)bio_port_align(slot_size, BIO_PORT_LINE);
    L->bufs = bio_port_align(off, BIO_PORT_PAGE);
    L->size = bio_port_align(L->bufs + 2 * n * L->stride, BIO_PORT_PAGE);
    return L->size > BIO_PORT_SIZE_MAX ? -EFBIG : 0;
}

#endif /* BIO_PORT_LAYOUT_H */
