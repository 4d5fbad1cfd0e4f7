/* Socket addresses: Python tuples <-> the sockaddr kept per batch entry.
 *
 * Only numeric hosts are accepted: resolving names is blocking I/O and has
 * no place on a per-datagram path. Tuples follow the socket module: IPv4
 * (host, port), IPv6 (host, port, flowinfo, scope_id) or (host, port).
 *
 * Where a datagram goes through it: a destination given to append(),
 * set_addr(), send_segments() or a port's put() is parsed here into the
 * sockaddr the send uses; a received datagram's sockaddr becomes a tuple here
 * when Python asks for it (batch.addr(i)).
 */
#include "core/core.h"

#include <arpa/inet.h>
#include <string.h>

/* One int field of an address tuple, `what` naming it. 0 or -1. */
static int
bio_addr_uint(PyObject *obj, const char *what, unsigned long max, unsigned long *out)
{
    char name[32];
    long long v;
    snprintf(name, sizeof(name), "address %s", what);
    if (bio_args_int(name, obj, 0, (long long)max, &v) < 0)
        return -1;
    *out = (unsigned long)v;
    return 0;
}

/* The tuple's fields, checked: its length (2 or 4), host (a str), port
 * and, for 4 items, flowinfo and scope_id (else 0). 0, or -1 with an error. */
static int
bio_addr_fields(PyObject *addr, Py_ssize_t *n, PyObject **host, unsigned long f[3])
{
    if (!PyTuple_Check(addr)) {
        PyErr_Format(PyExc_TypeError,
                     "address must be a tuple (host, port), got %.100s",
                     Py_TYPE(addr)->tp_name);
        return -1;
    }
    *n = PyTuple_GET_SIZE(addr);
    if (*n != 2 && *n != 4) {
        PyErr_Format(PyExc_TypeError,
                     "address must be (host, port) or (host, port, flowinfo, "
                     "scope_id), got a tuple of %zd items", *n);
        return -1;
    }
    *host = PyTuple_GET_ITEM(addr, 0);
    if (!PyUnicode_Check(*host)) {
        PyErr_Format(PyExc_TypeError, "address host must be str, got %.100s",
                     Py_TYPE(*host)->tp_name);
        return -1;
    }
    f[1] = f[2] = 0;
    if (bio_addr_uint(PyTuple_GET_ITEM(addr, 1), "port", 65535, &f[0]) < 0)
        return -1;
    if (*n == 4 &&
        (bio_addr_uint(PyTuple_GET_ITEM(addr, 2), "flowinfo", 0xfffff, &f[1]) < 0 ||
         bio_addr_uint(PyTuple_GET_ITEM(addr, 3), "scope_id", 0xffffffffUL, &f[2]) < 0))
        return -1;
    return 0;
}

int
bio_addr_parse(PyObject *addr, struct sockaddr_in6 *out)
{
    Py_ssize_t n;
    PyObject *host;
    unsigned long f[3]; /* port, flowinfo, scope_id */
    if (bio_addr_fields(addr, &n, &host, f) < 0)
        return -1;
    Py_ssize_t hlen;
    const char *h = PyUnicode_AsUTF8AndSize(host, &hlen);
    if (h == NULL)
        return -1;
    if ((size_t)hlen != strlen(h)) { /* the socket module's TypeError, and its words */
        PyErr_Format(PyExc_TypeError, "address host must not contain null character, got %R",
                     host);
        return -1;
    }

    memset(out, 0, sizeof(*out));
    struct sockaddr_in *sin = (struct sockaddr_in *)out;
    struct in_addr v4;
    if (inet_pton(AF_INET, h, &v4) == 1) {
        if (n == 4) {
            PyErr_Format(PyExc_ValueError,
                         "a 4-item address is IPv6, but host %R is IPv4", host);
            return -1;
        }
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)f[0]);
        sin->sin_addr = v4;
        return 0;
    }
    if (inet_pton(AF_INET6, h, &out->sin6_addr) == 1) {
        out->sin6_family = AF_INET6;
        out->sin6_port = htons((uint16_t)f[0]);
        out->sin6_flowinfo = htonl((uint32_t)f[1]);
        out->sin6_scope_id = (uint32_t)f[2];
        return 0;
    }
    PyErr_Format(PyExc_ValueError,
                 "address host must be a numeric IPv4 or IPv6 address, got %R",
                 host);
    return -1;
}

PyObject *
bio_addr_build(const struct sockaddr_in6 *sa)
{
    char text[INET6_ADDRSTRLEN];
    if (sa->sin6_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
        return Py_BuildValue("(si)", text, (int)ntohs(sin->sin_port));
    }
    if (sa->sin6_family == AF_INET6) {
        inet_ntop(AF_INET6, &sa->sin6_addr, text, sizeof(text));
        return Py_BuildValue("(siII)", text, (int)ntohs(sa->sin6_port),
                             (unsigned int)ntohl(sa->sin6_flowinfo),
                             (unsigned int)sa->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

socklen_t
bio_addr_len(const struct sockaddr_in6 *sa)
{
    if (sa->sin6_family == AF_INET)
        return sizeof(struct sockaddr_in);
    if (sa->sin6_family == AF_INET6)
        return sizeof(struct sockaddr_in6);
    return 0;
}
