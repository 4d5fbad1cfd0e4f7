/* UdpIo send path: PacketBatch entries -> sendmmsg, with UDP GSO.
 *
 * Runs of datagrams to the same destination, of the same size (the last may
 * be shorter), become one message carrying a UDP_SEGMENT cmsg: the kernel
 * then builds every datagram from one send. A message that fails stops the
 * send (its first entry is reported) or, when the caller asked to skip
 * errors, is flagged in the batch and the rest goes on. Nothing is dropped
 * without being reported.
 */
#include "core/core.h"

#include <errno.h>
#include <string.h>

#define BIO_COUNT(u, c, n) \
    __atomic_fetch_add(&(u)->counters[(c)], (uint64_t)(n), __ATOMIC_RELAXED)

/* 1 if a and b name the same destination (both none counts as same). */
static int
bio_same_dest(const struct sockaddr_in6 *a, const struct sockaddr_in6 *b)
{
    socklen_t la = bio_addr_len(a);
    return la == bio_addr_len(b) && memcmp(a, b, la) == 0;
}

/* Length of the GSO run starting at entry j (1: send it alone). */
static Py_ssize_t
bio_gso_run(const BioSendOpts *o, const BioBatch *b, Py_ssize_t j, Py_ssize_t end)
{
    const uint32_t seg = b->lengths[j];
    if (seg == 0)
        return 1;
    size_t total = seg;
    Py_ssize_t run = 1;
    while (j + run < end && run < o->gso_max_segments) {
        uint32_t len = b->lengths[j + run];
        if (len == 0 || len > seg || total + len > BIO_MAX_UDP_PAYLOAD ||
            !bio_same_dest(&b->names[j], &b->names[j + run]) ||
            (o->by_socket && b->sockets[j + run] != b->sockets[j]))
            break;
        total += len;
        run++;
        if (len < seg)
            break; /* only the last segment may be shorter */
    }
    return run;
}

/* Point message m at entries [j, j + run), with a UDP_SEGMENT cmsg if
 * run > 1; clears the entries' send-error marks. */
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
bio_send_prepare_nogil(const BioSendOpts *o, BioBatch *b, Py_ssize_t start, Py_ssize_t end)
{
    Py_ssize_t m = 0;
    for (Py_ssize_t j = start; j < end; m++) {
        Py_ssize_t run = o->gso ? bio_gso_run(o, b, j, end) : 1;
        bio_send_fill_msg(b, m, j, run);
        j += run;
    }
    return m;
}

/* Send msgs[*done, m), advancing *done. Returns 0 when all went, else the
 * -errno of message *done. nogil.
 *
 * sendmmsg returns a short count when a message after the first fails, and
 * discards that error. A retry reproduces a lasting error. If the retry of
 * a message to the connected peer goes through instead, the error was a
 * one-shot pending socket error (ECONNREFUSED and the like, for an earlier
 * datagram) that the kernel consumed: it is counted, as it cannot be
 * reported. (An unconnected socket gets no such errors, so a short count
 * there that clears on retry was a passing EAGAIN/ENOBUFS.) */
