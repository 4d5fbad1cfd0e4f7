/* SocketSetBase: what the two SocketSet backends share (io_uring in
 * socketset/uring.c, epoll in socketset/epoll.c): a table of sockets by index
 * (the set's own dup of each descriptor, so a socket closed elsewhere, or a
 * reused descriptor number, cannot confuse it), the per-socket errors waiting
 * for take_errors(), counters, send options, and the Python entry points.
 * The backends supply the waiting and the syscalls through hooks.
 *
 * Where a datagram goes through it: recv_batch() hands the caller's batch to
 * the backend, which fills entry j (slot j, batch.sockets[j] = the socket's
 * index) from whichever socket has data; send_batch() turns entries into
 * messages (batch/msgs.c, from a private copy of each entry read with the
 * GIL held) that the backend sends on socket batch.sockets[i].
 * A socket's receive error is queued for take_errors(), never lost.
 */
#include "socketset/socketset.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <unistd.h>

static const char *const bio_socketset_counter_names[BIO_SOCKETSET_NCOUNTERS] = {
    "rx_datagrams", "rx_bytes",        "rx_batches",      "rx_truncated",
    "rx_errors",    "rx_rearms",       "rx_enobufs",      "tx_datagrams",
    "tx_bytes",     "tx_batches",      "tx_errors",       "tx_gso_messages",
    "tx_unreported_errors", "syscalls", "errors_dropped", "tx_ecn_unmarked",
    "ecn_downgrades",
};

int
bio_socketset_alloc(BioSocketSet *r, int cap)
{
    r->cap = cap;
    r->err_cap = 4 * cap + 64;
    r->fds = PyMem_Calloc((size_t)cap, sizeof(int));
    r->state = PyMem_Calloc((size_t)cap, 1);
    r->flags = PyMem_Calloc((size_t)cap, 1);
    r->gen = PyMem_Calloc((size_t)cap, sizeof(uint32_t));
    r->err_sock = PyMem_Calloc((size_t)r->err_cap, sizeof(int32_t));
    r->err_no = PyMem_Calloc((size_t)r->err_cap, sizeof(int32_t));
    if (!r->fds || !r->state || !r->flags || !r->gen || !r->err_sock || !r->err_no) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < cap; i++)
        r->fds[i] = -1;
    r->gso_max_segments = 64;
    r->ecn_cmsg = 1;
    int err = bio_wake_init(&r->wake);
    if (err < 0) {
        bio_raise_errno(err);
        return -1;
    }
    return 0;
}

static void
bio_socketset_raise_full(BioSocketSet *r)
{
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", ENOSPC, "");
    if (exc == NULL)
        return;
    PyObject *msg = PyUnicode_FromFormat("the socket set holds its maximum of %d sockets", r->cap);
    if (msg != NULL)
        PyObject_SetAttrString(exc, "strerror", msg);
    Py_XDECREF(msg);
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
}

int
bio_socketset_take_slot(BioSocketSet *r, int fd)
{
    int i = 0;
    while (i < r->cap && r->state[i] != BIO_SOCK_FREE)
        i++;
    if (i == r->cap) {
        bio_socketset_raise_full(r);
        return -1;
    }
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    r->fds[i] = own;
    r->state[i] = BIO_SOCK_IDLE;
    r->gen[i]++;
    r->count++;
    return i;
}

void
bio_socketset_free_slot(BioSocketSet *r, int idx)
{
    close(r->fds[idx]);
    r->fds[idx] = -1;
    r->state[idx] = BIO_SOCK_FREE;
    r->nmeta -= (r->flags[idx] & BIO_SOCK_F_META) != 0;
    r->flags[idx] = 0;
    r->gen[idx]++;
    r->count--;
    int k = 0; /* its queued errors must not be blamed on the next socket */
    for (int j = 0; j < r->nerr; j++) {
        if (r->err_sock[j] == idx)
            continue;
        r->err_sock[k] = r->err_sock[j];
        r->err_no[k++] = r->err_no[j];
    }
    r->nerr = k;
}

void
bio_socketset_free_all(BioSocketSet *r)
{
    for (int i = 0; r->fds != NULL && i < r->cap; i++)
        if (r->state[i] != BIO_SOCK_FREE)
            bio_socketset_free_slot(r, i);
}

