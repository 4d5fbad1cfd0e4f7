/* PacketBatch: a caller-owned, reusable burst of datagrams.
 *
 * Memory is allocated once, when the batch is made: an mmap'd arena of
 * `slots` x `slot_size` bytes for payloads and one block holding every
 * per-entry array (metadata exposed through the buffer protocol, plus the
 * msghdr/iovec/cmsg scratch the syscalls use). Nothing is allocated per
 * datagram afterwards; entries point into the arena (or, for zero-copy
 * sends, into one external buffer) by offset.
 *
 * Where a datagram goes through it: a receive writes its payload into slot j
 * of the arena and its metadata into entry j; batch[i] is then a memoryview
 * of it, without a copy. This file is the type (allocation, sequence,
 * addresses, keep(), attributes); building a batch to send is batch/build.c,
 * the metadata arrays' exporter batch/array.c, outgoing messages
 * batch/msgs.c.
 */
#include "batch/batch.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>

#define BIO_CAPACITY_MAX (1 << 20)
#define BIO_SLOT_SIZE_MAX (16 << 20)
/* The arena is allocated and faulted in whole when the batch is made: a
 * larger one would commit more memory than a burst of datagrams needs. */
#define BIO_ARENA_MAX ((size_t)1 << 32)

/* ---- allocation -------------------------------------------------------- */

static size_t
bio_align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* Carve every per-entry array out of one zeroed block. Returns 0 or -1. */
static int
bio_batch_alloc_meta(BioBatch *b)
{
    size_t c = (size_t)b->capacity;
    size_t sizes[] = {
        c * sizeof(uint64_t), c * sizeof(uint32_t), c * sizeof(uint32_t),
        c * sizeof(uint32_t), c * sizeof(int64_t),  c * sizeof(int32_t),
        c * sizeof(int32_t),  c * sizeof(struct sockaddr_in6),
        c * sizeof(struct mmsghdr), c * sizeof(struct iovec),
        c * sizeof(Py_ssize_t), c * BIO_CMSG_SIZE, c * sizeof(BioBatchPriv),
    };
    void **dest[] = {
        (void **)&b->offsets,   (void **)&b->lengths,    (void **)&b->flags,
        (void **)&b->segment_sizes, (void **)&b->timestamps,
        (void **)&b->sockets,   (void **)&b->errnos,     (void **)&b->names,
        (void **)&b->msgs,      (void **)&b->iov,        (void **)&b->msg_entry,
        (void **)&b->cmsg,      (void **)&b->priv,
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        total += bio_align8(sizes[i]);
    unsigned char *p = PyMem_RawCalloc(1, total);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->meta_block = p;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        *dest[i] = p;
        p += bio_align8(sizes[i]);
    }
    return 0;
}

/* PacketBatch()'s arguments: capacity, slot_size and slots (None: as many
 * as capacity), checked, and the arena's size. 0, or -1 with an error. */
static int
bio_batch_new_args(PyObject *args, PyObject *kwds, long long *capacity, long long *slot_size,
                   long long *slots, size_t *arena_size)
{
    static char *kwlist[] = {"capacity", "slot_size", "slots", NULL};
    PyObject *cap_o = NULL, *size_o = NULL, *slots_o = NULL;
    *capacity = 64;
    *slot_size = 2048;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO$O:PacketBatch", kwlist, &cap_o, &size_o,
                                     &slots_o))
        return -1;
    if ((cap_o != NULL && bio_args_int("capacity", cap_o, 1, BIO_CAPACITY_MAX, capacity) < 0) ||
        (size_o != NULL &&
         bio_args_int("slot_size", size_o, 1, BIO_SLOT_SIZE_MAX, slot_size) < 0))
        return -1;
    *slots = *capacity;
    if (bio_args_int_or_none("slots", slots_o, 1, *capacity, slots) < 0)
        return -1;
    *arena_size = (size_t)*slots * (size_t)*slot_size;
    if (*arena_size > BIO_ARENA_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "slots x slot_size is %zu bytes; the limit is %zu (4 GiB: the arena is "
                     "allocated and faulted in whole when the batch is made)",
                     *arena_size, (size_t)BIO_ARENA_MAX);
        return -1;
    }
    return 0;
}

