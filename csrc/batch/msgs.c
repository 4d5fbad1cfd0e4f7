/* Outgoing messages: a run of a batch's entries to one destination, of one
 * size (the last may be shorter), from one local address, with one ECN
 * codepoint and one transmit time, becomes one message carrying a
 * UDP_SEGMENT cmsg (GSO), so that the kernel builds every datagram of the
 * run from one send; other entries become one message each. A batch with
 * metadata (batch/meta.c) gives each message the cmsgs of its source
 * address, codepoint and transmit time (batch/cmsg.c). The messages
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

/* Copy entry j's metadata (local address, interface, codepoint, transmit
 * time) into b->meta->priv[j], each read once, and check it. 0, or -1 with
 * ValueError naming the entry. GIL held. */
static int
bio_batch_snapshot_meta(const BioBatchSendOpts *o, BioBatch *b, Py_ssize_t j)
{
    BioBatchMeta *x = b->meta;
    BioMetaPriv *m = &x->priv[j];
    memcpy(&m->local, &x->local_addrs[j], sizeof(m->local));
    m->ifindex = __atomic_load_n(&x->ifindexes[j], __ATOMIC_RELAXED);
    m->ecn = __atomic_load_n(&x->ecn[j], __ATOMIC_RELAXED);
    m->txtime = __atomic_load_n(&x->txtimes[j], __ATOMIC_RELAXED);
    const char *why = NULL;
    int local = !IN6_IS_ADDR_UNSPECIFIED(&m->local), v4 = bio_cmsg_addr_v4(&m->local);
    int family = b->priv[j].name.sin6_family;
    int dest_v4 = family == AF_INET ||
                  (family == AF_INET6 && bio_cmsg_addr_v4(&b->priv[j].name.sin6_addr));
    if (m->ecn > 3)
        why = "its ECN codepoint (batch.ecn) is %d; codepoints are 0 to 3";
    else if (m->txtime < 0)
        why = "its transmit time (batch.txtimes) is negative";
    else if (m->txtime && !o->txtime)
        why = "it has a transmit time (batch.txtimes) but this socket does not pace "
              "(paced=True does)";
    else if (local && !v4 && o->family == AF_INET)
        why = "its local address is IPv6 but the socket is IPv4";
    else if (local && family && v4 != dest_v4)
        why = "its local address and its destination are of different families";
    if (why == NULL)
        return 0;
    PyObject *msg = PyUnicode_FromFormat(why, (int)m->ecn);
    if (msg != NULL)
        PyErr_Format(PyExc_ValueError, "datagram %zd: %U", j, msg);
    Py_XDECREF(msg);
    return -1;
}

/* Copy entry j's offset, length, destination and socket index into the
 * private scratch (b->iov[j], b->priv[j]), each read once, and check the
 * offset and length against the data; its metadata too when the batch has
 * some. 0, or -1 with ValueError. GIL held. */
static int
bio_batch_snapshot_entry(const BioBatchSendOpts *o, BioBatch *b, Py_ssize_t j)
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
    return b->meta != NULL ? bio_batch_snapshot_meta(o, b, j) : 0;
}

/* 1 if entries j and k have the same metadata (both none counts as same). */
static int
bio_batch_same_meta(const BioBatch *b, Py_ssize_t j, Py_ssize_t k)
{
    if (b->meta == NULL)
        return 1;
    const BioMetaPriv *a = &b->meta->priv[j], *c = &b->meta->priv[k];
    return memcmp(&a->local, &c->local, sizeof(a->local)) == 0 && a->ifindex == c->ifindex &&
           a->ecn == c->ecn && a->txtime == c->txtime;
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
            !bio_batch_same_meta(b, j, j + run) ||
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
 * UDP_SEGMENT cmsg if run > 1 and the cmsgs of the run's metadata; clears
 * the entries' send-error marks (the arrays' and the private ones). */