int
bio_socketset_add_args(PyObject *args, PyObject *kwds, int *fd, int *stream, int *meta)
{
    static char *kwlist[] = {"sock", "stream", "meta", NULL};
    PyObject *sock;
    *stream = *meta = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pp:add", kwlist, &sock, stream, meta))
        return -1;
    *fd = PyObject_AsFileDescriptor(sock);
    return *fd < 0 ? -1 : 0;
}

void
bio_socketset_set_flags(BioSocketSet *r, int idx, int meta)
{
    int family = 0;
    socklen_t len = sizeof(family);
    getsockopt(r->fds[idx], SOL_SOCKET, SO_DOMAIN, &family, &len);
    r->flags[idx] = (uint8_t)((meta ? BIO_SOCK_F_META : 0) | (family == AF_INET ? BIO_SOCK_F_V4 : 0));
    r->nmeta += meta != 0;
}

int
bio_socketset_index(BioSocketSet *r, PyObject *obj, int *idx)
{
    if (bio_args_int_type("socket index", obj, 0) < 0)
        return -1;
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v >= r->cap || r->state[v] == BIO_SOCK_FREE) {
        PyErr_Format(PyExc_ValueError, "no socket at index %ld in this socket set", v);
        return -1;
    }
    *idx = (int)v;
    return 0;
}

int
bio_socketset_usable(BioSocketSet *r)
{
    if (!bio_wake_closing(&r->wake) && !bio_wake_same_process(&r->wake) &&
        r->after_fork(r) < 0)
        return -1;
    if (bio_wake_closing(&r->wake)) {
        PyErr_SetString(PyExc_ValueError, "the socket set is closed");
        return -1;
    }
    if (r->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the SocketSet is in use by another call (another thread, or a "
                        "signal handler interrupting one)");
        return -1;
    }
    return r->check(r);
}

void
bio_socketset_error_nogil(BioSocketSet *r, int idx, int err)
{
    BIO_COUNT(r->counters, BIO_SOCKETSET_C_RX_ERRORS, 1);
    if (r->nerr >= r->err_cap) {
        BIO_COUNT(r->counters, BIO_SOCKETSET_C_ERRORS_DROPPED, 1);
        return;
    }
    r->err_sock[r->nerr] = idx;
    r->err_no[r->nerr] = err;
    r->nerr++;
}

void
bio_socketset_set_received(BioSocketSet *r, BioBatch *b, Py_ssize_t j, uint32_t stored,
                           uint32_t len, int truncated, int sock)
{
    b->offsets[j] = (uint64_t)j * (uint64_t)b->slot_size;
    b->lengths[j] = stored;
    b->flags[j] = truncated ? BIO_FLAG_TRUNCATED : 0;
    b->segment_sizes[j] = 0;
    b->timestamps[j] = 0;
    b->sockets[j] = sock;
    b->errnos[j] = 0;
    BioBatchPriv *p = &b->priv[j];
    p->sock = sock;
    p->rx_stored = stored;
    p->rx_len = len > stored ? len : stored;
    p->rx_trunc = truncated;
    if (b->meta != NULL) /* what bio_socketset_recv_cmsgs read (none if it did not ask) */
        bio_batch_meta_store(b, j, &b->meta->priv[j]);
    if (p->seg > 0 && stored > p->seg) {
        r->rx_coalesced = 1;
        r->rx_extra += (Py_ssize_t)((stored + p->seg - 1) / p->seg) - 1;
    }
}

Py_ssize_t
bio_socketset_room(const BioSocketSet *r, const BioBatch *b)
{
    Py_ssize_t entries = b->capacity - r->rx_extra;
    Py_ssize_t room = b->slots < entries ? b->slots : entries;
    return room > 0 ? room : 0;
}

/* Segments message k of a receive splits into (1: not coalesced). */
static Py_ssize_t
bio_socketset_segments(const BioBatchPriv *p)
{
    if (p->seg == 0 || p->rx_stored <= p->seg)
        return 1;
    return (Py_ssize_t)((p->rx_stored + p->seg - 1) / p->seg);
}

/* Write the `cnt` entries from `first` on of message k (read from its
 * private scratch, never from the arrays another thread may rewrite): one
 * per datagram of a coalesced message, pointing into slot k (FLAG_GRO);
 * when the batch ran out of entries the last keeps the rest, flagged
 * FLAG_COALESCED; one for any other message, moved to its new place.
 * Entries >= k only. nogil. */
