/* UdpIo send path: PacketBatch entries -> sendmmsg, with UDP GSO.
 *
 * Runs of datagrams to the same destination, of the same size (the last may
 * be shorter), become one message carrying a UDP_SEGMENT cmsg: the kernel
 * then builds every datagram from one send. A message that fails stops the
 * send (its first entry is reported) or, when the caller asked to skip
 * errors, is flagged in the batch and the rest goes on. Nothing is dropped
 * without being reported.
 */
#include "burstio.h"

#include <errno.h>
#include <string.h>

#define BIO_COUNT(u, c, n) \
    __atomic_fetch_add(&(u)->counters[(c)], (uint64_t)(n), __ATOMIC_RELAXED)

static int
bio_same_dest(const struct sockaddr_in6 *a, const struct sockaddr_in6 *b)
{
    socklen_t la = bio_addr_len(a);
    return la == bio_addr_len(b) && memcmp(a, b, la) == 0;
}

/* Length of the GSO run starting at entry j (1: send it alone). */
static Py_ssize_t
bio_gso_run(const BioUdp *u, const BioBatch *b, Py_ssize_t j, Py_ssize_t end)
{
    const uint32_t seg = b->lengths[j];
    if (seg == 0)
        return 1;
    size_t total = seg;
    Py_ssize_t run = 1;
    while (j + run < end && run < u->gso_max_segments) {
        uint32_t len = b->lengths[j + run];
        if (len == 0 || len > seg || total + len > BIO_MAX_UDP_PAYLOAD ||
            !bio_same_dest(&b->names[j], &b->names[j + run]))
            break;
        total += len;
        run++;
        if (len < seg)
            break; /* only the last segment may be shorter */
    }
    return run;
}

/* Point message m at entries [j, j + run). */
static void
bio_send_fill_msg(BioBatch *b, Py_ssize_t m, Py_ssize_t j, Py_ssize_t run)
{
    struct msghdr *h = &b->msgs[m].msg_hdr;
    for (Py_ssize_t r = 0; r < run; r++) {
        b->iov[j + r].iov_base = (void *)(b->data + b->offsets[j + r]);
        b->iov[j + r].iov_len = b->lengths[j + r];
        b->flags[j + r] &= ~BIO_FLAG_SEND_ERROR;
        b->errnos[j + r] = 0;
    }
    socklen_t namelen = bio_addr_len(&b->names[j]);
    h->msg_name = namelen ? &b->names[j] : NULL;
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
        uint16_t seg = (uint16_t)b->lengths[j];
        memcpy(CMSG_DATA(c), &seg, sizeof(seg));
    }
    b->msg_entry[m] = j;
}

Py_ssize_t
bio_send_prepare_nogil(BioUdp *u, BioBatch *b, Py_ssize_t start, Py_ssize_t end)
{
    Py_ssize_t m = 0;
    for (Py_ssize_t j = start; j < end; m++) {
        Py_ssize_t run = u->gso ? bio_gso_run(u, b, j, end) : 1;
        bio_send_fill_msg(b, m, j, run);
        j += run;
    }
    return m;
}

/* Send msgs[*done, m), advancing *done. Returns 0 when all went, else the
 * -errno of message *done. nogil.
 *
 * sendmmsg returns a short count when a message after the first fails, and
 * discards that error. A retry reproduces a lasting error; if the retry of
 * that message succeeds instead, the error was a one-shot pending socket
 * error (typically ECONNREFUSED for an earlier datagram on a connected
 * socket) that the kernel consumed: count it, it cannot be reported. */
static int
bio_send_msgs_nogil(BioUdp *u, struct mmsghdr *msgs, Py_ssize_t m, Py_ssize_t *done)
{
    int short_return = 0;
    while (*done < m) {
        BIO_COUNT(u, BIO_C_TX_SYSCALLS, 1);
        if (u->send_mmsg) {
            Py_ssize_t want = m - *done;
            if (want > BIO_MMSG_MAX)
                want = BIO_MMSG_MAX;
            int r = sendmmsg(u->fd, msgs + *done, (unsigned int)want, 0);
            if (r < 0)
                return -errno;
            if (short_return)
                BIO_COUNT(u, BIO_C_TX_UNREPORTED_ERRORS, 1);
            short_return = r < want;
            *done += r;
        } else {
            if (sendmsg(u->fd, &msgs[*done].msg_hdr, 0) < 0)
                return -errno;
            (*done)++;
        }
    }
    return 0;
}

