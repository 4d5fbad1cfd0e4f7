/* EpollSocketSet: the SocketSet contract without io_uring.
 *
 * One C call does what a Python loop over select.epoll would: epoll_wait
 * on every registered socket, then one recvmmsg per ready socket straight
 * into the caller's batch, until the batch is full or nothing is ready.
 * The min_datagrams watermark costs one wake-up per arrival burst here
 * (epoll cannot count datagrams); the io_uring backend needs only one.
 * Sends use one sendmmsg per run of messages for the same socket.
 *
 * Where a datagram goes through it: the kernel's socket queue -> recvmmsg
 * straight into slot j of the caller's batch (entry j, batch.sockets[j] =
 * the socket's index); on send, the batch's messages (batch/msgs.c) ->
 * sendmmsg on each entry's socket.
 */
#include "socketset/socketset.h"
#include "core/compat.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <structmember.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <unistd.h>

typedef struct {
    BioSocketSet base;
    int epfd;
    int maxevents;
    struct epoll_event *events;
} BioEpollSet;

static PyTypeObject BioEpollSet_Type;
static int bio_epollset_check(BioSocketSet *base);
static int bio_epollset_recv_nogil(void *arg);
static int bio_epollset_send_nogil(void *arg);
static int bio_epollset_stream_nogil(void *arg);
static void bio_epollset_stream_abort_nogil(void *arg);
static void bio_epollset_close_now(BioSocketSet *base);
static int bio_epollset_after_fork(BioSocketSet *base);
static int bio_epollset_instance(BioEpollSet *d, int like);

static PyObject *
bio_epollset_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_sockets", NULL};
    int max_sockets = 1024;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i:EpollSocketSet", kwlist, &max_sockets))
        return NULL;
    if (max_sockets < 1 || max_sockets > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "need 1 <= max_sockets <= 1048576, got %d", max_sockets);
        return NULL;
    }
    BioEpollSet *d = (BioEpollSet *)type->tp_alloc(type, 0);
    if (d == NULL)
        return NULL;
    d->epfd = -1;
    d->maxevents = max_sockets < 1024 ? max_sockets : 1024;
    d->events = PyMem_Calloc((size_t)d->maxevents, sizeof(struct epoll_event));
    if (d->events == NULL) {
        Py_DECREF(d);
        return PyErr_NoMemory();
    }
    if (bio_socketset_alloc(&d->base, max_sockets) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    int epfd = bio_epollset_instance(d, -1);
    if (epfd < 0) {
        Py_DECREF(d);
        return bio_raise_errno(epfd);
    }
    d->epfd = epfd;
    d->base.check = bio_epollset_check;
    d->base.close_now = bio_epollset_close_now;
    d->base.after_fork = bio_epollset_after_fork;
    d->base.recv_nogil = bio_epollset_recv_nogil;
    d->base.send_nogil = bio_epollset_send_nogil;
    d->base.stream_nogil = bio_epollset_stream_nogil;
    d->base.stream_abort_nogil = bio_epollset_stream_abort_nogil;
    return (PyObject *)d;
}

static void
bio_epollset_dealloc(BioEpollSet *d)
{
    if (d->epfd >= 0)
        close(d->epfd);
    PyMem_Free(d->events);
    BioSocketSet_Type.tp_dealloc((PyObject *)d);
}

/* An epoll instance holding the wake eventfd and every receiving socket of
 * the set, with the busy-poll parameters of `like` (-1: none). The new
 * descriptor, or -errno. */
static int
bio_epollset_instance(BioEpollSet *d, int like)
{
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return -errno;
    struct epoll_event wev = {.events = EPOLLIN, .data.u32 = UINT32_MAX}; /* close() wakes */
    int err = epoll_ctl(epfd, EPOLL_CTL_ADD, d->base.wake.efd, &wev) < 0 ? -errno : 0;
    for (int i = 0; err == 0 && i < d->base.cap; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (d->base.state[i] == BIO_SOCK_ARMED &&
            epoll_ctl(epfd, EPOLL_CTL_ADD, d->base.fds[i], &ev) < 0)
            err = -errno;
    }
    uint64_t params = 0; /* struct epoll_params: 8 bytes (core/compat.h) */
    if (err == 0 && like >= 0 && ioctl(like, EPIOCGPARAMS, &params) == 0 && params != 0)
        ioctl(epfd, EPIOCSPARAMS, &params); /* best effort, as the parent had it */
    if (err < 0) {
        close(epfd);
        return err;
    }
    return epfd;
}