static PyObject *
bio_batch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    long long capacity, slot_size, slots;
    size_t arena_size;
    if (bio_batch_new_args(args, kwds, &capacity, &slot_size, &slots, &arena_size) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)type->tp_alloc(type, 0);
    if (b == NULL)
        return NULL;
    b->capacity = (Py_ssize_t)capacity;
    b->slots = (Py_ssize_t)slots;
    b->slot_size = (Py_ssize_t)slot_size;
    if (bio_batch_alloc_meta(b) < 0) {
        Py_DECREF(b);
        return NULL;
    }
    b->arena_mem = bio_memory_new(arena_size);
    if (b->arena_mem == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    b->arena = b->arena_mem->ptr;
    b->arena_size = arena_size;
    b->data = b->arena;
    b->data_len = arena_size;
    b->arena_view = PyMemoryView_FromObject((PyObject *)b->arena_mem);
    if (b->arena_view == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    return (PyObject *)b;
}

static int
bio_batch_traverse(BioBatch *b, visitproc visit, void *arg)
{
    Py_VISIT(b->arena_view);
    Py_VISIT(b->ext_view);
    Py_VISIT(b->ext_source);
    return 0;
}

static int
bio_batch_clear_refs(BioBatch *b)
{
    Py_CLEAR(b->arena_view);
    Py_CLEAR(b->ext_view);
    Py_CLEAR(b->ext_source);
    return 0;
}

static void
bio_batch_dealloc(BioBatch *b)
{
    PyObject_GC_UnTrack(b);
    if (b->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)b);
    bio_batch_clear_refs(b);
    Py_XDECREF(b->arena_mem);
    PyMem_RawFree(b->meta_block);
    bio_batch_meta_free(b);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

/* The batch exports its arena too: memoryview(batch) is every slot. */
static int
bio_batch_getbuffer(BioBatch *b, Py_buffer *view, int flags)
{
    return PyObject_GetBuffer((PyObject *)b->arena_mem, view, flags);
}

static PyBufferProcs bio_batch_as_buffer = {
    (getbufferproc)bio_batch_getbuffer, NULL};

/* ---- state helpers ----------------------------------------------------- */

int
bio_batch_arg(const char *fname, PyObject *obj)
{
    if (PyObject_TypeCheck(obj, &BioBatch_Type))
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() argument 1 must be burstio.PacketBatch, not %.100s",
                 fname, Py_TYPE(obj)->tp_name);
    return -1;
}

int
bio_batch_check_idle(BioBatch *b)
{
    if (b->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "PacketBatch is in use by another call "
                        "(a send or receive in another thread)");
        return -1;
    }
    return 0;
}

void
bio_batch_reset(BioBatch *b)
{
    b->count = 0;
    b->appended = 0;
    b->data = b->arena;
    b->data_len = b->arena_size;
    Py_CLEAR(b->ext_view);
    Py_CLEAR(b->ext_source);
}

void
bio_batch_set_entry(BioBatch *b, Py_ssize_t i, uint64_t offset, uint32_t len)
{
    b->offsets[i] = offset;
    b->lengths[i] = len;
    b->flags[i] = 0;
    b->segment_sizes[i] = 0;
    b->timestamps[i] = 0;
    b->sockets[i] = 0;
    b->errnos[i] = 0;
    bio_batch_meta_clear(b, i);
}

void
bio_batch_clear_entries(BioBatch *b, Py_ssize_t n)
{
    size_t k = (size_t)n;
    memset(b->segment_sizes, 0, k * sizeof(*b->segment_sizes));
    memset(b->timestamps, 0, k * sizeof(*b->timestamps));
    memset(b->sockets, 0, k * sizeof(*b->sockets));
    memset(b->errnos, 0, k * sizeof(*b->errnos));
    for (Py_ssize_t i = 0; i < n; i++)
        b->names[i].sin6_family = 0;
    if (b->meta != NULL)
        for (Py_ssize_t i = 0; i < n; i++)
            bio_batch_meta_clear(b, i);
}

int
bio_batch_set_name(BioBatch *b, Py_ssize_t i, PyObject *addr)
{
    struct sockaddr_in6 name;
    memset(&name, 0, sizeof(name));
    if (addr != NULL && addr != Py_None && bio_addr_parse(addr, &name) < 0)
        return -1;
    b->names[i] = name;
    return 0;
}

