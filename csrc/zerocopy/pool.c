/* Zero-copy send, the buffers: a pool cut from one mmap'd region, and the
 * ZeroCopyBuffer objects that hand its buffers to Python.
 *
 * A buffer's life: FREE in the pool -> acquire() -> OWNED (Python may
 * write it through the buffer protocol) -> send() -> IN_FLIGHT (no buffer
 * protocol: the kernel may still read it) -> the kernel's notification ->
 * FREE again, and the Python object that named it is spent (a generation
 * number tells). A buffer still in flight when its sender closes is LOST:
 * never reused. send() refuses a buffer with a live export (memoryview,
 * numpy array), so no Python code can write a buffer in flight.
 *
 * This file keeps the states; zerocopy/sender.c, zerocopy/completion.c,
 * zerocopy/uring.c and zerocopy/msg.c move buffers between them (the
 * sender, and what the kernel says).
 *
 * Where a datagram goes through it: Python writes it into an OWNED buffer
 * (memoryview, numpy, write()); the kernel sends it from there in place.
 */
#include "zerocopy/zerocopy.h"

#include <stddef.h>
#include <string.h>
#include <structmember.h>

#define BIO_ZEROCOPY_MAX_BUFFERS 16384          /* io_uring's fixed-buffer limit */
#define BIO_ZEROCOPY_MAX_BUFFER_SIZE (1 << 30)  /* io_uring's per-buffer limit */
#define BIO_ZEROCOPY_PAGE 4096

/* ---- pool -------------------------------------------------------------- */

/* Take a FREE buffer (the caller checked nfree > 0); it becomes OWNED. */
uint32_t
bio_zerocopy_pool_take(BioZeroCopyPool *p)
{
    uint32_t i = p->free_stack[--p->nfree];
    p->state[i] = BIO_ZEROCOPY_OWNED;
    return i;
}

/* Give buffer i back: FREE, and every object naming it is spent. */
void
bio_zerocopy_pool_put(BioZeroCopyPool *p, uint32_t i)
{
    p->state[i] = BIO_ZEROCOPY_FREE;
    p->gen[i]++;
    p->free_stack[p->nfree++] = i;
}

/* Allocate the per-buffer arrays; 0 or -1 with MemoryError. */
static int
bio_zerocopy_pool_alloc(BioZeroCopyPool *p)
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
bio_zerocopy_pool_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffers", "buffer_size", NULL};
    PyObject *n_obj = NULL, *size_obj = NULL;
    long long n = 64, size = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:ZeroCopyPool", kwlist, &n_obj, &size_obj))
        return NULL;
    if ((n_obj != NULL && bio_args_int("buffers", n_obj, 1, BIO_ZEROCOPY_MAX_BUFFERS, &n) < 0) ||
        (size_obj != NULL &&
         bio_args_int("buffer_size", size_obj, 1, BIO_ZEROCOPY_MAX_BUFFER_SIZE, &size) < 0))
        return NULL;
    BioZeroCopyPool *p = (BioZeroCopyPool *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    p->nbuf = (uint32_t)n;
    p->buf_size = (size_t)size;
    p->stride = ((size_t)size + BIO_ZEROCOPY_PAGE - 1) & ~(size_t)(BIO_ZEROCOPY_PAGE - 1);
    if (bio_zerocopy_pool_alloc(p) < 0 || (p->mem = bio_memory_new(p->stride * p->nbuf)) == NULL) {
        Py_DECREF(p);
        return NULL;
    }
    return (PyObject *)p;
}

