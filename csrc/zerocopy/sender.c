/* Zero-copy send: the sender. io_uring SEND_ZC, sendmsg(MSG_ZEROCOPY) and
 * plain copies from the buffers of a pool (zcpool.c), and the Completions
 * that say when the kernel is done with a buffer.
 *
 * How "the kernel is done" arrives, per backend:
 *  - io_uring: a result CQE (bytes or -errno; IORING_CQE_F_MORE if a
 *    notification follows) and a notification CQE (IORING_CQE_F_NOTIF; with
 *    IORING_SEND_ZC_REPORT_USAGE its res says whether the kernel copied);
 *  - MSG_ZEROCOPY: sendmsg returns at once; the socket's error queue later
 *    carries ranges [ee_info, ee_data] of per-socket send ids
 *    (SO_EE_ORIGIN_ZEROCOPY; SO_EE_CODE_ZEROCOPY_COPIED if copied);
 *  - copy: sendmsg returns, and the kernel has its own copy.
 *
 * Order. A send is *resolved* once the kernel has taken all of it, or it
 * failed; its buffer returns once it is resolved and every notification
 * has come. The sends of a sender are resolved one at a time, in send()
 * order: a send issued while an earlier one is unresolved waits in a queue
 * (its buffer already in flight) and goes when the completions are
 * processed. On a stream socket a send goes in pieces, never blocking:
 * sendmsg(MSG_DONTWAIT) until EAGAIN, then EPOLLOUT on the sender's epoll
 * set says when to go on; io_uring takes one piece at a time and waits for
 * room itself. A piece that fails resolves its send with the errno and the
 * bytes taken so far, and no later send on the stream is made (they fail
 * with ECANCELED): the byte stream never has a gap.
 *
 * Policy (which backend, thresholds, switching zero copy off when the kernel
 * keeps copying, wording) is burstio/zerocopy.py's. This file does the
 * syscalls and the bookkeeping; the GIL is dropped only in bio_nogil_retry.
 */
#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/errqueue.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <sys/epoll.h>
#include <unistd.h>

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif
#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif
#ifndef SO_EE_CODE_ZEROCOPY_COPIED
#define SO_EE_CODE_ZEROCOPY_COPIED 1
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

#define BIO_ZC_RANGES 64          /* notification ranges per drain */
#define BIO_ZC_MAX_IDS (1u << 24) /* MSG_ZEROCOPY ids awaited at most */
#define BIO_ZC_NO_SLOT UINT32_MAX

enum { BIO_ZC_COPY, BIO_ZC_MSG, BIO_ZC_URING };

enum bio_zc_counter {
    BIO_ZC_SENDS, BIO_ZC_ZEROCOPY_SENDS, BIO_ZC_COPY_SENDS, BIO_ZC_BYTES,
    BIO_ZC_ERRORS, BIO_ZC_NOTIFICATIONS, BIO_ZC_COPIED, BIO_ZC_SYSCALLS,
    BIO_ZC_ENOBUFS, BIO_ZC_DISABLED, BIO_ZC_UNMATCHED, BIO_ZC_OTHER_ERRQUEUE,
    BIO_ZC_NCOUNTERS
};

static const char *const bio_zc_counter_names[BIO_ZC_NCOUNTERS] = {
    "sends", "zerocopy_sends", "copy_sends", "bytes", "errors", "notifications",
    "copied_notifications", "syscalls", "enobufs_copies", "zerocopy_disabled",
    "unmatched_notifications", "other_errqueue_messages",
};

/* ---- types ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *sender;   /* the BioZcSender while pending; NULL once done */
    int64_t result;     /* bytes sent, or -errno if none were; once has_result */
    uint32_t index;     /* the buffer sent */
    uint32_t length;
    int error;          /* errno of a failed send (0: it did not fail) */
    char done, has_result, copied, zerocopy, cancelled, skipped;
} BioZcCompletion;

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
} BioZcSlot;

typedef struct {
    uint32_t id;          /* a MSG_ZEROCOPY id whose notification is due */
    uint32_t idx;         /* its buffer; BIO_ZC_NO_SLOT: the entry is empty */
} BioZcIdEntry;

typedef struct {
    PyObject_HEAD
    int fd;               /* our dup of the socket; -1 once closed */
    int backend;          /* BIO_ZC_COPY / _MSG / _URING */
    int stream;           /* SOCK_STREAM */
    int busy;             /* a call runs without the GIL */
    int zerocopy;         /* policy: 0 sends everything by plain copy */
    int min_size;         /* policy: smaller sends go by plain copy */
    int switch_after;     /* policy: call `policy` after this many copied in a row */
    int switch_pending;
    int attached;         /* we hold pool->attached */
    uint32_t copied_streak;
    BioZcPool *pool;
    BioZcSlot *slots;     /* per pool buffer */
    struct sockaddr_in6 *names; /* per pool buffer: destination */
    uint32_t *queue;      /* unresolved sends in send() order: a ring of nbuf */
    uint32_t q_head, q_len;
    int broken;           /* stream: errno of the send that failed; no more are made */
    int out_blocked;      /* stream: sendmsg said EAGAIN; go on after EPOLLOUT */
    uint32_t inflight;    /* slots busy */
    uint32_t zc_pending;  /* notifications still to come, all slots */
    uint64_t returned;    /* buffers given back to the pool, ever */
    /* io_uring: one request at a time */
    struct io_uring ring;
    int ring_ok;
    int fixed;            /* the pool is registered as fixed buffers */
    int fixed_errno;      /* why registration failed */
    struct msghdr umsg;   /* the IORING_OP_SENDMSG in flight */
    struct iovec uiov;
    /* sendmsg backends */
    int epfd;             /* edge-triggered: EPOLLERR (error queue), EPOLLOUT (stream) */
    uint32_t next_id;     /* id the kernel gives our next zero-copy send */
    uint32_t id_mask;     /* ids has id_mask + 1 entries */
    BioZcIdEntry *ids;    /* id & id_mask -> buffer, for ids awaiting notification */
    uint64_t counters[BIO_ZC_NCOUNTERS];
    PyObject *completion_type; /* class of the Completions we make */
    PyObject *policy;     /* policy(streak): the kernel keeps copying */
    PyObject *waiters;    /* asyncio helper (Python's), or None */
} BioZcSender;

static PyTypeObject BioZcCompletion_Type, BioZcSender_Type;

#define BIO_ZC_COUNT(s, c, n) ((s)->counters[(c)] += (uint64_t)(n))

/* ---- completion -------------------------------------------------------- */

/* Record the outcome of slot sl in c (cancelled: the sender closed first);
 * c no longer needs its sender. */
static void
bio_zcc_fill(BioZcCompletion *c, const BioZcSlot *sl, int cancelled)
{
    c->has_result = sl->has_result || (cancelled && sl->sent > 0);
    c->result = sl->has_result ? sl->result : (int64_t)sl->sent;
    c->error = sl->error;
    c->copied = sl->copied;
    c->zerocopy = sl->zc_used;
    c->skipped = sl->skipped;
    c->cancelled = (char)cancelled;
    c->done = 1;
    Py_CLEAR(c->sender);
}

/* Raise OSError(err, what or strerror(err)) with `sent` set to the bytes
 * the kernel took; return NULL. */
