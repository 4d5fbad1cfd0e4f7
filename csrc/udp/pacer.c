/* Pacer: the queue of timed sends and its Python type (the sender thread is
 * udp/pacer_thread.c; the contract is udp/pacer.h's).
 *
 * Where a datagram goes through it: queue(batch) reads each entry once with
 * the GIL held (offset and length checked against the batch's data,
 * destination, local address, codepoint, transmit time checked) and copies
 * it, payload included, into the pacer's ring: the batch is the caller's to
 * reuse the moment queue() returns. The thread takes it from there.
 *
 * Lifetime: close() stops the thread (it finishes the sendmmsg under way),
 * wakes every call waiting for room or for the queue to drain, and returns
 * what was still queued, by sequence number. A fork()ed child has no sender
 * thread and must not send the parent's queue again: it starts with an
 * empty queue (the parent sends its own) and a thread of its own on its
 * first queue().
 */
#include "udp/pacer.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <sys/eventfd.h>
#include <unistd.h>

static const char *const bio_pacer_counter_names[BIO_PACER_NCOUNTERS] = {
    "tx_datagrams", "tx_bytes", "tx_syscalls", "tx_gso_messages", "tx_gso_datagrams",
    "tx_errors", "tx_ecn_unmarked", "gso_downgrades", "ecn_downgrades", "paced_queued",
    "paced_late", "paced_waits", "paced_unsent", "paced_errors_dropped", "paced_releases",
};

/* ---- set-up and teardown --------------------------------------------------- */

/* The mutex and the condition variable (its waits on CLOCK_MONOTONIC). 0 or -errno. */
static int
bio_pacer_sync_init(BioPacer *p)
{
    pthread_condattr_t ca;
    int err = pthread_condattr_init(&ca);
    if (err == 0)
        err = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (err == 0)
        err = pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (err == 0 && (err = pthread_mutex_init(&p->mu, NULL)) != 0)
        pthread_cond_destroy(&p->cv);
    p->sync_ready = err == 0;
    return -err;
}

static PyObject *
bio_pacer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "entries", "byte_size", NULL};
    PyObject *fd_o, *entries_o = NULL, *bytes_o = NULL;
    long long fd, entries = 4096, bytes = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO:Pacer", kwlist, &fd_o, &entries_o, &bytes_o) ||
        bio_args_int("fd", fd_o, -1, 0x7fffffff, &fd) < 0 ||
        (entries_o && bio_args_int("entries", entries_o, 1, 1 << 20, &entries) < 0) ||
        (bytes_o && bio_args_int("byte_size", bytes_o, 0, (long long)1 << 32, &bytes) < 0))
        return NULL;
    BioPacer *p = (BioPacer *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    p->note_efd = p->wake.efd = -1;
    for (p->cap = 1; p->cap < (uint64_t)entries; p->cap <<= 1)
        ;
    p->bcap = bytes ? (uint64_t)bytes : p->cap * 2048;
    if (p->bcap < 4 * (uint64_t)BIO_GRO_SLOT_MIN)
        p->bcap = 4 * (uint64_t)BIO_GRO_SLOT_MIN; /* the largest datagram always fits */
    p->gso_max_segments = 64;
    p->ecn_cmsg = 1;
    int err = bio_pacer_sync_init(p);
    if (err == 0)
        err = bio_wake_init(&p->wake);
    if (err == 0 && (p->note_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
        err = -errno;
    if (err == 0) {
        p->fds = PyMem_RawMalloc(sizeof(int));
        if (p->fds == NULL)
            err = -ENOMEM;
        else if ((p->fds[0] = fd >= 0 ? fcntl((int)fd, F_DUPFD_CLOEXEC, 0) : -1) < 0 && fd >= 0)
            err = -errno;
        else
            p->nfds = 1;
    }
    if (err < 0) {
        Py_DECREF(p);
        return bio_raise_errno(err);
    }
    return (PyObject *)p;
}

/* Stop the thread (it finishes the send under way) and wait for it. */
static void
bio_pacer_stop(BioPacer *p)
{
    bio_wake_kick(&p->wake);
    if (!p->running)
        return;
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv); /* an idle wait */
    bio_pacer_kick(p);              /* a wait for a release time */
    pthread_mutex_unlock(&p->mu);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(p->thread, NULL);
    Py_END_ALLOW_THREADS
    p->running = 0;
}

/* Free what p owns (no call uses it, the thread is gone). */
static void
bio_pacer_release(BioPacer *p)
{
    for (int i = 0; i < p->nfds; i++)
        if (p->fds[i] >= 0)
            close(p->fds[i]);
    PyMem_RawFree(p->fds);
    p->fds = NULL;
    p->nfds = 0;
    PyMem_RawFree(p->ring);
    PyMem_RawFree(p->bytes);
    PyMem_RawFree(p->errors);
    p->ring = NULL;
    p->bytes = NULL;
    p->errors = NULL;
    p->head = p->tail = p->bhead = p->btail = 0;
    if (p->note_efd >= 0)
        close(p->note_efd);
    p->note_efd = -1;
    bio_wake_fini(&p->wake);
}

static void
bio_pacer_dealloc(BioPacer *p)
{
    if (p->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)p);
    if (bio_wake_same_process(&p->wake))
        bio_pacer_stop(p);
    bio_pacer_release(p);
    if (p->sync_ready) {
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
    }
    Py_TYPE(p)->tp_free((PyObject *)p);
}

