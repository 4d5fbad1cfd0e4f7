/* The io_uring SocketSet's private header: what its two files share.
 * socketset/uring.c sets the io_uring up, arms the receives, submits and
 * waits (and keeps close()'s wake chain queued); socketset/uring_completions.c
 * takes what comes back: each receive completion into the caller's batch or
 * the stash, each send and stream completion to the call in progress, each
 * buffer back to the buffer ring.
 *
 * user_data: the op in the top byte; a generation in the next 24 bits (the
 * socket slot's for receives, the call's for sends and stream receives), so
 * a completion of an old socket or an old call is never taken for a new one;
 * an index (socket, or (socket, message) pair) in the low 32 bits.
 */
#ifndef BIO_SOCKETSET_URING_H
#define BIO_SOCKETSET_URING_H

#include "socketset/socketset.h"

#include <liburing.h>
#include <sys/types.h>

enum { BIO_OP_RECV = 1, BIO_OP_SEND = 2, BIO_OP_CANCEL = 3, BIO_OP_STREAM = 4,
       BIO_OP_STREAM_TIMEOUT = 5, BIO_OP_WAKE = 6 };
#define BIO_UD(op, mid, idx) \
    (((uint64_t)(op) << 56) | (((uint64_t)(mid) & 0xffffff) << 32) | (uint32_t)(idx))
#define BIO_UD_OP(ud) ((unsigned)((ud) >> 56))
#define BIO_UD_MID(ud) ((uint32_t)(((ud) >> 32) & 0xffffff))
#define BIO_UD_IDX(ud) ((uint32_t)(ud))
#define BIO_GEN(g) ((g) & 0xffffff)
#define BIO_URINGSET_MAX_SOCKETS 65536
/* Control bytes in every receive buffer: a UDP_GRO cmsg (a socket whose
 * UDP_GRO was turned on after add()) with a timestamp's beside it. */
#define BIO_URINGSET_CONTROL 64

typedef struct {
    BioSocketSet base;
    struct io_uring uring;
    int ready;
    int uring_fd;     /* for IORING_REGISTER_NAPI (burstio.napi.busypoll) */
    unsigned flags;   /* setup flags in effect */
    pid_t owner;      /* SINGLE_ISSUER: the thread that may use the io_uring */
    struct io_uring_buf_ring *bufring; /* buffer ring: the provided buffers */
    size_t bufring_bytes;
    unsigned char *bufs;
    unsigned nbufs, buf_size, recycled;
    struct msghdr rx_hdr, rx_hdr_meta; /* a receive's layout; with room for cmsgs (meta sockets) */
    struct io_uring_cqe *stash; /* receive CQEs met while waiting for sends */
    unsigned nstash, stash_cap;
    int wake_armed;   /* the wake chain (poll on the wake eventfd -> timeout) is queued */
    struct __kernel_timespec wake_ts; /* the chain's timeout: 1 ns */
} BioUringSet;

/* What reaping completions feeds: a batch to fill (or NULL: keep receives
 * for later), the send or stream receive in progress. */
typedef struct {
    BioBatch *b;
    Py_ssize_t n;
    BioSocketSetSend *send;
    BioSocketSetStream *stream;
} BioUringReap;

/* The receive layout of socket idx: with room for cmsgs if it asked for
 * metadata. nogil. */
static inline struct msghdr *
bio_uringset_hdr(BioUringSet *r, uint32_t idx)
{
    return (r->base.flags[idx] & BIO_SOCK_F_META) ? &r->rx_hdr_meta : &r->rx_hdr;
}

/* ---- completions (socketset/uring_completions.c) ---- */

/* Consume the CQEs that are ready: receives into rp->b (or the stash when
 * rp->b is NULL; a full batch leaves the rest in the CQ), sends and stream
 * receives of the call in progress into rp->send / rp->stream, the wake
 * chain's end noted; buffers go back to the ring. nogil. */
void bio_uringset_reap_nogil(BioUringSet *r, BioUringReap *rp);
/* Move kept receive CQEs into b from entry *n on, up to its room (stale
 * ones only give their buffer back). nogil. */
void bio_uringset_unstash(BioUringSet *r, BioBatch *b, Py_ssize_t *n);

#endif /* BIO_SOCKETSET_URING_H */
