/* UringRing: receive from, and send on, many UDP sockets with io_uring.
 *
 * Receive: every socket has one multishot RECVMSG armed, all drawing from
 * one provided-buffer ring. A datagram on any socket becomes a completion
 * (CQE) holding a buffer; recv_batch() copies it into the caller's batch
 * (entry j <- slot j, batch.sockets[j] <- socket index) and hands the buffer
 * straight back to the kernel. One io_uring_enter per call, whatever the
 * number of sockets; waiting for K completions with a timeout gives a low
 * watermark with one wake-up. A multishot that ends (an error, ENOBUFS when
 * the buffers ran out) is re-armed on the next call; its error is queued for
 * take_errors() and no other socket's data is touched.
 *
 * Send: one SENDMSG per message (a GSO run or a single datagram), all in one
 * submission, each completion recorded against its entries.
 */
#include "burstio.h"

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

/* user_data: op in the top byte, a generation or group in the middle, an
 * index (socket or message) in the low 32 bits. */
enum { BIO_OP_RECV = 1, BIO_OP_SEND = 2, BIO_OP_CANCEL = 3, BIO_OP_STREAM = 4,
       BIO_OP_STREAM_TIMEOUT = 5 };
#define BIO_UD(op, mid, idx) \
    (((uint64_t)(op) << 56) | (((uint64_t)(mid) & 0xffffff) << 32) | (uint32_t)(idx))
#define BIO_UD_OP(ud) ((unsigned)((ud) >> 56))
#define BIO_UD_MID(ud) ((uint32_t)(((ud) >> 32) & 0xffffff))
#define BIO_UD_IDX(ud) ((uint32_t)(ud))

typedef struct {
    BioRingBase base;
    struct io_uring ring;
    int ready;
    unsigned flags;   /* setup flags in effect */
    pid_t owner;      /* SINGLE_ISSUER: the thread that may use the ring */
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    unsigned char *bufs;
    unsigned nbufs, buf_size, recycled;
    struct msghdr rx_hdr;
    struct io_uring_cqe *stash; /* receive CQEs met while waiting for sends */
    unsigned nstash, stash_cap;
    Py_ssize_t sends_left; /* send completions still expected */
    int removed_armed;     /* cancellations not yet completed */
} BioUring;

static PyTypeObject BioUring_Type;
static int bio_uring_check(BioRingBase *base);
static int bio_uring_recv_nogil(void *arg);
static int bio_uring_send_nogil(void *arg);

/* ---- setup ------------------------------------------------------------- */

/* Set up the ring, preferring SINGLE_ISSUER|DEFER_TASKRUN (completion work
 * runs only when we ask for events) unless SQPOLL is wanted. 0 or -errno. */
static int
bio_uring_setup(BioUring *r, unsigned sq_entries, unsigned cq_entries, int sqpoll)
{
    unsigned tries[4] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                             IORING_SETUP_TASKRUN_FLAG,
                         IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                         IORING_SETUP_SINGLE_ISSUER, 0};
    if (sqpoll)
        tries[0] = tries[1] = tries[2] = IORING_SETUP_SQPOLL;
    int err = -EINVAL;
    for (int i = 0; i < 4; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = tries[i] | IORING_SETUP_CQSIZE;
        p.cq_entries = cq_entries;
        p.sq_thread_idle = 50;
        err = io_uring_queue_init_params(sq_entries, &r->ring, &p);
        if (err == 0) {
            r->flags = tries[i];
            return 0;
        }
        if (err != -EINVAL)
            break;
    }
    return err;
}

/* mmap the provided-buffer ring and its buffers, register them as group 0
 * and hand every buffer to the kernel. 0 or -errno. */
static int
bio_uring_setup_buffers(BioUring *r)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    r->br_bytes = (r->nbufs * sizeof(struct io_uring_buf) + page - 1) / page * page;
    void *br = mmap(NULL, r->br_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br == MAP_FAILED)
        return -errno;
    r->br = br;
    void *bufs = mmap(NULL, (size_t)r->nbufs * r->buf_size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (bufs == MAP_FAILED)
        return -errno;
    r->bufs = bufs;
    io_uring_buf_ring_init(r->br);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)r->br;
    reg.ring_entries = r->nbufs;
    reg.bgid = 0;
    int err = io_uring_register_buf_ring(&r->ring, &reg, 0);
    if (err < 0)
        return err;
    int mask = io_uring_buf_ring_mask(r->nbufs);
    for (unsigned i = 0; i < r->nbufs; i++)
        io_uring_buf_ring_add(r->br, r->bufs + (size_t)i * r->buf_size, r->buf_size,
                              (unsigned short)i, mask, (int)i);
    io_uring_buf_ring_advance(r->br, (int)r->nbufs);
    return 0;
}

