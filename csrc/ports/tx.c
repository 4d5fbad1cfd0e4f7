/* PortTx: the producing side of a port's TX ring.
 *
 * Where a packet goes through it: put() copies a payload into the free
 * slot at head, claim() hands that slot's buffer to Python to fill in
 * place, put_batch() copies a PacketBatch's entries, recv_from() receives
 * from a UDP socket straight into the free slots (recvmmsg); each commits
 * the slot's metadata and advances head; sync() or wait() (ports/ring.c)
 * then publishes the packets to the consumer.
 */
#include "ports/ports.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>

#define BIO_PORT_RECV_MAX 1024 /* messages per recvmmsg */

/* ---- filling slots ---------------------------------------------------------- */

/* A key argument (dst/src): absent or None is 0, else an int in u32. 0 or
 * -1 with TypeError/ValueError. */
int
bio_port_key(const char *what, PyObject *obj, uint32_t *out)
{
    long long v = 0;
    if (obj != NULL && obj != Py_None && bio_args_int(what, obj, 0, 0xffffffffLL, &v) < 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Make sure a TX ring owns a free slot, reading the consumer's position if
 * the last one known says full. 0, or -1 with BlockingIOError. GIL. */
static int
bio_port_tx_room(BioPortRing *g)
{
    if (g->tail != g->head)
        return 0;
    int r = bio_port_ring_refresh(g);
    if (r < 0) {
        bio_port_ring_raise(g, r);
        return -1;
    }
    if (g->tail != g->head)
        return 0;
    bio_port_oserror(EAGAIN, "ring full: all %u slots are in flight; sync() or wait() for "
                     "room", g->cap);
    return -1;
}

/* Parse (dst, src, addr) of put()/claim(). 0 or -1. */
static int
bio_port_tx_meta(PyObject *dst_o, PyObject *src_o, PyObject *addr, uint32_t *dst, uint32_t *src,
                 struct sockaddr_in6 *name)
{
    memset(name, 0, sizeof(*name));
    if (bio_port_key("dst", dst_o, dst) < 0 || bio_port_key("src", src_o, src) < 0)
        return -1;
    return addr != NULL && addr != Py_None ? bio_addr_parse(addr, name) : 0;
}

PyDoc_STRVAR(bio_port_tx_put_doc,
"put($self, /, payload, dst=0, src=0, addr=None)\n--\n\n"
"Copy payload into the free slot at head and advance head; returns the free\n"
"slots left. dst/src are 32-bit keys (a switch forwards by dst and learns\n"
"src); addr an optional socket address for send_to(). Published by sync().\n"
"BlockingIOError when the ring is full.");

static PyObject *
bio_port_tx_put(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"payload", "dst", "src", "addr", NULL};
    PyObject *a[4];
    uint32_t dst, src, idx;
    struct sockaddr_in6 name;
    Py_buffer pb;
    if (bio_args_parse("put", args, nargs, kwnames, names, 4, 1, a) < 0 ||
        bio_port_tx_meta(a[1], a[2], a[3], &dst, &src, &name) < 0)
        return NULL;
    if (PyObject_GetBuffer(a[0], &pb, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "payload must be a bytes-like object, got %.100s",
                     Py_TYPE(a[0])->tp_name);
        return NULL;
    }
    if (pb.len > (Py_ssize_t)g->reg->slot_size) {
        PyErr_Format(PyExc_ValueError, "payload of %zd bytes does not fit a %u-byte slot",
                     pb.len, g->reg->slot_size);
        PyBuffer_Release(&pb);
        return NULL;
    }
    if (bio_port_ring_ready(g) < 0 || bio_port_tx_room(g) < 0) {
        PyBuffer_Release(&pb);
        return NULL;
    }
    unsigned char *buf = bio_port_ring_buf(g, g->head, &idx);
    if (buf == NULL) {
        PyBuffer_Release(&pb);
        return bio_port_ring_bad_slot(g, g->head, idx);
    }
    memcpy(buf, pb.buf, (size_t)pb.len);
    PyBuffer_Release(&pb);
    bio_port_tx_commit(g, (uint32_t)pb.len, 0, dst, src, &name);
    return PyLong_FromUnsignedLong(g->tail - g->head);
}

PyDoc_STRVAR(bio_port_tx_claim_doc,
"claim($self, /, length, dst=0, src=0, addr=None)\n--\n\n"
"Zero copy: take the free slot at head for a packet of `length` bytes,\n"
"advance head, and return a writable memoryview of its payload to fill in\n"
"place before the next sync(). BlockingIOError when the ring is full.");

static PyObject *
bio_port_tx_claim(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"length", "dst", "src", "addr", NULL};
    PyObject *a[4];
    uint32_t dst, src, idx;
    struct sockaddr_in6 name;
    if (bio_args_parse("claim", args, nargs, kwnames, names, 4, 1, a) < 0 ||
        bio_port_tx_meta(a[1], a[2], a[3], &dst, &src, &name) < 0)
        return NULL;
    long long len;
    if (bio_args_int("length", a[0], 0, g->reg->slot_size, &len) < 0)
        return NULL;
    if (bio_port_ring_ready(g) < 0 || bio_port_tx_room(g) < 0)
        return NULL;
    unsigned char *buf = bio_port_ring_buf(g, g->head, &idx);
    if (buf == NULL)
        return bio_port_ring_bad_slot(g, g->head, idx);
    Py_ssize_t off = buf - g->reg->pbase;
    bio_port_tx_commit(g, (uint32_t)len, 0, dst, src, &name);
    return PySequence_GetSlice(g->reg->pview, off, off + len);
}

