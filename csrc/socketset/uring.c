/* UringSocketSet: receive from, and send on, many UDP sockets with io_uring.
 *
 * Receive (where a datagram goes): every socket has one multishot RECVMSG
 * armed, all drawing from one buffer ring (the provided buffers). A datagram
 * on any socket becomes a completion (CQE) holding a buffer; recv_batch()
 * waits for them here and socketset/uring_completions.c copies each into the
 * caller's batch (entry j <- slot j, batch.sockets[j] <- socket index) and
 * hands the buffer straight back to the kernel. A multishot that ends (an
 * error, ENOBUFS when the buffers ran out) is re-armed on the next call; its
 * error is queued for take_errors() and no other socket's data is touched.
 *
 * Send: one SENDMSG (MSG_DONTWAIT: a full socket fails at once with EAGAIN
 * instead of leaving a send pending) per message and socket, submitted as
 * the SQ fills, every completion recorded against its message.
 *
 * This file: set-up, arming, submitting and waiting (close()'s wake chain
 * included), the receive/send/stream calls, sockets and the type; the
 * user_data encoding and the set's struct are in socketset/uring.h.
 */
#include "socketset/uring.h"

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* submission queue entries (the completion queue is sized from the buffers and sockets) */
#define BIO_URINGSET_SQ_ENTRIES 256u

static PyTypeObject BioUringSet_Type;
static int bio_uringset_check(BioSocketSet *base);
static int bio_uringset_recv_nogil(void *arg);
static int bio_uringset_send_nogil(void *arg);
static int bio_uringset_stream_nogil(void *arg);
static void bio_uringset_stream_abort_nogil(void *arg);
static void bio_uringset_close_now(BioSocketSet *base);
static int bio_uringset_after_fork(BioSocketSet *base);
static void bio_uringset_wake_arm(BioUringSet *r);

/* ---- setup ------------------------------------------------------------- */

/* Set up the io_uring. Default: SINGLE_ISSUER|DEFER_TASKRUN (the kernel does
 * receive work only when we ask for events: cheapest, and inside our
 * calls). single_wakeup: COOP_TASKRUN instead, so a min_datagrams wait is
 * counted in the kernel and wakes us once. sqpoll: a submission thread.
 * Falls back to fewer flags on older kernels. 0 or -errno. */
static int
bio_uringset_setup(BioUringSet *r, unsigned cq_entries, int sqpoll, int single_wakeup)
{
    const unsigned si = IORING_SETUP_SINGLE_ISSUER, tf = IORING_SETUP_TASKRUN_FLAG;
    unsigned tries[4] = {si | IORING_SETUP_DEFER_TASKRUN | tf, si | IORING_SETUP_DEFER_TASKRUN,
                         si, 0};
    if (single_wakeup) {
        tries[0] = si | IORING_SETUP_COOP_TASKRUN | tf;
        tries[1] = si | IORING_SETUP_COOP_TASKRUN;
    }
    if (sqpoll)
        tries[0] = tries[1] = tries[2] = IORING_SETUP_SQPOLL;
    int err = -EINVAL;
    for (int i = 0; i < 4 && err == -EINVAL; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = tries[i] | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        p.cq_entries = cq_entries;
        p.sq_thread_idle = 50;
        err = io_uring_queue_init_params(BIO_URINGSET_SQ_ENTRIES, &r->uring, &p);
        if (err == 0)
            r->flags = tries[i];
    }
    return err;
}

/* mmap the buffer ring and its buffers, register them as group 0
 * and hand every buffer to the kernel. 0 or -errno. */
static int
bio_uringset_setup_buffers(BioUringSet *r)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    r->bufring_bytes = (r->nbufs * sizeof(struct io_uring_buf) + page - 1) / page * page;
    void *bufring = mmap(NULL, r->bufring_bytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (bufring == MAP_FAILED)
        return -errno;
    r->bufring = bufring;
    void *bufs = mmap(NULL, (size_t)r->nbufs * r->buf_size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (bufs == MAP_FAILED)
        return -errno;
    r->bufs = bufs;
    io_uring_buf_ring_init(r->bufring);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)r->bufring;
    reg.ring_entries = r->nbufs;
    int err = io_uring_register_buf_ring(&r->uring, &reg, 0);
    if (err < 0)
        return err;
    int mask = io_uring_buf_ring_mask(r->nbufs);
    for (unsigned i = 0; i < r->nbufs; i++)
        io_uring_buf_ring_add(r->bufring, r->bufs + (size_t)i * r->buf_size, r->buf_size,
                              (unsigned short)i, mask, (int)i);
    io_uring_buf_ring_advance(r->bufring, (int)r->nbufs);
    return 0;
}