static PyObject *
bio_zcc_raise(BioZcCompletion *c, int err, const char *what)
{
    PyObject *v = Py_BuildValue("(is)", err, what != NULL ? what : strerror(err));
    if (v != NULL)
        PyErr_SetObject(PyExc_OSError, v);
    Py_XDECREF(v);
    bio_exc_note_sent(c->has_result && c->result > 0 ? (Py_ssize_t)c->result : 0);
    return NULL;
}

/* The completed outcome: bytes sent, or OSError; TimeoutError if pending. */
static PyObject *
bio_zcc_outcome(BioZcCompletion *c)
{
    if (!c->done) {
        PyErr_Format(PyExc_TimeoutError,
                     "the kernel has not released buffer %u yet (send still in flight)", c->index);
        return NULL;
    }
    if (c->skipped)
        return bio_zcc_raise(c, ECANCELED, "not sent: an earlier send on this stream failed, "
                             "and sending more would leave a gap in it");
    if (c->error)
        return bio_zcc_raise(c, c->error, NULL);
    if (c->cancelled)
        return bio_zcc_raise(c, ECANCELED, "the ZeroCopySender was closed before the send "
                             "was done (a buffer the kernel may still read stays out of the pool)");
    return PyLong_FromLongLong(c->result);
}

static int
bio_zcc_traverse(BioZcCompletion *c, visitproc visit, void *arg)
{
    Py_VISIT(c->sender);
    return 0;
}

static int
bio_zcc_clear(BioZcCompletion *c)
{
    Py_CLEAR(c->sender);
    return 0;
}