static void
bio_socketset_expand(BioSocketSet *r, BioBatch *b, Py_ssize_t k, Py_ssize_t first,
                     Py_ssize_t cnt)
{
    const BioBatchPriv p = b->priv[k];
    const struct sockaddr_in6 name = b->names[k];
    BioMetaPriv meta;
    if (b->meta != NULL)
        meta = b->meta->priv[k];
    const Py_ssize_t want = bio_socketset_segments(&p);
    const uint64_t base = (uint64_t)k * (uint64_t)b->slot_size;
    uint64_t datagrams = 0;
    for (Py_ssize_t s = cnt - 1; s >= 0; s--) {
        Py_ssize_t j = first + s;
        uint32_t off = want > 1 ? (uint32_t)s * p.seg : 0, len = p.rx_stored - off;
        uint32_t fl = want > 1 ? BIO_FLAG_GRO : 0;
        if (want > 1 && s == cnt - 1 && cnt < want)
            fl |= BIO_FLAG_COALESCED;
        else if (want > 1 && len > p.seg)
            len = p.seg;
        if (p.rx_trunc && s == cnt - 1)
            fl |= BIO_FLAG_TRUNCATED;
        b->offsets[j] = base + off;
        b->lengths[j] = len;
        b->flags[j] = fl;
        b->segment_sizes[j] = want > 1 ? p.seg : 0;
        b->timestamps[j] = 0;
        b->sockets[j] = p.sock;
        b->errnos[j] = 0;
        b->names[j] = name;
        if (b->meta != NULL)
            bio_batch_meta_store(b, j, &meta);
        datagrams += (fl & BIO_FLAG_COALESCED) ? (len + p.seg - 1) / p.seg : 1;
    }
    BIO_COUNT(r->counters, BIO_SOCKETSET_C_RX_DATAGRAMS, datagrams - 1); /* one counted on arrival */
    if (want > 1 && p.rx_trunc) /* the whole datagrams that did not fit went with the cut one */
        BIO_COUNT(r->counters, BIO_SOCKETSET_C_RX_TRUNCATED,
                  (p.rx_len + p.seg - 1) / p.seg - (p.rx_stored + p.seg - 1) / p.seg);
}

/* A receive took messages [0, m) and one of them arrived coalesced (the
 * socket's UDP_GRO was turned on after add()): split each coalesced message
 * into one entry per datagram, as BurstSocket does, leaving at least one
 * entry for every later message. Returns the entry count. nogil. */
static Py_ssize_t
bio_socketset_recv_split(BioSocketSet *r, BioBatch *b, Py_ssize_t m)
{
    Py_ssize_t total = 0;
    for (Py_ssize_t k = 0; k < m; k++) {
        Py_ssize_t want = bio_socketset_segments(&b->priv[k]);
        Py_ssize_t room = b->capacity - total - (m - k - 1);
        b->msg_entry[k] = total;
        total += want < room ? want : room;
    }
    for (Py_ssize_t k = m - 1; k >= 0; k--) {
        Py_ssize_t next = k == m - 1 ? total : b->msg_entry[k + 1];
        if (bio_socketset_segments(&b->priv[k]) > 1 || b->msg_entry[k] != k)
            bio_socketset_expand(r, b, k, b->msg_entry[k], next - b->msg_entry[k]);
    }
    return total;
}

/* Run fn(ctx) without the GIL while the set is marked busy: 0/-errno as
 * bio_nogil_retry, with the batch (if any) busy too. */
static int
bio_socketset_run(BioSocketSet *r, BioBatch *b, int (*fn)(void *), void *ctx)
{
    r->busy = 1;
    if (b != NULL)
        b->busy = 1;
    int err = bio_nogil_retry(fn, ctx);
    if (b != NULL)
        b->busy = 0;
    r->busy = 0;
    return err;
}

/* After a call: a close() that came meanwhile is done now; a wait it ended
 * raises OSError EBADF. err as the call returned it; 0, or -1 with the
 * error set when the close ended the call. */
static int
bio_socketset_after(BioSocketSet *r, int err)
{
    if (!r->close_pending)
        return 0;
    bio_socketset_close(r);
    if (err != -BIO_ECLOSED)
        return 0;
    PyObject *v = Py_BuildValue("(is)", EBADF, "the SocketSet was closed while waiting");
    if (v != NULL)
        PyErr_SetObject(PyExc_OSError, v);
    Py_XDECREF(v);
    return -1;
}

