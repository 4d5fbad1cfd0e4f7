/* XskSocket's receive path: rx ring -> a lease -> batch entries that point
 * into the UMEM, without a copy; and the fill ring kept topped up.
 *
 * A frame's way in: the fill ring gave the kernel a free frame
 * (bio_xsk_refill); the kernel received into it and put its descriptor on
 * the rx ring; recv_batch reads the descriptors (waiting in poll() without
 * the GIL when there are none: in copy mode the kernel never asks to be
 * woken through the fill ring's flag), checks each one against the UMEM
 * and the frame's state, records the frame in a new lease and makes it
 * entry i of the batch: offset = its UMEM offset, length, and
 * FLAG_CONTINUES when a multi-buffer packet goes on in the next entry.
 * A socket with fill_target set keeps at most that many frames in the fill
 * ring (a NIC port's pump: fewer frames in flight stay in the CPU's cache).
 */
#include "xdp/xdp.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

uint32_t
bio_xsk_refill(BioXsk *x)
{
    BioUmem *u = x->umem;
    uint32_t room = bio_ring_prod_free(&x->fill, x->fill.size), batch = x->fill_batch;
    if (x->fill_target && x->fill_target < x->fill.size) { /* fewer frames in flight */
        uint32_t held = x->fill.size - room;
        room = held >= x->fill_target ? 0 : x->fill_target - held;
        batch = batch < x->fill_target ? batch : x->fill_target;
    }
    if (room < batch || room == 0)
        return 0;
    uint32_t n = room < u->nfree ? room : u->nfree;
    if (n < room)
        BIO_COUNT(x->counters, BIO_XSK_FILL_STARVED, 1);
    uint32_t at = x->fill.cached_prod;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t f = (uint32_t)bio_umem_take(u, BIO_FRAME_FILL);
        *bio_ring_addr(&x->fill, at + i) = (uint64_t)f << u->frame_shift;
    }
    if (n) {
        bio_ring_prod_submit(&x->fill, n);
        BIO_COUNT(x->counters, BIO_XSK_FILL_FRAMES, n);
    }
    return n;
}

typedef struct {
    BioXsk *x;
    int64_t deadline;
    uint32_t want, got;
    int waited;
} BioXskRecv;

/* Take up to c->want descriptors off the rx ring into the socket's scratch
 * (private: the checks that follow see only this copy). Returns how many. */
static uint32_t
bio_xsk_rx_take(BioXskRecv *c)
{
    BioXsk *x = c->x;
    uint32_t n = bio_ring_cons_ready(&x->rx, c->want);
    uint32_t at = x->rx.cached_cons;
    for (uint32_t i = 0; i < n; i++)
        x->scratch[i] = *bio_ring_desc(&x->rx, at + i);
    if (n)
        bio_ring_cons_release(&x->rx, n);
    return n;
}

/* Wait (no GIL) until descriptors arrive, the deadline passes or close()
 * wakes us; take them. 0 or -errno. (A deadline that has passed makes
 * the poll return 0 at once: one last look, and out.) */
