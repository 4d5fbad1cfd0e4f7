/* burstio._native — internal header shared by the extension's C files.
 *
 * Conventions (see STYLE.md):
 *  - functions named bio_<area>_<action>; internal ones return 0/count or -errno;
 *  - functions whose name ends in _nogil run with the GIL released and never
 *    touch Python objects;
 *  - OSError is raised only at the Python boundary (bio_raise_errno).
 */
#ifndef BURSTIO_H
#define BURSTIO_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif

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

/* ---- Memory (memory.c) ----------------------------------------------- */

typedef struct {
    PyObject_HEAD
    unsigned char *ptr;
    size_t size;
} BioMemory;

extern PyTypeObject BioMemory_Type;
/* mmap `size` zeroed, pre-faulted bytes; NULL with OSError set. */
BioMemory *bio_memory_new(size_t size);
int bio_memory_init_type(PyObject *module);

/* ---- PacketBatch (batch.c) ------------------------------------------- */

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
    /* syscall scratch, also `capacity` items */
    struct mmsghdr *msgs;
    struct iovec *iov;
    Py_ssize_t *msg_entry; /* first entry of each outgoing message */
    unsigned char *cmsg;   /* capacity * BIO_CMSG_SIZE */
    void *meta_block;      /* one allocation holding all arrays above */
    PyObject *arena_view;  /* memoryview over arena_mem, for batch[i] */
    PyObject *ext_view;    /* memoryview of an external buffer, or NULL */
    PyObject *ext_source;  /* the object add_slices() was given */
    int busy;              /* a syscall is using the batch (GIL released) */
    PyObject *weakrefs;
} BioBatch;

extern PyTypeObject BioBatch_Type;
extern PyTypeObject BioArray_Type;

int bio_batch_init_type(PyObject *module);
/* Raise RuntimeError and return -1 if another call holds the batch. */
int bio_batch_check_idle(BioBatch *b);
/* Get a C-contiguous buffer of obj; TypeError (not bytes-like) or
 * ValueError (not contiguous) otherwise. Release with PyBuffer_Release. */
int bio_get_contiguous(PyObject *obj, Py_buffer *view);
/* ValueError unless entries [start, end) lie inside the batch's data
 * (offsets and lengths are writable from Python). 0 or -1. */
int bio_batch_check_entries(BioBatch *b, Py_ssize_t start, Py_ssize_t end);
/* Reset entries to empty; drops an attached external buffer. */
void bio_batch_reset(BioBatch *b);

/* ---- addresses (addr.c) ---------------------------------------------- */

/* Parse (host, port) or (host, port, flowinfo, scope_id) with a numeric
 * host into *out. Returns 0, or -1 with TypeError/ValueError set. */
int bio_addr_parse(PyObject *addr, struct sockaddr_in6 *out);
/* Build the socket-module style tuple for a stored address; None if the
 * family is 0. New reference or NULL. */
PyObject *bio_addr_build(const struct sockaddr_in6 *sa);
socklen_t bio_addr_len(const struct sockaddr_in6 *sa);

/* ---- argument parsing (args.c) --------------------------------------- */

/* Map METH_FASTCALL|METH_KEYWORDS arguments onto out[] (borrowed; NULL when
 * absent) by the NULL-terminated `names`: the first max_pos may come by
 * position, the first `required` must come. Returns 0, or -1 with
 * TypeError set in the wording CPython uses. */
int bio_args_parse(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames, const char *const *names, int max_pos,
                   int required, PyObject **out);
/* TypeError unless obj is a PacketBatch ("fname() argument 1 must be ..."). */
int bio_args_batch(const char *fname, PyObject *obj);

/* A dict {name: value} of n counters (each read with a relaxed atomic
 * load, so another thread's updates are never torn), or NULL with an error. */
PyObject *bio_counters_dict(const void *counters, const char *const *names, int n);
/* The index of counter `name`, or -1 with KeyError set. */
int bio_counter_find(const char *const *names, int n, const char *name);

/* ---- waiting and errors (wait.c) ------------------------------------- */

int64_t bio_now_ns(void);
/* Milliseconds from now until deadline_ns, rounded up so a wait never ends
 * early: -1 for no deadline (deadline_ns < 0), 0 once it has passed, at most
 * INT_MAX. The timeout for poll(2) and epoll_wait(2). */
int bio_deadline_ms(int64_t deadline_ns);
/* Poll fd for `events` until deadline_ns (-1: forever). GIL released by
 * caller. Returns 1 ready, 0 timed out, -errno (EINTR included). */
