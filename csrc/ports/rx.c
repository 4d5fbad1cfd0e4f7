/* PortRx: the consuming side of a port's RX ring.
 *
 * Where a packet goes through it: after sync() or wait() (ports/ring.c)
 * has read the producer's position, rx[i] is a memoryview of owned packet
 * i in the region's buffers (no copy), dst(i)/src(i)/flags(i)/addr(i) its
 * metadata; peek() makes a PacketBatch point at the packets (to send them
 * on a socket without a copy); forward() moves them to a TX ring by
 * swapping buffer indices where both share their buffers (one region, or
 * one frame pool: ports/frames.c checks each frame) and by copying
 * otherwise; advance() releases the slots.
 */
#include "ports/ports.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>


/* ---- reading packets ---------------------------------------------------------- */

/* Position of owned packet i (0 = head), or raise IndexError. */
static int
bio_port_rx_index(BioPortRing *g, Py_ssize_t i, uint32_t *pos)
{
    uint32_t owned = g->tail - g->head;
    if (i < 0)
        i += owned;
    if (i < 0 || i >= (Py_ssize_t)owned) {
        PyErr_Format(PyExc_IndexError, "ring index out of range (%u packets are owned)", owned);
        return -1;
    }
    *pos = g->head + (uint32_t)i;
    return 0;
}

/* Length of the packet at pos, never more than a slot. */
static uint32_t
bio_port_rx_len(BioPortRing *g, uint32_t pos)
{
    uint32_t len = __atomic_load_n(&g->s->len[pos & g->mask], __ATOMIC_RELAXED);
    return len > g->reg->slot_size ? g->reg->slot_size : len;
}

/* rx[i]: writable memoryview of owned packet i's payload (no copy). */
static PyObject *
bio_port_rx_item(BioPortRing *g, Py_ssize_t i)
{
    uint32_t pos, idx;
    if (bio_port_ring_ready(g) < 0 || bio_port_rx_index(g, i, &pos) < 0)
        return NULL;
    unsigned char *buf = bio_port_ring_buf(g, pos, &idx);
    if (buf == NULL)
        return bio_port_ring_bad_slot(g, pos, idx);
    Py_ssize_t off = buf - g->reg->pbase;
    return PySequence_GetSlice(g->reg->pview, off, off + bio_port_rx_len(g, pos));
}