/* In a fork()ed child: no thread, fresh locks and eventfds, and an empty
 * queue (the parent sends what it had queued). 0 or -errno. GIL held. */
static int
bio_pacer_after_fork(BioPacer *p)
{
    uint32_t gen = p->wake.fork_gen;
    int err = bio_wake_refresh(&p->wake);
    if (err < 0 || gen == p->wake.fork_gen)
        return err;
    p->running = 0; /* the parent's thread is not ours */
    bio_pacer_sync_init(p);
    p->head = p->tail;
    p->bhead = p->btail;
    p->sending = p->idle = p->waiters = p->drainers = p->nerr = 0;
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0)
        return -errno;
    if (p->note_efd >= 0)
        close(p->note_efd);
    p->note_efd = efd;
    return p->sync_ready ? 0 : -ENOMEM;
}

/* Begin a call (GIL held): the memory on first use, the thread; 0, or -1
 * with OSError (EBADF once closed). */
static int
bio_pacer_enter(BioPacer *p, int start)
{
    int err = bio_wake_closing(&p->wake) ? -EBADF : bio_pacer_after_fork(p);
    if (err == 0 && start && p->ring == NULL) {
        p->ring = PyMem_RawCalloc((size_t)p->cap, sizeof(BioPacerEntry));
        p->bytes = PyMem_RawMalloc((size_t)p->bcap);
        p->errors = PyMem_RawCalloc(BIO_PACER_ERRORS, sizeof(BioPacerError));
        if (p->ring == NULL || p->bytes == NULL || p->errors == NULL)
            err = -ENOMEM;
    }
    if (err == 0 && start && !p->running)
        err = bio_pacer_start(p);
    if (err < 0) {
        bio_raise_errno(err);
        return -1;
    }
    p->wake.users++;
    return 0;
}

static void
bio_pacer_leave(BioPacer *p)
{
    if (--p->wake.users == 0 && bio_wake_closing(&p->wake))
        bio_pacer_release(p);
}

/* ---- queueing ---------------------------------------------------------------- */

/* Read entry j of b once into e (not its payload) and check it: its place
 * in the data, its metadata, its socket. 0, or -1 with ValueError. */
