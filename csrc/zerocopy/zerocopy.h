/* Zero-copy send: the buffer pool and its buffers (zerocopy/pool.c), the
 * sender ZeroCopyIo (zerocopy/sender.c), what the kernel reports and the
 * Completions (zerocopy/completion.c), and the two ways of sending:
 * io_uring SEND_ZC (zerocopy/uring.c) and sendmsg, MSG_ZEROCOPY or plain
 * copies (zerocopy/msg.c).
 */
#ifndef BIO_ZEROCOPY_H
#define BIO_ZEROCOPY_H

#include "core/compat.h"
#include "core/core.h"

#include <liburing.h>

/* ---- the pool and its buffers (zerocopy/pool.c) ------------------------------- */

/* A buffer's state; the sender moves buffers between them. LOST: still in
 * flight when its sender closed, so never reused (the kernel may still read
 * it). */
enum bio_zerocopy_state {
    BIO_ZEROCOPY_FREE,
    BIO_ZEROCOPY_OWNED,
    BIO_ZEROCOPY_IN_FLIGHT,
    BIO_ZEROCOPY_LOST
};

typedef struct {
    PyObject_HEAD
    BioMemory *mem;     /* nbuf * stride bytes, mmap'd once */
    size_t buf_size;    /* bytes a buffer exposes */
    size_t stride;      /* buf_size rounded up to whole pages */
    uint32_t nbuf;
    uint32_t nfree;
    uint8_t *state;     /* enum bio_zerocopy_state, per buffer */
    uint32_t *gen;      /* bumped when a buffer returns: old objects are spent */
    uint32_t *free_stack;
    int attached;       /* an open sender uses the pool */
} BioZeroCopyPool;

typedef struct {
    PyObject_HEAD
    BioZeroCopyPool *pool;
    uint32_t index;
    uint32_t gen;       /* pool->gen[index] when acquired */
    Py_ssize_t exports; /* live buffer-protocol exports */
} BioZeroCopyBuffer;

extern PyTypeObject BioZeroCopyPool_Type;
extern PyTypeObject BioZeroCopyBuffer_Type;

/* Take a FREE buffer (the caller checked nfree > 0); it becomes OWNED. */
uint32_t bio_zerocopy_pool_take(BioZeroCopyPool *p);
/* Give buffer i back: FREE, and every object naming it is spent. */
void bio_zerocopy_pool_put(BioZeroCopyPool *p, uint32_t i);
/* The first byte of buffer i. */
static inline unsigned char *
bio_zerocopy_pool_ptr(const BioZeroCopyPool *p, uint32_t i)
{
    return p->mem->ptr + (size_t)i * p->stride;
}
/* A new ZeroCopyBuffer naming buffer `index` (just taken). New ref or NULL. */
PyObject *bio_zerocopy_buffer_new(BioZeroCopyPool *p, uint32_t index);
/* 0 if b is current and OWNED; else -1 with BufferError saying why. */
int bio_zerocopy_buffer_check(BioZeroCopyBuffer *b);
int bio_zerocopy_pool_init_types(PyObject *module);
/* Every zero-copy type: pool, buffer, Completion, ZeroCopyIo. */
int bio_zerocopy_init_types(PyObject *module);

/* ---- the sender (zerocopy/sender.c) ------------------------------------------- */

enum { BIO_ZEROCOPY_BACKEND_COPY, BIO_ZEROCOPY_BACKEND_MSG, BIO_ZEROCOPY_BACKEND_URING };

#define BIO_ZEROCOPY_NO_SLOT UINT32_MAX

enum bio_zerocopy_counter {
    BIO_ZEROCOPY_C_SENDS,
    BIO_ZEROCOPY_C_ZEROCOPY_SENDS,
    BIO_ZEROCOPY_C_COPY_SENDS,
    BIO_ZEROCOPY_C_BYTES,
    BIO_ZEROCOPY_C_ERRORS,
    BIO_ZEROCOPY_C_NOTIFICATIONS,
    BIO_ZEROCOPY_C_COPIED,
    BIO_ZEROCOPY_C_SYSCALLS,
    BIO_ZEROCOPY_C_ENOBUFS,
    BIO_ZEROCOPY_C_DISABLED,
    BIO_ZEROCOPY_C_UNMATCHED,
    BIO_ZEROCOPY_C_OTHER_ERRQUEUE,
    BIO_ZEROCOPY_NCOUNTERS
};