/* Parse put_batch()'s start/count against b: [*start, *end). 0 or -1. */
static int
bio_port_batch_range(BioBatch *b, PyObject *start_o, PyObject *count_o, Py_ssize_t *start,
                     Py_ssize_t *end)
{
    long long s = 0, n;
    if (start_o != NULL && bio_args_int("start", start_o, 0, b->count, &s) < 0)
        return -1;
    n = b->count - s;
    if (bio_args_int_or_none("count", count_o, 0, b->count - s, &n) < 0)
        return -1;
    *start = (Py_ssize_t)s;
    *end = (Py_ssize_t)(s + n);
    return 0;
}

/* ValueError unless every entry of [start, end) lies inside its buffer and
 * fits a slot. 0 or -1. */
static int
bio_port_tx_check_batch(BioPortRing *g, BioBatch *b, Py_ssize_t start, Py_ssize_t end)
{
    if (bio_batch_check_entries(b, start, end) < 0)
        return -1;
    for (Py_ssize_t j = start; j < end; j++) {
        if (b->lengths[j] > g->reg->slot_size) {
            PyErr_Format(PyExc_ValueError, "datagram %zd of %u bytes does not fit a %u-byte "
                         "slot", j, (unsigned)b->lengths[j], g->reg->slot_size);
            return -1;
        }
    }
    return 0;
}

/* Copy batch entry j into buf and commit it at head. Its offset and length
 * are read once and checked again here: numpy may rewrite the metadata
 * arrays from another thread without the GIL, so the check before the
 * copies proves nothing about this moment. 0, or -1 with ValueError. */
static int
bio_port_tx_copy_entry(BioPortRing *g, BioBatch *b, Py_ssize_t j, unsigned char *buf,
                       uint32_t dst, uint32_t src)
{
    uint64_t off = __atomic_load_n(&b->offsets[j], __ATOMIC_RELAXED);
    uint32_t len = __atomic_load_n(&b->lengths[j], __ATOMIC_RELAXED);
    uint32_t flags = __atomic_load_n(&b->flags[j], __ATOMIC_RELAXED);
    if (off > b->data_len || len > b->data_len - off || len > g->reg->slot_size) {
        PyErr_Format(PyExc_ValueError, "datagram %zd changed while put_batch() copied it "
                     "(offset %llu, length %u: outside its %zu-byte buffer or a %u-byte slot); "
                     "nothing was put", j, (unsigned long long)off, len, b->data_len,
                     g->reg->slot_size);
        return -1;
    }
    struct sockaddr_in6 name;
    memcpy(&name, &b->names[j], sizeof(name));
    memcpy(buf, b->data + off, len);
    bio_port_tx_commit(g, len, flags & BIO_FLAG_TRUNCATED, dst, src, &name);
    return 0;
}

PyDoc_STRVAR(bio_port_tx_put_batch_doc,
"put_batch($self, /, batch, start=0, count=None, *, dst=0, src=0)\n--\n\n"
"Copy entries [start, start+count) of a PacketBatch (payload, address,\n"
"flags) into free slots, in one call; returns how many fit. BlockingIOError\n"
"if the ring is full and none did.");