/* Read one u32 array of owned packet i: dst(i), src(i), flags(i). */
static PyObject *
bio_port_rx_field(BioPortRing *g, PyObject *arg, uint32_t *array)
{
    uint32_t pos;
    Py_ssize_t i = PyNumber_AsSsize_t(arg, PyExc_IndexError);
    if ((i == -1 && PyErr_Occurred()) || bio_port_ring_ready(g) < 0 ||
        bio_port_rx_index(g, i, &pos) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(__atomic_load_n(&array[pos & g->mask], __ATOMIC_RELAXED));
}

static PyObject *
bio_port_rx_dst(BioPortRing *g, PyObject *arg)
{
    return bio_port_rx_field(g, arg, g->s->dst);
}

static PyObject *
bio_port_rx_src(BioPortRing *g, PyObject *arg)
{
    return bio_port_rx_field(g, arg, g->s->src);
}

static PyObject *
bio_port_rx_flags(BioPortRing *g, PyObject *arg)
{
    return bio_port_rx_field(g, arg, g->s->flags);
}

static PyObject *
bio_port_rx_addr(BioPortRing *g, PyObject *arg)
{
    uint32_t pos;
    Py_ssize_t i = PyNumber_AsSsize_t(arg, PyExc_IndexError);
    if ((i == -1 && PyErr_Occurred()) || bio_port_ring_ready(g) < 0 ||
        bio_port_rx_index(g, i, &pos) < 0)
        return NULL;
    struct sockaddr_in6 name = g->s->names[pos & g->mask];
    if (name.sin6_family != AF_INET && name.sin6_family != AF_INET6)
        name.sin6_family = 0;
    return bio_addr_build(&name);
}

/* Lower *n to an optional count argument (None/absent: no limit). 0, or -1
 * with TypeError/ValueError. */
static int
bio_port_count_arg(PyObject *obj, uint32_t *n)
{
    if (obj == NULL || obj == Py_None)
        return 0;
    long c = PyLong_AsLong(obj);
    if (c == -1 && PyErr_Occurred())
        return -1;
    if (c < 0) {
        PyErr_Format(PyExc_ValueError, "count must be >= 0, got %ld", c);
        return -1;
    }
    if ((unsigned long)c < *n)
        *n = (uint32_t)c;
    return 0;
}

/* Point batch entry j at the packet at pos (offset into the region). 0, or
 * -1 with OSError(EBADMSG). */
static int
bio_port_rx_entry(BioPortRing *g, BioBatch *b, Py_ssize_t j, uint32_t pos)
{
    uint32_t idx, k = pos & g->mask;
    unsigned char *buf = bio_port_ring_buf(g, pos, &idx);
    if (buf == NULL) {
        bio_port_ring_bad_slot(g, pos, idx);
        return -1;
    }
    b->offsets[j] = (uint64_t)(buf - g->reg->pbase);
    b->lengths[j] = bio_port_rx_len(g, pos);
    b->flags[j] = __atomic_load_n(&g->s->flags[k], __ATOMIC_RELAXED) & BIO_FLAG_TRUNCATED;
    b->segment_sizes[j] = 0;
    b->timestamps[j] = 0;
    b->sockets[j] = 0;
    b->errnos[j] = 0;
    b->names[j] = g->s->names[k];
    if (b->names[j].sin6_family != AF_INET && b->names[j].sin6_family != AF_INET6)
        b->names[j].sin6_family = 0;
    return 0;
}

PyDoc_STRVAR(bio_port_rx_peek_doc,
"peek($self, /, batch, count=None)\n--\n\n"
"Zero copy: make the PacketBatch's entries point at the owned packets from\n"
"head on (at most count, and the batch's capacity), in the region's memory.\n"
"batch[i], batch.offsets/lengths (offsets into `memory`) and\n"
"BurstSocket.send_batch(batch) then read the ring itself. Valid until those\n"
"slots are advanced past. Returns the entries made.");

static PyObject *
bio_port_rx_peek(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"batch", "count", NULL};
    PyObject *a[2];
    if (bio_args_parse("peek", args, nargs, kwnames, names, 2, 1, a) < 0 ||
        bio_batch_arg("peek", a[0]) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)a[0];
    uint32_t owned = g->tail - g->head;
    if (bio_port_count_arg(a[1], &owned) < 0 || bio_batch_check_idle(b) < 0 ||
        bio_port_ring_ready(g) < 0)
        return NULL;
    Py_ssize_t n = (Py_ssize_t)owned < b->capacity ? (Py_ssize_t)owned : b->capacity;
    bio_batch_reset(b);
    b->ext_view = Py_NewRef(g->reg->pview);
    b->ext_source = Py_NewRef((PyObject *)g->reg->pmem);
    b->data = g->reg->pbase;
    b->data_len = g->reg->pmem->size;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (bio_port_rx_entry(g, b, j, g->head + (uint32_t)j) < 0) {
            bio_batch_reset(b);
            return NULL;
        }
    }
    b->count = n;
    return PyLong_FromSsize_t(n);
}

/* ---- forwarding: swapping buffers where both rings share them, else copying ---- */

/* How forward() moves packets from ring g to ring t. */
enum { BIO_FWD_SWAP, BIO_FWD_SWAP_FRAMES, BIO_FWD_COPY };

/* What a forward could not take: a frame or buffer index, and whether the
 * TX ring's slot named it (else the RX ring's). */
typedef struct {
    uint32_t idx;
    int tx;
} BioFwdBad;

/* Swap within one region; swap frames between regions on one pool, in the
 * process that keeps its frame table (ports/frames.c: a forked child's copy
 * of the table is not the table, so a child copies); else copy. */
static int
bio_port_fwd_how(BioPortRing *g, BioPortRing *t)
{
    if (t->reg == g->reg)
        return BIO_FWD_SWAP;
    PyObject *u = g->reg->frames;
    return u != NULL && u == t->reg->frames && bio_umem_ours((BioUmem *)u) ? BIO_FWD_SWAP_FRAMES
                                                                          : BIO_FWD_COPY;
}

