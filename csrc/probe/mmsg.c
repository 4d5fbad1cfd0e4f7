/* The sendmmsg/recvmmsg capability probe (the socket module lacks both),
 * and the probes' module functions. Each probe *tries* the feature and
 * reports (works, detail); Python (src/burstio/_caps.py) decides.
 *
 * Where a datagram goes through it: one datagram to ourselves on loopback,
 * sent with sendmmsg and received with recvmmsg, tells whether udp/send.c
 * and udp/recv.c may use them.
 */
#include "probe/probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

static PyObject *
bio_probe_result(int ok, const char *detail)
{
    return Py_BuildValue("(Os)", ok ? Py_True : Py_False, detail);
}

/* Make a non-blocking UDP socket bound to 127.0.0.1:0; fills *self_addr. */
static int
bio_probe_socket(struct sockaddr_in *self_addr)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    socklen_t len = sizeof(*self_addr);
    memset(self_addr, 0, sizeof(*self_addr));
    self_addr->sin_family = AF_INET;
    self_addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)self_addr, sizeof(*self_addr)) < 0 ||
        getsockname(fd, (struct sockaddr *)self_addr, &len) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* probe_mmsg() -> {'recvmmsg': (bool, str), 'sendmmsg': (bool, str)}: send
 * one datagram to ourselves with sendmmsg and read it with recvmmsg. */
PyObject *
bio_probe_mmsg(PyObject *self, PyObject *args)
{
    struct sockaddr_in sa;
    char detail[160];
    int fd = bio_probe_socket(&sa);
    if (fd < 0)
        return bio_raise_errno(fd);
    char byte = 'x', in[4];
    struct iovec txv = {&byte, 1}, rxv = {in, sizeof(in)};
    struct mmsghdr tx = {.msg_hdr = {.msg_name = &sa, .msg_namelen = sizeof(sa),
                                     .msg_iov = &txv, .msg_iovlen = 1}};
    struct mmsghdr rx = {.msg_hdr = {.msg_iov = &rxv, .msg_iovlen = 1}};
    int s = sendmmsg(fd, &tx, 1, 0), se = errno;
    int r = recvmmsg(fd, &rx, 1, MSG_DONTWAIT, NULL), re = errno;
    close(fd);
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    snprintf(detail, sizeof(detail), s == 1 ? "sendmmsg sent a datagram to itself"
                                           : "sendmmsg failed: %s", strerror(se));
    PyObject *v = bio_probe_result(s == 1, detail);
    if (v == NULL || PyDict_SetItemString(d, "sendmmsg", v) < 0)
        goto fail;
    Py_DECREF(v);
    snprintf(detail, sizeof(detail), r == 1 ? "recvmmsg received it"
                                           : "recvmmsg failed: %s", strerror(re));
    /* EAGAIN means the syscall exists even if the datagram never came */
    v = bio_probe_result(r == 1 || (r < 0 && re == EAGAIN), detail);
    if (v == NULL || PyDict_SetItemString(d, "recvmmsg", v) < 0)
        goto fail;
    Py_DECREF(v);
    return d;
fail:
    Py_XDECREF(v);
    Py_DECREF(d);
    return NULL;
}

static PyMethodDef bio_probe_methods[] = {
    {"probe_mmsg", bio_probe_mmsg, METH_NOARGS,
     "probe_mmsg($module, /)\n--\n\n"
     "Try sendmmsg and recvmmsg on loopback: a dict of name -> (works, detail)."},
    {"probe_uring", bio_probe_uring, METH_NOARGS,
     "probe_uring($module, /)\n--\n\n"
     "Try io_uring setup flags, opcodes and buffer rings: a dict of name -> (works, detail)."},
    {NULL, NULL, 0, NULL},
};

int
bio_probe_init(PyObject *module)
{
    return PyModule_AddFunctions(module, bio_probe_methods);
}
