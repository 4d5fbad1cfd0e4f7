/* EpollRing: the Ring contract without io_uring.
 *
 * One C call does what a Python loop over select.epoll would: epoll_wait
 * on every registered socket, then one recvmmsg per ready socket straight
 * into the caller's batch, until the batch is full or nothing is ready.
 * The min_datagrams watermark costs one wake-up per arrival burst here
 * (epoll cannot count datagrams); the io_uring backend needs only one.
 * Sends use one sendmmsg per run of messages for the same socket.
 */
#include "burstio.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

typedef struct {
    BioRingBase base;
    int epfd;
    int maxevents;
    struct epoll_event *events;
} BioDrain;

static PyTypeObject BioDrain_Type;
static int bio_drain_check(BioRingBase *base);
static int bio_drain_recv_nogil(void *arg);
static int bio_drain_send_nogil(void *arg);

static PyObject *
bio_drain_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_sockets", NULL};
    int max_sockets = 1024;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i:EpollRing", kwlist, &max_sockets))
        return NULL;
    if (max_sockets < 1 || max_sockets > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "need 1 <= max_sockets <= 1048576, got %d", max_sockets);
        return NULL;
    }
    BioDrain *d = (BioDrain *)type->tp_alloc(type, 0);
    if (d == NULL)
        return NULL;
    d->epfd = -1;
    d->maxevents = max_sockets < 1024 ? max_sockets : 1024;
    d->events = PyMem_Calloc((size_t)d->maxevents, sizeof(struct epoll_event));
    if (d->events == NULL) {
        Py_DECREF(d);
        return PyErr_NoMemory();
    }
    if (bio_ringbase_alloc(&d->base, max_sockets) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    d->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (d->epfd < 0) {
        int e = errno;
        Py_DECREF(d);
        return bio_raise_errno(-e);
    }
    d->base.check = bio_drain_check;
    d->base.recv_nogil = bio_drain_recv_nogil;
    d->base.send_nogil = bio_drain_send_nogil;
    return (PyObject *)d;
}

static void
bio_drain_dealloc(BioDrain *d)
{
    if (d->epfd >= 0)
        close(d->epfd);
    PyMem_Free(d->events);
    BioRingBase_Type.tp_dealloc((PyObject *)d);
}

static int
bio_drain_check(BioRingBase *base)
{
    BioDrain *d = (BioDrain *)base;
    if (d->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "the ring is closed");
        return -1;
    }
    return 0;
}

/* ---- receive ----------------------------------------------------------- */

/* Point msgs[first, first + n) at slots first.. of the arena. */
static void
bio_drain_prepare(BioBatch *b, Py_ssize_t first, Py_ssize_t n)
{
    for (Py_ssize_t k = first; k < first + n; k++) {
        struct msghdr *h = &b->msgs[k].msg_hdr;
        memset(h, 0, sizeof(*h));
        b->iov[k].iov_base = b->arena + (size_t)k * (size_t)b->slot_size;
        b->iov[k].iov_len = (size_t)b->slot_size;
        h->msg_name = &b->names[k];
        h->msg_namelen = sizeof(struct sockaddr_in6);
        h->msg_iov = &b->iov[k];
        h->msg_iovlen = 1;
    }
}

/* Messages per recvmmsg on one ready socket: most have a few datagrams; a
 * socket that fills the window is asked again. */
#define BIO_DRAIN_WINDOW 64

/* One recvmmsg on socket idx into entries *n..; returns the datagrams taken
 * (0 if none or an error, which is queued). *prepared: entries whose
 * msghdr is ready (each is prepared once per call). nogil. */
