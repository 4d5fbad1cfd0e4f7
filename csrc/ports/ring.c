/* Port rings: positions, publishing, kicks, and what PortTx and PortRx
 * share.
 *
 * Each ring is single producer / single consumer. Its control block has one
 * 128-byte side per party (ports/layout.h): the side's published position
 * (free-running u32: slots published by the producer, released by the
 * consumer), a sleeping flag with the position that should wake it, and the
 * side's counters. Each side keeps netmap's head/cur/tail privately: it owns
 * [head, tail) (TX: free slots to fill; RX: packets to read); sync()
 * publishes head with a release store and reads the other side's position
 * with an acquire load. Waiting for the peer is ports/wait.c.
 *
 * Where a packet goes through it: a TX side fills slots from head
 * (ports/tx.c), advances head and publishes it here; the RX side reads the
 * new position here, reads the packets (ports/rx.c), advances its head and
 * publishes it, which hands the slots back to the producer.
 */
#include "ports/ports.h"

#include <errno.h>
#include <stddef.h>
#include <structmember.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *const bio_port_counter_names[BIO_PORT_NCOUNTERS] = {
    "syncs", "kicks", "sleeps", "wakeups", "linger_hits", "timeouts", "forwarded_zerocopy",
    "forwarded_copied",
};

/* ---- positions, publishing, kicks ---------------------------------------- */

/* ---- wake sockets ----------------------------------------------------------- */

