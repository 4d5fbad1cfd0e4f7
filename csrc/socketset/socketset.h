/* SocketSet: many UDP sockets, one call. What the two backends share
 * (socketset/base.c: the socket table, errors, counters, the Python entry
 * points) and the hooks each backend supplies: io_uring
 * (socketset/uring.c) and epoll + recvmmsg (socketset/epoll.c).
 */
#ifndef BIO_SOCKETSET_H
#define BIO_SOCKETSET_H

#include "batch/batch.h"
#include "core/compat.h"

enum bio_socketset_counter {
    BIO_SOCKETSET_C_RX_DATAGRAMS,
    BIO_SOCKETSET_C_RX_BYTES,
    BIO_SOCKETSET_C_RX_BATCHES,
    BIO_SOCKETSET_C_RX_TRUNCATED,
    BIO_SOCKETSET_C_RX_ERRORS,
    BIO_SOCKETSET_C_RX_REARMS,
    BIO_SOCKETSET_C_RX_ENOBUFS,
    BIO_SOCKETSET_C_TX_DATAGRAMS,
    BIO_SOCKETSET_C_TX_BYTES,
    BIO_SOCKETSET_C_TX_BATCHES,
    BIO_SOCKETSET_C_TX_ERRORS,
    BIO_SOCKETSET_C_TX_GSO_MESSAGES,
    BIO_SOCKETSET_C_TX_UNREPORTED_ERRORS,
    BIO_SOCKETSET_C_SYSCALLS,
    BIO_SOCKETSET_C_ERRORS_DROPPED,
    BIO_SOCKETSET_C_TX_ECN_UNMARKED,
    BIO_SOCKETSET_C_ECN_DOWNGRADES,
    BIO_SOCKETSET_NCOUNTERS
};

/* IDLE: to be armed for receive; ARMED: receiving; STREAM: a stream socket,
 * for recv_stream only; REMOVING: its receive is being cancelled. */
enum bio_sock_state { BIO_SOCK_FREE, BIO_SOCK_IDLE, BIO_SOCK_ARMED, BIO_SOCK_STREAM,
                      BIO_SOCK_REMOVING };
/* Per-socket flags (socketset/meta.c): its receives fill the batch's
 * metadata (the socket has pktinfo or ECN on); it is an IPv4 socket. */
#define BIO_SOCK_F_META 0x1u
#define BIO_SOCK_F_V4 0x2u

typedef struct BioSocketSet BioSocketSet;

/* A receive in progress (both backends). */
typedef struct {
    BioSocketSet *r;
    BioBatch *b;
    Py_ssize_t n, want; /* entries filled; the watermark */
    int errors0;        /* errors already queued when the call began */
    int64_t first_deadline, watermark_deadline; /* ns, -1: none */
} BioSocketSetRecv;

/* A send in progress: messages [0, m) of b, each on its entries' socket or,
 * with group_fds, all of them on each of the ngroups sockets. results[k*m+i]
 * gets message i's errno on socket k (0: sent). done counts the (socket,
 * message) pairs finished; `stopping`: queue nothing more, only finish what
 * the kernel holds (a signal handler raised). */
typedef struct {
    BioSocketSet *r;
    BioBatch *b;
    Py_ssize_t m, done, queued, total, ngroups;
    const int *group_fds;
    int32_t *results;
    int stopping;
    int ecn;            /* the codepoints were sent (0: the entries' are not) */
} BioSocketSetSend;

/* A stream receive with a byte low watermark in progress. */
typedef struct {
    BioSocketSet *r;
    int fd;
    void *buf;
    size_t want;
    int64_t timeout_ns, deadline;
    long got;           /* bytes, or -errno */
    int queued, result_seen, timeout_seen;
} BioSocketSetStream;

/* What both backends share: the socket table (the set's own dup of each
 * descriptor), the per-socket errors waiting to be taken, counters, send
 * options; and the backend's hooks. */