/* Count what messages [0, done) delivered to the kernel. */
static void
bio_send_account(BioUdp *u, BioBatch *b, Py_ssize_t done)
{
    uint64_t datagrams = 0, bytes = 0, gso_msgs = 0, gso_dgrams = 0;
    for (Py_ssize_t m = 0; m < done; m++) {
        struct msghdr *h = &b->msgs[m].msg_hdr;
        Py_ssize_t j = b->msg_entry[m];
        if (b->flags[j] & BIO_FLAG_SEND_ERROR)
            continue;
        for (size_t r = 0; r < h->msg_iovlen; r++)
            bytes += h->msg_iov[r].iov_len;
        datagrams += h->msg_iovlen;
        if (h->msg_iovlen > 1) {
            gso_msgs++;
            gso_dgrams += h->msg_iovlen;
        }
    }
    BIO_COUNT(u, BIO_C_TX_DATAGRAMS, datagrams);
    BIO_COUNT(u, BIO_C_TX_BYTES, bytes);
    BIO_COUNT(u, BIO_C_TX_GSO_MESSAGES, gso_msgs);
    BIO_COUNT(u, BIO_C_TX_GSO_DATAGRAMS, gso_dgrams);
    BIO_COUNT(u, BIO_C_TX_BATCHES, 1);
}

/* Flag every entry of message m as failed with err (> 0). */
static void
bio_send_mark_failed(BioUdp *u, BioBatch *b, Py_ssize_t m, int err)
{
    struct msghdr *h = &b->msgs[m].msg_hdr;
    Py_ssize_t j = b->msg_entry[m];
    for (size_t r = 0; r < h->msg_iovlen; r++) {
        b->flags[j + r] |= BIO_FLAG_SEND_ERROR;
        b->errnos[j + r] = err;
    }
    BIO_COUNT(u, BIO_C_TX_ERRORS, h->msg_iovlen);
}

/* Whether the error on message m is one the caller must see now: EAGAIN
 * (nothing more fits), or a GSO refusal (policy decides the downgrade). */
static int
bio_send_must_stop(const BioBatch *b, Py_ssize_t m, int err, int skip)
{
    int gso = b->msgs[m].msg_hdr.msg_iovlen > 1;
    if (err == EAGAIN || err == EWOULDBLOCK)
        return 1;
    if (gso && (err == EIO || err == EINVAL))
        return 1;
    return !skip;
}

