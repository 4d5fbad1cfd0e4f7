/* UDP frames built in C: Ethernet (with an optional 802.1Q tag), IPv4 or
 * IPv6, UDP, and their checksums (the IPv4 header checksum; the UDP
 * checksum over the pseudo-header, for IPv4 and IPv6 alike); and
 * XskSocket.send_udp, which builds one frame per batch entry.
 *
 * Where a frame goes through it: a payload of the caller's batch is copied
 * into a free UMEM frame behind room for the headers, the headers are
 * written in front of it (the destination MAC from the neighbour table
 * Python read, src/burstio/xdp/udp.py) and the frame goes on the tx ring
 * (tx.c). The packet generator builds its frames here too.
 */
#include "xdp/xdp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

uint32_t
bio_csum_add(uint32_t sum, const unsigned char *p, size_t n)
{
    size_t i = 0;
    for (; i + 1 < n; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (i < n)
        sum += (uint32_t)(p[i] << 8);
    return sum;
}

uint16_t
bio_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static void
bio_put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

size_t
bio_udp_header_len(const BioUdpHeader *h)
{
    return 14 + (h->vlan ? 4 : 0) + (h->family == 6 ? 40 : 20) + 8;
}

/* The IP header at p for `l4` bytes of UDP; returns its length. */
static size_t
bio_udp_build_ip(unsigned char *p, const BioUdpHeader *h, size_t l4)
{
    if (h->family == 6) {
        p[0] = (unsigned char)(0x60 | h->tos >> 4);
        p[1] = (unsigned char)(h->tos << 4);
        p[2] = p[3] = 0;
        bio_put16(p + 4, (uint16_t)l4);
        p[6] = IPPROTO_UDP;
        p[7] = h->ttl;
        memcpy(p + 8, h->src, 16);
        memcpy(p + 24, h->dst, 16);
        return 40;
    }
    p[0] = 0x45;
    p[1] = h->tos;
    bio_put16(p + 2, (uint16_t)(20 + l4));
    bio_put16(p + 4, 0);      /* id */
    bio_put16(p + 6, 0x4000); /* don't fragment */
    p[8] = h->ttl;
    p[9] = IPPROTO_UDP;
    bio_put16(p + 10, 0);
    memcpy(p + 12, h->src, 4);
    memcpy(p + 16, h->dst, 4);
    bio_put16(p + 10, (uint16_t)~bio_csum_fold(bio_csum_add(0, p, 20)));
    return 20;
}

size_t
bio_udp_build(unsigned char *out, const BioUdpHeader *h, size_t len)
{
    unsigned char *p = out;
    memcpy(p, h->dst_mac, 6);
    memcpy(p + 6, h->src_mac, 6);
    p += 12;
    if (h->vlan) {
        bio_put16(p, 0x8100);
        bio_put16(p + 2, h->vlan);
        p += 4;
    }
    bio_put16(p, h->family == 6 ? 0x86dd : 0x0800);
    p += 2;
    size_t l4 = 8 + len;
    p += bio_udp_build_ip(p, h, l4);
    bio_put16(p, h->sport);
    bio_put16(p + 2, h->dport);
    bio_put16(p + 4, (uint16_t)l4);
    bio_put16(p + 6, 0);
    size_t alen = h->family == 6 ? 16 : 4;
    uint32_t sum = bio_csum_add(0, h->src, alen);
    sum = bio_csum_add(sum, h->dst, alen);
    sum += IPPROTO_UDP + (uint32_t)l4;
    sum = bio_csum_add(sum, p, l4); /* the UDP header (checksum 0) and payload */
    uint16_t c = (uint16_t)~bio_csum_fold(sum);
    bio_put16(p + 6, c ? c : 0xffff); /* 0 means "no checksum": send its other form */
    return (size_t)(p - out) + l4;
}

int
bio_udp_header_parse(PyObject *t, BioUdpHeader *h)
{
    Py_buffer dmac, smac, src, dst;
    int family, sport, dport, vlan, ttl;
    memset(h, 0, sizeof(*h));
    if (!PyArg_ParseTuple(t, "y*y*y*y*iiiii:header", &dmac, &smac, &src, &dst, &family, &sport,
                          &dport, &vlan, &ttl))
        return -1;
    int ok = dmac.len == 6 && smac.len == 6 && src.len == 16 && dst.len == 16 &&
             (family == 4 || family == 6) && sport >= 0 && sport <= 0xffff && dport >= 0 &&
             dport <= 0xffff && vlan >= 0 && vlan <= 0xffff && ttl >= 1 && ttl <= 255;
    if (ok) {
        memcpy(h->dst_mac, dmac.buf, 6);
        memcpy(h->src_mac, smac.buf, 6);
        memcpy(h->src, src.buf, 16);
        memcpy(h->dst, dst.buf, 16);
        h->family = family;
        h->sport = (uint16_t)sport;
        h->dport = (uint16_t)dport;
        h->vlan = (uint16_t)vlan;
        h->ttl = (uint8_t)ttl;
    }
    PyBuffer_Release(&dmac);
    PyBuffer_Release(&smac);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (!ok)
        PyErr_SetString(PyExc_ValueError,
                        "header must be (dst_mac: 6 bytes, src_mac: 6 bytes, src: 16 bytes, "
                        "dst: 16 bytes, family 4 or 6, sport, dport, vlan, ttl 1-255)");
    return ok ? 0 : -1;
}

PyDoc_STRVAR(bio_udp_frame_doc,
"udp_frame($module, header, payload, /)\n--\n\n"
"One Ethernet/IP/UDP frame as bytes, checksums computed. header is\n"
"(dst_mac, src_mac, src, dst, family, sport, dport, vlan, ttl): MACs of 6\n"
"bytes, addresses of 16 (IPv4 in the first 4), vlan 0 for none.");

static PyObject *
bio_udp_frame(PyObject *self, PyObject *args)
{
    PyObject *t;
    Py_buffer payload;
    BioUdpHeader h;
    if (!PyArg_ParseTuple(args, "O!y*:udp_frame", &PyTuple_Type, &t, &payload))
        return NULL;
    PyObject *out = NULL;
    if (bio_udp_header_parse(t, &h) == 0) {
        size_t hl = bio_udp_header_len(&h);
        if ((size_t)payload.len > 65507) {
            PyErr_Format(PyExc_ValueError, "payload of %zd bytes is larger than a UDP datagram",
                         payload.len);
        } else if ((out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)hl + payload.len))) {
            unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
            memcpy(p + hl, payload.buf, (size_t)payload.len);
            bio_udp_build(p, &h, (size_t)payload.len);
        }
    }
    PyBuffer_Release(&payload);
    return out;
}