/* Length of the packet at pos of g for a slot of t: clipped to both; the
 * flags get FLAG_TRUNCATED if t's slot is the smaller. */
static uint32_t
bio_port_fwd_len(BioPortRing *g, BioPortRing *t, uint32_t pos, uint32_t *flags)
{
    uint32_t len = bio_port_rx_len(g, pos);
    *flags = __atomic_load_n(&g->s->flags[pos & g->mask], __ATOMIC_RELAXED);
    if (len > t->reg->slot_size) {
        len = t->reg->slot_size;
        *flags |= BIO_FLAG_TRUNCATED;
    }
    return len;
}

/* Commit the packet at pos of g into the slot at t's head (its buffer in
 * place already), with a private copy of its metadata. */
static void
bio_port_fwd_commit(BioPortRing *g, BioPortRing *t, uint32_t pos)
{
    uint32_t k = pos & g->mask, flags, len = bio_port_fwd_len(g, t, pos, &flags);
    struct sockaddr_in6 name;
    memcpy(&name, &g->s->names[k], sizeof(name));
    bio_port_tx_commit(t, len, flags, __atomic_load_n(&g->s->dst[k], __ATOMIC_RELAXED),
                       __atomic_load_n(&g->s->src[k], __ATOMIC_RELAXED), &name);
}

/* Move one packet from g's slot at pos to t's head by swapping the two
 * slots' buffers. Across regions on one pool both frames are checked
 * against the frame table first (each slot's peer may have rewritten its
 * index) and change hands there. 0, or -EBADMSG (nothing moved; *bad says
 * which frame failed, in whose slot). */
static int
bio_port_fwd_swap(BioPortRing *g, BioPortRing *t, uint32_t pos, int how, BioFwdBad *bad)
{
    uint32_t rk = pos & g->mask, tk = t->head & t->mask;
    uint32_t f = __atomic_load_n(&g->s->idx[rk], __ATOMIC_RELAXED);
    uint32_t h = __atomic_load_n(&t->s->idx[tk], __ATOMIC_RELAXED);
    if (how == BIO_FWD_SWAP_FRAMES) {
        if (!bio_port_frames_held(g->reg, f) || !bio_port_frames_held(t->reg, h)) {
            bad->tx = bio_port_frames_held(g->reg, f);
            bad->idx = bad->tx ? h : f;
            return -EBADMSG;
        }
        bio_port_frames_move(t->reg, f);
        bio_port_frames_move(g->reg, h);
    }
    __atomic_store_n(&g->s->idx[rk], h, __ATOMIC_RELAXED);
    __atomic_store_n(&t->s->idx[tk], f, __ATOMIC_RELAXED);
    bio_port_fwd_commit(g, t, pos);
    return 0;
}

/* Copy one packet from g's slot at pos into the buffer of t's head slot.
 * 0, or -EBADMSG if either slot names a buffer outside its pool (*bad). */
static int
bio_port_fwd_copy(BioPortRing *g, BioPortRing *t, uint32_t pos, BioFwdBad *bad)
{
    uint32_t fi, ti, flags;
    unsigned char *from = bio_port_ring_buf(g, pos, &fi), *to = bio_port_ring_buf(t, t->head, &ti);
    if (from == NULL || to == NULL) {
        bad->tx = from != NULL;
        bad->idx = bad->tx ? ti : fi;
        return -EBADMSG;
    }
    memcpy(to, from, bio_port_fwd_len(g, t, pos, &flags));
    bio_port_fwd_commit(g, t, pos);
    return 0;
}

/* Raise OSError(EBADMSG) for a frame or buffer index a forward() (k < 0)
 * or spread() (to txs[k]) could not take, with `sent` (the packets moved
 * before it) and, from spread() when the TX ring's slot named it, `index`
 * (k) on the exception. */
