/* PacketBatch: the caller-owned burst of datagrams that every I/O path fills
 * or sends (batch/batch.c, batch/array.c, batch/build.c, batch/msgs.c).
 */
#ifndef BIO_BATCH_H
#define BIO_BATCH_H

#include "core/core.h"

#include <netinet/in.h>
#include <sys/uio.h>
#include <time.h>

/* Largest UDP payload that fits one IPv4 datagram; also the cap we put on a
 * whole GSO send so that it is valid for IPv4 and IPv6 alike. */
#define BIO_MAX_UDP_PAYLOAD 65507
/* A UDP GRO receive buffer must hold any coalesced skb (< 64 KiB). */
#define BIO_GRO_SLOT_MIN 65535
/* Bytes of control buffer per receive slot: UDP_GRO + SO_RXQ_OVFL +
 * SCM_TIMESTAMPNS fit with room to spare (80 bytes). */
#define BIO_CMSG_SIZE 128
/* The control buffer per slot once the batch carries per-datagram metadata
 * (local address, ECN, transmit time: b->meta). A receive on a socket with
 * every option on can get UDP_GRO + SO_RXQ_OVFL + SCM_TIMESTAMPNS +
 * IPV6_PKTINFO + IP_PKTINFO (a dual-stack socket gets both for an IPv4
 * datagram) + IP_TOS + IPV6_TCLASS = 24 + 24 + 32 + 40 + 32 + 24 + 24 = 200
 * bytes; a send UDP_SEGMENT + IPV6_PKTINFO + IP_TOS + IPV6_TCLASS +
 * SCM_TXTIME = 24 + 40 + 24 + 24 + 24 = 136 (the sums are checked below). */
#define BIO_CMSG_WIDE 256
#define BIO_CMSG_RX_ALL                                                                  \
    (2 * CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct timespec)) +                 \
     CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo)) +    \
     CMSG_SPACE(sizeof(uint8_t)) + CMSG_SPACE(sizeof(int)))
#define BIO_CMSG_TX_ALL                                                                  \
    (CMSG_SPACE(sizeof(uint16_t)) + CMSG_SPACE(sizeof(struct in6_pktinfo)) +             \
     2 * CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint64_t)))
_Static_assert(BIO_CMSG_RX_ALL <= BIO_CMSG_WIDE, "every receive cmsg fits a wide slot");
_Static_assert(BIO_CMSG_TX_ALL <= BIO_CMSG_WIDE, "every send cmsg fits a wide slot");
_Static_assert(2 * CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct timespec)) <= BIO_CMSG_SIZE,
               "GRO + RXQ_OVFL + TIMESTAMPNS fit a plain slot");
/* Per-call message limit of sendmmsg/recvmmsg (UIO_MAXIOV). */
#define BIO_MMSG_MAX 1024

/* Entry flags (batch.flags). */
#define BIO_FLAG_TRUNCATED 0x1u  /* longer than its slot; length = stored part */
#define BIO_FLAG_GRO 0x2u        /* arrived coalesced by UDP GRO, split here */
#define BIO_FLAG_COALESCED 0x4u  /* still several datagrams of segment_size */
#define BIO_FLAG_SEND_ERROR 0x8u /* last send failed; errnos[i] says why */

/* Per-entry scratch that Python never sees: what a call reads from the
 * writable arrays is copied here once, with the GIL held, and only this copy
 * is used afterwards (another thread may rewrite the arrays at any time). */
typedef struct {
    struct sockaddr_in6 name; /* send: the destination (family 0: none) */
    int32_t sock;             /* send: the socket index (SocketSet) */
    int32_t err;              /* send: errno its message failed with (0: none) */
    uint32_t seg;             /* receive: the UDP_GRO segment size (0: none) */
    int64_t ts;               /* receive: the kernel's timestamp, ns (0: none) */
    uint32_t rx_stored;       /* receive (SocketSet): bytes of the datagram in its slot */
    uint32_t rx_len;          /* receive (SocketSet): its length on the wire */
    int32_t rx_trunc;         /* receive (SocketSet): cut to fit the slot or buffer */
} BioBatchPriv;

/* Per-entry metadata a socket asks for (pktinfo, ecn, paced sends), as the
 * datagram's call reads it: what a receive parsed from the cmsgs, or the
 * private copy a send took of the arrays (read once, checked). */
