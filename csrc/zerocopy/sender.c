/* Zero-copy send: the sender, ZeroCopyIo. send() takes an OWNED buffer of
 * its pool, puts it in flight and queues it behind the sends before it;
 * the backend sends it: io_uring SEND_ZC (zerocopy/uring.c), or
 * sendmsg(MSG_ZEROCOPY) or plain copies (zerocopy/msg.c); what the kernel
 * says comes back through zerocopy/completion.c. This file is the Python
 * type: send, acquire, poll, close, counters and setup.
 *
 * Where a datagram goes through it: Python writes it into a pool buffer
 * (zerocopy/pool.c), send() hands that buffer to the backend, and the
 * kernel sends from it in place; the buffer comes back to the pool when
 * the kernel says it is done.
 *
 * Policy (which backend, thresholds, switching zero copy off when the kernel
 * keeps copying, wording) is src/burstio/_zerocopy.py's. These files do the
 * syscalls and the bookkeeping; the GIL is dropped only in bio_nogil_retry.
 */
#include "zerocopy/zerocopy.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <sys/epoll.h>
#include <unistd.h>

static const char *const bio_zerocopy_counter_names[BIO_ZEROCOPY_NCOUNTERS] = {
    "sends", "zerocopy_sends", "copy_sends", "bytes", "errors", "notifications",
    "copied_notifications", "syscalls", "enobufs_copies", "zerocopy_disabled",
    "unmatched_notifications", "other_errqueue_messages",
};

/* RuntimeError/OSError unless the sender can run a call now. */
int
bio_zerocopy_check_usable(BioZeroCopyIo *s)
{
    if (s->fd >= 0 && !bio_wake_same_process(&s->wake)) {
        /* its io_uring, error queue and buffers are shared with the parent:
         * a call here would consume the parent's notifications */
        PyErr_Format(PyExc_RuntimeError,
                     "this ZeroCopySender was made in process %d; after fork() it belongs to the "
                     "parent: make a new ZeroCopySender (and pool) in this process",
                     (int)s->wake.pid);
        return -1;
    }
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "ZeroCopySender is in use by another call "
                        "(a send or wait in another thread)");
        return -1;
    }
    if (s->fd < 0 || bio_wake_closing(&s->wake)) {
        PyObject *v = Py_BuildValue("(is)", EBADF, "the ZeroCopySender is closed");
        if (v != NULL)
            PyErr_SetObject(PyExc_OSError, v);
        Py_XDECREF(v);
        return -1;
    }
    return 0;
}

int
bio_zerocopy_enter(BioZeroCopyIo *s)
{
    if (bio_zerocopy_check_usable(s) < 0)
        return -1;
    s->calls++;
    return 0;
}

static void bio_zerocopy_release(BioZeroCopyIo *s);

void
bio_zerocopy_leave(BioZeroCopyIo *s)
{
    if (--s->calls == 0 && bio_wake_closing(&s->wake) && s->fd >= 0)
        bio_zerocopy_release(s);
}

int
bio_zerocopy_raise_closed(void)
{
    PyObject *v = Py_BuildValue("(is)", EBADF, "the ZeroCopySender was closed while waiting");
    if (v != NULL)
        PyErr_SetObject(PyExc_OSError, v);
    Py_XDECREF(v);
    return BIO_ZEROCOPY_CLOSED;
}


/* ---- sender: the send call --------------------------------------------- */

/* Check send()'s arguments; sets *out and *len. 0 or -1. */
static int
bio_zerocopy_send_args(BioZeroCopyIo *s, PyObject *bufobj, PyObject *lenobj,
                       BioZeroCopyBuffer **out,
                       uint32_t *len)
{
    if (!PyObject_TypeCheck(bufobj, &BioZeroCopyBuffer_Type)) {
        PyErr_Format(PyExc_TypeError, "send() argument 'buf' must be burstio.ZeroCopyBuffer, "
                     "not %.100s", Py_TYPE(bufobj)->tp_name);
        return -1;
    }
    BioZeroCopyBuffer *b = (BioZeroCopyBuffer *)bufobj;
    if (b->pool != s->pool) {
        PyErr_SetString(PyExc_ValueError, "the buffer belongs to another pool than this sender's");
        return -1;
    }
    if (bio_zerocopy_buffer_check(b) < 0)
        return -1;
    if (b->exports > 0) {
        PyErr_Format(PyExc_BufferError, "buffer %u has %zd view%s still open (memoryview, array): "
                     "release %s before send()", b->index, b->exports,
                     b->exports == 1 ? "" : "s", b->exports == 1 ? "it" : "them");
        return -1;
    }
    long long n = (long long)s->pool->buf_size;
    if (bio_args_int_or_none("length", lenobj, 0, (long long)s->pool->buf_size, &n) < 0)
        return -1;
    *out = b;
    *len = (uint32_t)n;
    return 0;
}

