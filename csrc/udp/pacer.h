/* Pacer: timed sends released from C, off the caller's thread and without
 * the GIL (udp/pacer.c the queue and the Python type, udp/pacer_thread.c
 * the sender thread).
 *
 * Where a datagram goes through it: send_batch() on a paced BurstSocket (or
 * SocketSet) -> bio_pacer_queue copies each entry (payload, destination,
 * local address, codepoint, transmit time), read once and checked, into
 * pacer-owned memory (the batch is the caller's) -> the sender thread sleeps
 * to the first entry's transmit time (an absolute CLOCK_MONOTONIC deadline)
 * and sends every entry due within the pacer's slack, entries of one
 * destination and metadata as GSO runs, with sendmmsg -> the kernel.
 *
 * Order is the queue's: an entry never leaves before one queued earlier (a
 * transmit time earlier than its predecessor's is late when its turn comes).
 * Nothing is lost: each entry is sent, recorded as refused (take_errors), or
 * returned by close() as unsent.
 */
#ifndef BIO_PACER_H
#define BIO_PACER_H

#include "batch/batch.h"
#include "core/compat.h"

#include <pthread.h>

enum bio_pacer_counter {
    BIO_PACER_C_TX_DATAGRAMS,
    BIO_PACER_C_TX_BYTES,
    BIO_PACER_C_TX_SYSCALLS,
    BIO_PACER_C_TX_GSO_MESSAGES,
    BIO_PACER_C_TX_GSO_DATAGRAMS,
    BIO_PACER_C_TX_ERRORS,
    BIO_PACER_C_TX_ECN_UNMARKED,
    BIO_PACER_C_GSO_DOWNGRADES,
    BIO_PACER_C_ECN_DOWNGRADES,
    BIO_PACER_C_PACED_QUEUED,
    BIO_PACER_C_PACED_LATE,
    BIO_PACER_C_PACED_WAITS,
    BIO_PACER_C_PACED_UNSENT,
    BIO_PACER_C_PACED_ERRORS_DROPPED,
    BIO_PACER_C_PACED_RELEASES,
    BIO_PACER_NCOUNTERS
};

/* One queued datagram, in pacer-owned memory. */
typedef struct {
    uint64_t seq;              /* its sequence number: the count queued before it */
    uint64_t off;              /* its payload: absolute position in the byte ring */
    uint32_t len;
    int32_t sock;              /* index in the pacer's socket table */
    struct sockaddr_in6 name;  /* destination (family 0: the connected peer) */
    BioMetaPriv meta;          /* local address, codepoint, transmit time */
} BioPacerEntry;

/* A datagram the kernel refused. */
typedef struct {
    uint64_t seq;
    int err;
    struct sockaddr_in6 name;
} BioPacerError;

#define BIO_PACER_MSGS 64      /* messages per sendmmsg of the thread */
#define BIO_PACER_ROUND 1024   /* entries one round of the thread sends at most */
#define BIO_PACER_ERRORS 4096  /* refusals kept for take_errors() */
#define BIO_PACER_FDS 65536    /* sockets in the table (a SocketSet's) */
#define BIO_PACER_DENSE 32     /* entries due within half the slack that make a flow dense */

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;   /* guards the positions, errors, closing and the options */
    pthread_cond_t cv;    /* the thread waits here for an entry (its timed waits are on `kick`) */
    int sync_ready;       /* mu and cv are initialised */
    pthread_t thread;
    int running;          /* the thread runs (started by the first queue) */
    BioWake wake;         /* close() wakes the waiters and the thread's poll */
    int note_efd;         /* eventfd: room freed, queue drained, or a refusal recorded */
    int *fds;             /* our own dups; -1: free */
    int nfds;
    /* the queue: entries [head, tail) of `ring`, payloads [bhead, btail) of `bytes` */
    BioPacerEntry *ring;
    uint64_t cap;         /* entries, a power of two */
    unsigned char *bytes;
    uint64_t bcap;
    uint64_t head, tail, bhead, btail;
    uint64_t next_seq;    /* the sequence number of the next entry queued */
    int sending;          /* the thread is sending entries from head on */
    int idle;             /* the thread waits for an entry: queue() signals cv */
    int waiters;          /* calls waiting for room */
    int drainers;         /* calls waiting for the queue to drain (flush) */
    int want_room;        /* an event loop waits for room: signal note_efd after each round */
    uint32_t kick;        /* futex word of the thread's timed wait: close() bumps it and wakes it */
    /* options (read by the thread under mu) */
    int gso, gso_max_segments, ecn_cmsg, dscp;
    long long slack_ns;   /* a release takes every entry due within this much of now */
    /* refusals */
    BioPacerError *errors;
    int nerr;
    uint64_t counters[BIO_PACER_NCOUNTERS];
    /* the thread's send scratch */
    struct mmsghdr msgs[BIO_PACER_MSGS];
    struct iovec iov[BIO_PACER_ROUND];
    Py_ssize_t msg_first[BIO_PACER_MSGS]; /* first entry (offset from head) of each message */
    int msg_ecn[BIO_PACER_MSGS];          /* whether each message carries its codepoint */
    unsigned char cmsg[BIO_PACER_MSGS][BIO_CMSG_WIDE] __attribute__((aligned(8)));
    PyObject *weakrefs;
} BioPacer;

extern PyTypeObject BioPacer_Type;
int bio_pacer_init_type(PyObject *module);

/* The thread (udp/pacer_thread.c): started with every signal blocked. 0 or
 * -errno. GIL held. */
int bio_pacer_start(BioPacer *p);
/* Record that the kernel refused entry e with err, and signal note_efd.
 * mu held. */
void bio_pacer_record_error(BioPacer *p, const BioPacerEntry *e, int err);
/* Wake the thread's timed wait (close()): bump kick, FUTEX_WAKE. mu held. */
void bio_pacer_kick(BioPacer *p);
/* Write 1 to note_efd (a waiter, or an event loop, looks again). */
void bio_pacer_notify(BioPacer *p);
/* The entry at position pos and its payload. */
static inline BioPacerEntry *
bio_pacer_entry(const BioPacer *p, uint64_t pos)
{
    return &p->ring[pos & (p->cap - 1)];
}
static inline unsigned char *
bio_pacer_payload(const BioPacer *p, const BioPacerEntry *e)
{
    return p->bytes + (e->off % p->bcap);
}

#endif /* BIO_PACER_H */