static int
bio_drain_socket_once(BioDrain *d, int idx, BioBatch *b, Py_ssize_t *n, Py_ssize_t *prepared)
{
    Py_ssize_t room = bio_ring_room(b) - *n;
    if (room <= 0)
        return 0;
    if (room > BIO_DRAIN_WINDOW)
        room = BIO_DRAIN_WINDOW;
    if (*n + room > *prepared) {
        Py_ssize_t from = *prepared > *n ? *prepared : *n;
        bio_drain_prepare(b, from, *n + room - from);
        *prepared = *n + room;
    }
    BIO_RCOUNT(d, BIO_R_SYSCALLS, 1);
    int r = recvmmsg(d->base.fds[idx], &b->msgs[*n], (unsigned)room, MSG_DONTWAIT | MSG_TRUNC, NULL);
    if (r < 0) {
        int e = errno;
        if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
            return 0;
        if (e == EBADF || e == ENOTSOCK) {
            d->base.state[idx] = BIO_SOCK_DEAD;
            epoll_ctl(d->epfd, EPOLL_CTL_DEL, d->base.fds[idx], NULL);
        }
        bio_ringbase_error_nogil(&d->base, idx, e);
        return 0;
    }
    for (int k = 0; k < r; k++) {
        Py_ssize_t j = *n + k;
        uint32_t len = b->msgs[j].msg_len;
        uint32_t stored = len > (uint32_t)b->slot_size ? (uint32_t)b->slot_size : len;
        int trunc = (b->msgs[j].msg_hdr.msg_flags & MSG_TRUNC) != 0;
        bio_ring_set_received(b, j, stored, trunc, idx);
        BIO_RCOUNT(d, BIO_R_RX_BYTES, stored);
        if (trunc)
            BIO_RCOUNT(d, BIO_R_RX_TRUNCATED, 1);
    }
    BIO_RCOUNT(d, BIO_R_RX_DATAGRAMS, r);
    *n += r;
    return r == room ? r : 0; /* a full window: there may be more */
}

/* Take what socket idx has queued, up to the batch's room. nogil. */
static void
bio_drain_socket_nogil(BioDrain *d, int idx, BioBatch *b, Py_ssize_t *n, Py_ssize_t *prepared)
{
    while (bio_drain_socket_once(d, idx, b, n, prepared) > 0)
        ;
}