/* Parse the destination into names[idx] (family 0: the connected peer). */
static int
bio_zerocopy_send_addr(BioZeroCopyIo *s, uint32_t idx, PyObject *addr)
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

/* Buffer idx is in flight from now on: slot set up (zero copy as the policy
 * says), at the tail of the queue. */
static void
bio_zerocopy_slot_start(BioZeroCopyIo *s, uint32_t idx, uint32_t len, BioZeroCopyCompletion *c)
{
    int zc = s->zerocopy && s->backend != BIO_ZEROCOPY_BACKEND_COPY && len > 0 &&
             len >= (uint32_t)s->min_size;
    BioZeroCopySlot *sl = &s->slots[idx];
    memset(sl, 0, sizeof(*sl));
    sl->busy = 1;
    sl->length = len;
    sl->zc = (uint8_t)zc;
    sl->completion = Py_NewRef((PyObject *)c);
    c->zerocopy = (char)zc;
    s->pool->state[idx] = BIO_ZEROCOPY_IN_FLIGHT;
    s->inflight++;
    bio_zerocopy_q_push(s, idx);
}

/* Take back the send at the queue's tail, idx, if the kernel has seen none
 * of it (a signal handler raised before): its buffer is OWNED again. */
static void
bio_zerocopy_unsend(BioZeroCopyIo *s, uint32_t idx)
{
    BioZeroCopySlot *sl = &s->slots[idx];
    if (!sl->busy || sl->submitted || sl->sent > 0 || sl->has_result || sl->notifs > 0)
        return;
    sl->busy = 0;
    s->q_len--;
    s->inflight--;
    s->pool->state[idx] = BIO_ZEROCOPY_OWNED;
    Py_CLEAR(sl->completion);
}

/* Send buffer bufobj; its Completion (new reference), or NULL with the
 * buffer untouched (but for io_uring_enter failing after the request was
 * queued: it goes with the next call). Never waits for the kernel. */