PyObject *
bio_socketset_close(BioSocketSet *r)
{
    if (!bio_wake_same_process(&r->wake)) {
        /* a fork()ed child: let go of our copies without touching the parent's io_uring */
        bio_wake_kick(&r->wake);
        r->close_pending = 0;
        r->close_now(r);
        Py_RETURN_NONE;
    }
    bio_wake_kick(&r->wake);
    if (r->busy) { /* a call waits (another thread, or a signal handler's): it closes */
        r->close_pending = 1;
        Py_RETURN_NONE;
    }
    r->close_pending = 0;
    r->close_now(r);
    Py_RETURN_NONE;
}

/* ---- receive (both backends; the waiting is the backend's) ------------- */

PyDoc_STRVAR(bio_socketset_recv_batch_doc,
"recv_batch($self, /, batch, timeout=None, *, min_datagrams=1, max_wait=None)\n--\n\n"
"Fill batch from any socket of the set (batch.sockets says which); returns\n"
"the entry count. Returns when min_datagrams are ready (or a socket reported\n"
"an error) or max_wait seconds have passed, whichever comes first; if none\n"
"came by then, waits for one up to timeout (None: forever). Errors:\n"
"take_errors().");

/* Deadlines of a receive from its timeout/max_wait arguments; 0 or -1. */
static int
bio_socketset_recv_deadlines(BioSocketSetRecv *c, PyObject *timeout, PyObject *max_wait)
{
    int64_t timeout_ns, max_wait_ns, now = bio_now_ns();
    if (bio_timeout_parse(timeout ? timeout : Py_None, &timeout_ns) < 0 ||
        bio_timeout_parse(max_wait ? max_wait : Py_None, &max_wait_ns) < 0)
        return -1;
    c->first_deadline = timeout_ns < 0 ? -1 : now + timeout_ns;
    c->watermark_deadline = max_wait_ns < 0 ? c->first_deadline : now + max_wait_ns;
    if (c->first_deadline >= 0 &&
        (c->watermark_deadline < 0 || c->watermark_deadline > c->first_deadline))
        c->watermark_deadline = c->first_deadline;
    return 0;
}

static PyObject *
bio_socketset_recv_batch(BioSocketSet *r, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames)
{
    static const char *const names[] = {"batch", "timeout", "min_datagrams", "max_wait", NULL};
    PyObject *a[4];
    BioSocketSetRecv c = {.r = r};
    if (bio_args_parse("recv_batch", args, nargs, kwnames, names, 2, 1, a) < 0 ||
        bio_batch_arg("recv_batch", a[0]) < 0 || bio_socketset_usable(r) < 0 ||
        bio_socketset_recv_deadlines(&c, a[1], a[3]) < 0)
        return NULL;
    Py_ssize_t want = a[2] ? PyNumber_AsSsize_t(a[2], PyExc_OverflowError) : 1;
    if (want == -1 && PyErr_Occurred())
        return NULL;
    if (want < 1) {
        PyErr_Format(PyExc_ValueError, "min_datagrams must be >= 1, got %zd", want);
        return NULL;
    }
    c.b = (BioBatch *)a[0];
    if (bio_batch_check_idle(c.b) < 0 || bio_socketset_meta_ensure(r, c.b) < 0)
        return NULL;
    bio_batch_reset(c.b);
    c.errors0 = r->nerr;
    r->rx_extra = 0;
    r->rx_coalesced = 0;
    c.want = want < bio_socketset_room(r, c.b) ? want : bio_socketset_room(r, c.b);
    int err = bio_socketset_run(r, c.b, r->recv_nogil, &c);
    Py_ssize_t entries = r->rx_coalesced ? bio_socketset_recv_split(r, c.b, c.n) : c.n;
    c.b->count = entries;
    c.b->appended = c.n; /* slots 0..n-1 hold what arrived; append() goes after */
    if (c.n)
        BIO_COUNT(r->counters, BIO_SOCKETSET_C_RX_BATCHES, 1);
    if (bio_socketset_after(r, err) < 0 || err == -EINTR)
        return NULL;
    if (err < 0)
        return bio_raise_errno(err);
    return PyLong_FromSsize_t(entries);
}