int bio_poll_nogil(int fd, short events, int64_t deadline_ns);
/* Convert a timeout in seconds (None: forever) to ns, -1 meaning forever.
 * Returns 0, or -1 with TypeError/ValueError set. */
int bio_timeout_parse(PyObject *timeout, int64_t *ns);
/* Raise OSError for -err (err < 0) and return NULL. */
PyObject *bio_raise_errno(int err);
/* The one place that drops the GIL for a blocking call: run fn(ctx)
 * without the GIL until it returns something other than -EINTR; on -EINTR
 * run the signal handlers (PEP 475) and call it again, or return -EINTR
 * with the handler's exception set. fn must resume where it stopped (its
 * progress lives in ctx). Called with the GIL. */
int bio_nogil_retry(int (*fn)(void *ctx), void *ctx);
/* Set `sent` on the pending exception (a signal handler raised part way
 * through a send): the caller can tell how far the send got. */
void bio_exc_note_sent(Py_ssize_t sent);

/* ---- UDP I/O (udp.c, udp_send.c) ------------------------------------- */

enum bio_counter {
    BIO_C_RX_DATAGRAMS,
    BIO_C_RX_BYTES,
    BIO_C_RX_BATCHES,
    BIO_C_RX_SYSCALLS,
    BIO_C_RX_TRUNCATED,
    BIO_C_RX_GRO_MESSAGES,
    BIO_C_RX_GRO_DATAGRAMS,
    BIO_C_KERNEL_DROPS,
    BIO_C_TX_DATAGRAMS,
    BIO_C_TX_BYTES,
    BIO_C_TX_BATCHES,
    BIO_C_TX_SYSCALLS,
    BIO_C_TX_GSO_MESSAGES,
    BIO_C_TX_GSO_DATAGRAMS,
    BIO_C_TX_ERRORS,
    BIO_C_TX_UNREPORTED_ERRORS,
    BIO_C_GSO_DOWNGRADES,
    BIO_NCOUNTERS
};

extern const char *const bio_counter_names[BIO_NCOUNTERS];

typedef struct {
    PyObject_HEAD
    int fd;
    int recv_mmsg;        /* recvmmsg, else one recvmsg per datagram */
    int send_mmsg;        /* sendmmsg, else one sendmsg per message */
    int gso;              /* coalesce same-size runs into UDP_SEGMENT sends */
    int gso_max_segments; /* segments per GSO send we build (<= kernel's) */
    int gro_max_segments; /* most segments one GRO receive can carry */
    int gro;              /* UDP_GRO is on: split coalesced receives */
    int socket_index;     /* written to batch.sockets for received entries */
    int rx_singles;       /* receive calls in a row that found one datagram */
    int single_after;     /* that many in a row: ask for one (0: never) */
    int pending_errno;    /* error seen after a partial receive, raised next */
    int wait_fd;          /* epoll instance to wait in (busy polls), -1: poll() */
    int spin_us;          /* before poll(): retry the receive this long (busy
                           * polls once per try with SO_BUSY_POLL) */
    int wait_first;       /* busy polling in wait_fd and the last waiting
                           * receive found the socket empty: wait first */
    int last_errno;       /* why the last send stopped early (0: it did not) */
    Py_ssize_t last_error_index; /* entry (or segment) that failed */
    int last_error_gso;   /* the failing message was a GSO send */
    uint64_t counters[BIO_NCOUNTERS];
    PyObject *recover;    /* policy called when a send stops early, or NULL */
} BioUdp;

extern PyTypeObject BioUdp_Type;
int bio_udp_init_type(PyObject *module);

/* How entries become messages: GSO runs (gso, at most gso_max_segments),
 * split where batch.sockets changes when by_socket. */
typedef struct {
    int gso, gso_max_segments, by_socket;
} BioSendOpts;

/* Build the outgoing messages for entries [start, end) of b into b->msgs;
 * returns the number of messages. nogil (touches only b's arrays). */
Py_ssize_t bio_send_prepare_nogil(const BioSendOpts *o, BioBatch *b, Py_ssize_t start,
                                  Py_ssize_t end);
/* Parse send_batch's start/count against b; 0 or -1 with an error set. */
int bio_send_range(BioBatch *b, PyObject *start_obj, PyObject *count_obj,
                   Py_ssize_t *start, Py_ssize_t *end);