int
bio_port_wake_send(int fd)
{
    static const char one = 1;
    return fd >= 0 && send(fd, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1;
}

int
bio_port_wake_drain(int fd)
{
    char b[8];
    int n = 0;
    while (n < BIO_PORT_DRAIN_MAX) {
        ssize_t r = recv(fd, b, sizeof(b), MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        n++; /* a wake-up, or an error the peer caused (reading it clears it) */
    }
    return n;
}

/* ---- positions, publishing, kicks ---------------------------------------- */

int
bio_port_ring_busy(BioPortRing *g)
{
    return g->busy != 0 && g->busy == atomic_load(&bio_port_epoch); /* a fork ends calls */
}

/* Read the other side's position (acquire) into tail. 0, or -EBADMSG if it
 * is impossible from here (the shared memory is corrupt): beyond the ring,
 * or behind one read before (positions only move forward). nogil-safe. */
int
bio_port_ring_refresh(BioPortRing *g)
{
    uint32_t other = atomic_load_explicit(&g->peer->pos, memory_order_acquire);
    uint32_t tail = g->side == BIO_PORT_PROD ? other + g->cap : other;
    if ((uint32_t)(tail - g->head) > g->cap || (int32_t)(tail - g->tail) < 0)
        return -EBADMSG;
    g->tail = tail;
    return 0;
}

/* Wake the other side: one datagram on our wake socket, counted. nogil-safe. */
static void
bio_port_ring_kick(BioPortRing *g)
{
    if (bio_port_wake_send(g->kick_fd))
        BIO_COUNT(g->me->counters, BIO_PORT_C_KICKS, 1);
}

/* Publish head (release) and kick the other side if it sleeps waiting for a
 * position we have now reached; the exchange on its flag makes that one
 * kick per sleep. Nothing to do if head did not move. nogil-safe. */
void
bio_port_ring_publish(BioPortRing *g)
{
    if (g->head == g->published)
        return;
    atomic_store_explicit(&g->me->pos, g->head, memory_order_release);
    g->published = g->head;
    BIO_COUNT(g->me->counters, BIO_PORT_C_SYNCS, 1);
    atomic_thread_fence(memory_order_seq_cst); /* pairs with the sleeper's fence */
    if (!atomic_load_explicit(&g->peer->sleeping, memory_order_acquire))
        return;
    uint32_t at = atomic_load_explicit(&g->peer->wake_at, memory_order_relaxed);
    if ((int32_t)(g->head - at) >= 0 &&
        atomic_exchange_explicit(&g->peer->sleeping, 0, memory_order_acq_rel))
        bio_port_ring_kick(g);
}

/* State of the peer party (BIO_PORT_FREE / OPEN / CLOSED). */
uint32_t
bio_port_ring_peer_state(BioPortRing *g)
{
    return atomic_load_explicit(&g->reg->hdr->party[1 - g->party].state, memory_order_acquire);
}

/* ---- Python entry points shared by TX and RX ------------------------------ */

/* Raise for a failed ring operation (err < 0) and return NULL: the peer's
 * close or exit, corrupt shared memory, or a plain errno. GIL. */
PyObject *
bio_port_ring_raise(BioPortRing *g, int err)
{
    int peer = 1 - g->party;
    int pid = (int)atomic_load(&g->reg->hdr->party[peer].pid);
    if (err == -EPIPE)
        return bio_port_oserror(EPIPE, "port %d was closed by its owner (process %d): %s", peer,
                                pid, g->side == BIO_PORT_PROD ? "nothing sent now will be read"
                                                            : "nothing more will arrive");
    if (err == -ECONNRESET)
        return bio_port_oserror(ECONNRESET, "the process holding port %d (pid %d) exited "
                                "without closing it", peer, g->watch_pid ? g->watch_pid : pid);
    if (err == -EBADMSG)
        return bio_port_oserror(EBADMSG, "ring %d: the peer's position %u is impossible with "
                                "head %u and tail %u in a ring of %u slots: the shared memory "
                                "is corrupt", g->r, (unsigned)atomic_load(&g->peer->pos),
                                g->head, g->tail, g->reg->nslots);
    if (err == -ECANCELED) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed port (closed while this "
                        "call waited)");
        return NULL;
    }
    if (err == -ESTALE) {
        PyErr_Format(PyExc_RuntimeError, "port %d was taken over by process %d while this call "
                     "waited: this handle is stale (one process holds a port at a time)",
                     g->party, (int)atomic_load(&g->reg->hdr->party[g->party].pid));
        return NULL;
    }
    return bio_raise_errno(err);
}

/* Make g usable now: no call of another thread inside it, its port held by
 * this process, its head/cur/tail set up after a claim. 0, or -1 with an
 * exception. GIL. */
int
bio_port_ring_ready(BioPortRing *g)
{
    if (g->reg->switched) {
        PyErr_SetString(PyExc_RuntimeError, "this NIC port belongs to a switch: the switch moves "
                        "its frames");
        return -1;
    }
    if (bio_port_ring_busy(g)) {
        PyErr_SetString(PyExc_RuntimeError, "ring is in use by another call (a wait or "
                        "receive in another thread)");
        return -1;
    }
    if (bio_port_claim_ready(g->port) < 0)
        return -1;
    if (g->gen != g->port->gen) {
        g->head = g->cur = g->published = g->tail =
            atomic_load_explicit(&g->me->pos, memory_order_acquire);
        g->gen = g->port->gen;
        int r = bio_port_ring_refresh(g);
        if (r < 0) {
            bio_port_ring_raise(g, r);
            return -1;
        }
    }
    return 0;
}

/* Raise OSError(EBADMSG) for a slot naming a buffer outside the pool, or
 * a frame its region does not hold. */
PyObject *
bio_port_ring_bad_slot(BioPortRing *g, uint32_t pos, uint32_t idx)
{
    if (idx < g->reg->nbufs)
        return bio_port_oserror(EBADMSG, "slot %u of ring %d names frame %u, which its region "
                                "does not hold: a peer sharing the frame pool wrote it",
                                pos & g->mask, g->r, idx);
    return bio_port_oserror(EBADMSG, "slot %u of ring %d names buffer %u but the pool has %u: "
                            "the shared memory is corrupt", pos & g->mask, g->r, idx,
                           g->reg->nbufs);
}

/* PortTx(port) / PortRx(port): the producing side of ring `party` or the
 * consuming side of ring 1 - party; head/cur/tail are set up on first use. */
PyObject *
bio_port_ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"port", NULL};
    BioPortClaim *port;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kwlist, &BioPortClaim_Type, &port))
        return NULL;
    BioPortRing *g = (BioPortRing *)type->tp_alloc(type, 0);
    if (g == NULL)
        return NULL;
    BioPortRegion *reg = port->reg;
    int tx = PyType_IsSubtype(type, &BioPortTx_Type);
    g->port = (BioPortClaim *)Py_NewRef(port);
    g->reg = reg;
    g->party = port->party;
    g->side = tx ? BIO_PORT_PROD : BIO_PORT_CONS;
    g->r = tx ? g->party : 1 - g->party;
    g->cap = reg->cap;
    g->mask = reg->mask;
    g->me = &reg->ctl[g->r]->side[g->side];
    g->peer = &reg->ctl[g->r]->side[1 - g->side];
    g->s = &reg->slots[g->r];
    /* our end of each socketpair: sleep on one, wake the peer's other ring through
     * the other (TX: wait for room, announce data; RX: the reverse) */
    g->sleep_fd = reg->wake[g->party][tx ? BIO_PORT_WAKE_ROOM : BIO_PORT_WAKE_DATA];
    g->kick_fd = reg->wake[g->party][tx ? BIO_PORT_WAKE_DATA : BIO_PORT_WAKE_ROOM];
    g->watch_fd = -1;
    return (PyObject *)g;
}

