/* Outgoing messages: a run of a batch's entries to one destination, of one
 * size (the last may be shorter), becomes one message carrying a
 * UDP_SEGMENT cmsg (GSO), so that the kernel builds every datagram of the
 * run from one send; other entries become one message each. The messages
 * are built with the GIL held from a private copy of each entry, read once
 * and checked: the arrays are writable from Python, and another thread may
 * rewrite them while the send runs without the GIL.
 *
 * Where a datagram goes through it: from its batch entry (read once, checked) into a msghdr of
 * b->msgs (its payload by iovec, in place), which the sender then hands to
 * sendmmsg (udp/send.c, socketset/epoll.c) or io_uring (socketset/uring.c).
 */
#include "batch/batch.h"
#include "core/compat.h"

#include <string.h>

/* 1 if a and b name the same destination (both none counts as same). */
static int
bio_batch_same_dest(const struct sockaddr_in6 *a, const struct sockaddr_in6 *b)
{
    socklen_t la = bio_addr_len(a);
    return la == bio_addr_len(b) && memcmp(a, b, la) == 0;
}

/* Copy entry j's offset, length, destination and socket index into the
 * private scratch (b->iov[j], b->priv[j]), each read once, and check the
 * offset and length against the data. 0, or -1 with ValueError. GIL held. */
static int
bio_batch_snapshot_entry(BioBatch *b, Py_ssize_t j)
{
    uint64_t off = __atomic_load_n(&b->offsets[j], __ATOMIC_RELAXED);
    uint32_t len = __atomic_load_n(&b->lengths[j], __ATOMIC_RELAXED);
    if (off > b->data_len || len > b->data_len - off) {
        PyErr_Format(PyExc_ValueError,
                     "datagram %zd: offset %llu + length %u runs past the "
                     "%zu-byte buffer it points into",
                     j, (unsigned long long)off, (unsigned)len, b->data_len);
        return -1;
    }
    b->iov[j].iov_base = (void *)(b->data + off);
    b->iov[j].iov_len = len;
    BioBatchPriv *p = &b->priv[j];
    memcpy(&p->name, &b->names[j], sizeof(p->name));
    if (p->name.sin6_family != AF_INET && p->name.sin6_family != AF_INET6)
        memset(&p->name, 0, sizeof(p->name)); /* no destination: the connected peer */
    p->sock = __atomic_load_n(&b->sockets[j], __ATOMIC_RELAXED);
    return 0;
}

/* Length of the GSO run starting at entry j (1: send it alone), from the
 * private copies. */
static Py_ssize_t
bio_batch_gso_run(const BioBatchSendOpts *o, const BioBatch *b, Py_ssize_t j, Py_ssize_t end)
{
    const size_t seg = b->iov[j].iov_len;
    if (seg == 0)
        return 1;
    size_t total = seg;
    Py_ssize_t run = 1;
    while (j + run < end && run < o->gso_max_segments) {
        size_t len = b->iov[j + run].iov_len;
        if (len == 0 || len > seg || total + len > BIO_MAX_UDP_PAYLOAD ||
            !bio_batch_same_dest(&b->priv[j].name, &b->priv[j + run].name) ||
            (o->by_socket && b->priv[j + run].sock != b->priv[j].sock))
            break;
        total += len;
        run++;
        if (len < seg)
            break; /* only the last segment may be shorter */
    }
    return run;
}

/* Point message m at entries [j, j + run) (their iovecs are set), with a
 * UDP_SEGMENT cmsg if run > 1; clears the entries' send-error marks (the
 * arrays' and the private ones). */
static void
bio_batch_fill_msg(BioBatch *b, Py_ssize_t m, Py_ssize_t j, Py_ssize_t run)
{
    struct msghdr *h = &b->msgs[m].msg_hdr;
    for (Py_ssize_t r = 0; r < run; r++) {
        b->flags[j + r] &= ~BIO_FLAG_SEND_ERROR;
        b->errnos[j + r] = 0;
        b->priv[j + r].err = 0;
    }
    socklen_t namelen = bio_addr_len(&b->priv[j].name);
    h->msg_name = namelen ? &b->priv[j].name : NULL;
    h->msg_namelen = namelen;
    h->msg_iov = &b->iov[j];
    h->msg_iovlen = (size_t)run;
    h->msg_control = NULL;
    h->msg_controllen = 0;
    h->msg_flags = 0;
    if (run > 1) {
        h->msg_control = b->cmsg + (size_t)m * BIO_CMSG_SIZE;
        h->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
        struct cmsghdr *c = CMSG_FIRSTHDR(h);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t seg = (uint16_t)b->iov[j].iov_len;
        memcpy(CMSG_DATA(c), &seg, sizeof(seg));
    }
    b->msg_entry[m] = j;
}

Py_ssize_t
bio_batch_send_build(const BioBatchSendOpts *o, BioBatch *b, Py_ssize_t start, Py_ssize_t end)
{
    for (Py_ssize_t j = start; j < end; j++)
        if (bio_batch_snapshot_entry(b, j) < 0)
            return -1;
    Py_ssize_t m = 0;
    for (Py_ssize_t j = start; j < end; m++) {
        Py_ssize_t run = o->gso ? bio_batch_gso_run(o, b, j, end) : 1;
        bio_batch_fill_msg(b, m, j, run);
        j += run;
    }
    return m;
}

int
bio_batch_send_range(BioBatch *b, PyObject *start_obj, PyObject *count_obj, Py_ssize_t *start,
                     Py_ssize_t *end)
{
    *start = 0;
    if (start_obj != NULL) {
        if (bio_args_int_type("start", start_obj, 0) < 0)
            return -1;
        if ((*start = PyNumber_AsSsize_t(start_obj, PyExc_OverflowError)) == -1 &&
            PyErr_Occurred())
            return -1;
    }
    if (*start < 0 || *start > b->count) {
        PyErr_Format(PyExc_ValueError,
                     "start %zd is outside the batch's %zd datagrams", *start, b->count);
        return -1;
    }
    *end = b->count;
    if (count_obj == NULL || count_obj == Py_None)
        return 0;
    if (bio_args_int_type("count", count_obj, 1) < 0)
        return -1;
    Py_ssize_t count = PyNumber_AsSsize_t(count_obj, PyExc_OverflowError);
    if (count == -1 && PyErr_Occurred())
        return -1;
    if (count < 0 || count > b->count - *start) {
        PyErr_Format(PyExc_ValueError,
                     "count %zd from start %zd runs past the batch's %zd datagrams",
                     count, *start, b->count);
        return -1;
    }
    *end = *start + count;
    return 0;
}