typedef struct {
    struct in6_addr local; /* local address, IPv4 as ::ffff:a.b.c.d; :: none */
    uint32_t ifindex;      /* interface it arrived on / leaves by (0: any) */
    uint8_t ecn;           /* ECN codepoint, 0..3 */
    int64_t txtime;        /* send: CLOCK_MONOTONIC ns to leave at (0: now) */
} BioMetaPriv;

/* The metadata arrays, allocated on first use (b->meta NULL until then):
 * the Python attributes, append(local=, ecn=, txtime=), or a receive on a
 * socket that asked for pktinfo or ECN. One block. */
typedef struct {
    struct in6_addr *local_addrs; /* capacity x 16 bytes */
    uint32_t *ifindexes;
    uint8_t *ecn;
    int64_t *txtimes;
    BioMetaPriv *priv;  /* private copies (never exported) */
    unsigned char *cmsg; /* capacity * BIO_CMSG_WIDE: replaces b->cmsg */
} BioBatchMeta;

typedef struct {
    PyObject_HEAD
    Py_ssize_t capacity;  /* entries */
    Py_ssize_t slots;     /* receive slots in the arena */
    Py_ssize_t slot_size; /* bytes per slot */
    Py_ssize_t count;     /* valid entries */
    Py_ssize_t appended;  /* slots consumed by append() since clear() */
    BioMemory *arena_mem; /* owns the arena */
    unsigned char *arena; /* slots * slot_size bytes, mmap'd once */
    size_t arena_size;
    const unsigned char *data; /* base of offsets: arena or external buffer */
    size_t data_len;           /* bytes at data */
    /* per-entry metadata, parallel arrays of `capacity` items */
    uint64_t *offsets;
    uint32_t *lengths;
    uint32_t *flags;
    uint32_t *segment_sizes;
    int64_t *timestamps;
    int32_t *sockets;
    int32_t *errnos;
    struct sockaddr_in6 *names; /* family 0: no address */
    /* syscall scratch, also `capacity` items, never exported to Python */
    struct mmsghdr *msgs;
    struct iovec *iov;
    Py_ssize_t *msg_entry; /* first entry of each outgoing message */
    unsigned char *cmsg;   /* capacity * BIO_CMSG_SIZE */
    BioBatchPriv *priv;
    void *meta_block;      /* one allocation holding all arrays above */
    BioBatchMeta *meta;    /* per-datagram metadata, NULL until first use */
    PyObject *arena_view;  /* memoryview over arena_mem, for batch[i] */
    PyObject *ext_view;    /* memoryview of the external buffer, or NULL (made on first use
                            * when ext_source lent its memory directly: bio_batch_base) */
    PyObject *ext_source;  /* what entries point into when not the arena (add_slices()'s
                            * buffer, an AF_XDP lease), or NULL */
    int busy;              /* a syscall is using the batch (GIL released) */
    PyObject *weakrefs;
} BioBatch;

extern PyTypeObject BioBatch_Type;

int bio_batch_init_type(PyObject *module);
/* TypeError unless obj is a PacketBatch ("fname() argument 1 must be ..."). */
int bio_batch_arg(const char *fname, PyObject *obj);
/* Raise RuntimeError and return -1 if another call holds the batch. */
int bio_batch_check_idle(BioBatch *b);
/* ValueError unless entries [start, end) lie inside the batch's data
 * (offsets and lengths are writable from Python). 0 or -1. */
int bio_batch_check_entries(BioBatch *b, Py_ssize_t start, Py_ssize_t end);
/* Reset entries to empty; drops an attached external buffer. */
void bio_batch_reset(BioBatch *b);
/* Make `buffer` (a bytes-like object; the batch keeps it until reset) the
 * buffer entries' offsets point into, as add_slices() does; an AF_XDP
 * receive attaches its lease of UMEM frames this way. 0, or -1 with an
 * error (the batch must be empty or already point into buffer). */
int bio_batch_attach(BioBatch *b, PyObject *buffer);
/* Attach `owner` as the batch's data source, its memory [data, data + len)
 * known to the caller (an AF_XDP lease of UMEM frames): no memoryview is
 * made until Python asks for the batch's buffer or an entry (bio_batch_base).
 * The batch must be reset (empty, no source). Never fails. GIL held. */