static int
bio_uringset_check_args(int max_sockets, int nbufs, int buf_size)
{
    int pow2 = nbufs > 0 && (nbufs & (nbufs - 1)) == 0;
    if (max_sockets < 1 || max_sockets > BIO_URINGSET_MAX_SOCKETS || !pow2 || nbufs > 32768 ||
        buf_size < 128 || buf_size > (1 << 20)) {
        PyErr_Format(PyExc_ValueError,
                     "need 1 <= max_sockets <= %d (got %d), buffers a power of two <= 32768 "
                     "(got %d), 128 <= buffer_size <= 1048576 (got %d)",
                     BIO_URINGSET_MAX_SOCKETS, max_sockets, nbufs, buf_size);
        return -1;
    }
    return 0;
}

static PyObject *
bio_uringset_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_sockets", "buffers", "buffer_size", "sqpoll", "single_wakeup",
                             NULL};
    int max_sockets = 1024, nbufs = 4096, buf_size = 2048, sqpoll = 0, single = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|iiipp:UringSocketSet", kwlist, &max_sockets,
                                     &nbufs, &buf_size, &sqpoll, &single) ||
        bio_uringset_check_args(max_sockets, nbufs, buf_size) < 0)
        return NULL;
    BioUringSet *r = (BioUringSet *)type->tp_alloc(type, 0);
    if (r == NULL || bio_socketset_alloc(&r->base, max_sockets) < 0)
        goto fail;
    r->nbufs = (unsigned)nbufs;
    r->buf_size = (unsigned)buf_size;
    r->stash_cap = (unsigned)nbufs + 64;
    r->stash = PyMem_Calloc(r->stash_cap, sizeof(struct io_uring_cqe));
    if (r->stash == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    /* room for a completion per buffer and per socket, twice; never fewer
     * than the submission queue's entries (the kernel refuses a completion
     * queue smaller than that with EINVAL) */
    unsigned cq_entries = 2 * (unsigned)nbufs + 2 * (unsigned)max_sockets;
    if (cq_entries < BIO_URINGSET_SQ_ENTRIES)
        cq_entries = BIO_URINGSET_SQ_ENTRIES;
    int err = bio_uringset_setup(r, cq_entries, sqpoll, single);
    if (err == 0) {
        r->ready = 1;
        r->uring_fd = r->uring.ring_fd;
        err = bio_uringset_setup_buffers(r);
    }
    if (err < 0) {
        bio_raise_errno(err);
        goto fail;
    }
    bio_uringset_wake_arm(r);
    if ((err = io_uring_submit(&r->uring)) < 0) {
        bio_raise_errno(err);
        goto fail;
    }
    r->rx_hdr.msg_namelen = r->rx_hdr_meta.msg_namelen = sizeof(struct sockaddr_in6);
    r->rx_hdr.msg_controllen = BIO_URINGSET_CONTROL; /* UDP_GRO: see take_datagram */
    r->rx_hdr_meta.msg_controllen = BIO_CMSG_RX_ALL;
    r->owner = (pid_t)syscall(SYS_gettid);
    r->base.close_now = bio_uringset_close_now;
    r->base.after_fork = bio_uringset_after_fork;
    r->base.check = bio_uringset_check;
    r->base.recv_nogil = bio_uringset_recv_nogil;
    r->base.send_nogil = bio_uringset_send_nogil;
    r->base.stream_nogil = bio_uringset_stream_nogil;
    r->base.stream_abort_nogil = bio_uringset_stream_abort_nogil;
    return (PyObject *)r;
fail:
    Py_XDECREF(r);
    return NULL;
}

static void
bio_uringset_dealloc(BioUringSet *r)
{
    if (r->ready)
        io_uring_queue_exit(&r->uring);
    if (r->bufring != NULL)
        munmap(r->bufring, r->bufring_bytes);
    if (r->bufs != NULL)
        munmap(r->bufs, (size_t)r->nbufs * r->buf_size);
    PyMem_Free(r->stash);
    BioSocketSet_Type.tp_dealloc((PyObject *)r);
}