static int
bio_is_pow2(long v)
{
    return v > 0 && (v & (v - 1)) == 0;
}

static PyObject *
bio_uring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_sockets", "buffers", "buffer_size", "sqpoll", NULL};
    int max_sockets = 1024, nbufs = 4096, buf_size = 2048, sqpoll = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|iiip:UringRing", kwlist, &max_sockets,
                                     &nbufs, &buf_size, &sqpoll))
        return NULL;
    if (max_sockets < 1 || max_sockets > (1 << 20) || !bio_is_pow2(nbufs) || nbufs > 32768 ||
        buf_size < 128 || buf_size > (1 << 20)) {
        PyErr_Format(PyExc_ValueError,
                     "need 1 <= max_sockets <= 1048576 (got %d), buffers a power of two "
                     "<= 32768 (got %d), 128 <= buffer_size <= 1048576 (got %d)",
                     max_sockets, nbufs, buf_size);
        return NULL;
    }
    BioUring *r = (BioUring *)type->tp_alloc(type, 0);
    if (r == NULL || bio_ringbase_alloc(&r->base, max_sockets) < 0)
        goto fail;
    r->nbufs = (unsigned)nbufs;
    r->buf_size = (unsigned)buf_size;
    r->stash_cap = (unsigned)nbufs + 64;
    r->stash = PyMem_Calloc(r->stash_cap, sizeof(struct io_uring_cqe));
    if (r->stash == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    int err = bio_uring_setup(r, 256, 2 * (unsigned)nbufs + 2 * (unsigned)max_sockets, sqpoll);
    if (err == 0) {
        r->ready = 1;
        err = bio_uring_setup_buffers(r);
    }
    if (err < 0) {
        bio_raise_errno(err);
        goto fail;
    }
    r->rx_hdr.msg_namelen = sizeof(struct sockaddr_in6);
    r->owner = (pid_t)syscall(SYS_gettid);
    r->base.check = bio_uring_check;
    r->base.recv_nogil = bio_uring_recv_nogil;
    r->base.send_nogil = bio_uring_send_nogil;
    return (PyObject *)r;
fail:
    Py_XDECREF(r);
    return NULL;
}

static void
bio_uring_dealloc(BioUring *r)
{
    if (r->ready)
        io_uring_queue_exit(&r->ring);
    if (r->br != NULL)
        munmap(r->br, r->br_bytes);
    if (r->bufs != NULL)
        munmap(r->bufs, (size_t)r->nbufs * r->buf_size);
    PyMem_Free(r->stash);
    BioRingBase_Type.tp_dealloc((PyObject *)r);
}

/* RuntimeError unless the ring is open and (SINGLE_ISSUER) this is its thread. */
static int
bio_uring_check(BioRingBase *base)
{
    BioUring *r = (BioUring *)base;
    if (!r->ready) {
        PyErr_SetString(PyExc_ValueError, "the ring is closed");
        return -1;
    }
    if ((r->flags & IORING_SETUP_SINGLE_ISSUER) && (pid_t)syscall(SYS_gettid) != r->owner) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this Ring was made in another thread; an io_uring SINGLE_ISSUER "
                        "ring is used from the thread that made it");
        return -1;
    }
    return 0;
}

/* ---- SQE helpers ------------------------------------------------------- */

/* A free SQE, submitting what is queued if the SQ is full. nogil. */
static struct io_uring_sqe *
bio_uring_sqe(BioUring *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (sqe == NULL) {
        BIO_RCOUNT(r, BIO_R_SYSCALLS, 1);
        io_uring_submit(&r->ring);
        sqe = io_uring_get_sqe(&r->ring);
    }
    return sqe;
}