static Py_ssize_t
bio_batch_index(BioBatch *b, Py_ssize_t i)
{
    if (i < 0)
        i += b->count;
    if (i < 0 || i >= b->count) {
        PyErr_Format(PyExc_IndexError,
                     "batch index out of range (the batch holds %zd datagrams)",
                     b->count);
        return -1;
    }
    return i;
}

/* ---- sequence protocol: batch[i] is a memoryview of payload i ----------- */

static Py_ssize_t
bio_batch_len(BioBatch *b)
{
    return b->count;
}

static PyObject *
bio_batch_item(BioBatch *b, Py_ssize_t i)
{
    if (i < 0 || i >= b->count) {
        PyErr_SetString(PyExc_IndexError, "batch index out of range");
        return NULL;
    }
    PyObject *base = bio_batch_base(b);
    if (base == NULL)
        return NULL;
    /* read once: the arrays are writable, and a slice would clamp silently */
    uint64_t off = __atomic_load_n(&b->offsets[i], __ATOMIC_RELAXED);
    uint32_t len = __atomic_load_n(&b->lengths[i], __ATOMIC_RELAXED);
    size_t size = (size_t)PyObject_Length(base);
    if (off > size || len > size - off) {
        PyErr_Format(PyExc_ValueError,
                     "datagram %zd: offset %llu + length %u runs past the %zu-byte buffer it "
                     "points into (batch.offsets or batch.lengths was rewritten)",
                     i, (unsigned long long)off, (unsigned)len, size);
        return NULL;
    }
    return PySequence_GetSlice(base, (Py_ssize_t)off, (Py_ssize_t)(off + len));
}

static PyObject *
bio_batch_subscript(BioBatch *b, PyObject *key)
{
    Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i < 0)
        i += b->count;
    return bio_batch_item(b, i);
}

static PySequenceMethods bio_batch_as_sequence = {
    .sq_length = (lenfunc)bio_batch_len,
    .sq_item = (ssizeargfunc)bio_batch_item,
};

static PyMappingMethods bio_batch_as_mapping = {
    .mp_length = (lenfunc)bio_batch_len,
    .mp_subscript = (binaryfunc)bio_batch_subscript,
};

PyDoc_STRVAR(bio_batch_clear_doc,
"clear($self, /)\n--\n\nForget every entry (and any external buffer); keeps the memory.");

static PyObject *
bio_batch_clear(BioBatch *b, PyObject *Py_UNUSED(ignored))
{
    if (bio_batch_check_idle(b) < 0)
        return NULL;
    bio_batch_reset(b);
    Py_RETURN_NONE;
}

/* ---- addresses --------------------------------------------------------- */

PyDoc_STRVAR(bio_batch_addr_doc,
"addr($self, i, /)\n--\n\nPeer of entry i as the socket module spells it: (host, port) for\n"
"IPv4, (host, port, flowinfo, scope_id) for IPv6; None if it has none.");

