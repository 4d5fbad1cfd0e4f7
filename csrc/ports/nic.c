/* NIC ports: one AF_XDP socket's device queue behind the two rings of a
 * port region, netmap style, so that code written against a port runs on a
 * NIC queue unchanged.
 *
 * The region's buffers are the frames of a pool that is also the socket's
 * UMEM (ports/frames.c keeps which region holds each frame). The
 * application holds port 1 with the ordinary PortRx/PortTx (ports/rx.c,
 * ports/tx.c): its RX ring is ring 0, its TX ring ring 1. Port 0 is this
 * pump, in the same process: where a pipe's peer would publish, the pump
 * moves descriptors between the AF_XDP rings and the port's slots, inside
 * the application's own sync() and wait() (as netmap's rxsync and txsync
 * run inside its ioctl), or in each pass of a switch the queue is attached
 * to (ports/forward.c).
 *
 * Where a frame goes through it: in, the kernel receives into a frame the
 * fill ring gave it and puts a descriptor on the rx ring; the pump checks
 * it (a frame the fill ring gave, inside its chunk), makes the frame the
 * buffer of the next free RX slot (the data moved to the slot's offset if
 * the kernel put it elsewhere) and publishes; when the application
 * releases the slot, the frame it names (checked: one the region holds)
 * goes back to the free list and from there to the fill ring. Out, the
 * application fills TX slots and publishes; the pump takes each slot's
 * frame (checked the same way) onto the tx ring, gives the slot a fresh
 * free frame, hands the slot back and kicks the kernel; the completion ring
 * returns the frame to the free list. A frame moved to a pipe by forward()
 * leaves the region's hands in the frame table, and one that comes back
 * joins them again, so the pump never takes a frame it did not give.
 */
#include "ports/ports.h"
#include "xdp/xdp.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#define BIO_NIC_TX_SLICE_NS 100000 /* a TX wait looks for completions this often */
#define BIO_NIC_GATHER_NS 100000   /* an RX wait holding fewer frames than it wants looks again
                                    * this often rather than at each of the kernel's wake-ups */

static const char *const bio_nic_counter_names[BIO_NIC_NCOUNTERS] = {
    "rx_frames", "rx_moved", "returned_bad", "tx_frames", "tx_bad", "tx_ring_full",
    "tx_no_frame",
};

/* ---- the pump: receiving ---------------------------------------------------------- */

/* Give the frames of the RX slots the application released since the last
 * pump back to the free list; a slot naming a frame the region does not
 * hold is counted and its index ignored. */
static void
bio_nic_reclaim(BioNic *c)
{
    BioPortRing *g = c->prod;
    BioUmem *u = c->xsk->umem;
    uint32_t released = g->tail - g->cap;
    for (; c->reclaimed != released; c->reclaimed++) {
        uint32_t f = __atomic_load_n(&g->s->idx[c->reclaimed & g->mask], __ATOMIC_RELAXED);
        if (bio_port_frames_held(c->reg, f))
            bio_umem_drop(u, f, BIO_FRAME_PORT);
        else
            BIO_COUNT(c->counters, BIO_NIC_C_RETURNED_BAD, 1);
    }
}

/* Make the frame of descriptor d the buffer of the free RX slot at the
 * producer's head, checked: a frame the fill ring gave, the packet inside
 * it. 1 if it was, 0 if not (counted; the frame goes back). */