static void
bio_batch_fill_msg(const BioBatchSendOpts *o, BioBatch *b, Py_ssize_t m, Py_ssize_t j,
                   Py_ssize_t run)
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
    BioCmsgOut c = {.segment = run > 1 ? (uint16_t)b->iov[j].iov_len : 0,
                    .m = b->meta ? &b->meta->priv[j] : NULL, .ecn = o->ecn, .dscp = o->dscp,
                    .txtime = o->txtime, .txtime_offset = o->txtime_offset};
    if (c.segment || c.m)
        bio_cmsg_build(h, bio_batch_cmsg(b, m), &c);
    b->msg_entry[m] = j;
}

void
bio_batch_count_meta(const BioBatchSendOpts *o, const BioBatch *b, Py_ssize_t done)
{
    if (b->meta == NULL || (o->late == NULL && o->unmarked == NULL))
        return;
    int64_t now = o->late != NULL ? bio_now_ns() : 0;
    uint64_t late = 0, unmarked = 0;
    for (Py_ssize_t k = 0; k < done; k++) {
        Py_ssize_t j = b->msg_entry[k];
        if (b->priv[j].err != 0) /* the private record, not the writable flags */
            continue;
        size_t n = b->msgs[k].msg_hdr.msg_iovlen;
        const BioMetaPriv *m = &b->meta->priv[j];
        late += (m->txtime != 0 && m->txtime < now) ? n : 0;
        unmarked += (m->ecn != 0 && o->ecn == 0) ? n : 0;
    }
    if (o->late != NULL && late)
        BIO_COUNT(o->late, 0, late);
    if (o->unmarked != NULL && unmarked)
        BIO_COUNT(o->unmarked, 0, unmarked);
}

Py_ssize_t
bio_batch_send_build(const BioBatchSendOpts *o, BioBatch *b, Py_ssize_t start, Py_ssize_t end)
{
    for (Py_ssize_t j = start; j < end; j++)
        if (bio_batch_snapshot_entry(o, b, j) < 0)
            return -1;
    Py_ssize_t m = 0;
    for (Py_ssize_t j = start; j < end; m++) {
        Py_ssize_t run = o->gso ? bio_batch_gso_run(o, b, j, end) : 1;
        bio_batch_fill_msg(o, b, m, j, run);
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

/* ---- the tests' view of what a send hands the kernel --------------------- */

const char bio_batch_messages_for_test_doc[] =
"send_messages_for_test($module, batch, family=0, gso=1, ecn=1, dscp=0, txtime=0,\n"
"                       txtime_offset=0, /)\n--\n\n"
"Build batch's outgoing messages as a send with these options would and\n"
"return them, [(first entry, entries, control bytes), ...], without\n"
"sending: the cmsgs (UDP_SEGMENT, IP_PKTINFO/IPV6_PKTINFO, IP_TOS and\n"
"IPV6_TCLASS, SCM_TXTIME) exactly as the kernel would get them. For tests\n"
"of what no qdisc here can honour (SO_TXTIME).";

PyObject *
bio_batch_messages_for_test(PyObject *module, PyObject *args)
{
    PyObject *bo;
    int family = 0, gso = 1, ecn = 1, dscp = 0, txtime = 0;
    long long offset = 0;
    if (!PyArg_ParseTuple(args, "O|iiiiiL:send_messages_for_test", &bo, &family, &gso, &ecn, &dscp,
                          &txtime, &offset) ||
        bio_batch_arg("send_messages_for_test", bo) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)bo;
    BioBatchSendOpts o = {.gso = gso, .gso_max_segments = 64, .family = family, .ecn = ecn,
                          .dscp = (uint8_t)dscp, .txtime = txtime, .txtime_offset = offset};
    if (bio_batch_check_idle(b) < 0)
        return NULL;
    Py_ssize_t m = bio_batch_send_build(&o, b, 0, b->count);
    PyObject *list = m < 0 ? NULL : PyList_New(m);
    for (Py_ssize_t k = 0; list != NULL && k < m; k++) {
        const struct msghdr *h = &b->msgs[k].msg_hdr;
        const char *control = h->msg_control != NULL ? (const char *)h->msg_control : "";
        PyObject *t = Py_BuildValue("(nny#)", b->msg_entry[k], (Py_ssize_t)h->msg_iovlen, control,
                                    (Py_ssize_t)h->msg_controllen);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, k, t);
    }
    return list;
}