static PyObject *
bio_zerocopy_send_common(BioZeroCopyIo *s, PyObject *bufobj, PyObject *lenobj, PyObject *addr)
{
    BioZeroCopyBuffer *b;
    uint32_t len;
    /* io_uring: what the CQ holds costs no syscall; it moves the queue on */
    if (s->backend == BIO_ZEROCOPY_BACKEND_URING && bio_zerocopy_process(s) < 0)
        return NULL;
    if (bio_zerocopy_send_args(s, bufobj, lenobj, &b, &len) < 0 ||
        bio_zerocopy_send_addr(s, b->index, addr) < 0)
        return NULL;
    uint32_t idx = b->index;
    BioZeroCopyCompletion *c = bio_zerocopy_completion_new(s, idx, len);
    if (c == NULL)
        return NULL;
    bio_zerocopy_slot_start(s, idx, len, c);
    BIO_COUNT(s->counters, BIO_ZEROCOPY_C_SENDS, 1);
    BIO_COUNT(s->counters, c->zerocopy ? BIO_ZEROCOPY_C_ZEROCOPY_SENDS : BIO_ZEROCOPY_C_COPY_SENDS,
              1);
    if (s->q_len == 1 && bio_zerocopy_push(s) < 0) { /* else it waits for the ones before it */
        bio_zerocopy_unsend(s, idx);
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static PyObject *
bio_zerocopy_io_send(BioZeroCopyIo *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"buf", "length", "addr", NULL};
    PyObject *a[3];
    if (bio_args_parse("send", args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_zerocopy_enter(s) < 0)
        return NULL;
    PyObject *c = bio_zerocopy_send_common(s, a[0], a[1], a[2]);
    bio_zerocopy_leave(s);
    return c;
}

static PyObject *
bio_zerocopy_io_send_and_wait(BioZeroCopyIo *s, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    static const char *const names[] = {"buf", "length", "addr", "timeout", NULL};
    PyObject *a[4];
    int64_t ns;
    if (bio_args_parse("send_and_wait", args, nargs, kwnames, names, 4, 1, a) < 0 ||
        bio_timeout_parse(a[3] ? a[3] : Py_None, &ns) < 0 || bio_zerocopy_enter(s) < 0)
        return NULL;
    int64_t deadline = ns < 0 ? -1 : bio_now_ns() + ns;
    BioZeroCopyCompletion *c =
        (BioZeroCopyCompletion *)bio_zerocopy_send_common(s, a[0], a[1], a[2]);
    PyObject *ret = NULL;
    if (c != NULL &&
        (c->done || bio_zerocopy_wait_until(s, bio_zerocopy_ready_done, c, deadline) >= 0))
        ret = bio_zerocopy_completion_outcome(c);
    bio_zerocopy_leave(s); /* (releases a sender closed meanwhile: c is then cancelled) */
    Py_XDECREF(c);
    return ret;
}

/* ---- sender: acquire, poll, close --------------------------------------- */

static PyObject *
bio_zerocopy_io_acquire(BioZeroCopyIo *s, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1];
    int64_t ns;
    if (bio_args_parse("acquire", args, nargs, kwnames, names, 1, 0, a) < 0 ||
        bio_timeout_parse(a[0] ? a[0] : Py_None, &ns) < 0 || bio_zerocopy_enter(s) < 0)
        return NULL;
    PyObject *ret = NULL;
    int r = 1;
    if (s->pool->nfree == 0 && bio_zerocopy_process(s) < 0)
        goto out;
    if (s->pool->nfree == 0 && s->inflight == 0) {
        PyErr_Format(PyExc_BufferError, "none of the pool's %u buffers is free or in flight "
                     "(acquired and not sent, or lost): send or drop one", s->pool->nbuf);
        goto out;
    }
    if (s->pool->nfree == 0)
        r = bio_zerocopy_wait_until(s, bio_zerocopy_ready_free, NULL,
                                    ns < 0 ? -1 : bio_now_ns() + ns);
    if (r == 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "no buffer came back from the kernel within %.3g s "
                 "(%u in flight)", (double)ns / 1e9, s->inflight);
        PyErr_SetString(PyExc_TimeoutError, msg);
    } else if (r > 0) {
        ret = bio_zerocopy_buffer_new(s->pool, bio_zerocopy_pool_take(s->pool));
    }
out:
    bio_zerocopy_leave(s);
    return ret;
}

static PyObject *
bio_zerocopy_io_poll(BioZeroCopyIo *s, PyObject *Py_UNUSED(ignored))
{
    if (bio_zerocopy_enter(s) < 0)
        return NULL;
    uint64_t before = s->returned;
    int r = bio_zerocopy_process(s);
    bio_zerocopy_leave(s);
    return r < 0 ? NULL : PyLong_FromUnsignedLongLong(s->returned - before);
}

/* Give up on what is still in flight; the Completions are cancelled. A
 * buffer the kernel may still read (a request on the io_uring, a notification
 * due) is LOST, never reused; one it never saw, or only copied from, goes
 * back to the pool. */
static void
bio_zerocopy_abandon(BioZeroCopyIo *s)
{
    for (uint32_t i = 0; s->slots != NULL && s->pool != NULL && i < s->pool->nbuf; i++) {
        BioZeroCopySlot *sl = &s->slots[i];
        if (!sl->busy)
            continue;
        sl->busy = 0;
        if (sl->submitted || sl->notifs > 0)
            s->pool->state[i] = BIO_ZEROCOPY_LOST;
        else
            bio_zerocopy_pool_put(s->pool, i);
        if (sl->completion != NULL) {
            bio_zerocopy_completion_fill((BioZeroCopyCompletion *)sl->completion, sl, 1);
            Py_CLEAR(sl->completion);
        }
    }
    s->inflight = s->zc_pending = s->q_len = 0;
}