static int
bio_nic_rx_desc(BioNic *c, const struct xdp_desc *d)
{
    static const struct sockaddr_in6 none;
    BioPortRing *g = c->prod;
    BioUmem *u = c->xsk->umem;
    int64_t f = bio_umem_frame_of(u, d->addr);
    uint64_t at = f >= 0 ? bio_umem_in_frame(u, d->addr) : 0;
    if (f < 0 || at + d->len > u->frame_size || u->state[f] != BIO_FRAME_FILL) {
        BIO_COUNT(c->xsk->counters, BIO_XSK_RX_BAD_DESCS, 1);
        if (f >= 0 && u->state[f] == BIO_FRAME_FILL)
            bio_umem_drop(u, (uint32_t)f, BIO_FRAME_FILL);
        return 0;
    }
    uint32_t len = d->len, flags = 0;
    if (len > g->reg->slot_size) {
        len = g->reg->slot_size;
        flags |= BIO_FLAG_TRUNCATED;
    }
    if (d->options & XDP_PKT_CONTD)
        flags |= BIO_XSK_FLAG_CONTINUES;
    unsigned char *frame = u->area + ((uint64_t)f << u->frame_shift);
    if (at != c->offset) { /* an XDP program moved the data: put it where a slot starts */
        memmove(frame + c->offset, frame + at, len);
        BIO_COUNT(c->counters, BIO_NIC_C_RX_MOVED, 1);
    }
    u->state[f] = BIO_FRAME_PORT;
    u->lease_of[f] = c->reg;
    __atomic_store_n(&g->s->idx[g->head & g->mask], (uint32_t)f, __ATOMIC_RELAXED);
    bio_port_tx_commit(g, len, flags, 0, 0, &none);
    return 1;
}

/* Move what the rx ring holds into the free RX slots. Returns frames moved. */
static uint32_t
bio_nic_rx_take(BioNic *c)
{
    BioXsk *x = c->xsk;
    uint32_t room = c->prod->tail - c->prod->head, got = 0;
    uint32_t n = bio_ring_cons_ready(&x->rx, room), at = x->rx.cached_cons;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct xdp_desc d = *bio_ring_desc(&x->rx, at + i); /* read once */
        if (bio_nic_rx_desc(c, &d)) {
            got++;
            bytes += d.len;
        }
    }
    if (n) {
        bio_ring_cons_release(&x->rx, n);
        BIO_COUNT(x->counters, BIO_XSK_RX_FRAMES, got);
        BIO_COUNT(x->counters, BIO_XSK_RX_BYTES, bytes);
        BIO_COUNT(x->counters, BIO_XSK_RX_BATCHES, 1);
        BIO_COUNT(c->counters, BIO_NIC_C_RX_FRAMES, got);
    }
    return got;
}

int
bio_nic_rx_pump(BioNic *c)
{
    if (bio_port_ring_refresh(c->prod) < 0)
        return -EBADMSG;
    bio_nic_reclaim(c);
    bio_xsk_refill(c->xsk);
    uint32_t n = bio_nic_rx_take(c);
    if (n) {
        bio_port_ring_publish(c->prod);
        bio_xsk_refill(c->xsk);
    }
    return (int)n;
}

/* ---- the pump: sending ------------------------------------------------------------ */

/* Queue the frame of the published TX slot at the consumer's head (checked:
 * one the region holds) and give the slot a fresh frame. 1 queued, 0 the
 * slot was dropped (counted), -1 no room (tx ring full, no free frame). */
static int
bio_nic_tx_slot(BioNic *c)
{
    BioXsk *x = c->xsk;
    BioUmem *u = x->umem;
    BioPortRing *t = c->cons;
    if (bio_ring_prod_free(&x->tx, 1) == 0 || u->nfree == 0) {
        BIO_COUNT(c->counters, u->nfree ? BIO_NIC_C_TX_RING_FULL : BIO_NIC_C_TX_NO_FRAME, 1);
        return -1;
    }
    uint32_t k = t->head & t->mask;
    uint32_t f = __atomic_load_n(&t->s->idx[k], __ATOMIC_RELAXED);
    uint32_t len = __atomic_load_n(&t->s->len[k], __ATOMIC_RELAXED);
    uint32_t flags = __atomic_load_n(&t->s->flags[k], __ATOMIC_RELAXED);
    int queued = bio_port_frames_held(c->reg, f);
    if (queued) {
        u->state[f] = BIO_FRAME_TX;
        u->lease_of[f] = NULL;
        uint32_t opt = (flags & BIO_XSK_FLAG_CONTINUES) && (x->bind_flags & XDP_USE_SG)
                           ? XDP_PKT_CONTD : 0;
        bio_xsk_tx_put(x, ((uint64_t)f << u->frame_shift) + c->offset,
                       len > t->reg->slot_size ? t->reg->slot_size : len, opt);
    } else {
        BIO_COUNT(c->counters, BIO_NIC_C_TX_BAD, 1);
    }
    uint32_t fresh = (uint32_t)bio_umem_take(u, BIO_FRAME_PORT);
    u->lease_of[fresh] = c->reg;
    __atomic_store_n(&t->s->idx[k], fresh, __ATOMIC_RELAXED);
    t->head++;
    return queued;
}