/* A fork()ed child's first call: refused. The io_uring, its buffer ring and
 * the receives armed on it are the parent's (the child's copy is the same
 * kernel object): a call here would take the parent's completions and
 * buffers. */
static int
bio_uringset_after_fork(BioSocketSet *base)
{
    PyErr_Format(PyExc_RuntimeError,
                 "this SocketSet (io_uring) was made in process %d; after fork() its io_uring, "
                 "buffer ring and armed receives are the parent's (a call here would take the "
                 "parent's completions): make a new SocketSet in this process",
                 (int)base->wake.pid);
    return -1;
}

/* ValueError if closed; RuntimeError if SINGLE_ISSUER and not its thread. */
static int
bio_uringset_check(BioSocketSet *base)
{
    BioUringSet *r = (BioUringSet *)base;
    if (!r->ready) {
        PyErr_SetString(PyExc_ValueError, "the socket set is closed");
        return -1;
    }
    if ((r->flags & IORING_SETUP_SINGLE_ISSUER) && (pid_t)syscall(SYS_gettid) != r->owner) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this SocketSet was made in another thread; its SINGLE_ISSUER io_uring "
                        "is used from the thread that made it");
        return -1;
    }
    return 0;
}

/* ---- submitting and waiting -------------------------------------------- */

/* A free SQE, submitting what is queued if the SQ is full. nogil. */
static struct io_uring_sqe *
bio_uringset_sqe(BioUringSet *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
    if (sqe == NULL) {
        BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_SYSCALLS, 1);
        io_uring_submit(&r->uring);
        sqe = io_uring_get_sqe(&r->uring);
    }
    return sqe;
}

/* close() from another thread must end any wait in the io_uring, one for
 * `want` completions included: close() writes the wake eventfd, which ends
 * a POLL_ADD on it, linked to a TIMEOUT of 1 ns. A timeout that expires
 * wakes every waiter of the io_uring whatever its completion count (the
 * kernel returns to user space after any timeout), so the waiter wakes and
 * sees the closing flag. The chain is spent once its timeout's CQE comes;
 * it is queued again at the start of the next call that may wait (never
 * while closing). nogil. */
static void
bio_uringset_wake_arm(BioUringSet *r)
{
    if (r->wake_armed || bio_wake_closing(&r->base.wake))
        return;
    if (io_uring_sq_space_left(&r->uring) < 2) {
        BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_SYSCALLS, 1);
        io_uring_submit(&r->uring);
        if (io_uring_sq_space_left(&r->uring) < 2)
            return; /* try again next call */
    }
    struct io_uring_sqe *poll = io_uring_get_sqe(&r->uring);
    io_uring_prep_poll_add(poll, r->base.wake.efd, POLLIN);
    io_uring_sqe_set_data64(poll, BIO_UD(BIO_OP_WAKE, 0, 0));
    poll->flags |= IOSQE_IO_LINK;
    struct io_uring_sqe *t = io_uring_get_sqe(&r->uring);
    r->wake_ts = (struct __kernel_timespec){.tv_sec = 0, .tv_nsec = 1};
    io_uring_prep_timeout(t, &r->wake_ts, 0, 0);
    io_uring_sqe_set_data64(t, BIO_UD(BIO_OP_WAKE, 0, 1));
    r->wake_armed = 1;
}

/* Submit what is queued, then wait until `want` completions are there,
 * deadline_ns passes (-1: forever; in the past: do not sleep), a signal
 * comes (-EINTR) or any io_uring timeout expires (the wake chain: close()).
 * Submitting and waiting are separate entries so that a signal ends the
 * wait with -EINTR (one io_uring_enter doing both returns the submit count
 * instead). io_uring_enter itself, not liburing's io_uring_wait_cqes, which
 * enters again when woken short of `want` with no timeout given. 0, or
 * -errno (-ETIME: the deadline passed with nothing there). nogil. */