static void
bio_zcc_dealloc(BioZcCompletion *c)
{
    PyObject_GC_UnTrack(c);
    Py_CLEAR(c->sender);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* result: None until the kernel said. */
static PyObject *
bio_zcc_get_result(BioZcCompletion *c, void *x)
{
    if (!c->has_result)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(c->result);
}

static PyObject *
bio_zcc_repr(BioZcCompletion *c)
{
    const char *how = c->zerocopy ? (c->copied ? ", zero copy asked, kernel copied" : ", zero copy")
                                   : ", plain copy";
    if (!c->done)
        return PyUnicode_FromFormat("<Completion buffer %u, %u bytes%s: pending>", c->index,
                                    c->length, how);
    if (c->skipped)
        return PyUnicode_FromFormat("<Completion buffer %u: not sent, the stream broke before it>",
                                    c->index);
    if (c->error)
        return PyUnicode_FromFormat("<Completion buffer %u%s: failed after %lld of %u bytes, %s>",
                                    c->index, how, (long long)(c->result > 0 ? c->result : 0),
                                    c->length, strerror(c->error));
    if (c->cancelled)
        return PyUnicode_FromFormat("<Completion buffer %u: cancelled>", c->index);
    return PyUnicode_FromFormat("<Completion buffer %u%s: %lld bytes sent>", c->index, how,
                                (long long)c->result);
}

static PyGetSetDef bio_zcc_getset[] = {
    {"result", (getter)bio_zcc_get_result, NULL,
     "bytes sent (>= 0; fewer than length if a stream send failed part way), or -errno "
     "if nothing was sent; None before the kernel said", NULL},
    {NULL},
};

static PyMemberDef bio_zcc_members[] = {
    {"copied", T_BOOL, offsetof(BioZcCompletion, copied), READONLY,
     "the kernel reported that it copied the data after all"},
    {"zerocopy", T_BOOL, offsetof(BioZcCompletion, zerocopy), READONLY,
     "zero copy asked for (pending), then: used for the data sent (False: plain copies)"},
    {"cancelled", T_BOOL, offsetof(BioZcCompletion, cancelled), READONLY,
     "the sender closed before the send was done"},
    {"error", T_INT, offsetof(BioZcCompletion, error), READONLY,
     "errno of a failed send (0: it did not fail)"},
    {"buffer_index", T_UINT, offsetof(BioZcCompletion, index), READONLY, "the buffer sent"},
    {"length", T_UINT, offsetof(BioZcCompletion, length), READONLY, "bytes asked to send"},
    {"sender", T_OBJECT, offsetof(BioZcCompletion, sender), READONLY,
     "the native sender while pending (internal), else None"},
    {NULL},
};

/* ---- sender: the bookkeeping of a send ---------------------------------- */

/* The send in slot idx is over for the kernel: count it, give the buffer
 * back, fill the Completion. GIL held. */
static void
bio_zc_finish(BioZcSender *s, uint32_t idx)
{
    BioZcSlot *sl = &s->slots[idx];
    if (sl->sent == 0) /* nothing sent: nothing copied (io_uring flags it anyway) */
        sl->copied = 0;
    if (sl->zc_used && sl->sent > 0) {
        BIO_ZC_COUNT(s, BIO_ZC_NOTIFICATIONS, 1);
        if (sl->copied) {
            BIO_ZC_COUNT(s, BIO_ZC_COPIED, 1);
            if (++s->copied_streak == (uint32_t)s->switch_after && s->switch_after > 0)
                s->switch_pending = 1;
        } else {
            s->copied_streak = 0;
        }
    }
    sl->busy = 0;
    s->inflight--;
    s->returned++;
    bio_zcpool_put(s->pool, idx);
    if (sl->completion != NULL) {
        bio_zcc_fill((BioZcCompletion *)sl->completion, sl, 0);
        Py_CLEAR(sl->completion);
    }
}

/* Finish slot idx if it is resolved and the kernel owes it nothing more. */
static void
bio_zc_try_finish(BioZcSender *s, uint32_t idx)
{
    BioZcSlot *sl = &s->slots[idx];
    if (sl->busy && sl->has_result && sl->notifs == 0 && !sl->submitted)
        bio_zc_finish(s, idx);
}

static uint32_t
bio_zc_q_head(const BioZcSender *s)
{
    return s->queue[s->q_head];
}

static void
bio_zc_q_push(BioZcSender *s, uint32_t idx)
{
    s->queue[(s->q_head + s->q_len++) % s->pool->nbuf] = idx;
}

/* Slot idx's send is over: taken whole (err 0) or failed with err. It
 * leaves the queue; on a stream a failure stops every send behind it. */
static void
bio_zc_resolve(BioZcSender *s, uint32_t idx, int err)
{
    BioZcSlot *sl = &s->slots[idx];
    sl->has_result = 1;
    sl->error = err;
    sl->result = err && sl->sent == 0 ? -err : (int32_t)sl->sent;
    if (err) {
        BIO_ZC_COUNT(s, BIO_ZC_ERRORS, 1);
        if (s->stream && !s->broken)
            s->broken = err;
    }
    if (s->q_len > 0 && bio_zc_q_head(s) == idx) {
        s->q_head = (s->q_head + 1) % s->pool->nbuf;
        s->q_len--;
    }
    bio_zc_try_finish(s, idx);
}

/* The kernel took r bytes of a piece of slot idx's send (r < 0: -errno).
 * A datagram, a whole stream send or a failure resolves it; EAGAIN on a
 * stream leaves it for when the socket is writable again. */
static void
bio_zc_piece_done(BioZcSender *s, uint32_t idx, int r)
{
    BioZcSlot *sl = &s->slots[idx];
    if (r > 0) {
        sl->sent += (uint32_t)r;
        BIO_ZC_COUNT(s, BIO_ZC_BYTES, r);
    }
    if (r == -EAGAIN && s->stream && s->backend != BIO_ZC_URING) {
        s->out_blocked = 1;
        return;
    }
    if (r == 0 && s->stream && sl->sent < sl->length)
        r = -EPIPE; /* a stream taking nothing without an error: never seen, never loop */
    if (r < 0)
        bio_zc_resolve(s, idx, -r);
    else if (!s->stream || sl->sent >= sl->length)
        bio_zc_resolve(s, idx, 0);
}

/* Resolve the queue's head idx without a syscall where none is needed: the
 * stream broke before it (skipped), or nothing of it is left. 1 if so. */
static int
bio_zc_settle_head(BioZcSender *s, uint32_t idx)
{
    BioZcSlot *sl = &s->slots[idx];
    if (s->broken) {
        sl->skipped = 1;
        bio_zc_resolve(s, idx, ECANCELED);
        return 1;
    }
    if (s->stream && sl->sent >= sl->length) {
        bio_zc_resolve(s, idx, 0);
        return 1;
    }
    return 0;
}

/* ---- MSG_ZEROCOPY: ids and the error queue ------------------------------- */

/* Make room in the id table for s->next_id, the id the kernel gives our
 * next zero-copy sendmsg (doubling the table while that entry is held).
 * 0, or -1 with MemoryError. */
static int
bio_zc_ids_room(BioZcSender *s)
{
    while (s->ids[s->next_id & s->id_mask].idx != BIO_ZC_NO_SLOT) {
        uint32_t n = (s->id_mask + 1) * 2;
        BioZcIdEntry *t = n <= BIO_ZC_MAX_IDS ? PyMem_Malloc(n * sizeof(*t)) : NULL;
        if (t == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memset(t, 0xff, n * sizeof(*t));
        for (uint32_t i = 0; i <= s->id_mask; i++) /* distinct mod n/2: distinct mod n */
            if (s->ids[i].idx != BIO_ZC_NO_SLOT)
                t[s->ids[i].id & (n - 1)] = s->ids[i];
        PyMem_Free(s->ids);
        s->ids = t;
        s->id_mask = n - 1;
    }
    return 0;
}

/* The notification for the id in table entry e has come. */
static void
bio_zc_msg_notified(BioZcSender *s, BioZcIdEntry *e, int copied)
{
    uint32_t idx = e->idx;
    BioZcSlot *sl = &s->slots[idx];
    e->idx = BIO_ZC_NO_SLOT;
    sl->copied |= (uint8_t)(copied != 0);
    sl->notifs--;
    s->zc_pending--;
    bio_zc_try_finish(s, idx);
}

typedef struct {
    uint32_t lo, hi;
    uint8_t copied;
} BioZcRange;

typedef struct {
    int fd, epfd;      /* epfd -1: the epoll edge is already taken */
    int drain;         /* read the error queue (notifications are due) */
    int n;             /* ranges found */
    int full;          /* ranges[] filled up: drain again */
    uint32_t events;   /* what the epoll set said */
    uint64_t syscalls, other;
    BioZcRange r[BIO_ZC_RANGES];
} BioZcErrq;

/* Apply notification range r of MSG_ZEROCOPY ids (wrapping). A range wider
 * than the table holds ids that are not ours: then look at every entry. */
static void
bio_zc_msg_range(BioZcSender *s, const BioZcRange *r)
{
    uint32_t span = r->hi - r->lo;
    if (span > s->id_mask) {
        for (uint32_t i = 0; i <= s->id_mask; i++)
            if (s->ids[i].idx != BIO_ZC_NO_SLOT && s->ids[i].id - r->lo <= span)
                bio_zc_msg_notified(s, &s->ids[i], r->copied);
        return;
    }
    for (uint32_t k = 0; k <= span; k++) {
        BioZcIdEntry *e = &s->ids[(r->lo + k) & s->id_mask];
        if (e->idx == BIO_ZC_NO_SLOT || e->id != r->lo + k) {
            BIO_ZC_COUNT(s, BIO_ZC_UNMATCHED, 1);
            continue;
        }
        bio_zc_msg_notified(s, e, r->copied);
    }
}

/* Record the zero-copy range in one error-queue message's cmsgs. */
static void
bio_zc_errq_parse(BioZcErrq *q, struct msghdr *h)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL && q->n < BIO_ZC_RANGES;
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
bio_zc_errq_drain_nogil(void *arg)
{
    BioZcErrq *q = arg;
    if (q->epfd >= 0) {
        struct epoll_event ev;
        q->syscalls++;
        int n = epoll_wait(q->epfd, &ev, 1, 0); /* what comes after this wakes again */
        if (n < 0)
            return -errno;
        q->events |= n > 0 ? ev.events : 0;
        q->epfd = -1;
    }
    while (q->drain && q->n < BIO_ZC_RANGES) {
        union { char buf[256]; struct cmsghdr align; } control;
        struct msghdr h;
        memset(&h, 0, sizeof(h));
        h.msg_control = control.buf;
        h.msg_controllen = sizeof(control.buf);
        q->syscalls++;
        if (recvmsg(q->fd, &h, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        bio_zc_errq_parse(q, &h);
    }
    q->full = q->drain;
    return 0;
}

/* sendmsg backends: take what the epoll set and the error queue say and
 * apply it. 0, or -1 with an exception set. */
static int
bio_zc_epoll_reap(BioZcSender *s)
{
    BioZcErrq q = {.fd = s->fd, .epfd = s->epfd};
    do {
        q.drain = s->zc_pending > 0;
        q.n = q.full = 0;
        q.syscalls = q.other = 0;
        s->busy = 1;
        int r = bio_nogil_retry(bio_zc_errq_drain_nogil, &q);
        s->busy = 0;
        BIO_ZC_COUNT(s, BIO_ZC_SYSCALLS, q.syscalls);
        BIO_ZC_COUNT(s, BIO_ZC_OTHER_ERRQUEUE, q.other);
        for (int i = 0; i < q.n; i++)
            bio_zc_msg_range(s, &q.r[i]);
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
    int fd, flags;
    const void *buf;
    size_t len;
    const struct sockaddr_in6 *name;
} BioZcSendCtx;

/* One sendmsg. Bytes sent or -errno. nogil. */
static int
bio_zc_sendmsg_nogil(void *arg)
{
    BioZcSendCtx *c = arg;
    struct iovec iov = {(void *)c->buf, c->len};
    struct msghdr h;
    memset(&h, 0, sizeof(h));
    socklen_t namelen = bio_addr_len(c->name);
    h.msg_name = namelen ? (void *)c->name : NULL;
    h.msg_namelen = namelen;
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    ssize_t r = sendmsg(c->fd, &h, c->flags);
    return r < 0 ? -errno : (int)r;
}

/* One sendmsg of what is left of slot idx's send, MSG_ZEROCOPY if zc; on a
 * stream it never blocks. Bytes taken or -errno (-EINTR with an exception
 * set: a signal handler raised). */
static int
bio_zc_sendmsg(BioZcSender *s, uint32_t idx, int zc)
{
    BioZcSlot *sl = &s->slots[idx];
    BioZcSendCtx c = {.fd = s->fd, .buf = bio_zcpool_ptr(s->pool, idx) + sl->sent,
                      .len = sl->length - sl->sent, .name = &s->names[idx],
                      .flags = (zc ? MSG_ZEROCOPY : 0) |
                               (s->stream ? MSG_DONTWAIT | MSG_NOSIGNAL : 0)};
    BIO_ZC_COUNT(s, BIO_ZC_SYSCALLS, 1);
    s->busy = 1;
    int r = bio_nogil_retry(bio_zc_sendmsg_nogil, &c);
    s->busy = 0;
    return r;
}

/* Send the next piece of slot idx by sendmsg: MSG_ZEROCOPY if asked for
 * (by copy if the kernel has no memory for the notification, ENOBUFS, or
 * we have none to track its id), and apply the result. 0, or -1 when a
 * signal handler raised (this piece took nothing). */
static int
bio_zc_sync_piece(BioZcSender *s, uint32_t idx)
{
    BioZcSlot *sl = &s->slots[idx];
    int zc = sl->zc;
    if (zc && bio_zc_ids_room(s) < 0) {
        PyErr_Clear();
        zc = 0;
    }
    int r = zc ? bio_zc_sendmsg(s, idx, 1) : 0;
    if (zc && r == -ENOBUFS) {
        BIO_ZC_COUNT(s, BIO_ZC_ENOBUFS, 1);
        zc = 0;
    }
    if (!zc && !(r == -EINTR && PyErr_Occurred()))
        r = bio_zc_sendmsg(s, idx, 0);
    if (r == -EINTR && PyErr_Occurred())
        return -1;
    if (zc && r > 0) { /* the kernel numbers each zero-copy sendmsg that takes bytes */
        s->ids[s->next_id & s->id_mask] = (BioZcIdEntry){s->next_id, idx};
        s->next_id++;
        sl->notifs++;
        sl->zc_used = 1;
        s->zc_pending++;
    }
    bio_zc_piece_done(s, idx, r);
    return 0;
}

/* sendmsg backends: send from the queue's head while the socket takes it.
 * 0, or -1 when a signal handler raised. */
static int
bio_zc_sync_push(BioZcSender *s)
{
    while (s->q_len > 0 && !s->out_blocked) {
        uint32_t idx = bio_zc_q_head(s);
        if (!bio_zc_settle_head(s, idx) && bio_zc_sync_piece(s, idx) < 0)
            return -1;
    }
    return 0;
}

/* ---- io_uring: pieces ---------------------------------------------------- */

/* Apply one CQE (user_data = buffer index): a piece's result, or a
 * notification that the kernel is done with a piece's pages. */
static void
bio_zc_uring_cqe(BioZcSender *s, const struct io_uring_cqe *cqe)
{
    uint32_t idx = (uint32_t)cqe->user_data;
    BioZcSlot *sl = idx < s->pool->nbuf ? &s->slots[idx] : NULL;
    int notif = (cqe->flags & IORING_CQE_F_NOTIF) != 0;
    if (sl == NULL || !sl->busy || (notif ? sl->notifs == 0 : !sl->submitted)) {
        BIO_ZC_COUNT(s, BIO_ZC_UNMATCHED, 1);
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
        bio_zc_piece_done(s, idx, cqe->res);
    }
    bio_zc_try_finish(s, idx);
}

/* Take every CQE posted so far (shared memory, no syscall). */
static void
bio_zc_uring_reap(BioZcSender *s)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&s->ring, head, cqe)
    {
        bio_zc_uring_cqe(s, cqe);
        n++;
    }
    io_uring_cq_advance(&s->ring, n);
}

/* Put the next piece of slot idx in sqe: SEND_ZC (from the fixed buffers)
 * if zero copy is asked for, else SENDMSG through s->umsg. No MSG_WAITALL:
 * a short piece comes back and the next one follows it. */
static void
bio_zc_uring_prep(BioZcSender *s, uint32_t idx, struct io_uring_sqe *sqe)
{
    BioZcSlot *sl = &s->slots[idx];
    unsigned char *ptr = bio_zcpool_ptr(s->pool, idx) + sl->sent;
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
bio_zc_submit_nogil(void *arg)
{
    return io_uring_submit((struct io_uring *)arg);
}

/* io_uring: take the CQEs posted, and whenever no request is in flight put
 * the next piece of the queue's head on the ring (one at a time keeps the
 * order; io_uring itself waits for room in the socket). 0, or -1 with
 * OSError if io_uring_enter failed: the request stays in the SQ ring and
 * goes with the next call. */
static int
bio_zc_uring_push(BioZcSender *s)
{
    for (;;) {
        bio_zc_uring_reap(s);
        if (io_uring_sq_ready(&s->ring) == 0) {
            if (s->q_len == 0 || s->slots[bio_zc_q_head(s)].submitted)
                return 0;
            uint32_t idx = bio_zc_q_head(s);
            if (bio_zc_settle_head(s, idx))
                continue;
            struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
            if (sqe == NULL) { /* cannot happen: one request at a time */
                bio_raise_errno(-EBUSY);
                return -1;
            }
            bio_zc_uring_prep(s, idx, sqe);
        }
        BIO_ZC_COUNT(s, BIO_ZC_SYSCALLS, 1);
        s->busy = 1;
        int r = bio_nogil_retry(bio_zc_submit_nogil, &s->ring);
        s->busy = 0;
        if (r < 0 && r != -EINTR)
            bio_raise_errno(r);
        if (r <= 0) /* 0: nothing taken; try again on the next call */
            return r < 0 ? -1 : 0;
    }
}

/* ---- processing --------------------------------------------------------- */

/* Move the queue on as far as the kernel takes it, without waiting. */
static int
bio_zc_push(BioZcSender *s)
{
    return s->backend == BIO_ZC_URING ? bio_zc_uring_push(s) : bio_zc_sync_push(s);
}

/* Call the policy once the kernel copied switch_after sends in a row. */
static int
bio_zc_run_policy(BioZcSender *s)
{
    s->switch_pending = 0;
    if (s->policy == NULL || s->policy == Py_None)
        return 0;
    PyObject *r = PyObject_CallFunction(s->policy, "I", s->copied_streak);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Process every completion available now and move the queue on, without
 * waiting. GIL held. 0, or -1 with an exception set. */
static int
bio_zc_process(BioZcSender *s)
{
    if (s->backend != BIO_ZC_URING && s->epfd >= 0 && s->inflight > 0 && bio_zc_epoll_reap(s) < 0)
        return -1;
    if (bio_zc_push(s) < 0)
        return -1;
    return s->switch_pending ? bio_zc_run_policy(s) : 0;
}

/* ---- waiting ------------------------------------------------------------ */

typedef struct {
    BioZcSender *s;    /* only its ring and epfd are used */
    int64_t deadline;
    uint32_t events;   /* what epoll said */
    uint64_t syscalls;
} BioZcWaitCtx;

/* Sleep until a completion may be ready (or, on a stream, the socket
 * writable) or the deadline (-1: none). 1 woken, 0 deadline passed,
 * -errno. nogil. */
static int
bio_zc_wait_nogil(void *arg)
{
    BioZcWaitCtx *w = arg;
    int64_t left = w->deadline < 0 ? -1 : w->deadline - bio_now_ns();
    if (w->deadline >= 0 && left <= 0)
        return 0;
    w->syscalls++;
    if (w->s->backend == BIO_ZC_URING) {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = left / 1000000000, .tv_nsec = left % 1000000000};
        int r = left < 0 ? io_uring_wait_cqe(&w->s->ring, &cqe)
                         : io_uring_wait_cqe_timeout(&w->s->ring, &cqe, &ts);
        return r == 0 ? 1 : (r == -ETIME ? 0 : r);
    }
    struct epoll_event ev;
    int r = epoll_wait(w->s->epfd, &ev, 1, bio_deadline_ms(w->deadline));
    if (r > 0)
        w->events |= ev.events;
    return r < 0 ? -errno : (r > 0);
}

/* Process completions until ready(s, arg) holds or the deadline passes
 * (-1: never); processes once even if the deadline has passed. 1 ready,
 * 0 timed out (or nothing in flight to wait for), -1 with an exception
 * set. GIL held. */
static int
bio_zc_wait_until(BioZcSender *s, int (*ready)(BioZcSender *, void *), void *arg,
                  int64_t deadline)
{
    for (;;) {
        if (bio_zc_process(s) < 0)
            return -1;
        if (ready(s, arg))
            return 1;
        if (s->inflight == 0 || s->fd < 0 || (s->backend != BIO_ZC_URING && s->epfd < 0))
            return 0;
        if (deadline >= 0 && bio_now_ns() >= deadline)
            return 0;
        BioZcWaitCtx w = {.s = s, .deadline = deadline};
        s->busy = 1;
        int r = bio_nogil_retry(bio_zc_wait_nogil, &w);
        s->busy = 0;
        BIO_ZC_COUNT(s, BIO_ZC_SYSCALLS, w.syscalls);
        if (w.events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            s->out_blocked = 0;
        if (r < 0) {
            if (r != -EINTR)
                bio_raise_errno(r);
            return -1;
        }
    }
}

static int
bio_zc_ready_done(BioZcSender *s, void *c)
{
    return ((BioZcCompletion *)c)->done;
}

static int
bio_zc_ready_free(BioZcSender *s, void *x)
{
    return s->pool->nfree > 0;
}

static int
bio_zc_ready_idle(BioZcSender *s, void *x)
{
    return s->inflight == 0;
}

/* RuntimeError/OSError unless the sender can run a call now. */
static int
bio_zc_check_usable(BioZcSender *s)
{
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "ZeroCopySender is in use by another call "
                        "(a send or wait in another thread)");
        return -1;
    }
    if (s->fd < 0) {
        PyObject *v = Py_BuildValue("(is)", EBADF, "the ZeroCopySender is closed");
        if (v != NULL)
            PyErr_SetObject(PyExc_OSError, v);
        Py_XDECREF(v);
        return -1;
    }
    return 0;
}

/* ---- completion methods (need the sender) ------------------------------ */

/* done() -> bool: processes what is available first. */
static PyObject *
bio_zcc_done(BioZcCompletion *c, PyObject *Py_UNUSED(ignored))
{
    BioZcSender *s = (BioZcSender *)c->sender;
    if (!c->done && s != NULL && !s->busy && s->fd >= 0) {
        Py_INCREF(s); /* finishing c drops c's reference */
        int r = bio_zc_process(s);
        Py_DECREF(s);
        if (r < 0)
            return NULL;
    }
    return PyBool_FromLong(c->done);
}

/* wait(timeout=None) -> bytes sent; OSError if the send failed. */
static PyObject *
bio_zcc_wait(BioZcCompletion *c, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1];
    int64_t ns;
    if (bio_args_parse("wait", args, nargs, kwnames, names, 1, 0, a) < 0 ||
        bio_timeout_parse(a[0] ? a[0] : Py_None, &ns) < 0)
        return NULL;
    BioZcSender *s = (BioZcSender *)c->sender;
    if (!c->done && s != NULL) {
        if (bio_zc_check_usable(s) < 0)
            return NULL;
        Py_INCREF(s);
        int r = bio_zc_wait_until(s, bio_zc_ready_done, c, ns < 0 ? -1 : bio_now_ns() + ns);
        Py_DECREF(s);
        if (r < 0)
            return NULL;
    }
    return bio_zcc_outcome(c);
}

static PyMethodDef bio_zcc_methods[] = {
    {"done", (PyCFunction)bio_zcc_done, METH_NOARGS,
     "done() -> bool: the kernel is done with the buffer (processes completions first)"},
    {"wait", (PyCFunction)(void (*)(void))bio_zcc_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None) -> int\n\nBlock until the kernel is done with the buffer; return the\n"
     "bytes sent. OSError with the kernel's errno if the send failed (its `sent`\n"
     "attribute: the bytes taken before); TimeoutError if it is still in flight\n"
     "after timeout seconds."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BioZcCompletion_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.ZeroCopyCompletion",
    .tp_basicsize = sizeof(BioZcCompletion),
    .tp_dealloc = (destructor)bio_zcc_dealloc,
    .tp_repr = (reprfunc)bio_zcc_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The outcome of one zero-copy send (base of burstio._zerocopy.Completion).",
    .tp_traverse = (traverseproc)bio_zcc_traverse,
    .tp_clear = (inquiry)bio_zcc_clear,
    .tp_methods = bio_zcc_methods,
    .tp_members = bio_zcc_members,
    .tp_getset = bio_zcc_getset,
};

/* ---- sender: the send call --------------------------------------------- */

/* Check send()'s arguments; sets *out and *len. 0 or -1. */
static int
bio_zc_send_args(BioZcSender *s, PyObject *bufobj, PyObject *lenobj, BioZcBuffer **out,
                 uint32_t *len)
{
    if (!PyObject_TypeCheck(bufobj, &BioZcBuffer_Type)) {
        PyErr_Format(PyExc_TypeError, "send() argument 'buf' must be burstio.ZeroCopyBuffer, "
                     "not %.100s", Py_TYPE(bufobj)->tp_name);
        return -1;
    }
    BioZcBuffer *b = (BioZcBuffer *)bufobj;
    if (b->pool != s->pool) {
        PyErr_SetString(PyExc_ValueError, "the buffer belongs to another pool than this sender's");
        return -1;
    }
    if (bio_zcbuf_check(b) < 0)
        return -1;
    if (b->exports > 0) {
        PyErr_Format(PyExc_BufferError, "buffer %u has %zd view%s still open (memoryview, array): "
                     "release %s before send()", b->index, b->exports,
                     b->exports == 1 ? "" : "s", b->exports == 1 ? "it" : "them");
        return -1;
    }
    Py_ssize_t n = (Py_ssize_t)s->pool->buf_size;
    if (lenobj != NULL && lenobj != Py_None) {
        if (PyBool_Check(lenobj) || !PyLong_Check(lenobj)) {
            PyErr_Format(PyExc_TypeError, "length must be int or None, got %.100s",
                         Py_TYPE(lenobj)->tp_name);
            return -1;
        }
        if ((n = PyLong_AsSsize_t(lenobj)) == -1 && PyErr_Occurred())
            return -1;
        if (n < 0 || (size_t)n > s->pool->buf_size) {
            PyErr_Format(PyExc_ValueError, "length must be between 0 and the buffer's %zu bytes, "
                         "got %zd", s->pool->buf_size, n);
            return -1;
        }
    }
    *out = b;
    *len = (uint32_t)n;
    return 0;
}

/* Parse the destination into names[idx] (family 0: the connected peer). */
static int
bio_zc_send_addr(BioZcSender *s, uint32_t idx, PyObject *addr)
{
    memset(&s->names[idx], 0, sizeof(s->names[idx]));
    if (addr == NULL || addr == Py_None)
        return 0;
    if (s->stream) {
        PyErr_SetString(PyExc_ValueError,
                        "addr is for UDP sockets; a TCP socket sends to its connected peer");
        return -1;
    }
    return bio_addr_parse(addr, &s->names[idx]);
}

/* A new Completion for slot idx. New reference or NULL. */
static BioZcCompletion *
bio_zc_completion_new(BioZcSender *s, uint32_t idx, uint32_t len)
{
    PyTypeObject *t = (PyTypeObject *)s->completion_type;
    BioZcCompletion *c = (BioZcCompletion *)t->tp_alloc(t, 0);
    if (c == NULL)
        return NULL;
    c->sender = Py_NewRef((PyObject *)s);
    c->index = idx;
    c->length = len;
    return c;
}

/* Buffer idx is in flight from now on: slot set up (zero copy as the policy
 * says), at the tail of the queue. */
static void
bio_zc_slot_start(BioZcSender *s, uint32_t idx, uint32_t len, BioZcCompletion *c)
{
    int zc = s->zerocopy && s->backend != BIO_ZC_COPY && len > 0 && len >= (uint32_t)s->min_size;
    BioZcSlot *sl = &s->slots[idx];
    memset(sl, 0, sizeof(*sl));
    sl->busy = 1;
    sl->length = len;
    sl->zc = (uint8_t)zc;
    sl->completion = Py_NewRef((PyObject *)c);
    c->zerocopy = (char)zc;
    s->pool->state[idx] = BIO_ZC_IN_FLIGHT;
    s->inflight++;
    bio_zc_q_push(s, idx);
}

/* Take back the send at the queue's tail, idx, if the kernel has seen none
 * of it (a signal handler raised before): its buffer is OWNED again. */
static void
bio_zc_unsend(BioZcSender *s, uint32_t idx)
{
    BioZcSlot *sl = &s->slots[idx];
    if (!sl->busy || sl->submitted || sl->sent > 0 || sl->has_result || sl->notifs > 0)
        return;
    sl->busy = 0;
    s->q_len--;
    s->inflight--;
    s->pool->state[idx] = BIO_ZC_OWNED;
    Py_CLEAR(sl->completion);
}

/* Send buffer bufobj; its Completion (new reference), or NULL with the
 * buffer untouched (but for io_uring_enter failing after the request was
 * queued: it goes with the next call). Never waits for the kernel. */
static PyObject *
bio_zc_send_common(BioZcSender *s, PyObject *bufobj, PyObject *lenobj, PyObject *addr)
{
    BioZcBuffer *b;
    uint32_t len;
    if (bio_zc_check_usable(s) < 0)
        return NULL;
    /* io_uring: what the ring holds costs no syscall; it moves the queue on */
    if (s->backend == BIO_ZC_URING && bio_zc_process(s) < 0)
        return NULL;
    if (bio_zc_send_args(s, bufobj, lenobj, &b, &len) < 0 || bio_zc_send_addr(s, b->index, addr) < 0)
        return NULL;
    uint32_t idx = b->index;
    BioZcCompletion *c = bio_zc_completion_new(s, idx, len);
    if (c == NULL)
        return NULL;
    bio_zc_slot_start(s, idx, len, c);
    BIO_ZC_COUNT(s, BIO_ZC_SENDS, 1);
    BIO_ZC_COUNT(s, c->zerocopy ? BIO_ZC_ZEROCOPY_SENDS : BIO_ZC_COPY_SENDS, 1);
    if (s->q_len == 1 && bio_zc_push(s) < 0) { /* else it waits for the ones before it */
        bio_zc_unsend(s, idx);
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static PyObject *
bio_zcs_send(BioZcSender *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"buf", "length", "addr", NULL};
    PyObject *a[3];
    if (bio_args_parse("send", args, nargs, kwnames, names, 3, 1, a) < 0)
        return NULL;
    return bio_zc_send_common(s, a[0], a[1], a[2]);
}

static PyObject *
bio_zcs_send_and_wait(BioZcSender *s, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames)
{
    static const char *const names[] = {"buf", "length", "addr", "timeout", NULL};
    PyObject *a[4];
    int64_t ns;
    if (bio_args_parse("send_and_wait", args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_timeout_parse(a[3] ? a[3] : Py_None, &ns) < 0)
        return NULL;
    int64_t deadline = ns < 0 ? -1 : bio_now_ns() + ns;
    BioZcCompletion *c = (BioZcCompletion *)bio_zc_send_common(s, a[0], a[1], a[2]);
    if (c == NULL)
        return NULL;
    PyObject *ret = NULL;
    if (c->done || bio_zc_wait_until(s, bio_zc_ready_done, c, deadline) >= 0)
        ret = bio_zcc_outcome(c);
    Py_DECREF(c);
    return ret;
}

/* ---- sender: acquire, poll, close --------------------------------------- */

static PyObject *
bio_zcs_acquire(BioZcSender *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1];
    int64_t ns;
    if (bio_args_parse("acquire", args, nargs, kwnames, names, 1, 0, a) < 0 ||
        bio_timeout_parse(a[0] ? a[0] : Py_None, &ns) < 0 || bio_zc_check_usable(s) < 0)
        return NULL;
    if (s->pool->nfree == 0 && bio_zc_process(s) < 0)
        return NULL;
    if (s->pool->nfree == 0 && s->inflight == 0) {
        PyErr_Format(PyExc_BufferError, "none of the pool's %u buffers is free or in flight "
                     "(acquired and not sent, or lost): send or drop one", s->pool->nbuf);
        return NULL;
    }
    if (s->pool->nfree == 0) {
        int r = bio_zc_wait_until(s, bio_zc_ready_free, NULL, ns < 0 ? -1 : bio_now_ns() + ns);
        if (r < 0)
            return NULL;
        if (r == 0) {
            char msg[128];
            snprintf(msg, sizeof(msg), "no buffer came back from the kernel within %.3g s "
                     "(%u in flight)", (double)ns / 1e9, s->inflight);
            PyErr_SetString(PyExc_TimeoutError, msg);
            return NULL;
        }
    }
    return bio_zcbuf_new(s->pool, bio_zcpool_take(s->pool));
}

static PyObject *
bio_zcs_poll(BioZcSender *s, PyObject *Py_UNUSED(ignored))
{
    if (bio_zc_check_usable(s) < 0)
        return NULL;
    uint64_t before = s->returned;
    if (bio_zc_process(s) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(s->returned - before);
}

/* Give up on what is still in flight; the Completions are cancelled. A
 * buffer the kernel may still read (a request on the ring, a notification
 * due) is LOST, never reused; one it never saw, or only copied from, goes
 * back to the pool. */
static void
bio_zc_abandon(BioZcSender *s)
{
    for (uint32_t i = 0; s->slots != NULL && s->pool != NULL && i < s->pool->nbuf; i++) {
        BioZcSlot *sl = &s->slots[i];
        if (!sl->busy)
            continue;
        sl->busy = 0;
        if (sl->submitted || sl->notifs > 0)
            s->pool->state[i] = BIO_ZC_LOST;
        else
            bio_zcpool_put(s->pool, i);
        if (sl->completion != NULL) {
            bio_zcc_fill((BioZcCompletion *)sl->completion, sl, 1);
            Py_CLEAR(sl->completion);
        }
    }
    s->inflight = s->zc_pending = s->q_len = 0;
}

/* Close the descriptors and let the pool go to another sender. */
static void
bio_zc_release(BioZcSender *s)
{
    bio_zc_abandon(s);
    if (s->ring_ok)
        io_uring_queue_exit(&s->ring);
    s->ring_ok = 0;
    if (s->epfd >= 0)
        close(s->epfd);
    s->epfd = -1;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    if (s->attached)
        s->pool->attached = 0;
    s->attached = 0;
}

static int
bio_zc_get_events_nogil(void *ring)
{
    return io_uring_get_events((struct io_uring *)ring);
}

/* close(timeout=None): process what the kernel has released (always, also
 * with timeout 0: a send that completed is never reported cancelled), wait
 * up to timeout for the rest, then give it up and close. */
static PyObject *
bio_zcs_close(BioZcSender *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1];
    int64_t ns;
    if (bio_args_parse("close", args, nargs, kwnames, names, 1, 0, a) < 0 ||
        bio_timeout_parse(a[0] ? a[0] : Py_None, &ns) < 0)
        return NULL;
    if (s->fd < 0)
        Py_RETURN_NONE;
    if (bio_zc_check_usable(s) < 0)
        return NULL;
    int64_t deadline = ns < 0 ? -1 : bio_now_ns() + ns;
    if (s->backend == BIO_ZC_URING && s->inflight > 0) { /* post what the kernel finished */
        BIO_ZC_COUNT(s, BIO_ZC_SYSCALLS, 1);
        s->busy = 1;
        int r = bio_nogil_retry(bio_zc_get_events_nogil, &s->ring);
        s->busy = 0;
        if (r == -EINTR)
            return NULL;
    }
    if (bio_zc_wait_until(s, bio_zc_ready_idle, NULL, deadline) < 0)
        return NULL;
    bio_zc_release(s);
    Py_RETURN_NONE;
}

static PyObject *
bio_zcs_counters(BioZcSender *s, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(s->counters, bio_zc_counter_names, BIO_ZC_NCOUNTERS);
}

static PyObject *
bio_zcs_count(BioZcSender *s, PyObject *args)
{
    const char *name;
    unsigned long long n;
    if (!PyArg_ParseTuple(args, "sK:count", &name, &n))
        return NULL;
    int i = bio_counter_find(bio_zc_counter_names, BIO_ZC_NCOUNTERS, name);
    if (i < 0)
        return NULL;
    BIO_ZC_COUNT(s, i, n);
    Py_RETURN_NONE;
}

static PyObject *
bio_zcs_reset_counters(BioZcSender *s, PyObject *Py_UNUSED(ignored))
{
    uint64_t disabled = s->counters[BIO_ZC_DISABLED];
    memset(s->counters, 0, sizeof(s->counters));
    s->counters[BIO_ZC_DISABLED] = disabled; /* a state, not an event count */
    Py_RETURN_NONE;
}

/* ---- sender: setup ----------------------------------------------------- */

/* io_uring, the pool registered as fixed buffers where the kernel lets us.
 * 0 or -errno. */
static int
bio_zc_uring_setup(BioZcSender *s)
{
    unsigned entries = 8;
    while (entries < s->pool->nbuf)
        entries <<= 1;
    int r = io_uring_queue_init(entries, &s->ring, 0);
    if (r < 0)
        return r;
    s->ring_ok = 1;
    struct iovec *iov = PyMem_Calloc(s->pool->nbuf, sizeof(*iov));
    if (iov == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->pool->nbuf; i++) {
        iov[i].iov_base = bio_zcpool_ptr(s->pool, i);
        iov[i].iov_len = s->pool->buf_size;
    }
    r = io_uring_register_buffers(&s->ring, iov, s->pool->nbuf);
    PyMem_Free(iov);
    s->fixed = r == 0;
    s->fixed_errno = r < 0 ? -r : 0;
    return 0;
}

/* sendmsg backends: an epoll set telling (edge-triggered) when the error
 * queue gets something (MSG_ZEROCOPY) and when a stream socket has room
 * again; MSG_ZEROCOPY also gets the id table. 0 or -errno. */
static int
bio_zc_epoll_setup(BioZcSender *s)
{
    if (s->backend == BIO_ZC_MSG) {
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

/* Our own descriptor of the socket, and whether it is a stream. 0 or -errno. */
static int
bio_zc_fd_setup(BioZcSender *s, int fd)
{
    s->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (s->fd < 0)
        return -errno;
    int type = 0;
    socklen_t tl = sizeof(type);
    if (getsockopt(s->fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0)
        return -errno;
    s->stream = type == SOCK_STREAM;
    return 0;
}

/* Check ZeroCopyIo()'s arguments; 0 or -1 with TypeError/ValueError. */
static int
bio_zc_new_args(PyObject *pool, int backend, PyObject *ctype)
{
    if (!PyObject_TypeCheck(pool, &BioZcPool_Type)) {
        PyErr_Format(PyExc_TypeError, "pool must be burstio.ZeroCopyPool, not %.100s",
                     Py_TYPE(pool)->tp_name);
        return -1;
    }
    if (((BioZcPool *)pool)->attached) {
        PyErr_SetString(PyExc_ValueError, "this ZeroCopyPool is used by another open "
                        "ZeroCopySender; give each sender its own pool");
        return -1;
    }
    if (backend < BIO_ZC_COPY || backend > BIO_ZC_URING) {
        PyErr_Format(PyExc_ValueError, "backend must be 0 (copy), 1 (msg) or 2 (uring), got %d",
                     backend);
        return -1;
    }
    if (!PyType_Check(ctype) || !PyType_IsSubtype((PyTypeObject *)ctype, &BioZcCompletion_Type)) {
        PyErr_SetString(PyExc_TypeError, "completion_type must be a subclass of ZeroCopyCompletion");
        return -1;
    }
    return 0;
}

/* The descriptors and tables of a new sender s. 0 or -errno. */
static int
bio_zc_setup(BioZcSender *s, int fd)
{
    uint32_t n = s->pool->nbuf;
    s->slots = PyMem_Calloc(n, sizeof(BioZcSlot));
    s->names = PyMem_Calloc(n, sizeof(struct sockaddr_in6));
    s->queue = PyMem_Calloc(n, sizeof(uint32_t));
    int r = s->slots && s->names && s->queue ? bio_zc_fd_setup(s, fd) : -ENOMEM;
    if (r == 0 && s->backend == BIO_ZC_URING)
        r = bio_zc_uring_setup(s);
    if (r == 0 && (s->backend == BIO_ZC_MSG || (s->backend == BIO_ZC_COPY && s->stream)))
        r = bio_zc_epoll_setup(s);
    return r;
}

static PyObject *
bio_zcs_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "pool", "backend", "completion_type", "first_id", NULL};
    int fd, backend;
    unsigned int first_id = 0;
    PyObject *pool, *ctype;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOiO|I:ZeroCopyIo", kwlist, &fd, &pool, &backend,
                                     &ctype, &first_id) ||
        bio_zc_new_args(pool, backend, ctype) < 0)
        return NULL;
    BioZcSender *s = (BioZcSender *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->fd = s->epfd = -1;
    s->backend = backend;
    s->pool = (BioZcPool *)Py_NewRef(pool);
    s->completion_type = Py_NewRef(ctype);
    s->next_id = first_id;
    int r = bio_zc_setup(s, fd);
    if (r < 0) {
        bio_raise_errno(r);
        Py_DECREF(s);
        return NULL;
    }
    s->pool->attached = s->attached = 1;
    return (PyObject *)s;
}

static int
bio_zcs_traverse(BioZcSender *s, visitproc visit, void *arg)
{
    for (uint32_t i = 0; s->slots != NULL && i < s->pool->nbuf; i++)
        Py_VISIT(s->slots[i].completion);
    Py_VISIT(s->completion_type);
    Py_VISIT(s->policy);
    Py_VISIT(s->waiters);
    return 0;
}

static int
bio_zcs_clear(BioZcSender *s)
{
    for (uint32_t i = 0; s->slots != NULL && i < s->pool->nbuf; i++)
        Py_CLEAR(s->slots[i].completion);
    Py_CLEAR(s->policy);
    Py_CLEAR(s->waiters);
    return 0;
}

static void
bio_zcs_dealloc(BioZcSender *s)
{
    PyObject_GC_UnTrack(s);
    bio_zc_release(s);
    bio_zcs_clear(s);
    Py_CLEAR(s->completion_type);
    Py_CLEAR(s->pool);
    PyMem_Free(s->slots);
    PyMem_Free(s->names);
    PyMem_Free(s->queue);
    PyMem_Free(s->ids);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* completion_fd: readable when completions may be ready (-1: none needed). */
static PyObject *
bio_zcs_get_completion_fd(BioZcSender *s, void *c)
{
    if (s->fd < 0)
        return PyLong_FromLong(-1);
    return PyLong_FromLong(s->backend == BIO_ZC_URING ? s->ring.ring_fd : s->epfd);
}

static PyMethodDef bio_zcs_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))bio_zcs_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(timeout=None) -> ZeroCopyBuffer: a free buffer, waiting for one to come back"},
    {"send", (PyCFunction)(void (*)(void))bio_zcs_send, METH_FASTCALL | METH_KEYWORDS,
     "send(buf, length=None, addr=None) -> Completion (never waits for the kernel)"},
    {"send_and_wait", (PyCFunction)(void (*)(void))bio_zcs_send_and_wait,
     METH_FASTCALL | METH_KEYWORDS,
     "send_and_wait(buf, length=None, addr=None, timeout=None) -> int: bytes sent"},
    {"poll", (PyCFunction)bio_zcs_poll, METH_NOARGS,
     "poll() -> int: process completions and move queued sends on, without waiting; "
     "buffers returned to the pool"},
    {"close", (PyCFunction)(void (*)(void))bio_zcs_close, METH_FASTCALL | METH_KEYWORDS,
     "close(timeout=None): process completions, wait up to timeout for the rest, then close"},
    {"counters", (PyCFunction)bio_zcs_counters, METH_NOARGS, "counters() -> dict"},
    {"count", (PyCFunction)bio_zcs_count, METH_VARARGS,
     "count(name, n): add n to a counter (for policy code in Python)"},
    {"reset_counters", (PyCFunction)bio_zcs_reset_counters, METH_NOARGS,
     "reset_counters(): set the event counters to 0"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_zcs_members[] = {
    {"fd", T_INT, offsetof(BioZcSender, fd), READONLY, "our descriptor of the socket (-1: closed)"},
    {"backend", T_INT, offsetof(BioZcSender, backend), READONLY, "0 copy, 1 msg, 2 uring"},
    {"stream", T_INT, offsetof(BioZcSender, stream), READONLY, "1: a TCP socket"},
    {"broken", T_INT, offsetof(BioZcSender, broken), READONLY,
     "stream: errno of the send that failed, after which no send is made (0: none failed)"},
    {"queued", T_UINT, offsetof(BioZcSender, q_len), READONLY,
     "sends not resolved yet (the first may be part way), in send() order"},
    {"fixed_buffers", T_INT, offsetof(BioZcSender, fixed), READONLY,
     "1: the pool is registered with io_uring as fixed buffers"},
    {"fixed_errno", T_INT, offsetof(BioZcSender, fixed_errno), READONLY,
     "why registering fixed buffers failed (0: it did not)"},
    {"zerocopy", T_INT, offsetof(BioZcSender, zerocopy), 0, "policy: 0 sends by plain copy"},
    {"min_size", T_INT, offsetof(BioZcSender, min_size), 0,
     "policy: sends shorter than this go by plain copy"},
    {"switch_after", T_INT, offsetof(BioZcSender, switch_after), 0,
     "policy: call policy(streak) after this many copied notifications in a row (0: never)"},
    {"copied_streak", T_UINT, offsetof(BioZcSender, copied_streak), READONLY,
     "zero-copy sends the kernel copied, in a row"},
    {"inflight", T_UINT, offsetof(BioZcSender, inflight), READONLY, "buffers sent, not back"},
    {"next_id", T_UINT, offsetof(BioZcSender, next_id), READONLY,
     "MSG_ZEROCOPY id of the next zero-copy send on this socket"},
    {"policy", T_OBJECT, offsetof(BioZcSender, policy), 0, "policy(streak) hook"},
    {"waiters", T_OBJECT, offsetof(BioZcSender, waiters), 0, "asyncio helper (Python's)"},
    {NULL},
};

static PyGetSetDef bio_zcs_getset[] = {
    {"completion_fd", (getter)bio_zcs_get_completion_fd, NULL,
     "fd that polls readable when completions may be ready (-1: none needed)", NULL},
    {NULL},
};

static PyTypeObject BioZcSender_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.ZeroCopyIo",
    .tp_basicsize = sizeof(BioZcSender),
    .tp_dealloc = (destructor)bio_zcs_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "ZeroCopyIo(fd, pool, backend, completion_type, first_id=0): zero-copy sends "
              "(internal; see burstio.ZeroCopySender).",
    .tp_traverse = (traverseproc)bio_zcs_traverse,
    .tp_clear = (inquiry)bio_zcs_clear,
    .tp_methods = bio_zcs_methods,
    .tp_members = bio_zcs_members,
    .tp_getset = bio_zcs_getset,
    .tp_new = bio_zcs_new,
};

int
bio_zerocopy_init_types(PyObject *module)
{
    if (bio_zcpool_init_types(module) < 0 || PyType_Ready(&BioZcCompletion_Type) < 0 ||
        PyType_Ready(&BioZcSender_Type) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "ZeroCopyCompletion", (PyObject *)&BioZcCompletion_Type) < 0 ||
        PyModule_AddObjectRef(module, "ZeroCopyIo", (PyObject *)&BioZcSender_Type) < 0)
        return -1;
    return 0;
}