static PyObject *
bio_port_fwd_bad(BioPortRing *g, BioPortRing *t, int how, BioFwdBad bad, uint32_t sent, int k)
{
    char to[48] = "";
    if (k >= 0 && bad.tx)
        snprintf(to, sizeof(to), " (in the slot of txs[%d])", k);
    const char *call = k >= 0 ? "spread" : "forward";
    if (how == BIO_FWD_SWAP_FRAMES)
        bio_port_oserror(EBADMSG, "%s(): frame %u is not one the ring's region holds%s: a "
                         "peer sharing the frame pool wrote it (%u packets were moved first)",
                         call, bad.idx, to, sent);
    else
        bio_port_oserror(EBADMSG, "%s(): a slot names buffer %u, outside its pool (of %u "
                         "and %u)%s: the shared memory is corrupt (%u packets were moved first)",
                         call, bad.idx, g->reg->nbufs, t->reg->nbufs, to, sent);
    bio_exc_note_sent((Py_ssize_t)sent);
    if (k >= 0 && bad.tx) {
        PyObject *type, *value, *tb, *index = PyLong_FromLong(k);
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (value != NULL && index != NULL && PyObject_SetAttrString(value, "index", index) < 0)
            PyErr_Clear();
        Py_XDECREF(index);
        PyErr_Restore(type, value, tb);
    }
    return NULL;
}

/* Parse forward()'s arguments: the TX ring (t) and the count (*n, already
 * the packets owned). 0 or -1. */
static int
bio_port_fwd_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, BioPortRing **t,
                  uint32_t *n)
{
    static const char *const names[] = {"tx", "count", NULL};
    PyObject *a[2];
    if (bio_args_parse("forward", args, nargs, kwnames, names, 2, 1, a) < 0)
        return -1;
    if (!PyObject_TypeCheck(a[0], &BioPortTx_Type)) {
        PyErr_Format(PyExc_TypeError, "forward() argument 1 must be a TX ring, not %.100s",
                     Py_TYPE(a[0])->tp_name);
        return -1;
    }
    *t = (BioPortRing *)a[0];
    return bio_port_count_arg(a[1], n);
}

PyDoc_STRVAR(bio_port_rx_forward_doc,
"forward($self, /, tx, count=None)\n--\n\n"
"Move owned packets to a TX ring. Zero copy where both rings share their\n"
"buffers (the same region: this port's tx, to echo through a pipe; or two\n"
"regions on one frame pool in the process that made it: a NIC port and its\n"
"pipes): each packet's buffer goes to the TX slot and the TX slot's free\n"
"buffer comes back to this slot. Anything else is copied into the TX slot's\n"
"buffer (clipped to it, FLAG_TRUNCATED). Counted in counters() as\n"
"forwarded_zerocopy / forwarded_copied. Both heads advance. Returns the\n"
"packets moved (limited by both rings).");

static PyObject *
bio_port_rx_forward(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    BioPortRing *t;
    BioFwdBad bad = {0, 0};
    uint32_t n = g->tail - g->head;
    if (bio_port_fwd_args(args, nargs, kwnames, &t, &n) < 0 || bio_port_ring_ready(g) < 0 ||
        bio_port_ring_ready(t) < 0)
        return NULL;
    int r = n > (uint32_t)(t->tail - t->head) ? bio_port_ring_refresh(t) : 0;
    if (r < 0)
        return bio_port_ring_raise(t, r);
    if (n > (uint32_t)(t->tail - t->head))
        n = t->tail - t->head;
    int how = bio_port_fwd_how(g, t);
    uint32_t j = 0;
    for (; j < n && r == 0; j++)
        r = how == BIO_FWD_COPY ? bio_port_fwd_copy(g, t, g->head + j, &bad)
                                : bio_port_fwd_swap(g, t, g->head + j, how, &bad);
    j -= r < 0; /* the one that failed did not move */
    g->head += j;
    if ((int32_t)(g->cur - g->head) < 0)
        g->cur = g->head;
    BIO_COUNT(g->me->counters, how == BIO_FWD_COPY ? BIO_PORT_C_FWD_COPIED : BIO_PORT_C_FWD_SWAPPED,
              j);
    if (r < 0)
        return bio_port_fwd_bad(g, t, how, bad, j, -1);
    return PyLong_FromUnsignedLong(j);
}

/* ---- spreading: forward() to several TX rings, each packet to one -------------- */

#define BIO_SPREAD_MAX 64 /* TX rings of one spread() */

/* How spread() picks a packet's TX ring. */
enum { BIO_SPREAD_FLOW, BIO_SPREAD_RR };

