/* Zero-copy send with sendmsg: MSG_ZEROCOPY (the kernel's notifications
 * come on the socket's error queue, numbered by per-socket send ids) and
 * plain copies; on a stream socket a send goes in pieces, never blocking:
 * sendmsg(MSG_DONTWAIT) until EAGAIN, then EPOLLOUT on the sender's epoll
 * set says when to go on.
 *
 * Where a datagram goes through it: from its pool buffer (zerocopy/pool.c)
 * to sendmsg, with MSG_ZEROCOPY the kernel sending the pages in place; the
 * error queue's ranges of ids then say when it no longer reads them
 * (zerocopy/completion.c turns that into the Completion).
 */
#include "zerocopy/zerocopy.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>

#define BIO_ZEROCOPY_RANGES 64          /* notification ranges per read of the error queue */
#define BIO_ZEROCOPY_MAX_IDS (1u << 24) /* MSG_ZEROCOPY ids awaited at most */

/* Make room in the id table for s->next_id, the id the kernel gives our
 * next zero-copy sendmsg (doubling the table while that entry is held).
 * 0, or -1 with MemoryError. */
static int
bio_zerocopy_msg_ids_room(BioZeroCopyIo *s)
{
    while (s->ids[s->next_id & s->id_mask].idx != BIO_ZEROCOPY_NO_SLOT) {
        uint32_t n = (s->id_mask + 1) * 2;
        BioZeroCopyId *t = n <= BIO_ZEROCOPY_MAX_IDS ? PyMem_Malloc(n * sizeof(*t)) : NULL;
        if (t == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memset(t, 0xff, n * sizeof(*t));
        for (uint32_t i = 0; i <= s->id_mask; i++) /* distinct mod n/2: distinct mod n */
            if (s->ids[i].idx != BIO_ZEROCOPY_NO_SLOT)
                t[s->ids[i].id & (n - 1)] = s->ids[i];
        PyMem_Free(s->ids);
        s->ids = t;
        s->id_mask = n - 1;
    }
    return 0;
}

/* The notification for the id in table entry e has come. */
static void
bio_zerocopy_msg_notified(BioZeroCopyIo *s, BioZeroCopyId *e, int copied)
{
    uint32_t idx = e->idx;
    BioZeroCopySlot *sl = &s->slots[idx];
    e->idx = BIO_ZEROCOPY_NO_SLOT;
    sl->copied |= (uint8_t)(copied != 0);
    sl->notifs--;
    s->zc_pending--;
    bio_zerocopy_try_finish(s, idx);
}

typedef struct {
    uint32_t lo, hi;
    uint8_t copied;
} BioZeroCopyRange;

typedef struct {
    int fd, epfd;      /* epfd -1: the epoll edge is already taken */
    int read;          /* read the error queue (notifications are due) */
    int n;             /* ranges found */
    int full;          /* ranges[] filled up: read again */
    uint32_t events;   /* what the epoll set said */
    uint64_t syscalls, other;
    BioZeroCopyRange r[BIO_ZEROCOPY_RANGES];
} BioZeroCopyErrq;

/* Apply notification range r of MSG_ZEROCOPY ids (wrapping). A range wider
 * than the table holds ids that are not ours: then look at every entry. */
static void
bio_zerocopy_msg_range(BioZeroCopyIo *s, const BioZeroCopyRange *r)
{
    uint32_t span = r->hi - r->lo;
    if (span > s->id_mask) {
        for (uint32_t i = 0; i <= s->id_mask; i++)
            if (s->ids[i].idx != BIO_ZEROCOPY_NO_SLOT && s->ids[i].id - r->lo <= span)
                bio_zerocopy_msg_notified(s, &s->ids[i], r->copied);
        return;
    }
    for (uint32_t k = 0; k <= span; k++) {
        BioZeroCopyId *e = &s->ids[(r->lo + k) & s->id_mask];
        if (e->idx == BIO_ZEROCOPY_NO_SLOT || e->id != r->lo + k) {
            BIO_COUNT(s->counters, BIO_ZEROCOPY_C_UNMATCHED, 1);
            continue;
        }
        bio_zerocopy_msg_notified(s, e, r->copied);
    }
}

/* Record the zero-copy range in one error-queue message's cmsgs. */
static void
bio_zerocopy_errq_parse(BioZeroCopyErrq *q, struct msghdr *h)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL && q->n < BIO_ZEROCOPY_RANGES;
         c = CMSG_NXTHDR(h, c)) {
        if (!((c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) ||
              (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR)))
            continue;
        struct sock_extended_err ee;
        memcpy(&ee, CMSG_DATA(c), sizeof(ee));
        if (ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY || ee.ee_errno != 0) {
            q->other++;
            continue;
        }
        q->r[q->n].lo = ee.ee_info;
        q->r[q->n].hi = ee.ee_data;
        q->r[q->n].copied = (ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) != 0;
        q->n++;
    }
}