int
bio_nic_tx_pump(BioNic *c, int nogil)
{
    BioXsk *x = c->xsk;
    BioPortRing *t = c->cons;
    bio_xsk_reap(x);
    if (bio_port_ring_refresh(t) < 0)
        return -EBADMSG;
    uint32_t n = 0, head = t->head;
    int r;
    while (t->head != t->tail && (r = bio_nic_tx_slot(c)) >= 0)
        n += (uint32_t)r;
    t->cur = t->head;
    if (t->head != head)
        bio_port_ring_publish(t);
    if (!n)
        return 0;
    BIO_COUNT(c->counters, BIO_NIC_C_TX_FRAMES, n);
    BIO_COUNT(x->counters, BIO_XSK_TX_BATCHES, 1);
    r = nogil ? bio_xsk_transmit_nogil(x) : bio_xsk_kick(x);
    return r < 0 ? r : (int)n;
}

int
bio_nic_fd(BioNic *c)
{
    return c->xsk->fd;
}

int
bio_nic_rx_pending(BioNic *c)
{
    return bio_ring_cons_ready(&c->xsk->rx, 1) > 0 && c->prod->tail != c->prod->head;
}

/* ---- waiting ---------------------------------------------------------------------- */

typedef struct {
    BioNic *c;
    BioPortRing *g;      /* the application's ring that waits */
    int tx;              /* waiting for free TX slots (completions), else for frames */
    int room;            /* rx: the pump can take frames (else only close ends the wait) */
    int gather;          /* rx: some frames are there, fewer than wanted: sleep a slice */
    int64_t deadline, linger_end;
} BioNicWait;

/* Spin until the kernel produced something on the ring a wait watches (rx
 * descriptors, or completions), or linger_end. 1 if it did. nogil. */
static int
bio_nic_linger_nogil(BioNicWait *w)
{
    BioXskRing *ring = w->tx ? &w->c->xsk->comp : &w->c->xsk->rx;
    while (bio_now_ns() < w->linger_end) {
        for (int i = 0; i < 64; i++) {
            if (__atomic_load_n(ring->producer, __ATOMIC_ACQUIRE) != ring->cached_prod)
                return 1;
            bio_port_pause();
        }
        if (__atomic_load_n(&w->g->port->closed, __ATOMIC_RELAXED))
            return 0;
    }
    return 0;
}

/* poll() until `until` (ns, -1: none) with a nanosecond timeout: the slices
 * here are shorter than poll()'s millisecond. nogil. */
static int
bio_nic_ppoll(struct pollfd *p, nfds_t n, int64_t until)
{
    struct timespec ts, *tp = NULL;
    if (until >= 0) {
        int64_t left = until - bio_now_ns();
        left = left > 0 ? left : 0;
        ts.tv_sec = (time_t)(left / 1000000000);
        ts.tv_nsec = (long)(left % 1000000000);
        tp = &ts;
    }
    return ppoll(p, n, tp, NULL);
}

/* Sleep until the socket has frames (rx), a slice passed (tx: completions
 * raise no event; rx holding some frames but fewer than it wants: the
 * kernel wakes a socket at every burst it delivers, and a slice gathers
 * several), the deadline, or a close() of the port: 1 look again,
 * 0 deadline, -ECANCELED / -ESTALE (closed or taken over here), -ENETDOWN
 * (the device went away) or -errno. nogil. */
