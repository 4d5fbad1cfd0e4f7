/* Zero-copy send, from the kernel's word to the Completion: the bookkeeping
 * of each send (resolved, notified, its buffer back in the pool), processing
 * what the backends report, waiting for it, and the ZeroCopyCompletion type
 * that tells Python.
 *
 * How "the kernel is done" arrives, per backend:
 *  - io_uring (zerocopy/uring.c): a result CQE (bytes or -errno;
 *    IORING_CQE_F_MORE if a notification follows) and a notification CQE
 *    (IORING_CQE_F_NOTIF; with IORING_SEND_ZC_REPORT_USAGE its res says
 *    whether the kernel copied);
 *  - MSG_ZEROCOPY (zerocopy/msg.c): sendmsg returns at once; the socket's
 *    error queue later carries ranges [ee_info, ee_data] of per-socket send
 *    ids (SO_EE_ORIGIN_ZEROCOPY; SO_EE_CODE_ZEROCOPY_COPIED if copied);
 *  - copy (zerocopy/msg.c): sendmsg returns, and the kernel has its own copy.
 *
 * Order. A send is *resolved* once the kernel has taken all of it, or it
 * failed; its buffer returns once it is resolved and every notification
 * has come. The sends of a sender are resolved one at a time, in send()
 * order: a send issued while an earlier one is unresolved waits in a queue
 * (its buffer already in flight) and goes when the completions are
 * processed. A piece that fails resolves its send with the errno and the
 * bytes taken so far, and no later send on a stream is made (they fail
 * with ECANCELED): the byte stream never has a gap.
 *
 * Where a datagram goes through it: nowhere; once a backend has handed a
 * buffer's bytes to the kernel, this file follows the kernel's word until
 * the buffer is back in the pool and the Completion says how it went.
 */
#include "zerocopy/zerocopy.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <structmember.h>

/* ---- the bookkeeping of a send ------------------------------------------ */

/* The send in slot idx is over for the kernel: count it, give the buffer
 * back, fill the Completion. GIL held. */
static void
bio_zerocopy_finish(BioZeroCopyIo *s, uint32_t idx)
{
    BioZeroCopySlot *sl = &s->slots[idx];
    if (sl->sent == 0) /* nothing sent: nothing copied (io_uring flags it anyway) */
        sl->copied = 0;
    if (sl->zc_used && sl->sent > 0) {
        BIO_COUNT(s->counters, BIO_ZEROCOPY_C_NOTIFICATIONS, 1);
        if (sl->copied) {
            BIO_COUNT(s->counters, BIO_ZEROCOPY_C_COPIED, 1);
            if (++s->copied_streak == (uint32_t)s->switch_after && s->switch_after > 0)
                s->switch_pending = 1;
        } else {
            s->copied_streak = 0;
        }
    }
    sl->busy = 0;
    s->inflight--;
    s->returned++;
    bio_zerocopy_pool_put(s->pool, idx);
    if (sl->completion != NULL) {
        bio_zerocopy_completion_fill((BioZeroCopyCompletion *)sl->completion, sl, 0);
        Py_CLEAR(sl->completion);
    }
}

/* Finish slot idx if it is resolved and the kernel owes it nothing more. */
void
bio_zerocopy_try_finish(BioZeroCopyIo *s, uint32_t idx)
{
    BioZeroCopySlot *sl = &s->slots[idx];
    if (sl->busy && sl->has_result && sl->notifs == 0 && !sl->submitted)
        bio_zerocopy_finish(s, idx);
}

uint32_t
bio_zerocopy_q_head(const BioZeroCopyIo *s)
{
    return s->queue[s->q_head];
}

void
bio_zerocopy_q_push(BioZeroCopyIo *s, uint32_t idx)
{
    s->queue[(s->q_head + s->q_len++) % s->pool->nbuf] = idx;
}

/* Slot idx's send is over: taken whole (err 0) or failed with err. It
 * leaves the queue; on a stream a failure stops every send behind it. */
static void
bio_zerocopy_resolve(BioZeroCopyIo *s, uint32_t idx, int err)
{
    BioZeroCopySlot *sl = &s->slots[idx];
    sl->has_result = 1;
    sl->error = err;
    sl->result = err && sl->sent == 0 ? -err : (int32_t)sl->sent;
    if (err) {
        BIO_COUNT(s->counters, BIO_ZEROCOPY_C_ERRORS, 1);
        if (s->stream && !s->broken)
            s->broken = err;
    }
    if (s->q_len > 0 && bio_zerocopy_q_head(s) == idx) {
        s->q_head = (s->q_head + 1) % s->pool->nbuf;
        s->q_len--;
    }
    bio_zerocopy_try_finish(s, idx);
}

