/* Busy polling and NAPI: the syscalls the socket and select modules lack.
 *
 *   attach_reuseport_cbpf(fd, program)  SO_ATTACH_REUSEPORT_CBPF: a classic
 *                                       BPF program picks the socket of a
 *                                       SO_REUSEPORT group for each packet
 *   register_uring_napi(uring_fd, ...)  IORING_REGISTER_NAPI: io_uring busy
 *                                       polls the NAPI of the sockets it waits on
 *
 * Python (src/burstio/napi/busypoll.py) writes the programs and decides the
 * settings; the busy-polling epoll_wait is core/wait.c's.
 *
 * Where a datagram goes through it: a reuseport program picks the socket
 * of the group that receives it; NAPI busy polling makes the receive that
 * waits for it poll the device queue instead of sleeping.
 */
#include "napi/napi.h"
#include "core/compat.h"

#include <errno.h>
#include <linux/filter.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

PyDoc_STRVAR(bio_napi_attach_cbpf_doc,
"attach_reuseport_cbpf($module, sock, program, /)\n--\n\n"
"Attach a classic BPF program (bytes: struct sock_filter records of 8\n"
"bytes) to sock's SO_REUSEPORT group; its return value is the index of the\n"
"socket that gets each packet.");

static PyObject *
bio_napi_attach_cbpf(PyObject *self, PyObject *args)
{
    PyObject *sock;
    Py_buffer prog;
    if (!PyArg_ParseTuple(args, "Oy*:attach_reuseport_cbpf", &sock, &prog))
        return NULL;
    int fd = PyObject_AsFileDescriptor(sock);
    PyObject *ret = NULL;
    if (fd < 0)
        goto out;
    if (prog.len == 0 || prog.len % sizeof(struct sock_filter) != 0 ||
        prog.len / (Py_ssize_t)sizeof(struct sock_filter) > BPF_MAXINSNS) {
        PyErr_Format(PyExc_ValueError,
                     "program must be 1 to %d sock_filter records of %zu bytes, got %zd bytes",
                     BPF_MAXINSNS, sizeof(struct sock_filter), prog.len);
        goto out;
    }
    struct sock_fprog fprog = {.len = (unsigned short)(prog.len / sizeof(struct sock_filter)),
                               .filter = prog.buf};
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fprog, sizeof(fprog)) < 0) {
        bio_raise_errno(-errno);
        goto out;
    }
    ret = Py_NewRef(Py_None);
out:
    PyBuffer_Release(&prog);
    return ret;
}

PyDoc_STRVAR(bio_napi_register_uring_doc,
"register_uring_napi($module, uring_fd, busy_poll_usecs, prefer_busy_poll, /)\n--\n\n"
"IORING_REGISTER_NAPI; busy_poll_usecs 0 unregisters (Linux >= 6.9).");

static PyObject *
bio_napi_register_uring(PyObject *self, PyObject *args)
{
    int fd, prefer;
    unsigned int usecs;
    if (!PyArg_ParseTuple(args, "iIp:register_uring_napi", &fd, &usecs, &prefer))
        return NULL;
    struct bio_uring_napi napi;
    memset(&napi, 0, sizeof(napi));
    napi.busy_poll_to = usecs;
    napi.prefer_busy_poll = (uint8_t)prefer;
    unsigned op = usecs ? IORING_REGISTER_NAPI : IORING_UNREGISTER_NAPI;
    if (syscall(__NR_io_uring_register, fd, op, &napi, 1) < 0)
        return bio_raise_errno(-errno);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(bio_napi_setns_doc,
"setns($module, fd, nstype=0, /)\n--\n\n"
"Move the calling thread into the namespace open at fd (setns(2)); the\n"
"lab uses it to make sockets inside its network namespaces.");

static PyObject *
bio_napi_setns(PyObject *self, PyObject *args)
{
    int fd, nstype = 0;
    if (!PyArg_ParseTuple(args, "i|i:setns", &fd, &nstype))
        return NULL;
    if (setns(fd, nstype) < 0)
        return bio_raise_errno(-errno);
    Py_RETURN_NONE;
}

static PyMethodDef bio_napi_methods[] = {
    {"setns", bio_napi_setns, METH_VARARGS, bio_napi_setns_doc},
    {"attach_reuseport_cbpf", bio_napi_attach_cbpf, METH_VARARGS, bio_napi_attach_cbpf_doc},
    {"register_uring_napi", bio_napi_register_uring, METH_VARARGS, bio_napi_register_uring_doc},
    {NULL, NULL, 0, NULL},
};

int
bio_napi_init(PyObject *module)
{
    return PyModule_AddFunctions(module, bio_napi_methods);
}
