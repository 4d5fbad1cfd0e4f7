/* PacketBatch's per-datagram metadata, there only for sockets that ask for
 * it: the local address (where a datagram arrived, with the interface index;
 * the source to send from), the ECN codepoint (received / to send) and the
 * transmit time (paced sends). One block, allocated on first use: a batch
 * whose sockets never ask costs nothing more, per call or in memory.
 *
 * Where a datagram goes through it: a receive on a socket with pktinfo or
 * ecn on writes these arrays next to the peer address (udp/recv.c,
 * socketset/); a send reads them once into private copies (batch/msgs.c)
 * that become the message's cmsgs (batch/cmsg.c), or the pacer's entry
 * (udp/pacer.c).
 */
#include "batch/batch.h"

#include <arpa/inet.h>
#include <string.h>

static size_t
bio_meta_align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

int
bio_batch_meta_ensure(BioBatch *b)
{
    if (b->meta != NULL)
        return 0;
    if (bio_batch_check_idle(b) < 0)
        return -1;
    size_t c = (size_t)b->capacity;
    size_t sizes[] = {c * sizeof(struct in6_addr), c * sizeof(uint32_t), c * sizeof(uint8_t),
                      c * sizeof(int64_t), c * sizeof(BioMetaPriv), c * BIO_CMSG_WIDE};
    size_t total = bio_meta_align8(sizeof(BioBatchMeta));
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        total += bio_meta_align8(sizes[i]);
    unsigned char *p = PyMem_RawCalloc(1, total);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    BioBatchMeta *m = (BioBatchMeta *)p;
    void **dest[] = {(void **)&m->local_addrs, (void **)&m->ifindexes, (void **)&m->ecn,
                     (void **)&m->txtimes, (void **)&m->priv, (void **)&m->cmsg};
    p += bio_meta_align8(sizeof(BioBatchMeta));
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        *dest[i] = p;
        p += bio_meta_align8(sizes[i]);
    }
    b->meta = m;
    return 0;
}

void
bio_batch_meta_free(BioBatch *b)
{
    PyMem_RawFree(b->meta);
    b->meta = NULL;
}

void
bio_batch_meta_store(BioBatch *b, Py_ssize_t j, const BioMetaPriv *m)
{
    BioBatchMeta *x = b->meta;
    if (x == NULL)
        return;
    x->local_addrs[j] = m->local;
    x->ifindexes[j] = m->ifindex;
    x->ecn[j] = m->ecn;
    x->txtimes[j] = 0; /* a received datagram has no transmit time */
}

void
bio_batch_meta_move(BioBatch *b, Py_ssize_t j, Py_ssize_t i)
{
    BioBatchMeta *x = b->meta;
    if (x == NULL)
        return;
    x->local_addrs[j] = x->local_addrs[i];
    x->ifindexes[j] = x->ifindexes[i];
    x->ecn[j] = x->ecn[i];
    x->txtimes[j] = x->txtimes[i];
}

void
bio_batch_meta_clear(BioBatch *b, Py_ssize_t i)
{
    BioMetaPriv none;
    memset(&none, 0, sizeof(none));
    bio_batch_meta_store(b, i, &none);
}

/* ---- addresses ----------------------------------------------------------- */

/* A numeric IPv4 or IPv6 address (None: none, ::) into *a, IPv4 as
 * ::ffff:a.b.c.d. 0, or -1 with TypeError/ValueError naming `name`. */
static int
bio_meta_parse_host(const char *name, PyObject *obj, struct in6_addr *a)
{
    memset(a, 0, sizeof(*a));
    if (obj == NULL || obj == Py_None)
        return 0;
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be str or None, got %.100s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *s = PyUnicode_AsUTF8(obj);
    if (s == NULL)
        return -1;
    struct in_addr v4;
    if (inet_pton(AF_INET, s, &v4) == 1) {
        a->s6_addr[10] = a->s6_addr[11] = 0xff;
        memcpy(a->s6_addr + 12, &v4, 4);
        return 0;
    }
    if (inet_pton(AF_INET6, s, a) == 1)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s must be a numeric IPv4 or IPv6 address, got %R", name, obj);
    return -1;
}

/* The address as a str (IPv4 dotted, whatever the socket's family), or
 * None for ::. */
static PyObject *
bio_meta_build_host(const struct in6_addr *a)
{
    char buf[INET6_ADDRSTRLEN];
    if (IN6_IS_ADDR_UNSPECIFIED(a))
        Py_RETURN_NONE;
    if (bio_cmsg_addr_v4(a))
        inet_ntop(AF_INET, a->s6_addr + 12, buf, sizeof(buf));
    else
        inet_ntop(AF_INET6, a, buf, sizeof(buf));
    return PyUnicode_FromString(buf);
}