/* The kernel took r bytes of a piece of slot idx's send (r < 0: -errno).
 * A datagram, a whole stream send or a failure resolves it; EAGAIN on a
 * stream leaves it for when the socket is writable again. */
void
bio_zerocopy_piece_done(BioZeroCopyIo *s, uint32_t idx, int r)
{
    BioZeroCopySlot *sl = &s->slots[idx];
    if (r > 0) {
        sl->sent += (uint32_t)r;
        BIO_COUNT(s->counters, BIO_ZEROCOPY_C_BYTES, r);
    }
    if (r == -EAGAIN && s->stream && s->backend != BIO_ZEROCOPY_BACKEND_URING) {
        s->out_blocked = 1;
        return;
    }
    if (r == 0 && s->stream && sl->sent < sl->length)
        r = -EPIPE; /* a stream taking nothing without an error: never seen, never loop */
    if (r < 0)
        bio_zerocopy_resolve(s, idx, -r);
    else if (!s->stream || sl->sent >= sl->length)
        bio_zerocopy_resolve(s, idx, 0);
}

/* Resolve the queue's head idx without a syscall where none is needed: the
 * stream broke before it (skipped), or nothing of it is left. 1 if so. */
int
bio_zerocopy_settle_head(BioZeroCopyIo *s, uint32_t idx)
{
    BioZeroCopySlot *sl = &s->slots[idx];
    if (s->broken) {
        sl->skipped = 1;
        bio_zerocopy_resolve(s, idx, ECANCELED);
        return 1;
    }
    if (s->stream && sl->sent >= sl->length) {
        bio_zerocopy_resolve(s, idx, 0);
        return 1;
    }
    return 0;
}

/* ---- processing --------------------------------------------------------- */

/* Move the queue on as far as the kernel takes it, without waiting. */
int
bio_zerocopy_push(BioZeroCopyIo *s)
{
    return s->backend == BIO_ZEROCOPY_BACKEND_URING ? bio_zerocopy_uring_push(s)
                                                     : bio_zerocopy_msg_push(s);
}

/* Call the policy once the kernel copied switch_after sends in a row. */
static int
bio_zerocopy_run_policy(BioZeroCopyIo *s)
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
int
bio_zerocopy_process(BioZeroCopyIo *s)
{
    if (s->backend != BIO_ZEROCOPY_BACKEND_URING && s->epfd >= 0 && s->inflight > 0 &&
        bio_zerocopy_msg_reap(s) < 0)
        return -1;
    if (bio_zerocopy_push(s) < 0)
        return -1;
    return s->switch_pending ? bio_zerocopy_run_policy(s) : 0;
}

/* ---- waiting ------------------------------------------------------------ */

typedef struct {
    BioZeroCopyIo *s;    /* only its io_uring, epfd and wake are used */
    int64_t deadline;
    uint64_t syscalls;
} BioZeroCopyWait;

/* Sleep until a completion may be ready (or, on a stream, the socket
 * writable), close() wakes us, or the deadline (-1: none). io_uring: a CQE
 * (the wake poll's, on close()); the sendmsg backends: poll() on the epoll
 * set (whose events the next reap takes) and the wake eventfd. 1 woken,
 * 0 deadline passed, -BIO_ECLOSED closing, -errno. nogil. */
static int
bio_zerocopy_wait_nogil(void *arg)
{
    BioZeroCopyWait *w = arg;
    int64_t left = w->deadline < 0 ? -1 : w->deadline - bio_now_ns();
    if (bio_wake_closing(&w->s->wake))
        return -BIO_ECLOSED;
    if (w->deadline >= 0 && left <= 0)
        return 0;
    w->syscalls++;
    if (w->s->backend == BIO_ZEROCOPY_BACKEND_URING) {
        int r = bio_zerocopy_uring_wait_nogil(w->s, left);
        return bio_wake_closing(&w->s->wake) ? -BIO_ECLOSED : r;
    }
    return bio_wake_poll_nogil(&w->s->wake, w->s->epfd, POLLIN, w->deadline);
}

/* Process completions until ready(s, arg) holds or the deadline passes
 * (-1: never); processes once even if the deadline has passed. 1 ready,
 * 0 timed out (or nothing in flight to wait for), -1 with an exception
 * set. GIL held. */