static int
bio_nic_wait_nogil(void *arg)
{
    BioNicWait *w = arg;
    if (bio_nic_linger_nogil(w)) {
        BIO_COUNT(w->g->me->counters, BIO_PORT_C_LINGER_HITS, 1);
        w->linger_end = 0;
        return 1;
    }
    w->linger_end = 0;
    int64_t until = w->deadline;
    int64_t soon = bio_now_ns() + (w->tx ? BIO_NIC_TX_SLICE_NS : BIO_NIC_GATHER_NS);
    if ((w->tx || w->gather) && (until < 0 || until > soon))
        until = soon;
    struct pollfd p[2] = {{.fd = w->g->port->local_fd, .events = POLLIN},
                          {.fd = bio_nic_fd(w->c), .events = POLLIN}};
    int r = bio_port_claim_current(w->g->port);
    if (r < 0)
        return r;
    BIO_COUNT(w->g->me->counters, BIO_PORT_C_SLEEPS, 1);
    int n = bio_nic_ppoll(p, !w->tx && !w->gather && w->room ? 2 : 1, until);
    if (n < 0)
        return -errno;
    if ((r = bio_port_claim_current(w->g->port)) < 0)
        return r;
    if (n > 0 && (p[1].revents & (POLLERR | POLLNVAL)))
        return -ENETDOWN;
    if (n > 0)
        BIO_COUNT(w->g->me->counters, BIO_PORT_C_WAKEUPS, 1);
    return w->deadline >= 0 && bio_now_ns() >= w->deadline ? 0 : 1;
}

/* ---- Python entry points ---------------------------------------------------------- */

/* Make the rings of one side usable in this process (the other side may
 * be waiting in another thread). 0 or -1. GIL. */
static int
bio_nic_ready(BioNic *c, int tx)
{
    if (c->closing || c->xsk->fd < 0) {
        bio_port_oserror(EBADF, "the NIC port is closed");
        return -1;
    }
    if (c->switched) {
        PyErr_SetString(PyExc_RuntimeError, "this NIC port belongs to a switch: the switch "
                        "moves its frames");
        return -1;
    }
    if (bio_umem_check_pid(c->xsk->umem) < 0 || bio_port_ring_ready(tx ? c->cons : c->prod) < 0 ||
        bio_port_ring_ready(tx ? c->app_tx : c->app_rx) < 0 ||
        (!c->started && bio_port_ring_ready(c->prod) < 0))
        return -1;
    if (!c->started) {
        c->reclaimed = c->prod->tail - c->prod->cap;
        c->started = 1;
    }
    return 0;
}

/* Mark the port, its region and its Umem as a switch's (1) or not (0). */
static void
bio_nic_set_switched(BioNic *c, int on)
{
    c->switched = c->reg->switched = c->xsk->umem->switched = on;
}

int
bio_nic_hold(BioNic *c)
{
    int was = c->switched;
    bio_nic_set_switched(c, 0);
    if (bio_nic_ready(c, 0) < 0 || bio_nic_ready(c, 1) < 0) {
        bio_nic_set_switched(c, was);
        return -1;
    }
    bio_nic_set_switched(c, 1);
    return 0;
}

void
bio_nic_unhold(BioNic *c)
{
    bio_nic_set_switched(c, 0);
}

/* Run the pump of one side: 0, or -1 with OSError. GIL. */
static int
bio_nic_pump(BioNic *c, int tx)
{
    int r = tx ? bio_nic_tx_pump(c, 0) : bio_nic_rx_pump(c);
    if (r >= 0)
        return 0;
    if (r == -EINTR)
        return -1; /* a signal handler raised inside the kick */
    if (r == -EBADMSG)
        bio_port_ring_raise(tx ? c->cons : c->prod, r);
    else
        bio_raise_errno(r);
    return -1;
}