/* A fork()ed child's first call: the set becomes the child's own. The epoll
 * instance and the wake eventfd inherited are the parent's (one kernel
 * object each: the child's add/remove would change the parent's set, and
 * its close() wake the parent); the child makes its own and registers its
 * copies of the sockets there. The sockets themselves stay shared, as any
 * socket a process inherits: a datagram goes to whichever process receives
 * it first. 0, or -1 with OSError. */
static int
bio_epollset_after_fork(BioSocketSet *base)
{
    BioEpollSet *d = (BioEpollSet *)base;
    int err = bio_wake_refresh(&d->base.wake);
    int epfd = err < 0 ? err : bio_epollset_instance(d, d->epfd);
    if (epfd < 0) {
        bio_raise_errno(epfd);
        return -1;
    }
    if (d->epfd >= 0)
        close(d->epfd); /* our copy: the parent keeps its own */
    d->epfd = epfd;
    d->base.wake.pid = getpid();
    return 0;
}

static int
bio_epollset_check(BioSocketSet *base)
{
    BioEpollSet *d = (BioEpollSet *)base;
    if (d->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "the socket set is closed");
        return -1;
    }
    return 0;
}

/* ---- receive ----------------------------------------------------------- */

/* Point msgs[first, first + n) at slots first.. of the arena, each with its
 * control buffer (a socket's UDP_GRO may be turned on after add(), and one
 * that asked for metadata gets its cmsgs: see socketset/meta.c). */
static void
bio_epollset_prepare(BioBatch *b, Py_ssize_t first, Py_ssize_t n)
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
        h->msg_control = bio_batch_cmsg(b, k);
        h->msg_controllen = bio_batch_cmsg_size(b);
    }
}

/* Messages per recvmmsg on one ready socket: most have a few datagrams; a
 * socket that fills the window is asked again. */
#define BIO_EPOLLSET_WINDOW 64

/* One recvmmsg on socket idx into entries *n..; returns the datagrams taken
 * (0 if none or an error, which is queued). *prepared: entries whose
 * msghdr is ready (each is prepared once per call). nogil. */
static int
bio_epollset_socket_once(BioEpollSet *d, int idx, BioBatch *b, Py_ssize_t *n, Py_ssize_t *prepared)
{
    Py_ssize_t room = bio_socketset_room(&d->base, b) - *n;
    if (room <= 0)
        return 0;
    if (room > BIO_EPOLLSET_WINDOW)
        room = BIO_EPOLLSET_WINDOW;
    if (*n + room > *prepared) {
        Py_ssize_t from = *prepared > *n ? *prepared : *n;
        bio_epollset_prepare(b, from, *n + room - from);
        *prepared = *n + room;
    }
    BIO_COUNT(d->base.counters, BIO_SOCKETSET_C_SYSCALLS, 1);
    int r = recvmmsg(d->base.fds[idx], &b->msgs[*n], (unsigned)room, MSG_DONTWAIT | MSG_TRUNC,
                     NULL);
    if (r < 0) {
        int e = errno;
        if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
            return 0;
        bio_socketset_error_nogil(&d->base, idx, e);
        return 0;
    }
    for (int k = 0; k < r; k++) {
        Py_ssize_t j = *n + k;
        const struct msghdr *h = &b->msgs[j].msg_hdr;
        uint32_t len = b->msgs[j].msg_len;
        uint32_t stored = len > (uint32_t)b->slot_size ? (uint32_t)b->slot_size : len;
        int trunc = (h->msg_flags & MSG_TRUNC) != 0;
        size_t cap = bio_batch_cmsg_size(b);
        bio_socketset_recv_cmsgs(&d->base, idx, b, j, h->msg_control,
                                 h->msg_controllen < cap ? h->msg_controllen : cap);
        bio_socketset_set_received(&d->base, b, j, stored, len, trunc, idx);
        BIO_COUNT(d->base.counters, BIO_SOCKETSET_C_RX_BYTES, stored);
        if (trunc)
            BIO_COUNT(d->base.counters, BIO_SOCKETSET_C_RX_TRUNCATED, 1);
    }
    BIO_COUNT(d->base.counters, BIO_SOCKETSET_C_RX_DATAGRAMS, r);
    *n += r;
    return r == room ? r : 0; /* a full window: there may be more */
}

/* Take what socket idx has queued, up to the batch's room. nogil. */
static void
bio_epollset_socket_nogil(BioEpollSet *d, int idx, BioBatch *b, Py_ssize_t *n, Py_ssize_t *prepared)
{
    while (bio_epollset_socket_once(d, idx, b, n, prepared) > 0)
        ;
}

/* epoll_wait, then empty every ready socket, until the watermark is met
 * (or an error arrives) or its deadline passes; if nothing came by then,
 * wait for one until the timeout. 0 or -errno (EINTR: resumable). nogil. */