typedef struct {
    PyObject_HEAD
    PyObject *sender;   /* the BioZeroCopyIo while pending; NULL once done */
    int64_t result;     /* bytes sent, or -errno if none were; once has_result */
    uint32_t index;     /* the buffer sent */
    uint32_t length;
    int error;          /* errno of a failed send (0: it did not fail) */
    char done, has_result, copied, zerocopy, cancelled, skipped;
} BioZeroCopyCompletion;

typedef struct {
    PyObject *completion; /* the Completion to fill, or NULL */
    int32_t result;       /* once has_result: bytes sent, or -errno if none were */
    int32_t error;        /* errno of a failed send (0: none) */
    uint32_t length;      /* bytes to send */
    uint32_t sent;        /* bytes the kernel has taken so far */
    uint32_t notifs;      /* zero-copy notifications still to come */
    uint8_t busy;         /* handed to send(), not yet back in the pool */
    uint8_t has_result;   /* resolved: taken whole, or failed; no more pieces */
    uint8_t submitted;    /* io_uring: a request for it awaits its result CQE */
    uint8_t zc;           /* zero copy asked for (the policy, at send()) */
    uint8_t zc_used;      /* some of it went by zero copy */
    uint8_t copied;       /* the kernel said it copied */
    uint8_t skipped;      /* never sent: an earlier send on the stream failed */
} BioZeroCopySlot;

typedef struct {
    uint32_t id;          /* a MSG_ZEROCOPY id whose notification is due */
    uint32_t idx;         /* its buffer; BIO_ZEROCOPY_NO_SLOT: the entry is empty */
} BioZeroCopyId;

typedef struct {
    PyObject_HEAD
    int fd;               /* our dup of the socket; -1 once closed */
    BioWake wake;         /* close() wakes every waiter; the fork check */
    int backend;          /* BIO_ZEROCOPY_BACKEND_COPY / _MSG / _URING */
    int stream;           /* SOCK_STREAM */
    int busy;             /* a call runs without the GIL */
    int calls;            /* calls in progress (GIL): the last out of a closed sender releases it */
    int wake_armed;       /* io_uring: a poll on wake.efd is queued */
    int zerocopy;         /* policy: 0 sends everything by plain copy */
    int min_size;         /* policy: smaller sends go by plain copy */
    int switch_after;     /* policy: call `policy` after this many copied in a row */
    int switch_pending;
    int attached;         /* we hold pool->attached */
    uint32_t copied_streak;
    BioZeroCopyPool *pool;
    BioZeroCopySlot *slots;     /* per pool buffer */
    struct sockaddr_in6 *names; /* per pool buffer: destination */
    uint32_t *queue;      /* unresolved sends in send() order: a circular queue of nbuf entries */
    uint32_t q_head, q_len;
    int broken;           /* stream: errno of the send that failed; no more are made */
    int out_blocked;      /* stream: sendmsg said EAGAIN; go on after EPOLLOUT */
    uint32_t inflight;    /* slots busy */
    uint32_t zc_pending;  /* notifications still to come, all slots */
    uint64_t returned;    /* buffers given back to the pool, ever */
    /* io_uring: one request at a time */
    struct io_uring uring;
    int uring_ok;
    int fixed;            /* the pool is registered as fixed buffers */
    int fixed_errno;      /* why registration failed */
    struct msghdr umsg;   /* the IORING_OP_SENDMSG in flight */
    struct iovec uiov;
    /* sendmsg backends */
    int epfd;             /* edge-triggered: EPOLLERR (error queue), EPOLLOUT (stream) */
    uint32_t next_id;     /* id the kernel gives our next zero-copy send */
    uint32_t id_mask;     /* ids has id_mask + 1 entries */
    BioZeroCopyId *ids;    /* id & id_mask -> buffer, for ids awaiting notification */
    uint64_t counters[BIO_ZEROCOPY_NCOUNTERS];
    PyObject *completion_type; /* class of the Completions we make */
    PyObject *policy;     /* policy(streak): the kernel keeps copying */
    PyObject *waiters;    /* asyncio helper (Python's), or None */
} BioZeroCopyIo;


/* RuntimeError/OSError unless the sender can run a call now. */
int bio_zerocopy_check_usable(BioZeroCopyIo *s);
/* Begin a call: bio_zerocopy_check_usable, then counted in `calls`. 0 or -1.
 * GIL held. */
int bio_zerocopy_enter(BioZeroCopyIo *s);
/* End it: the last call out of a sender that close() woke releases it. */
void bio_zerocopy_leave(BioZeroCopyIo *s);
/* OSError(EBADF, "the ZeroCopySender was closed while waiting"); returns
 * BIO_ZEROCOPY_CLOSED, what a wait that close() ended returns. */