/* ---- XskSocket.send_udp ---------------------------------------------------- */

/* The destination of entry i as the header wants it; family must match.
 * 0 or -1 with ValueError. */
static int
bio_udp_dest(BioBatch *b, Py_ssize_t i, BioUdpHeader *h)
{
    const struct sockaddr_in6 *sa = &b->names[i];
    if (sa->sin6_family == AF_INET && h->family == 4) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        memset(h->dst, 0, 16);
        memcpy(h->dst, &s4->sin_addr, 4);
        h->dport = ntohs(s4->sin_port);
        return 0;
    }
    if (sa->sin6_family == AF_INET6 && h->family == 6) {
        memcpy(h->dst, &sa->sin6_addr, 16);
        h->dport = ntohs(sa->sin6_port);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "datagram %zd: its address is %s, the source is IPv%d", i,
                 sa->sin6_family == 0 ? "missing" : "of the other family", h->family);
    return -1;
}

/* The MAC of h->dst in `neigh` (records of 16-byte address + 6-byte MAC)
 * into h->dst_mac. 0, or -1 with LookupError naming the entry. */
static int
bio_udp_neighbour(const Py_buffer *neigh, Py_ssize_t i, BioUdpHeader *h)
{
    const unsigned char *p = neigh->buf;
    for (Py_ssize_t k = 0; k + 22 <= neigh->len; k += 22) {
        if (memcmp(p + k, h->dst, 16) == 0) {
            memcpy(h->dst_mac, p + k + 16, 6);
            return 0;
        }
    }
    PyErr_Format(PyExc_LookupError, "datagram %zd: no neighbour entry for its destination", i);
    PyObject *t, *v, *tb, *index = PyLong_FromSsize_t(i);
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (index == NULL || PyObject_SetAttrString(v, "index", index) < 0)
        PyErr_Clear();
    Py_XDECREF(index);
    PyErr_Restore(t, v, tb);
    return -1;
}

/* Checks of send_udp before anything is queued: addresses, neighbours,
 * sizes. 0 or -1. */
static int
bio_udp_send_check(BioXsk *x, BioBatch *b, Py_ssize_t start, Py_ssize_t end,
                   const Py_buffer *neigh, BioUdpHeader h)
{
    size_t room = x->umem->frame_size - x->umem->headroom;
    if (bio_batch_check_entries(b, start, end) < 0)
        return -1;
    for (Py_ssize_t i = start; i < end; i++) {
        if (bio_udp_dest(b, i, &h) < 0 || bio_udp_neighbour(neigh, i, &h) < 0)
            return -1;
        if (bio_udp_header_len(&h) + b->lengths[i] > room) {
            PyErr_Format(PyExc_ValueError,
                         "datagram %zd: %u bytes and %zu of headers do not fit a %zu-byte frame",
                         i, b->lengths[i], bio_udp_header_len(&h), room);
            return -1;
        }
    }
    return 0;
}