/* Close the descriptors and let the pool go to another sender. */
static void
bio_zerocopy_release(BioZeroCopyIo *s)
{
    bio_zerocopy_abandon(s);
    if (s->uring_ok)
        io_uring_queue_exit(&s->uring);
    s->uring_ok = 0;
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

/* close(timeout=None): process what the kernel has released (always, also
 * with timeout 0: a send that completed is never reported cancelled), wait
 * up to timeout for the rest, then give it up and close. While a call is
 * under way (waiting in another thread, or below us: a signal handler, the
 * policy hook) it wakes that call instead, which ends at once with OSError
 * EBADF and releases the sender on its way out, giving up what is in
 * flight: close() then returns without waiting. */
static PyObject *
bio_zerocopy_io_close(BioZeroCopyIo *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1];
    int64_t ns;
    if (bio_args_parse("close", args, nargs, kwnames, names, 1, 0, a) < 0 ||
        bio_timeout_parse(a[0] ? a[0] : Py_None, &ns) < 0)
        return NULL;
    if (s->fd < 0)
        Py_RETURN_NONE;
    if (!bio_wake_same_process(&s->wake)) {
        /* a fork()ed child: let go of our copies without reading the
         * parent's completions (our buffers in flight stay out of our pool) */
        bio_wake_kick(&s->wake); /* (writes no eventfd of the parent's) */
        bio_zerocopy_release(s);
        Py_RETURN_NONE;
    }
    if (s->calls > 0 || bio_wake_closing(&s->wake)) {
        bio_wake_kick(&s->wake);
        Py_RETURN_NONE;
    }
    if (bio_zerocopy_enter(s) < 0)
        return NULL;
    int64_t deadline = ns < 0 ? -1 : bio_now_ns() + ns;
    int r = 0;
    if (s->backend == BIO_ZEROCOPY_BACKEND_URING && s->inflight > 0) {
        /* post what the kernel finished */
        BIO_COUNT(s->counters, BIO_ZEROCOPY_C_SYSCALLS, 1);
        s->busy = 1;
        r = bio_nogil_retry(bio_zerocopy_uring_get_events_nogil, &s->uring);
        s->busy = 0;
        r = r == -EINTR ? -1 : 0;
    }
    if (r == 0)
        r = bio_zerocopy_wait_until(s, bio_zerocopy_ready_idle, NULL, deadline);
    if (r == BIO_ZEROCOPY_CLOSED)
        PyErr_Clear(); /* another close() (a signal handler's) ended our wait: closing anyway */
    if (r >= 0 || r == BIO_ZEROCOPY_CLOSED)
        bio_wake_kick(&s->wake); /* the last call out (this one) releases */
    bio_zerocopy_leave(s);
    if (r == -1)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
bio_zerocopy_io_counters(BioZeroCopyIo *s, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(s->counters, bio_zerocopy_counter_names, BIO_ZEROCOPY_NCOUNTERS);
}

static PyObject *
bio_zerocopy_io_count(BioZeroCopyIo *s, PyObject *args)
{
    return bio_counters_count_py(s->counters, bio_zerocopy_counter_names, BIO_ZEROCOPY_NCOUNTERS,
                                 args);
}

static PyObject *
bio_zerocopy_io_reset_counters(BioZeroCopyIo *s, PyObject *Py_UNUSED(ignored))
{
    uint64_t disabled = s->counters[BIO_ZEROCOPY_C_DISABLED];
    memset(s->counters, 0, sizeof(s->counters));
    s->counters[BIO_ZEROCOPY_C_DISABLED] = disabled; /* a state, not an event count */
    Py_RETURN_NONE;
}

/* ---- sender: setup ----------------------------------------------------- */

/* Our own descriptor of the socket, and whether it is a stream. 0 or -errno. */
static int
bio_zerocopy_fd_setup(BioZeroCopyIo *s, int fd)
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
bio_zerocopy_new_args(PyObject *pool, int backend, PyObject *ctype)
{
    if (!PyObject_TypeCheck(pool, &BioZeroCopyPool_Type)) {
        PyErr_Format(PyExc_TypeError, "pool must be burstio.ZeroCopyPool, not %.100s",
                     Py_TYPE(pool)->tp_name);
        return -1;
    }
    if (((BioZeroCopyPool *)pool)->attached) {
        PyErr_SetString(PyExc_ValueError, "this ZeroCopyPool is used by another open "
                        "ZeroCopySender; give each sender its own pool");
        return -1;
    }
    if (backend < BIO_ZEROCOPY_BACKEND_COPY || backend > BIO_ZEROCOPY_BACKEND_URING) {
        PyErr_Format(PyExc_ValueError, "backend must be 0 (copy), 1 (msg) or 2 (uring), got %d",
                     backend);
        return -1;
    }
    if (!PyType_Check(ctype) ||
        !PyType_IsSubtype((PyTypeObject *)ctype, &BioZeroCopyCompletion_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "completion_type must be a subclass of ZeroCopyCompletion");
        return -1;
    }
    return 0;
}

/* The descriptors and tables of a new sender s. 0 or -errno. */
static int
bio_zerocopy_setup(BioZeroCopyIo *s, int fd)
{
    uint32_t n = s->pool->nbuf;
    s->slots = PyMem_Calloc(n, sizeof(BioZeroCopySlot));
    s->names = PyMem_Calloc(n, sizeof(struct sockaddr_in6));
    s->queue = PyMem_Calloc(n, sizeof(uint32_t));
    int r = s->slots && s->names && s->queue ? bio_zerocopy_fd_setup(s, fd) : -ENOMEM;
    if (r == 0 && s->backend == BIO_ZEROCOPY_BACKEND_URING)
        r = bio_zerocopy_uring_setup(s);
    if (r == 0 && (s->backend == BIO_ZEROCOPY_BACKEND_MSG ||
                   (s->backend == BIO_ZEROCOPY_BACKEND_COPY && s->stream)))
        r = bio_zerocopy_msg_setup(s);
    return r;
}

static PyObject *
bio_zerocopy_io_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "pool", "backend", "completion_type", "first_id", NULL};
    int fd, backend;
    unsigned int first_id = 0;
    PyObject *pool, *ctype;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOiO|I:ZeroCopyIo", kwlist, &fd, &pool, &backend,
                                     &ctype, &first_id) ||
        bio_zerocopy_new_args(pool, backend, ctype) < 0)
        return NULL;
    BioZeroCopyIo *s = (BioZeroCopyIo *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->fd = s->epfd = -1;
    s->wake.efd = -1;
    s->backend = backend;
    s->pool = (BioZeroCopyPool *)Py_NewRef(pool);
    s->completion_type = Py_NewRef(ctype);
    s->next_id = first_id;
    int r = bio_wake_init(&s->wake);
    if (r == 0)
        r = bio_zerocopy_setup(s, fd);
    if (r < 0) {
        bio_raise_errno(r);
        Py_DECREF(s);
        return NULL;
    }
    s->pool->attached = s->attached = 1;
    return (PyObject *)s;
}