int
bio_zerocopy_wait_until(BioZeroCopyIo *s, int (*ready)(BioZeroCopyIo *, void *), void *arg,
                        int64_t deadline)
{
    for (;;) {
        if (bio_zerocopy_process(s) < 0)
            return -1;
        if (ready(s, arg))
            return 1;
        if (bio_wake_closing(&s->wake)) /* (what completed meanwhile was taken above) */
            return bio_zerocopy_raise_closed();
        if (s->inflight == 0 || s->fd < 0 ||
            (s->backend != BIO_ZEROCOPY_BACKEND_URING && s->epfd < 0))
            return 0;
        if (deadline >= 0 && bio_now_ns() >= deadline)
            return 0;
        if (s->backend == BIO_ZEROCOPY_BACKEND_URING)
            bio_zerocopy_uring_arm_wake(s);
        BioZeroCopyWait w = {.s = s, .deadline = deadline};
        s->busy = 1;
        int r = bio_nogil_retry(bio_zerocopy_wait_nogil, &w);
        s->busy = 0;
        BIO_COUNT(s->counters, BIO_ZEROCOPY_C_SYSCALLS, w.syscalls);
        if (r == -BIO_ECLOSED && bio_wake_closing(&s->wake))
            continue; /* take what completed, then report the close */
        if (r < 0) {
            if (r != -EINTR)
                bio_raise_errno(r);
            return -1;
        }
    }
}

int
bio_zerocopy_ready_done(BioZeroCopyIo *s, void *c)
{
    return ((BioZeroCopyCompletion *)c)->done;
}

int
bio_zerocopy_ready_free(BioZeroCopyIo *s, void *x)
{
    return s->pool->nfree > 0;
}

int
bio_zerocopy_ready_idle(BioZeroCopyIo *s, void *x)
{
    return s->inflight == 0;
}

/* ---- the Completion type ---------------------------------------------- */

/* Record the outcome of slot sl in c (cancelled: the sender closed first);
 * c no longer needs its sender. */
void
bio_zerocopy_completion_fill(BioZeroCopyCompletion *c, const BioZeroCopySlot *sl, int cancelled)
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
bio_zerocopy_completion_raise(BioZeroCopyCompletion *c, int err, const char *what)
{
    PyObject *v = Py_BuildValue("(is)", err, what != NULL ? what : strerror(err));
    if (v != NULL)
        PyErr_SetObject(PyExc_OSError, v);
    Py_XDECREF(v);
    bio_exc_note_sent(c->has_result && c->result > 0 ? (Py_ssize_t)c->result : 0);
    return NULL;
}

/* The completed outcome: bytes sent, or OSError; TimeoutError if pending. */
PyObject *
bio_zerocopy_completion_outcome(BioZeroCopyCompletion *c)
{
    if (!c->done) {
        PyErr_Format(PyExc_TimeoutError,
                     "the kernel has not released buffer %u yet (send still in flight)", c->index);
        return NULL;
    }
    if (c->skipped)
        return bio_zerocopy_completion_raise(c, ECANCELED,
                                             "not sent: an earlier send on this stream failed, "
                                             "and sending more would leave a gap in it");
    if (c->error)
        return bio_zerocopy_completion_raise(c, c->error, NULL);
    if (c->cancelled)
        return bio_zerocopy_completion_raise(c, ECANCELED,
                                             "the ZeroCopySender was closed before the send "
                                             "was done (a buffer the kernel may still read "
                                             "stays out of the pool)");
    return PyLong_FromLongLong(c->result);
}

static int
bio_zerocopy_completion_traverse(BioZeroCopyCompletion *c, visitproc visit, void *arg)
{
    Py_VISIT(c->sender);
    return 0;
}

static int
bio_zerocopy_completion_clear(BioZeroCopyCompletion *c)
{
    Py_CLEAR(c->sender);
    return 0;
}