static void
bio_zerocopy_pool_dealloc(BioZeroCopyPool *p)
{
    Py_XDECREF(p->mem); /* the kernel holds its own page references */
    PyMem_Free(p->state);
    PyMem_Free(p->gen);
    PyMem_Free(p->free_stack);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

/* Buffers in `state`. */
static Py_ssize_t
bio_zerocopy_pool_count(BioZeroCopyPool *p, int state)
{
    Py_ssize_t n = 0;
    for (uint32_t i = 0; i < p->nbuf; i++)
        n += p->state[i] == state;
    return n;
}

static PyObject *
bio_zerocopy_pool_get_count(BioZeroCopyPool *p, void *state)
{
    return PyLong_FromSsize_t(bio_zerocopy_pool_count(p, (int)(intptr_t)state));
}

static PyObject *
bio_zerocopy_pool_get_buffers(BioZeroCopyPool *p, void *c)
{
    return PyLong_FromUnsignedLong(p->nbuf);
}

static PyObject *
bio_zerocopy_pool_get_buffer_size(BioZeroCopyPool *p, void *c)
{
    return PyLong_FromSize_t(p->buf_size);
}

static PyObject *
bio_zerocopy_pool_get_in_use(BioZeroCopyPool *p, void *c)
{
    return PyBool_FromLong(p->attached);
}

static PyObject *
bio_zerocopy_pool_repr(BioZeroCopyPool *p)
{
    return PyUnicode_FromFormat("<ZeroCopyPool %u x %zu bytes: %zd free, %zd owned, %zd in flight>",
                                p->nbuf, p->buf_size, bio_zerocopy_pool_count(p, BIO_ZEROCOPY_FREE),
                                bio_zerocopy_pool_count(p, BIO_ZEROCOPY_OWNED),
                                bio_zerocopy_pool_count(p, BIO_ZEROCOPY_IN_FLIGHT) +
                                    bio_zerocopy_pool_count(p, BIO_ZEROCOPY_LOST));
}

static PyGetSetDef bio_zerocopy_pool_getset[] = {
    {"buffers", (getter)bio_zerocopy_pool_get_buffers, NULL, "number of buffers", NULL},
    {"buffer_size", (getter)bio_zerocopy_pool_get_buffer_size, NULL, "bytes per buffer", NULL},
    {"free", (getter)bio_zerocopy_pool_get_count, NULL, "buffers in the pool, ready to acquire()",
     (void *)(intptr_t)BIO_ZEROCOPY_FREE},
    {"owned", (getter)bio_zerocopy_pool_get_count, NULL, "buffers acquired and not yet sent",
     (void *)(intptr_t)BIO_ZEROCOPY_OWNED},
    {"in_flight", (getter)bio_zerocopy_pool_get_count, NULL,
     "buffers sent whose notification has not come yet", (void *)(intptr_t)BIO_ZEROCOPY_IN_FLIGHT},
    {"lost", (getter)bio_zerocopy_pool_get_count, NULL,
     "buffers still in flight when their sender closed: never reused",
     (void *)(intptr_t)BIO_ZEROCOPY_LOST},
    {"in_use", (getter)bio_zerocopy_pool_get_in_use, NULL, "an open ZeroCopySender uses the pool",
     NULL},
    {NULL},
};

PyTypeObject BioZeroCopyPool_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio.ZeroCopyPool",
    .tp_basicsize = sizeof(BioZeroCopyPool),
    .tp_dealloc = (destructor)bio_zerocopy_pool_dealloc,
    .tp_repr = (reprfunc)bio_zerocopy_pool_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ZeroCopyPool(buffers=64, buffer_size=65536)\n--\n\n"
              "Buffers for zero-copy sends, cut from one mmap'd region (each starts on a\n"
              "page). A ZeroCopySender registers them with the kernel and hands them out\n"
              "with acquire(); one open sender uses a pool at a time.",
    .tp_getset = bio_zerocopy_pool_getset,
    .tp_new = bio_zerocopy_pool_new,
};

/* ---- buffer ------------------------------------------------------------ */

/* 0 if b's acquire is current and the buffer is OWNED (writable, sendable);
 * else -1 with BufferError saying why. */
int
bio_zerocopy_buffer_check(BioZeroCopyBuffer *b)
{
    BioZeroCopyPool *p = b->pool;
    if (p->gen[b->index] != b->gen) {
        PyErr_Format(PyExc_BufferError,
                     "buffer %u was returned to the pool; acquire() another", b->index);
        return -1;
    }
    if (p->state[b->index] != BIO_ZEROCOPY_OWNED) {
        PyErr_Format(PyExc_BufferError,
                     "buffer %u is in flight: the kernel may still read it; "
                     "wait for its completion", b->index);
        return -1;
    }
    return 0;
}

/* A new object naming buffer `index` (just taken: OWNED). New reference or NULL. */
PyObject *
bio_zerocopy_buffer_new(BioZeroCopyPool *p, uint32_t index)
{
    BioZeroCopyBuffer *b = PyObject_New(BioZeroCopyBuffer, &BioZeroCopyBuffer_Type);
    if (b == NULL)
        return NULL;
    b->pool = (BioZeroCopyPool *)Py_NewRef((PyObject *)p);
    b->index = index;
    b->gen = p->gen[index];
    b->exports = 0;
    return (PyObject *)b;
}

