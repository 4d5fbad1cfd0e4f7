/* UdpFrames: the vectorised parse of a whole batch of Ethernet frames into
 * arrays: Ethernet, up to two 802.1Q/802.1ad tags, IPv4 (options and
 * fragments flagged) or IPv6 (extension headers flagged, not walked), UDP.
 * Every frame gets a status; a truncated, malformed or non-UDP frame is
 * said to be so, never guessed at.
 *
 * Where a frame goes through it: after recv_batch lent it to a batch,
 * parse() reads its headers (in place, in the UMEM) and writes one row of
 * each array: payload offset (in the batch's buffer, as batch.offsets) and
 * length, family, addresses (16 bytes each), ports, VLAN, status, flags.
 * The arrays are memoryviews (numpy.asarray wraps them without a copy).
 */
#include "xdp/xdp.h"

#include <stddef.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    Py_ssize_t capacity, count;
    BioMemory *mem; /* every array, one mapping */
    uint64_t *payload_offsets;
    uint32_t *payload_lengths;
    uint16_t *src_ports, *dst_ports, *vlans;
    uint8_t *families, *statuses, *flags, *protocols;
    uint8_t (*src)[16], (*dst)[16];
} BioUdpFrames;

/* One frame's parse, written straight into row i. */
typedef struct {
    const unsigned char *p;
    size_t len, at; /* frame length, current header's offset */
    BioUdpFrames *o;
    Py_ssize_t i;
} BioParse;

static uint16_t
bio_get16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* UDP at c->at with `l4` bytes of IP payload. Returns the status. */
static int
bio_parse_udp(BioParse *c, size_t l4, uint64_t base)
{
    if (l4 < 8)
        return BIO_UDP_MALFORMED;
    const unsigned char *u = c->p + c->at;
    uint16_t ulen = bio_get16(u + 4);
    if (ulen < 8 || ulen > l4)
        return BIO_UDP_MALFORMED;
    if (ulen < l4)
        c->o->flags[c->i] |= BIO_UDP_F_PADDED;
    c->o->src_ports[c->i] = bio_get16(u);
    c->o->dst_ports[c->i] = bio_get16(u + 2);
    c->o->payload_offsets[c->i] = base + c->at + 8;
    c->o->payload_lengths[c->i] = (uint32_t)(ulen - 8);
    return BIO_UDP_OK;
}

static int
bio_parse_ipv4(BioParse *c, uint64_t base)
{
    BioUdpFrames *o = c->o;
    const unsigned char *h = c->p + c->at;
    size_t avail = c->len - c->at;
    if (avail < 20)
        return BIO_UDP_TRUNCATED;
    if (h[0] >> 4 != 4 || (h[0] & 0xf) < 5)
        return BIO_UDP_MALFORMED;
    size_t ihl = (size_t)(h[0] & 0xf) * 4, total = bio_get16(h + 2);
    if (ihl > avail)
        return BIO_UDP_TRUNCATED;
    if (total < ihl)
        return BIO_UDP_MALFORMED;
    if (total > avail)
        return BIO_UDP_TRUNCATED;
    o->families[c->i] = 4;
    o->protocols[c->i] = h[9];
    memcpy(o->src[c->i], h + 12, 4);
    memcpy(o->dst[c->i], h + 16, 4);
    if (ihl > 20)
        o->flags[c->i] |= BIO_UDP_F_IP_OPTIONS;
    if (total < avail)
        o->flags[c->i] |= BIO_UDP_F_PADDED;
    if (h[9] != IPPROTO_UDP)
        return BIO_UDP_NOT_UDP;
    if (bio_get16(h + 6) & 0x3fff) /* more fragments, or an offset */
        return BIO_UDP_FRAGMENT;
    c->at += ihl;
    int s = bio_parse_udp(c, total - ihl, base);
    if (s == BIO_UDP_OK && bio_get16(c->p + c->at + 6) == 0)
        o->flags[c->i] |= BIO_UDP_F_CSUM_ZERO;
    return s;
}

static int
bio_parse_ipv6(BioParse *c, uint64_t base)
{
    BioUdpFrames *o = c->o;
    const unsigned char *h = c->p + c->at;
    size_t avail = c->len - c->at;
    if (avail < 40)
        return BIO_UDP_TRUNCATED;
    if (h[0] >> 4 != 6)
        return BIO_UDP_MALFORMED;
    size_t plen = bio_get16(h + 4);
    if (40 + plen > avail)
        return BIO_UDP_TRUNCATED;
    o->families[c->i] = 6;
    o->protocols[c->i] = h[6];
    memcpy(o->src[c->i], h + 8, 16);
    memcpy(o->dst[c->i], h + 24, 16);
    if (40 + plen < avail)
        o->flags[c->i] |= BIO_UDP_F_PADDED;
    switch (h[6]) {
    case IPPROTO_UDP:
        c->at += 40;
        return bio_parse_udp(c, plen, base);
    case 0: case 43: case 44: case 50: case 51: case 60: case 135: case 139: case 140:
    case 253: case 254:
        return BIO_UDP_IPV6_EXT; /* hop-by-hop, routing, fragment, ESP, AH, ... */
    default:
        return BIO_UDP_NOT_UDP;
    }
}