static int
bio_send_msgs_nogil(BioUdp *u, struct mmsghdr *msgs, Py_ssize_t m, Py_ssize_t *done)
{
    int short_return = 0;
    while (*done < m) {
        BIO_COUNT(u, BIO_C_TX_SYSCALLS, 1);
        if (!u->send_mmsg) {
            if (sendmsg(u->fd, &msgs[*done].msg_hdr, 0) < 0)
                return -errno;
            (*done)++;
            continue;
        }
        Py_ssize_t want = m - *done;
        if (want > BIO_MMSG_MAX)
            want = BIO_MMSG_MAX;
        int r = sendmmsg(u->fd, msgs + *done, (unsigned int)want, 0);
        if (r < 0)
            return -errno;
        if (short_return && msgs[*done].msg_hdr.msg_name == NULL)
            BIO_COUNT(u, BIO_C_TX_UNREPORTED_ERRORS, 1);
        short_return = r < want;
        *done += r;
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
        if (b->flags[b->msg_entry[m]] & BIO_FLAG_SEND_ERROR)
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

/* Whether the error on message m must end the send: EAGAIN (nothing more
 * fits), a GSO refusal (policy decides about the downgrade), or any error
 * when not skipping. */
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

int
bio_send_range(BioBatch *b, PyObject *start_obj, PyObject *count_obj,
               Py_ssize_t *start, Py_ssize_t *end)
{
    *start = 0;
    if (start_obj != NULL) {
        if (PyBool_Check(start_obj) || !PyLong_Check(start_obj)) {
            PyErr_Format(PyExc_TypeError, "start must be int, got %.100s",
                         Py_TYPE(start_obj)->tp_name);
            return -1;
        }
        if ((*start = PyLong_AsSsize_t(start_obj)) == -1 && PyErr_Occurred())
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

typedef struct {
    BioUdp *u;
    BioBatch *b;
    Py_ssize_t start, end, m, done;
    int skip, prepared;
} BioSendCtx;

/* Build the messages once, then send them all, flagging and skipping
 * failures when asked. 0, or the -errno that stopped it. nogil. */
static int
bio_send_run_nogil(void *arg)
{
    BioSendCtx *c = arg;
    if (!c->prepared) {
        BioSendOpts o = {c->u->gso, c->u->gso_max_segments, 0};
        c->m = bio_send_prepare_nogil(&o, c->b, c->start, c->end);
        c->prepared = 1;
    }
    for (;;) {
        int err = bio_send_msgs_nogil(c->u, c->b->msgs, c->m, &c->done);
        if (err == 0 || err == -EINTR || bio_send_must_stop(c->b, c->done, -err, c->skip))
            return err;
        bio_send_mark_failed(c->u, c->b, c->done++, -err);
    }
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

/* Run the send of c's range; returns the -errno that stopped it (0: all
 * went; -EINTR: a signal handler raised, exception set). Records where a
 * stop happened in u->last_*. */
static int
bio_send_range_run(BioSendCtx *c)
{
    BioUdp *u = c->u;
    u->last_errno = 0;
    u->last_error_index = -1;
    u->last_error_gso = 0;
    c->b->busy = 1;
    int err = bio_nogil_retry(bio_send_run_nogil, c);
    c->b->busy = 0;
    bio_send_account(u, c->b, c->done);
    if (err < 0) {
        Py_ssize_t at = c->done < c->m ? c->b->msg_entry[c->done] : c->end;
        u->last_errno = -err;
        u->last_error_index = at;
        u->last_error_gso = c->done < c->m && c->b->msgs[c->done].msg_hdr.msg_iovlen > 1;
    }
    return err;
}

/* send_batch / send_raw: returns the entries processed from start (sent,
 * or flagged failed when skipping); a send that stops early goes to the
 * u->recover policy when `use_policy`. */
static PyObject *
bio_udp_send_common(BioUdp *u, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames, const char *fname, int use_policy)
{
    static const char *const names[] = {"batch", "start", "count", "on_error", NULL};
    PyObject *a[4];
    BioSendCtx c = {.u = u};
    if (bio_args_parse(fname, args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_args_batch(fname, a[0]) < 0 || (c.skip = bio_send_on_error(a[3])) < 0)
        return NULL;
    c.b = (BioBatch *)a[0];
    if (bio_batch_check_idle(c.b) < 0 || bio_send_range(c.b, a[1], a[2], &c.start, &c.end) < 0 ||
        bio_batch_check_entries(c.b, c.start, c.end) < 0)
        return NULL;
    if (u->fd < 0)
        return bio_raise_errno(-EBADF);
    if (use_policy)
        BIO_COUNT(u, BIO_C_TX_BATCHES, 1);
    int err = bio_send_range_run(&c);
    Py_ssize_t processed = u->last_error_index >= 0 ? u->last_error_index - c.start
                                                    : c.end - c.start;
    if (err == -EINTR) {
        bio_exc_note_sent(processed);
        return NULL;
    }
    if (err == 0 || !use_policy || u->recover == NULL || u->recover == Py_None)
        return PyLong_FromSsize_t(processed);
    return PyObject_CallFunction(u->recover, "Onnni", (PyObject *)c.b, c.start,
                                 c.start + processed, c.end, c.skip);
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

typedef struct {
    BioUdp *u;
    const unsigned char *buf;
    size_t len, seg, per_msg, sent;
    struct sockaddr_in6 name;
    int stopped_gso;
    struct mmsghdr msgs[BIO_SEG_MSGS];
    struct iovec iov[BIO_SEG_MSGS];
    unsigned char cm[BIO_SEG_MSGS][CMSG_SPACE(sizeof(uint16_t))];
} BioSegCtx;

/* Build up to BIO_SEG_MSGS messages from byte *off on, per_msg segments
 * each (one UDP_SEGMENT send when more than one); returns the count. */
static int
bio_segments_fill(BioSegCtx *c, size_t *off)
{
    int m = 0;
    socklen_t namelen = bio_addr_len(&c->name);
    while (m < BIO_SEG_MSGS && *off < c->len) {
        size_t chunk = c->per_msg * c->seg;
        if (chunk > c->len - *off)
            chunk = c->len - *off;
        struct msghdr *h = &c->msgs[m].msg_hdr;
        memset(h, 0, sizeof(*h));
        c->iov[m].iov_base = (void *)(c->buf + *off);
        c->iov[m].iov_len = chunk;
        h->msg_name = namelen ? &c->name : NULL;
        h->msg_namelen = namelen;
        h->msg_iov = &c->iov[m];
        h->msg_iovlen = 1;
        if (chunk > c->seg) {
            h->msg_control = c->cm[m];
            h->msg_controllen = sizeof(c->cm[m]);
            struct cmsghdr *cm = CMSG_FIRSTHDR(h);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t s = (uint16_t)c->seg;
            memcpy(CMSG_DATA(cm), &s, sizeof(s));
        }
        *off += chunk;
        m++;
    }
    return m;
}

/* Send from datagram c->sent on, advancing it; 0 or -errno. nogil. */
static int
bio_segments_run_nogil(void *arg)
{
    BioSegCtx *c = arg;
    BioUdp *u = c->u;
    size_t off = c->sent * c->seg;
    while (off < c->len) {
        size_t msg_start = off;
        int m = bio_segments_fill(c, &off);
        Py_ssize_t done = 0;
        int err = bio_send_msgs_nogil(u, c->msgs, m, &done);
        size_t bytes = msg_start + (size_t)done * c->per_msg * c->seg;
        if (bytes > c->len)
            bytes = c->len;
        for (Py_ssize_t i = 0; i < done; i++) {
            size_t dg = (c->msgs[i].msg_hdr.msg_iov[0].iov_len + c->seg - 1) / c->seg;
            if (dg > 1) {
                BIO_COUNT(u, BIO_C_TX_GSO_MESSAGES, 1);
                BIO_COUNT(u, BIO_C_TX_GSO_DATAGRAMS, dg);
            }
        }
        BIO_COUNT(u, BIO_C_TX_BYTES, bytes - msg_start);
        size_t now = (bytes + c->seg - 1) / c->seg;
        BIO_COUNT(u, BIO_C_TX_DATAGRAMS, now - c->sent);
        c->sent = now;
        if (err < 0) {
            c->stopped_gso = done < m && c->msgs[done].msg_hdr.msg_controllen > 0;
            return err;
        }
    }
    return 0;
}

const char bio_udp_send_segments_doc[] =
"send_segments(buffer, segment_size, addr=None, first=0) -> int\n\n"
"Send buffer cut into datagrams of segment_size bytes (the last may be\n"
"shorter), from datagram `first` on, with UDP GSO when on. Returns the\n"
"datagrams sent; on an error, last_errno/last_error_index say where.";

PyObject *
bio_udp_send_segments(BioUdp *u, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "segment_size", "addr", "first", NULL};
    Py_buffer pb;
    Py_ssize_t seg, first = 0;
    PyObject *buffer, *addr = Py_None, *ret = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "On|On:send_segments", kwlist,
                                     &buffer, &seg, &addr, &first))
        return NULL;
    if (bio_get_contiguous(buffer, &pb) < 0)
        return NULL;
    BioSegCtx *c = PyMem_Calloc(1, sizeof(*c));
    if (c == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    if (seg < 1 || seg > BIO_MAX_UDP_PAYLOAD) {
        PyErr_Format(PyExc_ValueError, "segment_size must be between 1 and %d, got %zd",
                     BIO_MAX_UDP_PAYLOAD, seg);
        goto out;
    }
    if (addr != Py_None && bio_addr_parse(addr, &c->name) < 0)
        goto out;
    if (u->fd < 0) {
        bio_raise_errno(-EBADF);
        goto out;
    }
    c->u = u;
    c->buf = pb.buf;
    c->len = (size_t)pb.len;
    c->seg = (size_t)seg;
    c->per_msg = 1;
    c->sent = first < 0 ? 0 : (size_t)first;
    if (u->gso) {
        size_t fit = BIO_MAX_UDP_PAYLOAD / c->seg;
        c->per_msg = fit > (size_t)u->gso_max_segments ? (size_t)u->gso_max_segments : fit;
    }
    size_t before = c->sent;
    u->last_errno = 0;
    u->last_error_index = -1;
    u->last_error_gso = 0;
    BIO_COUNT(u, BIO_C_TX_BATCHES, 1);
    int err = bio_nogil_retry(bio_segments_run_nogil, c);
    if (err == -EINTR) {
        bio_exc_note_sent((Py_ssize_t)(c->sent - before));
        goto out;
    }
    if (err < 0) {
        u->last_errno = -err;
        u->last_error_index = (Py_ssize_t)c->sent;
        u->last_error_gso = c->stopped_gso;
    }
    ret = PyLong_FromSize_t(c->sent - before);
out:
    PyMem_Free(c);
    PyBuffer_Release(&pb);
    return ret;
}
