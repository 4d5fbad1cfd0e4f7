/* PacketBatch: the caller-owned burst of datagrams that every I/O path fills
 * or sends (batch/batch.c, batch/array.c, batch/build.c, batch/msgs.c).
 */
#ifndef BIO_BATCH_H
#define BIO_BATCH_H

#include "core/core.h"

#include <sys/uio.h>

/* Largest UDP payload that fits one IPv4 datagram; also the cap we put on a
 * whole GSO send so that it is valid for IPv4 and IPv6 alike. */
#define BIO_MAX_UDP_PAYLOAD 65507
/* A UDP GRO receive buffer must hold any coalesced skb (< 64 KiB). */
#define BIO_GRO_SLOT_MIN 65535
/* Bytes of control buffer per receive slot: UDP_GRO + SO_RXQ_OVFL +
 * SCM_TIMESTAMPNS fit with room to spare. */
#define BIO_CMSG_SIZE 128
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
    PyObject *arena_view;  /* memoryview over arena_mem, for batch[i] */
    PyObject *ext_view;    /* memoryview of an external buffer, or NULL */
    PyObject *ext_source;  /* the object add_slices() was given */
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

/* ---- outgoing messages (batch/msgs.c) ------------------------------------- */

/* How entries become messages: GSO runs (gso, at most gso_max_segments),
 * split where batch.sockets changes when by_socket. */
typedef struct {
    int gso, gso_max_segments, by_socket;
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
/* Parse an optional destination into entry i (None clears it); 0 or -1. */
int bio_batch_set_name(BioBatch *b, Py_ssize_t i, PyObject *addr);
/* append() and add_slices() (batch/build.c). */
PyObject *bio_batch_append(BioBatch *b, PyObject *args, PyObject *kwds);
PyObject *bio_batch_add_slices(BioBatch *b, PyObject *args, PyObject *kwds);
extern const char bio_batch_append_doc[], bio_batch_add_slices_doc[];

#endif /* BIO_BATCH_H */