/* Arm a multishot RECVMSG on every socket that needs one. nogil. */
static void
bio_uring_rearm_nogil(BioUring *r)
{
    BioRingBase *t = &r->base;
    for (int i = 0; i < t->cap; i++) {
        if (t->state[i] != BIO_SOCK_IDLE)
            continue;
        struct io_uring_sqe *sqe = bio_uring_sqe(r);
        if (sqe == NULL)
            return; /* try again next call */
        io_uring_prep_recvmsg_multishot(sqe, t->fds[i], &r->rx_hdr, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = 0;
        io_uring_sqe_set_data64(sqe, BIO_UD(BIO_OP_RECV, t->gen[i], i));
        t->state[i] = BIO_SOCK_ARMED;
        BIO_RCOUNT(r, BIO_R_RX_REARMS, 1);
    }
}

/* ---- completions ------------------------------------------------------- */

static void
bio_uring_recycle(BioUring *r, unsigned bid)
{
    io_uring_buf_ring_add(r->br, r->bufs + (size_t)bid * r->buf_size, r->buf_size,
                          (unsigned short)bid, io_uring_buf_ring_mask(r->nbufs), (int)r->recycled);
    r->recycled++;
}

/* A receive CQE that carries no datagram: the end of a multishot (re-arm it
 * unless the socket is gone), an error to queue, or a stale one. nogil. */
static void
bio_uring_recv_ended(BioUring *r, const struct io_uring_cqe *cqe, int current)
{
    BioRingBase *t = &r->base;
    uint32_t idx = BIO_UD_IDX(cqe->user_data);
    if (!current)
        return; /* the socket was removed: nothing to report */
    if (!(cqe->flags & IORING_CQE_F_MORE) && t->state[idx] == BIO_SOCK_ARMED)
        t->state[idx] = BIO_SOCK_IDLE;
    if (cqe->res >= 0)
        return;
    int err = -cqe->res;
    if (err == ENOBUFS)
        BIO_RCOUNT(r, BIO_R_RX_ENOBUFS, 1);
    if (err == EBADF || err == ENOTSOCK)
        t->state[idx] = BIO_SOCK_DEAD; /* closed behind our back: do not re-arm */
    bio_ringbase_error_nogil(t, (int)idx, err);
}

/* Copy the datagram of a receive CQE into entry j of b. nogil. */
static void
bio_uring_take_datagram(BioUring *r, const struct io_uring_cqe *cqe, BioBatch *b, Py_ssize_t j)
{
    unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    unsigned char *buf = r->bufs + (size_t)bid * r->buf_size;
    struct io_uring_recvmsg_out *out = io_uring_recvmsg_validate(buf, cqe->res, &r->rx_hdr);
    uint32_t idx = BIO_UD_IDX(cqe->user_data);
    uint32_t plen = 0, stored = 0;
    int trunc = 0;
    memset(&b->names[j], 0, sizeof(b->names[j]));
    if (out != NULL) {
        plen = io_uring_recvmsg_payload_length(out, cqe->res, &r->rx_hdr);
        stored = plen > (uint32_t)b->slot_size ? (uint32_t)b->slot_size : plen;
        trunc = (out->flags & MSG_TRUNC) || stored < plen;
        memcpy(b->arena + (size_t)j * (size_t)b->slot_size,
               io_uring_recvmsg_payload(out, &r->rx_hdr), stored);
        size_t nl = out->namelen < sizeof(b->names[j]) ? out->namelen : sizeof(b->names[j]);
        memcpy(&b->names[j], io_uring_recvmsg_name(out), nl);
    }
    bio_ring_set_received(b, j, stored, trunc, (int)idx);
    bio_uring_recycle(r, bid);
    BIO_RCOUNT(r, BIO_R_RX_DATAGRAMS, 1);
    BIO_RCOUNT(r, BIO_R_RX_BYTES, stored);
    if (trunc)
        BIO_RCOUNT(r, BIO_R_RX_TRUNCATED, 1);
}

/* Whether a receive CQE belongs to the socket now in its slot. */
static int
bio_uring_current(BioUring *r, const struct io_uring_cqe *cqe)
{
    uint32_t idx = BIO_UD_IDX(cqe->user_data);
    return idx < (uint32_t)r->base.cap && r->base.state[idx] != BIO_SOCK_FREE &&
           BIO_UD_MID(cqe->user_data) == (r->base.gen[idx] & 0xffffff);
}

/* Handle one receive CQE: into b at *n if it has a datagram and room
 * (returns 0 if the batch is full: leave it), else bookkeeping. nogil. */
static int
bio_uring_on_recv(BioUring *r, const struct io_uring_cqe *cqe, BioBatch *b, Py_ssize_t *n)
{
    int current = bio_uring_current(r, cqe);
    int data = cqe->res >= 0 && (cqe->flags & IORING_CQE_F_BUFFER);
    if (data && current && b != NULL) {
        if (*n >= b->capacity || *n >= b->slots)
            return 0;
        bio_uring_take_datagram(r, cqe, b, (*n)++);
    } else if (data && current) {
        if (r->nstash >= r->stash_cap)
            return 0; /* cannot happen: one CQE per buffer */
        r->stash[r->nstash++] = *cqe;
        return 1; /* keeps its buffer until recv_batch takes it */
    } else if (data) {
        bio_uring_recycle(r, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    }
    bio_uring_recv_ended(r, cqe, current);
    return 1;
}

typedef struct {
    BioBatch *b;       /* receive target, or NULL (stash data instead) */
    Py_ssize_t n;      /* entries filled */
    int32_t *results;  /* send results [group][message], or NULL */
    Py_ssize_t nmsgs;
    int stream_res, stream_done, timeout_done; /* recv_stream's completions */
} BioReap;

/* Send completion: message m of group g sent (0) or failed (errno). */
static void
bio_uring_on_send(BioUring *r, const struct io_uring_cqe *cqe, BioReap *rp)
{
    uint32_t m = BIO_UD_IDX(cqe->user_data), g = BIO_UD_MID(cqe->user_data);
    r->sends_left--;
    if (rp->results != NULL && m < (uint32_t)rp->nmsgs)
        rp->results[(size_t)g * (size_t)rp->nmsgs + m] = cqe->res < 0 ? -cqe->res : 0;
}

/* Consume the CQEs that are ready. nogil. */
static void
bio_uring_reap_nogil(BioUring *r, BioReap *rp)
{
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&r->ring, head, cqe) {
        unsigned op = BIO_UD_OP(cqe->user_data);
        if (op == BIO_OP_RECV && !bio_uring_on_recv(r, cqe, rp->b, &rp->n))
            break;
        if (op == BIO_OP_SEND)
            bio_uring_on_send(r, cqe, rp);
        if (op == BIO_OP_STREAM) {
            rp->stream_res = cqe->res;
            rp->stream_done = 1;
        }
        if (op == BIO_OP_STREAM_TIMEOUT)
            rp->timeout_done = 1;
        seen++;
    }
    io_uring_cq_advance(&r->ring, seen);
    if (r->recycled) {
        io_uring_buf_ring_advance(r->br, (int)r->recycled);
        r->recycled = 0;
    }
}

/* Move stashed receive CQEs into b. nogil. */
static void
bio_uring_unstash(BioUring *r, BioBatch *b, Py_ssize_t *n)
{
    unsigned used = 0;
    while (used < r->nstash && *n < b->capacity && *n < b->slots) {
        const struct io_uring_cqe *cqe = &r->stash[used++];
        if (bio_uring_current(r, cqe))
            bio_uring_take_datagram(r, cqe, b, (*n)++);
        else
            bio_uring_recycle(r, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    }
    memmove(r->stash, r->stash + used, (r->nstash - used) * sizeof(*r->stash));
    r->nstash -= used;
    if (r->recycled) {
        io_uring_buf_ring_advance(r->br, (int)r->recycled);
        r->recycled = 0;
    }
}

/* Submit what is queued and wait up to deadline_ns (-1: forever) for `want`
 * completions in all. 0, or -errno (-ETIME: timed out). nogil. */
static int
bio_uring_wait_nogil(BioUring *r, unsigned want, int64_t deadline_ns)
{
    BIO_RCOUNT(r, BIO_R_SYSCALLS, 1);
    struct io_uring_cqe *cqe;
    if (deadline_ns < 0) {
        int err = io_uring_submit_and_wait(&r->ring, want);
        return err < 0 ? err : 0;
    }
    int64_t left = deadline_ns - bio_now_ns();
    if (left < 0)
        left = 0;
    struct __kernel_timespec ts = {.tv_sec = left / 1000000000, .tv_nsec = left % 1000000000};
    int err = io_uring_submit_and_wait_timeout(&r->ring, &cqe, want, &ts, NULL);
    return err < 0 ? err : 0;
}

/* ---- receive ----------------------------------------------------------- */

/* Whether the kernel holds completion work for us (DEFER_TASKRUN with
 * TASKRUN_FLAG tells; without the flag, assume so). */
static int
bio_uring_work_pending(BioUring *r)
{
    if (!(r->flags & IORING_SETUP_TASKRUN_FLAG))
        return 0;
    return (IO_URING_READ_ONCE(*r->ring.sq.kflags) & IORING_SQ_TASKRUN) != 0;
}

/* Take every completion there is, up to the batch's room: the kernel runs
 * only so much deferred work per entry (about 20 items unless asked for
 * more), so ask for as many as there is room. nogil. */
static int
bio_uring_take_all_nogil(BioUring *r, BioReap *rp, Py_ssize_t room)
{
    bio_uring_reap_nogil(r, rp);
    while (rp->n < room && (bio_uring_work_pending(r) || io_uring_sq_ready(&r->ring))) {
        Py_ssize_t before = rp->n;
        int nerr = r->base.nerr;
        int err = bio_uring_wait_nogil(r, (unsigned)(room - rp->n), 0 /* do not wait */);
        bio_uring_reap_nogil(r, rp);
        if (err < 0 && err != -ETIME)
            return err;
        if (rp->n == before && r->base.nerr == nerr)
            break; /* the flag can outlive the work: stop when nothing moves */
    }
    return 0;
}

/* Re-arm, take what is ready, wait for the watermark (or its deadline),
 * then, if nothing came, for one datagram until the timeout. Errors that
 * arrive count as arrivals (the call returns for them). 0 or -errno
 * (EINTR: resumable). nogil. */
static int
bio_uring_recv_nogil(void *arg)
{
    BioRingRecv *c = arg;
    BioUring *r = (BioUring *)c->r;
    BioReap rp = {.b = c->b, .n = c->n};
    Py_ssize_t room = bio_ring_room(c->b);
    bio_uring_rearm_nogil(r);
    bio_uring_unstash(r, c->b, &rp.n);
    for (int phase = 0; phase < 2; phase++) {
        int err = bio_uring_take_all_nogil(r, &rp, room);
        c->n = rp.n;
        if (err < 0)
            return err;
        Py_ssize_t want = phase == 0 ? c->want : 1;
        int64_t deadline = phase == 0 ? c->watermark_deadline : c->first_deadline;
        while (rp.n + (r->base.nerr - c->errors0) < want && rp.n < room) {
            Py_ssize_t have = rp.n + (r->base.nerr - c->errors0);
            /* With DEFER_TASKRUN the kernel wakes a waiter by counting
             * pending work items, and one multishot receive is one item
             * however many datagrams it has: wait for one, take what came,
             * go on waiting (no return to Python in between). Other rings
             * wait for the whole watermark in the kernel. */
            unsigned nr = (r->flags & IORING_SETUP_DEFER_TASKRUN) ? 1 : (unsigned)(want - have);
            err = bio_uring_wait_nogil(r, nr, deadline);
            if (err == 0 || err == -ETIME)
                err = bio_uring_take_all_nogil(r, &rp, room);
            c->n = rp.n;
            if (err == -ETIME || (deadline >= 0 && bio_now_ns() >= deadline))
                break;
            if (err < 0)
                return err;
        }
        if (rp.n + (r->base.nerr - c->errors0) > 0 || c->first_deadline == c->watermark_deadline)
            return 0;
    }
    return 0;
}

/* ---- sockets ----------------------------------------------------------- */

static PyObject *
bio_uring_add(BioUring *r, PyObject *args, PyObject *kwds)
{
    int fd, stream;
    if (bio_ringbase_add_args(args, kwds, &fd, &stream) < 0 || bio_uring_check(&r->base) < 0)
        return NULL;
    int idx = bio_ringbase_take_slot(&r->base, fd);
    if (idx >= 0 && stream)
        r->base.state[idx] = BIO_SOCK_STREAM;
    return idx < 0 ? NULL : PyLong_FromLong(idx);
}

/* Cancel a socket's multishot receive and free its slot; its later CQEs are
 * recognised as stale by the generation in their user_data. */
static PyObject *
bio_uring_remove(BioUring *r, PyObject *arg)
{
    int idx;
    if (bio_uring_check(&r->base) < 0 || bio_ringbase_index(&r->base, arg, &idx) < 0)
        return NULL;
    if (r->base.state[idx] == BIO_SOCK_ARMED) {
        struct io_uring_sqe *sqe = bio_uring_sqe(r);
        if (sqe != NULL) {
            io_uring_prep_cancel64(sqe, BIO_UD(BIO_OP_RECV, r->base.gen[idx], idx), 0);
            io_uring_sqe_set_data64(sqe, BIO_UD(BIO_OP_CANCEL, 0, idx));
            io_uring_submit(&r->ring);
            BIO_RCOUNT(r, BIO_R_SYSCALLS, 1);
        }
    }
    bio_ringbase_free_slot(&r->base, idx);
    Py_RETURN_NONE;
}

static PyObject *
bio_uring_close(BioUring *r, PyObject *Py_UNUSED(ignored))
{
    if (r->ready) {
        io_uring_queue_exit(&r->ring);
        r->ready = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *
bio_uring_describe(BioUring *r, PyObject *Py_UNUSED(ignored))
{
    const char *mode = (r->flags & IORING_SETUP_SQPOLL) ? "SQPOLL"
                       : (r->flags & IORING_SETUP_DEFER_TASKRUN) ? "SINGLE_ISSUER|DEFER_TASKRUN"
                       : (r->flags & IORING_SETUP_SINGLE_ISSUER) ? "SINGLE_ISSUER"
                                                                   : "plain";
    return PyUnicode_FromFormat("io_uring (%s), multishot RECVMSG, %u x %u-byte provided buffers",
                                mode, r->nbufs, r->buf_size);
}

/* ---- send -------------------------------------------------------------- */

/* Queue one SENDMSG per (socket, message), submitting as the SQ fills, then
 * wait for every completion; receive completions met on the way are kept
 * for recv_batch. 0 or -errno (EINTR: resumable). nogil. */
static int
bio_uring_send_nogil(void *arg)
{
    BioRingSend *c = arg;
    BioUring *r = (BioUring *)c->r;
    BioBatch *b = c->b;
    while (c->queued < c->total) {
        Py_ssize_t k = c->queued / c->m, i = c->queued % c->m;
        int fd = c->group_fds ? c->group_fds[k] : r->base.fds[b->sockets[b->msg_entry[i]]];
        struct io_uring_sqe *sqe = bio_uring_sqe(r);
        if (sqe == NULL)
            return -EBUSY;
        io_uring_prep_sendmsg(sqe, fd, &b->msgs[i].msg_hdr, 0);
        io_uring_sqe_set_data64(sqe, BIO_UD(BIO_OP_SEND, k, i));
        r->sends_left++;
        c->queued++;
    }
    BioReap rp = {.b = NULL, .results = c->results, .nmsgs = c->m};
    while (r->sends_left > 0) {
        int err = bio_uring_wait_nogil(r, 1, -1);
        bio_uring_reap_nogil(r, &rp);
        if (err < 0)
            return err;
    }
    return 0;
}

/* ---- stream receive with a byte low watermark --------------------------- */

typedef struct {
    BioUring *r;
    int fd;
    void *buf;
    size_t want;
    int64_t timeout_ns;
    int queued;
    BioReap rp;
} BioUringStream;

/* One RECV(MSG_WAITALL) of `want` bytes linked to a timeout: one wake-up
 * when the watermark is met or the time is up. nogil. */
static int
bio_uring_stream_run_nogil(void *arg)
{
    BioUringStream *c = arg;
    BioUring *r = c->r;
    struct __kernel_timespec ts = {.tv_sec = c->timeout_ns / 1000000000,
                                   .tv_nsec = c->timeout_ns % 1000000000};
    if (!c->queued) {
        struct io_uring_sqe *sqe = bio_uring_sqe(r);
        if (sqe == NULL)
            return -EBUSY;
        io_uring_prep_recv(sqe, c->fd, c->buf, c->want, MSG_WAITALL);
        io_uring_sqe_set_data64(sqe, BIO_UD(BIO_OP_STREAM, 0, 0));
        if (c->timeout_ns >= 0) {
            sqe->flags |= IOSQE_IO_LINK;
            struct io_uring_sqe *t = bio_uring_sqe(r);
            if (t == NULL)
                return -EBUSY;
            io_uring_prep_link_timeout(t, &ts, 0);
            io_uring_sqe_set_data64(t, BIO_UD(BIO_OP_STREAM_TIMEOUT, 0, 0));
        } else {
            c->rp.timeout_done = 1;
        }
        c->queued = 1;
    }
    while (!c->rp.stream_done || !c->rp.timeout_done) {
        int err = bio_uring_wait_nogil(r, 1, -1);
        bio_uring_reap_nogil(r, &c->rp);
        if (err < 0)
            return err;
    }
    return 0;
}

PyDoc_STRVAR(bio_uring_recv_stream_doc,
"recv_stream(index, buffer, min_bytes, timeout=None) -> int\n\n"
"Stream socket: wait until min_bytes have arrived into buffer or timeout\n"
"seconds have passed (one wake-up either way); returns the bytes received\n"
"(0 at end of stream). OSError with the errno on failure.");

static PyObject *
bio_uring_recv_stream(BioUring *r, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"index", "buffer", "min_bytes", "timeout", NULL};
    PyObject *a[4];
    int idx;
    Py_buffer pb;
    BioUringStream c = {.r = r, .rp = {.b = NULL}};
    if (bio_args_parse("recv_stream", args, nargs, kwnames, names, 4, 3, a) < 0 ||
        bio_uring_check(&r->base) < 0 || bio_ringbase_index(&r->base, a[0], &idx) < 0 ||
        bio_timeout_parse(a[3] ? a[3] : Py_None, &c.timeout_ns) < 0)
        return NULL;
    Py_ssize_t want = PyNumber_AsSsize_t(a[2], PyExc_OverflowError);
    if (want == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(a[1], &pb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (want < 1 || want > pb.len) {
        PyErr_Format(PyExc_ValueError, "min_bytes must be between 1 and len(buffer) = %zd, got %zd",
                     pb.len, want);
        goto out;
    }
    c.fd = r->base.fds[idx];
    c.buf = pb.buf;
    c.want = (size_t)want;
    int err = bio_nogil_retry(bio_uring_stream_run_nogil, &c);
    if (err == -EINTR)
        goto out;
    if (err < 0 || (c.rp.stream_res < 0 && c.rp.stream_res != -ECANCELED)) {
        bio_raise_errno(err < 0 ? err : c.rp.stream_res);
        goto out;
    }
    ret = PyLong_FromLong(c.rp.stream_res < 0 ? 0 : c.rp.stream_res);
out:
    PyBuffer_Release(&pb);
    return ret;
}

/* ---- the type ---------------------------------------------------------- */

static PyMethodDef bio_uring_methods[] = {
    {"recv_stream", (PyCFunction)(void (*)(void))bio_uring_recv_stream,
     METH_FASTCALL | METH_KEYWORDS, bio_uring_recv_stream_doc},
    {"add", (PyCFunction)(void (*)(void))bio_uring_add, METH_VARARGS | METH_KEYWORDS,
     "add(sock, stream=False) -> index (stream: for recv_stream only)"},
    {"remove", (PyCFunction)bio_uring_remove, METH_O,
     "remove(index): stop receiving on that socket and free its index"},
    {"close", (PyCFunction)bio_uring_close, METH_NOARGS, "close(): tear the ring down"},
    {"describe", (PyCFunction)bio_uring_describe, METH_NOARGS, "describe() -> str"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BioUring_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.UringRing",
    .tp_basicsize = sizeof(BioUring),
    .tp_dealloc = (destructor)bio_uring_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "UringRing(max_sockets=1024, buffers=4096, buffer_size=2048, sqpoll=False):\n"
              "many UDP sockets through one io_uring (internal; see burstio.Ring).",
    .tp_methods = bio_uring_methods,
    .tp_new = bio_uring_new,
};

int
bio_ring_init_types(PyObject *module)
{
    BioUring_Type.tp_base = &BioRingBase_Type;
    if (PyType_Ready(&BioRingBase_Type) < 0 || PyType_Ready(&BioUring_Type) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "UringRing", (PyObject *)&BioUring_Type) < 0)
        return -1;
    return bio_drain_init_type(module);
}
