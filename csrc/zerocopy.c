/* Zero-copy send: a buffer pool whose buffers the kernel may still read
 * after send() returns, io_uring SEND_ZC, MSG_ZEROCOPY, and plain copies.
 *
 * A buffer's life: FREE in the pool -> acquire() -> OWNED (Python may
 * write it through the buffer protocol) -> send() -> IN_FLIGHT (no buffer
 * protocol: the kernel may still read it) -> the kernel's notification ->
 * FREE again, and the Python object that named it is spent (a generation
 * number tells). send() refuses a buffer with a live export (memoryview,
 * numpy array), so no Python code can write a buffer in flight.
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
 * Policy (which backend, thresholds, switching zero copy off when the kernel
 * keeps copying, wording) is burstio/zerocopy.py's. This file does the
 * syscalls and the bookkeeping; the GIL is dropped only in bio_nogil_retry.
 */
#include "burstio.h"

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

#define BIO_ZC_MAX_BUFFERS 16384          /* io_uring's fixed-buffer limit */
#define BIO_ZC_MAX_BUFFER_SIZE (1 << 30)  /* io_uring's per-buffer limit */
#define BIO_ZC_PAGE 4096
#define BIO_ZC_RANGES 64                  /* notification ranges per drain */

enum { BIO_ZC_FREE, BIO_ZC_OWNED, BIO_ZC_IN_FLIGHT, BIO_ZC_LOST };
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
    BioMemory *mem;     /* nbuf * stride bytes, mmap'd once */
    size_t buf_size;    /* bytes a buffer exposes */
    size_t stride;      /* buf_size rounded up to whole pages */
    uint32_t nbuf;
    uint32_t nfree;
    uint8_t *state;     /* BIO_ZC_FREE ... per buffer */
    uint32_t *gen;      /* bumped when a buffer returns: old objects are spent */
    uint32_t *free_stack;
    int attached;       /* an open sender uses the pool */
} BioZcPool;

typedef struct {
    PyObject_HEAD
    BioZcPool *pool;
    uint32_t index;
    uint32_t gen;       /* pool->gen[index] when acquired */
    Py_ssize_t exports; /* live buffer-protocol exports */
} BioZcBuffer;

typedef struct {
    PyObject_HEAD
    PyObject *sender;   /* the BioZcSender while pending; NULL once done */
    int64_t result;     /* bytes sent or -errno, once has_result */
    uint32_t index;     /* the buffer sent */
    uint32_t length;
    char done, has_result, copied, zerocopy, cancelled;
} BioZcCompletion;

typedef struct {
    PyObject *completion; /* the Completion to fill, or NULL */
    int32_t result;
    uint32_t zc_id;       /* MSG_ZEROCOPY id of this send */
    uint8_t busy;         /* sent on this sender, not yet back in the pool */
    uint8_t has_result;
    uint8_t want_notif;   /* a notification is still to come */
    uint8_t zerocopy;     /* sent with zero copy */
    uint8_t copied;       /* the kernel said it copied */
} BioZcSlot;

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
    uint32_t inflight;    /* slots busy */
    uint32_t zc_pending;  /* slots waiting for a notification */
    uint32_t pending_results; /* io_uring sends without their result CQE */
    uint64_t returned;    /* buffers given back to the pool, ever */
    /* io_uring */
    struct io_uring ring;
    int ring_ok;
    int fixed;            /* the pool is registered as fixed buffers */
    int fixed_errno;      /* why registration failed */
    /* MSG_ZEROCOPY */
    int epfd;             /* edge-triggered EPOLLERR on fd */
    uint32_t next_id;     /* id the kernel gives our next zero-copy send */
    uint32_t id_mask;     /* id_slot has id_mask + 1 entries */
    uint32_t *id_slot;    /* id & id_mask -> buffer index */
    uint64_t counters[BIO_ZC_NCOUNTERS];
    PyObject *completion_type; /* class of the Completions we make */
    PyObject *policy;     /* policy(streak): the kernel keeps copying */
    PyObject *waiters;    /* asyncio helper (Python's), or None */
} BioZcSender;

static PyTypeObject BioZcPool_Type, BioZcBuffer_Type, BioZcCompletion_Type, BioZcSender_Type;

#define BIO_ZC_COUNT(s, c, n) ((s)->counters[(c)] += (uint64_t)(n))

/* Raise OSError(err, "<strerror>: <what>") and return NULL. */
static PyObject *
bio_zc_oserror(int err, const char *what)
{
    PyObject *v = Py_BuildValue("(is)", err, what);
    if (v != NULL)
        PyErr_SetObject(PyExc_OSError, v);
    Py_XDECREF(v);
    return NULL;
}

/* ---- pool -------------------------------------------------------------- */

/* Take a FREE buffer (the caller checked nfree > 0); it becomes OWNED. */
static uint32_t
bio_zcpool_take(BioZcPool *p)
{
    uint32_t i = p->free_stack[--p->nfree];
    p->state[i] = BIO_ZC_OWNED;
    return i;
}