static int
bio_uringset_wait_nogil(BioUringSet *r, unsigned want, int64_t deadline_ns)
{
    if (io_uring_sq_ready(&r->uring)) {
        BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_SYSCALLS, 1);
        int err = io_uring_submit(&r->uring);
        if (err < 0)
            return err;
    }
    BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_SYSCALLS, 1);
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = {0, 0};
    if (deadline_ns >= 0) {
        int64_t left = deadline_ns - bio_now_ns();
        if (left < 0)
            left = 0;
        ts = (struct __kernel_timespec){.tv_sec = left / 1000000000, .tv_nsec = left % 1000000000};
    }
    if (!(r->uring.features & IORING_FEAT_EXT_ARG)) /* (before Linux 5.11) */
        return io_uring_wait_cqes(&r->uring, &cqe, want, deadline_ns < 0 ? NULL : &ts, NULL);
    struct io_uring_getevents_arg arg = {.ts = (uint64_t)(uintptr_t)&ts};
    long rc = syscall(__NR_io_uring_enter, r->uring.ring_fd, 0, want,
                      IORING_ENTER_GETEVENTS | (deadline_ns >= 0 ? IORING_ENTER_EXT_ARG : 0),
                      deadline_ns >= 0 ? (void *)&arg : NULL, deadline_ns >= 0 ? sizeof(arg) : 0);
    return rc < 0 ? -errno : 0;
}

/* Arm a multishot RECVMSG on every socket that needs one. nogil. */
static void
bio_uringset_rearm_nogil(BioUringSet *r)
{
    BioSocketSet *t = &r->base;
    for (int i = 0; i < t->cap; i++) {
        if (t->state[i] != BIO_SOCK_IDLE)
            continue;
        struct io_uring_sqe *sqe = bio_uringset_sqe(r);
        if (sqe == NULL)
            return; /* try again next call */
        /* MSG_TRUNC: payloadlen is then the length on the wire (truncation counted) */
        io_uring_prep_recvmsg_multishot(sqe, t->fds[i], bio_uringset_hdr(r, i), MSG_TRUNC);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = 0;
        io_uring_sqe_set_data64(sqe, BIO_UD(BIO_OP_RECV, t->gen[i], i));
        t->state[i] = BIO_SOCK_ARMED;
        BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_RX_REARMS, 1);
    }
}

/* ---- receive ----------------------------------------------------------- */

/* Whether the kernel holds completion work or overflowed completions for
 * us (only known with TASKRUN_FLAG; else assume not). */
static int
bio_uringset_work_pending(BioUringSet *r)
{
    if (io_uring_cq_has_overflow(&r->uring))
        return 1;
    if (!(r->flags & IORING_SETUP_TASKRUN_FLAG))
        return 0;
    return (IO_URING_READ_ONCE(*r->uring.sq.kflags) & IORING_SQ_TASKRUN) != 0;
}

/* Take every completion there is, up to the batch's room: the kernel runs
 * only so much deferred work per entry (about 20 items unless asked for
 * more), so ask for as many as there is room. nogil. */
static int
bio_uringset_take_all_nogil(BioUringSet *r, BioUringReap *rp, Py_ssize_t room)
{
    bio_uringset_reap_nogil(r, rp);
    while (rp->n < room && (bio_uringset_work_pending(r) || io_uring_sq_ready(&r->uring))) {
        Py_ssize_t before = rp->n;
        int nerr = r->base.nerr;
        int err = bio_uringset_wait_nogil(r, (unsigned)(room - rp->n), 0 /* do not sleep */);
        bio_uringset_reap_nogil(r, rp);
        if (err < 0 && err != -ETIME)
            return err;
        if (rp->n == before && r->base.nerr == nerr)
            break; /* the flag can outlive the work: stop when nothing moves */
    }
    return 0;
}

/* Wait until `want` datagrams or errors are there or the deadline passes.
 * With DEFER_TASKRUN the kernel wakes a waiter by counting pending work
 * items, and one multishot receive is one item however many datagrams it
 * carries: wait for one, take what came, wait again (one entry per arrival
 * burst, no return to Python). Other setups count completions in the kernel
 * and wake once. 0 or -errno. nogil. */
static int
bio_uringset_wait_for_nogil(BioUringSet *r, BioSocketSetRecv *c, BioUringReap *rp, Py_ssize_t want,
                            int64_t deadline)
{
    while (rp->n + (r->base.nerr - c->errors0) < want && rp->n < bio_socketset_room(&r->base, c->b)) {
        Py_ssize_t room = bio_socketset_room(&r->base, c->b);
        Py_ssize_t have = rp->n + (r->base.nerr - c->errors0);
        unsigned nr = (r->flags & IORING_SETUP_DEFER_TASKRUN) ? 1 : (unsigned)(want - have);
        int err = bio_uringset_wait_nogil(r, nr, deadline);
        if (bio_wake_closing(&r->base.wake))
            return -BIO_ECLOSED;
        if (err == 0 || err == -ETIME) {
            int taken = bio_uringset_take_all_nogil(r, rp, room);
            if (taken < 0)
                err = taken;
        }
        c->n = rp->n;
        if (err == -ETIME || (deadline >= 0 && bio_now_ns() >= deadline))
            break;
        if (err < 0)
            return err;
    }
    return 0;
}

