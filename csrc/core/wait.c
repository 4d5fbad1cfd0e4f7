/* Waiting, deadlines and errors: the one place that knows how a blocking
 * call meets the GIL, signals (PEP 475) and OSError.
 *
 * Where a datagram goes through it: nowhere; a receive that finds nothing
 * waits here (poll, epoll_wait) for one to arrive, with the GIL released by
 * bio_nogil_retry.
 */
#include "core/core.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sys/epoll.h>
#include <time.h>

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