/* Check start/count against the batch; sets *end. 0 or -1 (error set). */
static int
bio_send_range(BioBatch *b, PyObject *start_obj, PyObject *count_obj,
               Py_ssize_t *start, Py_ssize_t *end)
{
    if (start_obj == NULL) {
        *start = 0;
    } else if (PyBool_Check(start_obj) || !PyLong_Check(start_obj)) {
        PyErr_Format(PyExc_TypeError, "start must be int, got %.100s",
                     Py_TYPE(start_obj)->tp_name);
        return -1;
    } else {
        *start = PyLong_AsSsize_t(start_obj);
        if (*start == -1 && PyErr_Occurred())
            return -1;
    }
    if (*start < 0 || *start > b->count) {
        PyErr_Format(PyExc_ValueError,
                     "start %zd is outside the batch's %zd datagrams", *start, b->count);
        return -1;
    }
    if (count_obj == Py_None) {
        *end = b->count;
        return 0;
    }
    if (PyBool_Check(count_obj) || !PyLong_Check(count_obj)) {
        PyErr_Format(PyExc_TypeError, "count must be int or None, got %.100s",
                     Py_TYPE(count_obj)->tp_name);
        return -1;
    }
    Py_ssize_t count = PyLong_AsSsize_t(count_obj);
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

/* Send entries [start, end): returns 0, or the -errno that stopped it
 * (-EINTR: a signal handler raised). Failures are flagged and skipped when
 * `skip`; *m and *done say how many messages were built and sent.
 * Called with the GIL; releases it around the syscalls. */
static int
bio_send_loop(BioUdp *u, BioBatch *b, Py_ssize_t start, Py_ssize_t end, int skip,
              Py_ssize_t *m, Py_ssize_t *done)
{
    int err;
    Py_BEGIN_ALLOW_THREADS
    *m = bio_send_prepare_nogil(u, b, start, end);
    err = bio_send_msgs_nogil(u, b->msgs, *m, done);
    Py_END_ALLOW_THREADS
    while (err != 0) {
        if (err == -EINTR) {
            if (bio_eintr_check() < 0)
                return err;
        } else if (bio_send_must_stop(b, *done, -err, skip)) {
            u->last_errno = -err;
            u->last_error_index = b->msg_entry[*done];
            u->last_error_gso = b->msgs[*done].msg_hdr.msg_iovlen > 1;
            return err;
        } else {
            bio_send_mark_failed(u, b, (*done)++, -err);
        }
        Py_BEGIN_ALLOW_THREADS
        err = bio_send_msgs_nogil(u, b->msgs, *m, done);
        Py_END_ALLOW_THREADS
    }
    return 0;
}

/* on_error: NULL or "raise" -> 0, "skip" -> 1, else -1 with ValueError. */
static int
bio_send_on_error(PyObject *on_error)
{
    if (on_error == NULL)
        return 0;
    if (PyUnicode_Check(on_error)) {
        if (PyUnicode_CompareWithASCIIString(on_error, "raise") == 0)
            return 0;
        if (PyUnicode_CompareWithASCIIString(on_error, "skip") == 0)
            return 1;
    }
    PyErr_Format(PyExc_ValueError, "on_error must be 'raise' or 'skip', got %R", on_error);
    return -1;
}

/* send_batch / send_raw: returns the entries sent from start; when the send
 * stops early and `use_policy`, hands over to u->recover. */
static PyObject *
bio_udp_send_common(BioUdp *u, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames, const char *fname, int use_policy)
{
    static const char *const names[] = {"batch", "start", "count", "on_error", NULL};
    PyObject *a[4];
    Py_ssize_t start = 0, end, m = 0, done = 0;
    int skip;
    if (bio_args_parse(fname, args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_args_batch(fname, a[0]) < 0 || (skip = bio_send_on_error(a[3])) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)a[0];
    if (bio_batch_check_idle(b) < 0 ||
        bio_send_range(b, a[1], a[2] ? a[2] : Py_None, &start, &end) < 0)
        return NULL;
    if (u->fd < 0)
        return bio_raise_errno(-EBADF);
    u->last_errno = 0;
    u->last_error_index = -1;
    u->last_error_gso = 0;
    b->busy = 1;
    int err = bio_send_loop(u, b, start, end, skip, &m, &done);
    b->busy = 0;
    bio_send_account(u, b, done);
    if (err == -EINTR)
        return NULL;
    Py_ssize_t stop = done == m ? end : b->msg_entry[done];
    if (err == 0 || !use_policy || u->recover == NULL)
        return PyLong_FromSsize_t(stop - start);
    return PyObject_CallFunction(u->recover, "Onnni", (PyObject *)b, start, stop, end, skip);
}

PyObject *
bio_udp_send_batch(BioUdp *u, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return bio_udp_send_common(u, args, nargs, kwnames, "send_batch", 1);
}

PyObject *
bio_udp_send_raw(BioUdp *u, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return bio_udp_send_common(u, args, nargs, kwnames, "send_raw", 0);
}

/* ---- send_segments: one buffer cut into equal datagrams --------------- */

#define BIO_SEG_MSGS 64

/* Build up to BIO_SEG_MSGS messages covering buf[off...]; returns the count
 * and advances *off. per_msg segments of seg bytes go in each message. */
static int
bio_segments_fill(const unsigned char *buf, size_t len, size_t *off, size_t seg,
                  size_t per_msg, struct sockaddr_in6 *name, struct mmsghdr *msgs,
                  struct iovec *iov, unsigned char (*cm)[CMSG_SPACE(sizeof(uint16_t))])
{
    int m = 0;
    socklen_t namelen = bio_addr_len(name);
    while (m < BIO_SEG_MSGS && *off < len) {
        size_t chunk = per_msg * seg;
        if (chunk > len - *off)
            chunk = len - *off;
        struct msghdr *h = &msgs[m].msg_hdr;
        memset(h, 0, sizeof(*h));
        iov[m].iov_base = (void *)(buf + *off);
        iov[m].iov_len = chunk;
        h->msg_name = namelen ? name : NULL;
        h->msg_namelen = namelen;
        h->msg_iov = &iov[m];
        h->msg_iovlen = 1;
        if (chunk > seg) {
            h->msg_control = cm[m];
            h->msg_controllen = sizeof(cm[m]);
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t s = (uint16_t)seg;
            memcpy(CMSG_DATA(c), &s, sizeof(s));
        }
        *off += chunk;
        m++;
    }
    return m;
}

/* Send buf in datagrams of seg bytes; returns 0 or -errno and sets *sent to
 * the datagrams handed to the kernel. nogil. */
static int
bio_segments_send_nogil(BioUdp *u, const unsigned char *buf, size_t len,
                        size_t seg, struct sockaddr_in6 *name, size_t *sent)
{
    struct mmsghdr msgs[BIO_SEG_MSGS];
    struct iovec iov[BIO_SEG_MSGS];
    unsigned char cm[BIO_SEG_MSGS][CMSG_SPACE(sizeof(uint16_t))];
    size_t per_msg = 1;
    if (u->gso) {
        per_msg = BIO_MAX_UDP_PAYLOAD / seg;
        if (per_msg > (size_t)u->gso_max_segments)
            per_msg = (size_t)u->gso_max_segments;
        if (per_msg < 1)
            per_msg = 1;
    }
    size_t off = *sent * seg;
    while (off < len) {
        size_t msg_start = off;
        int m = bio_segments_fill(buf, len, &off, seg, per_msg, name, msgs, iov, cm);
        Py_ssize_t done = 0;
        int err = bio_send_msgs_nogil(u, msgs, m, &done);
        size_t bytes = msg_start + (size_t)done * per_msg * seg;
        if (bytes > len)
            bytes = len;
        for (Py_ssize_t i = 0; i < done; i++) {
            size_t dg = (msgs[i].msg_hdr.msg_iov[0].iov_len + seg - 1) / seg;
            if (dg > 1) {
                BIO_COUNT(u, BIO_C_TX_GSO_MESSAGES, 1);
                BIO_COUNT(u, BIO_C_TX_GSO_DATAGRAMS, dg);
            }
        }
        BIO_COUNT(u, BIO_C_TX_BYTES, bytes - msg_start);
        *sent = (bytes + seg - 1) / seg;
        if (err < 0) {
            u->last_error_gso = done < m && msgs[done].msg_hdr.msg_controllen > 0;
            return err;
        }
    }
    return 0;
}

PyObject *
bio_udp_send_segments(BioUdp *u, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "segment_size", "addr", "first", NULL};
    Py_buffer pb;
    Py_ssize_t seg, first = 0;
    PyObject *buffer, *addr = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "On|On:send_segments", kwlist,
                                     &buffer, &seg, &addr, &first))
        return NULL;
    if (bio_get_contiguous(buffer, &pb) < 0)
        return NULL;
    struct sockaddr_in6 name;
    memset(&name, 0, sizeof(name));
    PyObject *ret = NULL;
    if (seg < 1 || seg > BIO_MAX_UDP_PAYLOAD) {
        PyErr_Format(PyExc_ValueError,
                     "segment_size must be between 1 and %d, got %zd",
                     BIO_MAX_UDP_PAYLOAD, seg);
        goto out;
    }
    if (addr != Py_None && bio_addr_parse(addr, &name) < 0)
        goto out;
    if (u->fd < 0) {
        bio_raise_errno(-EBADF);
        goto out;
    }
    u->last_errno = 0;
    u->last_error_index = -1;
    u->last_error_gso = 0;
    size_t sent = first < 0 ? 0 : (size_t)first, before = sent;
    int err;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        err = bio_segments_send_nogil(u, pb.buf, (size_t)pb.len, (size_t)seg,
                                      &name, &sent);
        Py_END_ALLOW_THREADS
        if (err != -EINTR || bio_eintr_check() < 0)
            break;
    }
    BIO_COUNT(u, BIO_C_TX_DATAGRAMS, sent - before);
    BIO_COUNT(u, BIO_C_TX_BATCHES, 1);
    if (err == -EINTR)
        goto out;
    if (err < 0) {
        u->last_errno = -err;
        u->last_error_index = (Py_ssize_t)sent;
    }
    ret = PyLong_FromSize_t(sent - before);
out:
    PyBuffer_Release(&pb);
    return ret;
}