void
bio_port_ring_dealloc(BioPortRing *g)
{
    if (g->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)g);
    bio_port_ring_unwatch(g);
    PyMem_RawFree(g->msgs);
    PyMem_RawFree(g->iov);
    Py_XDECREF(g->port);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

Py_ssize_t
bio_port_ring_len(BioPortRing *g)
{
    return (Py_ssize_t)(uint32_t)(g->tail - g->head);
}

const char bio_port_ring_sync_doc[] =
"sync($self, /)\n--\n\n"
"Publish head to the peer (kicking it only if it sleeps waiting for what\n"
"was published) and read the peer's progress into tail. Returns the slots\n"
"owned now: free slots (TX) or packets to read (RX).";

PyObject *
bio_port_ring_sync(BioPortRing *g, PyObject *Py_UNUSED(ignored))
{
    if (bio_port_ring_ready(g) < 0)
        return NULL;
    bio_port_ring_publish(g);
    int r = bio_port_ring_refresh(g);
    if (r == 0 && g->side == BIO_PORT_PROD && bio_port_ring_peer_state(g) == BIO_PORT_CLOSED)
        r = -EPIPE;
    if (r < 0)
        return bio_port_ring_raise(g, r);
    return PyLong_FromUnsignedLong(g->tail - g->head);
}

/* Parse wait()'s n (1..capacity) and timeout. 0 or -1 with an error set. */
static int
bio_port_ring_wait_args(BioPortRing *g, PyObject *n_obj, PyObject *timeout, uint32_t *want,
                        int64_t *timeout_ns)
{
    long long n = 1;
    if (n_obj != NULL && bio_args_int("n", n_obj, 1, g->cap, &n) < 0)
        return -1;
    *want = (uint32_t)n;
    return bio_timeout_parse(timeout ? timeout : Py_None, timeout_ns);
}

/* The outcome of a wait: the slots owned, or an error. A closed or exited
 * peer is an error on TX, and on RX once nothing is left to read. GIL. */
static PyObject *
bio_port_ring_wait_result(BioPortRing *g, int r)
{
    if (r == -ECONNRESET || r == -EPIPE) {
        int e = bio_port_ring_refresh(g);
        if (e < 0)
            return bio_port_ring_raise(g, e);
        if (g->side == BIO_PORT_CONS && g->tail != g->head)
            return PyLong_FromUnsignedLong(g->tail - g->head);
    }
    if (r < 0)
        return bio_port_ring_raise(g, r);
    return PyLong_FromUnsignedLong(g->tail - g->head);
}

const char bio_port_ring_wait_doc[] =
"wait($self, /, n=1, timeout=None)\n--\n\n"
"sync(), then wait until n slots lie beyond cur (TX: free; RX: packets):\n"
"spin for `linger_ns`, then sleep until the peer kicks. Returns the slots\n"
"owned (fewer than n after the timeout). Raises ConnectionResetError if the\n"
"peer's process exits, BrokenPipeError if it closed its port (RX: once\n"
"everything it sent has been read).";

PyObject *
bio_port_ring_wait(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"n", "timeout", NULL};
    PyObject *a[2];
    BioPortWait w = {.g = g};
    int64_t timeout_ns;
    if (bio_args_parse("wait", args, nargs, kwnames, names, 2, 0, a) < 0 ||
        bio_port_ring_wait_args(g, a[0], a[1], &w.want, &timeout_ns) < 0 ||
        bio_port_ring_ready(g) < 0)
        return NULL;
    bio_port_ring_publish(g);
    int r = bio_port_ring_refresh(g);
    if (r == 0 && (uint32_t)(g->tail - g->cur) < w.want) {
        int64_t now = bio_now_ns();
        w.deadline = timeout_ns < 0 ? -1 : now + timeout_ns;
        w.linger_end = now + g->linger_ns;
        g->busy = atomic_load(&bio_port_epoch);
        r = bio_nogil_retry(bio_port_ring_wait_nogil, &w);
        g->busy = 0;
        if (r == -EINTR)
            return NULL;
    }
    return bio_port_ring_wait_result(g, r);
}