/* sync_rx() / sync_tx(): what PortRx.sync / PortTx.sync are for a NIC port. */
static PyObject *
bio_nic_sync(BioNic *c, int tx)
{
    BioPortRing *g = tx ? c->app_tx : c->app_rx;
    if (bio_nic_ready(c, tx) < 0)
        return NULL;
    bio_port_ring_publish(g);
    if (bio_nic_pump(c, tx) < 0)
        return NULL;
    int r = bio_port_ring_refresh(g);
    if (r < 0)
        return bio_port_ring_raise(g, r);
    return PyLong_FromUnsignedLong(g->tail - g->head);
}

static PyObject *
bio_nic_sync_rx(BioNic *c, PyObject *Py_UNUSED(ignored))
{
    return bio_nic_sync(c, 0);
}

static PyObject *
bio_nic_sync_tx(BioNic *c, PyObject *Py_UNUSED(ignored))
{
    return bio_nic_sync(c, 1);
}

/* The pump, then a sleep without the GIL, until w->g owns `want` slots
 * beyond cur or the deadline. 0 (returns the slots owned), or -1 with an
 * exception. GIL. */
static int
bio_nic_wait_loop(BioNic *c, BioNicWait *w, uint32_t want)
{
    BioPortRing *g = w->g;
    for (;;) {
        int r;
        if (bio_nic_pump(c, w->tx) < 0)
            return -1;
        if ((r = bio_port_ring_refresh(g)) < 0) {
            bio_port_ring_raise(g, r);
            return -1;
        }
        if ((uint32_t)(g->tail - g->cur) >= want)
            return 0;
        if (w->deadline >= 0 && bio_now_ns() >= w->deadline) {
            BIO_COUNT(g->me->counters, BIO_PORT_C_TIMEOUTS, 1);
            return 0;
        }
        w->room = c->prod->tail != c->prod->head;
        w->gather = !w->tx && g->tail != g->cur;
        c->busy++;
        g->busy = atomic_load(&bio_port_epoch);
        r = bio_nogil_retry(bio_nic_wait_nogil, w);
        g->busy = 0;
        c->busy--;
        if (r < 0) {
            if (r != -EINTR)
                bio_port_ring_raise(g, r);
            return -1;
        }
    }
}

static PyObject *
bio_nic_wait(BioNic *c, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"tx", "n", "timeout", NULL};
    PyObject *a[3];
    long long n = 1;
    int64_t timeout_ns;
    if (bio_args_parse("wait", args, nargs, kwnames, names, 3, 1, a) < 0)
        return NULL;
    BioNicWait w = {.c = c, .tx = PyObject_IsTrue(a[0])};
    if (w.tx < 0)
        return NULL;
    w.g = w.tx ? c->app_tx : c->app_rx;
    if ((a[1] != NULL && bio_args_int("n", a[1], 1, w.g->cap, &n) < 0) ||
        bio_timeout_parse(a[2] ? a[2] : Py_None, &timeout_ns) < 0 || bio_nic_ready(c, w.tx) < 0)
        return NULL;
    int64_t now = bio_now_ns();
    w.deadline = timeout_ns < 0 ? -1 : now + timeout_ns;
    w.linger_end = now + w.g->linger_ns;
    bio_port_ring_publish(w.g);
    int r = bio_nic_wait_loop(c, &w, (uint32_t)n);
    if (c->closing && c->busy == 0)
        bio_xsk_leave(c->xsk);
    if (r < 0)
        return NULL;
    return PyLong_FromUnsignedLong(w.g->tail - w.g->head);
}

PyDoc_STRVAR(bio_nic_wait_doc,
"wait($self, /, tx, n=1, timeout=None)\n--\n\n"
"PortRx.wait / PortTx.wait of the NIC port (tx=True: free TX slots): the\n"
"pump, then linger and sleep on the AF_XDP socket until n slots lie beyond\n"
"cur or the timeout. Returns the slots owned.");

static PyObject *
bio_nic_counters(BioNic *c, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(c->counters, bio_nic_counter_names, BIO_NIC_NCOUNTERS);
}