/* ---- send (both backends; the syscalls are the backend's) -------------- */

/* Account message results and flag failed entries (flag_entries). Returns
 * the datagrams sent. */
static Py_ssize_t
bio_socketset_send_results(BioSocketSet *r, BioBatch *b, const int32_t *res, Py_ssize_t m,
                           int flag_entries, int ecn)
{
    Py_ssize_t sent = 0;
    uint64_t unmarked = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        struct msghdr *h = &b->msgs[i].msg_hdr;
        Py_ssize_t j = b->msg_entry[i];
        for (size_t k = 0; k < h->msg_iovlen; k++) {
            if (res[i] && flag_entries) {
                b->flags[j + k] |= BIO_FLAG_SEND_ERROR;
                b->errnos[j + k] = res[i];
            }
            if (!res[i])
                BIO_COUNT(r->counters, BIO_SOCKETSET_C_TX_BYTES, h->msg_iov[k].iov_len);
        }
        if (res[i]) {
            BIO_COUNT(r->counters, BIO_SOCKETSET_C_TX_ERRORS, h->msg_iovlen);
            continue;
        }
        sent += (Py_ssize_t)h->msg_iovlen;
        if (h->msg_iovlen > 1)
            BIO_COUNT(r->counters, BIO_SOCKETSET_C_TX_GSO_MESSAGES, 1);
        /* a GSO run shares one codepoint (the private copy the build read) */
        if (!ecn && b->meta != NULL && b->meta->priv[j].ecn != 0)
            unmarked += h->msg_iovlen;
    }
    BIO_COUNT(r->counters, BIO_SOCKETSET_C_TX_DATAGRAMS, sent);
    if (unmarked)
        BIO_COUNT(r->counters, BIO_SOCKETSET_C_TX_ECN_UNMARKED, unmarked);
    return sent;
}

/* ValueError unless every entry in [start, end) names a socket of the set
 * (the private copy that bio_batch_send_build read). */
static int
bio_socketset_check_sockets(BioSocketSet *r, BioBatch *b, Py_ssize_t start, Py_ssize_t end)
{
    for (Py_ssize_t j = start; j < end; j++) {
        int32_t s = b->priv[j].sock;
        if (s < 0 || s >= r->cap || r->state[s] == BIO_SOCK_FREE) {
            PyErr_Format(PyExc_ValueError, "datagram %zd: no socket at index %d in this socket set",
                         j, (int)s);
            return -1;
        }
        if (bio_socketset_meta_check(r, b, j) < 0)
            return -1;
    }
    return 0;
}

/* Check (batch, start, count) and build the messages into c; 0 or -1.
 * by_socket: split runs where batch.sockets changes. */