/* Build and queue datagrams [start, end); returns how many were queued. */
static Py_ssize_t
bio_udp_send_queue(BioXsk *x, BioBatch *b, Py_ssize_t start, Py_ssize_t end,
                   const Py_buffer *neigh, BioUdpHeader *h)
{
    BioUmem *u = x->umem;
    Py_ssize_t i = start;
    for (; i < end; i++) {
        if (bio_ring_prod_free(&x->tx, 1) == 0) {
            BIO_COUNT(x->counters, BIO_XSK_TX_RING_FULL, 1);
            break;
        }
        int64_t f = bio_umem_take(u, BIO_FRAME_TX);
        if (f < 0) {
            BIO_COUNT(x->counters, BIO_XSK_TX_NO_FRAME, 1);
            break;
        }
        bio_udp_dest(b, i, h);
        bio_udp_neighbour(neigh, i, h);
        uint32_t len = b->lengths[i];
        unsigned char *frame = u->area + ((uint64_t)f << u->frame_shift) + u->headroom;
        memcpy(frame + bio_udp_header_len(h), b->data + b->offsets[i], len);
        size_t flen = bio_udp_build(frame, h, len);
        bio_xsk_tx_put(x, (uint64_t)(frame - u->area), (uint32_t)flen, 0);
        BIO_COUNT(x->counters, BIO_XSK_TX_COPIED, 1);
    }
    return i - start;
}

const char bio_xsk_send_udp_doc[] =
"send_udp($self, /, batch, source, neighbours, start=0, count=None)\n--\n\n"
"Send each entry's payload as a UDP datagram to its address (batch.addr(i)):\n"
"Ethernet, IP and UDP headers and checksums built in C into free frames.\n"
"source is (src_mac, src_ip16, family, sport, vlan, ttl); neighbours are\n"
"records of a 16-byte address and its 6-byte MAC. Returns how many were\n"
"queued (fewer when the tx ring or the free frames run out).";

PyObject *
bio_xsk_send_udp(BioXsk *x, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"batch", "source", "neighbours", "start", "count", NULL};
    PyObject *a[5];
    Py_ssize_t start, end;
    if (bio_args_parse("send_udp", args, nargs, kwnames, names, 5, 3, a) < 0 ||
        bio_batch_arg("send_udp", a[0]) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)a[0];
    BioUdpHeader h;
    Py_buffer smac, sip;
    int family, sport, vlan, ttl;
    if (!PyArg_ParseTuple(a[1], "y*y*iiii:source", &smac, &sip, &family, &sport, &vlan, &ttl))
        return NULL;
    PyObject *hdr = Py_BuildValue("(y#y#y#y#iiiii)", "\0\0\0\0\0\0", (Py_ssize_t)6,
                                  smac.buf, smac.len, sip.buf, sip.len,
                                  "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", (Py_ssize_t)16, family,
                                  sport, 0, vlan, ttl);
    PyBuffer_Release(&smac);
    PyBuffer_Release(&sip);
    int bad = hdr == NULL || bio_udp_header_parse(hdr, &h) < 0;
    Py_XDECREF(hdr);
    Py_buffer neigh;
    if (bad || PyObject_GetBuffer(a[2], &neigh, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (bio_batch_check_idle(b) < 0 || bio_batch_send_range(b, a[3], a[4], &start, &end) < 0 ||
        bio_xsk_enter(x, "send_udp") < 0)
        goto out;
    Py_ssize_t n = -1;
    if (x->tx.size == 0)
        PyErr_SetString(PyExc_ValueError, "this XskSocket has no tx ring (tx_size=0)");
    else if (bio_udp_send_check(x, b, start, end, &neigh, h) == 0) {
        bio_xsk_reap(x);
        n = bio_udp_send_queue(x, b, start, end, &neigh, &h);
        BIO_COUNT(x->counters, BIO_XSK_TX_BATCHES, 1);
        int r = bio_xsk_kick(x);
        if (r < 0) {
            if (r != -EINTR)
                bio_raise_errno(r);
            bio_exc_note_sent(n);
            n = -1;
        }
    }
    bio_xsk_leave(x);
    if (n >= 0)
        ret = PyLong_FromSsize_t(n);
out:
    PyBuffer_Release(&neigh);
    return ret;
}

static PyMethodDef bio_build_methods[] = {
    {"udp_frame", bio_udp_frame, METH_VARARGS, bio_udp_frame_doc},
    {NULL, NULL, 0, NULL},
};

int
bio_build_init(PyObject *module)
{
    return PyModule_AddFunctions(module, bio_build_methods);
}