typedef struct {
    BioPortRing *t[BIO_SPREAD_MAX];
    int how[BIO_SPREAD_MAX], n, by;
} BioSpread;

/* Parse spread()'s TX rings and `by`, and make each usable. 0 or -1. */
static int
bio_port_spread_args(BioPortRing *g, PyObject *txs, PyObject *by, BioSpread *sp)
{
    PyObject *seq = PySequence_Fast(txs, "spread() argument 1 must be a sequence of TX rings");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int ok = n >= 1 && n <= BIO_SPREAD_MAX;
    for (Py_ssize_t k = 0; ok && k < n; k++)
        ok = PyObject_TypeCheck(PySequence_Fast_GET_ITEM(seq, k), &BioPortTx_Type);
    if (!ok) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_TypeError, "spread() argument 1 must be a sequence of 1 to %d TX "
                     "rings", BIO_SPREAD_MAX);
        return -1;
    }
    sp->n = (int)n;
    for (int k = 0; k < sp->n; k++) {
        BioPortRing *t = (BioPortRing *)PySequence_Fast_GET_ITEM(seq, k);
        sp->t[k] = t;
        sp->how[k] = bio_port_fwd_how(g, t);
    }
    Py_DECREF(seq); /* the caller's sequence keeps the rings alive for the call */
    const char *b = by == NULL ? "flow" : PyUnicode_Check(by) ? PyUnicode_AsUTF8(by) : NULL;
    if (b == NULL || (strcmp(b, "flow") != 0 && strcmp(b, "round-robin") != 0)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "by must be 'flow' or 'round-robin'");
        return -1;
    }
    sp->by = strcmp(b, "flow") == 0 ? BIO_SPREAD_FLOW : BIO_SPREAD_RR;
    for (int k = 0; k < sp->n; k++)
        if (bio_port_ring_ready(sp->t[k]) < 0)
            return -1;
    return 0;
}

#define BIO_SPREAD_PREFETCH 4 /* packets ahead whose headers spread(by='flow') loads early */

/* Start loading the first bytes (the headers a flow's hash reads) of the
 * buffer of the slot at pos of g: a frame the kernel wrote a moment ago is
 * rarely in the cache yet, and the pool's frames share few cache sets.
 * Nothing is read from a buffer outside the pool (a prefetch never faults). */
static inline void
bio_port_spread_prefetch(BioPortRing *g, uint32_t pos)
{
    uint32_t idx = __atomic_load_n(&g->s->idx[pos & g->mask], __ATOMIC_RELAXED);
    if (idx < g->reg->nbufs)
        __builtin_prefetch(g->reg->bufs + (size_t)idx * g->reg->stride, 0);
}

/* The TX ring the packet at pos goes to: by its flow's hash, or in turn. */
static int
bio_port_spread_pick(BioPortRing *g, const BioSpread *sp, uint32_t pos)
{
    if (sp->by == BIO_SPREAD_RR)
        return (int)(g->turn++ % (uint32_t)sp->n);
    uint32_t idx;
    const unsigned char *buf = bio_port_ring_buf(g, pos, &idx);
    return buf == NULL ? 0 : (int)(bio_port_flow_hash(buf, bio_port_rx_len(g, pos)) % (uint32_t)sp->n);
}

PyDoc_STRVAR(bio_port_rx_spread_doc,
"spread($self, /, txs, by='flow', count=None)\n--\n\n"
"forward() to several TX rings: each owned packet goes to one of them, by\n"
"the hash of its flow (by='flow': an Ethernet frame's IP addresses, protocol\n"
"and ports, so that a flow stays on one ring) or in turn (by='round-robin'),\n"
"zero copy where the rings share their buffers and copied otherwise, as\n"
"forward() does. Stops at the first packet whose ring is full (packets keep\n"
"their order). Returns the packets moved; publish each TX ring with sync().\n"
"A frame a peer sharing the pool made impossible raises OSError(EBADMSG)\n"
"with .sent, and .index when the slot of a TX ring named it: its position\n"
"in txs (that ring's worker broke it: leave it out and call again).");

