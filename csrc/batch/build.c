/* Building a batch to send: append() copies a payload into the next free
 * slot of the arena; add_slices() points entries at consecutive slices of
 * one external buffer (zero copy), which the batch keeps alive until clear().
 *
 * Where a datagram goes through it: from Python's bytes (append) or from a
 * buffer the caller owns (add_slices) into batch entries, which a send
 * (udp/send.c, socketset/base.c, ports/tx.c) then turns into messages.
 */
#include "batch/batch.h"

#include <string.h>

static int
bio_batch_check_appendable(BioBatch *b)
{
    if (bio_batch_check_idle(b) < 0)
        return -1;
    if (b->ext_source != NULL) {
        PyErr_SetString(PyExc_ValueError,
                        "batch points into an external buffer (add_slices); "
                        "call clear() before append()");
        return -1;
    }
    if (b->count >= b->capacity) {
        PyErr_Format(PyExc_ValueError, "batch is full: capacity is %zd datagrams",
                     b->capacity);
        return -1;
    }
    if (b->appended >= b->slots) {
        PyErr_Format(PyExc_ValueError, "batch is full: all %zd slots are used",
                     b->slots);
        return -1;
    }
    return 0;
}

const char bio_batch_append_doc[] =
"append($self, /, payload, addr=None, *, local=None, ecn=0, txtime=0)\n--\n\n"
"Copy payload (any bytes-like object) into the next free slot and return\n"
"its index. addr is the destination, (host, port) or (host, port, flowinfo,\n"
"scope_id) with a numeric host; None sends to the connected peer. local is\n"
"the numeric address to send from (None: the kernel chooses), ecn the ECN\n"
"codepoint (0-3), txtime the time to leave at (time.monotonic_ns(); a paced\n"
"socket honours it); any of them makes the batch's metadata arrays.";

PyObject *
bio_batch_append(BioBatch *b, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"payload", "addr", "local", "ecn", "txtime", NULL};
    PyObject *payload, *addr = Py_None, *local = NULL, *ecn = NULL, *txtime = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O$OOO:append", kwlist, &payload,
                                     &addr, &local, &ecn, &txtime))
        return NULL;
    if (bio_batch_check_appendable(b) < 0)
        return NULL;
    Py_buffer pb;
    if (PyObject_GetBuffer(payload, &pb, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError,
                     "payload must be a bytes-like object, got %.100s",
                     Py_TYPE(payload)->tp_name);
        return NULL;
    }
    Py_ssize_t i = b->count;
    if (pb.len > b->slot_size) {
        PyErr_Format(PyExc_ValueError,
                     "payload of %zd bytes does not fit a %zd-byte slot",
                     pb.len, b->slot_size);
        PyBuffer_Release(&pb);
        return NULL;
    }
    if (bio_batch_set_name(b, i, addr) < 0) {
        PyBuffer_Release(&pb);
        return NULL;
    }
    uint64_t off = (uint64_t)b->appended * (uint64_t)b->slot_size;
    memcpy(b->arena + off, pb.buf, (size_t)pb.len);
    PyBuffer_Release(&pb);
    bio_batch_set_entry(b, i, off, (uint32_t)pb.len);
    if ((local != NULL || ecn != NULL || txtime != NULL) &&
        bio_batch_meta_set(b, i, local, ecn, txtime) < 0)
        return NULL; /* entry i is not counted: the next append overwrites it */
    b->appended++;
    b->count++;
    return PyLong_FromSsize_t(i);
}

/* Attach `buffer` as the batch's data source (or check it is the one). */
int
bio_batch_attach(BioBatch *b, PyObject *buffer)
{
    if (b->ext_source == NULL && b->count > 0) {
        PyErr_SetString(PyExc_ValueError,
                        "batch holds appended datagrams; call clear() before "
                        "add_slices()");
        return -1;
    }
    if (b->ext_source != NULL) {
        if (b->ext_source == buffer)
            return 0;
        PyErr_SetString(PyExc_ValueError,
                        "batch already points into another buffer; call "
                        "clear() first");
        return -1;
    }
    PyObject *mv = PyMemoryView_FromObject(buffer);
    if (mv == NULL) {
        PyErr_Format(PyExc_TypeError,
                     "buffer must be a bytes-like object, got %.100s",
                     Py_TYPE(buffer)->tp_name);
        return -1;
    }
    Py_buffer *v = PyMemoryView_GET_BUFFER(mv);
    if (!PyBuffer_IsContiguous(v, 'C')) {
        Py_DECREF(mv);
        PyErr_SetString(PyExc_ValueError, "buffer must be C-contiguous");
        return -1;
    }
    if (v->ndim != 1 || v->itemsize != 1) {
        PyObject *flat = PyObject_CallMethod(mv, "cast", "s", "B");
        Py_DECREF(mv);
        if (flat == NULL)
            return -1;
        mv = flat;
    }
    b->ext_view = mv;
    b->ext_source = Py_NewRef(buffer);
    b->data = PyMemoryView_GET_BUFFER(mv)->buf;
    b->data_len = (size_t)PyMemoryView_GET_BUFFER(mv)->len;
    return 0;
}

void
bio_batch_attach_owner(BioBatch *b, PyObject *owner, const unsigned char *data, size_t len)
{
    b->ext_source = Py_NewRef(owner);
    b->data = data;
    b->data_len = len;
}