struct BioSocketSet {
    PyObject_HEAD
    int cap, count;       /* socket slots, sockets in use */
    int *fds;             /* our dup of each socket's descriptor, -1: free */
    uint8_t *state;       /* enum bio_sock_state */
    uint8_t *flags;       /* BIO_SOCK_F_* */
    int nmeta;            /* sockets with BIO_SOCK_F_META */
    int ecn_cmsg;         /* send ECN codepoints (0: the probe found no ECN) */
    uint32_t *gen;        /* bumped when a slot is taken or freed */
    int32_t *err_sock, *err_no;
    int nerr, err_cap;
    int gso, gso_max_segments;
    int busy;             /* a call is using the set (GIL released) */
    BioWake wake;         /* close() from another thread wakes a waiting call; fork check */
    int close_pending;    /* close() came while a call ran: that call closes on its way out */
    uint32_t call_gen;    /* bumped per send/stream call (stale completions) */
    Py_ssize_t rx_extra;  /* receive in progress: entries its coalesced messages need beyond one */
    int rx_coalesced;     /* receive in progress: a message arrived GRO-coalesced */
    uint64_t counters[BIO_SOCKETSET_NCOUNTERS];
    int (*check)(BioSocketSet *r);     /* GIL: raise unless usable now */
    int (*recv_nogil)(void *recv);     /* BioSocketSetRecv: 0 or -errno */
    int (*send_nogil)(void *send);     /* BioSocketSetSend: 0 or -errno */
    int (*stream_nogil)(void *stream); /* BioSocketSetStream: 0 or -errno */
    void (*stream_abort_nogil)(void *stream); /* stop a queued stream receive */
    void (*close_now)(BioSocketSet *r);       /* GIL, no call running: tear down */
    /* GIL: the first call in a fork()ed child: take the set over with
     * descriptors of the child's own (0), or refuse (-1, error set) */
    int (*after_fork)(BioSocketSet *r);
};

extern PyTypeObject BioSocketSet_Type;

/* Register SocketSetBase and both backends' types. */
int bio_socketset_init_types(PyObject *module);
int bio_uringset_init_type(PyObject *module);
int bio_epollset_init_type(PyObject *module);

/* Allocate the tables for `cap` sockets; 0 or -1 with MemoryError. */
int bio_socketset_alloc(BioSocketSet *r, int cap);
/* Take a free slot for a dup of fd; its index, or -1 with OSError set. */
int bio_socketset_take_slot(BioSocketSet *r, int fd);
/* Free slot idx: close our descriptor, drop its queued errors. */
void bio_socketset_free_slot(BioSocketSet *r, int idx);
/* Close every socket of the set (the backend has stopped using them). */
void bio_socketset_free_all(BioSocketSet *r);
/* Parse a socket index argument: 0, or -1 with ValueError/TypeError set. */
int bio_socketset_index(BioSocketSet *r, PyObject *obj, int *idx);
/* Parse add()'s (sock, stream=False, meta=False): fd and flags; 0 or -1. */
int bio_socketset_add_args(PyObject *args, PyObject *kwds, int *fd, int *stream, int *meta);
/* Record slot idx's flags (its family read from the socket, meta as asked). */
void bio_socketset_set_flags(BioSocketSet *r, int idx, int meta);
/* RuntimeError if a call is using the set, ValueError if closed, else the
 * backend's check; in a fork()ed child, first the backend's after_fork
 * (the epoll set takes itself over, the io_uring set refuses). */
int bio_socketset_usable(BioSocketSet *r);
/* close(): now if no call runs, else wake it and let it close on its way
 * out. None. */
PyObject *bio_socketset_close(BioSocketSet *r);
/* Queue (idx, err) for take_errors(); counts it if the queue is full. nogil. */
void bio_socketset_error_nogil(BioSocketSet *r, int idx, int err);
/* Write received message j of a batch: its payload already in slot j (the
 * first `stored` of its `len` bytes), its cmsgs read into the private scratch
 * (bio_socketset_recv_cmsgs: the UDP_GRO segment size of a coalesced one,
 * its metadata). What the split needs is kept in the private scratch. nogil. */
void bio_socketset_set_received(BioSocketSet *r, BioBatch *b, Py_ssize_t j, uint32_t stored,
                                uint32_t len, int truncated, int sock);
/* Messages a receive may still take into b: min(slots, capacity less the
 * entries the coalesced messages taken so far split into). */
Py_ssize_t bio_socketset_room(const BioSocketSet *r, const BioBatch *b);
/* ---- receive cmsgs and per-datagram metadata (socketset/meta.c) ---- */
/* Make b's metadata arrays if a socket of r asked for them. 0 or -1. GIL. */
int bio_socketset_meta_ensure(BioSocketSet *r, BioBatch *b);
/* The cmsgs control[0, len) of message j, received on socket idx (NULL:
 * none), into its private scratch: the UDP_GRO segment size, and the
 * metadata if the socket asked for it (else none). Before
 * bio_socketset_set_received. nogil. */
void bio_socketset_recv_cmsgs(const BioSocketSet *r, int idx, BioBatch *b, Py_ssize_t j,
                              const unsigned char *control, size_t len);
/* ValueError unless entry j's local address suits its socket's family. */
int bio_socketset_meta_check(const BioSocketSet *r, const BioBatch *b, Py_ssize_t j);

#endif /* BIO_SOCKETSET_H */