static int
bio_zerocopy_io_traverse(BioZeroCopyIo *s, visitproc visit, void *arg)
{
    for (uint32_t i = 0; s->slots != NULL && i < s->pool->nbuf; i++)
        Py_VISIT(s->slots[i].completion);
    Py_VISIT(s->completion_type);
    Py_VISIT(s->policy);
    Py_VISIT(s->waiters);
    return 0;
}

static int
bio_zerocopy_io_clear(BioZeroCopyIo *s)
{
    for (uint32_t i = 0; s->slots != NULL && i < s->pool->nbuf; i++)
        Py_CLEAR(s->slots[i].completion);
    Py_CLEAR(s->policy);
    Py_CLEAR(s->waiters);
    return 0;
}

static void
bio_zerocopy_io_dealloc(BioZeroCopyIo *s)
{
    PyObject_GC_UnTrack(s);
    bio_zerocopy_release(s);
    bio_wake_fini(&s->wake);
    bio_zerocopy_io_clear(s);
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
bio_zerocopy_io_get_completion_fd(BioZeroCopyIo *s, void *c)
{
    if (s->fd < 0)
        return PyLong_FromLong(-1);
    return PyLong_FromLong(s->backend == BIO_ZEROCOPY_BACKEND_URING ? s->uring.ring_fd : s->epfd);
}

static PyMethodDef bio_zerocopy_io_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))bio_zerocopy_io_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire($self, /, timeout=None)\n--\n\n"
     "A free ZeroCopyBuffer, waiting up to timeout for one to come back."},
    {"send", (PyCFunction)(void (*)(void))bio_zerocopy_io_send, METH_FASTCALL | METH_KEYWORDS,
     "send($self, /, buf, length=None, addr=None)\n--\n\n"
     "Send buf; returns its Completion (never waits for the kernel)."},
    {"send_and_wait", (PyCFunction)(void (*)(void))bio_zerocopy_io_send_and_wait,
     METH_FASTCALL | METH_KEYWORDS,
     "send_and_wait($self, /, buf, length=None, addr=None, timeout=None)\n--\n\n"
     "Send buf and wait up to timeout until the kernel is done with it; returns\n"
     "the bytes sent."},
    {"poll", (PyCFunction)bio_zerocopy_io_poll, METH_NOARGS,
     "poll($self, /)\n--\n\n"
     "Process completions and move queued sends on, without waiting; returns\n"
     "the buffers returned to the pool."},
    {"close", (PyCFunction)(void (*)(void))bio_zerocopy_io_close, METH_FASTCALL | METH_KEYWORDS,
     "close($self, /, timeout=None)\n--\n\n"
     "Process completions, wait up to timeout for the rest, then close."},
    {"counters", (PyCFunction)bio_zerocopy_io_counters, METH_NOARGS,
     "counters($self, /)\n--\n\nA dict of every counter."},
    {"count", (PyCFunction)bio_zerocopy_io_count, METH_VARARGS,
     "count($self, name, n, /)\n--\n\nAdd n to a counter (for policy code in Python)."},
    {"reset_counters", (PyCFunction)bio_zerocopy_io_reset_counters, METH_NOARGS,
     "reset_counters($self, /)\n--\n\nSet the event counters to 0."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_zerocopy_io_members[] = {
    {"fd", T_INT, offsetof(BioZeroCopyIo, fd), READONLY,
     "our descriptor of the socket (-1: closed)"},
    {"backend", T_INT, offsetof(BioZeroCopyIo, backend), READONLY, "0 copy, 1 msg, 2 uring"},
    {"stream", T_INT, offsetof(BioZeroCopyIo, stream), READONLY, "1: a TCP socket"},
    {"broken", T_INT, offsetof(BioZeroCopyIo, broken), READONLY,
     "stream: errno of the send that failed, after which no send is made (0: none failed)"},
    {"queued", T_UINT, offsetof(BioZeroCopyIo, q_len), READONLY,
     "sends not resolved yet (the first may be part way), in send() order"},
    {"fixed_buffers", T_INT, offsetof(BioZeroCopyIo, fixed), READONLY,
     "1: the pool is registered with io_uring as fixed buffers"},
    {"fixed_errno", T_INT, offsetof(BioZeroCopyIo, fixed_errno), READONLY,
     "why registering fixed buffers failed (0: it did not)"},
    {"zerocopy", T_INT, offsetof(BioZeroCopyIo, zerocopy), 0, "policy: 0 sends by plain copy"},
    {"min_size", T_INT, offsetof(BioZeroCopyIo, min_size), 0,
     "policy: sends shorter than this go by plain copy"},
    {"switch_after", T_INT, offsetof(BioZeroCopyIo, switch_after), 0,
     "policy: call policy(streak) after this many copied notifications in a row (0: never)"},
    {"copied_streak", T_UINT, offsetof(BioZeroCopyIo, copied_streak), READONLY,
     "zero-copy sends the kernel copied, in a row"},
    {"inflight", T_UINT, offsetof(BioZeroCopyIo, inflight), READONLY, "buffers sent, not back"},
    {"next_id", T_UINT, offsetof(BioZeroCopyIo, next_id), READONLY,
     "MSG_ZEROCOPY id of the next zero-copy send on this socket"},
    {"policy", T_OBJECT, offsetof(BioZeroCopyIo, policy), 0, "policy(streak) hook"},
    {"waiters", T_OBJECT, offsetof(BioZeroCopyIo, waiters), 0, "asyncio helper (Python's)"},
    {NULL},
};

static PyGetSetDef bio_zerocopy_io_getset[] = {
    {"completion_fd", (getter)bio_zerocopy_io_get_completion_fd, NULL,
     "fd that polls readable when completions may be ready (-1: none needed)", NULL},
    {NULL},
};

static PyTypeObject BioZeroCopyIo_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.ZeroCopyIo",
    .tp_basicsize = sizeof(BioZeroCopyIo),
    .tp_dealloc = (destructor)bio_zerocopy_io_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "ZeroCopyIo(fd, pool, backend, completion_type, first_id=0)\n--\n\n"
              "Zero-copy sends (internal; see burstio.ZeroCopySender).",
    .tp_traverse = (traverseproc)bio_zerocopy_io_traverse,
    .tp_clear = (inquiry)bio_zerocopy_io_clear,
    .tp_methods = bio_zerocopy_io_methods,
    .tp_members = bio_zerocopy_io_members,
    .tp_getset = bio_zerocopy_io_getset,
    .tp_new = bio_zerocopy_io_new,
};

int
bio_zerocopy_init_types(PyObject *module)
{
    if (bio_zerocopy_pool_init_types(module) < 0 || PyType_Ready(&BioZeroCopyCompletion_Type) < 0 ||
        PyType_Ready(&BioZeroCopyIo_Type) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "ZeroCopyCompletion",
                              (PyObject *)&BioZeroCopyCompletion_Type) < 0 ||
        PyModule_AddObjectRef(module, "ZeroCopyIo", (PyObject *)&BioZeroCopyIo_Type) < 0)
        return -1;
    return 0;
}