static PyObject *
bio_port_tx_put_batch(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames)
{
    static const char *const names[] = {"batch", "start", "count", "dst", "src", NULL};
    PyObject *a[5];
    uint32_t dst, src, idx;
    Py_ssize_t start, end;
    if (bio_args_parse("put_batch", args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_batch_arg("put_batch", a[0]) < 0 || bio_port_key("dst", a[3], &dst) < 0 ||
        bio_port_key("src", a[4], &src) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)a[0];
    if (bio_batch_check_idle(b) < 0 || bio_port_batch_range(b, a[1], a[2], &start, &end) < 0 ||
        bio_port_tx_check_batch(g, b, start, end) < 0 || bio_port_ring_ready(g) < 0)
        return NULL;
    if (start == end)
        return PyLong_FromLong(0);
    if (bio_port_tx_room(g) < 0)
        return NULL;
    Py_ssize_t n = end - start, room = (Py_ssize_t)(uint32_t)(g->tail - g->head);
    if (n > room)
        n = room;
    uint32_t head = g->head, cur = g->cur;
    for (Py_ssize_t j = start; j < start + n; j++) {
        uint32_t pos = g->head;
        unsigned char *buf = bio_port_ring_buf(g, pos, &idx);
        if (buf == NULL || bio_port_tx_copy_entry(g, b, j, buf, dst, src) < 0) {
            g->head = head; /* nothing was published: take back what this call wrote */
            g->cur = cur;
            return buf == NULL ? bio_port_ring_bad_slot(g, pos, idx) : NULL;
        }
    }
    return PyLong_FromSsize_t(n);
}

/* ---- receiving from a socket straight into free slots -------------------------- */

typedef struct {
    BioPortRing *g;
    int fd;
    uint32_t dst, src;
    int64_t deadline;          /* -1: none */
    uint32_t vlen;             /* messages asked for */
    uint32_t bad;              /* a slot naming a buffer outside the pool */
    uint64_t bytes, truncated, syscalls;
} BioPortRecv;

/* Point message k at the buffer and name of free slot head + k. 0, or
 * -EBADMSG if that slot names a buffer outside the pool. */
static int
bio_port_tx_recv_prepare(BioPortRing *g, uint32_t k)
{
    uint32_t idx;
    unsigned char *buf = bio_port_ring_buf(g, g->head + k, &idx);
    if (buf == NULL)
        return -EBADMSG;
    struct msghdr *h = &g->msgs[k].msg_hdr;
    g->iov[k].iov_base = buf;
    g->iov[k].iov_len = g->reg->slot_size;
    memset(h, 0, sizeof(*h));
    h->msg_name = &g->s->names[(g->head + k) & g->mask];
    h->msg_namelen = sizeof(struct sockaddr_in6);
    h->msg_iov = &g->iov[k];
    h->msg_iovlen = 1;
    return 0;
}

/* Commit n received messages as packets at head. */
static void
bio_port_tx_recv_commit(BioPortRecv *c, int n)
{
    BioPortRing *g = c->g;
    for (int k = 0; k < n; k++) {
        uint32_t len = g->msgs[k].msg_len, slot = g->head & g->mask;
        int trunc = (g->msgs[k].msg_hdr.msg_flags & MSG_TRUNC) != 0;
        if (g->msgs[k].msg_hdr.msg_namelen == 0)
            g->s->names[slot].sin6_family = 0;
        c->bytes += len > g->reg->slot_size ? g->reg->slot_size : len;
        c->truncated += trunc;
        struct sockaddr_in6 name = g->s->names[slot];
        bio_port_tx_commit(g, len > g->reg->slot_size ? g->reg->slot_size : len,
                           trunc ? BIO_FLAG_TRUNCATED : 0, c->dst, c->src, &name);
    }
}

/* recvmmsg into the free slots, polling until the deadline for the first
 * datagram. Returns datagrams (committed at head), 0 on timeout, or -errno
 * (-ECANCELED / -ESTALE: the port was closed or taken over meanwhile).
 * Resumable. nogil. */
static int
bio_port_tx_recv_nogil(void *arg)
{
    BioPortRecv *c = arg;
    BioPortRing *g = c->g;
    for (;;) {
        for (uint32_t k = 0; k < c->vlen; k++) {
            if (bio_port_tx_recv_prepare(g, k) < 0) {
                c->bad = g->head + k;
                return -EBADMSG;
            }
        }
        c->syscalls++;
        int n = recvmmsg(c->fd, g->msgs, c->vlen, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (n > 0) {
            bio_port_tx_recv_commit(c, n);
            return n;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        if (c->deadline >= 0 && bio_now_ns() >= c->deadline)
            return 0;
        c->syscalls++;
        int p = bio_port_poll_nogil(g->port, c->fd, POLLIN, c->deadline);
        if (p <= 0)
            return p;
    }
}

/* Allocate the recvmmsg scratch (once per ring). 0 or -1 with MemoryError. */
static int
bio_port_tx_scratch(BioPortRing *g)
{
    if (g->msgs != NULL)
        return 0;
    uint32_t n = g->cap < BIO_PORT_RECV_MAX ? g->cap : BIO_PORT_RECV_MAX;
    g->msgs = PyMem_RawCalloc(n, sizeof(struct mmsghdr));
    g->iov = PyMem_RawCalloc(n, sizeof(struct iovec));
    if (g->msgs == NULL || g->iov == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(bio_port_tx_recv_from_doc,
"recv_from($self, /, fd, timeout=None, dst=0, src=0)\n--\n\n"
"recvmmsg from a UDP socket straight into the free slots (no copy through\n"
"Python or a batch), waiting up to timeout for the first datagram. The\n"
"packets are committed at head with the sender's address; sync() publishes.");

static PyObject *
bio_port_tx_recv_from(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames)
{
    static const char *const names[] = {"fd", "timeout", "dst", "src", NULL};
    PyObject *a[4];
    int64_t timeout_ns;
    BioPortRecv c = {.g = g};
    if (bio_args_parse("recv_from", args, nargs, kwnames, names, 4, 1, a) < 0 ||
        bio_timeout_parse(a[1] ? a[1] : Py_None, &timeout_ns) < 0 ||
        bio_port_key("dst", a[2], &c.dst) < 0 || bio_port_key("src", a[3], &c.src) < 0)
        return NULL;
    c.fd = PyObject_AsFileDescriptor(a[0]);
    if (c.fd < 0 || bio_port_ring_ready(g) < 0 || bio_port_tx_scratch(g) < 0 ||
        bio_port_tx_room(g) < 0)
        return NULL;
    uint32_t room = g->tail - g->head;
    c.vlen = room < BIO_PORT_RECV_MAX ? room : BIO_PORT_RECV_MAX;
    c.deadline = timeout_ns < 0 ? -1 : bio_now_ns() + timeout_ns;
    g->busy = atomic_load(&bio_port_epoch);
    int r = bio_nogil_retry(bio_port_tx_recv_nogil, &c);
    g->busy = 0;
    if (r == -EINTR)
        return NULL;
    if (r == -EBADMSG)
        return bio_port_ring_bad_slot(g, c.bad, g->s->idx[c.bad & g->mask]);
    if (r < 0)
        return bio_port_ring_raise(g, r);
    return Py_BuildValue("(iKKK)", r, (unsigned long long)c.bytes,
                         (unsigned long long)c.truncated, (unsigned long long)c.syscalls);
}

/* ---- the type ---------------------------------------------------------------- */

static PyMethodDef bio_port_tx_methods[] = {
    BIO_PORT_RING_METHODS,
    {"put", (PyCFunction)(void (*)(void))bio_port_tx_put, METH_FASTCALL | METH_KEYWORDS,
     bio_port_tx_put_doc},
    {"claim", (PyCFunction)(void (*)(void))bio_port_tx_claim, METH_FASTCALL | METH_KEYWORDS,
     bio_port_tx_claim_doc},
    {"put_batch", (PyCFunction)(void (*)(void))bio_port_tx_put_batch,
     METH_FASTCALL | METH_KEYWORDS, bio_port_tx_put_batch_doc},
    {"recv_from", (PyCFunction)(void (*)(void))bio_port_tx_recv_from,
     METH_FASTCALL | METH_KEYWORDS, bio_port_tx_recv_from_doc},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods bio_port_tx_as_sequence = {.sq_length = (lenfunc)bio_port_ring_len};
PyTypeObject BioPortTx_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.PortTx",
    .tp_basicsize = sizeof(BioPortRing),
    .tp_dealloc = (destructor)bio_port_ring_dealloc,
    .tp_as_sequence = &bio_port_tx_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "PortTx(port)\n--\n\n"
              "The producing side of a port's TX ring (internal base of "
              "burstio.ports.PortTx). len() is the free slots owned.",
    .tp_weaklistoffset = offsetof(BioPortRing, weakrefs),
    .tp_methods = bio_port_tx_methods,
    .tp_members = bio_port_ring_members,
    .tp_getset = bio_port_ring_getset,
    .tp_new = bio_port_ring_new,
};

