/* XskSocket's send path: batch entries -> tx ring -> the kernel; the
 * completion ring gives the frames back.
 *
 * A frame's way out: send_batch reads each entry's offset and length once
 * (the arrays are writable from Python: every later step uses these
 * copies) and checks them before anything is queued. An entry that lies
 * inside one frame this batch's lease holds from this UMEM (a received
 * frame, forwarded) goes on the tx ring as it is: zero copy; the frame is
 * then held by the lease and the tx ring both, and freed when both let go.
 * Anything else is copied into a free frame. Then one sendto() (without the
 * GIL) makes the kernel transmit: in copy mode it does the work right there,
 * up to its budget per call. Completions (bio_xsk_reap) clear the frames'
 * tx hold; a frame nothing else holds goes back to the free list.
 * send_udp builds Ethernet/IP/UDP headers in front of each payload (build.c).
 */
#include "xdp/xdp.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

uint32_t
bio_xsk_reap(BioXsk *x)
{
    BioUmem *u = x->umem;
    uint32_t n = bio_ring_cons_ready(&x->comp, x->comp.size);
    uint32_t at = x->comp.cached_cons;
    for (uint32_t i = 0; i < n; i++) {
        int64_t f = bio_umem_frame_of(u, *bio_ring_addr(&x->comp, at + i));
        if (f < 0 || !(u->state[f] & BIO_FRAME_TX))
            BIO_COUNT(x->counters, BIO_XSK_BAD_COMPLETIONS, 1);
        else
            bio_umem_drop(u, (uint32_t)f, BIO_FRAME_TX);
    }
    if (n) {
        bio_ring_cons_release(&x->comp, n);
        BIO_COUNT(x->counters, BIO_XSK_COMPLETIONS, n);
    }
    return n;
}

void
bio_xsk_tx_put(BioXsk *x, uint64_t addr, uint32_t len, uint32_t options)
{
    struct xdp_desc *d = bio_ring_desc(&x->tx, x->tx.cached_prod);
    d->addr = addr;
    d->len = len;
    d->options = options;
    x->tx.cached_prod++; /* published by bio_xsk_kick */
    BIO_COUNT(x->counters, BIO_XSK_TX_FRAMES, 1);
    BIO_COUNT(x->counters, BIO_XSK_TX_BYTES, len);
}

typedef struct {
    BioXsk *x;
    int err;
} BioXskKick;

/* sendto() until the kernel has taken every descriptor (copy mode works
 * through at most its budget per call and says EAGAIN when more remain,
 * EBUSY when the device dropped the frame it was sending: counted), or
 * until it stops making progress. nogil. */
static int
bio_xsk_kick_nogil(void *ctx)
{
    BioXskKick *k = ctx;
    BioXsk *x = k->x;
    for (int tries = 0; tries < 64; tries++) {
        uint32_t before = __atomic_load_n(x->tx.consumer, __ATOMIC_ACQUIRE);
        if (before == x->tx.cached_prod)
            return 0;
        BIO_COUNT(x->counters, BIO_XSK_TX_KICKS, 1);
        if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
            continue;
        int e = errno;
        if (e == EINTR)
            return -EINTR;
        if (e == EBUSY) { /* NET_XMIT_DROP: the device dropped one frame, taken off the ring */
            BIO_COUNT(x->counters, BIO_XSK_TX_DROPPED, 1);
            continue;
        }
        uint32_t after = __atomic_load_n(x->tx.consumer, __ATOMIC_ACQUIRE);
        if (e == EAGAIN && after == before)
            return -EAGAIN; /* completion ring full or device busy: the caller reaps */
        if (e != EAGAIN)
            return -e;
    }
    return 0;
}

/* Publish the tx ring's producer; whether the kernel must be kicked to
 * transmit (zero copy with need_wakeup: only when the driver asks; copy
 * mode transmits only inside sendto()). */
static int
bio_xsk_tx_publish(BioXsk *x)
{
    uint32_t pending = x->tx.cached_prod - *x->tx.producer;
    if (pending)
        __atomic_store_n(x->tx.producer, x->tx.cached_prod, __ATOMIC_RELEASE);
    return !(x->zerocopy && (x->bind_flags & XDP_USE_NEED_WAKEUP) && !bio_ring_needs_wakeup(&x->tx));
}