/* Parse one frame of len bytes at p (base: its offset in the batch's buffer). */
static int
bio_parse_frame(BioParse *c, uint64_t base)
{
    BioUdpFrames *o = c->o;
    if (c->len < 14)
        return BIO_UDP_TRUNCATED;
    uint16_t type = bio_get16(c->p + 12);
    c->at = 14;
    for (int tags = 0; (type == 0x8100 || type == 0x88a8) && tags < 2; tags++) {
        if (c->len < c->at + 4)
            return BIO_UDP_TRUNCATED;
        if (tags == 0)
            o->vlans[c->i] = bio_get16(c->p + c->at) & 0x0fff;
        o->flags[c->i] |= BIO_UDP_F_VLAN;
        type = bio_get16(c->p + c->at + 2);
        c->at += 4;
    }
    if (type == 0x0800)
        return bio_parse_ipv4(c, base);
    if (type == 0x86dd)
        return bio_parse_ipv6(c, base);
    return BIO_UDP_NOT_IP;
}

/* Zero row i. */
static void
bio_frames_clear_row(BioUdpFrames *o, Py_ssize_t i)
{
    o->payload_offsets[i] = 0;
    o->payload_lengths[i] = 0;
    o->src_ports[i] = o->dst_ports[i] = o->vlans[i] = 0;
    o->families[i] = o->flags[i] = o->protocols[i] = 0;
    memset(o->src[i], 0, 16);
    memset(o->dst[i], 0, 16);
}

PyDoc_STRVAR(bio_frames_parse_doc,
"parse($self, batch, /)\n--\n\n"
"Parse every entry of batch (Ethernet frames) into the arrays; returns\n"
"len(batch). Row i describes entry i; status[i] is 0 for a UDP datagram.");

static PyObject *
bio_frames_parse(BioUdpFrames *o, PyObject *arg)
{
    if (bio_batch_arg("parse", arg) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)arg;
    if (b->count > o->capacity) {
        PyErr_Format(PyExc_ValueError, "the batch holds %zd frames; these UdpFrames hold %zd",
                     b->count, o->capacity);
        return NULL;
    }
    if (bio_batch_check_idle(b) < 0 || bio_batch_check_entries(b, 0, b->count) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < b->count; i++) {
        uint64_t off = b->offsets[i];
        BioParse c = {.p = b->data + off, .len = b->lengths[i], .o = o, .i = i};
        bio_frames_clear_row(o, i);
        o->statuses[i] = (uint8_t)bio_parse_frame(&c, off);
    }
    o->count = b->count;
    return PyLong_FromSsize_t(o->count);
}

/* ---- the type: one mapping holds every array ---------------------------------- */

typedef struct {
    const char *name, *format;
    size_t offset;   /* of the pointer in BioUdpFrames */
    size_t itemsize; /* bytes per row */
    Py_ssize_t cols; /* 0: one dimension */
    const char *doc;
} BioFramesArray;

#define BIO_FA(field, fmt, size, cols, doc) {#field, fmt, offsetof(BioUdpFrames, field), size, cols, doc}
static const BioFramesArray bio_frames_arrays[] = {
    BIO_FA(payload_offsets, "Q", 8, 0, "uint64 UDP payload offset, in the batch's buffer"),
    BIO_FA(payload_lengths, "I", 4, 0, "uint32 UDP payload length"),
    BIO_FA(src_ports, "H", 2, 0, "uint16 UDP source port"),
    BIO_FA(dst_ports, "H", 2, 0, "uint16 UDP destination port"),
    BIO_FA(vlans, "H", 2, 0, "uint16 VLAN id of the outer tag (flags has VLAN), else 0"),
    BIO_FA(families, "B", 1, 0, "uint8 4 or 6 (0: no IP header)"),
    BIO_FA(statuses, "B", 1, 0, "uint8 UDP_OK or why not (UDP_TRUNCATED, ...)"),
    BIO_FA(flags, "B", 1, 0, "uint8 UDP_F_* bits"),
    BIO_FA(protocols, "B", 1, 0, "uint8 IP protocol (IPv6: next header)"),
    BIO_FA(src, "B", 16, 16, "uint8 (n, 16) source address; IPv4 in the first 4 bytes"),
    BIO_FA(dst, "B", 16, 16, "uint8 (n, 16) destination address; IPv4 in the first 4 bytes"),
};
#define BIO_FRAMES_NARRAYS (sizeof(bio_frames_arrays) / sizeof(bio_frames_arrays[0]))