PyObject *
bio_batch_base(BioBatch *b)
{
    if (b->ext_source == NULL)
        return b->arena_view;
    if (b->ext_view == NULL)
        b->ext_view = PyMemoryView_FromObject(b->ext_source); /* holds the source */
    return b->ext_view;
}

/* How many slices add_slices() makes: from segment_size (into *seg) or the
 * length of the lengths sequence (*seg 0). The count, or -1 with an error. */
static Py_ssize_t
bio_batch_slices_count(PyObject *seg_obj, PyObject *lengths, Py_ssize_t buflen, Py_ssize_t *seg)
{
    if ((seg_obj == Py_None) == (lengths == Py_None)) {
        PyErr_SetString(PyExc_TypeError,
                        "add_slices() needs exactly one of segment_size or "
                        "lengths");
        return -1;
    }
    *seg = 0;
    if (lengths != Py_None) {
        Py_ssize_t n = PyObject_Length(lengths);
        if (n < 0)
            PyErr_SetString(PyExc_TypeError,
                            "lengths must be a sequence of integers");
        return n;
    }
    long long v;
    if (bio_args_int("segment_size", seg_obj, 1, BIO_MAX_UDP_PAYLOAD, &v) < 0)
        return -1;
    *seg = (Py_ssize_t)v;
    return (buflen + *seg - 1) / *seg;
}

/* lengths[k], an int from 0 to BIO_MAX_UDP_PAYLOAD, into *len. 0 or -1. */
static int
bio_batch_slice_length(PyObject *lengths, Py_ssize_t k, Py_ssize_t *len)
{
    char name[48];
    long long v;
    PyObject *item = PySequence_GetItem(lengths, k);
    if (item == NULL)
        return -1;
    snprintf(name, sizeof(name), "lengths[%zd]", k);
    int r = bio_args_int(name, item, 0, BIO_MAX_UDP_PAYLOAD, &v);
    Py_DECREF(item);
    if (r == 0)
        *len = (Py_ssize_t)v;
    return r;
}

/* Write n slice entries after the current ones: every `seg` bytes, or (seg
 * 0) of the sizes in `lengths`. Returns 0, or -1 with ValueError set. */
static int
bio_batch_slices_fill(BioBatch *b, PyObject *lengths, Py_ssize_t seg, Py_ssize_t n,
                      Py_ssize_t buflen, const struct sockaddr_in6 *name)
{
    Py_ssize_t base = b->count, off = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t len = seg;
        if (seg == 0) {
            if (bio_batch_slice_length(lengths, k, &len) < 0)
                return -1;
            if (off + len > buflen) {
                PyErr_Format(PyExc_ValueError,
                             "lengths run past the end of the %zd-byte buffer "
                             "at lengths[%zd]", buflen, k);
                return -1;
            }
        } else if (off + len > buflen) {
            len = buflen - off; /* the last segment may be shorter */
        }
        bio_batch_set_entry(b, base + k, (uint64_t)off, (uint32_t)len);
        b->names[base + k] = *name;
        off += len;
    }
    return 0;
}

static PyObject *bio_batch_add_slices_busy(BioBatch *b, PyObject *seg_obj,
                                           PyObject *lengths, PyObject *addr);

const char bio_batch_add_slices_doc[] =
"add_slices($self, /, buffer, segment_size=None, *, lengths=None, addr=None)\n--\n\n"
"Zero copy: add entries that point at consecutive slices of one bytes-like\n"
"buffer, either every segment_size bytes (the last may be shorter) or of the\n"
"given lengths. The batch keeps the buffer alive until clear(). Returns the\n"
"number of entries added.";

PyObject *
bio_batch_add_slices(BioBatch *b, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "segment_size", "lengths", "addr", NULL};
    PyObject *buffer, *seg_obj = Py_None, *lengths = Py_None, *addr = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O$OO:add_slices", kwlist,
                                     &buffer, &seg_obj, &lengths, &addr))
        return NULL;
    if (bio_batch_check_idle(b) < 0 || bio_batch_attach(b, buffer) < 0)
        return NULL;
    b->busy = 1; /* reading `lengths` may run Python code: no re-entry */
    PyObject *r = bio_batch_add_slices_busy(b, seg_obj, lengths, addr);
    b->busy = 0;
    return r;
}

static PyObject *
bio_batch_add_slices_busy(BioBatch *b, PyObject *seg_obj, PyObject *lengths, PyObject *addr)
{
    Py_ssize_t buflen = (Py_ssize_t)b->data_len;
    Py_ssize_t seg;
    Py_ssize_t n = bio_batch_slices_count(seg_obj, lengths, buflen, &seg);
    if (n < 0)
        goto fail;
    if (n > b->capacity - b->count) {
        PyErr_Format(PyExc_ValueError,
                     "batch is full: %zd slices do not fit the %zd free "
                     "entries of a %zd-entry batch",
                     n, b->capacity - b->count, b->capacity);
        goto fail;
    }
    struct sockaddr_in6 name;
    memset(&name, 0, sizeof(name));
    if (addr != Py_None && bio_addr_parse(addr, &name) < 0)
        goto fail;
    if (bio_batch_slices_fill(b, lengths, seg, n, buflen, &name) < 0)
        goto fail;
    b->count += n;
    if (b->count == 0)
        bio_batch_reset(b); /* nothing points into the buffer */
    return PyLong_FromSsize_t(n);
fail:
    if (b->count == 0)
        bio_batch_reset(b);
    return NULL;
}