/* Re-arm, take what is ready, wait for the watermark (or its deadline),
 * then, if nothing came, for one datagram until the timeout. Errors that
 * arrive count as arrivals. 0 or -errno (EINTR: resumable). nogil. */
static int
bio_uringset_recv_nogil(void *arg)
{
    BioSocketSetRecv *c = arg;
    BioUringSet *r = (BioUringSet *)c->r;
    BioUringReap rp = {.b = c->b, .n = c->n};
    if (bio_wake_closing(&r->base.wake))
        return -BIO_ECLOSED;
    bio_uringset_wake_arm(r);
    bio_uringset_rearm_nogil(r);
    bio_uringset_unstash(r, c->b, &rp.n);
    int err = bio_uringset_take_all_nogil(r, &rp, bio_socketset_room(&r->base, c->b));
    c->n = rp.n;
    if (err == 0)
        err = bio_uringset_wait_for_nogil(r, c, &rp, c->want, c->watermark_deadline);
    if (err == 0 && rp.n + (r->base.nerr - c->errors0) == 0 &&
        c->first_deadline != c->watermark_deadline)
        err = bio_uringset_wait_for_nogil(r, c, &rp, 1, c->first_deadline);
    c->n = rp.n;
    return err;
}

/* ---- send -------------------------------------------------------------- */

/* Queue a SENDMSG per (socket, message), submitting as the SQ fills and
 * taking completions as they come, then wait for the rest. With `stopping`
 * nothing more is queued. Receive completions met on the way are kept for
 * recv_batch. 0 or -errno (EINTR: resumable). nogil. */
static int
bio_uringset_send_nogil(void *arg)
{
    BioSocketSetSend *c = arg;
    BioUringSet *r = (BioUringSet *)c->r;
    BioBatch *b = c->b;
    BioUringReap rp = {.send = c};
    while (!c->stopping && c->queued < c->total) {
        if (io_uring_sq_space_left(&r->uring) == 0) {
            BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_SYSCALLS, 1);
            int err = io_uring_submit(&r->uring);
            bio_uringset_reap_nogil(r, &rp);
            if (err < 0)
                return err;
            continue;
        }
        Py_ssize_t k = c->queued / c->m, i = c->queued % c->m;
        int fd = c->group_fds ? c->group_fds[k] : r->base.fds[b->priv[b->msg_entry[i]].sock];
        struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
        io_uring_prep_sendmsg(sqe, fd, &b->msgs[i].msg_hdr, MSG_DONTWAIT);
        io_uring_sqe_set_data64(sqe, BIO_UD(BIO_OP_SEND, r->base.call_gen, c->queued));
        c->queued++;
    }
    while (c->done < c->queued) {
        int err = bio_uringset_wait_nogil(r, 1, -1);
        bio_uringset_reap_nogil(r, &rp);
        if (err < 0)
            return err;
    }
    return 0;
}

/* ---- stream receive with a byte low watermark --------------------------- */

/* Queue one RECV(MSG_WAITALL) of `want` bytes linked to a timeout: one
 * wake-up when the watermark is met or the time is up (a cancelled RECV
 * reports the bytes it got). -errno if no SQE. nogil. */
static int
bio_uringset_stream_queue(BioUringSet *r, BioSocketSetStream *c)
{
    struct io_uring_sqe *sqe = bio_uringset_sqe(r);
    if (sqe == NULL)
        return -EBUSY;
    io_uring_prep_recv(sqe, c->fd, c->buf, c->want, MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, BIO_UD(BIO_OP_STREAM, r->base.call_gen, 0));
    c->timeout_seen = c->timeout_ns < 0;
    if (c->timeout_ns >= 0) {
        sqe->flags |= IOSQE_IO_LINK;
        struct io_uring_sqe *t = bio_uringset_sqe(r);
        if (t == NULL)
            return -EBUSY;
        struct __kernel_timespec ts = {.tv_sec = c->timeout_ns / 1000000000,
                                       .tv_nsec = c->timeout_ns % 1000000000};
        io_uring_prep_link_timeout(t, &ts, 0);
        io_uring_sqe_set_data64(t, BIO_UD(BIO_OP_STREAM_TIMEOUT, r->base.call_gen, 0));
        BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_SYSCALLS, 1);
        io_uring_submit(&r->uring); /* now, while ts is alive */
    }
    c->queued = 1;
    return 0;
}