static int
bio_epollset_recv_nogil(void *arg)
{
    BioSocketSetRecv *c = arg;
    BioEpollSet *d = (BioEpollSet *)c->r;
    Py_ssize_t prepared = c->n;
    for (;;) {
        Py_ssize_t have = c->n + (d->base.nerr - c->errors0);
        int64_t now = bio_now_ns();
        int late = c->watermark_deadline >= 0 && now >= c->watermark_deadline;
        if (have >= c->want || c->n >= bio_socketset_room(&d->base, c->b) || (late && have > 0))
            return 0;
        /* past the watermark's deadline with nothing: wait for one */
        int ms = bio_deadline_ms(late ? c->first_deadline : c->watermark_deadline);
        BIO_COUNT(d->base.counters, BIO_SOCKETSET_C_SYSCALLS, 1);
        int r = epoll_wait(d->epfd, d->events, d->maxevents, ms);
        if (bio_wake_closing(&d->base.wake))
            return -BIO_ECLOSED;
        if (r < 0)
            return -errno;
        for (int i = 0; i < r && c->n < bio_socketset_room(&d->base, c->b); i++)
            if (d->events[i].data.u32 != UINT32_MAX)
                bio_epollset_socket_nogil(d, (int)d->events[i].data.u32, c->b, &c->n, &prepared);
        if (r == 0 && ms == 0)
            return 0;
        if (r == 0 && late)
            return 0; /* the timeout for the first datagram passed too */
    }
}

/* ---- send -------------------------------------------------------------- */

/* sendmmsg pairs [c->done, end) of group k (messages i..) on fd, recording
 * each message's errno (0: sent) and going on past failures; a full socket
 * fails at once with EAGAIN (MSG_DONTWAIT). 0 or -EINTR (resumable: c->done
 * says how far it got). A short count whose failing message then goes
 * through on the retry lost its error (see udp/send.c): counted. nogil. */
static int
bio_epollset_sendmmsg_nogil(BioEpollSet *d, int fd, BioSocketSetSend *c, Py_ssize_t end)
{
    int short_return = 0;
    while (c->done < end) {
        Py_ssize_t i = c->done % c->m, want = end - c->done;
        if (want > BIO_MMSG_MAX)
            want = BIO_MMSG_MAX;
        BIO_COUNT(d->base.counters, BIO_SOCKETSET_C_SYSCALLS, 1);
        int r = sendmmsg(fd, c->b->msgs + i, (unsigned)want, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            return -EINTR;
        if (r < 0) {
            c->results[c->done++] = errno; /* this one failed: go on */
            short_return = 0;
            continue;
        }
        if (short_return && c->b->msgs[i].msg_hdr.msg_name == NULL)
            BIO_COUNT(d->base.counters, BIO_SOCKETSET_C_TX_UNREPORTED_ERRORS, 1);
        short_return = r < want;
        for (int k = 0; k < r; k++)
            c->results[c->done + k] = 0;
        c->done += r;
    }
    return 0;
}

/* Each run of messages for one socket (or all messages on each socket of
 * the group) through sendmmsg. 0 or -EINTR (resumable). nogil. */
static int
bio_epollset_send_nogil(void *arg)
{
    BioSocketSetSend *c = arg;
    BioEpollSet *d = (BioEpollSet *)c->r;
    BioBatch *b = c->b;
    if (c->stopping) /* nothing is left in the kernel: a sendmmsg is over when it returns */
        return 0;
    while (c->done < c->total) {
        Py_ssize_t k = c->done / c->m, i = c->done % c->m, end;
        int fd;
        if (c->group_fds != NULL) {
            fd = c->group_fds[k];
            end = (k + 1) * c->m;
        } else {
            int32_t s = b->priv[b->msg_entry[i]].sock; /* checked with the GIL held */
            for (end = c->done + 1; end < c->m && b->priv[b->msg_entry[end]].sock == s;)
                end++;
            fd = d->base.fds[s];
        }
        int err = bio_epollset_sendmmsg_nogil(d, fd, c, end);
        if (err < 0)
            return err;
    }
    return 0;
}

/* ---- sockets ----------------------------------------------------------- */

static PyObject *
bio_epollset_add(BioEpollSet *d, PyObject *args, PyObject *kwds)
{
    int fd, stream, meta;
    if (bio_socketset_add_args(args, kwds, &fd, &stream, &meta) < 0 ||
        bio_socketset_usable(&d->base) < 0)
        return NULL;
    int idx = bio_socketset_take_slot(&d->base, fd);
    if (idx < 0)
        return NULL;
    bio_socketset_set_flags(&d->base, idx, meta && !stream);
    if (stream) {
        d->base.state[idx] = BIO_SOCK_STREAM;
        return PyLong_FromLong(idx);
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)idx};
    if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, d->base.fds[idx], &ev) < 0) {
        int e = errno;
        bio_socketset_free_slot(&d->base, idx);
        return bio_raise_errno(-e);
    }
    d->base.state[idx] = BIO_SOCK_ARMED;
    return PyLong_FromLong(idx);
}