/* Give buffer i back: FREE, and every object naming it is spent. */
static void
bio_zcpool_put(BioZcPool *p, uint32_t i)
{
    p->state[i] = BIO_ZC_FREE;
    p->gen[i]++;
    p->free_stack[p->nfree++] = i;
}

static unsigned char *
bio_zcpool_ptr(BioZcPool *p, uint32_t i)
{
    return p->mem->ptr + (size_t)i * p->stride;
}

/* Allocate the per-buffer arrays; 0 or -1 with MemoryError. */
static int
bio_zcpool_alloc(BioZcPool *p)
{
    p->state = PyMem_Calloc(p->nbuf, 1);
    p->gen = PyMem_Calloc(p->nbuf, sizeof(uint32_t));
    p->free_stack = PyMem_Calloc(p->nbuf, sizeof(uint32_t));
    if (p->state == NULL || p->gen == NULL || p->free_stack == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t i = 0; i < p->nbuf; i++) /* buffer 0 is taken first */
        p->free_stack[i] = p->nbuf - 1 - i;
    p->nfree = p->nbuf;
    return 0;
}

static PyObject *
bio_zcpool_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffers", "buffer_size", NULL};
    Py_ssize_t n = 64, size = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nn:ZeroCopyPool", kwlist, &n, &size))
        return NULL;
    if (n < 1 || n > BIO_ZC_MAX_BUFFERS) {
        PyErr_Format(PyExc_ValueError, "buffers must be between 1 and %d, got %zd",
                     BIO_ZC_MAX_BUFFERS, n);
        return NULL;
    }
    if (size < 1 || size > BIO_ZC_MAX_BUFFER_SIZE) {
        PyErr_Format(PyExc_ValueError, "buffer_size must be between 1 and %d, got %zd",
                     BIO_ZC_MAX_BUFFER_SIZE, size);
        return NULL;
    }
    BioZcPool *p = (BioZcPool *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    p->nbuf = (uint32_t)n;
    p->buf_size = (size_t)size;
    p->stride = ((size_t)size + BIO_ZC_PAGE - 1) & ~(size_t)(BIO_ZC_PAGE - 1);
    if (bio_zcpool_alloc(p) < 0 || (p->mem = bio_memory_new(p->stride * p->nbuf)) == NULL) {
        Py_DECREF(p);
        return NULL;
    }
    return (PyObject *)p;
}

static void
bio_zcpool_dealloc(BioZcPool *p)
{
    Py_XDECREF(p->mem); /* the kernel holds its own page references */
    PyMem_Free(p->state);
    PyMem_Free(p->gen);
    PyMem_Free(p->free_stack);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static Py_ssize_t
bio_zcpool_count(BioZcPool *p, int state)
{
    Py_ssize_t n = 0;
    for (uint32_t i = 0; i < p->nbuf; i++)
        n += p->state[i] == state;
    return n;
}

static PyObject *
bio_zcpool_get_count(BioZcPool *p, void *state)
{
    return PyLong_FromSsize_t(bio_zcpool_count(p, (int)(intptr_t)state));
}

static PyObject *
bio_zcpool_get_buffers(BioZcPool *p, void *c)
{
    return PyLong_FromUnsignedLong(p->nbuf);
}

static PyObject *
bio_zcpool_get_buffer_size(BioZcPool *p, void *c)
{
    return PyLong_FromSize_t(p->buf_size);
}

static PyObject *
bio_zcpool_get_in_use(BioZcPool *p, void *c)
{
    return PyBool_FromLong(p->attached);
}

static PyObject *
bio_zcpool_repr(BioZcPool *p)
{
    return PyUnicode_FromFormat("<ZeroCopyPool %u x %zu bytes: %zd free, %zd owned, %zd in flight>",
                                p->nbuf, p->buf_size, bio_zcpool_count(p, BIO_ZC_FREE),
                                bio_zcpool_count(p, BIO_ZC_OWNED),
                                bio_zcpool_count(p, BIO_ZC_IN_FLIGHT) +
                                    bio_zcpool_count(p, BIO_ZC_LOST));
}

static PyGetSetDef bio_zcpool_getset[] = {
    {"buffers", (getter)bio_zcpool_get_buffers, NULL, "number of buffers", NULL},
    {"buffer_size", (getter)bio_zcpool_get_buffer_size, NULL, "bytes per buffer", NULL},
    {"free", (getter)bio_zcpool_get_count, NULL, "buffers in the pool, ready to acquire()",
     (void *)(intptr_t)BIO_ZC_FREE},
    {"owned", (getter)bio_zcpool_get_count, NULL, "buffers acquired and not yet sent",
     (void *)(intptr_t)BIO_ZC_OWNED},
    {"in_flight", (getter)bio_zcpool_get_count, NULL,
     "buffers sent whose notification has not come yet", (void *)(intptr_t)BIO_ZC_IN_FLIGHT},
    {"lost", (getter)bio_zcpool_get_count, NULL,
     "buffers still in flight when their sender closed: never reused",
     (void *)(intptr_t)BIO_ZC_LOST},
    {"in_use", (getter)bio_zcpool_get_in_use, NULL, "an open ZeroCopySender uses the pool", NULL},
    {NULL},
};

static PyTypeObject BioZcPool_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio.ZeroCopyPool",
    .tp_basicsize = sizeof(BioZcPool),
    .tp_dealloc = (destructor)bio_zcpool_dealloc,
    .tp_repr = (reprfunc)bio_zcpool_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ZeroCopyPool(buffers=64, buffer_size=65536)\n\n"
              "Buffers for zero-copy sends, cut from one mmap'd region (each starts on a\n"
              "page). A ZeroCopySender registers them with the kernel and hands them out\n"
              "with acquire(); one open sender uses a pool at a time.",
    .tp_getset = bio_zcpool_getset,
    .tp_new = bio_zcpool_new,
};