int
bio_batch_meta_set(BioBatch *b, Py_ssize_t i, PyObject *local, PyObject *ecn, PyObject *txtime)
{
    BioMetaPriv m;
    long long e = 0, t = 0;
    memset(&m, 0, sizeof(m));
    if (bio_meta_parse_host("local", local, &m.local) < 0 ||
        (ecn != NULL && bio_args_int("ecn", ecn, 0, 3, &e) < 0) ||
        (txtime != NULL && bio_args_int("txtime", txtime, 0, INT64_MAX, &t) < 0))
        return -1;
    m.ecn = (uint8_t)e;
    if (b->meta == NULL && IN6_IS_ADDR_UNSPECIFIED(&m.local) && e == 0 && t == 0)
        return 0; /* nothing to record: no metadata yet */
    if (bio_batch_meta_ensure(b) < 0)
        return -1;
    bio_batch_meta_store(b, i, &m);
    b->meta->txtimes[i] = t;
    return 0;
}

static Py_ssize_t
bio_meta_index(BioBatch *b, PyObject *arg)
{
    Py_ssize_t i = PyNumber_AsSsize_t(arg, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred())
        return -1;
    if (i < 0)
        i += b->count;
    if (i < 0 || i >= b->count) {
        PyErr_Format(PyExc_IndexError, "batch index out of range (the batch holds %zd datagrams)",
                     b->count);
        return -1;
    }
    return i;
}

const char bio_batch_meta_local_addr_doc[] =
"local_addr($self, i, /)\n--\n\n"
"Local address of entry i as a str: where it arrived (a socket with\n"
"pktinfo on), or the source to send it from; None if it has none (the\n"
"kernel chooses). IPv4 is dotted whatever the socket's family.";

PyObject *
bio_batch_meta_local_addr(BioBatch *b, PyObject *arg)
{
    Py_ssize_t i = bio_meta_index(b, arg);
    if (i < 0)
        return NULL;
    if (b->meta == NULL)
        Py_RETURN_NONE;
    struct in6_addr a;
    memcpy(&a, &b->meta->local_addrs[i], sizeof(a));
    return bio_meta_build_host(&a);
}

const char bio_batch_meta_set_local_addr_doc[] =
"set_local_addr($self, i, host, ifindex=0, /)\n--\n\n"
"Send entry i from `host` (a numeric address; None: the kernel chooses) and,\n"
"if ifindex is not 0, out of that interface.";

PyObject *
bio_batch_meta_set_local_addr(BioBatch *b, PyObject *args)
{
    PyObject *idx, *host, *ifx = NULL;
    long long ifindex = 0;
    struct in6_addr a;
    if (!PyArg_ParseTuple(args, "OO|O:set_local_addr", &idx, &host, &ifx))
        return NULL;
    Py_ssize_t i = bio_meta_index(b, idx);
    if (i < 0 || bio_meta_parse_host("host", host, &a) < 0 ||
        (ifx != NULL && bio_args_int("ifindex", ifx, 0, UINT32_MAX, &ifindex) < 0) ||
        bio_batch_meta_ensure(b) < 0 || bio_batch_check_idle(b) < 0)
        return NULL;
    b->meta->local_addrs[i] = a;
    b->meta->ifindexes[i] = (uint32_t)ifindex;
    Py_RETURN_NONE;
}

PyObject *
bio_batch_meta_store_py(BioBatch *b, PyObject *args)
{
    Py_ssize_t i;
    PyObject *local;
    unsigned int ifindex, ecn;
    BioMetaPriv m;
    memset(&m, 0, sizeof(m));
    if (!PyArg_ParseTuple(args, "nOII:_store_meta", &i, &local, &ifindex, &ecn))
        return NULL;
    if (i < 0 || i >= b->capacity || ecn > 3) {
        PyErr_SetString(PyExc_IndexError, "_store_meta outside the batch");
        return NULL;
    }
    if (bio_meta_parse_host("local", local, &m.local) < 0 || bio_batch_meta_ensure(b) < 0)
        return NULL;
    m.ifindex = ifindex;
    m.ecn = (uint8_t)ecn;
    bio_batch_meta_store(b, i, &m);
    Py_RETURN_NONE;
}

/* ---- the arrays ---------------------------------------------------------- */

PyObject *
bio_batch_meta_get_array(BioBatch *b, void *which)
{
    if (bio_batch_meta_ensure(b) < 0)
        return NULL;
    BioBatchMeta *x = b->meta;
    switch ((intptr_t)which) {
    case 0:
        return bio_array_view(b, x->local_addrs, "B", 1, sizeof(struct in6_addr));
    case 1:
        return bio_array_view(b, x->ifindexes, "I", sizeof(uint32_t), 0);
    case 2:
        return bio_array_view(b, x->ecn, "B", 1, 0);
    default:
        return bio_array_view(b, x->txtimes, "q", sizeof(int64_t), 0);
    }
}