static void
bio_zerocopy_completion_dealloc(BioZeroCopyCompletion *c)
{
    PyObject_GC_UnTrack(c);
    Py_CLEAR(c->sender);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* result: None until the kernel said. */
static PyObject *
bio_zerocopy_completion_get_result(BioZeroCopyCompletion *c, void *x)
{
    if (!c->has_result)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(c->result);
}

static PyObject *
bio_zerocopy_completion_repr(BioZeroCopyCompletion *c)
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

static PyGetSetDef bio_zerocopy_completion_getset[] = {
    {"result", (getter)bio_zerocopy_completion_get_result, NULL,
     "bytes sent (>= 0; fewer than length if a stream send failed part way), or -errno "
     "if nothing was sent; None before the kernel said", NULL},
    {NULL},
};

static PyMemberDef bio_zerocopy_completion_members[] = {
    {"copied", T_BOOL, offsetof(BioZeroCopyCompletion, copied), READONLY,
     "the kernel reported that it copied the data after all"},
    {"zerocopy", T_BOOL, offsetof(BioZeroCopyCompletion, zerocopy), READONLY,
     "zero copy asked for (pending), then: used for the data sent (False: plain copies)"},
    {"cancelled", T_BOOL, offsetof(BioZeroCopyCompletion, cancelled), READONLY,
     "the sender closed before the send was done"},
    {"error", T_INT, offsetof(BioZeroCopyCompletion, error), READONLY,
     "errno of a failed send (0: it did not fail)"},
    {"buffer_index", T_UINT, offsetof(BioZeroCopyCompletion, index), READONLY, "the buffer sent"},
    {"length", T_UINT, offsetof(BioZeroCopyCompletion, length), READONLY, "bytes asked to send"},
    {"sender", T_OBJECT, offsetof(BioZeroCopyCompletion, sender), READONLY,
     "the native sender while pending (internal), else None"},
    {NULL},
};

/* A new Completion for slot idx. New reference or NULL. */
BioZeroCopyCompletion *
bio_zerocopy_completion_new(BioZeroCopyIo *s, uint32_t idx, uint32_t len)
{
    PyTypeObject *t = (PyTypeObject *)s->completion_type;
    BioZeroCopyCompletion *c = (BioZeroCopyCompletion *)t->tp_alloc(t, 0);
    if (c == NULL)
        return NULL;
    c->sender = Py_NewRef((PyObject *)s);
    c->index = idx;
    c->length = len;
    return c;
}

/* done() -> bool: processes what is available first. */
static PyObject *
bio_zerocopy_completion_done(BioZeroCopyCompletion *c, PyObject *Py_UNUSED(ignored))
{
    BioZeroCopyIo *s = (BioZeroCopyIo *)c->sender;
    if (!c->done && s != NULL && !s->busy && s->fd >= 0 && !bio_wake_closing(&s->wake)) {
        if (bio_zerocopy_enter(s) < 0) /* a fork()ed child: refused */
            return NULL;
        Py_INCREF(s); /* finishing c drops c's reference */
        int r = bio_zerocopy_process(s);
        bio_zerocopy_leave(s);
        Py_DECREF(s);
        if (r < 0)
            return NULL;
    }
    return PyBool_FromLong(c->done);
}

/* wait(timeout=None) -> bytes sent; OSError if the send failed. */
static PyObject *
bio_zerocopy_completion_wait(BioZeroCopyCompletion *c, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1];
    int64_t ns;
    if (bio_args_parse("wait", args, nargs, kwnames, names, 1, 0, a) < 0 ||
        bio_timeout_parse(a[0] ? a[0] : Py_None, &ns) < 0)
        return NULL;
    BioZeroCopyIo *s = (BioZeroCopyIo *)c->sender;
    if (!c->done && s != NULL) {
        if (bio_zerocopy_enter(s) < 0)
            return NULL;
        Py_INCREF(s);
        int64_t deadline = ns < 0 ? -1 : bio_now_ns() + ns;
        int r = bio_zerocopy_wait_until(s, bio_zerocopy_ready_done, c, deadline);
        bio_zerocopy_leave(s);
        Py_DECREF(s);
        if (r < 0)
            return NULL;
    }
    return bio_zerocopy_completion_outcome(c);
}

static PyMethodDef bio_zerocopy_completion_methods[] = {
    {"done", (PyCFunction)bio_zerocopy_completion_done, METH_NOARGS,
     "done($self, /)\n--\n\n"
     "Whether the kernel is done with the buffer (processes completions first)."},
    {"wait", (PyCFunction)(void (*)(void))bio_zerocopy_completion_wait,
     METH_FASTCALL | METH_KEYWORDS,
     "wait($self, /, timeout=None)\n--\n\n"
     "Block until the kernel is done with the buffer; return the\n"
     "bytes sent. OSError with the kernel's errno if the send failed (its `sent`\n"
     "attribute: the bytes taken before); TimeoutError if it is still in flight\n"
     "after timeout seconds."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject BioZeroCopyCompletion_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.ZeroCopyCompletion",
    .tp_basicsize = sizeof(BioZeroCopyCompletion),
    .tp_dealloc = (destructor)bio_zerocopy_completion_dealloc,
    .tp_repr = (reprfunc)bio_zerocopy_completion_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The outcome of one zero-copy send (base of burstio._zerocopy.Completion).",
    .tp_traverse = (traverseproc)bio_zerocopy_completion_traverse,
    .tp_clear = (inquiry)bio_zerocopy_completion_clear,
    .tp_methods = bio_zerocopy_completion_methods,
    .tp_members = bio_zerocopy_completion_members,
    .tp_getset = bio_zerocopy_completion_getset,
};