static int
bio_drain_ms(int64_t deadline_ns)
{
    if (deadline_ns < 0)
        return -1;
    int64_t left = deadline_ns - bio_now_ns();
    if (left <= 0)
        return 0;
    int64_t ms = (left + 999999) / 1000000;
    return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

/* epoll_wait, then drain every ready socket, until the watermark is met
 * (or an error arrives) or its deadline passes; if nothing came by then,
 * wait for one until the timeout. 0 or -errno (EINTR: resumable). nogil. */
static int
bio_drain_recv_nogil(void *arg)
{
    BioRingRecv *c = arg;
    BioDrain *d = (BioDrain *)c->r;
    Py_ssize_t room = bio_ring_room(c->b), prepared = c->n;
    for (;;) {
        Py_ssize_t have = c->n + (d->base.nerr - c->errors0);
        int64_t now = bio_now_ns();
        int late = c->watermark_deadline >= 0 && now >= c->watermark_deadline;
        if (have >= c->want || c->n >= room || (late && have > 0))
            return 0;
        /* past the watermark's deadline with nothing: wait for one */
        int ms = bio_drain_ms(late ? c->first_deadline : c->watermark_deadline);
        BIO_RCOUNT(d, BIO_R_SYSCALLS, 1);
        int r = epoll_wait(d->epfd, d->events, d->maxevents, ms);
        if (r < 0)
            return -errno;
        for (int i = 0; i < r && c->n < room; i++)
            bio_drain_socket_nogil(d, (int)d->events[i].data.u32, c->b, &c->n, &prepared);
        if (r == 0 && ms == 0)
            return 0;
        if (r == 0 && late)
            return 0; /* the timeout for the first datagram passed too */
    }
}

/* ---- send -------------------------------------------------------------- */

/* sendmmsg messages [i, end) on fd, recording each message's errno in
 * res[] (0: sent) and going on past failures. nogil. */
static void
bio_drain_sendmmsg_nogil(BioDrain *d, int fd, struct mmsghdr *msgs, Py_ssize_t i,
                         Py_ssize_t end, int32_t *res)
{
    while (i < end) {
        Py_ssize_t want = end - i > BIO_MMSG_MAX ? BIO_MMSG_MAX : end - i;
        BIO_RCOUNT(d, BIO_R_SYSCALLS, 1);
        int r = sendmmsg(fd, msgs + i, (unsigned)want, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            res[i++] = errno; /* this one failed: go on with the next */
            continue;
        }
        for (int k = 0; k < r; k++)
            res[i + k] = 0;
        i += r;
    }
}

/* Each run of messages for one socket (or all messages on each socket of
 * the group) through sendmmsg. Always 0. nogil. */
static int
bio_drain_send_nogil(void *arg)
{
    BioRingSend *c = arg;
    BioDrain *d = (BioDrain *)c->r;
    BioBatch *b = c->b;
    if (c->group_fds != NULL) {
        for (Py_ssize_t k = 0; k < c->ngroups; k++)
            bio_drain_sendmmsg_nogil(d, c->group_fds[k], b->msgs, 0, c->m, c->results + k * c->m);
        return 0;
    }
    for (Py_ssize_t i = 0; i < c->m;) {
        int32_t s = b->sockets[b->msg_entry[i]];
        Py_ssize_t end = i + 1;
        while (end < c->m && b->sockets[b->msg_entry[end]] == s)
            end++;
        bio_drain_sendmmsg_nogil(d, d->base.fds[s], b->msgs, i, end, c->results);
        i = end;
    }
    return 0;
}

/* ---- sockets ----------------------------------------------------------- */

static PyObject *
bio_drain_add(BioDrain *d, PyObject *args, PyObject *kwds)
{
    int fd, stream;
    if (bio_ringbase_add_args(args, kwds, &fd, &stream) < 0 || bio_drain_check(&d->base) < 0)
        return NULL;
    int idx = bio_ringbase_take_slot(&d->base, fd);
    if (idx < 0)
        return NULL;
    if (stream) {
        d->base.state[idx] = BIO_SOCK_STREAM;
        return PyLong_FromLong(idx);
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)idx};
    if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        bio_ringbase_free_slot(&d->base, idx);
        return bio_raise_errno(-e);
    }
    d->base.state[idx] = BIO_SOCK_ARMED;
    return PyLong_FromLong(idx);
}

static PyObject *
bio_drain_remove(BioDrain *d, PyObject *arg)
{
    int idx;
    if (bio_drain_check(&d->base) < 0 || bio_ringbase_index(&d->base, arg, &idx) < 0)
        return NULL;
    if (d->base.state[idx] == BIO_SOCK_ARMED)
        epoll_ctl(d->epfd, EPOLL_CTL_DEL, d->base.fds[idx], NULL); /* fd may be gone: fine */
    bio_ringbase_free_slot(&d->base, idx);
    Py_RETURN_NONE;
}

static PyObject *
bio_drain_close(BioDrain *d, PyObject *Py_UNUSED(ignored))
{
    if (d->epfd >= 0) {
        close(d->epfd);
        d->epfd = -1;
    }
    Py_RETURN_NONE;
}

static PyObject *
bio_drain_describe(BioDrain *d, PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromString("epoll + one recvmmsg per ready socket, in one C call");
}

/* ---- stream receive with a byte low watermark --------------------------- */

typedef struct {
    int fd;
    void *buf;
    size_t want;
    int64_t deadline;
    ssize_t got;
} BioDrainStream;

/* SO_RCVLOWAT makes poll() wake once `want` bytes are there (or at the
 * deadline, or on EOF/error); then take them. 0 or -errno. nogil. */