const char bio_port_ring_advance_doc[] =
"advance($self, n=None, /)\n--\n\n"
"Hand n owned slots (default: all) over at the next sync: head and cur\n"
"move past them. TX: they hold packets now; RX: they are free again.";

PyObject *
bio_port_ring_advance(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "advance() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    if (bio_port_ring_ready(g) < 0)
        return NULL;
    uint32_t owned = g->tail - g->head;
    long n = owned;
    if (nargs == 1 && args[0] != Py_None) {
        n = PyLong_AsLong(args[0]);
        if (n == -1 && PyErr_Occurred())
            return NULL;
    }
    if (n < 0 || (unsigned long)n > owned) {
        PyErr_Format(PyExc_ValueError, "advance(%ld): only %u slots are owned (head to tail)",
                     n, owned);
        return NULL;
    }
    g->head += (uint32_t)n;
    if ((int32_t)(g->cur - g->head) < 0)
        g->cur = g->head;
    Py_RETURN_NONE;
}

/* counters() / peer_counters(): one side's counters of this ring. */
static PyObject *
bio_port_side_counters(BioPortSide *side)
{
    return bio_counters_dict(side->counters, bio_port_counter_names, BIO_PORT_NCOUNTERS);
}

const char bio_port_ring_counters_doc[] =
"counters($self, /)\n--\n\n"
"A dict of this side's syncs, kicks, sleeps, wakeups, linger_hits and timeouts.";
const char bio_port_ring_peer_counters_doc[] =
"peer_counters($self, /)\n--\n\n"
"A dict of the same counters of the other side of this ring.";

PyObject *
bio_port_ring_counters(BioPortRing *g, PyObject *Py_UNUSED(ignored))
{
    return bio_port_side_counters(g->me);
}

PyObject *
bio_port_ring_peer_counters(BioPortRing *g, PyObject *Py_UNUSED(ignored))
{
    return bio_port_side_counters(g->peer);
}

static PyObject *
bio_port_ring_get_pos(BioPortRing *g, void *which)
{
    uint32_t v = which == (void *)0 ? g->head : which == (void *)1 ? g->cur : g->tail;
    return PyLong_FromUnsignedLong(v & g->mask);
}

/* cur = v: a ring index between head and tail (netmap's rule). */
static int
bio_port_ring_set_cur(BioPortRing *g, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete cur");
        return -1;
    }
    long i = PyLong_AsLong(v);
    if (i == -1 && PyErr_Occurred())
        return -1;
    uint32_t rel = ((uint32_t)i - g->head) & g->mask, owned = g->tail - g->head;
    if (i < 0 || i > (long)g->mask || rel > owned) {
        PyErr_Format(PyExc_ValueError, "cur must be a ring index from head (%u) to tail (%u), "
                     "got %ld", g->head & g->mask, g->tail & g->mask, i);
        return -1;
    }
    g->cur = g->head + rel;
    return 0;
}

static PyObject *
bio_port_ring_get_peer_pid(BioPortRing *g, void *c)
{
    return PyLong_FromLong(atomic_load(&g->reg->hdr->party[1 - g->party].pid));
}

/* ---- attributes -------------------------------------------------------- */

PyMemberDef bio_port_ring_members[] = {
    {"linger_ns", T_LONGLONG, offsetof(BioPortRing, linger_ns), 0,
     "how long wait() spins on the peer's position before it sleeps (ns)"},
    {"capacity", T_UINT, offsetof(BioPortRing, cap), READONLY,
     "slots that can be in flight (slots - 1, as in netmap)"},
    {"ring", T_INT, offsetof(BioPortRing, r), READONLY, "index of the ring in its region"},
    {"port", T_OBJECT, offsetof(BioPortRing, port), READONLY, "the PortClaim"},
    {NULL, 0, 0, 0, NULL},
};

PyGetSetDef bio_port_ring_getset[] = {
    {"head", (getter)bio_port_ring_get_pos, NULL, "first owned slot (ring index)", (void *)0},
    {"cur", (getter)bio_port_ring_get_pos, (setter)bio_port_ring_set_cur,
     "wake-up point: wait(n) waits for n slots beyond cur (ring index, head..tail)",
     (void *)1},
    {"tail", (getter)bio_port_ring_get_pos, NULL, "first slot not owned (ring index)", (void *)2},
    {"peer_pid", (getter)bio_port_ring_get_peer_pid, NULL,
     "pid recorded by the peer's port (0: not claimed yet)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