static int
bio_pacer_snapshot(BioPacer *p, BioBatch *b, Py_ssize_t j, int by_socket, BioPacerEntry *e)
{
    uint64_t off = __atomic_load_n(&b->offsets[j], __ATOMIC_RELAXED);
    e->len = __atomic_load_n(&b->lengths[j], __ATOMIC_RELAXED);
    if (off > b->data_len || e->len > b->data_len - off) {
        PyErr_Format(PyExc_ValueError,
                     "datagram %zd: offset %llu + length %u runs past the %zu-byte buffer it "
                     "points into", j, (unsigned long long)off, (unsigned)e->len, b->data_len);
        return -1;
    }
    e->off = off; /* for now: where the payload is in the batch */
    memcpy(&e->name, &b->names[j], sizeof(e->name));
    if (e->name.sin6_family != AF_INET && e->name.sin6_family != AF_INET6)
        memset(&e->name, 0, sizeof(e->name));
    memset(&e->meta, 0, sizeof(e->meta));
    if (b->meta != NULL) {
        memcpy(&e->meta.local, &b->meta->local_addrs[j], sizeof(e->meta.local));
        e->meta.ifindex = __atomic_load_n(&b->meta->ifindexes[j], __ATOMIC_RELAXED);
        e->meta.ecn = __atomic_load_n(&b->meta->ecn[j], __ATOMIC_RELAXED);
        e->meta.txtime = __atomic_load_n(&b->meta->txtimes[j], __ATOMIC_RELAXED);
    }
    e->sock = by_socket ? __atomic_load_n(&b->sockets[j], __ATOMIC_RELAXED) : 0;
    const char *why = e->len > BIO_GRO_SLOT_MIN ? "it is larger than any UDP datagram (65535 bytes)"
                      : e->meta.ecn > 3 ? "its ECN codepoint (batch.ecn) is above 3"
                      : e->meta.txtime < 0 ? "its transmit time (batch.txtimes) is negative"
                      : e->sock < 0 || e->sock >= p->nfds || p->fds[e->sock] < 0
                          ? "its socket (batch.sockets) is not one of this pacer's"
                          : NULL;
    if (why != NULL) {
        PyErr_Format(PyExc_ValueError, "datagram %zd: %s", j, why);
        return -1;
    }
    return 0;
}

/* Where a payload of len bytes goes in the byte ring (absolute position,
 * never wrapping), or UINT64_MAX when there is no room now. */
static uint64_t
bio_pacer_place(const BioPacer *p, uint64_t btail, uint64_t bhead, uint32_t len)
{
    uint64_t pos = btail;
    if (pos % p->bcap + len > p->bcap)
        pos += p->bcap - pos % p->bcap; /* skip the end of the ring */
    return pos + len - bhead <= p->bcap ? pos : UINT64_MAX;
}

/* Copy entries [j, end) of b into the queue while there is room; returns
 * how many went, or -1 with an error. GIL held throughout: producers are
 * one at a time, and the thread reads only entries below the tail. */
static Py_ssize_t
bio_pacer_put(BioPacer *p, BioBatch *b, Py_ssize_t j, Py_ssize_t end, int by_socket)
{
    pthread_mutex_lock(&p->mu);
    uint64_t head = p->head, bhead = p->bhead, tail = p->tail, btail = p->btail;
    pthread_mutex_unlock(&p->mu);
    int64_t now = bio_now_ns();
    uint64_t late = 0;
    Py_ssize_t k = 0;
    for (; j + k < end && tail + (uint64_t)k - head < p->cap; k++) {
        BioPacerEntry e;
        if (bio_pacer_snapshot(p, b, j + k, by_socket, &e) < 0)
            return -1;
        uint64_t pos = bio_pacer_place(p, btail, bhead, e.len);
        if (pos == UINT64_MAX)
            break;
        memcpy(p->bytes + pos % p->bcap, b->data + e.off, e.len);
        e.off = pos;
        e.seq = p->next_seq + (uint64_t)k;
        late += e.meta.txtime != 0 && e.meta.txtime < now;
        *bio_pacer_entry(p, tail + (uint64_t)k) = e;
        btail = pos + e.len;
    }
    pthread_mutex_lock(&p->mu);
    p->tail = tail + (uint64_t)k;
    p->btail = btail;
    p->next_seq += (uint64_t)k;
    if (p->idle) /* a thread waiting for the head's time needs no wake-up: the head is the same */
        pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    BIO_COUNT(p->counters, BIO_PACER_C_PACED_QUEUED, k);
    BIO_COUNT(p->counters, BIO_PACER_C_PACED_LATE, late);
    return k;
}