int
bio_xsk_kick(BioXsk *x)
{
    if (!bio_xsk_tx_publish(x))
        return 0;
    BioXskKick k = {.x = x};
    int r = 0;
    for (int round = 0; round < 4; round++) {
        r = bio_nogil_retry(bio_xsk_kick_nogil, &k);
        bio_xsk_reap(x);
        if (r != -EAGAIN)
            break;
    }
    return r == -EAGAIN ? 0 : r;
}

int
bio_xsk_transmit_nogil(BioXsk *x)
{
    if (!bio_xsk_tx_publish(x))
        return 0;
    BioXskKick k = {.x = x};
    int r = 0;
    for (int round = 0; round < 4; round++) {
        r = bio_xsk_kick_nogil(&k);
        bio_xsk_reap(x);
        if (r != -EAGAIN)
            break;
    }
    return r == -EAGAIN || r == -EINTR ? 0 : r;
}

/* Is entry [off, off + len) inside one frame that lease `l` holds of x's
 * UMEM and that is not on a tx ring already? Its frame, or -1. */
static int64_t
bio_xsk_tx_own_frame(BioXsk *x, PyObject *l, uint64_t off, uint32_t len)
{
    BioUmem *u = x->umem;
    if (l == NULL || Py_TYPE(l) != &BioXskLease_Type || ((BioXskLease *)l)->umem != u)
        return -1;
    int64_t f = bio_umem_frame_of(u, off);
    if (f < 0 || bio_umem_in_frame(u, off) + len > u->frame_size || u->lease_of[f] != (void *)l ||
        (u->state[f] & BIO_FRAME_TX))
        return -1;
    return f;
}

/* Queue entry (off, len) of b: zero copy or into a free frame. 1 queued,
 * 0 no room (tx ring full, no free frame). GIL held. */
static int
bio_xsk_tx_entry(BioXsk *x, BioBatch *b, uint64_t off, uint32_t len, uint32_t options)
{
    BioUmem *u = x->umem;
    if (bio_ring_prod_free(&x->tx, 1) == 0) {
        BIO_COUNT(x->counters, BIO_XSK_TX_RING_FULL, 1);
        return 0;
    }
    int64_t f = bio_xsk_tx_own_frame(x, b->ext_source, off, len);
    if (f >= 0) {
        u->state[f] |= BIO_FRAME_TX;
        bio_xsk_tx_put(x, off, len, options);
        BIO_COUNT(x->counters, BIO_XSK_TX_ZEROCOPY, 1);
        return 1;
    }
    if ((f = bio_umem_take(u, BIO_FRAME_TX)) < 0) {
        BIO_COUNT(x->counters, BIO_XSK_TX_NO_FRAME, 1);
        return 0;
    }
    uint64_t addr = ((uint64_t)f << u->frame_shift) + u->headroom;
    memcpy(u->area + addr, b->data + off, len);
    bio_xsk_tx_put(x, addr, len, options);
    BIO_COUNT(x->counters, BIO_XSK_TX_COPIED, 1);
    return 1;
}

/* ValueError unless every entry of [start, end) lies inside the batch's
 * buffer and fits a frame. 0 or -1. */
static int
bio_xsk_tx_check(BioXsk *x, BioBatch *b, Py_ssize_t start, Py_ssize_t end)
{
    if (bio_batch_check_entries(b, start, end) < 0)
        return -1;
    uint32_t room = x->umem->frame_size - x->umem->headroom;
    for (Py_ssize_t i = start; i < end; i++) {
        uint32_t len = b->lengths[i];
        if (len > room && bio_xsk_tx_own_frame(x, b->ext_source, b->offsets[i], len) < 0) {
            PyErr_Format(PyExc_ValueError,
                         "frame %zd: %u bytes do not fit a %u-byte frame with %u bytes of "
                         "headroom (use FLAG_CONTINUES parts for larger packets)",
                         i, len, x->umem->frame_size, x->umem->headroom);
            return -1;
        }
    }
    return 0;
}