/* Take the epoll edge (noting its events), then, if asked, read the error
 * queue until it is empty or r[] is full. 0 or -errno. nogil; never blocks. */
static int
bio_zerocopy_errq_read_nogil(void *arg)
{
    BioZeroCopyErrq *q = arg;
    if (q->epfd >= 0) {
        struct epoll_event ev;
        q->syscalls++;
        int n = epoll_wait(q->epfd, &ev, 1, 0); /* what comes after this wakes again */
        if (n < 0)
            return -errno;
        q->events |= n > 0 ? ev.events : 0;
        q->epfd = -1;
    }
    while (q->read && q->n < BIO_ZEROCOPY_RANGES) {
        union { char buf[256]; struct cmsghdr align; } control;
        struct msghdr h;
        memset(&h, 0, sizeof(h));
        h.msg_control = control.buf;
        h.msg_controllen = sizeof(control.buf);
        q->syscalls++;
        if (recvmsg(q->fd, &h, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        bio_zerocopy_errq_parse(q, &h);
    }
    q->full = q->read;
    return 0;
}

/* sendmsg backends: take what the epoll set and the error queue say and
 * apply it. 0, or -1 with an exception set. */
int
bio_zerocopy_msg_reap(BioZeroCopyIo *s)
{
    BioZeroCopyErrq q = {.fd = s->fd, .epfd = s->epfd};
    do {
        q.read = s->zc_pending > 0;
        q.n = q.full = 0;
        q.syscalls = q.other = 0;
        s->busy = 1;
        int r = bio_nogil_retry(bio_zerocopy_errq_read_nogil, &q);
        s->busy = 0;
        BIO_COUNT(s->counters, BIO_ZEROCOPY_C_SYSCALLS, q.syscalls);
        BIO_COUNT(s->counters, BIO_ZEROCOPY_C_OTHER_ERRQUEUE, q.other);
        for (int i = 0; i < q.n; i++)
            bio_zerocopy_msg_range(s, &q.r[i]);
        if (q.events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            s->out_blocked = 0; /* writable, or an error the next sendmsg reports */
        if (r < 0) {
            if (r != -EINTR)
                bio_raise_errno(r);
            return -1;
        }
    } while (q.full);
    return 0;
}

/* ---- sendmsg backends: pieces ------------------------------------------- */

typedef struct {
    int fd, flags, stream;
    const void *buf;
    size_t len;
    const struct sockaddr_in6 *name;
    const BioWake *wake;
    int64_t timeo_ns;   /* SO_SNDTIMEO, read at the first wait (-2: not yet) */
    uint64_t syscalls;
} BioZeroCopySendmsg;

/* One sendmsg (MSG_DONTWAIT). A stream reports EAGAIN (the caller goes on
 * after EPOLLOUT); a full blocking UDP socket waits for room in poll() with
 * the wake eventfd, so that close() ends the wait (-BIO_ECLOSED). Bytes sent
 * or -errno. nogil. */
static int
bio_zerocopy_sendmsg_nogil(void *arg)
{
    BioZeroCopySendmsg *c = arg;
    struct iovec iov = {(void *)c->buf, c->len};
    struct msghdr h;
    memset(&h, 0, sizeof(h));
    socklen_t namelen = bio_addr_len(c->name);
    h.msg_name = namelen ? (void *)c->name : NULL;
    h.msg_namelen = namelen;
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    for (;;) {
        c->syscalls++;
        ssize_t r = sendmsg(c->fd, &h, c->flags | MSG_DONTWAIT);
        if (r >= 0)
            return (int)r;
        if ((errno != EAGAIN && errno != EWOULDBLOCK) || c->stream)
            return -errno;
        c->syscalls++;
        int w = bio_wake_wait_writable_nogil(c->wake, c->fd, &c->timeo_ns);
        if (w < 0)
            return w;
    }
}

/* One sendmsg of what is left of slot idx's send, MSG_ZEROCOPY if zc; on a
 * stream it never blocks. Bytes taken or -errno (-EINTR with an exception
 * set: a signal handler raised; -BIO_ECLOSED with OSError set: close()
 * ended a wait for room). */
static int
bio_zerocopy_sendmsg(BioZeroCopyIo *s, uint32_t idx, int zc)
{
    BioZeroCopySlot *sl = &s->slots[idx];
    BioZeroCopySendmsg c = {.fd = s->fd, .buf = bio_zerocopy_pool_ptr(s->pool, idx) + sl->sent,
                      .len = sl->length - sl->sent, .name = &s->names[idx],
                      .flags = (zc ? MSG_ZEROCOPY : 0) | (s->stream ? MSG_NOSIGNAL : 0),
                      .stream = s->stream, .wake = &s->wake, .timeo_ns = -2};
    s->busy = 1;
    int r = bio_nogil_retry(bio_zerocopy_sendmsg_nogil, &c);
    s->busy = 0;
    BIO_COUNT(s->counters, BIO_ZEROCOPY_C_SYSCALLS, c.syscalls);
    if (r == -BIO_ECLOSED && bio_wake_closing(&s->wake))
        bio_zerocopy_raise_closed();
    return r;
}

/* Send the next piece of slot idx by sendmsg: MSG_ZEROCOPY if asked for
 * (by copy if the kernel has no memory for the notification, ENOBUFS, or
 * we have none to track its id), and apply the result. 0, or -1 when a
 * signal handler raised or close() ended a wait for room (this piece took
 * nothing). */
static int
bio_zerocopy_msg_piece(BioZeroCopyIo *s, uint32_t idx)
{
    BioZeroCopySlot *sl = &s->slots[idx];
    int zc = sl->zc;
    if (zc && bio_zerocopy_msg_ids_room(s) < 0) {
        PyErr_Clear();
        zc = 0;
    }
    int r = zc ? bio_zerocopy_sendmsg(s, idx, 1) : 0;
    if (zc && r == -ENOBUFS) {
        BIO_COUNT(s->counters, BIO_ZEROCOPY_C_ENOBUFS, 1);
        zc = 0;
    }
    if (!zc && !((r == -EINTR || r == -BIO_ECLOSED) && PyErr_Occurred()))
        r = bio_zerocopy_sendmsg(s, idx, 0);
    if ((r == -EINTR || r == -BIO_ECLOSED) && PyErr_Occurred())
        return -1; /* this piece took nothing */
    if (zc && r > 0) { /* the kernel numbers each zero-copy sendmsg that takes bytes */
        s->ids[s->next_id & s->id_mask] = (BioZeroCopyId){s->next_id, idx};
        s->next_id++;
        sl->notifs++;
        sl->zc_used = 1;
        s->zc_pending++;
    }
    bio_zerocopy_piece_done(s, idx, r);
    return 0;
}

/* sendmsg backends: send from the queue's head while the socket takes it.
 * 0, or -1 when a signal handler raised. */
int
bio_zerocopy_msg_push(BioZeroCopyIo *s)
{
    while (s->q_len > 0 && !s->out_blocked) {
        uint32_t idx = bio_zerocopy_q_head(s);
        if (!bio_zerocopy_settle_head(s, idx) && bio_zerocopy_msg_piece(s, idx) < 0)
            return -1;
    }
    return 0;
}

/* sendmsg backends: an epoll set telling (edge-triggered) when the error
 * queue gets something (MSG_ZEROCOPY) and when a stream socket has room
 * again; MSG_ZEROCOPY also gets the id table. 0 or -errno. */
int
bio_zerocopy_msg_setup(BioZeroCopyIo *s)
{
    if (s->backend == BIO_ZEROCOPY_BACKEND_MSG) {
        uint32_t n = 8;
        while (n < 2 * s->pool->nbuf)
            n <<= 1;
        if ((s->ids = PyMem_Malloc(n * sizeof(*s->ids))) == NULL)
            return -ENOMEM;
        memset(s->ids, 0xff, n * sizeof(*s->ids));
        s->id_mask = n - 1;
    }
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0)
        return -errno;
    struct epoll_event ev = {.events = EPOLLERR | EPOLLET | (s->stream ? EPOLLOUT : 0),
                             .data.fd = s->fd};
    return epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0 ? -errno : 0;
}

