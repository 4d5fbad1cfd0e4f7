/* UdpIo's send path: PacketBatch entries -> sendmmsg, with UDP GSO.
 *
 * A datagram's way out: send_batch() -> bio_batch_send_build (batch/msgs.c,
 * GIL held: each entry read once and checked; runs of datagrams to the same
 * destination, of the same size, become one message carrying a UDP_SEGMENT
 * cmsg) ->
 * bio_udp_send_msgs_nogil (sendmmsg, or one sendmsg per message) -> the
 * kernel, which builds every datagram of a run from one send. A message
 * that fails stops the send (its first entry is reported) or, when the
 * caller asked to skip errors, is flagged in the batch and the rest goes
 * on. Nothing is dropped without being reported. send_segments() cuts one
 * buffer into datagrams the same way, without a batch.
 */
#include "udp/udp.h"

#include <errno.h>
#include <string.h>

/* Send msgs[*done, m), advancing *done. Returns 0 when all went, else the
 * -errno of message *done (-BIO_ECLOSED: close() ended a wait for room).
 * nogil.
 *
 * Every send is made with MSG_DONTWAIT: a full blocking socket waits in
 * bio_wake_wait_writable_nogil (core/wait.c), where close() can wake it,
 * never in the kernel.
 *
 * sendmmsg returns a short count when a message after the first fails, and
 * discards that error. A retry reproduces a lasting error. If the retry of
 * a message to the connected peer goes through instead, the error was a
 * one-shot pending socket error (ECONNREFUSED and the like, for an earlier
 * datagram) that the kernel consumed: it is counted, as it cannot be
 * reported. (An unconnected socket gets no such errors, so a short count
 * there that clears on retry was a passing EAGAIN/ENOBUFS.) */
static int
bio_udp_send_msgs_nogil(BioUdp *u, struct mmsghdr *msgs, Py_ssize_t m, Py_ssize_t *done)
{
    int short_return = 0;
    int64_t timeo_ns = -2;
    while (*done < m) {
        BIO_COUNT(u->counters, BIO_UDP_C_TX_SYSCALLS, 1);
        Py_ssize_t want = !u->send_mmsg ? 1 : (m - *done > BIO_MMSG_MAX ? BIO_MMSG_MAX : m - *done);
        int r;
        if (!u->send_mmsg)
            r = sendmsg(u->fd, &msgs[*done].msg_hdr, MSG_DONTWAIT) < 0 ? -1 : 1;
        else
            r = sendmmsg(u->fd, msgs + *done, (unsigned int)want, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            BIO_COUNT(u->counters, BIO_UDP_C_TX_SYSCALLS, 1);
            int w = bio_wake_wait_writable_nogil(&u->wake, u->fd, &timeo_ns);
            if (w < 0)
                return w;
            short_return = 0;
            continue;
        }
        if (r < 0)
            return -errno;
        if (short_return && msgs[*done].msg_hdr.msg_name == NULL)
            BIO_COUNT(u->counters, BIO_UDP_C_TX_UNREPORTED_ERRORS, 1);
        short_return = r < want;
        *done += r;
    }
    return 0;
}

/* Count what messages [0, done) delivered to the kernel: the ones not
 * marked failed in the private scratch (the batch's flags are writable by
 * other threads and say nothing the counters may trust). */
static void
bio_udp_send_account(BioUdp *u, BioBatch *b, Py_ssize_t done)
{
    uint64_t datagrams = 0, bytes = 0, gso_msgs = 0, gso_dgrams = 0;
    for (Py_ssize_t m = 0; m < done; m++) {
        struct msghdr *h = &b->msgs[m].msg_hdr;
        if (b->priv[b->msg_entry[m]].err != 0)
            continue;
        for (size_t r = 0; r < h->msg_iovlen; r++)
            bytes += h->msg_iov[r].iov_len;
        datagrams += h->msg_iovlen;
        if (h->msg_iovlen > 1) {
            gso_msgs++;
            gso_dgrams += h->msg_iovlen;
        }
    }
    BIO_COUNT(u->counters, BIO_UDP_C_TX_DATAGRAMS, datagrams);
    BIO_COUNT(u->counters, BIO_UDP_C_TX_BYTES, bytes);
    BIO_COUNT(u->counters, BIO_UDP_C_TX_GSO_MESSAGES, gso_msgs);
    BIO_COUNT(u->counters, BIO_UDP_C_TX_GSO_DATAGRAMS, gso_dgrams);
}