/* ---- buffer ------------------------------------------------------------ */

/* 0 if b's acquire is current and the buffer is OWNED (writable, sendable);
 * else -1 with BufferError saying why. */
static int
bio_zcbuf_check(BioZcBuffer *b)
{
    BioZcPool *p = b->pool;
    if (p->gen[b->index] != b->gen) {
        PyErr_Format(PyExc_BufferError,
                     "buffer %u was returned to the pool; acquire() another", b->index);
        return -1;
    }
    if (p->state[b->index] != BIO_ZC_OWNED) {
        PyErr_Format(PyExc_BufferError,
                     "buffer %u is in flight: the kernel may still read it; "
                     "wait for its completion", b->index);
        return -1;
    }
    return 0;
}

static PyObject *
bio_zcbuf_new(BioZcPool *p, uint32_t index)
{
    BioZcBuffer *b = PyObject_New(BioZcBuffer, &BioZcBuffer_Type);
    if (b == NULL)
        return NULL;
    b->pool = (BioZcPool *)Py_NewRef((PyObject *)p);
    b->index = index;
    b->gen = p->gen[index];
    b->exports = 0;
    return (PyObject *)b;
}

/* An OWNED buffer dropped without being sent goes back to the pool. */
static void
bio_zcbuf_dealloc(BioZcBuffer *b)
{
    BioZcPool *p = b->pool;
    if (p->gen[b->index] == b->gen && p->state[b->index] == BIO_ZC_OWNED)
        bio_zcpool_put(p, b->index);
    Py_DECREF(p);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static int
bio_zcbuf_getbuffer(BioZcBuffer *b, Py_buffer *view, int flags)
{
    if (bio_zcbuf_check(b) < 0) {
        view->obj = NULL;
        return -1;
    }
    unsigned char *ptr = bio_zcpool_ptr(b->pool, b->index);
    if (PyBuffer_FillInfo(view, (PyObject *)b, ptr, (Py_ssize_t)b->pool->buf_size, 0, flags) < 0)
        return -1;
    b->exports++;
    return 0;
}

static void
bio_zcbuf_releasebuffer(BioZcBuffer *b, Py_buffer *view)
{
    b->exports--;
}

static PyBufferProcs bio_zcbuf_as_buffer = {(getbufferproc)bio_zcbuf_getbuffer,
                                            (releasebufferproc)bio_zcbuf_releasebuffer};

/* write(data, offset=0) -> end offset: copy data into the buffer. */
static PyObject *
bio_zcbuf_write(BioZcBuffer *b, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "offset", NULL};
    PyObject *data;
    Py_ssize_t off = 0;
    Py_buffer pb;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|n:write", kwlist, &data, &off) ||
        bio_zcbuf_check(b) < 0 || bio_get_contiguous(data, &pb) < 0)
        return NULL;
    size_t size = b->pool->buf_size;
    if (off < 0 || (size_t)off > size || (size_t)pb.len > size - (size_t)off) {
        PyErr_Format(PyExc_ValueError, "%zd bytes at offset %zd do not fit the buffer's %zu bytes",
                     pb.len, off, size);
        PyBuffer_Release(&pb);
        return NULL;
    }
    memmove(bio_zcpool_ptr(b->pool, b->index) + off, pb.buf, (size_t)pb.len);
    Py_ssize_t end = off + pb.len;
    PyBuffer_Release(&pb);
    return PyLong_FromSsize_t(end);
}

static const char *
bio_zcbuf_state_name(BioZcBuffer *b)
{
    BioZcPool *p = b->pool;
    if (p->gen[b->index] != b->gen)
        return "returned";
    return p->state[b->index] == BIO_ZC_OWNED ? "owned" : "in_flight";
}

static PyObject *
bio_zcbuf_get_state(BioZcBuffer *b, void *c)
{
    return PyUnicode_FromString(bio_zcbuf_state_name(b));
}

static PyObject *
bio_zcbuf_get_size(BioZcBuffer *b, void *c)
{
    return PyLong_FromSize_t(b->pool->buf_size);
}

static PyObject *
bio_zcbuf_repr(BioZcBuffer *b)
{
    return PyUnicode_FromFormat("<ZeroCopyBuffer %u of %zu bytes, %s, %zd views open>", b->index,
                                b->pool->buf_size, bio_zcbuf_state_name(b), b->exports);
}