PyObject *bio_udp_send_batch(BioUdp *u, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames);
PyObject *bio_udp_send_raw(BioUdp *u, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames);
PyObject *bio_udp_send_segments(BioUdp *u, PyObject *args, PyObject *kwds);
extern const char bio_udp_send_segments_doc[];

/* ---- multi-socket rings (ringbase.c; ring.c: io_uring; drain.c: epoll) - */

enum bio_ring_counter {
    BIO_R_RX_DATAGRAMS,
    BIO_R_RX_BYTES,
    BIO_R_RX_BATCHES,
    BIO_R_RX_TRUNCATED,
    BIO_R_RX_ERRORS,
    BIO_R_RX_REARMS,
    BIO_R_RX_ENOBUFS,
    BIO_R_TX_DATAGRAMS,
    BIO_R_TX_BYTES,
    BIO_R_TX_BATCHES,
    BIO_R_TX_ERRORS,
    BIO_R_TX_GSO_MESSAGES,
    BIO_R_TX_UNREPORTED_ERRORS,
    BIO_R_SYSCALLS,
    BIO_R_ERRORS_DROPPED,
    BIO_R_NCOUNTERS
};

/* IDLE: to be armed for receive; ARMED: receiving; STREAM: a stream socket,
 * for recv_stream only; REMOVING: its receive is being cancelled. */
enum bio_sock_state { BIO_SOCK_FREE, BIO_SOCK_IDLE, BIO_SOCK_ARMED, BIO_SOCK_STREAM,
                      BIO_SOCK_REMOVING };

typedef struct BioRingBase BioRingBase;

/* A receive in progress (both backends). */
typedef struct {
    BioRingBase *r;
    BioBatch *b;
    Py_ssize_t n, want; /* entries filled; the watermark */
    int errors0;        /* errors already queued when the call began */
    int64_t first_deadline, watermark_deadline; /* ns, -1: none */
} BioRingRecv;

/* A send in progress: messages [0, m) of b, each on its entries' socket or,
 * with group_fds, all of them on each of the ngroups sockets. results[k*m+i]
 * gets message i's errno on socket k (0: sent). done counts the (socket,
 * message) pairs finished; `stopping`: queue nothing more, only finish what
 * the kernel holds (a signal handler raised). */
typedef struct {
    BioRingBase *r;
    BioBatch *b;
    Py_ssize_t m, done, queued, total, ngroups;
    const int *group_fds;
    int32_t *results;
    int stopping;
} BioRingSend;

/* A stream receive with a byte low watermark in progress. */
typedef struct {
    BioRingBase *r;
    int fd;
    void *buf;
    size_t want;
    int64_t timeout_ns, deadline;
    long got;           /* bytes, or -errno */
    int queued, result_seen, timeout_seen;
} BioRingStream;

/* What both ring backends share: the socket table (the ring's own dup of
 * each descriptor), the per-socket errors waiting to be taken, counters,
 * send options; and the backend's hooks. */
struct BioRingBase {
    PyObject_HEAD
    int cap, count;       /* socket slots, sockets in use */
    int *fds;             /* our dup of each socket's descriptor, -1: free */
    uint8_t *state;       /* enum bio_sock_state */
    uint32_t *gen;        /* bumped when a slot is taken or freed */
    int32_t *err_sock, *err_no;
    int nerr, err_cap;
    int gso, gso_max_segments;
    int busy;             /* a call is using the ring (GIL released) */
    uint32_t call_gen;    /* bumped per send/stream call (stale completions) */
    uint64_t counters[BIO_R_NCOUNTERS];
    int (*check)(BioRingBase *r);      /* GIL: raise unless usable now */
    int (*recv_nogil)(void *recv);     /* BioRingRecv: 0 or -errno */
    int (*send_nogil)(void *send);     /* BioRingSend: 0 or -errno */
    int (*stream_nogil)(void *stream); /* BioRingStream: 0 or -errno */
    void (*stream_abort_nogil)(void *stream); /* stop a queued stream receive */
};

extern PyTypeObject BioRingBase_Type;

#define BIO_RCOUNT(r, c, n) \
    __atomic_fetch_add(&((BioRingBase *)(r))->counters[(c)], (uint64_t)(n), __ATOMIC_RELAXED)