/* Flag every entry of message m as failed with err (> 0), in the batch
 * for the caller and in the private scratch for the counters. */
static void
bio_udp_send_mark_failed(BioUdp *u, BioBatch *b, Py_ssize_t m, int err)
{
    struct msghdr *h = &b->msgs[m].msg_hdr;
    Py_ssize_t j = b->msg_entry[m];
    b->priv[j].err = err;
    for (size_t r = 0; r < h->msg_iovlen; r++) {
        b->flags[j + r] |= BIO_FLAG_SEND_ERROR;
        b->errnos[j + r] = err;
    }
    BIO_COUNT(u->counters, BIO_UDP_C_TX_ERRORS, h->msg_iovlen);
}

/* Whether the error on message m must end the send: EAGAIN (nothing more
 * fits), a GSO or ECN cmsg refusal (policy decides about the downgrade), a
 * GSO run too big for the path (policy tells its datagrams apart), or any
 * error when not skipping. */
static int
bio_udp_send_must_stop(const BioBatch *b, Py_ssize_t m, int err, int skip)
{
    int gso = b->msgs[m].msg_hdr.msg_iovlen > 1;
    if (err == EAGAIN || err == EWOULDBLOCK)
        return 1;
    if (gso && (err == EIO || err == EINVAL || err == EMSGSIZE))
        return 1; /* EMSGSIZE: policy finds which datagrams of the run are too big */
    if (err == EINVAL && bio_cmsg_carries_ecn(&b->msgs[m].msg_hdr))
        return 1; /* the codepoint refused? policy decides about the downgrade */
    return !skip;
}

/* One send call: its range and, when it stops early, where and why. Each
 * call keeps its own (two threads may send on one socket at once). */
typedef struct {
    BioUdp *u;
    BioBatch *b;
    Py_ssize_t start, end, m, done;
    int skip;
    int err;              /* errno that stopped it early (0: it did not) */
    Py_ssize_t err_index; /* entry of the message that failed (-1: none) */
    int err_gso;          /* that message was a GSO send */
} BioUdpSend;

/* Send the messages built (b->msgs[0, m)), flagging and skipping failures
 * when asked. 0, or the -errno that stopped it (close() ending a wait for
 * room stops it even when skipping). nogil. */
static int
bio_udp_send_run_nogil(void *arg)
{
    BioUdpSend *c = arg;
    for (;;) {
        int err = bio_udp_send_msgs_nogil(c->u, c->b->msgs, c->m, &c->done);
        if (err == 0 || err == -EINTR ||
            (err == -BIO_ECLOSED && bio_wake_closing(&c->u->wake)) ||
            bio_udp_send_must_stop(c->b, c->done, -err, c->skip))
            return err;
        bio_udp_send_mark_failed(c->u, c->b, c->done++, -err);
    }
}

/* on_error: NULL or "raise" -> 0, "skip" -> 1, else -1 with ValueError. */
static int
bio_udp_send_on_error(PyObject *on_error)
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

/* A send of one datagram (one message, not a GSO run) is tried first with
 * the GIL held: made with MSG_DONTWAIT, the call never blocks, and it is
 * shorter than handing the GIL over and taking it back around it (the
 * reply of request/response traffic waits for exactly this). close() needs
 * the GIL, so the descriptor stays. Where the socket has no room (EAGAIN)
 * or a signal came (EINTR), the send goes the released way
 * (bio_udp_send_run_nogil: it tries again, and waits for room where close()
 * can wake it, runs signal handlers); any other outcome is settled here as
 * that loop settles it. 0 or the -errno that stopped the send, or 1: not
 * settled, go the released way. */