static PyMethodDef bio_zcbuf_methods[] = {
    {"write", (PyCFunction)(void (*)(void))bio_zcbuf_write, METH_VARARGS | METH_KEYWORDS,
     "write(data, offset=0) -> int\n\nCopy data into the buffer at offset; return the offset\n"
     "just past it (the length to send when offset is 0). BufferError once sent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef bio_zcbuf_getset[] = {
    {"state", (getter)bio_zcbuf_get_state, NULL,
     "'owned' (writable), 'in_flight' (the kernel may read it) or 'returned' (spent)", NULL},
    {"size", (getter)bio_zcbuf_get_size, NULL, "bytes in the buffer", NULL},
    {NULL},
};

static PyMemberDef bio_zcbuf_members[] = {
    {"index", T_UINT, offsetof(BioZcBuffer, index), READONLY, "buffer number in its pool"},
    {"views", T_PYSSIZET, offsetof(BioZcBuffer, exports), READONLY,
     "buffer-protocol exports (memoryviews, arrays) still open"},
    {"pool", T_OBJECT, offsetof(BioZcBuffer, pool), READONLY, "the ZeroCopyPool"},
    {NULL},
};

static PyTypeObject BioZcBuffer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio.ZeroCopyBuffer",
    .tp_basicsize = sizeof(BioZcBuffer),
    .tp_dealloc = (destructor)bio_zcbuf_dealloc,
    .tp_repr = (reprfunc)bio_zcbuf_repr,
    .tp_as_buffer = &bio_zcbuf_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One buffer of a ZeroCopyPool, from ZeroCopySender.acquire().\n\n"
              "Writable through the buffer protocol (memoryview, numpy) or write() until\n"
              "it is sent; then it is in flight and refuses every access; when the kernel\n"
              "is done it returns to the pool and this object is spent. send() refuses it\n"
              "while a memoryview of it is open.",
    .tp_methods = bio_zcbuf_methods,
    .tp_getset = bio_zcbuf_getset,
    .tp_members = bio_zcbuf_members,
};

/* ---- completion -------------------------------------------------------- */

/* Record the outcome of slot sl in c; c no longer needs its sender. */
static void
bio_zcc_fill(BioZcCompletion *c, const BioZcSlot *sl, int cancelled)
{
    c->has_result = sl->has_result;
    c->result = sl->result;
    c->copied = sl->copied;
    c->cancelled = (char)cancelled;
    c->done = 1;
    Py_CLEAR(c->sender);
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
    if (c->has_result && c->result < 0)
        return bio_raise_errno((int)c->result);
    if (c->cancelled)
        return bio_zc_oserror(ECANCELED, "the ZeroCopySender was closed before the kernel "
                              "released the buffer (it stays out of the pool)");
    if (c->result < 0)
        return bio_raise_errno((int)c->result);
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
    if (c->cancelled && !c->has_result)
        return PyUnicode_FromFormat("<Completion buffer %u: cancelled>", c->index);
    if (c->result < 0)
        return PyUnicode_FromFormat("<Completion buffer %u%s: failed, %s>", c->index, how,
                                    strerror((int)-c->result));
    return PyUnicode_FromFormat("<Completion buffer %u%s: %lld bytes sent>", c->index, how,
                                (long long)c->result);
}

static PyGetSetDef bio_zcc_getset[] = {
    {"result", (getter)bio_zcc_get_result, NULL,
     "bytes sent (>= 0) or -errno once the kernel said; None before", NULL},
    {NULL},
};

static PyMemberDef bio_zcc_members[] = {
    {"copied", T_BOOL, offsetof(BioZcCompletion, copied), READONLY,
     "the kernel reported that it copied the data after all"},
    {"zerocopy", T_BOOL, offsetof(BioZcCompletion, zerocopy), READONLY,
     "sent with zero copy (False: a plain copy)"},
    {"cancelled", T_BOOL, offsetof(BioZcCompletion, cancelled), READONLY,
     "the sender closed before the kernel's notification came"},
    {"buffer_index", T_UINT, offsetof(BioZcCompletion, index), READONLY, "the buffer sent"},
    {"length", T_UINT, offsetof(BioZcCompletion, length), READONLY, "bytes asked to send"},
    {"sender", T_OBJECT, offsetof(BioZcCompletion, sender), READONLY,
     "the native sender while pending (internal), else None"},
    {NULL},
};

/* ---- sender: completions ------------------------------------------------ */

/* The kernel is done with slot idx: count, give the buffer back, fill the
 * Completion. GIL held. */