/* Allocate the tables for `cap` sockets; 0 or -1 with MemoryError. */
int bio_ringbase_alloc(BioRingBase *r, int cap);
/* Take a free slot for a dup of fd; its index, or -1 with OSError set. */
int bio_ringbase_take_slot(BioRingBase *r, int fd);
/* Free slot idx: close our descriptor, drop its queued errors. */
void bio_ringbase_free_slot(BioRingBase *r, int idx);
/* Close every socket of the ring (the backend has stopped using them). */
void bio_ringbase_free_all(BioRingBase *r);
/* Parse a socket index argument: 0, or -1 with ValueError/TypeError set. */
int bio_ringbase_index(BioRingBase *r, PyObject *obj, int *idx);
/* Parse add()'s (sock, stream=False): fd and flag; 0 or -1. */
int bio_ringbase_add_args(PyObject *args, PyObject *kwds, int *fd, int *stream);
/* RuntimeError if a call is using the ring, else the backend's check. */
int bio_ringbase_usable(BioRingBase *r);
/* Queue (idx, err) for take_errors(); counts it if the queue is full. nogil. */
void bio_ringbase_error_nogil(BioRingBase *r, int idx, int err);
/* Write received datagram j of a batch: payload already at slot j. nogil. */
void bio_ring_set_received(BioBatch *b, Py_ssize_t j, uint32_t stored, int truncated, int sock);
/* Entries a receive may fill: min(capacity, slots). */
Py_ssize_t bio_ring_room(const BioBatch *b);
int bio_ring_init_types(PyObject *module);
int bio_drain_init_type(PyObject *module);

/* ---- zero-copy send (zerocopy.c) ------------------------------------- */

/* The pool and its buffers (zcpool.c); the sender, SEND_ZC and MSG_ZEROCOPY
 * (zerocopy.c) move buffers between the states. LOST: still in flight when
 * its sender closed, so never reused (the kernel may still read it). */
enum bio_zc_state { BIO_ZC_FREE, BIO_ZC_OWNED, BIO_ZC_IN_FLIGHT, BIO_ZC_LOST };

typedef struct {
    PyObject_HEAD
    BioMemory *mem;     /* nbuf * stride bytes, mmap'd once */
    size_t buf_size;    /* bytes a buffer exposes */
    size_t stride;      /* buf_size rounded up to whole pages */
    uint32_t nbuf;
    uint32_t nfree;
    uint8_t *state;     /* enum bio_zc_state, per buffer */
    uint32_t *gen;      /* bumped when a buffer returns: old objects are spent */
    uint32_t *free_stack;
    int attached;       /* an open sender uses the pool */
} BioZcPool;

typedef struct {
    PyObject_HEAD
    BioZcPool *pool;
    uint32_t index;
    uint32_t gen;       /* pool->gen[index] when acquired */
    Py_ssize_t exports; /* live buffer-protocol exports */
} BioZcBuffer;

extern PyTypeObject BioZcPool_Type;
extern PyTypeObject BioZcBuffer_Type;

/* Take a FREE buffer (the caller checked nfree > 0); it becomes OWNED. */
uint32_t bio_zcpool_take(BioZcPool *p);
/* Give buffer i back: FREE, and every object naming it is spent. */
void bio_zcpool_put(BioZcPool *p, uint32_t i);
static inline unsigned char *
bio_zcpool_ptr(const BioZcPool *p, uint32_t i)
{
    return p->mem->ptr + (size_t)i * p->stride;
}
/* A new ZeroCopyBuffer naming buffer `index` (just taken). New ref or NULL. */
PyObject *bio_zcbuf_new(BioZcPool *p, uint32_t index);
/* 0 if b is current and OWNED; else -1 with BufferError saying why. */
int bio_zcbuf_check(BioZcBuffer *b);
int bio_zcpool_init_types(PyObject *module);
/* Both files' types (calls bio_zcpool_init_types). */
int bio_zerocopy_init_types(PyObject *module);

/* ---- shared-memory packet rings between processes (shmring.c) -------- */

int bio_shmring_init_types(PyObject *module);

/* ---- busy polling and NAPI (napi.c) ------------------------------------ */

int bio_napi_init(PyObject *module);
/* epoll_wait(epfd) for one event until deadline_ns (-1: forever): 1 ready,
 * 0 timeout, -errno. The epoll instance's own busy-poll parameters make
 * the wait busy poll. nogil. */
int bio_epoll_wait_nogil(int epfd, int64_t deadline_ns);

/* ---- probes (probe.c, uring.c) --------------------------------------- */

PyObject *bio_probe_mmsg(PyObject *self, PyObject *args);
PyObject *bio_probe_uring(PyObject *self, PyObject *args);

#endif /* BURSTIO_H */