/* 0 (c->got: bytes or -errno) or -errno (EINTR: resumable). nogil. */
static int
bio_uringset_stream_nogil(void *arg)
{
    BioSocketSetStream *c = arg;
    BioUringSet *r = (BioUringSet *)c->r;
    BioUringReap rp = {.stream = c};
    if (bio_wake_closing(&r->base.wake) && !c->queued)
        return -BIO_ECLOSED;
    bio_uringset_wake_arm(r);
    if (!c->queued) {
        int err = bio_uringset_stream_queue(r, c);
        if (err < 0)
            return err;
    }
    while (!c->result_seen || !c->timeout_seen) {
        int err = bio_uringset_wait_nogil(r, 1, -1);
        bio_uringset_reap_nogil(r, &rp);
        if (bio_wake_closing(&r->base.wake) && (!c->result_seen || !c->timeout_seen)) {
            bio_uringset_stream_abort_nogil(c); /* the kernel lets go of the buffer first */
            return -BIO_ECLOSED;
        }
        if (err < 0)
            return err;
    }
    if (c->got == -ECANCELED)
        c->got = 0; /* the time ran out before any byte came */
    return 0;
}

/* Cancel a queued stream receive and wait until the kernel is done with
 * the buffer (signals ignored: the buffer's owner is about to let go). */
static void
bio_uringset_stream_abort_nogil(void *arg)
{
    BioSocketSetStream *c = arg;
    BioUringSet *r = (BioUringSet *)c->r;
    struct io_uring_sqe *sqe = bio_uringset_sqe(r);
    if (sqe != NULL) {
        io_uring_prep_cancel64(sqe, BIO_UD(BIO_OP_STREAM, r->base.call_gen, 0), 0);
        io_uring_sqe_set_data64(sqe, BIO_UD(BIO_OP_CANCEL, 0, 0));
    }
    BioUringReap rp = {.stream = c};
    while (!c->result_seen || !c->timeout_seen) {
        bio_uringset_wait_nogil(r, 1, -1);
        bio_uringset_reap_nogil(r, &rp);
    }
}

/* ---- sockets ----------------------------------------------------------- */

static PyObject *
bio_uringset_add(BioUringSet *r, PyObject *args, PyObject *kwds)
{
    int fd, stream, meta;
    if (bio_socketset_add_args(args, kwds, &fd, &stream, &meta) < 0 ||
        bio_socketset_usable(&r->base) < 0)
        return NULL;
    int idx = bio_socketset_take_slot(&r->base, fd);
    if (idx >= 0)
        bio_socketset_set_flags(&r->base, idx, meta && !stream);
    if (idx >= 0 && stream)
        r->base.state[idx] = BIO_SOCK_STREAM;
    return idx < 0 ? NULL : PyLong_FromLong(idx);
}

typedef struct {
    BioUringSet *r;
    int idx;
} BioUringSetCancel;

/* Wait until the cancelled receive of socket c->idx has completed (keeping
 * other sockets' datagrams met on the way): then the kernel no longer holds
 * the socket. 0 or -errno (EINTR: resumable). nogil. */
static int
bio_uringset_cancel_wait_nogil(void *arg)
{
    BioUringSetCancel *c = arg;
    BioUringReap rp = {.b = NULL};
    bio_uringset_reap_nogil(c->r, &rp);
    while (c->r->base.state[c->idx] == BIO_SOCK_REMOVING) {
        int err = bio_uringset_wait_nogil(c->r, 1, -1);
        bio_uringset_reap_nogil(c->r, &rp);
        if (err < 0)
            return err;
    }
    return 0;
}

/* Cancel a socket's multishot receive, wait until the kernel has let go of
 * it, and free its slot (closing our descriptor). Later CQEs of the old
 * socket are recognised as stale by their generation. */