static PyObject *
bio_epollset_remove(BioEpollSet *d, PyObject *arg)
{
    int idx;
    if (bio_socketset_usable(&d->base) < 0 || bio_socketset_index(&d->base, arg, &idx) < 0)
        return NULL;
    if (d->base.state[idx] == BIO_SOCK_ARMED)
        epoll_ctl(d->epfd, EPOLL_CTL_DEL, d->base.fds[idx], NULL);
    bio_socketset_free_slot(&d->base, idx);
    Py_RETURN_NONE;
}

static void
bio_epollset_close_now(BioSocketSet *base)
{
    BioEpollSet *d = (BioEpollSet *)base;
    bio_socketset_free_all(&d->base);
    if (d->epfd >= 0) {
        close(d->epfd);
        d->epfd = -1;
    }
}

static PyObject *
bio_epollset_close(BioEpollSet *d, PyObject *Py_UNUSED(ignored))
{
    return bio_socketset_close(&d->base);
}

static PyObject *
bio_epollset_describe(BioEpollSet *d, PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromString("epoll + one recvmmsg per ready socket, in one C call");
}

/* ---- stream receive with a byte low watermark --------------------------- */

/* SO_RCVLOWAT makes poll() wake once `want` bytes are there (or at the
 * deadline, or on EOF/error); then take up to `want`. The watermark is set
 * and put back around it. 0 or -errno (EINTR: resumable). nogil. */
static int
bio_epollset_stream_nogil(void *arg)
{
    BioSocketSetStream *c = arg;
    int lowat = (int)c->want, one = 1;
    if (!c->queued) {
        BIO_COUNT(c->r->counters, BIO_SOCKETSET_C_SYSCALLS, 1);
        if (setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)) < 0)
            return -errno;
        c->queued = 1;
    }
    BIO_COUNT(c->r->counters, BIO_SOCKETSET_C_SYSCALLS, 3);
    int p = bio_wake_poll_nogil(&c->r->wake, c->fd, POLLIN, c->deadline);
    if (p == -EINTR)
        return p;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    c->queued = 0;
    if (p < 0)
        return p;
    ssize_t got = recv(c->fd, c->buf, c->want, MSG_DONTWAIT);
    c->got = got >= 0 ? (long)got : (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    return 0;
}

/* After an interrupt: nothing is in the kernel's hands; put the watermark
 * back. */
static void
bio_epollset_stream_abort_nogil(void *arg)
{
    BioSocketSetStream *c = arg;
    int one = 1;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
}

/* ---- the type ---------------------------------------------------------- */

static PyMethodDef bio_epollset_methods[] = {
    {"add", (PyCFunction)(void (*)(void))bio_epollset_add, METH_VARARGS | METH_KEYWORDS,
     "add($self, /, sock, stream=False, meta=False)\n--\n\n"
     "Add a socket; returns its index (stream: for recv_stream only; meta: its receives fill "
     "the batch's metadata)."},
    {"remove", (PyCFunction)bio_epollset_remove, METH_O,
     "remove($self, index, /)\n--\n\nStop receiving on that socket and free its index."},
    {"close", (PyCFunction)bio_epollset_close, METH_NOARGS,
     "close($self, /)\n--\n\nClose the set's descriptors and the epoll fd."},
    {"describe", (PyCFunction)bio_epollset_describe, METH_NOARGS,
     "describe($self, /)\n--\n\nHow this set receives and sends, as a str."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_epollset_members[] = {
    {"epoll_fd", T_INT, offsetof(BioEpollSet, epfd), READONLY,
     "the epoll descriptor (for its busy-poll parameters, burstio.napi.busypoll)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BioEpollSet_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.EpollSocketSet",
    .tp_basicsize = sizeof(BioEpollSet),
    .tp_dealloc = (destructor)bio_epollset_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "EpollSocketSet(max_sockets=1024)\n--\n\n"
              "The SocketSet contract on epoll + recvmmsg (internal; see burstio.SocketSet).",
    .tp_methods = bio_epollset_methods,
    .tp_members = bio_epollset_members,
    .tp_new = bio_epollset_new,
};

int
bio_epollset_init_type(PyObject *module)
{
    BioEpollSet_Type.tp_base = &BioSocketSet_Type;
    if (PyType_Ready(&BioEpollSet_Type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "EpollSocketSet", (PyObject *)&BioEpollSet_Type);
}
