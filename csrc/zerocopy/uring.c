/* Zero-copy send on io_uring: SEND_ZC from the pool's buffers (registered as
 * fixed buffers where the kernel lets us), or SENDMSG for a plain copy, one
 * request at a time so that the sends keep their order.
 *
 * Where a datagram goes through it: from its pool buffer (zerocopy/pool.c)
 * into a SEND_ZC request; the kernel sends the pages in place and posts a
 * result CQE, then a notification CQE once it no longer reads them
 * (zerocopy/completion.c turns both into the Completion).
 */
#include "zerocopy/zerocopy.h"

#include <errno.h>
#include <poll.h>
#include <string.h>

/* Apply one CQE (user_data = buffer index): a piece's result, or a
 * notification that the kernel is done with a piece's pages. */
static void
bio_zerocopy_uring_cqe(BioZeroCopyIo *s, const struct io_uring_cqe *cqe)
{
    if (cqe->user_data == BIO_ZEROCOPY_WAKE_UD) { /* close(): the waiter looks at the flag */
        s->wake_armed = 0;
        return;
    }
    uint32_t idx = (uint32_t)cqe->user_data;
    BioZeroCopySlot *sl = idx < s->pool->nbuf ? &s->slots[idx] : NULL;
    int notif = (cqe->flags & IORING_CQE_F_NOTIF) != 0;
    if (sl == NULL || !sl->busy || (notif ? sl->notifs == 0 : !sl->submitted)) {
        BIO_COUNT(s->counters, BIO_ZEROCOPY_C_UNMATCHED, 1);
        return;
    }
    if (notif) {
        sl->copied |= ((uint32_t)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED) != 0;
        sl->notifs--;
        s->zc_pending--;
    } else {
        sl->submitted = 0;
        if (cqe->flags & IORING_CQE_F_MORE) {
            sl->notifs++;
            s->zc_pending++;
        }
        sl->zc_used |= sl->zc && cqe->res > 0;
        bio_zerocopy_piece_done(s, idx, cqe->res);
    }
    bio_zerocopy_try_finish(s, idx);
}

/* Take every CQE posted so far (shared memory, no syscall). */
static void
bio_zerocopy_uring_reap(BioZeroCopyIo *s)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&s->uring, head, cqe)
    {
        bio_zerocopy_uring_cqe(s, cqe);
        n++;
    }
    io_uring_cq_advance(&s->uring, n);
}

/* Put the next piece of slot idx in sqe: SEND_ZC (from the fixed buffers)
 * if zero copy is asked for, else SENDMSG through s->umsg. No MSG_WAITALL:
 * a short piece comes back and the next one follows it. */
static void
bio_zerocopy_uring_prep(BioZeroCopyIo *s, uint32_t idx, struct io_uring_sqe *sqe)
{
    BioZeroCopySlot *sl = &s->slots[idx];
    unsigned char *ptr = bio_zerocopy_pool_ptr(s->pool, idx) + sl->sent;
    size_t len = sl->length - sl->sent;
    socklen_t namelen = bio_addr_len(&s->names[idx]);
    if (sl->zc) {
        if (s->fixed)
            io_uring_prep_send_zc_fixed(sqe, s->fd, ptr, len, MSG_NOSIGNAL,
                                        IORING_SEND_ZC_REPORT_USAGE, idx);
        else
            io_uring_prep_send_zc(sqe, s->fd, ptr, len, MSG_NOSIGNAL, IORING_SEND_ZC_REPORT_USAGE);
        if (namelen)
            io_uring_prep_send_set_addr(sqe, (const struct sockaddr *)&s->names[idx], namelen);
    } else {
        s->uiov = (struct iovec){ptr, len};
        memset(&s->umsg, 0, sizeof(s->umsg));
        s->umsg.msg_name = namelen ? &s->names[idx] : NULL;
        s->umsg.msg_namelen = namelen;
        s->umsg.msg_iov = &s->uiov;
        s->umsg.msg_iovlen = 1;
        io_uring_prep_sendmsg(sqe, s->fd, &s->umsg, MSG_NOSIGNAL);
    }
    io_uring_sqe_set_data64(sqe, idx);
    sl->submitted = 1;
}