static int
bio_drain_stream_nogil(void *arg)
{
    BioDrainStream *c = arg;
    int p = bio_poll_nogil(c->fd, POLLIN, c->deadline);
    if (p < 0)
        return p;
    c->got = recv(c->fd, c->buf, c->want, MSG_DONTWAIT);
    if (c->got < 0) {
        c->got = 0;
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    }
    return 0;
}

PyDoc_STRVAR(bio_drain_recv_stream_doc,
"recv_stream(index, buffer, min_bytes, timeout=None) -> int\n\n"
"Stream socket: wait until min_bytes have arrived or timeout seconds have\n"
"passed (one wake-up: SO_RCVLOWAT), then read up to min_bytes into buffer.\n"
"Returns the bytes read (0 at end of stream or if none came in time).");

static PyObject *
bio_drain_recv_stream(BioDrain *d, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"index", "buffer", "min_bytes", "timeout", NULL};
    PyObject *a[4];
    int idx;
    int64_t timeout_ns;
    Py_buffer pb;
    if (bio_args_parse("recv_stream", args, nargs, kwnames, names, 4, 3, a) < 0 ||
        bio_drain_check(&d->base) < 0 || bio_ringbase_index(&d->base, a[0], &idx) < 0 ||
        bio_timeout_parse(a[3] ? a[3] : Py_None, &timeout_ns) < 0)
        return NULL;
    Py_ssize_t want = PyNumber_AsSsize_t(a[2], PyExc_OverflowError);
    if ((want == -1 && PyErr_Occurred()) ||
        PyObject_GetBuffer(a[1], &pb, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (want < 1 || want > pb.len || want > 0x7fffffff) {
        PyErr_Format(PyExc_ValueError, "min_bytes must be between 1 and len(buffer) = %zd, got %zd",
                     pb.len, want);
        goto out;
    }
    BioDrainStream c = {.fd = d->base.fds[idx], .buf = pb.buf, .want = (size_t)want,
                        .deadline = timeout_ns < 0 ? -1 : bio_now_ns() + timeout_ns};
    int lowat = (int)want, one = 1;
    if (setsockopt(c.fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)) < 0) {
        bio_raise_errno(-errno);
        goto out;
    }
    BIO_RCOUNT(d, BIO_R_SYSCALLS, 4);
    int err = bio_nogil_retry(bio_drain_stream_nogil, &c);
    setsockopt(c.fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    if (err == 0)
        ret = PyLong_FromSsize_t(c.got);
    else if (err != -EINTR)
        bio_raise_errno(err);
out:
    PyBuffer_Release(&pb);
    return ret;
}

/* ---- the type ---------------------------------------------------------- */

static PyMethodDef bio_drain_methods[] = {
    {"recv_stream", (PyCFunction)(void (*)(void))bio_drain_recv_stream,
     METH_FASTCALL | METH_KEYWORDS, bio_drain_recv_stream_doc},
    {"add", (PyCFunction)(void (*)(void))bio_drain_add, METH_VARARGS | METH_KEYWORDS,
     "add(sock, stream=False) -> index (stream: for recv_stream only)"},
    {"remove", (PyCFunction)bio_drain_remove, METH_O,
     "remove(index): stop receiving on that socket and free its index"},
    {"close", (PyCFunction)bio_drain_close, METH_NOARGS, "close(): release the epoll fd"},
    {"describe", (PyCFunction)bio_drain_describe, METH_NOARGS, "describe() -> str"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BioDrain_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.EpollRing",
    .tp_basicsize = sizeof(BioDrain),
    .tp_dealloc = (destructor)bio_drain_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "EpollRing(max_sockets=1024): the Ring contract on epoll + recvmmsg "
              "(internal; see burstio.Ring).",
    .tp_methods = bio_drain_methods,
    .tp_new = bio_drain_new,
};

int
bio_drain_init_type(PyObject *module)
{
    BioDrain_Type.tp_base = &BioRingBase_Type;
    if (PyType_Ready(&BioDrain_Type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "EpollRing", (PyObject *)&BioDrain_Type);
}