const char bio_xsk_send_batch_doc[] =
"send_batch($self, /, batch, start=0, count=None)\n--\n\n"
"Queue entries [start, start+count) on the tx ring and make the kernel send\n"
"them: entries that are this socket's UMEM frames lent to this batch go as\n"
"they are (zero copy), others are copied into free frames. Returns how many\n"
"were queued: fewer when the tx ring or the free frames run out.";

PyObject *
bio_xsk_send_batch(BioXsk *x, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"batch", "start", "count", NULL};
    PyObject *a[3];
    Py_ssize_t start, end;
    if (bio_args_parse("send_batch", args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_batch_arg("send_batch", a[0]) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)a[0];
    if (bio_batch_check_idle(b) < 0 || bio_batch_send_range(b, a[1], a[2], &start, &end) < 0 ||
        bio_xsk_enter(x, "send_batch") < 0)
        return NULL;
    if (x->tx.size == 0 || bio_xsk_tx_check(x, b, start, end) < 0) {
        if (x->tx.size == 0)
            PyErr_SetString(PyExc_ValueError, "this XskSocket has no tx ring (tx_size=0)");
        bio_xsk_leave(x);
        return NULL;
    }
    bio_xsk_reap(x);
    Py_ssize_t i = start;
    for (; i < end; i++) {
        uint32_t opt = (b->flags[i] & BIO_XSK_FLAG_CONTINUES) ? XDP_PKT_CONTD : 0;
        if (!bio_xsk_tx_entry(x, b, b->offsets[i], b->lengths[i], opt))
            break;
    }
    BIO_COUNT(x->counters, BIO_XSK_TX_BATCHES, 1);
    int r = bio_xsk_kick(x);
    bio_xsk_leave(x);
    if (r < 0) {
        if (r != -EINTR)
            bio_raise_errno(r);
        bio_exc_note_sent(i - start);
        return NULL;
    }
    return PyLong_FromSsize_t(i - start);
}

typedef struct {
    BioXsk *x;
    int64_t deadline;
} BioXskWaitTx;

static int
bio_xsk_wait_tx_nogil(void *ctx)
{
    BioXskWaitTx *w = ctx;
    int64_t soon = bio_now_ns() + 1000000; /* completions raise no event: look again in 1 ms */
    int r = bio_xsk_poll_nogil(w->x, POLLOUT, w->deadline >= 0 && w->deadline < soon ? w->deadline : soon);
    return r < 0 ? r : 0;
}

const char bio_xsk_wait_tx_doc[] =
"wait_tx($self, timeout=None, /)\n--\n\n"
"Wait up to timeout seconds (None: forever) until the tx ring has room and a\n"
"frame is free (completions taken back meanwhile). True if so, False on\n"
"timeout; OSError(EBADF) if close() came.";

PyObject *
bio_xsk_wait_tx(BioXsk *x, PyObject *args)
{
    PyObject *timeout = Py_None;
    int64_t ns;
    if (!PyArg_ParseTuple(args, "|O:wait_tx", &timeout) || bio_timeout_parse(timeout, &ns) < 0 ||
        bio_xsk_enter(x, "wait_tx") < 0)
        return NULL;
    BioXskWaitTx w = {.x = x, .deadline = ns < 0 ? -1 : bio_now_ns() + ns};
    int r = 0, ready = 0;
    for (;;) {
        if (x->tx.size == 0)
            break;
        bio_xsk_reap(x);
        if ((ready = bio_ring_prod_free(&x->tx, 1) > 0 && x->umem->nfree > 0))
            break;
        if (w.deadline >= 0 && bio_now_ns() >= w.deadline)
            break;
        bio_xsk_kick(x);
        if ((r = bio_nogil_retry(bio_xsk_wait_tx_nogil, &w)) < 0)
            break;
    }
    bio_xsk_leave(x);
    if (r < 0)
        return r == -EINTR ? NULL : bio_raise_errno(r);
    return PyBool_FromLong(ready);
}