static PyObject *
bio_frames_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", NULL};
    PyObject *cap_o;
    long long cap;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:UdpFrames", kwlist, &cap_o) ||
        bio_args_int("capacity", cap_o, 1, 1 << 20, &cap) < 0)
        return NULL;
    size_t total = 0;
    for (size_t k = 0; k < BIO_FRAMES_NARRAYS; k++)
        total += ((size_t)cap * bio_frames_arrays[k].itemsize + 7) & ~(size_t)7;
    BioUdpFrames *o = (BioUdpFrames *)type->tp_alloc(type, 0);
    if (o == NULL)
        return NULL;
    o->capacity = (Py_ssize_t)cap;
    if ((o->mem = bio_memory_new(total)) == NULL) {
        Py_DECREF(o);
        return NULL;
    }
    unsigned char *p = o->mem->ptr;
    for (size_t k = 0; k < BIO_FRAMES_NARRAYS; k++) {
        *(void **)((char *)o + bio_frames_arrays[k].offset) = p;
        p += ((size_t)cap * bio_frames_arrays[k].itemsize + 7) & ~(size_t)7;
    }
    return (PyObject *)o;
}

static void
bio_frames_dealloc(BioUdpFrames *o)
{
    Py_XDECREF(o->mem);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

/* A memoryview of array k (capacity rows), typed, over the shared mapping. */
static PyObject *
bio_frames_get_array(BioUdpFrames *o, void *closure)
{
    const BioFramesArray *a = &bio_frames_arrays[(size_t)closure];
    unsigned char *ptr = *(unsigned char **)((char *)o + a->offset);
    Py_ssize_t start = ptr - o->mem->ptr, len = o->capacity * (Py_ssize_t)a->itemsize;
    PyObject *whole = PyMemoryView_FromObject((PyObject *)o->mem);
    PyObject *part = whole ? PySequence_GetSlice(whole, start, start + len) : NULL;
    Py_XDECREF(whole);
    if (part == NULL)
        return NULL;
    PyObject *view = a->cols ? PyObject_CallMethod(part, "cast", "s(nn)", a->format, o->capacity,
                                                   a->cols)
                             : PyObject_CallMethod(part, "cast", "s", a->format);
    Py_DECREF(part);
    return view;
}

static PyObject *
bio_frames_get_ssize(BioUdpFrames *o, void *c)
{
    return PyLong_FromSsize_t(*(Py_ssize_t *)((char *)o + (size_t)c));
}

static PyGetSetDef bio_frames_getset[BIO_FRAMES_NARRAYS + 3];

static PyMethodDef bio_frames_methods[] = {
    {"parse", (PyCFunction)bio_frames_parse, METH_O, bio_frames_parse_doc},
    {NULL, NULL, 0, NULL},
};

PyTypeObject BioUdpFrames_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.UdpFrames",
    .tp_basicsize = sizeof(BioUdpFrames),
    .tp_dealloc = (destructor)bio_frames_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "UdpFrames(capacity)\n--\n\n"
              "The parse of up to `capacity` Ethernet frames into arrays (see burstio.xdp.udp).",
    .tp_methods = bio_frames_methods,
    .tp_getset = bio_frames_getset,
    .tp_new = bio_frames_new,
};

int
bio_frames_init_types(PyObject *module)
{
    size_t k = 0;
    for (; k < BIO_FRAMES_NARRAYS; k++)
        bio_frames_getset[k] = (PyGetSetDef){(char *)bio_frames_arrays[k].name,
                                             (getter)bio_frames_get_array, NULL,
                                             (char *)bio_frames_arrays[k].doc, (void *)k};
    bio_frames_getset[k++] = (PyGetSetDef){"capacity", (getter)bio_frames_get_ssize, NULL,
                                           "rows", (void *)offsetof(BioUdpFrames, capacity)};
    bio_frames_getset[k++] = (PyGetSetDef){"count", (getter)bio_frames_get_ssize, NULL,
                                           "rows the last parse wrote",
                                           (void *)offsetof(BioUdpFrames, count)};
    bio_frames_getset[k] = (PyGetSetDef){NULL, NULL, NULL, NULL, NULL};
    if (PyType_Ready(&BioUdpFrames_Type) < 0)
        return -1;
    static const struct {
        const char *name;
        long value;
    } consts[] = {
        {"UDP_OK", BIO_UDP_OK}, {"UDP_TRUNCATED", BIO_UDP_TRUNCATED},
        {"UDP_MALFORMED", BIO_UDP_MALFORMED}, {"UDP_NOT_IP", BIO_UDP_NOT_IP},
        {"UDP_NOT_UDP", BIO_UDP_NOT_UDP}, {"UDP_FRAGMENT", BIO_UDP_FRAGMENT},
        {"UDP_IPV6_EXT", BIO_UDP_IPV6_EXT}, {"UDP_F_VLAN", BIO_UDP_F_VLAN},
        {"UDP_F_IP_OPTIONS", BIO_UDP_F_IP_OPTIONS}, {"UDP_F_PADDED", BIO_UDP_F_PADDED},
        {"UDP_F_CSUM_ZERO", BIO_UDP_F_CSUM_ZERO},
    };
    for (size_t c = 0; c < sizeof(consts) / sizeof(consts[0]); c++)
        if (PyModule_AddIntConstant(module, consts[c].name, consts[c].value) < 0)
            return -1;
    return PyModule_AddObjectRef(module, "UdpFrames", (PyObject *)&BioUdpFrames_Type);
}
