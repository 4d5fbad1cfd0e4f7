/* Waiting, deadlines and errors: the one place that knows how a blocking
 * call meets the GIL, signals (PEP 475) and OSError.
 *
 * Where a datagram goes through it: nowhere; a receive that finds nothing
 * waits here (poll, epoll_wait) for one to arrive, with the GIL released by
 * bio_nogil_retry.
 */
#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

int64_t
bio_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int
bio_deadline_ms(int64_t deadline_ns)
{
    if (deadline_ns < 0)
        return -1;
    int64_t left = deadline_ns - bio_now_ns();
    if (left <= 0)
        return 0;
    /* round up so that we never wake before the deadline */
    int64_t ms = (left + 999999) / 1000000;
    return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

int
bio_poll_nogil(int fd, short events, int64_t deadline_ns)
{
    struct pollfd p = {.fd = fd, .events = events};
    int timeout_ms = bio_deadline_ms(deadline_ns);
    if (timeout_ms == 0)
        return 0;
    int r = poll(&p, 1, timeout_ms);
    if (r < 0)
        return -errno;
    if (r > 0 && (p.revents & POLLNVAL))
        return -EBADF;
    return r > 0 ? 1 : 0;
}

int
bio_epoll_wait_nogil(int epfd, int64_t deadline_ns)
{
    int timeout_ms = bio_deadline_ms(deadline_ns);
    if (timeout_ms == 0)
        return 0;
    struct epoll_event ev;
    int r = epoll_wait(epfd, &ev, 1, timeout_ms);
    return r < 0 ? -errno : r;
}

int
bio_timeout_parse(PyObject *timeout, int64_t *ns)
{
    if (timeout == Py_None) {
        *ns = -1;
        return 0;
    }
    if (PyBool_Check(timeout) || !(PyLong_Check(timeout) || PyFloat_Check(timeout))) {
        PyErr_Format(PyExc_TypeError,
                     "timeout must be a number of seconds or None, got %.100s",
                     Py_TYPE(timeout)->tp_name);
        return -1;
    }
    double v = PyFloat_AsDouble(timeout);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    if (!(v >= 0)) { /* also NaN */
        PyErr_Format(PyExc_ValueError, "timeout must be >= 0 or None, got %R", timeout);
        return -1;
    }
    if (isinf(v) || v > 4e9) /* ~126 years: forever */
        *ns = -1;
    else
        *ns = (int64_t)(v * 1e9);
    return 0;
}

PyObject *
bio_raise_errno(int err)
{
    errno = -err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

int
bio_nogil_retry(int (*fn)(void *ctx), void *ctx)
{
    for (;;) {
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = fn(ctx);
        Py_END_ALLOW_THREADS
        if (r != -EINTR)
            return r;
        if (PyErr_CheckSignals() < 0)
            return -EINTR;
    }
}

void
bio_exc_note_sent(Py_ssize_t sent)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *n = PyLong_FromSsize_t(sent);
    if (value != NULL && n != NULL && PyObject_SetAttrString(value, "sent", n) < 0)
        PyErr_Clear(); /* an exception without attributes: nothing to add */
    Py_XDECREF(n);
    PyErr_Restore(type, value, tb);
}

/* ---- close wakes every waiter; fork --------------------------------------- */

static uint32_t bio_fork_generation = 1;

static void
bio_fork_child(void)
{
    __atomic_fetch_add(&bio_fork_generation, 1, __ATOMIC_RELAXED);
}

uint32_t
bio_fork_gen(void)
{
    return __atomic_load_n(&bio_fork_generation, __ATOMIC_RELAXED);
}

int
bio_fork_init(void)
{
    static int done;
    if (!done && pthread_atfork(NULL, NULL, bio_fork_child) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return -1;
    }
    done = 1;
    return 0;
}

int
bio_wake_init(BioWake *w)
{
    w->closing = 0;
    w->users = 0;
    w->pid = getpid();
    w->fork_gen = bio_fork_gen();
    w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return w->efd < 0 ? -errno : 0;
}

int
bio_wake_refresh(BioWake *w)
{
    uint32_t gen = bio_fork_gen();
    if (w->fork_gen == gen)
        return 0;
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0)
        return -errno;
    if (w->efd >= 0)
        close(w->efd); /* our copy only: the parent keeps its own */
    w->efd = efd;
    w->fork_gen = gen;
    return 0;
}

int
bio_wake_closing(const BioWake *w)
{
    return __atomic_load_n(&w->closing, __ATOMIC_ACQUIRE);
}

void
bio_wake_kick(BioWake *w)
{
    __atomic_store_n(&w->closing, 1, __ATOMIC_RELEASE);
    /* in a fork()ed child that never made its own, efd is the parent's: its
     * waiters are not ours to wake (they would see no closing flag and wait
     * again, or spin on a counter nobody reads) */
    if (w->efd >= 0 && w->fork_gen == bio_fork_gen()) {
        uint64_t one = 1;
        ssize_t r = write(w->efd, &one, sizeof(one));
        (void)r; /* EAGAIN: the counter is already non-zero, waiters wake anyway */
    }
}

void
bio_wake_fini(BioWake *w)
{
    if (w->efd >= 0)
        close(w->efd);
    w->efd = -1;
}

int
bio_wake_same_process(const BioWake *w)
{
    return w->fork_gen == bio_fork_gen();
}

int
bio_wake_poll_nogil(const BioWake *w, int fd, short events, int64_t deadline_ns)
{
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = w->efd, .events = POLLIN}};
    if (bio_wake_closing(w))
        return -BIO_ECLOSED;
    int timeout_ms = bio_deadline_ms(deadline_ns);
    if (timeout_ms == 0)
        return 0;
    int r = poll(p, w->efd >= 0 ? 2 : 1, timeout_ms);
    if (r < 0)
        return -errno;
    if (bio_wake_closing(w))
        return -BIO_ECLOSED;
    if (r > 0 && (p[0].revents & POLLNVAL))
        return -EBADF;
    return r > 0 ? 1 : 0;
}

int
bio_wake_wait_writable_nogil(const BioWake *w, int fd, int64_t *timeo_ns)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -errno;
    if (fl & O_NONBLOCK)
        return -EAGAIN;
    if (*timeo_ns == -2) {
        struct timeval tv = {0, 0};
        socklen_t tl = sizeof(tv);
        *timeo_ns = 0;
        if (getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &tl) == 0 && tv.tv_sec >= 0)
            *timeo_ns = (int64_t)tv.tv_sec * 1000000000 + (int64_t)tv.tv_usec * 1000;
    }
    int64_t deadline = *timeo_ns > 0 ? bio_now_ns() + *timeo_ns : -1;
    int p = bio_wake_poll_nogil(w, fd, POLLOUT, deadline);
    if (p == 0)
        return -EAGAIN; /* SO_SNDTIMEO passed */
    return p < 0 ? p : 0;
}
