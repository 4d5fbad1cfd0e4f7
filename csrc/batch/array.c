/* _Array: one PacketBatch metadata array (offsets, lengths, flags, ...) seen
 * through the buffer protocol, so that memoryview and numpy read and write
 * it in place, without a copy.
 *
 * Where a datagram goes through it: its metadata (length, flags, segment
 * size, timestamp, socket, errno, address) sits in the batch's parallel
 * arrays; batch.lengths and the others export them here.
 */
#include "batch/batch.h"

typedef struct {
    PyObject_HEAD
    PyObject *owner; /* keeps the batch (and so the memory) alive */
    void *buf;
    const char *format;
    Py_ssize_t itemsize;
    int ndim;
    Py_ssize_t shape[2];
} BioArray;

static int
bio_array_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    BioArray *a = (BioArray *)self;
    Py_ssize_t n = a->shape[0] * (a->ndim == 2 ? a->shape[1] : 1);

    view->obj = Py_NewRef(self);
    view->buf = a->buf;
    view->len = n * a->itemsize;
    view->readonly = 0;
    view->itemsize = a->itemsize;
    view->format = (flags & PyBUF_FORMAT) ? (char *)a->format : NULL;
    view->ndim = a->ndim;
    view->shape = (flags & PyBUF_ND) ? a->shape : NULL;
    view->strides = NULL; /* C-contiguous */
    view->suboffsets = NULL;
    view->internal = NULL;
    return 0;
}

static void
bio_array_dealloc(PyObject *self)
{
    Py_XDECREF(((BioArray *)self)->owner);
    Py_TYPE(self)->tp_free(self);
}

static PyBufferProcs bio_array_as_buffer = {bio_array_getbuffer, NULL};

PyTypeObject BioArray_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native._Array",
    .tp_basicsize = sizeof(BioArray),
    .tp_dealloc = bio_array_dealloc,
    .tp_as_buffer = &bio_array_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Exporter of one PacketBatch metadata array (internal).",
};

PyObject *
bio_array_view(BioBatch *b, void *buf, const char *format, Py_ssize_t itemsize,
               Py_ssize_t cols)
{
    BioArray *a = PyObject_New(BioArray, &BioArray_Type);
    if (a == NULL)
        return NULL;
    a->owner = Py_NewRef((PyObject *)b);
    a->buf = buf;
    a->format = format;
    a->itemsize = itemsize;
    a->ndim = cols ? 2 : 1;
    a->shape[0] = b->capacity;
    a->shape[1] = cols;
    PyObject *mv = PyMemoryView_FromObject((PyObject *)a);
    Py_DECREF(a);
    return mv;
}