static int
bio_xsk_recv_wait_nogil(void *ctx)
{
    BioXskRecv *c = ctx;
    for (;;) {
        if ((c->got = bio_xsk_rx_take(c)) > 0)
            return 0;
        if (bio_ring_needs_wakeup(&c->x->fill)) /* zero copy: the driver sleeps */
            recvfrom(c->x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
        c->waited = 1;
        int r = bio_xsk_poll_nogil(c->x, POLLIN, c->deadline);
        if (r < 0)
            return r;
        if (r == 0 && (c->got = bio_xsk_rx_take(c)) == 0)
            return 0;
    }
}

/* Descriptor d, checked against the UMEM and the frame's state: its frame,
 * or -1 (counted; a frame the kernel held goes back to the free list). */
static inline int64_t
bio_xsk_rx_check(BioXsk *x, const struct xdp_desc *d)
{
    BioUmem *u = x->umem;
    int64_t f = bio_umem_frame_of(u, d->addr);
    int ok = f >= 0 && bio_umem_in_frame(u, d->addr) + d->len <= u->frame_size &&
             u->state[f] == BIO_FRAME_FILL;
    if (ok)
        return f;
    BIO_COUNT(x->counters, BIO_XSK_RX_BAD_DESCS, 1);
    if (f >= 0 && u->state[f] == BIO_FRAME_FILL)
        bio_umem_drop(u, (uint32_t)f, BIO_FRAME_FILL);
    return -1;
}

/* Lend the c->got descriptors in scratch to batch b. Returns the entries
 * made, or -1 with an error (nothing lent then). GIL held. */
static Py_ssize_t
bio_xsk_rx_lend(BioXsk *x, BioBatch *b, uint32_t got)
{
    BioUmem *u = x->umem;
    BioXskLease *l = bio_xsk_lease_new(u, got);
    if (l == NULL) { /* out of memory: the frames the kernel filled go back, unlent */
        for (uint32_t i = 0; i < got; i++)
            if (bio_xsk_rx_check(x, &x->scratch[i]) >= 0)
                bio_umem_drop(u, (uint32_t)bio_umem_frame_of(u, x->scratch[i].addr), BIO_FRAME_FILL);
        return -1;
    }
    /* per frame: its check, its state and owner, the lease's list, and the
     * entry's offset, length and flags; the entries' other arrays are
     * cleared afterwards, one pass each */
    Py_ssize_t n = 0;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < got; i++) {
        const struct xdp_desc *d = &x->scratch[i];
        int64_t f = bio_xsk_rx_check(x, d);
        if (f < 0)
            continue;
        u->state[f] = BIO_FRAME_LENT;
        u->lease_of[f] = l;
        l->frames[l->n++] = (uint32_t)f;
        b->offsets[n] = d->addr;
        b->lengths[n] = d->len;
        b->flags[n] = (d->options & XDP_PKT_CONTD) ? BIO_XSK_FLAG_CONTINUES : 0;
        bytes += d->len;
        n++;
    }
    bio_batch_clear_entries(b, n);
    BIO_COUNT(u->counters, BIO_UMEM_LENT, n);
    /* the batch holds the lease; the memoryview of the UMEM that batch[i] and
     * batch.buffer slice (each holding the lease) is made when first asked for */
    bio_batch_attach_owner(b, (PyObject *)l, u->area, u->size);
    Py_DECREF(l); /* the batch holds it now */
    b->count = n;
    BIO_COUNT(x->counters, BIO_XSK_RX_FRAMES, n);
    BIO_COUNT(x->counters, BIO_XSK_RX_BYTES, bytes);
    BIO_COUNT(x->counters, BIO_XSK_RX_BATCHES, 1);
    return n;
}

const char bio_xsk_recv_batch_doc[] =
"recv_batch($self, /, batch, timeout=None)\n--\n\n"
"Lend the frames received to batch (no copy: entries point into the UMEM),\n"
"waiting up to timeout seconds (None: forever) for the first. The frames\n"
"the batch held before go back to the free list once no memoryview of\n"
"them remains. Returns the entry count, 0 on timeout.";

PyObject *
bio_xsk_recv_batch(BioXsk *x, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"batch", "timeout", NULL};
    PyObject *a[2];
    int64_t timeout_ns;
    if (bio_args_parse("recv_batch", args, nargs, kwnames, names, 2, 1, a) < 0 ||
        bio_batch_arg("recv_batch", a[0]) < 0 ||
        bio_timeout_parse(a[1] ? a[1] : Py_None, &timeout_ns) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)a[0];
    if (bio_batch_check_idle(b) < 0 || bio_xsk_enter(x, "recv_batch") < 0)
        return NULL;
    if (x->rx.size == 0) {
        bio_xsk_leave(x);
        PyErr_SetString(PyExc_ValueError, "this XskSocket has no rx ring (rx_size=0)");
        return NULL;
    }
    bio_batch_reset(b); /* the frames it held go back (unless still viewed) */
    if (x->tx.size)
        bio_xsk_reap(x);
    bio_xsk_refill(x);
    uint32_t cap = b->capacity < (Py_ssize_t)x->scratch_size ? (uint32_t)b->capacity
                                                             : x->scratch_size;
    BioXskRecv c = {.x = x, .want = cap, .deadline = -1};
    int r = 0;
    if ((c.got = bio_xsk_rx_take(&c)) == 0 && timeout_ns != 0) {
        if (timeout_ns > 0) /* the clock is read only where the call waits */
            c.deadline = bio_now_ns() + timeout_ns;
        b->busy = 1;
        r = bio_nogil_retry(bio_xsk_recv_wait_nogil, &c);
        b->busy = 0;
        if (c.waited)
            BIO_COUNT(x->counters, BIO_XSK_RX_WAITS, 1);
    }
    Py_ssize_t n = r < 0 ? -1 : 0;
    if (c.got > 0 && (n = bio_xsk_rx_lend(x, b, c.got)) >= 0) /* nothing came: lend nothing */
        bio_xsk_refill(x);
    bio_xsk_leave(x);
    if (r < 0) {
        if (r == -EINTR)
            return NULL;
        return bio_raise_errno(r);
    }
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}