static PyObject *
bio_uringset_remove(BioUringSet *r, PyObject *arg)
{
    int idx;
    if (bio_socketset_usable(&r->base) < 0 || bio_socketset_index(&r->base, arg, &idx) < 0)
        return NULL;
    if (r->base.state[idx] == BIO_SOCK_ARMED) {
        struct io_uring_sqe *sqe = bio_uringset_sqe(r);
        if (sqe == NULL)
            return bio_raise_errno(-EBUSY);
        io_uring_prep_cancel64(sqe, BIO_UD(BIO_OP_RECV, r->base.gen[idx], idx), 0);
        io_uring_sqe_set_data64(sqe, BIO_UD(BIO_OP_CANCEL, 0, idx));
        r->base.state[idx] = BIO_SOCK_REMOVING;
        BioUringSetCancel c = {r, idx};
        r->base.busy = 1;
        int err = bio_nogil_retry(bio_uringset_cancel_wait_nogil, &c);
        r->base.busy = 0;
        if (err == -EINTR)
            return NULL;
        if (err < 0)
            return bio_raise_errno(err);
    }
    bio_socketset_free_slot(&r->base, idx);
    Py_RETURN_NONE;
}

static void
bio_uringset_close_now(BioSocketSet *base)
{
    BioUringSet *r = (BioUringSet *)base;
    if (r->ready) {
        io_uring_queue_exit(&r->uring);
        r->ready = 0;
    }
    bio_socketset_free_all(&r->base);
}

static PyObject *
bio_uringset_close(BioUringSet *r, PyObject *Py_UNUSED(ignored))
{
    return bio_socketset_close(&r->base);
}

static PyObject *
bio_uringset_describe(BioUringSet *r, PyObject *Py_UNUSED(ignored))
{
    const char *mode = (r->flags & IORING_SETUP_SQPOLL) ? "SQPOLL"
                       : (r->flags & IORING_SETUP_DEFER_TASKRUN) ? "SINGLE_ISSUER|DEFER_TASKRUN"
                       : (r->flags & IORING_SETUP_COOP_TASKRUN) ? "SINGLE_ISSUER|COOP_TASKRUN"
                       : (r->flags & IORING_SETUP_SINGLE_ISSUER) ? "SINGLE_ISSUER"
                                                                   : "plain";
    return PyUnicode_FromFormat("io_uring (%s), multishot RECVMSG, %u x %u-byte provided buffers",
                                mode, r->nbufs, r->buf_size);
}

/* ---- the type ---------------------------------------------------------- */

static PyMethodDef bio_uringset_methods[] = {
    {"add", (PyCFunction)(void (*)(void))bio_uringset_add, METH_VARARGS | METH_KEYWORDS,
     "add($self, /, sock, stream=False, meta=False)\n--\n\n"
     "Add a socket; returns its index (the set keeps its own descriptor;\n"
     "stream: for recv_stream only)."},
    {"remove", (PyCFunction)bio_uringset_remove, METH_O,
     "remove($self, index, /)\n--\n\nStop receiving on that socket and free its index."},
    {"close", (PyCFunction)bio_uringset_close, METH_NOARGS,
     "close($self, /)\n--\n\nTear the io_uring down and close the set's descriptors."},
    {"describe", (PyCFunction)bio_uringset_describe, METH_NOARGS,
     "describe($self, /)\n--\n\nHow this set receives and sends, as a str."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_uringset_members[] = {
    {"ring_fd", T_INT, offsetof(BioUringSet, uring_fd), READONLY, "the io_uring descriptor"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BioUringSet_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.UringSocketSet",
    .tp_basicsize = sizeof(BioUringSet),
    .tp_dealloc = (destructor)bio_uringset_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "UringSocketSet(max_sockets=1024, buffers=4096, buffer_size=2048, sqpoll=False, "
              "single_wakeup=False)\n--\n\n"
              "Many UDP sockets through one io_uring (internal; see burstio.SocketSet).",
    .tp_methods = bio_uringset_methods,
    .tp_members = bio_uringset_members,
    .tp_new = bio_uringset_new,
};

int
bio_uringset_init_type(PyObject *module)
{
    BioUringSet_Type.tp_base = &BioSocketSet_Type;
    if (PyType_Ready(&BioUringSet_Type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "UringSocketSet", (PyObject *)&BioUringSet_Type);
}