void bio_batch_attach_owner(BioBatch *b, PyObject *owner, const unsigned char *data, size_t len);
/* The memoryview entries' offsets point into (borrowed): the arena's, or the
 * external source's, made now if it was attached without one. NULL with an
 * error. */
PyObject *bio_batch_base(BioBatch *b);

/* ---- per-datagram metadata (batch/meta.c) --------------------------------- */

/* Allocate b->meta if it is not there yet (zeroed). 0, or -1 with
 * MemoryError. GIL held. */
int bio_batch_meta_ensure(BioBatch *b);
/* Control buffer of slot k, and its size: the wide one once b->meta exists. */
static inline unsigned char *
bio_batch_cmsg(const BioBatch *b, Py_ssize_t k)
{
    return b->meta ? b->meta->cmsg + (size_t)k * BIO_CMSG_WIDE : b->cmsg + (size_t)k * BIO_CMSG_SIZE;
}
static inline size_t
bio_batch_cmsg_size(const BioBatch *b)
{
    return b->meta ? BIO_CMSG_WIDE : BIO_CMSG_SIZE;
}
/* Write entry j's metadata arrays from m (a receive); no-op without meta. */
void bio_batch_meta_store(BioBatch *b, Py_ssize_t j, const BioMetaPriv *m);
/* PacketBatch's metadata attributes and methods (in batch.c's tables):
 * the arrays (which: 0 local_addrs, 1 ifindexes, 2 ecn, 3 txtimes, each
 * allocating b->meta), local_addr(i), set_local_addr(i, host, ifindex=0),
 * _store_meta(i, local, ifindex, ecn) (the portable backend's receive). */
PyObject *bio_batch_meta_get_array(BioBatch *b, void *which);
PyObject *bio_batch_meta_local_addr(BioBatch *b, PyObject *arg);
PyObject *bio_batch_meta_set_local_addr(BioBatch *b, PyObject *args);
PyObject *bio_batch_meta_store_py(BioBatch *b, PyObject *args);
extern const char bio_batch_meta_local_addr_doc[], bio_batch_meta_set_local_addr_doc[];
/* Free b->meta (dealloc). */
void bio_batch_meta_free(BioBatch *b);
/* Copy entry i's metadata to entry j (keep), clear entry i's (set_entry). */
void bio_batch_meta_move(BioBatch *b, Py_ssize_t j, Py_ssize_t i);
void bio_batch_meta_clear(BioBatch *b, Py_ssize_t i);
/* Parse append()'s local= / ecn= / txtime= into entry i (allocating meta
 * when one is not the default). 0, or -1 with the error set. */
int bio_batch_meta_set(BioBatch *b, Py_ssize_t i, PyObject *local, PyObject *ecn, PyObject *txtime);

/* ---- control messages (batch/cmsg.c) -------------------------------------- */

/* What a receive's cmsgs said (udp/recv.c, socketset/). */
typedef struct {
    uint32_t seg;   /* UDP_GRO segment size (0: none) */
    int64_t ts;     /* SCM_TIMESTAMPNS, ns (0: none) */
    BioMetaPriv m;  /* IP_PKTINFO/IPV6_PKTINFO, IP_TOS/IPV6_TCLASS */
} BioCmsgIn;
/* Walk control[0, len) as the kernel wrote it into *out; every header is
 * checked against the buffer before it is read, so nothing outside it is
 * ever read. nogil. */
void bio_cmsg_parse(const unsigned char *control, size_t len, BioCmsgIn *out);
/* What an outgoing message's cmsgs carry. */
typedef struct {
    uint16_t segment;   /* UDP_SEGMENT (0: none) */
    const BioMetaPriv *m; /* local address, ECN, transmit time (NULL: none) */
    int ecn;            /* 1: write the ECN codepoint; 2: (tests) an out-of-range
                         * TOS every kernel refuses with EINVAL; 0: not */
    uint8_t dscp;       /* the socket's DSCP bits, kept in the TOS byte */
    int txtime;         /* 1: SCM_TXTIME when m->txtime is set */
    int64_t txtime_offset; /* added to m->txtime (the SO_TXTIME clock's offset) */
} BioCmsgOut;
/* Write o's cmsgs into buf (aligned; BIO_CMSG_TX_ALL bytes when o->m is
 * set, else BIO_CMSG_SIZE) for h: sets msg_control and
 * msg_controllen (NULL/0 when there are none). nogil. */