static void
bio_zc_finish(BioZcSender *s, uint32_t idx)
{
    BioZcSlot *sl = &s->slots[idx];
    if (sl->result <= 0) /* nothing sent: nothing copied (io_uring flags it anyway) */
        sl->copied = 0;
    if (sl->zerocopy && sl->result > 0) {
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

/* The send in slot idx has its result (bytes or -errno). */
static void
bio_zc_set_result(BioZcSender *s, uint32_t idx, int32_t res)
{
    BioZcSlot *sl = &s->slots[idx];
    sl->result = res;
    sl->has_result = 1;
    if (res >= 0)
        BIO_ZC_COUNT(s, BIO_ZC_BYTES, res);
    else
        BIO_ZC_COUNT(s, BIO_ZC_ERRORS, 1);
}

/* No notification will come (any more) for slot idx. */
static void
bio_zc_notified(BioZcSender *s, uint32_t idx, int copied)
{
    BioZcSlot *sl = &s->slots[idx];
    sl->copied |= (uint8_t)(copied != 0);
    sl->want_notif = 0;
    s->zc_pending--;
}

/* Apply one io_uring CQE (user_data = buffer index). */
static void
bio_zc_uring_cqe(BioZcSender *s, const struct io_uring_cqe *cqe)
{
    uint32_t idx = (uint32_t)cqe->user_data;
    if (idx >= s->pool->nbuf || !s->slots[idx].busy) {
        BIO_ZC_COUNT(s, BIO_ZC_UNMATCHED, 1);
        return;
    }
    BioZcSlot *sl = &s->slots[idx];
    if (cqe->flags & IORING_CQE_F_NOTIF) {
        if (sl->want_notif)
            bio_zc_notified(s, idx, ((uint32_t)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED) != 0);
    } else if (!sl->has_result) {
        bio_zc_set_result(s, idx, cqe->res);
        s->pending_results--;
        if (!(cqe->flags & IORING_CQE_F_MORE) && sl->want_notif)
            bio_zc_notified(s, idx, 0);
    }
    if (sl->has_result && !sl->want_notif)
        bio_zc_finish(s, idx);
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

typedef struct {
    uint32_t lo, hi;
    uint8_t copied;
} BioZcRange;

typedef struct {
    int fd, epfd;
    int n;             /* ranges found */
    int full;          /* ranges[] filled up: drain again */
    uint64_t syscalls, other;
    BioZcRange r[BIO_ZC_RANGES];
} BioZcErrq;

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

/* Consume the epoll edge, then read the error queue until it is empty or
 * r[] is full. 0 or -errno. nogil; never blocks. */
static int
bio_zc_errq_drain_nogil(void *arg)
{
    BioZcErrq *q = arg;
    if (q->epfd >= 0) {
        struct epoll_event ev;
        epoll_wait(q->epfd, &ev, 1, 0); /* re-arms the edge for what comes next */
        q->epfd = -1;
        q->syscalls++;
    }
    while (q->n < BIO_ZC_RANGES) {
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
    q->full = 1;
    return 0;
}

/* A range wider than the id table (not all ours): look at every slot. */
static void
bio_zc_msg_wide_range(BioZcSender *s, const BioZcRange *r)
{
    for (uint32_t idx = 0; idx < s->pool->nbuf; idx++) {
        BioZcSlot *sl = &s->slots[idx];
        if (!sl->busy || !sl->want_notif || sl->zc_id - r->lo > r->hi - r->lo)
            continue;
        s->id_slot[sl->zc_id & s->id_mask] = UINT32_MAX;
        bio_zc_notified(s, idx, r->copied);
        if (sl->has_result)
            bio_zc_finish(s, idx);
    }
}

/* Apply notification range [lo, hi] of MSG_ZEROCOPY ids (wrapping). */
static void
bio_zc_msg_range(BioZcSender *s, const BioZcRange *r)
{
    uint32_t span = r->hi - r->lo;
    if (span > s->id_mask) {
        bio_zc_msg_wide_range(s, r);
        return;
    }
    for (uint32_t k = 0; k <= span; k++) {
        uint32_t id = r->lo + k;
        uint32_t idx = s->id_slot[id & s->id_mask];
        BioZcSlot *sl = idx < s->pool->nbuf ? &s->slots[idx] : NULL;
        if (sl == NULL || !sl->busy || !sl->want_notif || sl->zc_id != id) {
            BIO_ZC_COUNT(s, BIO_ZC_UNMATCHED, 1);
            continue;
        }
        s->id_slot[id & s->id_mask] = UINT32_MAX;
        bio_zc_notified(s, idx, r->copied);
        if (sl->has_result)
            bio_zc_finish(s, idx);
    }
}

/* Read the error queue and apply what it says. 0 or -1 with OSError. */
static int
bio_zc_msg_reap(BioZcSender *s)
{
    BioZcErrq q;
    int epfd = s->epfd;
    do {
        q.fd = s->fd;
        q.epfd = epfd;
        q.n = q.full = 0;
        q.syscalls = q.other = 0;
        s->busy = 1;
        int r = bio_nogil_retry(bio_zc_errq_drain_nogil, &q);
        s->busy = 0;
        BIO_ZC_COUNT(s, BIO_ZC_SYSCALLS, q.syscalls);
        BIO_ZC_COUNT(s, BIO_ZC_OTHER_ERRQUEUE, q.other);
        for (int i = 0; i < q.n; i++)
            bio_zc_msg_range(s, &q.r[i]);
        if (r < 0) {
            if (r != -EINTR)
                bio_raise_errno(r);
            return -1;
        }
        epfd = -1;
    } while (q.full);
    return 0;
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

/* Process every completion available now, without waiting. GIL held.
 * 0, or -1 with an exception set. */
static int
bio_zc_process(BioZcSender *s)
{
    if (s->backend == BIO_ZC_URING && s->ring_ok)
        bio_zc_uring_reap(s);
    else if (s->backend == BIO_ZC_MSG && s->zc_pending > 0 && bio_zc_msg_reap(s) < 0)
        return -1;
    return s->switch_pending ? bio_zc_run_policy(s) : 0;
}

typedef struct {
    BioZcSender *s;
    int64_t deadline;
    uint64_t syscalls;
} BioZcWaitCtx;

/* Sleep until a completion may be ready or the deadline (-1: none).
 * 1 woken, 0 deadline passed, -errno. nogil. */
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
    int ms = left < 0 ? -1 : (int)((left + 999999) / 1000000 > 0x7fffffff ? 0x7fffffff
                                                                         : (left + 999999) / 1000000);
    int r = epoll_wait(w->s->epfd, &ev, 1, ms);
    return r < 0 ? -errno : (r > 0);
}

/* Process completions until ready(s, arg) holds or the deadline passes
 * (-1: never). 1 ready, 0 timed out (or nothing in flight to wait for),
 * -1 with an exception set. GIL held. */
static int
bio_zc_wait_until(BioZcSender *s, int (*ready)(BioZcSender *, void *), void *arg,
                  int64_t deadline)
{
    for (;;) {
        if (bio_zc_process(s) < 0)
            return -1;
        if (ready(s, arg))
            return 1;
        if (s->inflight == 0 || s->backend == BIO_ZC_COPY || s->fd < 0)
            return 0;
        if (deadline >= 0 && bio_now_ns() >= deadline)
            return 0;
        BioZcWaitCtx w = {.s = s, .deadline = deadline};
        s->busy = 1;
        int r = bio_nogil_retry(bio_zc_wait_nogil, &w);
        s->busy = 0;
        BIO_ZC_COUNT(s, BIO_ZC_SYSCALLS, w.syscalls);
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
bio_zc_ready_ordered(BioZcSender *s, void *x)
{
    return s->pending_results == 0;
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
        bio_zc_oserror(EBADF, "the ZeroCopySender is closed");
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
     "bytes sent. OSError with the kernel's errno if the send failed; TimeoutError\n"
     "if it is still in flight after timeout seconds."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BioZcCompletion_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.ZcCompletion",
    .tp_basicsize = sizeof(BioZcCompletion),
    .tp_dealloc = (destructor)bio_zcc_dealloc,
    .tp_repr = (reprfunc)bio_zcc_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The outcome of one zero-copy send (base of burstio.zerocopy.Completion).",
    .tp_traverse = (traverseproc)bio_zcc_traverse,
    .tp_clear = (inquiry)bio_zcc_clear,
    .tp_methods = bio_zcc_methods,
    .tp_members = bio_zcc_members,
    .tp_getset = bio_zcc_getset,
};

/* ---- sender: issuing sends --------------------------------------------- */

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

static int
bio_zc_submit_nogil(void *arg)
{
    return io_uring_submit((struct io_uring *)arg);
}

/* Undo the bookkeeping of a send that never reached the kernel. */
static void
bio_zc_unsend(BioZcSender *s, uint32_t idx)
{
    BioZcSlot *sl = &s->slots[idx];
    sl->busy = 0;
    s->inflight--;
    s->pool->state[idx] = BIO_ZC_OWNED;
    Py_CLEAR(sl->completion);
}

/* One sendmsg of slot idx without the GIL. Bytes sent or -errno. */
static int
bio_zc_sendmsg(BioZcSender *s, uint32_t idx, uint32_t len, int flags)
{
    BioZcSendCtx c = {.fd = s->fd, .buf = bio_zcpool_ptr(s->pool, idx), .len = len,
                      .name = &s->names[idx], .flags = flags | (s->stream ? MSG_NOSIGNAL : 0)};
    BIO_ZC_COUNT(s, BIO_ZC_SYSCALLS, 1);
    s->busy = 1;
    int r = bio_nogil_retry(bio_zc_sendmsg_nogil, &c);
    s->busy = 0;
    return r;
}

/* Send slot idx with sendmsg, MSG_ZEROCOPY when zc (a zero-copy send then
 * waits for its notification; if the kernel has no memory for one, ENOBUFS,
 * the data goes by plain copy). 0, or -1 when a signal handler raised:
 * nothing was sent and the buffer is OWNED again. */
static int
bio_zc_issue_sync(BioZcSender *s, uint32_t idx, uint32_t len, int zc)
{
    int r = zc ? bio_zc_sendmsg(s, idx, len, MSG_ZEROCOPY) : 0;
    if (zc && r == -ENOBUFS) {
        BIO_ZC_COUNT(s, BIO_ZC_ENOBUFS, 1);
        zc = 0;
    }
    if (!zc && !(r == -EINTR && PyErr_Occurred()))
        r = bio_zc_sendmsg(s, idx, len, 0);
    if (r == -EINTR && PyErr_Occurred()) {
        bio_zc_unsend(s, idx);
        return -1;
    }
    BioZcSlot *sl = &s->slots[idx];
    BIO_ZC_COUNT(s, zc ? BIO_ZC_ZEROCOPY_SENDS : BIO_ZC_COPY_SENDS, 1);
    sl->zerocopy = (uint8_t)(zc && r >= 0);
    bio_zc_set_result(s, idx, r);
    if (!sl->zerocopy) {
        bio_zc_finish(s, idx);
        return 0;
    }
    sl->zc_id = s->next_id++; /* the kernel numbers each accepted zero-copy send */
    sl->want_notif = 1;
    s->zc_pending++;
    s->id_slot[sl->zc_id & s->id_mask] = idx;
    return 0;
}

/* Queue slot idx as an io_uring SEND_ZC and submit it. 0, or -1 with
 * OSError (the request stays queued; its CQEs will free the buffer). */
static int
bio_zc_issue_uring(BioZcSender *s, uint32_t idx, uint32_t len)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    if (sqe == NULL) { /* cannot happen: one SQE per buffer fits */
        bio_zc_unsend(s, idx);
        bio_raise_errno(-EBUSY);
        return -1;
    }
    int flags = MSG_NOSIGNAL | (s->stream ? MSG_WAITALL : 0);
    void *ptr = bio_zcpool_ptr(s->pool, idx);
    if (s->fixed)
        io_uring_prep_send_zc_fixed(sqe, s->fd, ptr, len, flags, IORING_SEND_ZC_REPORT_USAGE, idx);
    else
        io_uring_prep_send_zc(sqe, s->fd, ptr, len, flags, IORING_SEND_ZC_REPORT_USAGE);
    socklen_t namelen = bio_addr_len(&s->names[idx]);
    if (namelen)
        io_uring_prep_send_set_addr(sqe, (const struct sockaddr *)&s->names[idx], namelen);
    io_uring_sqe_set_data64(sqe, idx);
    BioZcSlot *sl = &s->slots[idx];
    sl->zerocopy = 1;
    sl->want_notif = 1;
    s->zc_pending++;
    s->pending_results++;
    BIO_ZC_COUNT(s, BIO_ZC_ZEROCOPY_SENDS, 1);
    BIO_ZC_COUNT(s, BIO_ZC_SYSCALLS, 1);
    s->busy = 1;
    int r = bio_nogil_retry(bio_zc_submit_nogil, &s->ring);
    s->busy = 0;
    if (r < 0 && r != -EINTR)
        bio_raise_errno(r);
    return r < 0 ? -1 : 0;
}

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

/* Send buffer bufobj; returns its Completion (new reference) or NULL. */
static PyObject *
bio_zc_send_common(BioZcSender *s, PyObject *bufobj, PyObject *lenobj, PyObject *addr)
{
    BioZcBuffer *b;
    uint32_t len;
    if (bio_zc_check_usable(s) < 0)
        return NULL;
    /* an io_uring send still without its result must not be overtaken */
    if (s->pending_results && bio_zc_wait_until(s, bio_zc_ready_ordered, NULL, -1) < 0)
        return NULL;
    if (bio_zc_send_args(s, bufobj, lenobj, &b, &len) < 0 || bio_zc_send_addr(s, b->index, addr) < 0)
        return NULL;
    uint32_t idx = b->index;
    BioZcCompletion *c = bio_zc_completion_new(s, idx, len);
    if (c == NULL)
        return NULL;
    int zc = s->zerocopy && s->backend != BIO_ZC_COPY && len > 0 && len >= (uint32_t)s->min_size;
    BioZcSlot *sl = &s->slots[idx];
    memset(sl, 0, sizeof(*sl));
    sl->busy = 1;
    sl->completion = Py_NewRef((PyObject *)c);
    c->zerocopy = (char)zc;
    s->pool->state[idx] = BIO_ZC_IN_FLIGHT;
    s->inflight++;
    BIO_ZC_COUNT(s, BIO_ZC_SENDS, 1);
    int r = zc && s->backend == BIO_ZC_URING ? bio_zc_issue_uring(s, idx, len)
                                              : bio_zc_issue_sync(s, idx, len, zc);
    c->zerocopy = (char)sl->zerocopy;
    if (r < 0) {
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

/* Give up on what is still in flight: those buffers are LOST (never reused:
 * the kernel may still read them) and their Completions cancelled. */
static void
bio_zc_abandon(BioZcSender *s)
{
    for (uint32_t i = 0; s->slots != NULL && s->pool != NULL && i < s->pool->nbuf; i++) {
        BioZcSlot *sl = &s->slots[i];
        if (!sl->busy)
            continue;
        sl->busy = 0;
        s->pool->state[i] = BIO_ZC_LOST;
        if (sl->completion != NULL) {
            bio_zcc_fill((BioZcCompletion *)sl->completion, sl, 1);
            Py_CLEAR(sl->completion);
        }
    }
    s->inflight = s->zc_pending = s->pending_results = 0;
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
    if (ns != 0 && bio_zc_wait_until(s, bio_zc_ready_idle, NULL, ns < 0 ? -1 : bio_now_ns() + ns) < 0)
        return NULL;
    bio_zc_release(s);
    Py_RETURN_NONE;
}

static PyObject *
bio_zcs_counters(BioZcSender *s, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i < BIO_ZC_NCOUNTERS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(s->counters[i]);
        if (v == NULL || PyDict_SetItemString(d, bio_zc_counter_names[i], v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

static PyObject *
bio_zcs_count(BioZcSender *s, PyObject *args)
{
    const char *name;
    unsigned long long n;
    if (!PyArg_ParseTuple(args, "sK:count", &name, &n))
        return NULL;
    for (int i = 0; i < BIO_ZC_NCOUNTERS; i++) {
        if (strcmp(name, bio_zc_counter_names[i]) == 0) {
            BIO_ZC_COUNT(s, i, n);
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_KeyError, "no counter named %s", name);
    return NULL;
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

/* io_uring with one SQE per buffer (so the SQ never fills, nor the CQ:
 * at most two CQEs per buffer), the pool registered as fixed buffers where
 * the kernel lets us. 0 or -errno. */
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

/* MSG_ZEROCOPY: an epoll set telling (edge-triggered) when the socket's
 * error queue gets something, and the id -> buffer table. 0 or -errno. */
static int
bio_zc_msg_setup(BioZcSender *s)
{
    uint32_t n = 8;
    while (n < 2 * s->pool->nbuf)
        n <<= 1;
    s->id_slot = PyMem_Malloc(n * sizeof(uint32_t));
    if (s->id_slot == NULL)
        return -ENOMEM;
    memset(s->id_slot, 0xff, n * sizeof(uint32_t));
    s->id_mask = n - 1;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0)
        return -errno;
    struct epoll_event ev = {.events = EPOLLERR | EPOLLET, .data.fd = s->fd};
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

/* Check ZcSender()'s arguments; 0 or -1 with TypeError/ValueError. */
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
        PyErr_SetString(PyExc_TypeError, "completion_type must be a subclass of ZcCompletion");
        return -1;
    }
    return 0;
}

static PyObject *
bio_zcs_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "pool", "backend", "completion_type", "first_id", NULL};
    int fd, backend;
    unsigned int first_id = 0;
    PyObject *pool, *ctype;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOiO|I:ZcSender", kwlist, &fd, &pool, &backend,
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
    s->slots = PyMem_Calloc(s->pool->nbuf, sizeof(BioZcSlot));
    s->names = PyMem_Calloc(s->pool->nbuf, sizeof(struct sockaddr_in6));
    int r = s->slots && s->names ? bio_zc_fd_setup(s, fd) : -ENOMEM;
    if (r == 0 && backend == BIO_ZC_URING)
        r = bio_zc_uring_setup(s);
    if (r == 0 && backend == BIO_ZC_MSG)
        r = bio_zc_msg_setup(s);
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
    PyMem_Free(s->id_slot);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *
bio_zcs_get_completion_fd(BioZcSender *s, void *c)
{
    if (s->fd < 0 || s->backend == BIO_ZC_COPY)
        return PyLong_FromLong(-1);
    return PyLong_FromLong(s->backend == BIO_ZC_URING ? s->ring.ring_fd : s->epfd);
}

static PyMethodDef bio_zcs_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))bio_zcs_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(timeout=None) -> ZeroCopyBuffer: a free buffer, waiting for one to come back"},
    {"send", (PyCFunction)(void (*)(void))bio_zcs_send, METH_FASTCALL | METH_KEYWORDS,
     "send(buf, length=None, addr=None) -> Completion"},
    {"send_and_wait", (PyCFunction)(void (*)(void))bio_zcs_send_and_wait,
     METH_FASTCALL | METH_KEYWORDS,
     "send_and_wait(buf, length=None, addr=None, timeout=None) -> int: bytes sent"},
    {"poll", (PyCFunction)bio_zcs_poll, METH_NOARGS,
     "poll() -> int: process completions without waiting; buffers returned to the pool"},
    {"close", (PyCFunction)(void (*)(void))bio_zcs_close, METH_FASTCALL | METH_KEYWORDS,
     "close(timeout=None): wait up to timeout for buffers in flight, then close"},
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
    .tp_name = "burstio._native.ZcSender",
    .tp_basicsize = sizeof(BioZcSender),
    .tp_dealloc = (destructor)bio_zcs_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "ZcSender(fd, pool, backend, completion_type, first_id=0): zero-copy sends "
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
    if (PyType_Ready(&BioZcPool_Type) < 0 || PyType_Ready(&BioZcBuffer_Type) < 0 ||
        PyType_Ready(&BioZcCompletion_Type) < 0 || PyType_Ready(&BioZcSender_Type) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "ZeroCopyPool", (PyObject *)&BioZcPool_Type) < 0 ||
        PyModule_AddObjectRef(module, "ZeroCopyBuffer", (PyObject *)&BioZcBuffer_Type) < 0 ||
        PyModule_AddObjectRef(module, "ZcCompletion", (PyObject *)&BioZcCompletion_Type) < 0 ||
        PyModule_AddObjectRef(module, "ZcSender", (PyObject *)&BioZcSender_Type) < 0)
        return -1;
    return 0;
}