static int
bio_udp_send_one_held(BioUdpSend *c)
{
    BioUdp *u = c->u;
    struct mmsghdr *msg = &c->b->msgs[0];
    if (c->m != 1 || c->done != 0 || msg->msg_hdr.msg_iovlen != 1)
        return 1;
    const struct msghdr *h = &msg->msg_hdr;
    BIO_COUNT(u->counters, BIO_UDP_C_TX_SYSCALLS, 1);
    /* no cmsg: sendto, the kernel's shortest way for one buffer (no
     * message header or iovec to copy in) */
    int r = h->msg_controllen == 0
                ? (sendto(u->fd, h->msg_iov[0].iov_base, h->msg_iov[0].iov_len, MSG_DONTWAIT,
                          (const struct sockaddr *)h->msg_name, h->msg_namelen) < 0 ? -1 : 1)
            : u->send_mmsg ? sendmmsg(u->fd, msg, 1, MSG_DONTWAIT)
                           : (sendmsg(u->fd, h, MSG_DONTWAIT) < 0 ? -1 : 1);
    if (r == 1) {
        c->done = 1;
        return 0;
    }
    int e = r < 0 ? errno : EAGAIN;
    if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
        return 1;
    if (bio_udp_send_must_stop(c->b, 0, e, c->skip))
        return -e;
    bio_udp_send_mark_failed(u, c->b, c->done++, e);
    return 0;
}

/* Run the send of c's range; returns the -errno that stopped it (0: all
 * went; -EINTR: a signal handler raised, exception set). Records where a
 * stop happened in c (err, err_index, err_gso). */
static int
bio_udp_send_range_run(BioUdpSend *c)
{
    BioUdp *u = c->u;
    c->err = 0;
    c->err_index = -1;
    c->err_gso = 0;
    c->b->busy = 1;
    int err = bio_udp_send_one_held(c);
    if (err == 1)
        err = bio_nogil_retry(bio_udp_send_run_nogil, c);
    c->b->busy = 0;
    bio_udp_send_account(u, c->b, c->done);
    if (err < 0) {
        c->err = -err;
        c->err_index = c->done < c->m ? c->b->msg_entry[c->done] : c->end;
        c->err_gso = c->done < c->m && c->b->msgs[c->done].msg_hdr.msg_iovlen > 1;
    }
    return err;
}

/* send_raw's per-call options a[4] (gso) and a[5] (ecn): each true when
 * absent; send_batch takes neither. 0, or -1 with TypeError set. */
static int
bio_udp_send_call_opts(PyObject *const *a, const char *fname, int raw, int *gso, int *ecn)
{
    static const char *const opt[] = {"gso", "ecn"};
    int *out[] = {gso, ecn};
    for (int i = 0; i < 2; i++) {
        *out[i] = 1;
        if (a[4 + i] == NULL)
            continue;
        if (!raw) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%s'", fname,
                         opt[i]);
            return -1;
        }
        if ((*out[i] = PyObject_IsTrue(a[4 + i])) < 0)
            return -1;
    }
    return 0;
}

/* send_batch / send_raw. send_batch returns the entries processed from
 * start (sent, or flagged failed when skipping), or, when the send stops
 * early and u->recover is set, what recover(batch, start, done, end, skip,
 * errno, index, gso) returns: the stop as this call saw it. send_raw
 * (`raw`) returns (processed, errno, index, gso), errno 0 when nothing
 * stopped it, and takes gso=False / ecn=False to send this call without GSO
 * / without codepoints (the socket's settings stay as they are: another
 * thread's send is not affected). */