static PyObject *
bio_batch_addr(BioBatch *b, PyObject *arg)
{
    Py_ssize_t i = PyNumber_AsSsize_t(arg, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if ((i = bio_batch_index(b, i)) < 0)
        return NULL;
    return bio_addr_build(&b->names[i]);
}

PyDoc_STRVAR(bio_batch_addresses_doc,
"addresses($self, /)\n--\n\nA list of the peer of every entry, as addr(i) gives it.");

static PyObject *
bio_batch_addresses(BioBatch *b, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New(b->count);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < b->count; i++) {
        PyObject *t = bio_addr_build(&b->names[i]);
        if (t == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

PyDoc_STRVAR(bio_batch_set_addr_doc,
"set_addr($self, i, addr, /)\n--\n\nSet the destination of entry i (None: the connected "
"peer).");

static PyObject *
bio_batch_set_addr(BioBatch *b, PyObject *args)
{
    Py_ssize_t i;
    PyObject *addr;
    if (!PyArg_ParseTuple(args, "nO:set_addr", &i, &addr))
        return NULL;
    if (bio_batch_check_idle(b) < 0 || (i = bio_batch_index(b, i)) < 0)
        return NULL;
    if (bio_batch_set_name(b, i, addr) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(bio_batch_send_errors_doc,
"send_errors($self, /)\n--\n\n"
"The entries whose last send failed (send_batch(..., on_error='skip')), as\n"
"a list of (index, errno).");

static PyObject *
bio_batch_send_errors(BioBatch *b, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New(0);
    for (Py_ssize_t i = 0; list != NULL && i < b->count; i++) {
        if (!(b->flags[i] & BIO_FLAG_SEND_ERROR))
            continue;
        PyObject *t = Py_BuildValue("(ni)", i, (int)b->errnos[i]);
        if (t == NULL || PyList_Append(list, t) < 0)
            Py_CLEAR(list);
        Py_XDECREF(t);
    }
    return list;
}

int
bio_batch_check_entries(BioBatch *b, Py_ssize_t start, Py_ssize_t end)
{
    for (Py_ssize_t j = start; j < end; j++) {
        uint64_t off = b->offsets[j];
        if (off > b->data_len || b->lengths[j] > b->data_len - off) {
            PyErr_Format(PyExc_ValueError,
                         "datagram %zd: offset %llu + length %u runs past the "
                         "%zu-byte buffer it points into",
                         j, (unsigned long long)off, (unsigned)b->lengths[j], b->data_len);
            return -1;
        }
    }
    return 0;
}

/* Move entry i's metadata to entry j (payloads stay where they are). */
static void
bio_batch_move_entry(BioBatch *b, Py_ssize_t j, Py_ssize_t i)
{
    b->offsets[j] = b->offsets[i];
    b->lengths[j] = b->lengths[i];
    b->flags[j] = b->flags[i];
    b->segment_sizes[j] = b->segment_sizes[i];
    b->timestamps[j] = b->timestamps[i];
    b->sockets[j] = b->sockets[i];
    b->errnos[j] = b->errnos[i];
    b->names[j] = b->names[i];
    bio_batch_meta_move(b, j, i);
}

PyDoc_STRVAR(bio_batch_keep_doc,
"keep($self, mask, /)\n--\n\n"
"Keep the entries whose mask byte is non-zero, in order, and drop the rest;\n"
"return the new length. mask is any bytes-like object (bytearray, numpy\n"
"bool or uint8 array) with at least len(batch) items. Payloads do not move.");

static PyObject *
bio_batch_keep(BioBatch *b, PyObject *arg)
{
    Py_buffer m;
    if (bio_batch_check_idle(b) < 0)
        return NULL;
    if (!PyObject_CheckBuffer(arg)) {
        PyErr_Format(PyExc_TypeError, "mask must be a bytes-like object, got %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &m, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "mask must be C-contiguous");
        return NULL;
    }
    if (m.itemsize != 1) {
        PyErr_Format(PyExc_TypeError,
                     "mask items must be 1 byte (bool or uint8), got %zd-byte "
                     "items (format %s)",
                     m.itemsize, m.format ? m.format : "?");
        PyBuffer_Release(&m);
        return NULL;
    }
    if (m.len < b->count) {
        PyErr_Format(PyExc_ValueError,
                     "mask has %zd items but the batch holds %zd datagrams",
                     m.len, b->count);
        PyBuffer_Release(&m);
        return NULL;
    }
    const unsigned char *keep = m.buf;
    Py_ssize_t j = 0;
    for (Py_ssize_t i = 0; i < b->count; i++) {
        if (!keep[i])
            continue;
        if (i != j)
            bio_batch_move_entry(b, j, i);
        j++;
    }
    PyBuffer_Release(&m);
    b->count = j;
    return PyLong_FromSsize_t(j);
}

/* ---- internal hooks for the portable (pure Python) backend ------------- */

static PyObject *
bio_batch_store(BioBatch *b, PyObject *args)
{
    Py_ssize_t i;
    unsigned long long offset;
    unsigned int length, flags, seg;
    long long ts;
    PyObject *addr;
    if (!PyArg_ParseTuple(args, "nKIIILO:_store", &i, &offset, &length, &flags,
                          &seg, &ts, &addr))
        return NULL;
    if (i < 0 || i >= b->capacity || offset > b->arena_size || length > b->arena_size - offset) {
        PyErr_SetString(PyExc_IndexError, "_store outside the batch");
        return NULL;
    }
    if (bio_batch_set_name(b, i, addr) < 0)
        return NULL;
    bio_batch_set_entry(b, i, offset, length);
    b->flags[i] = flags;
    b->segment_sizes[i] = seg;
    b->timestamps[i] = ts;
    Py_RETURN_NONE;
}

static PyObject *
bio_batch_set_count(BioBatch *b, PyObject *args)
{
    Py_ssize_t n, used = 0;
    if (!PyArg_ParseTuple(args, "n|n:_set_count", &n, &used))
        return NULL;
    if (n < 0 || n > b->capacity || used < 0 || used > b->slots) {
        PyErr_SetString(PyExc_ValueError, "_set_count outside the batch");
        return NULL;
    }
    bio_batch_reset(b);
    b->count = n;
    b->appended = used;
    Py_RETURN_NONE;
}

/* Mark the batch in use (1) or free (0) around a call that releases the
 * GIL outside C (the portable backend). */
static PyObject *
bio_batch_set_busy(BioBatch *b, PyObject *arg)
{
    int busy = PyObject_IsTrue(arg);
    if (busy < 0 || (busy && bio_batch_check_idle(b) < 0))
        return NULL;
    b->busy = busy;
    Py_RETURN_NONE;
}

static PyObject *
bio_batch_mark_error(BioBatch *b, PyObject *args)
{
    Py_ssize_t i;
    int err;
    if (!PyArg_ParseTuple(args, "ni:_mark_error", &i, &err))
        return NULL;
    if ((i = bio_batch_index(b, i)) < 0)
        return NULL;
    if (err) {
        b->flags[i] |= BIO_FLAG_SEND_ERROR;
        b->errnos[i] = err;
    } else {
        b->flags[i] &= ~BIO_FLAG_SEND_ERROR;
        b->errnos[i] = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *
bio_batch_check_entries_py(BioBatch *b, PyObject *args)
{
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "nn:_check_entries", &start, &end))
        return NULL;
    if (start < 0 || end > b->count || start > end) {
        PyErr_SetString(PyExc_IndexError, "_check_entries outside the batch");
        return NULL;
    }
    if (bio_batch_check_entries(b, start, end) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
bio_batch_repr(BioBatch *b)
{
    return PyUnicode_FromFormat("<PacketBatch %zd/%zd datagrams, %zd slots x %zd B>",
                                b->count, b->capacity, b->slots, b->slot_size);
}

static PyMethodDef bio_batch_methods[] = {
    {"append", (PyCFunction)(void (*)(void))bio_batch_append,
     METH_VARARGS | METH_KEYWORDS, bio_batch_append_doc},
    {"add_slices", (PyCFunction)(void (*)(void))bio_batch_add_slices,
     METH_VARARGS | METH_KEYWORDS, bio_batch_add_slices_doc},
    {"clear", (PyCFunction)bio_batch_clear, METH_NOARGS, bio_batch_clear_doc},
    {"addr", (PyCFunction)bio_batch_addr, METH_O, bio_batch_addr_doc},
    {"addresses", (PyCFunction)bio_batch_addresses, METH_NOARGS,
     bio_batch_addresses_doc},
    {"set_addr", (PyCFunction)bio_batch_set_addr, METH_VARARGS,
     bio_batch_set_addr_doc},
    {"keep", (PyCFunction)bio_batch_keep, METH_O, bio_batch_keep_doc},
    {"send_errors", (PyCFunction)bio_batch_send_errors, METH_NOARGS,
     bio_batch_send_errors_doc},
    {"local_addr", (PyCFunction)bio_batch_meta_local_addr, METH_O,
     bio_batch_meta_local_addr_doc},
    {"set_local_addr", (PyCFunction)bio_batch_meta_set_local_addr, METH_VARARGS,
     bio_batch_meta_set_local_addr_doc},
    {"_store_meta", (PyCFunction)bio_batch_meta_store_py, METH_VARARGS,
     "_store_meta($self, i, local, ifindex, ecn, /)\n--\n\n"
     "Write entry i's local address, interface and ECN codepoint (the portable backend's "
     "receive)."},
    {"_store", (PyCFunction)bio_batch_store, METH_VARARGS,
     "_store($self, i, offset, length, flags, segment_size, timestamp, addr, /)\n--\n\n"
     "Write entry i (the portable backend's receive)."},
    {"_set_count", (PyCFunction)bio_batch_set_count, METH_VARARGS,
     "_set_count($self, n, used=0, /)\n--\n\nSet the entry count and the slots used."},
    {"_set_busy", (PyCFunction)bio_batch_set_busy, METH_O,
     "_set_busy($self, busy, /)\n--\n\nMark the batch in use around a call outside C."},
    {"_check_entries", (PyCFunction)bio_batch_check_entries_py, METH_VARARGS,
     "_check_entries($self, start, end, /)\n--\n\nValueError unless entries [start, end) "
     "lie inside their buffer."},
    {"_mark_error", (PyCFunction)bio_batch_mark_error, METH_VARARGS,
     "_mark_error($self, i, err, /)\n--\n\nFlag entry i's send as failed with err (0: clear it)."},
    {NULL, NULL, 0, NULL},
};

/* ---- attributes -------------------------------------------------------- */

#define BIO_ARRAY_GETTER(field, fmt)                                          \
    static PyObject *bio_batch_get_##field(BioBatch *b, void *c)              \
    {                                                                         \
        return bio_array_view(b, b->field, fmt, sizeof(*b->field), 0);        \
    }

BIO_ARRAY_GETTER(offsets, "Q")
BIO_ARRAY_GETTER(lengths, "I")
BIO_ARRAY_GETTER(flags, "I")
BIO_ARRAY_GETTER(segment_sizes, "I")
BIO_ARRAY_GETTER(timestamps, "q")
BIO_ARRAY_GETTER(sockets, "i")
BIO_ARRAY_GETTER(errnos, "i")

static PyObject *
bio_batch_get_names(BioBatch *b, void *c)
{
    return bio_array_view(b, b->names, "B", 1, sizeof(struct sockaddr_in6));
}

static PyObject *
bio_batch_get_arena(BioBatch *b, void *c)
{
    return PyMemoryView_FromObject((PyObject *)b->arena_mem); /* the caller's own */
}

static PyObject *
bio_batch_get_buffer(BioBatch *b, void *c)
{
    PyObject *base = bio_batch_base(b);
    return base == NULL ? NULL : PyMemoryView_FromObject(base); /* holds what the entries point into */
}

static PyObject *
bio_batch_get_ssize(BioBatch *b, void *c)
{
    return PyLong_FromSsize_t(*(Py_ssize_t *)((char *)b + (size_t)c));
}

#define BIO_DOC_ARRAY(what) \
    "memoryview over all `capacity` entries (" what "); slice it with [:len(batch)]"
#define BIO_DOC_META(what) \
    "memoryview over all `capacity` entries (" what "), allocated on first use; slice it " \
    "with [:len(batch)]"

static PyObject *
bio_batch_get_has_metadata(BioBatch *b, void *c)
{
    return PyBool_FromLong(b->meta != NULL);
}

static PyGetSetDef bio_batch_getset[] = {
    {"capacity", (getter)bio_batch_get_ssize, NULL, "entries the batch can hold",
     (void *)offsetof(BioBatch, capacity)},
    {"slots", (getter)bio_batch_get_ssize, NULL, "receive slots in the arena",
     (void *)offsetof(BioBatch, slots)},
    {"slot_size", (getter)bio_batch_get_ssize, NULL, "bytes per slot",
     (void *)offsetof(BioBatch, slot_size)},
    {"offsets", (getter)bio_batch_get_offsets, NULL,
     BIO_DOC_ARRAY("uint64 offset of each payload in its buffer"), NULL},
    {"lengths", (getter)bio_batch_get_lengths, NULL,
     BIO_DOC_ARRAY("uint32 payload length"), NULL},
    {"flags", (getter)bio_batch_get_flags, NULL,
     BIO_DOC_ARRAY("uint32 FLAG_* bits"), NULL},
    {"segment_sizes", (getter)bio_batch_get_segment_sizes, NULL,
     BIO_DOC_ARRAY("uint32 GRO segment size, 0 if not coalesced"), NULL},
    {"timestamps", (getter)bio_batch_get_timestamps, NULL,
     BIO_DOC_ARRAY("int64 kernel receive time, ns since the epoch, 0 if off"),
     NULL},
    {"sockets", (getter)bio_batch_get_sockets, NULL,
     BIO_DOC_ARRAY("int32 index of the receiving socket"), NULL},
    {"errnos", (getter)bio_batch_get_errnos, NULL,
     BIO_DOC_ARRAY("int32 errno of a failed send, 0 if none"), NULL},
    {"names", (getter)bio_batch_get_names, NULL,
     "memoryview (capacity x 28 bytes): raw sockaddr_in/sockaddr_in6 per entry",
     NULL},
    {"local_addrs", (getter)bio_batch_meta_get_array, NULL,
     BIO_DOC_META("capacity x 16 bytes: each entry's local address, IPv4 as ::ffff:a.b.c.d, "
                  "all zero for none"),
     (void *)0},
    {"ifindexes", (getter)bio_batch_meta_get_array, NULL,
     BIO_DOC_META("uint32 interface it arrived on / leaves by, 0 for any"), (void *)1},
    {"ecn", (getter)bio_batch_meta_get_array, NULL,
     BIO_DOC_META("uint8 ECN codepoint: 0 Not-ECT, 1 ECT(1), 2 ECT(0), 3 CE"), (void *)2},
    {"txtimes", (getter)bio_batch_meta_get_array, NULL,
     BIO_DOC_META("int64 time to send at, CLOCK_MONOTONIC ns as time.monotonic_ns(), 0 now"),
     (void *)3},
    {"has_metadata", (getter)bio_batch_get_has_metadata, NULL,
     "whether the metadata arrays (local_addrs, ifindexes, ecn, txtimes) exist yet", NULL},
    {"arena", (getter)bio_batch_get_arena, NULL,
     "writable memoryview over every slot (slots x slot_size bytes)", NULL},
    {"buffer", (getter)bio_batch_get_buffer, NULL,
     "memoryview of what offsets point into: the arena, or the buffer add_slices() "
     "attached, or the UMEM an AF_XDP receive lent", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(bio_batch_doc,
"PacketBatch(capacity=64, slot_size=2048, *, slots=None)\n--\n\n"
"A reusable burst of up to `capacity` datagrams. Payloads live in one arena\n"
"of `slots` x `slot_size` bytes allocated once (slots=None: as many as\n"
"capacity); batch[i] is a memoryview of payload i (no copy), valid until the\n"
"batch is next filled. Metadata are parallel arrays exposed through the\n"
"buffer protocol, e.g. numpy.asarray(batch.lengths)[:len(batch)] is a\n"
"zero-copy view.\n\n"
"For UDP GRO receive use slot_size >= 65535 and fewer slots than capacity:\n"
"each slot may hold a coalesced run that is split into many entries.");

PyTypeObject BioBatch_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio.PacketBatch",
    .tp_basicsize = sizeof(BioBatch),
    .tp_dealloc = (destructor)bio_batch_dealloc,
    .tp_repr = (reprfunc)bio_batch_repr,
    .tp_as_sequence = &bio_batch_as_sequence,
    .tp_as_mapping = &bio_batch_as_mapping,
    .tp_as_buffer = &bio_batch_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = bio_batch_doc,
    .tp_traverse = (traverseproc)bio_batch_traverse,
    .tp_clear = (inquiry)bio_batch_clear_refs,
    .tp_weaklistoffset = offsetof(BioBatch, weakrefs),
    .tp_methods = bio_batch_methods,
    .tp_getset = bio_batch_getset,
    .tp_new = bio_batch_new,
};

static PyMethodDef bio_batch_functions[] = {
    {"send_messages_for_test", bio_batch_messages_for_test, METH_VARARGS,
     bio_batch_messages_for_test_doc},
    {NULL, NULL, 0, NULL},
};

int
bio_batch_init_type(PyObject *module)
{
    if (PyType_Ready(&BioArray_Type) < 0 || PyType_Ready(&BioBatch_Type) < 0 ||
        PyModule_AddFunctions(module, bio_batch_functions) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "PacketBatch", (PyObject *)&BioBatch_Type) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "FLAG_TRUNCATED", BIO_FLAG_TRUNCATED) < 0 ||
        PyModule_AddIntConstant(module, "FLAG_GRO", BIO_FLAG_GRO) < 0 ||
        PyModule_AddIntConstant(module, "FLAG_COALESCED", BIO_FLAG_COALESCED) < 0 ||
        PyModule_AddIntConstant(module, "FLAG_SEND_ERROR", BIO_FLAG_SEND_ERROR) < 0 ||
        PyModule_AddIntConstant(module, "GRO_SLOT_MIN", BIO_GRO_SLOT_MIN) < 0 ||
        PyModule_AddIntConstant(module, "MAX_UDP_PAYLOAD", BIO_MAX_UDP_PAYLOAD) < 0 ||
        PyModule_AddIntConstant(module, "CMSG_RX_SPACE", BIO_CMSG_RX_ALL) < 0)
        return -1;
    return 0;
}