int bio_zerocopy_raise_closed(void);
#define BIO_ZEROCOPY_CLOSED (-2)

/* ---- the bookkeeping and the Completion (zerocopy/completion.c) --------------- */

extern PyTypeObject BioZeroCopyCompletion_Type;

/* Finish slot idx if it is resolved and the kernel owes it nothing more. */
void bio_zerocopy_try_finish(BioZeroCopyIo *s, uint32_t idx);
/* The buffer at the head of the send queue; push one at its tail. */
uint32_t bio_zerocopy_q_head(const BioZeroCopyIo *s);
void bio_zerocopy_q_push(BioZeroCopyIo *s, uint32_t idx);
/* The kernel took r bytes of a piece of slot idx's send (r < 0: -errno). */
void bio_zerocopy_piece_done(BioZeroCopyIo *s, uint32_t idx, int r);
/* Resolve the queue's head idx without a syscall where none is needed. 1 if so. */
int bio_zerocopy_settle_head(BioZeroCopyIo *s, uint32_t idx);
/* Move the queue on as far as the kernel takes it, without waiting. */
int bio_zerocopy_push(BioZeroCopyIo *s);
/* Process every completion available now and move the queue on, without
 * waiting. GIL held. 0, or -1 with an exception set. */
int bio_zerocopy_process(BioZeroCopyIo *s);
/* Process completions until ready(s, arg) or the deadline: 1 ready, 0 timed
 * out, -1 with an exception set, BIO_ZEROCOPY_CLOSED when close() (another
 * thread's, or a signal handler's) ended the wait (OSError EBADF set). Call
 * it between bio_zerocopy_enter and _leave. GIL held. */
int bio_zerocopy_wait_until(BioZeroCopyIo *s, int (*ready)(BioZeroCopyIo *, void *), void *arg,
                            int64_t deadline);
/* ready() tests: Completion c done; a buffer free; nothing in flight. */
int bio_zerocopy_ready_done(BioZeroCopyIo *s, void *c);
int bio_zerocopy_ready_free(BioZeroCopyIo *s, void *x);
int bio_zerocopy_ready_idle(BioZeroCopyIo *s, void *x);
/* A new Completion for slot idx. New reference or NULL. */
BioZeroCopyCompletion *bio_zerocopy_completion_new(BioZeroCopyIo *s, uint32_t idx, uint32_t len);
/* Record the outcome of slot sl in c (cancelled: the sender closed first). */
void bio_zerocopy_completion_fill(BioZeroCopyCompletion *c, const BioZeroCopySlot *sl,
                                  int cancelled);
/* The completed outcome: bytes sent, or OSError; TimeoutError if pending. */
PyObject *bio_zerocopy_completion_outcome(BioZeroCopyCompletion *c);

/* ---- io_uring SEND_ZC (zerocopy/uring.c) ---------------------------------------- */

/* The io_uring, the pool registered as fixed buffers where the kernel lets
 * us. 0 or -errno. */
int bio_zerocopy_uring_setup(BioZeroCopyIo *s);
/* Take the CQEs posted and put the next piece on the io_uring. 0 or -1. */
int bio_zerocopy_uring_push(BioZeroCopyIo *s);
/* Wait up to `left` ns (< 0: no limit) for a CQE: 1, 0 timed out, -errno. nogil. */
int bio_zerocopy_uring_wait_nogil(BioZeroCopyIo *s, int64_t left);
/* Queue a poll on the wake eventfd unless one is queued (or closing): its
 * CQE, when close() writes the eventfd, ends a wait for CQEs. GIL held. */
void bio_zerocopy_uring_arm_wake(BioZeroCopyIo *s);
/* user_data of the wake poll's CQE */
#define BIO_ZEROCOPY_WAKE_UD UINT64_MAX
/* io_uring_get_events on the struct io_uring at uring. nogil. */
int bio_zerocopy_uring_get_events_nogil(void *uring);

/* ---- sendmsg: MSG_ZEROCOPY and plain copies (zerocopy/msg.c) --------------------- */

/* The epoll set (error queue, stream room) and the id table. 0 or -errno. */
int bio_zerocopy_msg_setup(BioZeroCopyIo *s);
/* Take what the epoll set and the error queue say. 0, or -1 with an exception. */
int bio_zerocopy_msg_reap(BioZeroCopyIo *s);
/* Send from the queue's head while the socket takes it. 0, or -1. */
int bio_zerocopy_msg_push(BioZeroCopyIo *s);

#endif /* BIO_ZEROCOPY_H */