void bio_cmsg_build(struct msghdr *h, unsigned char *buf, const BioCmsgOut *o);
/* Whether an outgoing message we built carries an ECN codepoint (its
 * EINVAL may be the kernel refusing that cmsg: policy decides). */
int bio_cmsg_carries_ecn(const struct msghdr *h);
/* Whether the address is IPv4 (AF_INET, or ::ffff:a.b.c.d). */
int bio_cmsg_addr_v4(const struct in6_addr *a);

/* ---- outgoing messages (batch/msgs.c) ------------------------------------- */

/* How entries become messages: GSO runs (gso, at most gso_max_segments),
 * split where batch.sockets changes when by_socket. */
typedef struct {
    int gso, gso_max_segments, by_socket;
    int family;    /* the socket's (AF_INET refuses IPv6 local addresses); 0: any */
    int ecn;       /* BioCmsgOut.ecn */
    uint8_t dscp;  /* BioCmsgOut.dscp */
    int txtime;    /* 1: SCM_TXTIME cmsgs; 0: a transmit time is refused */
    int64_t txtime_offset;
    uint64_t *late;      /* counts datagrams whose transmit time has passed (or NULL) */
    uint64_t *unmarked;  /* counts datagrams whose ECN codepoint is not sent (or NULL) */
} BioBatchSendOpts;

/* Build the outgoing messages for entries [start, end) of b into b->msgs,
 * reading each entry's offset, length, destination and socket index once
 * (into b->iov and b->priv) and checking the offset and length against the
 * data: the messages refer only to the private copies, so the kernel sees
 * what was checked whatever another thread writes to the arrays later.
 * Returns the number of messages, or -1 with ValueError naming the entry.
 * GIL held. */
Py_ssize_t bio_batch_send_build(const BioBatchSendOpts *o, BioBatch *b, Py_ssize_t start,
                                Py_ssize_t end);
/* After a send of messages [0, done) built with o: count, of the datagrams
 * the kernel took, those whose transmit time had passed (o->late) and those
 * whose codepoint was not sent (o->unmarked). GIL held. */
void bio_batch_count_meta(const BioBatchSendOpts *o, const BioBatch *b, Py_ssize_t done);
/* send_messages_for_test(batch, ...): the messages a send would build. */
PyObject *bio_batch_messages_for_test(PyObject *module, PyObject *args);
extern const char bio_batch_messages_for_test_doc[];
/* Parse a send's start/count against b into [*start, *end); 0 or -1 with an
 * error set. */
int bio_batch_send_range(BioBatch *b, PyObject *start_obj, PyObject *count_obj,
                         Py_ssize_t *start, Py_ssize_t *end);

/* ---- inside batch/ only ----------------------------------------------------- */

extern PyTypeObject BioArray_Type;
/* A memoryview over one of b's per-entry arrays (cols 0: one dimension),
 * through an _Array exporter that keeps b alive (batch/array.c). */
PyObject *bio_array_view(BioBatch *b, void *buf, const char *format, Py_ssize_t itemsize,
                         Py_ssize_t cols);
/* Write entry i's metadata (payload already in place). */
void bio_batch_set_entry(BioBatch *b, Py_ssize_t i, uint64_t offset, uint32_t len);
/* Clear what bio_batch_set_entry clears besides offset, length and flags
 * (segment size, timestamp, socket, errno, metadata), and the address, of
 * entries [0, n): one pass per array, for a receive that writes offsets,
 * lengths and flags itself (an AF_XDP lend). GIL held. */
void bio_batch_clear_entries(BioBatch *b, Py_ssize_t n);
/* Parse an optional destination into entry i (None clears it); 0 or -1. */
int bio_batch_set_name(BioBatch *b, Py_ssize_t i, PyObject *addr);
/* append() and add_slices() (batch/build.c). */
PyObject *bio_batch_append(BioBatch *b, PyObject *args, PyObject *kwds);
PyObject *bio_batch_add_slices(BioBatch *b, PyObject *args, PyObject *kwds);
extern const char bio_batch_append_doc[], bio_batch_add_slices_doc[];

#endif /* BIO_BATCH_H */