/* What a wait waits for: room for one more entry of `need` bytes, or (need
 * < 0) the queue drained. */
typedef struct {
    BioPacer *p;
    int64_t need, deadline;
} BioPacerWait;

static int
bio_pacer_ready(BioPacer *p, int64_t need)
{
    pthread_mutex_lock(&p->mu);
    int ok = need < 0 ? p->head == p->tail && !p->sending
                      : p->tail - p->head < p->cap &&
                            bio_pacer_place(p, p->btail, p->bhead, (uint32_t)need) != UINT64_MAX;
    pthread_mutex_unlock(&p->mu);
    return ok;
}

/* Wait until w's condition holds (1), the deadline passes (0), or close()
 * (-BIO_ECLOSED); -EINTR for the signal handlers. nogil. */
static int
bio_pacer_wait_nogil(void *arg)
{
    BioPacerWait *w = arg;
    BioPacer *p = w->p;
    for (;;) {
        if (bio_wake_closing(&p->wake))
            return -BIO_ECLOSED;
        if (bio_pacer_ready(p, w->need))
            return 1;
        int r = bio_wake_poll_nogil(&p->wake, p->note_efd, POLLIN, w->deadline);
        if (r <= 0)
            return r;
        uint64_t v;
        if (read(p->note_efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
            return -errno;
    }
}

/* Wait with the GIL released (the batch, if any, marked in use): 1, 0 on
 * timeout, or -1 with the error set (EBADF when close() ended it). */
static int
bio_pacer_wait(BioPacer *p, BioBatch *b, int64_t need, int64_t deadline)
{
    BioPacerWait w = {.p = p, .need = need, .deadline = deadline};
    int *count = need < 0 ? &p->drainers : &p->waiters; /* what wakes us: drained, or any room */
    __atomic_add_fetch(count, 1, __ATOMIC_RELEASE);
    if (b != NULL)
        b->busy = 1;
    int r = bio_nogil_retry(bio_pacer_wait_nogil, &w);
    if (b != NULL)
        b->busy = 0;
    __atomic_sub_fetch(count, 1, __ATOMIC_RELEASE);
    if (r == -BIO_ECLOSED) {
        PyObject *v = Py_BuildValue("(is)", EBADF, "the pacer was closed while waiting");
        if (v != NULL)
            PyErr_SetObject(PyExc_OSError, v);
        Py_XDECREF(v);
    } else if (r < 0 && r != -EINTR) {
        bio_raise_errno(r);
    }
    return r < 0 ? -1 : r;
}

/* Whether queue() must not wait for room: the socket is non-blocking (a
 * SocketSet's pacer, with no socket 0, never waits). */
static int
bio_pacer_nonblocking(const BioPacer *p)
{
    int fl = p->fds[0] >= 0 ? fcntl(p->fds[0], F_GETFL) : -1;
    return fl < 0 || (fl & O_NONBLOCK);
}

/* Queue [start, end) of b, waiting for room unless the socket is
 * non-blocking. The entries queued, or -1 with an error set. */
static Py_ssize_t
bio_pacer_queue_range(BioPacer *p, BioBatch *b, Py_ssize_t start, Py_ssize_t end, int by_socket)
{
    Py_ssize_t j = start;
    while (j < end) {
        Py_ssize_t k = bio_pacer_put(p, b, j, end, by_socket);
        if (k < 0)
            return -1;
        j += k;
        if (j == end || bio_pacer_nonblocking(p))
            break;
        uint32_t len = __atomic_load_n(&b->lengths[j], __ATOMIC_RELAXED);
        if (bio_pacer_wait(p, b, len, -1) < 0) {
            if (PyErr_ExceptionMatches(PyExc_OSError) || j > start)
                bio_exc_note_sent(j - start);
            return -1;
        }
    }
    if (j == start && start < end) {
        PyObject *v = Py_BuildValue("(is)", EAGAIN, "the pacer's queue is full; nothing was queued");
        if (v != NULL)
            PyErr_SetObject(PyExc_BlockingIOError, v);
        Py_XDECREF(v);
        return -1;
    }
    return j - start;
}

PyDoc_STRVAR(bio_pacer_queue_doc,
"queue($self, /, batch, start=0, count=None, *, by_socket=False)\n--\n\n"
"Copy entries [start, start+count) into the queue; each leaves at its\n"
"batch.txtimes time (0: as soon as those before it have). Returns how many\n"
"were queued: all of them (waiting for room), or on a non-blocking socket\n"
"what fitted (BlockingIOError if none). by_socket: entry i goes on socket\n"
"batch.sockets[i] of the pacer's table.");

static PyObject *
bio_pacer_queue(BioPacer *p, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"batch", "start", "count", "by_socket", NULL};
    PyObject *a[4];
    Py_ssize_t start, end;
    if (bio_args_parse("queue", args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_batch_arg("queue", a[0]) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)a[0];
    int by_socket = a[3] != NULL ? PyObject_IsTrue(a[3]) : 0;
    if (by_socket < 0 || bio_batch_check_idle(b) < 0 ||
        bio_batch_send_range(b, a[1], a[2], &start, &end) < 0 || bio_pacer_enter(p, 1) < 0)
        return NULL;
    Py_ssize_t n = bio_pacer_queue_range(p, b, start, end, by_socket);
    bio_pacer_leave(p);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

/* ---- draining, errors, closing ------------------------------------------------- */

PyDoc_STRVAR(bio_pacer_flush_doc,
"flush($self, /, timeout=None)\n--\n\n"
"Wait until every queued datagram has been sent (or refused); False if\n"
"timeout seconds passed first (None: no limit).");

static PyObject *
bio_pacer_flush(BioPacer *p, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1];
    int64_t timeout;
    if (bio_args_parse("flush", args, nargs, kwnames, names, 1, 0, a) < 0 ||
        bio_timeout_parse(a[0] ? a[0] : Py_None, &timeout) < 0 || bio_pacer_enter(p, 0) < 0)
        return NULL;
    int r = p->ring == NULL ? 1 : bio_pacer_wait(p, NULL, -1, timeout < 0 ? -1 : bio_now_ns() + timeout);
    bio_pacer_leave(p);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

/* A list of (seq, errno, addr) of errors [0, n), or of (seq, addr, length)
 * of entries [head, tail) when `unsent`. */
static PyObject *
bio_pacer_list(BioPacer *p, int unsent)
{
    Py_ssize_t n = unsent ? (Py_ssize_t)(p->tail - p->head) : p->nerr;
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; list != NULL && i < n; i++) {
        PyObject *addr, *t = NULL;
        if (unsent) {
            const BioPacerEntry *e = bio_pacer_entry(p, p->head + (uint64_t)i);
            if ((addr = bio_addr_build(&e->name)) != NULL)
                t = Py_BuildValue("(KNI)", (unsigned long long)e->seq, addr, e->len);
        } else if ((addr = bio_addr_build(&p->errors[i].name)) != NULL) {
            t = Py_BuildValue("(KiN)", (unsigned long long)p->errors[i].seq, p->errors[i].err, addr);
        }
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, t);
    }
    return list;
}

PyDoc_STRVAR(bio_pacer_take_errors_doc,
"take_errors($self, /)\n--\n\n"
"The datagrams the kernel refused since the last call, as a list of\n"
"(sequence, errno, addr); sequence is the count queued before it.");

static PyObject *
bio_pacer_take_errors(BioPacer *p, PyObject *Py_UNUSED(ignored))
{
    if (p->errors == NULL)
        return PyList_New(0);
    pthread_mutex_lock(&p->mu);
    PyObject *list = bio_pacer_list(p, 0);
    if (list != NULL)
        p->nerr = 0;
    pthread_mutex_unlock(&p->mu);
    return list;
}

PyDoc_STRVAR(bio_pacer_close_doc,
"close($self, /)\n--\n\n"
"Stop sending: the thread finishes the send under way, calls waiting in\n"
"other threads wake with OSError(EBADF). Returns what was still queued,\n"
"[(sequence, addr, length), ...] (counted in paced_unsent); [] after the\n"
"first call.");

static PyObject *
bio_pacer_close(BioPacer *p, PyObject *Py_UNUSED(ignored))
{
    if (bio_wake_closing(&p->wake))
        return PyList_New(0);
    bio_pacer_after_fork(p); /* a child: its own eventfds, no thread; the queue is the parent's */
    p->wake.users++; /* a waiter that leaves while we join must not free the queue yet */
    bio_pacer_stop(p);
    PyObject *unsent = p->ring != NULL ? bio_pacer_list(p, 1) : PyList_New(0);
    if (unsent != NULL)
        BIO_COUNT(p->counters, BIO_PACER_C_PACED_UNSENT, PyList_GET_SIZE(unsent));
    bio_pacer_leave(p); /* the last one out frees it */
    return unsent;
}

/* ---- the socket table (a SocketSet's sockets) ------------------------------------ */

PyDoc_STRVAR(bio_pacer_set_socket_doc,
"set_socket($self, index, fd, /)\n--\n\n"
"Send entries of batch.sockets == index (queue(by_socket=True)) on our dup\n"
"of fd; fd -1 forgets the socket at index.");

static PyObject *
bio_pacer_set_socket(BioPacer *p, PyObject *args)
{
    PyObject *io, *fo;
    long long idx, fd;
    if (!PyArg_ParseTuple(args, "OO:set_socket", &io, &fo) ||
        bio_args_int("index", io, 0, BIO_PACER_FDS - 1, &idx) < 0 ||
        bio_args_int("fd", fo, -1, 0x7fffffff, &fd) < 0 || bio_pacer_enter(p, 0) < 0)
        return NULL;
    int err = 0, old = -1;
    int own = fd >= 0 ? fcntl((int)fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (fd >= 0 && own < 0)
        err = -errno;
    pthread_mutex_lock(&p->mu); /* the thread reads the table under mu */
    if (err == 0 && idx >= p->nfds) {
        int *fds = PyMem_RawRealloc(p->fds, (size_t)(idx + 1) * sizeof(int));
        if (fds == NULL)
            err = -ENOMEM;
        else
            for (p->fds = fds; p->nfds <= idx; p->nfds++)
                fds[p->nfds] = -1;
    }
    if (err == 0) {
        old = p->fds[idx];
        p->fds[idx] = own;
    }
    pthread_mutex_unlock(&p->mu);
    if (old >= 0)
        close(old);
    if (err < 0 && own >= 0)
        close(own);
    bio_pacer_leave(p);
    return err < 0 ? bio_raise_errno(err) : Py_NewRef(Py_None);
}

/* ---- the type ---------------------------------------------------------------- */

static PyObject *
bio_pacer_counters(BioPacer *p, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(p->counters, bio_pacer_counter_names, BIO_PACER_NCOUNTERS);
}

static PyObject *
bio_pacer_count(BioPacer *p, PyObject *args)
{
    return bio_counters_count_py(p->counters, bio_pacer_counter_names, BIO_PACER_NCOUNTERS, args);
}

static PyObject *
bio_pacer_reset_counters(BioPacer *p, PyObject *Py_UNUSED(ignored))
{
    memset(p->counters, 0, sizeof(p->counters));
    Py_RETURN_NONE;
}

static PyObject *
bio_pacer_get_pending(BioPacer *p, void *c)
{
    if (p->ring == NULL || !p->sync_ready)
        return PyLong_FromLong(0);
    pthread_mutex_lock(&p->mu);
    uint64_t n = p->tail - p->head;
    pthread_mutex_unlock(&p->mu);
    return PyLong_FromUnsignedLongLong(n);
}

static PyMethodDef bio_pacer_methods[] = {
    {"queue", (PyCFunction)(void (*)(void))bio_pacer_queue, METH_FASTCALL | METH_KEYWORDS,
     bio_pacer_queue_doc},
    {"flush", (PyCFunction)(void (*)(void))bio_pacer_flush, METH_FASTCALL | METH_KEYWORDS,
     bio_pacer_flush_doc},
    {"take_errors", (PyCFunction)bio_pacer_take_errors, METH_NOARGS, bio_pacer_take_errors_doc},
    {"close", (PyCFunction)bio_pacer_close, METH_NOARGS, bio_pacer_close_doc},
    {"set_socket", (PyCFunction)bio_pacer_set_socket, METH_VARARGS, bio_pacer_set_socket_doc},
    {"counters", (PyCFunction)bio_pacer_counters, METH_NOARGS,
     "counters($self, /)\n--\n\nA dict of every counter."},
    {"count", (PyCFunction)bio_pacer_count, METH_VARARGS,
     "count($self, name, n, /)\n--\n\nAdd n to a counter (for policy code in Python)."},
    {"reset_counters", (PyCFunction)bio_pacer_reset_counters, METH_NOARGS,
     "reset_counters($self, /)\n--\n\nSet every counter to 0."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_pacer_members[] = {
    {"gso", T_INT, offsetof(BioPacer, gso), 0,
     "1: datagrams due together go as GSO runs (0 after the kernel refused GSO)"},
    {"gso_max_segments", T_INT, offsetof(BioPacer, gso_max_segments), 0,
     "segments per GSO send"},
    {"ecn_cmsg", T_INT, offsetof(BioPacer, ecn_cmsg), 0,
     "1: send each datagram's ECN codepoint (0: off, or the kernel refused it); 2 (tests "
     "only): a TOS byte every kernel refuses"},
    {"dscp", T_INT, offsetof(BioPacer, dscp), 0, "the DSCP bits sent with a codepoint"},
    {"slack_ns", T_LONGLONG, offsetof(BioPacer, slack_ns), 0,
     "a release (one wake-up) sends every datagram due within half this many ns of it, and goes at "
     "the first one's time when it starts a flow, else centred on what it carries: one wake-up per "
     "slack in a steady flow, each datagram within half of it of its time (a dense flow: half the "
     "slack and a quarter); 0: each at its time"},
    {"next_sequence", T_ULONGLONG, offsetof(BioPacer, next_seq), READONLY,
     "the sequence number the next datagram queued gets (= datagrams queued so far)"},
    {"note_fd", T_INT, offsetof(BioPacer, note_efd), READONLY,
     "an eventfd readable when room freed up, the queue drained or a refusal was recorded "
     "(for an event loop)"},
    {"running", T_INT, offsetof(BioPacer, running), READONLY, "1: the sender thread runs"},
    {"want_room", T_INT, offsetof(BioPacer, want_room), 0,
     "1: signal note_fd after every round of sends too (an event loop waits for room)"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef bio_pacer_getset[] = {
    {"pending", (getter)bio_pacer_get_pending, NULL, "datagrams queued and not yet sent", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject BioPacer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.Pacer",
    .tp_basicsize = sizeof(BioPacer),
    .tp_dealloc = (destructor)bio_pacer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pacer(fd, entries=4096, byte_size=0)\n--\n\n"
              "Timed sends released by a C thread without the GIL (internal; see BurstSocket's "
              "paced=True).",
    .tp_weaklistoffset = offsetof(BioPacer, weakrefs),
    .tp_methods = bio_pacer_methods,
    .tp_members = bio_pacer_members,
    .tp_getset = bio_pacer_getset,
    .tp_new = bio_pacer_new,
};

int
bio_pacer_init_type(PyObject *module)
{
    if (PyType_Ready(&BioPacer_Type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Pacer", (PyObject *)&BioPacer_Type);
}