/* An OWNED buffer dropped without being sent goes back to the pool. */
static void
bio_zerocopy_buffer_dealloc(BioZeroCopyBuffer *b)
{
    BioZeroCopyPool *p = b->pool;
    if (p->gen[b->index] == b->gen && p->state[b->index] == BIO_ZEROCOPY_OWNED)
        bio_zerocopy_pool_put(p, b->index);
    Py_DECREF(p);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static int
bio_zerocopy_buffer_getbuffer(BioZeroCopyBuffer *b, Py_buffer *view, int flags)
{
    if (bio_zerocopy_buffer_check(b) < 0) {
        view->obj = NULL;
        return -1;
    }
    unsigned char *ptr = bio_zerocopy_pool_ptr(b->pool, b->index);
    if (PyBuffer_FillInfo(view, (PyObject *)b, ptr, (Py_ssize_t)b->pool->buf_size, 0, flags) < 0)
        return -1;
    b->exports++;
    return 0;
}

static void
bio_zerocopy_buffer_releasebuffer(BioZeroCopyBuffer *b, Py_buffer *view)
{
    b->exports--;
}

static PyBufferProcs bio_zerocopy_buffer_as_buffer = {(getbufferproc)bio_zerocopy_buffer_getbuffer,
                                            (releasebufferproc)bio_zerocopy_buffer_releasebuffer};

/* write(data, offset=0) -> end offset: copy data into the buffer. */
static PyObject *
bio_zerocopy_buffer_write(BioZeroCopyBuffer *b, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "offset", NULL};
    PyObject *data;
    Py_ssize_t off = 0;
    Py_buffer pb;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|n:write", kwlist, &data, &off) ||
        bio_zerocopy_buffer_check(b) < 0 || bio_args_contiguous(data, &pb) < 0)
        return NULL;
    size_t size = b->pool->buf_size;
    if (off < 0 || (size_t)off > size || (size_t)pb.len > size - (size_t)off) {
        PyErr_Format(PyExc_ValueError, "%zd bytes at offset %zd do not fit the buffer's %zu bytes",
                     pb.len, off, size);
        PyBuffer_Release(&pb);
        return NULL;
    }
    memmove(bio_zerocopy_pool_ptr(b->pool, b->index) + off, pb.buf, (size_t)pb.len);
    Py_ssize_t end = off + pb.len;
    PyBuffer_Release(&pb);
    return PyLong_FromSsize_t(end);
}

static const char *
bio_zerocopy_buffer_state_name(BioZeroCopyBuffer *b)
{
    BioZeroCopyPool *p = b->pool;
    if (p->gen[b->index] != b->gen)
        return "returned";
    return p->state[b->index] == BIO_ZEROCOPY_OWNED ? "owned" : "in_flight";
}

static PyObject *
bio_zerocopy_buffer_get_state(BioZeroCopyBuffer *b, void *c)
{
    return PyUnicode_FromString(bio_zerocopy_buffer_state_name(b));
}

static PyObject *
bio_zerocopy_buffer_get_size(BioZeroCopyBuffer *b, void *c)
{
    return PyLong_FromSize_t(b->pool->buf_size);
}

static PyObject *
bio_zerocopy_buffer_repr(BioZeroCopyBuffer *b)
{
    return PyUnicode_FromFormat("<ZeroCopyBuffer %u of %zu bytes, %s, %zd views open>", b->index,
                                b->pool->buf_size, bio_zerocopy_buffer_state_name(b), b->exports);
}

static PyMethodDef bio_zerocopy_buffer_methods[] = {
    {"write", (PyCFunction)(void (*)(void))bio_zerocopy_buffer_write, METH_VARARGS | METH_KEYWORDS,
     "write($self, /, data, offset=0)\n--\n\n"
     "Copy data into the buffer at offset; return the offset\n"
     "just past it (the length to send when offset is 0). BufferError once sent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef bio_zerocopy_buffer_getset[] = {
    {"state", (getter)bio_zerocopy_buffer_get_state, NULL,
     "'owned' (writable), 'in_flight' (the kernel may read it) or 'returned' (spent)", NULL},
    {"size", (getter)bio_zerocopy_buffer_get_size, NULL, "bytes in the buffer", NULL},
    {NULL},
};

static PyMemberDef bio_zerocopy_buffer_members[] = {
    {"index", T_UINT, offsetof(BioZeroCopyBuffer, index), READONLY, "buffer number in its pool"},
    {"views", T_PYSSIZET, offsetof(BioZeroCopyBuffer, exports), READONLY,
     "buffer-protocol exports (memoryviews, arrays) still open"},
    {"pool", T_OBJECT, offsetof(BioZeroCopyBuffer, pool), READONLY, "the ZeroCopyPool"},
    {NULL},
};

PyTypeObject BioZeroCopyBuffer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio.ZeroCopyBuffer",
    .tp_basicsize = sizeof(BioZeroCopyBuffer),
    .tp_dealloc = (destructor)bio_zerocopy_buffer_dealloc,
    .tp_repr = (reprfunc)bio_zerocopy_buffer_repr,
    .tp_as_buffer = &bio_zerocopy_buffer_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One buffer of a ZeroCopyPool, from ZeroCopySender.acquire().\n\n"
              "Writable through the buffer protocol (memoryview, numpy) or write() until\n"
              "it is sent; then it is in flight and refuses every access; when the kernel\n"
              "is done it returns to the pool and this object is spent. send() refuses it\n"
              "while a memoryview of it is open.",
    .tp_methods = bio_zerocopy_buffer_methods,
    .tp_getset = bio_zerocopy_buffer_getset,
    .tp_members = bio_zerocopy_buffer_members,
};

int
bio_zerocopy_pool_init_types(PyObject *module)
{
    if (PyType_Ready(&BioZeroCopyPool_Type) < 0 || PyType_Ready(&BioZeroCopyBuffer_Type) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "ZeroCopyPool", (PyObject *)&BioZeroCopyPool_Type) < 0 ||
        PyModule_AddObjectRef(module, "ZeroCopyBuffer", (PyObject *)&BioZeroCopyBuffer_Type) < 0)
        return -1;
    return 0;
}