static int
bio_zerocopy_uring_submit_nogil(void *arg)
{
    return io_uring_submit((struct io_uring *)arg);
}

/* io_uring: take the CQEs posted, and whenever no request is in flight put
 * the next piece of the queue's head on the io_uring (one at a time keeps the
 * order; io_uring itself waits for room in the socket). 0, or -1 with
 * OSError if io_uring_enter failed: the request stays in the submission queue and
 * goes with the next call. */
int
bio_zerocopy_uring_push(BioZeroCopyIo *s)
{
    for (;;) {
        bio_zerocopy_uring_reap(s);
        if (io_uring_sq_ready(&s->uring) == 0) {
            if (s->q_len == 0 || s->slots[bio_zerocopy_q_head(s)].submitted)
                return 0;
            uint32_t idx = bio_zerocopy_q_head(s);
            if (bio_zerocopy_settle_head(s, idx))
                continue;
            struct io_uring_sqe *sqe = io_uring_get_sqe(&s->uring);
            if (sqe == NULL) { /* cannot happen: one request at a time */
                bio_raise_errno(-EBUSY);
                return -1;
            }
            bio_zerocopy_uring_prep(s, idx, sqe);
        }
        BIO_COUNT(s->counters, BIO_ZEROCOPY_C_SYSCALLS, 1);
        s->busy = 1;
        int r = bio_nogil_retry(bio_zerocopy_uring_submit_nogil, &s->uring);
        s->busy = 0;
        if (r < 0 && r != -EINTR)
            bio_raise_errno(r);
        if (r <= 0) /* 0: nothing taken; try again on the next call */
            return r < 0 ? -1 : 0;
    }
}


/* Wait up to `left` ns (< 0: no limit) for a CQE: 1 there, 0 timed out,
 * -errno. nogil. */
int
bio_zerocopy_uring_wait_nogil(BioZeroCopyIo *s, int64_t left)
{
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = {.tv_sec = left / 1000000000, .tv_nsec = left % 1000000000};
    int r = left < 0 ? io_uring_wait_cqe(&s->uring, &cqe)
                     : io_uring_wait_cqe_timeout(&s->uring, &cqe, &ts);
    return r == 0 ? 1 : (r == -ETIME ? 0 : r);
}

void
bio_zerocopy_uring_arm_wake(BioZeroCopyIo *s)
{
    if (s->wake_armed || bio_wake_closing(&s->wake) || s->wake.efd < 0)
        return;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->uring);
    if (sqe == NULL)
        return; /* (the send pieces go one at a time: cannot happen) */
    io_uring_prep_poll_add(sqe, s->wake.efd, POLLIN);
    io_uring_sqe_set_data64(sqe, BIO_ZEROCOPY_WAKE_UD);
    s->wake_armed = 1;
    BIO_COUNT(s->counters, BIO_ZEROCOPY_C_SYSCALLS, 1);
    io_uring_submit(&s->uring); /* never blocks; on failure it goes with the next submit */
}

int
bio_zerocopy_uring_get_events_nogil(void *uring)
{
    return io_uring_get_events((struct io_uring *)uring);
}

/* io_uring, the pool registered as fixed buffers where the kernel lets us.
 * 0 or -errno. */
int
bio_zerocopy_uring_setup(BioZeroCopyIo *s)
{
    unsigned entries = 8;
    while (entries < s->pool->nbuf)
        entries <<= 1;
    int r = io_uring_queue_init(entries, &s->uring, 0);
    if (r < 0)
        return r;
    s->uring_ok = 1;
    struct iovec *iov = PyMem_Calloc(s->pool->nbuf, sizeof(*iov));
    if (iov == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->pool->nbuf; i++) {
        iov[i].iov_base = bio_zerocopy_pool_ptr(s->pool, i);
        iov[i].iov_len = s->pool->buf_size;
    }
    r = io_uring_register_buffers(&s->uring, iov, s->pool->nbuf);
    PyMem_Free(iov);
    s->fixed = r == 0;
    s->fixed_errno = r < 0 ? -r : 0;
    return 0;
}