static int
bio_socketset_send_setup(BioSocketSet *r, const char *fname, PyObject *const *a, int by_socket,
                         BioSocketSetSend *c)
{
    Py_ssize_t start, end;
    if (bio_batch_arg(fname, a[0]) < 0 || bio_socketset_usable(r) < 0)
        return -1;
    c->r = r;
    c->b = (BioBatch *)a[0];
    c->ecn = r->ecn_cmsg;
    BioBatchSendOpts o = {.gso = r->gso, .gso_max_segments = r->gso_max_segments,
                          .by_socket = by_socket, .ecn = c->ecn};
    if (bio_batch_check_idle(c->b) < 0 ||
        bio_batch_send_range(c->b, a[1], a[2], &start, &end) < 0 ||
        (c->m = bio_batch_send_build(&o, c->b, start, end)) < 0 ||
        (by_socket && bio_socketset_check_sockets(r, c->b, start, end) < 0))
        return -1;
    Py_ssize_t groups = c->ngroups ? c->ngroups : 1;
    if (c->m > 0 && groups > (Py_ssize_t)(UINT32_MAX / 2) / c->m) {
        PyErr_SetString(PyExc_ValueError, "too many (datagram, socket) pairs in one call");
        return -1;
    }
    c->total = c->m * groups;
    c->results = PyMem_Calloc((size_t)c->total + 1, sizeof(int32_t));
    if (c->results == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    r->call_gen++;
    BIO_COUNT(r->counters, BIO_SOCKETSET_C_TX_BATCHES, 1);
    return 0;
}

/* Run the backend's sends (GIL held on entry). If a signal handler raises,
 * what the kernel already holds is finished first (the batch's memory must
 * not be left in use) and the exception then propagates. 0, or -1 with an
 * error set. */
static int
bio_socketset_send_run(BioSocketSetSend *c)
{
    if (c->m == 0)
        return 0;
    int err = bio_socketset_run(c->r, c->b, c->r->send_nogil, c);
    if (err == -EINTR) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        c->stopping = 1;
        c->r->busy = c->b->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        while (c->r->send_nogil(c) == -EINTR)
            ;
        Py_END_ALLOW_THREADS
        c->r->busy = c->b->busy = 0;
        PyErr_Restore(type, value, tb);
        return -1;
    }
    if (err < 0) {
        bio_raise_errno(err);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(bio_socketset_send_batch_doc,
"send_batch($self, /, batch, start=0, count=None)\n--\n\n"
"Send datagram i on socket batch.sockets[i], all at once. Returns the\n"
"datagrams sent; failures are flagged in the batch (batch.send_errors()).");

static PyObject *
bio_socketset_send_batch(BioSocketSet *r, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames)
{
    static const char *const names[] = {"batch", "start", "count", NULL};
    PyObject *a[3], *ret = NULL;
    BioSocketSetSend c = {0};
    if (bio_args_parse("send_batch", args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_socketset_send_setup(r, "send_batch", a, 1, &c) < 0 || bio_socketset_send_run(&c) < 0)
        goto out;
    ret = PyLong_FromSsize_t(bio_socketset_send_results(r, c.b, c.results, c.m, 1, c.ecn));
out:
    PyMem_Free(c.results);
    return ret;
}

/* Failures of a redundant send: [(entry, socket index, errno), ...]. */
static PyObject *
bio_socketset_failures(BioSocketSetSend *c, const int *group)
{
    PyObject *list = PyList_New(0);
    for (Py_ssize_t k = 0; list != NULL && k < c->ngroups; k++) {
        for (Py_ssize_t i = 0; list != NULL && i < c->m; i++) {
            int32_t e = c->results[k * c->m + i];
            size_t runs = c->b->msgs[i].msg_hdr.msg_iovlen;
            for (size_t d = 0; e && list != NULL && d < runs; d++) {
                PyObject *t = Py_BuildValue("(nii)", c->b->msg_entry[i] + (Py_ssize_t)d,
                                            group[k], (int)e);
                if (t == NULL || PyList_Append(list, t) < 0)
                    Py_CLEAR(list);
                Py_XDECREF(t);
            }
        }
    }
    return list;
}

/* Read a sequence of socket indices into idx[] and their fds into fds[];
 * returns the count, or -1 with an error set. */
static Py_ssize_t
bio_socketset_group(BioSocketSet *r, PyObject *group, int **idx, int **fds)
{
    PyObject *seq = PySequence_Fast(group, "group must be a sequence of socket indices");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    *idx = PyMem_Calloc((size_t)n + 1, sizeof(int));
    *fds = PyMem_Calloc((size_t)n + 1, sizeof(int));
    if (*idx == NULL || *fds == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        if (bio_socketset_index(r, PySequence_Fast_GET_ITEM(seq, k), &(*idx)[k]) < 0) {
            Py_DECREF(seq);
            return -1;
        }
        (*fds)[k] = r->fds[(*idx)[k]];
    }
    Py_DECREF(seq);
    if (n == 0)
        PyErr_SetString(PyExc_ValueError, "group is empty");
    return n == 0 ? -1 : n;
}

PyDoc_STRVAR(bio_socketset_send_redundant_doc,
"send_redundant($self, /, batch, group, start=0, count=None)\n--\n\n"
"Send every datagram of the batch on every socket of `group` (socket\n"
"indices) at once; runs to one destination go as UDP GSO. Returns (sent,\n"
"failures): how many datagram-sends went and the failures as [(entry, socket index,\n"
"errno), ...]: together they account for every (datagram, socket) pair.");

static PyObject *
bio_socketset_send_redundant(BioSocketSet *r, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    static const char *const names[] = {"batch", "group", "start", "count", NULL};
    PyObject *a[4], *ret = NULL;
    int *group = NULL, *fds = NULL;
    BioSocketSetSend c = {0};
    if (bio_args_parse("send_redundant", args, nargs, kwnames, names, 4, 2, a) < 0)
        return NULL;
    PyObject *sa[3] = {a[0], a[2], a[3]};
    c.ngroups = bio_socketset_group(r, a[1], &group, &fds);
    c.group_fds = fds;
    if (c.ngroups < 0 || bio_socketset_send_setup(r, "send_redundant", sa, 0, &c) < 0 ||
        bio_socketset_send_run(&c) < 0)
        goto out;
    Py_ssize_t sent = 0;
    for (Py_ssize_t k = 0; k < c.ngroups; k++)
        sent += bio_socketset_send_results(r, c.b, c.results + k * c.m, c.m, 0, c.ecn);
    PyObject *fail = bio_socketset_failures(&c, group);
    if (fail != NULL)
        ret = Py_BuildValue("(nN)", sent, fail);
out:
    PyMem_Free(c.results);
    PyMem_Free(group);
    PyMem_Free(fds);
    return ret;
}

/* ---- stream receive with a byte low watermark ---------------------------- */

PyDoc_STRVAR(bio_socketset_recv_stream_doc,
"recv_stream($self, /, index, buffer, min_bytes, timeout=None)\n--\n\n"
"Stream socket: wait until min_bytes have arrived or timeout seconds have\n"
"passed (one wake-up either way), then read up to min_bytes into buffer.\n"
"Returns the bytes read (0: none in time, or end of stream).");

static PyObject *
bio_socketset_recv_stream(BioSocketSet *r, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    static const char *const names[] = {"index", "buffer", "min_bytes", "timeout", NULL};
    PyObject *a[4], *ret = NULL;
    int idx;
    Py_buffer pb;
    BioSocketSetStream c = {.r = r};
    if (bio_args_parse("recv_stream", args, nargs, kwnames, names, 4, 3, a) < 0 ||
        bio_socketset_usable(r) < 0 || bio_socketset_index(r, a[0], &idx) < 0 ||
        bio_timeout_parse(a[3] ? a[3] : Py_None, &c.timeout_ns) < 0)
        return NULL;
    long long want;
    if (r->state[idx] != BIO_SOCK_STREAM) {
        PyErr_Format(PyExc_ValueError,
                     "recv_stream needs a stream socket (added with stream=True); socket %d is a "
                     "datagram socket: use recv_batch",
                     idx);
        return NULL;
    }
    if (bio_args_int_type("min_bytes", a[2], 0) < 0 ||
        PyObject_GetBuffer(a[1], &pb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (bio_args_int("min_bytes", a[2], 1, pb.len < 0x7fffffff ? pb.len : 0x7fffffff, &want) < 0)
        goto out;
    c.fd = r->fds[idx];
    c.buf = pb.buf;
    c.want = (size_t)want;
    c.deadline = c.timeout_ns < 0 ? -1 : bio_now_ns() + c.timeout_ns;
    r->call_gen++;
    int err = bio_socketset_run(r, NULL, r->stream_nogil, &c);
    if (err == -EINTR && c.queued) {
        /* a handler raised: the kernel must stop writing the buffer first */
        r->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        r->stream_abort_nogil(&c);
        Py_END_ALLOW_THREADS
        r->busy = 0;
    }
    if (bio_socketset_after(r, err) < 0)
        goto out;
    if (err == 0 && c.got < 0)
        err = (int)c.got;
    if (err == 0)
        ret = PyLong_FromLong(c.got);
    else if (err != -EINTR)
        bio_raise_errno(err);
out:
    PyBuffer_Release(&pb);
    return ret;
}

/* ---- Python methods ---------------------------------------------------- */

PyDoc_STRVAR(bio_socketset_take_errors_doc,
"take_errors($self, /)\n--\n\n"
"Per-socket errors seen since the last call (receive side), oldest first,\n"
"as a list of (socket index, errno).");

static PyObject *
bio_socketset_take_errors(BioSocketSet *r, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New(r->nerr);
    for (int i = 0; list != NULL && i < r->nerr; i++) {
        PyObject *t = Py_BuildValue("(ii)", r->err_sock[i], r->err_no[i]);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, t);
    }
    if (list != NULL)
        r->nerr = 0;
    return list;
}

static PyObject *
bio_socketset_counters(BioSocketSet *r, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(r->counters, bio_socketset_counter_names, BIO_SOCKETSET_NCOUNTERS);
}

/* add_to_counter(name, n): add n to a counter (negative: take n back), for the
 * Python side's own accounting (an ECN downgrade's resends). */
static PyObject *
bio_socketset_count(BioSocketSet *r, PyObject *args)
{
    return bio_counters_count_py(r->counters, bio_socketset_counter_names, BIO_SOCKETSET_NCOUNTERS, args);
}

static PyObject *
bio_socketset_reset_counters(BioSocketSet *r, PyObject *Py_UNUSED(ignored))
{
    memset(r->counters, 0, sizeof(r->counters));
    Py_RETURN_NONE;
}

static PyObject *
bio_socketset_fd(BioSocketSet *r, PyObject *arg)
{
    int idx;
    if (bio_socketset_index(r, arg, &idx) < 0)
        return NULL;
    return PyLong_FromLong(r->fds[idx]);
}

static void
bio_socketset_dealloc(BioSocketSet *r)
{
    bio_socketset_free_all(r);
    bio_wake_fini(&r->wake);
    PyMem_Free(r->fds);
    PyMem_Free(r->state);
    PyMem_Free(r->flags);
    PyMem_Free(r->gen);
    PyMem_Free(r->err_sock);
    PyMem_Free(r->err_no);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyMethodDef bio_socketset_methods[] = {
    {"recv_batch", (PyCFunction)(void (*)(void))bio_socketset_recv_batch,
     METH_FASTCALL | METH_KEYWORDS, bio_socketset_recv_batch_doc},
    {"send_batch", (PyCFunction)(void (*)(void))bio_socketset_send_batch,
     METH_FASTCALL | METH_KEYWORDS, bio_socketset_send_batch_doc},
    {"send_redundant", (PyCFunction)(void (*)(void))bio_socketset_send_redundant,
     METH_FASTCALL | METH_KEYWORDS, bio_socketset_send_redundant_doc},
    {"recv_stream", (PyCFunction)(void (*)(void))bio_socketset_recv_stream,
     METH_FASTCALL | METH_KEYWORDS, bio_socketset_recv_stream_doc},
    {"take_errors", (PyCFunction)bio_socketset_take_errors, METH_NOARGS,
     bio_socketset_take_errors_doc},
    {"counters", (PyCFunction)bio_socketset_counters, METH_NOARGS,
     "counters($self, /)\n--\n\nA dict of every counter."},
    {"add_to_counter", (PyCFunction)bio_socketset_count, METH_VARARGS,
     "add_to_counter($self, name, n, /)\n--\n\nAdd n to the counter name (negative: take n back)."},
    {"reset_counters", (PyCFunction)bio_socketset_reset_counters, METH_NOARGS,
     "reset_counters($self, /)\n--\n\nSet every counter to 0."},
    {"fd", (PyCFunction)bio_socketset_fd, METH_O,
     "fd($self, index, /)\n--\n\nThe set's own descriptor for the socket at index."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_socketset_members[] = {
    {"capacity", T_INT, offsetof(BioSocketSet, cap), READONLY, "socket slots"},
    {"count", T_INT, offsetof(BioSocketSet, count), READONLY, "sockets in the set"},
    {"gso", T_INT, offsetof(BioSocketSet, gso), 0, "1: send equal runs with UDP GSO"},
    {"gso_max_segments", T_INT, offsetof(BioSocketSet, gso_max_segments), 0,
     "segments per GSO send to build"},
    {"ecn_cmsg", T_INT, offsetof(BioSocketSet, ecn_cmsg), 0,
     "1: send each datagram's ECN codepoint (batch.ecn); 0: not (no ECN here, or the kernel refused "
     "the cmsg: downgraded, counted in tx_ecn_unmarked); 2 (tests only): a TOS byte out of range, which "
     "every kernel refuses"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject BioSocketSet_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.SocketSetBase",
    .tp_basicsize = sizeof(BioSocketSet),
    .tp_dealloc = (destructor)bio_socketset_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "What the two SocketSet backends share (internal).",
    .tp_methods = bio_socketset_methods,
    .tp_members = bio_socketset_members,
};

int
bio_socketset_init_types(PyObject *module)
{
    if (PyType_Ready(&BioSocketSet_Type) < 0)
        return -1;
    if (bio_uringset_init_type(module) < 0 || bio_epollset_init_type(module) < 0)
        return -1;
    return 0;
}