static PyObject *
bio_udp_send_common(BioUdp *u, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames, const char *fname, int raw)
{
    static const char *const names[] = {"batch", "start", "count", "on_error", "gso", "ecn",
                                        NULL};
    PyObject *a[6];
    BioUdpSend c = {.u = u};
    int gso, ecn;
    if (bio_args_parse(fname, args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_batch_arg(fname, a[0]) < 0 || (c.skip = bio_udp_send_on_error(a[3])) < 0 ||
        bio_udp_send_call_opts(a, fname, raw, &gso, &ecn) < 0)
        return NULL;
    c.b = (BioBatch *)a[0];
    if (bio_batch_check_idle(c.b) < 0 ||
        bio_batch_send_range(c.b, a[1], a[2], &c.start, &c.end) < 0)
        return NULL;
    BioBatchSendOpts o = bio_udp_send_opts(u);
    o.gso = o.gso && gso;
    o.ecn = ecn ? o.ecn : 0;
    if ((c.m = bio_batch_send_build(&o, c.b, c.start, c.end)) < 0)
        return NULL;
    if (bio_udp_enter(u) < 0)
        return NULL;
    if (!raw)
        BIO_COUNT(u->counters, BIO_UDP_C_TX_BATCHES, 1);
    int err = bio_udp_send_range_run(&c);
    bio_batch_count_meta(&o, c.b, c.done);
    bio_udp_leave(u);
    Py_ssize_t processed = c.err_index >= 0 ? c.err_index - c.start : c.end - c.start;
    if (err == -BIO_ECLOSED && bio_wake_closing(&u->wake))
        bio_udp_raise_closed();
    if (err == -EINTR || (err == -BIO_ECLOSED && PyErr_Occurred())) {
        bio_exc_note_sent(processed);
        return NULL;
    }
    if (raw)
        return Py_BuildValue("(nini)", processed, c.err, c.err_index, c.err_gso);
    if (err == 0 || u->recover == NULL || u->recover == Py_None)
        return PyLong_FromSsize_t(processed);
    return PyObject_CallFunction(u->recover, "Onnninni", (PyObject *)c.b, c.start,
                                 c.start + processed, c.end, c.skip, c.err, c.err_index,
                                 c.err_gso);
}

PyObject *
bio_udp_send_batch(BioUdp *u, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return bio_udp_send_common(u, args, nargs, kwnames, "send_batch", 0);
}

PyObject *
bio_udp_send_raw(BioUdp *u, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return bio_udp_send_common(u, args, nargs, kwnames, "send_raw", 1);
}

/* ---- send_segments: one buffer cut into equal datagrams --------------- */

#define BIO_UDP_SEGMENT_MSGS 64

typedef struct {
    BioUdp *u;
    const unsigned char *buf;
    size_t len, seg, per_msg, sent;
    struct sockaddr_in6 name;
    int gso;          /* this call may use GSO (the socket's setting and the caller's) */
    int stopped_gso;
    struct mmsghdr msgs[BIO_UDP_SEGMENT_MSGS];
    struct iovec iov[BIO_UDP_SEGMENT_MSGS];
    unsigned char cm[BIO_UDP_SEGMENT_MSGS][CMSG_SPACE(sizeof(uint16_t))];
} BioUdpSegments;

/* Build up to BIO_UDP_SEGMENT_MSGS messages from byte *off on, per_msg segments
 * each (one UDP_SEGMENT send when more than one); returns the count. */
static int
bio_udp_segments_fill(BioUdpSegments *c, size_t *off)
{
    int m = 0;
    socklen_t namelen = bio_addr_len(&c->name);
    while (m < BIO_UDP_SEGMENT_MSGS && *off < c->len) {
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
bio_udp_segments_run_nogil(void *arg)
{
    BioUdpSegments *c = arg;
    BioUdp *u = c->u;
    size_t off = c->sent * c->seg;
    while (off < c->len) {
        size_t msg_start = off;
        int m = bio_udp_segments_fill(c, &off);
        Py_ssize_t done = 0;
        int err = bio_udp_send_msgs_nogil(u, c->msgs, m, &done);
        size_t bytes = msg_start + (size_t)done * c->per_msg * c->seg;
        if (bytes > c->len)
            bytes = c->len;
        for (Py_ssize_t i = 0; i < done; i++) {
            size_t dg = (c->msgs[i].msg_hdr.msg_iov[0].iov_len + c->seg - 1) / c->seg;
            if (dg > 1) {
                BIO_COUNT(u->counters, BIO_UDP_C_TX_GSO_MESSAGES, 1);
                BIO_COUNT(u->counters, BIO_UDP_C_TX_GSO_DATAGRAMS, dg);
            }
        }
        BIO_COUNT(u->counters, BIO_UDP_C_TX_BYTES, bytes - msg_start);
        size_t now = (bytes + c->seg - 1) / c->seg;
        BIO_COUNT(u->counters, BIO_UDP_C_TX_DATAGRAMS, now - c->sent);
        c->sent = now;
        if (err < 0) {
            c->stopped_gso = done < m && c->msgs[done].msg_hdr.msg_controllen > 0;
            return err;
        }
    }
    return 0;
}

const char bio_udp_send_segments_doc[] =
"send_segments($self, /, buffer, segment_size, addr=None, first=0, gso=True)\n--\n\n"
"Send buffer cut into datagrams of segment_size bytes (the last may be\n"
"shorter), from datagram `first` on, with UDP GSO when on (gso=False: not\n"
"for this call). Returns (sent, errno, gso): the datagrams sent and, if a\n"
"send stopped it early, its errno and whether it was a GSO send (errno 0:\n"
"all went).";

/* Check send_segments()'s segment size and destination and set c up to
 * send pb from datagram `first` on. 0, or -1 with an error set. */
static int
bio_udp_segments_setup(BioUdp *u, BioUdpSegments *c, const Py_buffer *pb, PyObject *seg_obj,
                       PyObject *addr, Py_ssize_t first, int gso)
{
    long long seg;
    if (bio_args_int("segment_size", seg_obj, 1, BIO_MAX_UDP_PAYLOAD, &seg) < 0 ||
        (addr != Py_None && bio_addr_parse(addr, &c->name) < 0))
        return -1;
    c->u = u;
    c->buf = pb->buf;
    c->len = (size_t)pb->len;
    c->seg = (size_t)seg;
    c->per_msg = 1;
    c->sent = first < 0 ? 0 : (size_t)first;
    c->gso = u->gso && gso;
    if (c->gso) {
        size_t fit = BIO_MAX_UDP_PAYLOAD / c->seg;
        c->per_msg = fit > (size_t)u->gso_max_segments ? (size_t)u->gso_max_segments : fit;
    }
    return 0;
}

/* Run the send c is set up for: (sent, errno, gso) as send_segments
 * returns it, or NULL with an error (a signal handler's, its `sent` set). */
static PyObject *
bio_udp_segments_run(BioUdp *u, BioUdpSegments *c)
{
    size_t before = c->sent;
    BIO_COUNT(u->counters, BIO_UDP_C_TX_BATCHES, 1);
    int err = bio_nogil_retry(bio_udp_segments_run_nogil, c);
    if (err == -BIO_ECLOSED && bio_wake_closing(&u->wake))
        bio_udp_raise_closed();
    if (err == -EINTR || (err == -BIO_ECLOSED && PyErr_Occurred())) {
        bio_exc_note_sent((Py_ssize_t)(c->sent - before));
        return NULL;
    }
    return Py_BuildValue("(nii)", (Py_ssize_t)(c->sent - before), err < 0 ? -err : 0,
                         err < 0 ? c->stopped_gso : 0);
}

PyObject *
bio_udp_send_segments(BioUdp *u, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "segment_size", "addr", "first", "gso", NULL};
    Py_buffer pb;
    Py_ssize_t first = 0;
    int gso = 1;
    PyObject *buffer, *seg_obj, *addr = Py_None, *ret = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|Onp:send_segments", kwlist, &buffer,
                                     &seg_obj, &addr, &first, &gso) ||
        bio_args_int_type("segment_size", seg_obj, 0) < 0 || bio_args_contiguous(buffer, &pb) < 0)
        return NULL;
    BioUdpSegments *c = PyMem_Calloc(1, sizeof(*c));
    if (c == NULL)
        PyErr_NoMemory();
    else if (bio_udp_segments_setup(u, c, &pb, seg_obj, addr, first, gso) == 0 &&
             bio_udp_enter(u) == 0) {
        ret = bio_udp_segments_run(u, c);
        bio_udp_leave(u);
    }
    PyMem_Free(c);
    PyBuffer_Release(&pb);
    return ret;
}