static PyObject *
bio_nic_close(BioNic *c, PyObject *Py_UNUSED(ignored))
{
    if (c->closing)
        Py_RETURN_NONE;
    c->closing = 1;
    if (c->busy == 0)
        bio_xsk_leave(c->xsk); /* the socket is the caller's to close from here on */
    Py_RETURN_NONE;
}

/* NicCore(xsk, prod, cons, rx, tx): the pump of a NIC port. */
static PyObject *
bio_nic_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"xsk", "prod", "cons", "rx", "tx", NULL};
    BioXsk *x;
    BioPortRing *ring[4];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!O!:NicCore", kwlist, &BioXsk_Type, &x,
                                     &BioPortTx_Type, &ring[0], &BioPortRx_Type, &ring[1],
                                     &BioPortRx_Type, &ring[2], &BioPortTx_Type, &ring[3]))
        return NULL;
    BioPortRegion *reg = ring[0]->reg;
    for (int i = 0; i < 4; i++) {
        if (ring[i]->reg != reg || ring[i]->party != (i < 2 ? 0 : 1)) {
            PyErr_SetString(PyExc_ValueError, "NicCore() needs port 0's tx and rx and port 1's "
                            "rx and tx of one region");
            return NULL;
        }
    }
    if (reg->frames != (PyObject *)x->umem || x->rx.size == 0 || x->tx.size == 0) {
        PyErr_SetString(PyExc_ValueError, "NicCore(): the region's frames must be the socket's "
                        "Umem, and the socket needs an rx and a tx ring");
        return NULL;
    }
    if (bio_xsk_enter(x, "NicCore") < 0) /* ours for good: nobody else may use its rings */
        return NULL;
    BioNic *c = (BioNic *)type->tp_alloc(type, 0);
    if (c == NULL) {
        bio_xsk_leave(x);
        return NULL;
    }
    c->xsk = (BioXsk *)Py_NewRef((PyObject *)x);
    c->reg = (BioPortRegion *)Py_NewRef((PyObject *)reg);
    BioPortRing **dest[4] = {&c->prod, &c->cons, &c->app_rx, &c->app_tx};
    for (int i = 0; i < 4; i++)
        *dest[i] = (BioPortRing *)Py_NewRef((PyObject *)ring[i]);
    c->offset = x->umem->headroom + BIO_XDP_HEADROOM;
    return (PyObject *)c;
}

static void
bio_nic_dealloc(BioNic *c)
{
    if (!c->closing && c->xsk != NULL)
        bio_xsk_leave(c->xsk);
    Py_XDECREF(c->prod);
    Py_XDECREF(c->cons);
    Py_XDECREF(c->app_rx);
    Py_XDECREF(c->app_tx);
    Py_XDECREF(c->reg);
    Py_XDECREF(c->xsk);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef bio_nic_methods[] = {
    {"sync_rx", (PyCFunction)bio_nic_sync_rx, METH_NOARGS,
     "sync_rx($self, /)\n--\n\nPortRx.sync of the NIC port: release, pump, read the tail."},
    {"sync_tx", (PyCFunction)bio_nic_sync_tx, METH_NOARGS,
     "sync_tx($self, /)\n--\n\nPortTx.sync of the NIC port: publish, pump and transmit."},
    {"wait", (PyCFunction)(void (*)(void))bio_nic_wait, METH_FASTCALL | METH_KEYWORDS,
     bio_nic_wait_doc},
    {"counters", (PyCFunction)bio_nic_counters, METH_NOARGS,
     "counters($self, /)\n--\n\nA dict of the pump's counters."},
    {"close", (PyCFunction)bio_nic_close, METH_NOARGS,
     "close($self, /)\n--\n\nLet the socket go (a wait in progress lets it go as it returns)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject BioNic_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.NicCore",
    .tp_basicsize = sizeof(BioNic),
    .tp_dealloc = (destructor)bio_nic_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NicCore(xsk, prod, cons, rx, tx)\n--\n\n"
              "The pump between an XskSocket and a port region's rings (internal; see "
              "burstio.ports.nic_port).",
    .tp_methods = bio_nic_methods,
    .tp_new = bio_nic_new,
};