static PyObject *
bio_port_rx_spread(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"txs", "by", "count", NULL};
    PyObject *a[3];
    BioSpread sp;
    BioFwdBad bad = {0, 0};
    uint32_t n = g->tail - g->head, j = 0;
    if (bio_args_parse("spread", args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_port_count_arg(a[2], &n) < 0 || bio_port_ring_ready(g) < 0 ||
        bio_port_spread_args(g, a[0], a[1], &sp) < 0)
        return NULL;
    int r = 0, k = 0;
    uint64_t swapped = 0;
    if (sp.by == BIO_SPREAD_FLOW)
        for (uint32_t a = 0; a < BIO_SPREAD_PREFETCH && a < n; a++)
            bio_port_spread_prefetch(g, g->head + a);
    for (; j < n; j++) {
        if (sp.by == BIO_SPREAD_FLOW && j + BIO_SPREAD_PREFETCH < n)
            bio_port_spread_prefetch(g, g->head + j + BIO_SPREAD_PREFETCH);
        BioPortRing *t = sp.t[k = bio_port_spread_pick(g, &sp, g->head + j)];
        if (t->tail == t->head && (r = bio_port_ring_refresh(t)) < 0)
            return bio_port_ring_raise(t, r);
        if (t->tail == t->head) {
            g->turn -= sp.by == BIO_SPREAD_RR; /* its turn again next time */
            break;
        }
        r = sp.how[k] == BIO_FWD_COPY ? bio_port_fwd_copy(g, t, g->head + j, &bad)
                                       : bio_port_fwd_swap(g, t, g->head + j, sp.how[k], &bad);
        if (r < 0)
            break;
        swapped += sp.how[k] != BIO_FWD_COPY;
    }
    g->head += j;
    if ((int32_t)(g->cur - g->head) < 0)
        g->cur = g->head;
    BIO_COUNT(g->me->counters, BIO_PORT_C_FWD_SWAPPED, swapped);
    BIO_COUNT(g->me->counters, BIO_PORT_C_FWD_COPIED, j - swapped);
    if (r < 0)
        return bio_port_fwd_bad(g, sp.t[k], sp.how[k], bad, j, k);
    return PyLong_FromUnsignedLong(j);
}

/* ---- the type ---------------------------------------------------------------- */

static PyMethodDef bio_port_rx_methods[] = {
    BIO_PORT_RING_METHODS,
    {"peek", (PyCFunction)(void (*)(void))bio_port_rx_peek, METH_FASTCALL | METH_KEYWORDS,
     bio_port_rx_peek_doc},
    {"forward", (PyCFunction)(void (*)(void))bio_port_rx_forward, METH_FASTCALL | METH_KEYWORDS,
     bio_port_rx_forward_doc},
    {"spread", (PyCFunction)(void (*)(void))bio_port_rx_spread, METH_FASTCALL | METH_KEYWORDS,
     bio_port_rx_spread_doc},
    {"dst", (PyCFunction)bio_port_rx_dst, METH_O,
     "dst($self, i, /)\n--\n\nThe destination key of packet i."},
    {"src", (PyCFunction)bio_port_rx_src, METH_O,
     "src($self, i, /)\n--\n\nThe source key of packet i."},
    {"flags", (PyCFunction)bio_port_rx_flags, METH_O,
     "flags($self, i, /)\n--\n\nThe FLAG_* bits of packet i."},
    {"addr", (PyCFunction)bio_port_rx_addr, METH_O,
     "addr($self, i, /)\n--\n\nThe socket address of packet i, or None."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods bio_port_rx_as_sequence = {
    .sq_length = (lenfunc)bio_port_ring_len,
    .sq_item = (ssizeargfunc)bio_port_rx_item,
};

PyTypeObject BioPortRx_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.PortRx",
    .tp_basicsize = sizeof(BioPortRing),
    .tp_dealloc = (destructor)bio_port_ring_dealloc,
    .tp_as_sequence = &bio_port_rx_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "PortRx(port)\n--\n\n"
              "The consuming side of a port's RX ring (internal base of "
              "burstio.ports.PortRx). len() is the packets owned; rx[i] packet i.",
    .tp_weaklistoffset = offsetof(BioPortRing, weakrefs),
    .tp_methods = bio_port_rx_methods,
    .tp_members = bio_port_ring_members,
    .tp_getset = bio_port_ring_getset,
    .tp_new = bio_port_ring_new,
};
